"""The worker group's board: each process writes its own row, readers see the group."""

from __future__ import annotations

import dataclasses

import pytest

from pen import board as shared
from pen.state import Server, State


def group(workers=2):
    """The parent's State and each worker's, all on one board (one buffer, many views)."""
    buffer = bytearray(shared.size(workers))
    states = []
    for row in range(workers + 1):
        state = State()
        state.server(0)
        state.server(1)
        shared.share(state, shared.Board(buffer, workers, row))
        states.append(state)
    return states[-1], states[:-1]


def test_connections_and_bytes_are_the_sum_of_the_workers():
    parent, (w0, w1) = group()
    c0 = w0.open_connection(("10.0.0.1", 1))
    w0.track(c0, "10.0.0.1", w0.servers[1], 0.0)
    c1 = w1.open_connection(("10.0.0.2", 1))
    w1.track(c1, "10.0.0.2", w1.servers[1], 0.0)
    c0.to_server(100)
    c1.to_client(7, datagrams=1)
    for view in (parent, w0, w1):
        server = view.servers[1]
        assert (server.conn, server.total, server.sx, server.rx, server.dgrams_rx) == \
            (2, 2, 100, 7, 1)
    w0.close_connection(c0)
    assert parent.servers[1].conn == 1 and parent.servers[1].total == 2


def test_a_failure_in_one_worker_blacklists_the_server_everywhere():
    parent, (w0, w1) = group()
    w0.blacklist_time = 30
    w0.server_failed(w0.servers[0], "refused", 1000.0)
    assert w1.servers[0].blacklisted(1010.0) and parent.servers[0].failures == 1
    parent.servers[0].blacklist_until = 0.0           # a passing check clears every row
    assert not w1.servers[0].blacklisted(1010.0)


def test_limits_hold_for_the_group():
    parent, (w0, w1) = group()
    for view in (parent, w0, w1):
        view.servers[0].max = 2
    for view, ip in ((w0, "10.0.0.1"), (w1, "10.0.0.2")):
        view.track(view.open_connection((ip, 1)), ip, view.servers[0], 0.0)
    assert w0.servers[0].full(False) and w1.servers[0].full(False)


def test_health_is_the_parents_word():
    parent, (w0, _) = group()
    w0.servers[0].health.up = False                  # a worker does not check: ignored
    assert parent.servers[0].health.up
    parent.servers[0].health.up = False
    assert not w0.servers[0].health.up


def test_a_dead_workers_row_retires_into_the_parents():
    parent, (w0, w1) = group()
    conn = w0.open_connection(("10.0.0.1", 1))
    w0.track(conn, "10.0.0.1", w0.servers[0], 0.0)
    conn.to_server(50)
    parent.board.retire(0)
    server = parent.servers[0]
    assert (server.conn, server.total, server.sx) == (0, 1, 50)


def test_more_servers_than_the_board_holds_is_refused_naming_the_number():
    _, (w0, _) = group()
    with pytest.raises(ValueError, match="1024"):
        w0.server(shared.CAPACITY)


def test_the_connection_limit_counts_every_workers_connections():
    parent, (w0, w1) = group()
    for n in range(3):
        w0.open_connection((f"10.0.0.{n}", 1))
    conn = w1.open_connection(("10.0.1.1", 1))
    assert (w0.elsewhere(), w1.elsewhere(), parent.elsewhere()) == (1, 3, 4)
    w1.close_connection(conn)
    assert w0.elsewhere() == 0


def test_sharing_keeps_every_setting_of_a_server():
    """share() carries each of a Server's own fields over (a field added to Server later
    included): only the board's counts and the group's health start anew."""
    state = State()
    state.server(0)
    on_board = {*shared.FIELDS, "index", "endpoint", "health"}
    own = [f.name for f in dataclasses.fields(Server) if f.name not in on_board]
    assert {"max", "hard", "weight", "prio", "acl", "proxy_protocol", "check",
            "admin"} <= set(own)
    settings = {name: object() for name in own}
    for name, value in settings.items():
        setattr(state.servers[0], name, value)
    shared.share(state, shared.Board(bytearray(shared.size(1)), 1, 0))
    assert type(state.servers[0]).__name__ == "SharedServer"
    assert {name: getattr(state.servers[0], name) for name in own} == settings
