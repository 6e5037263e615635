"""Server selection and failover order: pure, no sockets."""

import ipaddress

from pen.acl import parse_entry
from pen.addr import Endpoint
from pen.select import candidates
from pen.state import State

A, B, C = (ipaddress.ip_address(f"10.0.0.{i}") for i in (1, 2, 3))
NOW = 1000.0


def state_with(n=3, **settings):
    state = State()
    for i in range(n):
        state.server(i).endpoint = Endpoint(host=f"192.0.2.{i}", port=80)
    for key, value in settings.items():
        setattr(state, key, value)
    return state


def first(state, ip=A, port=1234, now=NOW):
    server = next(candidates(state, ip, port, now), None)
    return None if server is None else server.index


def connect(state, ip, now=NOW):
    """What the I/O layer does after a successful connect."""
    index = first(state, ip, now=now)
    state.clients.touch(ip, now).server = index
    return index


def test_new_clients_round_robin_and_tracking_keeps_them():
    state = state_with()
    # as pen (its last_server starts at 0): the first pick is server 1
    assert [connect(state, ip) for ip in (A, B, C)] == [1, 2, 0]
    assert [connect(state, ip) for ip in (A, B, C)] == [1, 2, 0]


def test_roundrobin_ignores_the_client_table():
    state = state_with(roundrobin=True)
    assert [connect(state, A) for _ in range(4)] == [1, 2, 0, 1]


def test_round_robin_with_one_server_picks_it():
    assert first(state_with(1)) == 0


def test_tracking_time_forgets_old_clients():
    state = state_with(tracking=10)
    assert connect(state, A) == 1
    assert connect(state, A, now=NOW + 5) == 1
    assert connect(state, A, now=NOW + 100) == 2


def test_client_table_keys_an_address_by_value_and_family():
    """IPv4 clients are keyed by their number: 0.0.0.1 and ::1 stay two clients, and two
    objects for one address are one."""
    state = state_with()
    v4, v6 = ipaddress.ip_address("0.0.0.1"), ipaddress.ip_address("::1")
    first = state.clients.touch(v4, NOW)
    assert state.clients.touch(ipaddress.ip_address("0.0.0.1"), NOW + 1) is first
    assert state.clients.touch(v6, NOW + 2) is not first
    assert len(state.clients) == 2
    assert state.clients.lookup(v6, NOW + 3, 0).ip == v6
    assert [c.ip for c in state.clients] == [v4, v6]
    assert state.clients.lookup(None, NOW, 0) is None            # a UNIX peer: none yet


def test_client_table_evicts_least_recently_used():
    state = state_with()
    state.clients.resize(2)
    connect(state, A)
    connect(state, B, now=NOW + 1)
    connect(state, A, now=NOW + 2)           # A is now the most recent
    connect(state, C, now=NOW + 3)           # evicts B
    assert state.clients.lookup(B, NOW + 4, 0) is None
    assert state.clients.lookup(A, NOW + 4, 0) is not None


def test_failover_goes_to_the_next_servers_in_order_then_emergency():
    state = state_with()
    state.emergency = state_with(1).servers[0]
    state.emergency.index = -1
    tried = []
    for server in candidates(state, A, 1, NOW):
        tried.append(server.index)
        if server.index >= 0:
            state.blacklist(server, NOW)
    assert tried == [1, 2, 0, -1]


def test_blacklisted_server_is_skipped_until_the_time_is_up():
    state = state_with(2, roundrobin=True, blacklist_time=30)
    state.blacklist(state.servers[0], NOW)
    assert {first(state, now=NOW + t) for t in (1, 2, 3)} == {1}
    assert 0 in {first(state, now=NOW + 31) for _ in range(2)}


def test_stubborn_never_fails_over():
    state = state_with(stubborn=True)
    state.emergency = state_with(1).servers[0]
    order = list(candidates(state, A, 1, NOW))
    assert [s.index for s in order] == [1]


def test_stubborn_closes_a_client_whose_server_is_unavailable():
    """man pen: "if the initial choice is unavailable, the client connection is closed
    without trying another server"; without -s the client goes to another server."""
    state = state_with(stubborn=True)
    state.emergency = state_with(1).servers[0]
    state.clients.touch(A, NOW).server = 2
    assert first(state, A) == 2
    state.blacklist(state.servers[2], NOW)
    assert list(candidates(state, A, 1, NOW)) == []
    state.servers[2].blacklist_until, state.servers[2].max, state.servers[2].conn = 0, 1, 1
    assert list(candidates(state, A, 1, NOW)) == []         # full (hard = max): unavailable
    state.stubborn = False
    assert first(state, A) in (0, 1)


def test_hash_is_predictable_per_client_ip():
    state = state_with(hash=True)
    assert first(state, A) == int(A) % 3
    assert first(state, B) == int(B) % 3
    state.roundrobin = True                  # -h -r: ip xor port
    assert first(state, A, port=7) == (int(A) ^ 7) % 3


def test_weight_picks_least_connections_per_weight():
    state = state_with(weight=True, roundrobin=True)
    for server, (conn, weight) in zip(state.servers, [(4, 2), (3, 1), (5, 5)], strict=True):
        server.conn, server.weight = conn, weight
    assert first(state) == 2                 # 1.0 conn/weight beats 2.0 and 3.0


def test_prio_prefers_the_lowest_number_available():
    state = state_with(prio=True, roundrobin=True)
    for server, prio in zip(state.servers, [2, 1, 1], strict=True):
        server.prio = prio
    # as pen: of servers with equal prio, always the first in order
    assert [first(state, ip) for ip in (A, B, C, A)] == [1, 1, 1, 1]
    state.blacklist(state.servers[1], NOW)
    assert first(state) == 2
    state.blacklist(state.servers[1], NOW)
    state.blacklist(state.servers[2], NOW)
    assert first(state) == 0


def test_soft_limit_for_new_clients_hard_limit_for_returning_ones():
    state = state_with(1)
    server = state.servers[0]
    server.max, server.hard, server.conn = 2, 4, 2
    assert first(state, B) is None                       # new client: soft limit reached
    state.clients.touch(A, NOW).server = 0
    assert first(state, A) == 0                          # returning client: up to hard
    server.conn = 4
    assert first(state, A) is None


def test_client_acl_sends_denied_clients_to_the_abuse_server():
    state = state_with()
    state.acls.add(1, parse_entry("deny", "10.0.0.2"))
    state.client_acl = 1
    state.abuse = state_with(1).servers[0]
    state.abuse.index = -2
    assert first(state, A) == 1
    assert first(state, B) == -2
    state.abuse = None
    assert first(state, B) is None


def test_server_acl_skips_servers_that_deny_the_client():
    state = state_with(2, roundrobin=True)
    state.acls.add(4, parse_entry("deny", "10.0.0.1"))
    state.servers[0].acl = 4
    assert {first(state, A) for _ in range(3)} == {1}


def test_server_slot_without_address_is_never_chosen():
    state = state_with(1, roundrobin=True)
    state.server(2)                                      # `server 2` with no address yet
    assert {first(state) for _ in range(4)} == {0}


# --- where pen-lb keeps its own behaviour (README: pen-lb beside the C pen) ---------------

def test_weight_zero_counts_as_one_where_pen_closes_every_client():
    state = state_with(2, weight=True, roundrobin=True)
    assert [s.weight for s in state.servers] == [0, 0]
    assert first(state) is not None
    state.servers[0].conn = 3
    assert first(state) == 1                   # least connections, as with weight 1


def test_hash_spreads_clients_that_differ_only_in_the_last_octet():
    """pen hashes the address's bytes in memory order: on little-endian machines, with two
    servers, every client of 127.0.0.0/8 lands on one server. pen-lb's hash spreads them."""
    import ipaddress
    state = state_with(2, hash=True)
    picks = {first(state, ipaddress.ip_address(f"127.0.0.{i}")) for i in range(2, 10)}
    assert picks == {0, 1}


def test_returning_clients_expire_too():
    """pen never expires the entry of the client it is looking up; pen-lb forgets a client
    unseen for -T seconds, returning or not."""
    state = state_with(tracking=10)
    state.clients.touch(A, NOW).server = 2
    assert first(state, A, now=NOW + 5) == 2
    assert state.clients.lookup(A, NOW + 11, 10) is None
    assert len(state.clients) == 0


def test_client_table_shrinks_and_grows_and_keeps_slot_numbers():
    state = state_with()
    for i, ip in enumerate((A, B, C)):
        assert state.clients.touch(ip, NOW + i).slot == i
    state.clients.resize(2)                    # pen only grows its table
    assert [c.ip for c in state.clients] == [B, C]
    assert state.clients.touch(A, NOW + 5).slot == 0        # the slot A's eviction freed
    state.clients.resize(4)
    assert state.clients.slots == 4 and len(state.clients) == 2
