"""The UDP balancer (-U) on gevent: one session per client address and port.

Client -> server: a read callback on the listen socket takes a batch of datagrams (see
mmsg: up to 32 per system call on Linux), finds each client's session (opening it with
select.candidates) and sends its datagrams from the session's own backend socket, again
all in one call. Server -> client: a read callback on that socket answers the client from
the listen socket the same way. No greenlet switch, and a datagram is never copied into a
Python object unless it must be kept for a failover. A sweeper greenlet ends idle sessions
and fails over from silent servers. The decisions are select's and udptable's; this module
only moves datagrams.

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
from .cli import UsageError
from .daemon import Throttled
from .mmsg import best as best_batch
from .select import candidates
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
                 "reader", "conn", "entry", "last", "pending", "pending_since", "unanswered",
                 "answered", "closed")

    def __init__(self, balancer: "UdpBalancer", key, client, ip) -> None:
        self.balancer = balancer
        self.key, self.client, self.ip = key, client, ip
        self.server: Server | None = None
        self.sock = self.dest = self.dest_name = self.reader = self.conn = self.entry = None
        self.last = time.monotonic()
        self.pending: bytes | None = None      # the client's last datagram, for failover
        self.pending_since = 0.0
        self.unanswered = 0
        self.answered = False
        self.closed = False

    # choosing and switching servers ----------------------------------------------------

    def attach(self, server: Server) -> bool:
        """Move the session to server with a fresh backend socket (late answers from the
        previous server must not reach the client). False if no socket could be made."""
        try:
            sock = self.balancer.open_backend(server, self.client)
        except OSError as e:
            self.balancer.count("udp_socket_errors")
            self.balancer.warn(f"UDP: no socket for {server.endpoint}: {e.strerror or e}")
            return False
        old_sock, old_reader = self.sock, self.reader
        if self.server is not None:
            self.server.conn -= 1
        self.server, self.sock = server, sock
        self.dest = server.endpoint.sockaddr
        self.dest_name = self.balancer.batch.name(self.dest)
        server.conn += 1
        server.total += 1
        if self.conn is not None:
            self.conn.server = server
        if self.entry is not None and server.index >= 0:
            self.entry.server = server.index
        self.answered, self.unanswered = False, 0
        self.reader = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.reader.start(self.from_server, sock)
        if old_reader is not None:
            old_reader.stop()
            old_sock.close()
        return True

    def fail_over(self, why: str) -> None:
        """Blacklist the server, move to the next candidate, and resend what is unanswered."""
        state, failed = self.balancer.state, self.server
        failed.failures += 1
        state.blacklist(failed, time.time())
        log.warning("server %s (%s) %s; blacklisted for %ss", failed.index, failed.endpoint,
                    why, state.blacklist_time)
        for server in candidates(state, self.ip, self.client[1], time.time()):
            if server is not failed and self.attach(server):
                break
        else:
            self.close()
            return
        if self.pending is not None:
            self.pending_since = time.monotonic()
            self.resend()

    def refused(self) -> bool:
        """The backend socket reported ECONNREFUSED: fail over if the server's own port
        refused (a TFTP transfer port that has closed is no reason). True if it failed over."""
        if RECVERR:
            want = self.server.endpoint.sockaddr[:2]
            if want not in (address[:2] for address in refusals(self.sock)):
                self.balancer.count("udp_refused_elsewhere")
                return False
        self.balancer.count("udp_refused")
        self.fail_over("refused the datagram (ICMP port unreachable)")
        return True

    # moving datagrams ------------------------------------------------------------------

    def forward(self, slots: list) -> None:
        """Send the client's datagrams in these batch slots to the server, in order."""
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
                if self.refused() or retried == sent:
                    sent += 1
                else:
                    retried = sent
                if self.closed:                # no server left
                    return
                continue
            except OSError as e:
                self.balancer.count("udp_send_errors")
                log.debug("UDP: send to %s: %s", self.dest, e)
                sent += 1
                continue
            nbytes += batch.size_of(slots[sent:sent + n])
            sent += n
            datagrams += n
        self.pending = batch.copy(slots[-1])
        self.unanswered += datagrams
        self.count_sent(datagrams, nbytes)

    def count_sent(self, datagrams: int, nbytes: int) -> None:
        self.server.sx += nbytes
        self.server.dgrams_sx += datagrams
        self.conn.sx += nbytes
        self.entry.rx += nbytes

    def resend(self) -> None:
        """Send the pending datagram again (to the server a failover chose)."""
        self.unanswered += 1
        try:
            self.sock.sendto(self.pending, self.dest)
        except OSError as e:
            self.balancer.count("udp_send_errors")
            log.debug("UDP: send to %s: %s", self.dest, e)
            return
        self.count_sent(1, len(self.pending))

    def from_server(self, sock) -> None:
        """A read callback: relay the server's datagrams to the client."""
        batch = self.balancer.batch
        for _ in range(ROUNDS):
            if self.sock is not sock or self.closed:      # moved on (failover) or ended
                return
            try:
                n = batch.receive(sock)
            except ConnectionRefusedError:
                self.refused()
                return
            except OSError as e:
                self.balancer.count("udp_receive_errors")
                log.debug("UDP: receive from %s: %s", self.server.endpoint, e)
                if RECVERR:
                    refusals(sock)   # empty the error queue, or the socket stays readable
                return
            slots = []
            for i, source in enumerate(batch.sources(n)):
                if source != self.dest_name and not self.moved(source):
                    self.balancer.count("udp_stray")  # not our server: never to the client
                    continue
                slots.append(i)
            if slots:
                self.reply(slots)
            if n < batch.slots:
                return

    def moved(self, source) -> bool:
        """A datagram from another port than dest: the server's (TFTP: the transfer's own
        port, where the client's next datagrams go) if it comes from the server's IP."""
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
        nbytes = batch.size_of(slots)
        server = self.server
        server.rx += nbytes
        server.dgrams_rx += len(slots)
        self.conn.rx += nbytes
        self.entry.sx += nbytes
        sent = 0
        while sent < len(slots):
            try:
                sent += batch.send(listen, slots, sent, self.key)
            except OSError as e:
                self.balancer.count("udp_reply_errors")
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
        if self.server is not None:
            self.server.conn -= 1
        if self.reader is not None:
            self.reader.stop()
        if self.sock is not None:
            self.sock.close()
        self.pending = None


class UdpBalancer:
    """The listen socket's receive loop, the session table and the sweeper.

    It is its own `listener` for the runtime (start, close, max_accept)."""

    max_accept = 0                     # the runtime sets it; UDP has nothing to accept

    def __init__(self, state: State, sock, log_line=None) -> None:
        self.state = state
        self.sock = sock
        self.reader = None
        self.listener = self
        self.table = SessionTable()
        self.batch = best_batch()
        self.log_line = log_line or (lambda text: None)
        self.connect_hooks = []          # fn(sock, server, client_address): transparent, source
        self.sweeping = None
        self.closed = False
        self.warn = Throttled(logging.WARNING)   # our own shortage: once a minute, not per datagram

    def count(self, what: str) -> None:
        self.state.counters[what] += 1

    # the backend socket: the one place a transparent hook needs to wrap -------------------

    def open_backend(self, server: Server, client):
        endpoint = server.endpoint
        sock = socket.socket(endpoint.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            for hook in self.connect_hooks:
                hook(sock, server, client)
            if RECVERR:
                level, option = _RECVERR[endpoint.family]
                sock.setsockopt(level, option, 1)
            else:
                sock.connect(endpoint.sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    # sessions --------------------------------------------------------------------------

    def open_session(self, key) -> Session | None:
        state = self.state
        client = self.batch.address(key)
        ip = client_ip(client)
        session = Session(self, key, client, ip)
        for server in candidates(state, ip, client[1], time.time()):
            if session.attach(server):
                break
        else:
            self.count("udp_no_server")
            log.info("no server for %s", client)
            return None
        session.conn = conn = state.open_connection(client)
        conn.server, conn.close = session.server, session.close
        entry = session.entry = state.clients.touch(ip, time.time())
        entry.connects += 1
        if session.server.index >= 0:
            entry.server = session.server.index
        for old in self.table.add(key, session, state.conn_max):
            self.count("udp_evicted")
            old.close()
        if state.log is not None:
            self.log_line(str(ip), session.server.endpoint.address, "UDP")
        return session

    def receive(self) -> None:
        """A read callback on the listen socket: the datagrams from clients."""
        sock, table, batch = self.sock, self.table, self.batch
        for _ in range(ROUNDS):
            try:
                n = batch.receive(sock)
            except OSError as e:
                self.count("udp_receive_errors")
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
                self.count("udp_expired")
                session.close()
            for session in silent:
                if not session.closed:
                    self.count("udp_silent")
                    session.fail_over(f"left a datagram unanswered for {state.timeout}s")

    # the runtime's listener interface --------------------------------------------------

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

    def close_sessions(self) -> None:
        for session in self.table.sessions():
            session.close()

    def close(self) -> None:
        """Stop: without the listen socket no answer can reach a client, so end all."""
        self.closed = True
        if self.sweeping is not None:
            self.sweeping.kill(block=False)
        if self.reader is not None:
            self.reader.stop()
        self.close_sessions()
        self.sock.close()

    def relisten(self, sock) -> None:
        """`listen ADDR`: clients of the old address cannot be answered from the new one."""
        old = self.sock
        self.close_sessions()
        self.reader.stop()
        self.listen(sock)
        old.close()
