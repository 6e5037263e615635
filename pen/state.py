"""The balancer's data: settings, servers, access lists, the client table, live connections.

Everything here is plain Python. The command language (commands.py) writes the settings;
the balancers report what happens through the accounting methods below (a connection
opened, tracked, moved to a server, bytes moved, a server failed, a connection closed), so
a new counter is one edit here; selection (select.py) is the main reader.

Byte counters, everywhere: `sx` is what pen sent to that party, `rx` what it received from
it (a server's sx is the clients' bytes, a client's sx the servers' replies), as the C pen
counts them. A Connection's sx/rx are its server's side.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Callable

from .acl import AccessLists
from .addr import Endpoint
from .health import Check, Health, HealthSettings
from .hooks import OFFLINE, ProcessHooks
from .maglev import Maglev

log = logging.getLogger("pen")

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
    conn: int = 0                        # connections (UDP: sessions) now
    total: int = 0                       # connections ever
    sx: int = 0                          # bytes sent to the server
    rx: int = 0                          # bytes received from the server
    failures: int = 0                    # connects (UDP: datagrams) that failed
    dgrams_sx: int = 0                   # UDP datagrams sent to the server
    dgrams_rx: int = 0                   # UDP datagrams received from the server
    proxy_protocol: str | None = None    # v1, v2 or off; None: as state.proxy_protocol
    # health.py: the check (None: the default), its results, the operator's word, slow start
    check: Check | None = None
    health: Health = field(default_factory=Health)
    admin: str = "ready"                 # ready, drain or maint
    ramp_start: float = 0.0
    ramp_credit: float = 0.0

    @property
    def name(self) -> str:
        """The address as the user gave it (a host name stays a name)."""
        if self.endpoint is None:
            return "0.0.0.0"
        return self.endpoint.path or self.endpoint.host or "0.0.0.0"

    @property
    def address(self) -> str:
        """The address as pen shows it: resolved (a UNIX socket: its path)."""
        endpoint = self.endpoint
        return endpoint.address if endpoint is not None and endpoint.sockaddr else self.name

    @property
    def port(self) -> int:
        return self.endpoint.port if self.endpoint else 0

    @property
    def listed_port(self) -> int:
        """The port `servers` and the status page show: pen shows 1 for a UNIX socket."""
        return 1 if self.endpoint is not None and self.endpoint.is_unix else self.port

    def blacklisted(self, now: float) -> bool:
        return self.blacklist_until > now

    def proxy_version(self, default: str) -> int:
        """The PROXY protocol version to send this server (0: none)."""
        setting = self.proxy_protocol or default
        return 0 if setting == "off" else int(setting[1])

    def full(self, returning: bool) -> bool:
        limit = (self.hard or self.max) if returning else self.max
        return limit > 0 and self.conn >= limit

    def command(self) -> str:
        """The `server N ...` command that recreates this server."""
        words = [f"server {self.index} acl {self.acl}"]
        if self.endpoint is not None:
            words.append(f"address {self.name} port {self.port}")
        words.append(f"max {self.max} hard {self.hard} weight {self.weight} prio {self.prio}")
        if self.proxy_protocol is not None:
            words.append(f"proxy_protocol {self.proxy_protocol}")
        return " ".join(words)


@dataclass
class Client:
    """A slot of the client table: the server a client last used, and its counters."""

    ip: Any
    server: int = -1
    last: float = 0.0
    slot: int = 0                 # its number in the table (pen's client index)
    connects: int = 0
    sx: int = 0                   # bytes sent to the client (as the C pen counts them)
    rx: int = 0                   # bytes received from the client


class ClientTable:
    """`-c` slots keyed by client IP; a new client evicts the least recently used one."""

    def __init__(self, slots: int = 2048) -> None:
        self.slots = slots
        self._clients: OrderedDict[Any, Client] = OrderedDict()
        self._free: list[int] = []        # slot numbers given back, reused lowest first

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self):
        return iter(list(self._clients.values()))

    def lookup(self, ip, now: float, tracking: float) -> Client | None:
        """The client's slot, unless it is older than the tracking time (0 = forever)."""
        key = ip._ip if type(ip) is IPv4Address else ip      # (see touch)
        client = self._clients.get(key)
        if client is None:
            return None
        if tracking > 0 and now - client.last > tracking:
            self._drop(self._clients.pop(key))
            return None
        return client

    def _drop(self, client: Client) -> None:
        heapq.heappush(self._free, client.slot)

    def touch(self, ip, now: float) -> Client:
        """The client's slot, made most recently used; created (evicting the LRU one) if new."""
        # An IPv4 client is keyed by its number: an int hashes in C, where an IPv4Address
        # hashes in Python (hex of its number), twice per connection. IPv6 keeps its object
        # (which never equals an int) and UNIX peers None.
        key = ip._ip if type(ip) is IPv4Address else ip
        client = self._clients.get(key)
        if client is None:
            if self.slots <= 0:
                return Client(ip, last=now)          # a table of no slots remembers nothing
            while len(self._clients) >= self.slots:
                self._drop(self._clients.popitem(last=False)[1])
            slot = heapq.heappop(self._free) if self._free else len(self._clients)
            client = self._clients[key] = Client(ip, slot=slot)
        else:
            self._clients.move_to_end(key)
        client.last = now
        return client

    def resize(self, slots: int) -> None:
        self.slots = slots
        while len(self._clients) > max(slots, 0):
            self._drop(self._clients.popitem(last=False)[1])


@dataclass
class Connection:
    """A connection in flight, for `connection N`, `close N` and the status page."""

    id: int
    client: Any                   # (ip, port) or UNIX peer name (a PROXY header's source)
    destination: Any = None       # the address the client reached (a PROXY header's; or
    #                               noted before a TLS layer hides the accepted socket)
    server: Server | None = None
    entry: Client | None = None   # the client's slot in the client table
    started: float = field(default_factory=time.time)
    sx: int = 0                   # bytes sent to the server
    rx: int = 0                   # bytes received from the server
    close: Callable[[], None] | None = None
    downfd: int = -1              # the client's socket, for `connection N` as pen shows it
    upfd: int = -1                # the server's
    relay: Any = None             # its relay.Relay while bytes move (.last: when they last did)

    # bytes moved: the connection's, its server's and its client's counters at once
    def to_server(self, nbytes: int, datagrams: int = 0) -> None:
        self.sx += nbytes
        server = self.server
        server.sx += nbytes
        server.dgrams_sx += datagrams
        self.entry.rx += nbytes

    def to_client(self, nbytes: int, datagrams: int = 0) -> None:
        self.rx += nbytes
        server = self.server
        server.rx += nbytes
        server.dgrams_rx += datagrams
        self.entry.sx += nbytes


class State:
    """Settings (pen's defaults), servers, ACLs, clients and connections."""

    connection = Connection       # what open_connection makes (a worker group's: board.py)

    def __init__(self) -> None:
        # selection
        self.hash = False
        self.roundrobin = False
        self.stubborn = False
        self.weight = False
        self.prio = False
        self.maglev = False
        self.maglev_table = Maglev()
        self.blacklist_time = 30
        self.tracking = 0
        self.timeout = 3.0
        self.conn_max = 500
        self.clients = ClientTable(2048)
        self.servers: list[Server] = []
        self.emergency: Server | None = None
        self.abuse: Server | None = None
        self.rr_cursor = 0            # as pen: the first round-robin pick is server 1
        self.current = 0              # the server last connected to (pen's "current")
        # access
        self.acls = AccessLists()
        self.client_acl = 0
        self.control_acl = 0
        self.tarpit_acl = -1
        self.geoip_database: str | None = None   # .mmdb for country entries
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
        self.proxy_protocol = "off"          # send a PROXY header to servers: v1, v2, off
        self.accept_proxy = -1               # take one from peers ACL N permits (-1: never)
        self.upgrade_grace = 30.0            # seconds an upgraded-away copy lets connections run
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
        self.config_servers: set[int] = set()   # the servers the -F file defines
        self.allow_exit = False
        self.udp = False
        self.workers = 1                     # processes serving (-O "workers N"; start-up)
        self.worker_table: list[dict] = []   # a group's parent: row, pid, restarts of each
        # live
        self.connections: dict[int, Connection] = {}
        self.counters: Counter[str] = Counter()   # events the I/O layer counts (udp_stray...)
        self.last_slot = 0           # pen's connections_last: where the next search starts
        self.accepted = 0             # connections opened (accepted) since start
        self.process: ProcessHooks = OFFLINE    # the running process, once there is one
        self.started = time.time()

    # servers ---------------------------------------------------------------

    def server(self, index: int) -> Server:
        """Server N, growing the table with empty slots as `server N` does in pen."""
        if index < 0 or index > 10000:
            raise ValueError(f"server number out of range: {index}")
        while len(self.servers) <= index:
            self.servers.append(self.new_server(len(self.servers)))
        return self.servers[index]

    def new_server(self, index: int, endpoint: Endpoint | None = None) -> Server:
        """An empty server slot (a worker group's State makes shared ones: board.py)."""
        return Server(index, endpoint)

    def remove_server(self, index: int) -> None:
        """Empty slot index: no new client goes there; connections to it keep their Server
        and finish (pen's numbering stays: the other servers keep theirs)."""
        if 0 <= index < len(self.servers):
            self.servers[index] = self.new_server(index)

    def blacklist(self, server: Server, now: float, seconds: float | None = None) -> None:
        server.blacklist_until = now + (self.blacklist_time if seconds is None else seconds)

    def server_failed(self, server: Server, why: str, now: float) -> None:
        """A server did not take a client (refused, timed out...): blacklist it, say so."""
        self.count_failure(server)
        self.blacklist(server, now)
        log.warning("server %s (%s) %s; blacklisted for %ss", server.index, server.endpoint,
                    why, self.blacklist_time)

    def count_failure(self, server: Server) -> None:
        server.failures += 1

    def count(self, event: str) -> None:
        """An event worth a counter on the status page (udp_stray, tls_failures...)."""
        self.counters[event] += 1

    # connections -----------------------------------------------------------

    def open_connection(self, client) -> Connection:
        """A connection numbered as pen numbers it: the first free slot from the last one
        taken, wrapping at conn_max (so a lone client's connections all get slot 0)."""
        slot, taken = self.last_slot, self.connections
        if slot in taken or slot >= self.conn_max:
            if slot + 1 < self.conn_max and slot + 1 not in taken:
                slot += 1                 # the usual answer, without the search
            else:
                slot = self._next_free_slot(slot)
        self.last_slot = slot
        conn = taken[slot] = self.connection(slot, client)
        self.accepted += 1
        return conn

    def track(self, conn: Connection, ip, server: Server, now: float) -> None:
        """A client's connection got its server: remember the client, count both."""
        entry = conn.entry = self.clients.touch(ip, now)
        entry.connects += 1
        self.assign(conn, server)

    def assign(self, conn: Connection, server: Server) -> None:
        """conn goes to server from now on (first, or a UDP session failing over)."""
        if conn.server is not None:
            conn.server.conn -= 1
        conn.server = server
        self.current = server.index       # pen's "current" server (status page)
        server.conn += 1
        server.total += 1
        if server.index >= 0:             # not the emergency or abuse server
            conn.entry.server = server.index

    def _next_free_slot(self, slot: int) -> int:
        slots, taken = max(self.conn_max, 1), self.connections
        for _ in range(slots):
            slot = (slot + 1) % slots
            if slot not in taken:
                return slot
        return max(taken) + 1         # more live than conn_max (it was lowered): above it

    def connection_limit(self) -> int:
        """How many connections this process may hold: -x (a worker group's: board.py)."""
        return self.conn_max

    def close_connection(self, conn: Connection) -> None:
        """The connection ended (once: a second call changes nothing)."""
        if self.connections.pop(conn.id, None) is conn and conn.server is not None:
            conn.server.conn -= 1
