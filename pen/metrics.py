"""The metrics endpoint (metrics_port): GET or HEAD /metrics in the Prometheus text format
(prometheus_client's exposition of status.families) and /status.json, the JSON status.

It has the control port's bounds: control_acl filters it, CONCURRENCY clients at once, each
with TIMEOUT seconds to send a request head of at most MAX_HEAD bytes and to take the
answer. Each answer is one snapshot of plain data rendered at once; nothing waits on the
data path, and the data path never waits on it.
"""

from __future__ import annotations

import logging

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.server import StreamServer

from . import status
from .addr import AddressError, client_ip
from .errors import CommandError, UsageError
from .sockets import bind
from .state import State

log = logging.getLogger("pen")

TIMEOUT = 5.0
CONCURRENCY = 64
MAX_HEAD = 8192
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def respond(state: State, head: bytes) -> tuple[str, str, bytes, bool]:
    """(status line, content type, body, send the body?) for a request head. Pure."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(line) != 3 or not line[2].startswith(b"HTTP/"):
        return "400 Bad Request", "text/plain", b"bad request\n", True
    method, target = line[0], line[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", True
    if target in (b"/metrics", b"/status.json"):
        state.process.refresh()
    if target == b"/metrics":
        body = status.render(state, "prometheus").encode()
        kind = PROMETHEUS_TYPE
    elif target == b"/status.json":
        body, kind = status.render(state, "json").encode(), "application/json"
    else:
        return "404 Not Found", "text/plain", b"/metrics or /status.json\n", method == b"GET"
    return "200 OK", kind, body, method == b"GET"


class MetricsServer(StreamServer):
    def __init__(self, sock, endpoint, state: State) -> None:
        super().__init__(sock, self.serve_client, spawn=Pool(CONCURRENCY))
        self.endpoint = endpoint
        self.state = state

    @classmethod
    def open(cls, endpoint, state: State, sock=None) -> "MetricsServer":
        """Bind metrics_port (or take sock, handed over by an upgrade); a bind error is
        the command's one-line answer."""
        if sock is None:
            try:
                sock = bind(endpoint)
            except (UsageError, AddressError) as e:
                raise CommandError(f"metrics_port {e}") from None
        return cls(gsocket.socket(fileno=sock.detach()), endpoint, state)

    def serve_client(self, sock, address) -> None:
        try:
            if not self.state.acls.permits(self.state.control_acl, client_ip(address)):
                log.info("metrics: %s denied by control_acl %d", address[0],
                         self.state.control_acl)
                return
            with gevent.Timeout(TIMEOUT, False):
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    chunk = sock.recv(MAX_HEAD + 1 - len(head))
                    if not chunk:
                        break
                    head += chunk
                    if len(head) > MAX_HEAD:
                        break
                if len(head) > MAX_HEAD:
                    reply = ("431 Request Header Fields Too Large", "text/plain",
                             b"request head too long\n", True)
                else:
                    reply = respond(self.state, head)
                code, kind, body, with_body = reply
                sock.sendall((f"HTTP/1.1 {code}\r\nContent-Type: {kind}\r\n"
                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
                             .encode() + (body if with_body else b""))
        except OSError as e:
            log.debug("metrics: %s: %s", address, e)
        finally:
            sock.close()
