"""The TCP balancer on gevent: accept, choose a server, connect (failing over), relay.

One greenlet per connection relays client -> server; a second one relays server -> client.
All decisions are the pure core's (select.candidates); this module only moves bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

import gevent
import gevent.select
from gevent import socket as gsocket
from gevent.server import StreamServer

from . import relay
from .addr import client_ip
from .daemon import Throttled
from .http import ForwardedFor
from .select import candidates
from .state import Connection, Server, State

log = logging.getLogger("pen")

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)


class Listener(StreamServer):
    """gevent's StreamServer with pen's limits: stop accepting while -x connections are
    open, and pause (logging once) instead of spinning when the process runs out of fds."""

    def __init__(self, sock, balancer: "TcpBalancer") -> None:
        super().__init__(sock, balancer.handle)
        self.balancer = balancer
        self.log_out_of_fds = Throttled(logging.ERROR)     # once per episode, not per accept

    def full(self) -> bool:
        state = self.balancer.state
        return len(state.connections) >= state.conn_max

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as e:
            if e.errno not in _OUT_OF_FDS:
                raise
            self.log_out_of_fds("accept: %s; pausing accepts until connections close",
                                e.strerror)
            self.stop_accepting()
            gevent.spawn_later(0.1, self._start_accepting_if_started)
            return None
        return accepted

    def resume(self) -> None:
        """A connection ended: accept again if -x had stopped us."""
        if self._watcher is None and self.started and not self.full():
            self.start_accepting()


def connect(sock, sockaddr) -> None:
    """connect(2) within sock's timeout. The address is already resolved, so this skips
    gevent's generic path (an address check and two extra syscalls per connect):
    connect, wait until writable, read the result."""
    if sock.family == socket.AF_UNIX:
        return sock.connect(sockaddr)        # EAGAIN (backlog full) needs gevent's retry loop
    err = sock._sock.connect_ex(sockaddr)
    if err in _IN_PROGRESS:
        sock._wait(sock._write_event)          # socket.timeout after the connect timeout
        err = sock._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err and err != errno.EISCONN:
        raise OSError(err, os.strerror(err))


def set_options(sock, state: State) -> None:
    if sock.family == socket.AF_UNIX:
        return
    if state.tcp_nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if state.keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


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
        sock = gsocket.socket(endpoint.family, socket.SOCK_STREAM)
        try:
            for hook in self.connect_hooks:
                hook(sock, server, address)
            sock.settimeout(self.state.timeout)
            connect(sock, endpoint.sockaddr)
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

    def handle(self, client, address) -> None:
        state = self.state
        conn = state.open_connection(address)
        upstream_box = []
        conn.close = lambda: _close(client, upstream_box)
        try:
            client = self.wrap_client(client, address)
            if client is None:
                return
            ip = client_ip(address)
            found = self.connect(ip, address)
            if found is None:
                log.info("no server for %s", address)
                return
            upstream, server = found
            upstream_box.append(upstream)
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
                upstream.close()
        finally:
            state.close_connection(conn)
            self.listener.resume()

    def relay(self, conn: Connection, client, upstream, server: Server, entry, ip) -> None:
        state = self.state
        flow = relay.Flow(state.idle_timeout)

        def to_server(n):
            server.sx += n
            entry.sx += n
            conn.sx += n

        def to_client(n):
            server.rx += n
            entry.rx += n
            conn.rx += n

        transform = ForwardedFor(str(ip), self.proto) if state.http and ip is not None else None
        if state.log is not None:
            transform = _FirstLine(transform, lambda line: self.log_line(
                f"{ip} {int(time.time())} {server.endpoint} {line}"))
        fastclose = state.tcp_fastclose
        if not _traffic(client, upstream, flow.idle):
            log.debug("idle timeout before any traffic")
            return
        back = gevent.spawn(self._direction, upstream, client, flow, to_client,
                            None, fastclose in ("up", "both"))
        try:
            self._direction(client, upstream, flow, to_server, transform,
                            fastclose in ("down", "both"))
            back.join()
        finally:
            back.kill(block=False)

    def _direction(self, src, dst, flow, count, transform, fastclose) -> None:
        """One pump; on EOF pass the half-close on, on error or idle tear both sides down."""
        try:
            relay.pump(src, dst, flow, count, transform)
        except relay.Idle:
            log.debug("idle timeout")
            _close(src, [dst])
            return
        except OSError as e:
            if not relay.gone(e):
                log.info("relay: %s", e)
            _close(src, [dst])
            return
        if fastclose or not relay.end_writes(dst):
            _close(src, [dst])


def _traffic(client, upstream, idle) -> bool:
    """Wait until either side has something to say (False: idle_timeout passed first).

    Until then the connection costs one greenlet and its two sockets; the pump for the
    other direction is spawned once bytes move. Usually the client's request is already
    there, and gevent's select answers from one non-blocking select(2) without waiting."""
    if not (relay.plain(client) and relay.plain(upstream)):
        return True                  # a TLS layer may hold decrypted bytes the fd won't show
    readable, _, _ = gevent.select.select([client, upstream], [], [], idle)
    return bool(readable)


class _FirstLine:
    """Wraps a transform to report the first line a client sends (for pen's -l log)."""

    def __init__(self, inner, report) -> None:
        self.inner, self.report, self.done = inner, report, False

    def feed(self, data: bytes) -> bytes:
        if not self.done:
            self.done = True
            line = data.split(b"\n", 1)[0].rstrip(b"\r")[:200]
            self.report(line.decode("latin-1") if line.isascii() else "-")
        return self.inner.feed(data) if self.inner else data

    def flush(self) -> bytes:
        return self.inner.flush() if self.inner else b""


def _close(client, upstreams) -> None:
    for sock in (client, *upstreams):
        try:
            sock.close()
        except OSError:
            pass
