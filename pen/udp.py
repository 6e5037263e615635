"""The UDP balancer (-U) on gevent: one session per client address and port.

Client -> server: a read callback on the listen socket takes a batch of datagrams (see
mmsg: up to 32 per system call on Linux), finds each client's session (opening it with
select.candidates) and sends its datagrams from the session's own backend socket, again
all in one call. Server -> client: a read callback on that socket answers the client from
the listen socket the same way. No greenlet switch, and a datagram is never copied into a
Python object unless it must be kept for a failover. A sweeper greenlet ends idle sessions
and passes datagrams on from silent servers. The decisions are select's and udptable's;
this module only moves datagrams.

The backend socket is not connected: it takes datagrams from the server's IP on any port
and sends the client's next datagrams to the port the server last answered from. That is
how TFTP passes: its server answers from a new port (the transfer ID). ICMP errors reach
an unconnected socket through IP_RECVERR (Linux); elsewhere the socket is connected to the
server, which still reports refusals but cannot follow a TFTP transfer to its new port.
"""

from __future__ import annotations

import logging
import socket
import sys
import time

import gevent

from .addr import client_ip
from .errors import UsageError
from .logs import ConnectionLog, Throttled
from .mmsg import best as best_batch
from .proxy_protocol import build
from .select import candidates
from .sockets import bind, server_socket
from .state import Server, State
from .udptable import SessionTable, idle_limit, sweep

log = logging.getLogger("pen")

TICK = 0.25                              # how often the sweeper looks at the sessions
ROUNDS = 4             # batches one socket may take per wake-up while it has more
RECVERR = sys.platform.startswith("linux")
# IP_RECVERR / IPV6_RECVERR: Python does not name them; the numbers are Linux's ABI.
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


def check(state: State) -> None:
    """UDP balancing needs inet addresses: say so at start instead of failing later."""
    if state.listen is not None and state.listen.is_unix:
        raise UsageError(f"{state.listen}: -U needs an inet listen address, not a socket path")
    for server in state.servers:
        if server.endpoint is not None and server.endpoint.is_unix:
            raise UsageError(f"{server.endpoint}: -U needs inet servers, not socket paths")


def refusals(sock) -> list:
    """Drain the socket's ICMP error queue: the destinations that refused our datagrams."""
    refused = []
    with socket.fromfd(sock.fileno(), sock.family, socket.SOCK_DGRAM) as raw:
        raw.setblocking(False)
        for _ in range(64):                   # the queue is bounded; so is this loop
            try:
                _, _, _, address = raw.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                break
            refused.append(address)
    return refused


class Session:
    """One client address: its server, backend socket and the datagram awaiting an answer.

    Peers are known by address tuple (client, dest) and by the batch's name for them (key,
    dest_name): the names are what datagrams are matched and sent by."""

    __slots__ = ("balancer", "client", "key", "ip", "server", "sock", "dest", "dest_name",
                 "reader", "conn", "last", "pending", "pending_since", "unanswered",
                 "answered", "tried", "closed", "header")

    def __init__(self, balancer: "UdpBalancer", key, client, ip) -> None:
        self.balancer = balancer
        self.key, self.client, self.ip = key, client, ip
        self.server: Server | None = None
        self.sock = self.dest = self.dest_name = self.reader = self.conn = None
        self.last = time.monotonic()
        self.pending: bytes | None = None      # the client's last datagram, for failover
        self.pending_since = 0.0
        self.unanswered = 0
        self.answered = False
        self.tried: list[Server] = []          # servers left behind since the last answer
        self.closed = False
        self.header: bytes | None = None       # PROXY v2 (proxy_protocol v2) before each datagram

    # choosing and switching servers ----------------------------------------------------

    def attach(self, server: Server) -> bool:
        """Move the session to server with a fresh backend socket (late answers from the
        previous server must not reach the client). False if no socket could be made.
        The caller accounts for the move (State.track or State.assign)."""
        try:
            sock = self.balancer.open_backend(server, self.client)
        except OSError as e:
            self.balancer.state.count("udp_socket_errors")
            self.balancer.warn(f"UDP: no socket for {server.endpoint}: {e.strerror or e}")
            return False
        old_sock, old_reader = self.sock, self.reader
        self.server, self.sock = server, sock
        self.dest = server.endpoint.sockaddr
        self.dest_name = self.balancer.batch.name(self.dest)
        self.answered, self.unanswered = False, 0
        self.header = self.balancer.proxy_header(server, self.client)
        self.reader = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.reader.start(self.from_server, sock)
        if old_reader is not None:
            old_reader.stop()
            old_sock.close()
        return True

    def fail_over(self, why: str) -> None:
        """The server refused (ICMP): blacklist it, move on and resend what is unanswered.
        A refusal comes from the server's host, so no client can forge it."""
        state, failed = self.balancer.state, self.server
        state.server_failed(failed, why, time.time())
        self.move_on()

    def silent(self) -> None:
        """The server left the pending datagram unanswered for -t. Silence is evidence any
        client can forge (a spoofed source, a query no server answers), so it takes no server
        out: the datagram moves on to a server this session has not tried, and when none is
        left the session ends. Silence asks for a health check of self.server at once
        (if it has one): only a failed check takes it out."""
        self.balancer.state.count("udp_silent")
        self.balancer.state.process.check_now(self.server)
        self.balancer.log_silence("server %s (%s) left a datagram unanswered for %ss; "
                                  "passing it on (not blacklisted: silence can be forged)",
                                  self.server.index, self.server.endpoint,
                                  self.balancer.state.timeout)
        self.move_on()

    def move_on(self) -> None:
        """Attach to the next candidate not tried yet and resend the pending datagram;
        close the session when every candidate has been tried."""
        state = self.balancer.state
        self.tried.append(self.server)
        for server in candidates(state, self.ip, self.client[1], time.time()):
            if all(server is not old for old in self.tried) and self.attach(server):
                state.assign(self.conn, server)
                break
        else:
            self.close()
            return
        if self.pending is not None:
            self.pending_since = time.monotonic()
            self.resend()

    def on_refusal(self) -> bool:
        """The backend socket reported ECONNREFUSED: fail over if the server's own port
        refused (a TFTP transfer port that has closed is no reason). True if it failed over."""
        if RECVERR:
            want = self.server.endpoint.sockaddr[:2]
            if want not in (address[:2] for address in refusals(self.sock)):
                self.balancer.state.count("udp_refused_elsewhere")
                return False
        self.balancer.state.count("udp_refused")
        self.fail_over("refused the datagram (ICMP port unreachable)")
        return True

    # moving datagrams ------------------------------------------------------------------

    def forward(self, slots: list) -> None:
        """Send the client's datagrams in these batch slots to the server, in order."""
        if self.header is not None:
            return self.forward_with_header(slots)
        batch = self.balancer.batch
        now = time.monotonic()
        self.last = now
        if not self.pending_since:
            self.pending_since = now
        sent = datagrams = nbytes = 0
        retried = -1
        while sent < len(slots):
            try:
                n = batch.send(self.sock, slots, sent, self.dest_name)
            except ConnectionRefusedError:
                # An earlier datagram was refused; this one was not sent. A failover
                # resends it as pending; a refusal from elsewhere costs one retry.
                self.pending = batch.copy(slots[sent])
                if self.on_refusal() or retried == sent:
                    sent += 1
                else:
                    retried = sent
                if self.closed:                # no server left
                    return
                continue
            except OSError as e:
                self.balancer.state.count("udp_send_errors")
                log.debug("UDP: send to %s: %s", self.dest, e)
                sent += 1
                continue
            nbytes += batch.size_of(slots[sent:sent + n])
            sent += n
            datagrams += n
        self.pending = batch.copy(slots[-1])
        self.unanswered += datagrams
        self.conn.to_server(nbytes, datagrams)

    def forward_with_header(self, slots: list) -> None:
        """forward() for a server that takes PROXY v2: each datagram is copied behind the
        header and sent on its own (the slow path; only with proxy_protocol v2)."""
        batch = self.balancer.batch
        self.last = time.monotonic()
        if not self.pending_since:
            self.pending_since = self.last
        for i in slots:
            self.pending = batch.copy(i)
            self.resend()

    def resend(self) -> None:
        """Send the pending datagram again (to the server a failover chose)."""
        self.unanswered += 1
        try:
            self.sock.sendto(self.pending if self.header is None else self.header + self.pending,
                             self.dest)
        except OSError as e:
            self.balancer.state.count("udp_send_errors")
            log.debug("UDP: send to %s: %s", self.dest, e)
            return
        self.conn.to_server(len(self.pending), 1)

    def from_server(self, sock) -> None:
        """A read callback: relay the server's datagrams to the client."""
        batch = self.balancer.batch
        for _ in range(ROUNDS):
            if self.sock is not sock or self.closed:      # moved on (failover) or ended
                return
            try:
                n = batch.receive(sock)
            except ConnectionRefusedError:
                self.on_refusal()
                return
            except OSError as e:
                self.balancer.state.count("udp_receive_errors")
                log.debug("UDP: receive from %s: %s", self.server.endpoint, e)
                if RECVERR:
                    refusals(sock)   # empty the error queue, or the socket stays readable
                return
            slots = []
            for i, source in enumerate(batch.sources(n)):
                if source != self.dest_name and not self.follow_transfer_port(source):
                    self.balancer.state.count("udp_stray")  # not our server: never to the client
                    continue
                slots.append(i)
            if slots:
                self.reply(slots)
            if n < batch.slots:
                return

    def follow_transfer_port(self, source) -> bool:
        """A datagram from another port than dest: the server's (TFTP: the transfer's own
        port, where the client's next datagrams go from now on) if it comes from the
        server's IP. True if it was the server's."""
        address = self.balancer.batch.address(source)
        if address[0] != self.server.endpoint.sockaddr[0]:
            return False
        self.dest, self.dest_name = address, source
        return True

    def reply(self, slots: list) -> None:
        batch, listen = self.balancer.batch, self.balancer.sock
        self.last = time.monotonic()
        self.pending, self.pending_since = None, 0.0
        self.unanswered, self.answered = 0, True
        self.tried.clear()
        self.conn.to_client(batch.size_of(slots), len(slots))
        sent = 0
        while sent < len(slots):
            try:
                sent += batch.send(listen, slots, sent, self.key)
            except OSError as e:
                self.balancer.state.count("udp_reply_errors")
                log.debug("UDP: reply to %s: %s", self.client, e)
                sent += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        balancer = self.balancer
        balancer.table.remove(self.key, self)
        if self.conn is not None:
            balancer.state.close_connection(self.conn)
        if self.reader is not None:
            self.reader.stop()
        if self.sock is not None:
            self.sock.close()
        self.pending = None


class UdpBalancer:
    """A Balancer (balancer.py) for -U: the listen socket's receive loop, the session
    table and the sweeper."""

    def __init__(self, state: State, sock, conn_log: ConnectionLog | None = None) -> None:
        self.state = state
        self.sock = sock
        self.reader = None
        self.table = SessionTable()
        self.batch = best_batch()
        self.conn_log = conn_log or ConnectionLog()
        self.connect_hooks = []          # sockets.ConnectHook: transparent, source
        self.sweeping = None
        self.closed = False
        self.warn = Throttled(logging.WARNING)   # our own shortage: once a minute, not per datagram
        self.log_silence = Throttled(logging.WARNING)   # clients can cause it: once a minute

    # the backend socket: the one place a transparent hook needs to wrap -------------------

    def open_backend(self, server: Server, client):
        endpoint = server.endpoint
        sock = server_socket(server, socket.SOCK_DGRAM, client, self.connect_hooks)
        try:
            if RECVERR:
                level, option = _RECVERR[endpoint.family]
                sock.setsockopt(level, option, 1)
            else:
                sock.connect(endpoint.sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    def proxy_header(self, server: Server, client) -> bytes | None:
        """The PROXY v2 header for client's datagrams to server, if it takes one (v1 has
        no datagram form: a server set to v1 gets plain datagrams)."""
        if server.proxy_version(self.state.proxy_protocol) != 2:
            return None
        return build(2, client, self.sock.getsockname(), datagram=True)

    # sessions --------------------------------------------------------------------------

    def open_session(self, key) -> Session | None:
        """A new client address: its session on the first server that takes it, or None."""
        state = self.state
        client = self.batch.address(key)
        ip = client_ip(client)
        session = Session(self, key, client, ip)
        for server in candidates(state, ip, client[1], time.time()):
            if session.attach(server):
                break
        else:
            state.count("udp_no_server")
            log.info("no server for %s", client)
            return None
        session.conn = conn = state.open_connection(client)
        conn.close = session.close
        state.track(conn, ip, session.server, time.time())
        for old in self.table.add(key, session, state.connection_limit()):
            state.count("udp_evicted")
            old.close()
        if state.log is not None:
            self.conn_log.request(ip, session.server, "UDP")
        return session

    def receive(self) -> None:
        """A read callback on the listen socket: the datagrams from clients."""
        sock, table, batch = self.sock, self.table, self.batch
        for _ in range(ROUNDS):
            try:
                n = batch.receive(sock)
            except OSError as e:
                self.state.count("udp_receive_errors")
                log.debug("UDP: receive: %s", e)
                self.reader.stop()             # an error that stays must not spin the loop
                gevent.get_hub().loop.timer(0.01).start(self.resume, self.reader)
                return
            # Each client's datagrams, in order, go out together: one send per session.
            shares: dict = {}                  # client name -> (session, its slots)
            for i, key in enumerate(batch.sources(n)):
                share = shares.get(key)
                if share is None:
                    share = shares[key] = (table.get(key) or self.open_session(key), [])
                share[1].append(i)
            for session, slots in shares.values():
                if session is not None and not session.closed:
                    session.forward(slots)
            if n < batch.slots:
                return

    def sweeper(self) -> None:
        while True:
            gevent.sleep(TICK)
            state = self.state
            expired, silent = sweep(self.table.sessions(), time.monotonic(),
                                    idle_limit(state.idle_timeout), state.timeout)
            for session in expired:
                state.count("udp_expired")
                session.close()
            for session in silent:
                if not session.closed:
                    session.silent()

    # the Balancer interface ------------------------------------------------------------

    def start(self) -> None:
        self.listen(self.sock)
        self.sweeping = gevent.spawn(self.sweeper)

    def resume(self, reader) -> None:
        if reader is self.reader and not self.closed:
            reader.start(self.receive)

    def listen(self, sock) -> None:
        """Read the datagrams that reach sock."""
        sock.setblocking(False)
        self.sock = sock
        self.reader = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.reader.start(self.receive)

    def shed(self, count: int) -> None:
        """Give back count sessions (a worker group's member over its -x share): the least
        recently used."""
        for session in self.table.sessions()[:count]:
            self.state.count("udp_evicted")
            session.close()

    def close_sessions(self) -> None:
        for session in self.table.sessions():
            session.close()

    def close(self, drain: bool = False) -> None:
        """Stop reading clients. Without the listen socket no answer can reach a client,
        so the sessions end with it, unless drain: then they go on (and answer from the
        listen socket, which stays open) until they expire or the runtime closes them."""
        self.closed = True
        if self.reader is not None:
            self.reader.stop()
        if drain:
            return
        if self.sweeping is not None:
            self.sweeping.kill(block=False)
        self.close_sessions()
        self.sock.close()

    def listening_socket(self):
        return self.sock

    def relisten(self, endpoint) -> None:
        """`listen ADDR`: clients of the old address cannot be answered from the new one."""
        sock = bind(endpoint, socket.SOCK_DGRAM)
        old = self.sock
        self.close_sessions()
        self.reader.stop()
        self.listen(sock)
        old.close()
