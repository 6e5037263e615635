"""Who gives way when full: the longest-idle client of the address holding the most."""

from hypothesis import given
from hypothesis import strategies as st

from pen.evict import Held, giving_way, longest_idle, victim


def held(*specs):
    """specs: (ip, since) pairs; the key is the position."""
    return [Held(i, ip, since) for i, (ip, since) in enumerate(specs)]


def test_the_biggest_holders_longest_idle_client_gives_way():
    clients = held(("a", 5.0), ("a", 3.0), ("a", 4.0), ("b", 1.0), ("c", 0.5))
    assert victim(clients, "new").key == 1       # a holds 3: its longest idle, not c's


def test_ties_between_addresses_go_to_the_longest_idle():
    clients = held(("a", 5.0), ("a", 3.0), ("b", 2.0), ("b", 4.0))
    assert victim(clients, "new").key == 2


def test_an_address_cannot_displace_one_holding_as_many_or_one_more():
    clients = held(("a", 1.0), ("a", 2.0), ("b", 3.0))
    assert victim(clients, "a") is None           # a is the biggest holder itself
    assert victim(clients, "b") is None           # a would drop to 1, b rise to 2: ping-pong
    assert victim(clients, "c").key == 0


def test_lead_zero_lets_an_address_replace_its_own():
    clients = held(("a", 1.0), ("a", 2.0))
    assert victim(clients, "a", lead=0).key == 0
    assert victim([], "a", lead=0) is None


def test_slowloris_from_five_addresses_never_locks_out_a_sixth():
    """600 slow connections from 5 addresses against a limit of 500: every newcomer of
    theirs is refused once they hold the set, and a new address always gets in."""
    clients = held(*[(f"10.0.0.{i % 5}", float(i)) for i in range(500)])
    assert all(victim(clients, f"10.0.0.{i % 5}") is None for i in range(100))
    assert victim(clients, "10.0.0.99").key == 0


@given(st.lists(st.tuples(st.integers(0, 4), st.floats(0, 100)), max_size=40),
       st.integers(0, 5), st.integers(0, 3))
def test_the_victim_is_always_from_a_biggest_holder_with_the_lead(specs, newcomer, lead):
    clients = held(*specs)
    counts = {ip: sum(1 for h in clients if h.ip == ip) for ip, _ in specs}
    chosen = victim(clients, newcomer, lead)
    if chosen is None:
        assert not clients or max(counts.values()) < counts.get(newcomer, 0) + lead
        return
    assert counts[chosen.ip] == max(counts.values())
    assert counts[chosen.ip] >= counts.get(newcomer, 0) + lead
    assert chosen.since == min(h.since for h in clients if h.ip == chosen.ip)


def test_giving_way_reads_only_the_counts():
    counts = {"a": 5, "b": 5, "c": 3}
    assert giving_way(counts, "new") == {"a", "b"}
    assert giving_way(counts, "c") == {"a", "b"}            # 5 >= 3 + 2
    assert giving_way(counts, "a") == set()
    assert giving_way({}, "a") == set()
    assert giving_way({"a": 1}, "a", lead=0) == {"a"}


def test_longest_idle_of_the_addresses_given():
    clients = held(("a", 5.0), ("b", 1.0), ("a", 3.0))
    assert longest_idle(clients, {"a"}).key == 2
    assert longest_idle(clients, set()) is None
