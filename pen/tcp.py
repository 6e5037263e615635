"""The TCP balancer on gevent: accept, choose a server, connect (failing over), relay.

Every connection is a greenlet (a reused one: workers.py) that chooses a server, connects,
fails over, waits while relay.py moves the bytes, and cleans up. All decisions are the pure
core's (select.candidates); this module and relay.py only move bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

import gevent
from gevent import socket as gsocket
from greenlet import getcurrent

from . import relay, workers
from .addr import client_ip
from .daemon import Throttled
from .http import ForwardedFor
from .select import candidates
from .state import Connection, Server, State

log = logging.getLogger("pen")

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)


class Closed(Exception):
    """Thrown into a connection's greenlet to end it (`close N`, the end of SIGTERM's grace)."""


class Listener:
    """Accepts clients from the hub's loop, up to max_accept per wake-up, and hands each
    one to a worker greenlet. Stops accepting while -x connections are open (resumes
    as they end) and pauses, logging once, instead of spinning when out of fds."""

    max_accept = 100

    def __init__(self, sock, balancer: "TcpBalancer") -> None:
        sock.setblocking(False)
        self.socket = sock
        self.family = sock.family          # a property that builds an enum: read it once
        self.balancer = balancer
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.started = False
        self.log_out_of_fds = Throttled(logging.ERROR)     # once per episode, not per accept

    def start(self) -> None:
        self.started = True
        self.resume()

    def close(self) -> None:
        self.started = False
        self.watcher.stop()
        self.watcher.close()
        self.socket.close()

    def full(self) -> bool:
        state = self.balancer.state
        return len(state.connections) >= state.conn_max

    def resume(self) -> None:
        """Accept (again): at start, after a pause, and when a connection ends under -x."""
        if self.started and not self.watcher.active and not self.full():
            self.watcher.start(self.accept)

    def accept(self) -> None:
        family, balancer = self.family, self.balancer
        for _ in range(self.max_accept):
            if self.full():
                self.watcher.stop()
                return
            try:
                fd, address = self.socket._accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _OUT_OF_FDS:
                    self.log_out_of_fds("accept: %s; pausing accepts until connections close",
                                        e.strerror)
                    self.watcher.stop()
                    gevent.get_hub().loop.timer(0.1).start(self.resume)
                else:                  # the client left before we took it (ECONNABORTED...)
                    log.debug("accept: %s", e)
                return
            try:
                client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            except OSError as e:           # gone already: the fd must not leak
                log.debug("accept: %s", e)
                os.close(fd)
                continue
            client.setblocking(False)
            conn = balancer.state.open_connection(address)
            workers.spawn(balancer.handle, conn, client, address)


def connect(sock, sockaddr, timeout) -> None:
    """connect(2) on a non-blocking socket within timeout (socket.timeout after it).
    The address is already resolved: connect, wait until writable, read the result."""
    deadline = time.monotonic() + timeout if timeout else None
    err = sock.connect_ex(sockaddr)
    while err == errno.EAGAIN and sock.family == socket.AF_UNIX:      # its backlog is full
        gsocket.wait_write(sock.fileno(), _left(deadline))
        err = sock.connect_ex(sockaddr)
    if err in _IN_PROGRESS:
        # A server on this host has answered by now (the handshake ran in our syscall):
        # asking again costs a syscall where waiting costs a trip through the loop.
        err = sock.connect_ex(sockaddr)
        if err in _IN_PROGRESS:
            gsocket.wait_write(sock.fileno(), _left(deadline))
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err and err != errno.EISCONN:
        raise OSError(err, os.strerror(err))


def _left(deadline):
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def layered(sock, timeout=None):
    """The gevent socket for a plain one, for the layers (TLS) that work in a blocking
    style; its operations time out after timeout seconds."""
    if type(sock) is socket.socket:
        sock = gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    sock.settimeout(timeout)
    return sock


def set_options(sock, state: State) -> None:
    """-O tcp_nodelay / keepalive (which a UNIX socket does not have)."""
    try:
        if state.tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if state.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


class TcpBalancer:
    """Connection lifecycle. `runtime` hooks for the command language live in runtime.py."""

    proto = "http"      # X-Forwarded-Proto; the TLS front end says https

    def __init__(self, state: State, sock, log_line=None) -> None:
        self.state = state
        self.listener = Listener(sock, self)
        self.log_line = log_line or (lambda text: None)
        self.connect_hooks = []          # fn(sock, server, client_address): transparent, source

    # Layers over the byte streams (tls.TlsBalancer: TLS towards clients and/or servers).
    def wrap_client(self, client, address):
        """The stream to relay from the accepted socket, or None to drop the connection."""
        return client

    def wrap_upstream(self, sock, server: Server):
        """The stream to relay to a connected server socket; raise OSError on failure."""
        return sock

    # connecting ------------------------------------------------------------------------

    def open_upstream(self, server: Server, address):
        endpoint = server.endpoint
        sock = socket.socket(endpoint.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            for hook in self.connect_hooks:
                hook(sock, server, address)
            connect(sock, endpoint.sockaddr, self.state.timeout)
            sock = self.wrap_upstream(sock, server)
        except BaseException:
            sock.close()
            raise
        set_options(sock, self.state)
        return sock

    def connect(self, ip, address):
        """Try servers in pen's order; blacklist each one that fails. (socket, server) or None."""
        state = self.state
        port = address[1] if isinstance(address, tuple) else None
        for server in candidates(state, ip, port, time.time()):
            try:
                return self.open_upstream(server, address), server
            except (OSError, gevent.Timeout) as e:
                if getattr(e, "errno", None) in _OUT_OF_FDS:
                    log.debug("no fd for an upstream socket: closing the client")
                    return None                   # our shortage, not the server's fault
                server.failures += 1
                state.blacklist(server, time.time())
                log.warning("server %s (%s) failed: %s; blacklisted for %ss", server.index,
                            server.endpoint, getattr(e, "strerror", None) or e or "timeout",
                            state.blacklist_time)
        return None

    # a connection ----------------------------------------------------------------------

    def handle(self, conn: Connection, client, address) -> None:
        """A connection's greenlet: choose and connect a server, relay, clean up."""
        state = self.state
        conn.close = _closer(state, conn, getcurrent())
        accepted, upstream = client, None
        try:
            client = self.wrap_client(accepted, address)
            if client is None:
                return
            ip = client_ip(address)
            found = self.connect(ip, address)
            if found is None:
                state.counters["no_server"] += 1   # denied, or no server would take it
                log.info("no server for %s", address)
                return
            upstream, server = found
            log.debug("connection %d: %s to server %d (%s)", conn.id, ip, server.index,
                      server.endpoint)
            set_options(client, state)
            conn.server = server
            server.conn += 1
            server.total += 1
            entry = state.clients.touch(ip, time.time())
            entry.connects += 1
            if server.index >= 0:
                entry.server = server.index
            try:
                self.relay(conn, client, upstream, server, entry, ip)
            finally:
                server.conn -= 1
        except Closed:
            log.debug("connection %s: closed by close N or shutdown", conn.id)
        finally:
            log.debug("connection %d closed: %d bytes to the server, %d to the client",
                      conn.id, conn.sx, conn.rx)
            state.close_connection(conn)
            conn.close = None                   # (a cycle through the closure otherwise)
            _close(client or accepted, upstream)
            self.listener.resume()

    def relay(self, conn: Connection, client, upstream, server: Server, entry, ip) -> None:
        state = self.state

        def to_server(n):
            server.sx += n
            entry.rx += n
            conn.sx += n

        def to_client(n):
            server.rx += n
            entry.sx += n
            conn.rx += n

        transform = ForwardedFor(str(ip), self.proto) if state.http and ip is not None else None
        reply = None
        if state.debug >= DUMP_LEVEL:           # pen -d -d -d: every chunk, hex or (-a) text
            transform = _Tap(transform, _dump(f"connection {conn.id} to server", state.ascii))
            reply = _Tap(None, _dump(f"connection {conn.id} to client", state.ascii))
        if state.log is not None:
            transform = _Tap(transform, _first_line(lambda line: self.log_line(
                f"{ip} {int(time.time())} {server.endpoint.address} {line}")))
        relay.Relay(client, upstream, state.idle_timeout, to_server, to_client, transform,
                    state.tcp_fastclose, reply).run()


class _Tap:
    """Wraps a transform (or none) to show each chunk to `see` before passing it on."""

    def __init__(self, inner, see) -> None:
        self.inner, self.see = inner, see

    def feed(self, data: bytes) -> bytes:
        self.see(data)
        return self.inner.feed(data) if self.inner else data

    def flush(self) -> bytes:
        return self.inner.flush() if self.inner else b""


def _first_line(report):
    """A tap's `see`: report the first line a client sends (for pen's -l log), once."""
    done = False

    def see(data: bytes) -> None:
        nonlocal done
        if not done:
            done = True
            line = data.split(b"\n", 1)[0].rstrip(b"\r")[:200]
            report(line.decode("latin-1") if line.isascii() else "-")
    return see


DUMP_LEVEL = 3


def _dump(label: str, text: bool):
    """A tap's `see`: log every chunk, as pen's -d -d -d does (as text with -a, else hex)."""
    def see(data: bytes) -> None:
        log.debug("%s: %d bytes:\n%s", label, len(data), _dumped(data, text))
    return see


def _dumped(data: bytes, text: bool) -> str:
    if text:        # printable ASCII and line breaks as they are, any other byte as '.'
        return "".join(chr(b) if 32 <= b < 127 or b in (9, 10, 13) else "." for b in data)
    return "\n".join(data[i:i + 16].hex(" ") for i in range(0, len(data), 16))


def _closer(state: State, conn: Connection, greenlet):
    """conn.close: end the connection from anywhere (another greenlet, the hub), at most
    once, and never a later task of the same (reused) greenlet."""
    def close() -> None:
        if state.connections.get(conn.id) is conn:
            gevent.get_hub().loop.run_callback(throw)

    def throw() -> None:
        if state.connections.get(conn.id) is conn:
            greenlet.throw(Closed)
    return close


def _close(*socks) -> None:
    for sock in socks:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
