"""Helpers for the risk view's tests: node processes with ``--http``, and plain HTTP requests."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from typing import Any, NamedTuple

from .procs import Cluster, NodeProcess

__all__ = ["Reply", "http_url", "pin_http_port", "request", "start_view_node"]


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def start_view_node(
    cluster: Cluster, name: str, peers: tuple[int, ...] = (), *, args: tuple[str, ...] = ()
) -> NodeProcess:
    """A node process serving the risk view on a port of the OS's choice."""
    node = cluster.add(name, peers=peers, args=["--http", "127.0.0.1:0", *args])
    http_url(node)
    return node


def http_url(node: NodeProcess, timeout: float = 20.0) -> str:
    """The risk view's base URL, from the node's ``risk view on URL`` log line."""
    line = node.wait_for_log("risk view on ", timeout)
    found = re.search(r"risk view on (\S+)/", line)
    assert found is not None, line
    return found.group(1)


def pin_http_port(node: NodeProcess) -> None:
    """Make the next start of ``node`` serve on the port this run was given (as a user would)."""
    port = http_url(node).rsplit(":", 1)[1]
    args = node.extra_args
    index = args.index("--http")
    args[index + 1] = f"127.0.0.1:{port}"


def request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP request with http.client (no redirects followed)."""
    scheme, _, rest = url.partition("://")
    hostport, slash, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, slash + path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()
