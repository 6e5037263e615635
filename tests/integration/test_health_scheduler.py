"""The check scheduler (monitor.Monitor) on gevent with a stand-in probe: first checks spread
over one interval, one check per interval, never two at once for a server, check_now, state
changes logged, servers and checks that come and go."""

import logging
import time

import gevent
import pytest

from pen import cli, commands, monitor, probes


@pytest.fixture
def probe_log(monkeypatch):
    """Replace the probe: record (server port, start, end); answer what `answers` says."""
    calls, answers = [], {}

    def fake(check, target, timeout):
        started = time.monotonic()
        reason, delay = answers.get(target.endpoint.port, ("", 0))
        gevent.sleep(delay)
        calls.append((target.endpoint.port, started, time.monotonic()))
        return reason
    monkeypatch.setattr(probes, "probe", fake)
    return calls, answers


def running(*lines, servers=4):
    state, _ = cli.parse(["8080"] + [f"127.0.0.1:{9000 + i}" for i in range(servers)])
    for line in lines:
        assert commands.answer(state, line) == "", line
    mon = monitor.Monitor(state)
    mon.start()
    return state, mon


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.01)


def test_first_checks_spread_over_one_interval_then_one_per_interval(probe_log):
    calls, _ = probe_log
    state, mon = running("healthcheck tcp", "healthcheck_interval 0.4", servers=4)
    try:
        wait_until(lambda: len(mon.started) == 4)
        firsts = sorted(mon.started.values())
        assert 0.1 <= firsts[-1] - firsts[0]                  # not all at once...
        assert len(set(firsts)) == 4
        wait_until(lambda: sum(1 for p, *_ in calls if p == 9000) >= 4)
        starts = [s for p, s, _ in calls if p == 9000]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        # ...and one per interval: planned on the beat, so a check that starts late (a
        # stalled machine) is followed by a shorter gap, never by two at once
        assert all(gap >= 0.2 for gap in gaps), gaps
        assert (starts[-1] - starts[0]) / len(gaps) >= 0.35, gaps
    finally:
        mon.stop()


def test_new_servers_are_due_within_one_interval():
    state, mon = running("healthcheck tcp", "healthcheck_interval 0.4", servers=4)
    mon.stop()                                               # only the plan, no checks
    mon.renew(100.0)
    assert sorted(mon.due.values()) == [100.0, 100.1, 100.2, 100.3]


def test_a_slow_check_delays_the_next_never_overlaps(probe_log):
    calls, answers = probe_log
    answers[9000] = ("", 0.3)                              # longer than the interval
    state, mon = running("healthcheck tcp", "healthcheck_interval 0.1",
                         "healthcheck_timeout 1", servers=1)
    try:
        wait_until(lambda: len(calls) >= 3)
        for (_, _, end), (_, start, _) in zip(calls, calls[1:], strict=False):
            assert start >= end - 0.001
    finally:
        mon.stop()


def test_state_changes_are_logged_and_check_now_comes_early(probe_log, caplog):
    calls, answers = probe_log
    answers[9001] = ("http status 500", 0)
    state, mon = running("healthcheck http GET /", "healthcheck_interval 30",
                         "healthcheck_fall 2", servers=2)
    try:
        with caplog.at_level(logging.WARNING, logger="pen"):
            wait_until(lambda: 1 in mon.due)                 # first due in 15 s
            mon.check_now(state.servers[1])                  # now instead (UDP silence asks)
            wait_until(lambda: any(p == 9001 for p, *_ in calls))
            mon.started[1] -= 30 * monitor.MIN_GAP           # as if checked a while ago
            mon.check_now(state.servers[1])                  # the second: not in 30 s
            wait_until(lambda: not state.servers[1].health.up)
        assert "server 1 (127.0.0.1:9001) down: http status 500 (2/2)" in caplog.messages
    finally:
        mon.stop()


def test_servers_and_checks_come_and_go(probe_log):
    calls, _ = probe_log
    state, mon = running("healthcheck_interval 0.1", servers=2)
    try:
        gevent.sleep(0.3)
        assert calls == []                                  # no check configured
        commands.answer(state, "server 1 healthcheck tcp")
        wait_until(lambda: any(p == 9001 for p, *_ in calls))
        assert all(p == 9001 for p, *_ in calls)
        commands.answer(state, "server 2 address 127.0.0.1 port 9002")
        commands.answer(state, "healthcheck tcp")
        wait_until(lambda: any(p == 9002 for p, *_ in calls))
        commands.answer(state, "no healthcheck")
        commands.answer(state, "server 1 healthcheck off")
        gevent.sleep(0.2)                                   # a check in flight may finish
        seen = len(calls)
        gevent.sleep(0.3)
        assert len(calls) == seen
    finally:
        mon.stop()
