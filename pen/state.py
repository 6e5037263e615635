"""The balancer's data: settings, servers, access lists, the client table, live connections.

Everything here is plain Python; the command language (commands.py) is the only writer
besides the I/O layer's counters, and selection (select.py) the main reader.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .acl import AccessLists
from .addr import Endpoint
from .health import Check, Health, HealthSettings


@dataclass
class Server:
    """A backend, as `server N ...` and the status page describe it."""

    index: int
    endpoint: Endpoint | None = None     # None: a slot added by `server N` with no address yet
    max: int = 0                         # soft limit on connections (0 = unlimited)
    hard: int = 0                        # limit for returning clients (0 = same as max)
    weight: int = 0
    prio: int = 0
    acl: int = 0
    blacklist_until: float = 0.0
    conn: int = 0                        # connections now
    total: int = 0                       # connections ever
    sx: int = 0                          # bytes sent to the server
    rx: int = 0                          # bytes received from the server
    failures: int = 0                    # connects that failed
    dgrams_sx: int = 0                   # UDP datagrams sent to the server
    dgrams_rx: int = 0                   # UDP datagrams received from the server
    # health.py: the check (None: the default), its results, the operator's word, slow start
    check: Check | None = None
    health: Health = field(default_factory=Health)
    admin: str = "ready"                 # ready, drain or maint
    ramp_start: float = 0.0
    ramp_credit: float = 0.0

    @property
    def address(self) -> str:
        if self.endpoint is None:
            return "0.0.0.0"
        return self.endpoint.path or self.endpoint.host or "0.0.0.0"

    @property
    def port(self) -> int:
        return self.endpoint.port if self.endpoint else 0

    def blacklisted(self, now: float) -> bool:
        return self.blacklist_until > now

    def full(self, returning: bool) -> bool:
        limit = (self.hard or self.max) if returning else self.max
        return limit > 0 and self.conn >= limit

    def command(self) -> str:
        """The `server N ...` command that recreates this server."""
        words = [f"server {self.index} acl {self.acl}"]
        if self.endpoint is not None:
            words.append(f"address {self.address} port {self.port}")
        words.append(f"max {self.max} hard {self.hard} weight {self.weight} prio {self.prio}")
        return " ".join(words)


@dataclass
class Client:
    """A slot of the client table: the server a client last used, and its counters."""

    ip: Any
    server: int = -1
    last: float = 0.0
    connects: int = 0
    sx: int = 0                   # bytes sent to the client (as the C pen counts them)
    rx: int = 0                   # bytes received from the client


class ClientTable:
    """`-c` slots keyed by client IP; a new client evicts the least recently used one."""

    def __init__(self, slots: int = 2048) -> None:
        self.slots = slots
        self._clients: OrderedDict[Any, Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self):
        return iter(list(self._clients.values()))

    def lookup(self, ip, now: float, tracking: float) -> Client | None:
        """The client's slot, unless it is older than the tracking time (0 = forever)."""
        client = self._clients.get(ip)
        if client is None:
            return None
        if tracking > 0 and now - client.last > tracking:
            del self._clients[ip]
            return None
        return client

    def touch(self, ip, now: float) -> Client:
        """The client's slot, made most recently used; created (evicting the LRU one) if new."""
        client = self._clients.get(ip)
        if client is None:
            if self.slots <= 0:
                return Client(ip, last=now)          # a table of no slots remembers nothing
            while len(self._clients) >= self.slots:
                self._clients.popitem(last=False)
            client = self._clients[ip] = Client(ip)
        else:
            self._clients.move_to_end(ip)
        client.last = now
        return client

    def resize(self, slots: int) -> None:
        self.slots = slots
        while len(self._clients) > max(slots, 0):
            self._clients.popitem(last=False)

    def forget_server(self, index: int) -> None:
        for client in self._clients.values():
            if client.server == index:
                client.server = -1


@dataclass
class Connection:
    """A connection in flight, for `connection N`, `close N` and the status page."""

    id: int
    client: Any                   # (ip, port) or UNIX peer name
    server: Server | None = None
    started: float = field(default_factory=time.time)
    sx: int = 0                   # bytes sent to the server
    rx: int = 0                   # bytes received from the server
    close: Callable[[], None] | None = None


class State:
    """Settings (pen's defaults), servers, ACLs, clients and connections."""

    def __init__(self) -> None:
        # selection
        self.hash = False
        self.roundrobin = False
        self.stubborn = False
        self.weight = False
        self.prio = False
        self.blacklist_time = 30
        self.tracking = 0
        self.timeout = 3.0
        self.conn_max = 500
        self.clients = ClientTable(2048)
        self.servers: list[Server] = []
        self.emergency: Server | None = None
        self.abuse: Server | None = None
        self.rr_cursor = -1
        # access
        self.acls = AccessLists()
        self.client_acl = 0
        self.control_acl = 0
        self.tarpit_acl = -1
        # relaying
        self.http = False
        self.idle_timeout = 0
        self.tcp_nodelay = False
        self.keepalive = False
        self.tcp_fastclose = "off"
        self.transparent = False
        self.source: str | None = None
        self.pending_max = 100
        self.dsr_if: str | None = None
        self.health = HealthSettings()    # healthcheck*, slowstart, metrics_port
        # TLS (-E ...): plain settings, applied by tls.py
        self.ssl_cert: str | None = None
        self.ssl_key: str | None = None
        self.ssl_ca_file: str | None = None
        self.ssl_ca_dir: str | None = None
        self.ssl_require_client = False
        self.ssl_protocol = "ssl23"
        self.ssl_compat = False
        self.ssl_ciphers: str | None = None
        self.ssl_options: list[str] = []
        self.ssl_sni_path: str | None = None
        self.ssl_renegotiation_interval = 3600
        self.ssl_ocsp_response: str | None = None
        self.ssl_backend = False
        # process
        self.debug = 0
        self.ascii = False
        self.log: str | None = None
        self.web_stats: str | None = None
        self.listen: Endpoint | None = None
        self.control: Endpoint | None = None
        self.config_file: str | None = None
        self.allow_exit = False
        self.udp = False
        # live
        self.connections: dict[int, Connection] = {}
        self.counters: Counter[str] = Counter()   # events the I/O layer counts (udp_stray...)
        self._ids = itertools.count()
        self.accepted = 0             # connections opened (accepted) since start
        self.runtime: Any = None      # the I/O layer's hooks (tcp.Balancer); None in pure tests
        self.started = time.time()

    # servers ---------------------------------------------------------------

    def server(self, index: int) -> Server:
        """Server N, growing the table with empty slots as `server N` does in pen."""
        if index < 0 or index > 10000:
            raise ValueError(f"server number out of range: {index}")
        while len(self.servers) <= index:
            self.servers.append(Server(len(self.servers)))
        return self.servers[index]

    def blacklist(self, server: Server, now: float, seconds: float | None = None) -> None:
        server.blacklist_until = now + (self.blacklist_time if seconds is None else seconds)

    # connections -----------------------------------------------------------

    def open_connection(self, client) -> Connection:
        conn = Connection(next(self._ids), client)
        self.accepted += 1
        self.connections[conn.id] = conn
        return conn

    def close_connection(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
