"""The fault-injecting proxy, observed with plain sockets: each fault does what it says."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import pytest

from .faultproxy import FaultProxy, Partition, ProxyClosed, ProxyMesh
from .waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leak")


class Target:
    """A plain listening socket the proxy forwards to; the test accepts by hand."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept(self, timeout: float = 5.0) -> socket.socket:
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        sock.settimeout(timeout)
        self.accepted.append(sock)
        return sock

    def pending(self) -> bool:
        """Whether a connection is waiting to be accepted (no waiting)."""
        readable, _, _ = select.select([self.listener], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        for sock in self.accepted:
            sock.close()
        self.listener.close()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(target: Target) -> Iterator[FaultProxy]:
    with FaultProxy(target.port, name="test") as p:
        yield p


def dial(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    sock.settimeout(5.0)
    return sock


def connect(proxy: FaultProxy, target: Target) -> tuple[socket.socket, socket.socket]:
    """A client socket through the proxy and the target's end of it, proven connected."""
    client = dial(proxy.port)
    server = target.accept()
    client.sendall(b"hi")
    assert recv_exactly(server, 2) == b"hi"
    return client, server


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < size:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def recv_end(sock: socket.socket, timeout: float = 5.0) -> str:
    """Read until the connection ends; say how: ``"eof"`` (FIN) or ``"reset"`` (RST)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def dial_end(port: int) -> str:
    """Dial ``port`` and say how the connection ends (a reset may come before connect returns)."""
    try:
        sock = dial(port)
    except ConnectionResetError:
        return "reset"
    with sock:
        return recv_end(sock)


def nothing_to_read(sock: socket.socket) -> bool:
    """Whether ``sock`` has neither bytes nor an EOF waiting right now (no waiting)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_forwards_bytes_both_ways_and_the_fin(proxy: FaultProxy, target: Target) -> None:
    """Without faults, bytes pass both ways in order and a FIN is passed on as a FIN."""
    client, server = connect(proxy, target)
    payload = bytes(range(256)) * 1000
    client.sendall(payload)
    assert recv_exactly(server, len(payload)) == payload
    server.sendall(b"back")
    assert recv_exactly(client, 4) == b"back"
    client.shutdown(socket.SHUT_WR)
    assert recv_end(server) == "eof"
    server.sendall(b"after half-close")  # the other direction still works
    assert recv_exactly(client, 16) == b"after half-close"
    server.close()
    assert recv_end(client) == "eof"
    client.close()
    wait_until(lambda: proxy.stats().active == 0, 5.0, "the proxy to forget the connection")
    assert proxy.stats().accepted == 1


def test_delay_adds_latency_each_way(proxy: FaultProxy, target: Target) -> None:
    """With a delay, each chunk arrives no sooner than the delay after it was sent."""
    client, server = connect(proxy, target)
    proxy.delay(0.3)
    start = time.monotonic()
    client.sendall(b"ping")
    assert recv_exactly(server, 4) == b"ping"
    one_way = time.monotonic() - start
    server.sendall(b"pong")
    assert recv_exactly(client, 4) == b"pong"
    round_trip = time.monotonic() - start
    assert one_way >= 0.3
    assert round_trip >= 0.6
    proxy.heal()
    start = time.monotonic()
    client.sendall(b"fast")
    assert recv_exactly(server, 4) == b"fast"
    assert time.monotonic() - start < 0.3


def test_delay_keeps_order_and_delays_the_fin(proxy: FaultProxy, target: Target) -> None:
    """Delayed chunks keep their order, and a FIN comes after the delayed bytes, not before."""
    client, server = connect(proxy, target)
    proxy.delay(0.2, direction="forward")
    for i in range(50):
        client.sendall(b"%03d" % i)
    client.shutdown(socket.SHUT_WR)
    data = recv_exactly(server, 150)
    assert data == b"".join(b"%03d" % i for i in range(50))
    assert recv_end(server) == "eof"


def test_drop_closes_both_sides_with_a_fin(proxy: FaultProxy, target: Target) -> None:
    """drop() ends every current connection with a FIN on both sides, even with bytes unread."""
    client, server = connect(proxy, target)
    proxy.pause()
    client.sendall(b"x" * 10000)  # unread by the proxy while paused
    assert proxy.drop() == 1
    assert recv_end(client) == "eof"
    assert recv_end(server) == "eof"
    proxy.heal()
    connect(proxy, target)  # new connections still pass


def test_reset_resets_both_sides(proxy: FaultProxy, target: Target) -> None:
    """reset() ends every current connection with an RST on both sides."""
    client, server = connect(proxy, target)
    assert proxy.reset() == 1
    assert recv_end(client) == "reset"
    assert recv_end(server) == "reset"


def test_a_reset_from_one_side_is_passed_on(proxy: FaultProxy, target: Target) -> None:
    """When one end resets its connection, the proxy resets the other end (as a wire would)."""
    client, server = connect(proxy, target)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    assert recv_end(server) == "reset"


def test_stall_swallows_bytes_and_the_fin(proxy: FaultProxy, target: Target) -> None:
    """A stalled link reads and swallows bytes and a FIN (half-open); heal resets the rest."""
    client, server = connect(proxy, target)
    proxy.stall()
    client.sendall(b"lost" * 1000)
    server.sendall(b"lost too")
    wait_until(lambda: proxy.stats().swallowed >= 4008, 5.0, "the proxy to swallow the bytes")
    assert nothing_to_read(server)
    assert nothing_to_read(client)
    client.close()  # its FIN reaches the proxy, which passes on nothing
    wait_until(lambda: proxy.stats().half_closed == 1, 5.0, "the proxy to see the FIN")
    assert nothing_to_read(server)
    server.sendall(b"still swallowed")  # the server's end is still open: it can send
    proxy.heal()
    assert recv_end(server) == "reset"  # the half-open connection ends once healed


def test_a_stalled_connection_never_resumes(proxy: FaultProxy, target: Target) -> None:
    """A connection that lost bytes to a stall is reset on heal, never resumed with a hole in
    its stream (even when only one direction was stalled); new connections work again."""
    client, server = connect(proxy, target)
    proxy.stall(direction="forward")
    client.sendall(b"swallowed")
    wait_until(lambda: proxy.stats().swallowed >= 9, 5.0, "the proxy to swallow the bytes")
    server.sendall(b"also swallowed: the connection is broken")
    wait_until(lambda: proxy.stats().swallowed >= 49, 5.0, "the other direction to be swallowed")
    during = dial(proxy.port)  # accepted while stalled: broken too
    during_server = target.accept()
    proxy.heal()
    assert recv_end(server) == "reset"
    assert recv_end(client) == "reset"
    assert recv_end(during) == "reset"
    assert recv_end(during_server) == "reset"
    connect(proxy, target)


def test_pause_makes_the_sender_block_then_heal_delivers_all(
    proxy: FaultProxy, target: Target
) -> None:
    """A paused link stops reading, so the sender's buffers fill up; heal delivers every byte."""
    client, server = connect(proxy, target)
    proxy.pause(direction="forward")
    client.setblocking(False)
    sent = 0
    block = b"y" * 65536
    while True:  # bounded by the kernel's socket buffers (a few MiB on loopback)
        try:
            sent += client.send(block)
        except BlockingIOError:
            break
        assert sent < 256 << 20, "the proxy kept reading while paused"
    assert sent >= 65536
    server.sendall(b"back")  # the other direction is not paused
    assert recv_exactly(client_blocking(client), 4) == b"back"
    proxy.heal()
    assert recv_exactly(server, sent, timeout=20.0) == b"y" * sent


def client_blocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(True)
    sock.settimeout(5.0)
    return sock


def test_throttle_paces_bytes(proxy: FaultProxy, target: Target) -> None:
    """A throttled link forwards no faster than its rate, and at full speed once healed."""
    client, server = connect(proxy, target)
    proxy.throttle(20_000)
    start = time.monotonic()
    client.sendall(b"z" * 10_000)
    assert recv_exactly(server, 10_000) == b"z" * 10_000
    elapsed = time.monotonic() - start
    assert elapsed >= (10_000 - 400) / 20_000  # the first 20 ms slice may go at once
    proxy.heal()
    start = time.monotonic()
    client.sendall(b"z" * 100_000)
    assert recv_exactly(server, 100_000) == b"z" * 100_000
    assert time.monotonic() - start < 2.5


def test_block_refuses_new_connections_only(proxy: FaultProxy, target: Target) -> None:
    """A blocked link resets new connections without forwarding them; current ones go on."""
    client, server = connect(proxy, target)
    proxy.block()
    assert dial_end(proxy.port) == "reset"
    assert proxy.stats().refused == 1
    assert not target.pending()
    client.sendall(b"old")
    assert recv_exactly(server, 3) == b"old"
    proxy.heal()
    connect(proxy, target)


def test_unreachable_target_resets_the_dialler(target: Target) -> None:
    """When the target is not listening, the dialler's connection is reset at once."""
    port = target.port
    target.close()
    with FaultProxy(port) as proxy:
        assert dial_end(proxy.port) == "reset"
        assert proxy.stats().refused == 1


def test_retarget_sends_new_connections_elsewhere(proxy: FaultProxy, target: Target) -> None:
    """After retarget(), new connections go to the new port."""
    other = Target()
    try:
        proxy.retarget(other.port)
        client = dial(proxy.port)
        server = other.accept()
        client.sendall(b"moved")
        assert recv_exactly(server, 5) == b"moved"
    finally:
        other.close()


def test_close_ends_the_thread_and_every_connection(target: Target) -> None:
    """close() resets every connection, joins the proxy thread, and later commands fail."""
    proxy = FaultProxy(target.port)
    client, server = connect(proxy, target)
    proxy.close()
    assert not proxy._thread.is_alive()
    assert recv_end(client) == "reset"
    assert recv_end(server) == "reset"
    with pytest.raises(ProxyClosed):
        proxy.heal()
    proxy.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        dial(proxy.port)


def test_partition_cuts_exactly_the_links_between_two_sides() -> None:
    """A partition cuts every link between the two sides, no other, and heal restores them."""
    targets = {name: Target() for name in "abc"}
    mesh = ProxyMesh.full({name: t.port for name, t in targets.items()})
    try:
        assert sorted(mesh.proxies) == [("b", "a"), ("c", "a"), ("c", "b")]
        conns = {link: connect(p, targets[link[1]]) for link, p in mesh.proxies.items()}
        partition = Partition(mesh)
        cut = partition.cut({"a"}, {"b", "c"})
        assert sorted(p.name for p in cut) == ["b->a", "c->a"]
        for link in [("b", "a"), ("c", "a")]:
            client, server = conns[link]
            assert recv_end(client) == "reset"
            assert recv_end(server) == "reset"
            assert dial_end(mesh.proxies[link].port) == "reset"
        client, server = conns[("c", "b")]
        client.sendall(b"untouched")
        assert recv_exactly(server, 9) == b"untouched"
        partition.heal()
        assert partition.cut_links == []
        connect(mesh.proxies[("b", "a")], targets["a"])
        connect(mesh.proxies[("c", "a")], targets["a"])
    finally:
        mesh.close()
        for t in targets.values():
            t.close()


def test_partition_by_stall_leaves_connections_half_open() -> None:
    """A stalled partition keeps the connections open but silent, until healed."""
    targets = {name: Target() for name in "ab"}
    mesh = ProxyMesh.full({name: t.port for name, t in targets.items()})
    try:
        proxy = mesh.proxies[("b", "a")]
        client, server = connect(proxy, targets["a"])
        Partition(mesh).cut({"a"}, {"b"}, how="stall")
        client.sendall(b"into the void")
        wait_until(lambda: proxy.stats().swallowed >= 13, 5.0, "the bytes to be swallowed")
        assert nothing_to_read(server)
        assert proxy.stats().active == 1
    finally:
        mesh.close()
        for t in targets.values():
            t.close()


def test_mesh_both_ways_has_a_link_per_ordered_pair() -> None:
    """A both-ways mesh has one proxy per ordered pair, and each node dials n-1 proxies."""
    ports = {"a": 1001, "b": 1002, "c": 1003}
    mesh = ProxyMesh.full(ports, both_ways=True)
    try:
        assert len(mesh.proxies) == 6
        assert all(len(mesh.peers_of(n)) == 2 for n in ports)
        assert {p.target_port for p in mesh.touching("a")} == {1001, 1002, 1003}
    finally:
        mesh.close()


def test_many_connections_and_faults_in_a_row(proxy: FaultProxy, target: Target) -> None:
    """The proxy survives a burst of connections and faults and ends with nothing open."""
    for i in range(20):
        client, server = connect(proxy, target)
        fault = i % 4
        if fault == 0:
            proxy.reset()
        elif fault == 1:
            proxy.drop()
        elif fault == 2:
            proxy.stall()
            client.close()
            server.close()
            proxy.heal()
        else:
            client.close()
            assert recv_end(server) == "eof"
            server.close()
        with contextlib.suppress(OSError):
            client.close()
        target.accepted.clear()
    wait_until(lambda: proxy.stats().active == 0, 5.0, "every connection to end")
    assert proxy.stats().accepted == 20


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_close_reports_a_thread_that_failed(target: Target) -> None:
    """A proxy thread that died of an error is not silent: close() fails with that error."""
    proxy = FaultProxy(target.port)

    def broken_accept() -> None:
        raise RuntimeError("injected")

    proxy._accept = broken_accept  # type: ignore[method-assign]
    with contextlib.suppress(OSError):
        dial(proxy.port).close()
    wait_until(lambda: not proxy._thread.is_alive(), 5.0, "the proxy thread to fail")
    with pytest.raises(AssertionError, match="injected"):
        proxy.close()
