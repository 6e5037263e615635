"""The TCP balancer on gevent: accept, choose a server, connect (failing over), relay.

A connection lives in loop callbacks: the accept callback registers it, its Dial (dial.py)
connects to a server in pen's order, failing over, and relay.py moves its bytes until it
ends. Only a connection that must wait in between takes a greenlet (a reused one:
greenlets.py) for that wait: a trusted peer's PROXY header, a TLS handshake. All decisions
are the pure core's (select.choose, failover); this module, dial.py and relay.py move bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from functools import partial

import gevent
from gevent import socket as gsocket
from greenlet import getcurrent

from . import evict, greenlets, relay
from .addr import client_ip
from .dial import Dial
from .http import Requests
from .logs import ConnectionLog, Throttled
from .proxy_protocol import V2_MAX, ProxyError, RefuseHeaders, build, needed, parse
from .sockets import OUT_OF_FDS, bind, set_options
from .state import Connection, Server, State

log = logging.getLogger("pen")
DEBUG_LEVEL = 2           # pen -d -d: connections logged as they open and close (logs.py)


class Closed(Exception):
    """Thrown into a connection's greenlet to end it while it waits there (`close N`, the
    end of SIGTERM's grace); while it dials or relays, closing those ends it."""


class Listener:
    """Accepts clients from the hub's loop, up to max_accept (-m) per wake-up, and hands
    each one to balancer.handle. While -x connections are open,
    a newcomer takes the place of the longest-idle connection of the address holding the
    most (evict.victim: slowloris from a few addresses cannot lock others out), or is
    closed if its own address holds as many; never more than -x at once. Out of fds, it
    pauses, logging once, instead of spinning."""

    def __init__(self, sock, balancer: "TcpBalancer", max_accept: int) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:  # as pen: accepted clients inherit SO_KEEPALIVE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.socket = sock
        self.family = sock.family          # a property that builds an enum: read it once
        self.balancer = balancer
        self.max_accept = max_accept
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

    def resume(self) -> None:
        """Accept (again): at start and after a pause for fds."""
        if self.started and not self.watcher.active:
            self.watcher.start(self.accept)

    def make_room(self, key) -> bool:
        """-x is full: close the longest-idle connection of the address holding the most,
        if it holds at least two more than the newcomer's address. False: no room.
        (Refusing costs a look at the per-address counts; only an eviction scans.)"""
        if self.balancer.evict(evict.giving_way(self.balancer.holding, key)):
            return True
        self.balancer.state.counters["conn_refused_full"] += 1
        return False

    def accept(self) -> None:
        """A read callback on the listen socket: take up to max_accept clients, register
        each as a connection (so -x counts it at once) and hand it to a worker."""
        family, balancer = self.family, self.balancer
        state, accept, holding = balancer.state, self.socket._accept, balancer.holding
        for _ in range(self.max_accept):
            full = len(state.connections) >= state.connection_limit()     # -x reached
            try:
                fd, address = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in OUT_OF_FDS:
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
            key = address[0] if type(address) is tuple else _address_key(address)
            if full and not self.make_room(key):
                client.close()
                continue
            client.setblocking(False)
            conn = state.open_connection(address)
            holding[key] += 1
            try:
                balancer.handle(conn, client, address)
            except Exception:       # a bug must cost this connection, not the accept loop
                balancer.broken(conn, address, client)
            if full:          # the evicted one ends before the next accept: one at a time
                return


def _address_key(address):
    """Connections are grouped by client IP (as text: cheap); UNIX peers form one group."""
    return address[0] if isinstance(address, tuple) else None


def _release(holding: Counter, key) -> None:
    if holding[key] <= 1:
        holding.pop(key, None)            # no zero entries: the table stays bounded by -x
    else:
        holding[key] -= 1


def _last_moved(conn: Connection, now: float, wall: float) -> float:
    """When the connection last moved a byte (monotonic); before its relay, when accepted."""
    return conn.relay.last_moved(now) if conn.relay is not None else now - (wall - conn.started)


class TcpBalancer:
    """A Balancer (balancer.py) for TCP and UNIX stream clients: the listener and each
    connection's life (handle), with the streams layered by wrap_client/wrap_upstream."""

    proto = "http"      # X-Forwarded-Proto; the TLS front end says https
    layered_clients = False     # a layer to set up on each client first (TLS: tls.py)
    layered_servers = False     # ... and on each server connection (ssl_backend)

    def __init__(self, state: State, sock, conn_log: ConnectionLog | None = None, *,
                 max_accept: int = 100, backlog: int = 0) -> None:
        self.state = state
        self.max_accept, self.backlog = max_accept, backlog
        self.listener = Listener(sock, self, max_accept)
        self.conn_log = conn_log or ConnectionLog()
        self.connect_hooks = []          # sockets.ConnectHook: transparent, source
        self.holding: Counter = Counter()   # connections per client address, for -x full

    # the Balancer interface ------------------------------------------------------------

    def start(self) -> None:
        self.listener.start()

    def close(self, drain: bool = False) -> None:
        """Stop accepting; connections in flight go on (the runtime drains them)."""
        self.listener.close()

    def listening_socket(self):
        return self.listener.socket

    def evict(self, addresses: set) -> bool:
        """Close the longest-idle connection of these addresses (for a newcomer: -x is
        full); False if they hold none."""
        state = self.state
        if not addresses:
            return False
        now, wall = time.monotonic(), time.time()
        gone = evict.longest_idle(
            (evict.Held(conn, _address_key(conn.client), _last_moved(conn, now, wall))
             for conn in state.connections.values() if conn.close is not None), addresses)
        if gone is None:
            return False
        state.counters["conn_evicted_full"] += 1
        log.debug("connection %d (%s) closed: -x is full", gone.key.id, gone.key.client)
        gone.key.close()
        return True

    def shed(self, count: int) -> None:
        """Give back count connections (a worker group's member over its -x share): each
        the longest-idle one of the address holding the most."""
        for _ in range(count):
            if not self.evict(evict.giving_way(self.holding, None, lead=0)):
                return

    def relisten(self, endpoint) -> None:
        """`listen ADDR`: accept on the new address, then stop accepting on the old one."""
        old = self.listener
        self.listener = Listener(bind(endpoint, socket.SOCK_STREAM, self.backlog), self,
                                 self.max_accept)
        self.listener.start()
        old.close()

    # Layers over the byte streams (tls.TlsBalancer: TLS towards clients and/or servers).
    def wrap_client(self, client, address):
        """The stream to relay from the accepted socket, or None to drop the connection."""
        return client

    def wrap_upstream(self, sock, server: Server):
        """The stream to relay to a connected server socket; raise OSError on failure."""
        return sock

    # a connection ----------------------------------------------------------------------

    def handle(self, conn: Connection, client, address) -> None:
        """A new connection, from the accept callback. One that must wait before it can
        choose a server (a trusted peer's PROXY header, a TLS handshake) does so in a
        greenlet; any other dials at once."""
        state = self.state
        trusted = True
        if state.accept_proxy >= 0:
            trusted = state.acls.permits(state.accept_proxy, client_ip(conn.client))
        if (trusted and state.accept_proxy >= 0) or self.layered_clients:
            greenlets.spawn(self.prepare, conn, client, address, trusted)
        else:
            self.dial(conn, client, client, address, trusted, conn.started)

    def prepare(self, conn: Connection, accepted, address, trusted: bool) -> None:
        """A connection's greenlet: take the trusted peer's PROXY header and set up the
        client's layer (TLS), then dial."""
        conn.close = _closer(conn, getcurrent())
        client = None
        try:
            if (not trusted or self.state.accept_proxy < 0
                    or self.take_proxy_header(conn, accepted)):
                if conn.destination is None and self.layered_clients:
                    conn.destination = accepted.getsockname()   # TLS hides the socket
                client = self.wrap_client(accepted, conn.client)
            if client is not None:
                return self.dial(conn, client, accepted, address, trusted, time.time())
        except Closed:
            log.debug("connection %s: closed by close N or shutdown", conn.id)
        except Exception:
            return self.broken(conn, address, client or accepted)
        self.finish(conn, address, accepted, None)

    def dial(self, conn: Connection, client, accepted, address, trusted: bool,
             now: float) -> None:
        """Choose a server (as of now: time.time()) and connect to it."""
        setup = Setup(self, conn, client, accepted, address, trusted)
        conn.close = setup.close
        setup.start(setup.ip, now)

    def layer_upstream(self, setup: "Setup", server: Server, sock) -> None:
        """A greenlet for the server connection's layer (TLS, ssl_backend); a failure
        fails the server over."""
        conn = setup.conn
        if conn.close != setup.close:     # closed before this greenlet ran (!=: a bound
            # method is a new object at each look-up)
            return _close(sock)
        conn.close = _closer(conn, getcurrent())
        try:
            upstream = self.wrap_upstream(sock, server)
        except (OSError, gevent.Timeout) as e:
            _close(sock)
            conn.close = setup.close
            return setup.failed(server, getattr(e, "strerror", None) or str(e) or "timeout")
        except Closed:
            log.debug("connection %s: closed by close N or shutdown", conn.id)
            _close(sock)
            return self.finish(conn, setup.address, setup.stream, None)
        except Exception:
            return self.broken(conn, setup.address, setup.stream, sock)
        self.established(setup, server, upstream)

    def broken(self, conn: Connection, address, client, *socks) -> None:
        """A bug while conn was set up: log it, and end conn whatever stage it reached."""
        log.exception("connection %d: setting it up failed", conn.id)
        _close(*socks)
        if conn.relay is not None:
            conn.relay.close()                   # (its end finishes the connection)
        elif self.state.connections.get(conn.id) is conn:      # not finished yet
            self.finish(conn, address, client, None)

    def established(self, setup: "Setup", server: Server, upstream) -> None:
        """Connected (and layered): count the client in, relay."""
        state, conn, client, ip = self.state, setup.conn, setup.stream, setup.ip
        if state.debug >= DEBUG_LEVEL:         # (an int compare: isEnabledFor is a call)
            log.debug("connection %d: %s to server %d (%s)", conn.id, ip, server.index,
                      server.endpoint)
        if state.tcp_nodelay or state.keepalive:
            set_options(client, state)
            set_options(upstream, state)
        conn.downfd, conn.upfd = client.fileno(), upstream.fileno()
        state.track(conn, ip, server, conn.started)     # (the client came then)
        self.relay(conn, client, upstream, ip, setup.address, setup.trusted)

    def finish(self, conn: Connection, address, client, upstream) -> None:
        """The connection ended (its relay, or before one): count it out, close both."""
        if self.state.debug >= DEBUG_LEVEL:
            log.debug("connection %d closed: %d bytes to the server, %d to the client",
                      conn.id, conn.sx, conn.rx)
        self.state.close_connection(conn)
        _release(self.holding, address[0] if type(address) is tuple else _address_key(address))
        conn.close = conn.relay = None          # (a cycle through the closures otherwise)
        _close(client, upstream)
        self.listener.resume()

    def take_proxy_header(self, conn: Connection, sock) -> bool:
        """accept_proxy N, a peer ACL N permits: it must start with a PROXY header, whose
        source is the client from then on. False (counted as proxy_refused) if the
        connection must close. (Any other peer's header is refused by the relay:
        proxy_protocol.RefuseHeaders.)"""
        state = self.state
        try:
            header = read_proxy_header(sock, state.timeout)
        except (ProxyError, OSError) as e:
            state.count("proxy_refused")
            log.info("connection %d from %s: %s", conn.id, conn.client,
                     getattr(e, "strerror", None) or e or "PROXY header timed out")
            return False
        if header.source is not None:
            conn.client, conn.destination = header.source, header.destination
        return True

    def relay(self, conn: Connection, client, upstream, ip, address,
              trusted: bool = True) -> None:
        """Start moving the bytes both ways (with -H, -l and -d -d -d looking at them, and
        RefuseHeaders at the start of an untrusted peer's bytes under accept_proxy); from
        here `close N` closes the relay, and its end finishes the connection."""
        state = self.state
        log_request = None
        if state.log is not None:               # -l: a line per request
            def log_request(line: bytes, server=conn.server):
                self.conn_log.request(ip, server, _loggable(line))
        rewrite = str(ip) if state.http and ip is not None else None
        transform = reply = None
        if rewrite or log_request:              # -H, -l: on the same request framing
            transform = Requests(rewrite, self.proto, log_request)
        if not trusted:
            transform = RefuseHeaders(transform)
        if state.debug >= DUMP_LEVEL:           # pen -d -d -d: every chunk, hex or (-a) text
            transform = _Tap(transform, _dump(f"connection {conn.id} to server", state.ascii))
            reply = _Tap(None, _dump(f"connection {conn.id} to client", state.ascii))
        conn.relay = relay.Relay(
            client, upstream, state.idle_timeout, conn.to_server, conn.to_client, transform,
            state.tcp_fastclose, reply,
            on_end=partial(self.relay_ended, conn, address, client, upstream))
        conn.close = conn.relay.close
        conn.relay.start()

    def relay_ended(self, conn: Connection, address, client, upstream) -> None:
        """The relay's on_end: finish, or for a refusal with an answer (-H's 400), close the
        server's side now and the client's after it has read the answer (a worker lingers)."""
        refused = conn.relay.refused
        if refused is not None:
            self.state.count(refused.event)
            log.debug("connection %d from %s: %s", conn.id, conn.client, refused)
        if refused is None or not refused.answer:
            return self.finish(conn, address, client, upstream)
        _close(upstream)
        greenlets.spawn(self.linger_then_finish, conn, address, client)

    def linger_then_finish(self, conn: Connection, address, client) -> None:
        relay.linger(client)
        self.finish(conn, address, client, None)


class Setup(Dial):
    """A connection on its way to a server: its Dial, then what the connected server
    needs (its PROXY header; a layer, set up in a greenlet) before the relay."""

    __slots__ = ("balancer", "conn", "stream", "accepted", "address", "trusted", "ip")

    def __init__(self, balancer: TcpBalancer, conn: Connection, stream, accepted, address,
                 trusted: bool) -> None:
        super().__init__(balancer.state, conn.client, balancer.connect_hooks)
        self.balancer, self.conn, self.stream, self.accepted = balancer, conn, stream, accepted
        self.address, self.trusted = address, trusted
        self.ip = client_ip(conn.client)     # the PROXY header's client, if one came first

    def connected(self, server: Server, sock) -> None:
        balancer = self.balancer
        try:
            version = server.proxy_version(self.state.proxy_protocol)
            if version:
                try:
                    send_proxy_header(sock, version, self.conn.client,
                                      self.conn.destination or self.accepted.getsockname())
                except OSError as e:
                    sock.close()
                    return self.failed(server, e.strerror or str(e))
            if balancer.layered_servers:
                greenlets.spawn(balancer.layer_upstream, self, server, sock)
            else:
                balancer.established(self, server, sock)
        except Exception:                # (from a loop callback: nobody else would)
            self.cancel()
            balancer.broken(self.conn, self.address, self.stream, sock)

    def nowhere(self, why: str | None) -> None:
        if why is not None:
            log.debug("connection %d: %s: closing the client", self.conn.id, why)
        else:
            self.state.count("no_server")           # denied, or no server would take it
            log.info("no server for %s", self.client)
        self.balancer.finish(self.conn, self.address, self.stream, None)

    def close(self) -> None:
        """`close N` or shutdown while dialing."""
        self.cancel()
        self.balancer.finish(self.conn, self.address, self.stream, None)


def read_proxy_header(sock, timeout: float):
    """The PROXY header at the start of a non-blocking socket, within timeout seconds.
    Peeks, then takes only the header's bytes: what follows is the client's."""
    deadline = time.monotonic() + timeout
    taken = b""
    while True:
        try:
            data = sock.recv(V2_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            data = None
        if data == b"":
            raise ProxyError("closed before its PROXY header ended")
        if data:
            # needed() never counts a byte past the header: take what is the header's
            take = min(len(data), needed(taken + data) - len(taken))
            taken += sock.recv(take)
            header = parse(taken)
            if header is not None:
                return header
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProxyError(f"no PROXY header within {timeout:g}s")
        gsocket.wait_read(sock.fileno(), left, timeout_exc=ProxyError(
            f"no PROXY header within {timeout:g}s"))


def send_proxy_header(sock, version: int, client, destination) -> None:
    header = build(version, client, destination)
    if sock.send(header) != len(header):            # a new connection's buffer is empty
        raise OSError(f"PROXY header: sent part of {len(header)} bytes")


class _Tap:
    """Wraps a transform (or none) to show each chunk to `see` before passing it on."""

    def __init__(self, inner, see) -> None:
        self.inner, self.see = inner, see

    def feed(self, data: bytes) -> bytes:
        self.see(data)
        return self.inner.feed(data) if self.inner else data

    def flush(self) -> bytes:
        return self.inner.flush() if self.inner else b""


_PRINTABLE = bytes(b if 32 <= b < 127 else ord(".") for b in range(256))


def _loggable(line: bytes) -> str:
    """A request line as pen logs it: its first 100 bytes, anything unprintable as '.'."""
    return line[:100].translate(_PRINTABLE).decode("ascii")


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


def _closer(conn: Connection, greenlet):
    """conn.close while a greenlet waits for it: end it from anywhere (another greenlet,
    the hub), at most once, and only while conn.close is still this (each stage of a
    connection sets its own), so never in a later task of the same (reused) greenlet."""
    def close() -> None:
        if conn.close is close:
            gevent.get_hub().loop.run_callback(throw)

    def throw() -> None:
        if conn.close is close:
            greenlet.throw(Closed)
        elif conn.close is not None:      # it moved on (to its dial) meanwhile: close that
            conn.close()
    return close


def _close(*socks) -> None:
    for sock in socks:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
