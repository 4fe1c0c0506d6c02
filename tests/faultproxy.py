"""A fault-injecting TCP proxy for tests: one directed link, one event-loop thread, loopback only.

``FaultProxy(target_port)`` listens on ``127.0.0.1:<port>`` and forwards every connection it
accepts to ``127.0.0.1:<target_port>``, bytes both ways, until told to misbehave:

- ``delay(s)``: every chunk is forwarded ``s`` seconds after it was read (added latency);
- ``throttle(bytes_per_s)``: forwarding is paced to that rate;
- ``stall()``: half-open: bytes are read and swallowed, nothing is forwarded, no FIN, no RST;
- ``pause()``: the proxy stops reading (the sender's buffers fill up: backpressure);
- ``drop()``: every current connection is closed on both sides (FIN);
- ``reset()``: every current connection is reset on both sides (RST, ``SO_LINGER`` 0);
- ``block()``: new connections are reset as soon as they are accepted (never forwarded);
- ``heal()``: every fault above is lifted. A connection that was stalled is reset on both
  sides then: it lost bytes, and a TCP stream never resumes with a hole in it (a real network
  either delivers every byte late or the connection dies), so it must not carry on.

Each command takes effect in the proxy's thread and returns once it has (so a test knows
that what it sends next meets the fault). ``close()`` closes every socket and joins the
thread. ``Partition`` cuts every proxy between two sets of nodes and heals them;
``ProxyMesh`` builds one proxy per directed link of a set of nodes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Direction", "FaultProxy", "Partition", "ProxyMesh", "ProxyStats"]

Direction = Literal["both", "forward", "backward"]  # forward: dialler -> target

_HOST = "127.0.0.1"
_RECV_SIZE = 64 * 1024
_CONNECT_TIMEOUT = 2.0
_ACCEPTS_PER_WAKE = 64  # bounds one turn of the loop under a connection storm
_COMMAND_TIMEOUT = 10.0
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass
class ProxyStats:
    """What the proxy has seen so far (a copy, taken in the proxy's thread)."""

    accepted: int = 0  # connections forwarded to the target
    refused: int = 0  # connections reset at once (blocked, or the target unreachable)
    active: int = 0  # connections open right now
    forwarded: int = 0  # bytes written to either side
    swallowed: int = 0  # bytes read while stalled and thrown away
    half_closed: int = 0  # ends closed by a node while stalled, not passed on


@dataclass
class _Faults:
    """The faults applied to one direction of every connection."""

    delay: float = 0.0
    rate: float | None = None  # bytes per second
    stalled: bool = False
    paused: bool = False


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


def _close(sock: socket.socket) -> None:
    """Close ``sock`` with a FIN (unread bytes are drained first: Linux resets a socket closed
    with unread data)."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        for _ in range(64):
            if not sock.recv(_RECV_SIZE):
                break
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Pipe:
    """One direction of a connection: bytes read from ``src``, waiting to be written to ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket, faults: _Faults) -> None:
        self.src = src
        self.dst = dst
        self.faults = faults
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()  # (due, data)
        self.size = 0
        self.eof = False  # src sent its FIN; dst gets one once chunks are written
        self.fin_sent = False
        self.dead = False  # src closed while stalled: its FIN was swallowed
        self.next_send = 0.0  # throttle pacing

    def wants_read(self, max_buffer: int) -> bool:
        if self.eof or self.dead or self.faults.paused:
            return False
        return self.faults.stalled or self.size < max_buffer

    def due(self, now: float) -> float | None:
        """When the next write may happen (``now`` or earlier: at once), None if nothing to do."""
        if self.faults.stalled or self.fin_sent or self.dead:
            return None
        if not self.chunks:
            return now if self.eof else None
        when = self.chunks[0][0]
        if self.faults.rate is not None:
            when = max(when, self.next_send)
        return when


class _Link:
    """One proxied connection: the dialler's socket (``down``) and the target's (``up``)."""

    def __init__(
        self, down: socket.socket, up: socket.socket, forward: _Faults, backward: _Faults
    ) -> None:
        self.down = down
        self.up = up
        self.connecting = True
        self.connect_deadline = time.monotonic() + _CONNECT_TIMEOUT
        self.forward = _Pipe(down, up, forward)
        self.backward = _Pipe(up, down, backward)
        self.broken = False  # stalled once: it never forwards again, and heal resets it

    @property
    def pipes(self) -> tuple[_Pipe, _Pipe]:
        return self.forward, self.backward

    @property
    def finished(self) -> bool:
        return all(pipe.fin_sent or pipe.dead for pipe in self.pipes)


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``, with faults on command."""

    def __init__(
        self,
        target_port: int,
        *,
        name: str = "",
        port: int = 0,
        max_buffer: int = 256 * 1024,
        rcvbuf: int | None = None,
    ) -> None:
        """``max_buffer``: bytes held per direction before the proxy stops reading;
        ``rcvbuf``: a small ``SO_RCVBUF`` for both of its sockets, so a ``pause()`` pushes
        back on the sender after a few KiB instead of the kernel's default MiBs."""
        self.target_port = target_port
        self.name = name or f"->{target_port}"
        self.max_buffer = max_buffer
        self.rcvbuf = rcvbuf
        self._listener = socket.create_server((_HOST, port), backlog=128)
        if rcvbuf is not None:  # inherited by accepted sockets
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], _Reply]] = queue.SimpleQueue()
        # Everything below is touched only by the proxy thread (commands run there).
        self._forward = _Faults()
        self._backward = _Faults()
        self._blocked = False
        self._links: list[_Link] = []
        self._stats = ProxyStats()
        self._selector = selectors.DefaultSelector()
        self._masks: dict[socket.socket, int] = {}
        self._running = True
        self._crash: BaseException | None = None  # what ended the thread, if not close()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.name} :{self.port} -> :{self.target_port}>"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Commands (each returns once the proxy thread has carried it out).

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Forward every chunk ``seconds`` after it was read."""

        def apply() -> None:
            for faults in self._directions(direction):
                faults.delay = seconds

        self._call(apply)

    def throttle(self, bytes_per_second: float | None, direction: Direction = "both") -> None:
        """Pace forwarding to ``bytes_per_second`` (None: no limit)."""

        def apply() -> None:
            for faults in self._directions(direction):
                faults.rate = bytes_per_second

        self._call(apply)

    def stall(self, direction: Direction = "both") -> None:
        """Half-open: read and swallow every byte, forward nothing (not even a FIN).

        The connections open now and accepted until ``heal()`` are broken for good: they
        swallow both ways until a node closes them, and ``heal()`` resets them.
        """

        def apply() -> None:
            for faults in self._directions(direction):
                faults.stalled = True
            for link in self._links:
                self._break(link)

        self._call(apply)

    def pause(self, direction: Direction = "both") -> None:
        """Stop reading: the sender's socket buffers fill up and its sends block."""

        def apply() -> None:
            for faults in self._directions(direction):
                faults.paused = True

        self._call(apply)

    def drop(self) -> int:
        """Close every current connection on both sides (FIN); return how many."""
        return int(self._call(lambda: self._close_links(_close)))

    def reset(self) -> int:
        """Reset every current connection on both sides (RST); return how many."""
        return int(self._call(lambda: self._close_links(_reset)))

    def block(self) -> None:
        """Reset every new connection as soon as it is accepted; current ones go on."""

        def apply() -> None:
            self._blocked = True

        self._call(apply)

    def cut(self, *, how: Literal["drop", "reset", "stall"] = "reset") -> None:
        """A network partition on this link: block new connections, and drop, reset or stall
        the current ones."""
        self.block()
        if how == "stall":
            self.stall()
        elif how == "drop":
            self.drop()
        else:
            self.reset()

    def heal(self) -> None:
        """Lift every fault; reset the connections that were stalled (they lost bytes)."""

        def apply() -> None:
            self._forward = _Faults()
            self._backward = _Faults()
            self._blocked = False
            for link in list(self._links):
                if link.broken:
                    self._finish(link, _reset)
                else:
                    link.forward.faults = self._forward
                    link.backward.faults = self._backward

        self._call(apply)

    def retarget(self, target_port: int) -> None:
        """Forward new connections to ``target_port`` from now on."""

        def apply() -> None:
            self.target_port = target_port

        self._call(apply)

    def stats(self) -> ProxyStats:
        """A copy of the counters, taken in the proxy thread."""
        return self._call(lambda: ProxyStats(**vars(self._stats)))  # type: ignore[no-any-return]

    @property
    def faulty(self) -> bool:
        """Whether any fault is applied (read from the test thread; a hint for logs)."""
        return self._blocked or any(
            f.stalled or f.paused or f.delay or f.rate is not None
            for f in (self._forward, self._backward)
        )

    def close(self, timeout: float = 10.0) -> None:
        """Close every socket (connections are reset) and join the proxy thread. Idempotent."""
        if self._thread.is_alive():
            with contextlib.suppress(ProxyClosed):
                self._call(self._stop)
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self!r}: thread still alive {timeout}s after close()")
        self._wake_w.close()
        if self._crash is not None:
            crash, self._crash = self._crash, None
            raise AssertionError(f"{self!r}: its thread failed: {crash!r}") from crash

    # The proxy thread.

    def _call(self, command: Callable[[], Any]) -> Any:
        if not self._thread.is_alive():
            raise ProxyClosed(f"{self!r} is closed")
        reply = _Reply()
        self._commands.put((command, reply))
        with contextlib.suppress(OSError):  # a full wake pipe already wakes it
            self._wake_w.send(b"x")
        return reply.wait(self, self._thread, _COMMAND_TIMEOUT)

    def _directions(self, direction: Direction) -> list[_Faults]:
        if direction == "forward":
            return [self._forward]
        if direction == "backward":
            return [self._backward]
        return [self._forward, self._backward]

    def _stop(self) -> None:
        self._running = False

    def _run(self) -> None:
        """Proxy thread: one selector over the listener, the wake pipe and every connection."""
        selector = self._selector
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        selector.register(self._listener, selectors.EVENT_READ, "listen")
        try:
            while self._running:
                now = time.monotonic()
                timeout = self._arm(now)
                for key, mask in selector.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                        self._run_commands()
                    elif key.data == "listen":
                        self._accept()
                    else:
                        link, sock = key.data
                        if link in self._links:
                            self._serve(link, sock, mask)
                self._expire(time.monotonic())
        except BaseException as exc:  # a safety net: this branch should never run
            self._crash = exc
            raise
        finally:
            # Commands queued after the stop (or after a crash) are answered, never lost.
            self._running = False
            for link in list(self._links):
                self._finish(link, _reset)
            self._listener.close()
            selector.close()
            self._wake_r.close()
            self._run_commands()

    def _run_commands(self) -> None:
        while True:
            try:
                command, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            if not self._running:
                reply.fail(ProxyClosed(f"{self!r} is closed"))
                continue
            try:
                reply.set(command())
            except BaseException as exc:
                reply.fail(exc)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                down, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: try on the next wake
                return
            if self._blocked:
                self._stats.refused += 1
                _reset(down)
                continue
            down.setblocking(False)
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.rcvbuf is not None:
                up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            up.setblocking(False)
            code = up.connect_ex((_HOST, self.target_port))
            if code not in (0, errno.EINPROGRESS):
                self._stats.refused += 1
                up.close()
                _reset(down)
                continue
            link = _Link(down, up, self._forward, self._backward)
            self._break(link)
            self._links.append(link)
            self._stats.active += 1

    def _arm(self, now: float) -> float | None:
        """Register each socket for what it can do now; return the time to the next timer."""
        wanted: dict[socket.socket, tuple[int, tuple[_Link, socket.socket]]] = {}
        timer: float | None = None
        for link in self._links:
            if link.connecting:
                wanted[link.up] = (selectors.EVENT_WRITE, (link, link.up))
                timer = (
                    link.connect_deadline if timer is None else min(timer, link.connect_deadline)
                )
                continue
            masks = {link.down: 0, link.up: 0}
            for pipe in link.pipes:
                if pipe.wants_read(self.max_buffer):
                    masks[pipe.src] |= selectors.EVENT_READ
                when = pipe.due(now)
                if when is None:
                    continue
                if when <= now:
                    masks[pipe.dst] |= selectors.EVENT_WRITE
                else:
                    timer = when if timer is None else min(timer, when)
            for sock, mask in masks.items():
                if mask:
                    wanted[sock] = (mask, (link, sock))
        for sock in list(self._masks):
            if sock not in wanted:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
                del self._masks[sock]
        for sock, (mask, data) in wanted.items():
            old = self._masks.get(sock)
            if old is None:
                self._selector.register(sock, mask, data)
            elif old != mask:
                self._selector.modify(sock, mask, data)
            self._masks[sock] = mask
        return None if timer is None else max(0.0, timer - now)

    def _serve(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.connecting:
            error = link.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._stats.refused += 1
                self._finish(link, _reset)
                return
            link.connecting = False
            self._stats.accepted += 1
            return
        now = time.monotonic()
        if mask & selectors.EVENT_WRITE:
            for pipe in link.pipes:
                if pipe.dst is sock and not self._write(link, pipe, now):
                    return
        if mask & selectors.EVENT_READ:
            for pipe in link.pipes:
                if pipe.src is sock and pipe.wants_read(self.max_buffer):
                    self._read(link, pipe, now)
                    return

    def _read(self, link: _Link, pipe: _Pipe, now: float) -> None:
        try:
            data = pipe.src.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: reset the other side too (unless stalled)
            if pipe.faults.stalled:
                pipe.dead = True
                self._stats.half_closed += 1
                if link.finished:
                    self._finish(link, _reset)
            else:
                self._finish(link, _reset)
            return
        if not data:
            if pipe.faults.stalled:
                pipe.dead = True  # the FIN is swallowed: the other side never hears of it
                self._stats.half_closed += 1
                if link.finished:
                    self._finish(link, _close)
            else:
                pipe.eof = True
            return
        if pipe.faults.stalled:
            self._stats.swallowed += len(data)
            return
        pipe.chunks.append((now + pipe.faults.delay, data))
        pipe.size += len(data)

    def _write(self, link: _Link, pipe: _Pipe, now: float) -> bool:
        """Write what is due to ``pipe.dst``; False if the link was closed."""
        try:
            while pipe.chunks:
                due, data = pipe.chunks[0]
                if due > now:
                    return True
                rate = pipe.faults.rate
                piece = data
                if rate is not None:
                    if pipe.next_send > now:
                        return True
                    piece = data[: max(1, int(rate * 0.02))]  # 20 ms worth at a time
                sent = pipe.dst.send(piece)
                self._stats.forwarded += sent
                pipe.size -= sent
                if rate is not None:
                    pipe.next_send = max(pipe.next_send, now) + sent / rate
                if sent < len(data):
                    pipe.chunks[0] = (due, data[sent:])
                    if sent < len(piece):
                        return True  # the socket buffer is full
                else:
                    pipe.chunks.popleft()
            if pipe.eof and not pipe.fin_sent:
                pipe.fin_sent = True
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
                if link.finished:
                    self._finish(link, _close)
                    return False
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # that side is gone (reset): reset the other side too
            self._finish(link, _reset)
            return False
        return True

    def _expire(self, now: float) -> None:
        for link in list(self._links):
            if link.connecting and now >= link.connect_deadline:
                self._stats.refused += 1
                self._finish(link, _reset)

    def _break(self, link: _Link) -> None:
        """Mark ``link`` broken for good if a direction of it is stalled; drop what it holds."""
        for pipe in link.pipes:
            if pipe.faults.stalled:
                link.broken = True
                self._stats.swallowed += pipe.size
                pipe.chunks.clear()
                pipe.size = 0
        if link.broken:  # both directions swallow from now on, whatever heal() does
            stalled = _Faults(stalled=True)
            link.forward.faults = link.backward.faults = stalled

    def _close_links(self, how: Callable[[socket.socket], None]) -> int:
        links = list(self._links)
        for link in links:
            self._finish(link, how)
        return len(links)

    def _finish(self, link: _Link, how: Callable[[socket.socket], None]) -> None:
        if link not in self._links:
            return
        self._links.remove(link)
        self._stats.active -= 1
        for sock in (link.down, link.up):
            if sock in self._masks:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
                del self._masks[sock]
            how(sock)


class ProxyClosed(Exception):
    """A command was sent to a proxy whose thread has ended."""


class _Reply:
    """The result of one command, handed from the proxy thread to the caller."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def wait(self, proxy: FaultProxy, thread: threading.Thread, timeout: float) -> Any:
        """Wait for the answer; a thread that ended without answering means it was closed."""
        deadline = time.monotonic() + timeout
        while not self._done.wait(0.05):
            if not thread.is_alive() and not self._done.is_set():
                raise ProxyClosed(f"{proxy!r} is closed")
            if time.monotonic() >= deadline:
                raise AssertionError(f"{proxy!r} did not carry out a command within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


class ProxyMesh:
    """One ``FaultProxy`` per directed link ``(dialler, target)`` between named nodes.

    ``address(a, b)`` is what node ``a`` dials to reach node ``b``. Build it before the nodes
    start (it needs only their listen ports) and ``close()`` it after they stop.
    """

    def __init__(self, ports: Mapping[str, int], links: Iterable[tuple[str, str]]) -> None:
        self.ports = dict(ports)
        self.proxies: dict[tuple[str, str], FaultProxy] = {}
        try:
            for a, b in links:
                self.proxies[(a, b)] = FaultProxy(self.ports[b], name=f"{a}->{b}")
        except BaseException:
            self.close()
            raise

    @classmethod
    def full(cls, ports: Mapping[str, int], *, both_ways: bool = False) -> ProxyMesh:
        """A full mesh: each node dials the ones before it (in ``ports`` order), as in the
        seed's walk-through, or every other node with ``both_ways``."""
        names = list(ports)
        links = [
            (a, b)
            for i, a in enumerate(names)
            for j, b in enumerate(names)
            if (j < i or (both_ways and j != i))
        ]
        return cls(ports, links)

    @classmethod
    def ring(cls, ports: Mapping[str, int]) -> ProxyMesh:
        """A ring (a partial mesh: needs relaying): each node dials the next one."""
        names = list(ports)
        return cls(ports, [(a, names[(i + 1) % len(names)]) for i, a in enumerate(names)])

    def peers_of(self, name: str) -> list[int]:
        """The proxy ports node ``name`` dials, one per node it is configured to reach."""
        return [proxy.port for (a, _b), proxy in self.proxies.items() if a == name]

    def between(self, side_a: Iterable[str], side_b: Iterable[str]) -> list[FaultProxy]:
        """Every proxy carrying a connection between a node of ``side_a`` and one of ``side_b``."""
        a, b = set(side_a), set(side_b)
        return [
            proxy
            for (x, y), proxy in self.proxies.items()
            if (x in a and y in b) or (x in b and y in a)
        ]

    def touching(self, name: str) -> list[FaultProxy]:
        """Every proxy with ``name`` at one end."""
        return [proxy for (x, y), proxy in self.proxies.items() if name in (x, y)]

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        errors = []
        for proxy in self.proxies.values():
            try:
                proxy.close()
            except AssertionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class Partition:
    """Cuts every link between two sets of nodes, and heals exactly those links."""

    def __init__(self, mesh: ProxyMesh) -> None:
        self.mesh = mesh
        self.cut_links: list[FaultProxy] = []

    def cut(
        self,
        side_a: Iterable[str],
        side_b: Iterable[str],
        *,
        how: Literal["drop", "reset", "stall"] = "reset",
    ) -> list[FaultProxy]:
        """Partition ``side_a`` from ``side_b``: no new connection, current ones dropped, reset
        or stalled (half-open, left for the nodes' heartbeats to notice)."""
        proxies = self.mesh.between(side_a, side_b)
        for proxy in proxies:
            proxy.cut(how=how)
            if proxy not in self.cut_links:
                self.cut_links.append(proxy)
        return proxies

    def heal(self) -> None:
        """Heal every link this partition cut."""
        for proxy in self.cut_links:
            proxy.heal()
        self.cut_links.clear()
