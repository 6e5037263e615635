"""The UDP session table and sweep: bounds, LRU order, idle expiry, silent servers."""

from dataclasses import dataclass

from pen.udptable import UDP_IDLE, SessionTable, idle_limit, is_silent, sweep


@dataclass(eq=False)
class S:
    last: float = 0.0
    pending_since: float = 0.0
    unanswered: int = 0
    answered: bool = False


def test_table_never_exceeds_its_limit_and_evicts_least_recently_used():
    table = SessionTable()
    a, b, c = S(), S(), S()
    assert table.add(("1.1.1.1", 1), a, limit=2) == []
    assert table.add(("1.1.1.1", 2), b, limit=2) == []
    assert table.get(("1.1.1.1", 1)) is a            # a is now the most recently used
    assert table.add(("1.1.1.1", 3), c, limit=2) == [b]
    assert len(table) == 2 and ("1.1.1.1", 2) not in table
    assert table.sessions() == [a, c]


def test_flood_of_new_sources_recycles_slots():
    table = SessionTable()
    evicted = 0
    for port in range(10_000):
        evicted += len(table.add(("10.0.0.1", port), S(), limit=50))
    assert len(table) == 50 and evicted == 10_000 - 50


def test_limit_shrinks_live_and_is_at_least_one():
    table = SessionTable()
    for port in range(5):
        table.add(("h", port), S(), limit=10)
    assert len(table.add(("h", 99), S(), limit=3)) == 3
    assert len(table) == 3
    assert len(table.add(("h", 100), S(), limit=0)) == 3
    assert len(table) == 1


def test_re_adding_a_key_hands_back_the_old_session():
    table = SessionTable()
    old, new = S(), S()
    table.add("k", old, limit=5)
    assert table.add("k", new, limit=5) == [old]
    assert table.get("k") is new and len(table) == 1


def test_remove_only_forgets_the_same_session():
    table = SessionTable()
    old, new = S(), S()
    table.add("k", old, limit=5)
    table.add("k", new, limit=5)
    table.remove("k", old)                           # a late close of the evicted one
    assert table.get("k") is new
    table.remove("k", new)
    assert table.get("k") is None and len(table) == 0


def test_idle_limit_defaults_for_udp():
    assert idle_limit(0) == UDP_IDLE == 30.0
    assert idle_limit(2.5) == 2.5


def test_sweep_expires_idle_sessions():
    fresh, stale = S(last=95.0), S(last=60.0)
    expired, silent = sweep([fresh, stale], now=100.0, idle=30.0, timeout=3.0)
    assert expired == [stale] and silent == []


def test_unanswered_first_datagram_makes_the_server_silent_after_timeout():
    query = S(last=99.0, pending_since=96.5, unanswered=1)
    assert not is_silent(query, now=99.0, timeout=3.0)
    assert is_silent(query, now=99.5, timeout=3.0)
    assert sweep([query], now=99.5, idle=30.0, timeout=3.0) == ([], [query])


def test_one_unanswered_datagram_in_an_answered_session_is_normal():
    """TFTP's final ACK is never answered: that must not blacklist the server."""
    final_ack = S(last=90.0, pending_since=90.0, unanswered=1, answered=True)
    assert not is_silent(final_ack, now=100.0, timeout=3.0)
    retried = S(last=95.0, pending_since=90.0, unanswered=2, answered=True)
    assert is_silent(retried, now=100.0, timeout=3.0)


def test_answered_or_disabled_is_never_silent():
    assert not is_silent(S(pending_since=0.0, unanswered=0, answered=True), 100.0, 3.0)
    assert not is_silent(S(pending_since=1.0, unanswered=5), 100.0, 0)


def test_idle_wins_over_silent():
    both = S(last=10.0, pending_since=10.0, unanswered=3)
    assert sweep([both], now=100.0, idle=30.0, timeout=3.0) == ([both], [])
