"""Choosing a server for a new connection, and failing over when it does not answer.

`candidates()` yields the servers to try, in pen's order (`choose()` names the first,
`failover()` the rest, for a caller that seldom needs them):
  1. a client the ACL denies gets the abuse server (-B) or nothing;
  2. unless -r, the server the client used last time, if it is available to it (a
     drained server still is; a down or maint one is not);
  3. otherwise by mode: prio, weight, hash, or round-robin over available servers (with
     slowstart, a server coming back takes a growing part of its turns);
  4. after a failure (the caller blacklists the server): the next available servers in
     order, wrapping around, then the emergency server (-e); with -s, nothing more, and
     nothing at all when the client's own server (step 2) is unavailable.
The generator is lazy, so each step sees the blacklisting the caller did before it.
"""

from __future__ import annotations

from typing import Iterator

from .health import admit, share
from .state import Server, State


def available(state: State, server: Server, ip, now: float, returning: bool = False) -> bool:
    """A down (checked) or maint server gets nothing new; a drained one only its clients."""
    return (server.endpoint is not None
            and not server.blacklisted(now)
            and server.health.up
            and (server.admin == "ready" or (returning and server.admin == "drain"))
            and not server.full(returning)
            and state.acls.permits(server.acl, ip))


def client_hash(ip, port: int | None, with_port: bool) -> int:
    value = int(ip) if ip is not None else 0
    return value ^ (port or 0) if with_port else value


def _rotation(servers: list[Server], start: int) -> list[Server]:
    """All servers, beginning at index start, wrapping around."""
    n = len(servers)
    return [servers[(start + i) % n] for i in range(n)] if n else []


def _by_mode(state: State, ip, port, now: float) -> Server | None:
    servers = state.servers
    if not servers:
        return None
    if state.maglev:        # over hash: the same server for a client on every box
        return _by_maglev(state, ip, now)
    if state.hash:
        start = client_hash(ip, port, state.roundrobin) % len(servers)
        for server in _rotation(servers, start):
            if available(state, server, ip, now):
                return server
        return None
    if state.prio:          # as pen: the lowest prio, and of equals the first in order
        return min((s for s in servers if available(state, s, ip, now)),
                   key=lambda s: s.prio, default=None)
    slowstart = state.health.slowstart
    if not state.weight and slowstart <= 0:
        # plain round-robin: the first available server in the rotation (no list built,
        # no server past it checked: this runs for every connection)
        n, start = len(servers), state.rr_cursor + 1
        for i in range(n):
            server = servers[(start + i) % n]
            if available(state, server, ip, now):
                state.rr_cursor = server.index
                return server
        return None
    ring = [s for s in _rotation(servers, state.rr_cursor + 1) if available(state, s, ip, now)]
    if not ring:
        return None
    if state.weight:
        chosen = min(ring, key=lambda s: s.conn / (max(s.weight, 1) * share(s, now, slowstart)))
    elif slowstart > 0:
        # A server coming back takes only part of its turns; a turn it passes goes to the
        # next server, and the rotation goes on after the one whose turn it was.
        chosen = next((s for s in ring if admit(s, now, slowstart)), ring[0])
        state.rr_cursor = ring[0].index
        return chosen
    state.rr_cursor = chosen.index
    return chosen


def _by_maglev(state: State, ip, now: float) -> Server | None:
    """The client's server in the Maglev table of the servers that are up; if it is full
    or its ACL denies this client, the next available one in order."""
    servers = state.servers
    up = [(s.index, f"{s.address}:{s.port}", s.weight or 1) for s in servers
          if s.endpoint is not None and not s.blacklisted(now) and s.health.up
          and s.admin == "ready"]
    index = state.maglev_table.lookup(up, ip.packed if ip is not None else b"")
    if index is None:
        return None
    for server in _rotation(servers, index):
        if available(state, server, ip, now):
            return server
    return None


def initial(state: State, ip, port, now: float) -> Server | None:
    """The first server to try for a permitted client. A returning client whose server is
    unavailable goes by mode, except with -s: pen closes it ("without trying another")."""
    if not state.roundrobin:
        client = state.clients.lookup(ip, now, state.tracking)
        if client is not None and 0 <= client.server < len(state.servers):
            server = state.servers[client.server]
            if available(state, server, ip, now, returning=True):
                return server
            if state.stubborn:
                return None
    return _by_mode(state, ip, port, now)


def _next_after(state: State, failed: Server, ip, now: float, tried: set[int]) -> Server | None:
    for server in _rotation(state.servers, failed.index + 1):
        if server.index not in tried and available(state, server, ip, now):
            return server
    return None


def choose(state: State, ip, port, now: float) -> Server | None:
    """The first server to try (steps 1-3, or the emergency server when no server would
    take a permitted client); None: nowhere. (No generator: this is every connection's.)"""
    if not state.acls.permits(state.client_acl, ip):
        return state.abuse
    server = initial(state, ip, port, now)
    if server is None and not state.stubborn:
        return state.emergency
    return server


def failover(state: State, failed: Server, ip, now: float) -> Iterator[Server]:
    """The servers to try after the first one failed (step 4); the caller blacklists each
    one that fails before asking for the next. Nothing after the abuse or the emergency
    server, and nothing at all with -s."""
    if failed.index < 0 or state.stubborn:
        return
    tried: set[int] = {failed.index}
    server = _next_after(state, failed, ip, now, tried)
    while server is not None:
        tried.add(server.index)
        yield server
        server = _next_after(state, server, ip, now, tried)
    if state.emergency is not None:
        yield state.emergency


def candidates(state: State, ip, port, now: float) -> Iterator[Server]:
    """Servers to try in order; the caller blacklists each one that fails before asking again."""
    first = choose(state, ip, port, now)
    if first is not None:
        yield first
        yield from failover(state, first, ip, now)
