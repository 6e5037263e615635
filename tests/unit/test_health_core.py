"""Health checks, operator states and slow start: the pure core and its commands."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pen import cli, commands, health, penctl
from pen.hooks import Offline
from pen.select import candidates
from pen.state import State

IP = ipaddress.ip_address("10.0.0.1")
NOW = 1000.0


def state_from(*argv):
    state, _ = cli.parse(list(argv))
    return state


def ask(state, line):
    return commands.answer(state, line)


def first_choice(state, ip=IP, now=NOW):
    server = next(candidates(state, ip, 1234, now), None)
    return server.index if server else None


# --- the check parser ---------------------------------------------------------------------

@pytest.mark.parametrize("words, expected", [
    ("tcp", dict(kind="tcp")),
    ("smtp", dict(kind="smtp")),
    ("http GET /health", dict(method="GET", path="/health", status=0, body=b"")),
    ("http head /h 204", dict(method="HEAD", status=204)),
    ("http GET /h 200 alive", dict(status=200, body=b"alive")),
    ("dns example.com", dict(name="example.com", qtype="A", rcode="NOERROR")),
    ("dns example.com aaaa nxdomain", dict(qtype="AAAA", rcode="NXDOMAIN")),
    ("tftp boot.img", dict(name="boot.img")),
    ("udp 0a0b", dict(send=b"\n\x0b", expect=b"")),
    ("udp 0a0b 0c", dict(expect=b"\x0c")),
    ("tcp_expect 50494e470d0a 2b504f4e47", dict(send=b"PING\r\n", expect=b"+PONG")),
])
def test_checks_parse(words, expected):
    check = health.parse_check(words.split())
    for key, value in expected.items():
        assert getattr(check, key) == value
    assert check.command() == words


@pytest.mark.parametrize("words, named", [
    ("", "usage"),
    ("ping", "'ping'"),
    ("tcp extra", "usage: healthcheck tcp"),
    ("http GET", "usage"),
    ("http FETCH /", "'FETCH'"),
    ("http GET health", "'health'"),
    ("http GET / 999", "'999'"),
    ("http GET / abc", "'abc'"),
    ("dns example.com XX", "'XX'"),
    ("dns example.com A WHAT", "'WHAT'"),
    ("dns a..b", "'a..b'"),
    ("udp zz", "'zz'"),
    ("udp 0", "'0'"),
    ("tcp_expect 00", "usage"),
    ("tcp_expect 00 ''", "''"),
    ("tftp", "usage"),
])
def test_bad_checks_name_the_bad_word(words, named):
    with pytest.raises(health.CheckError) as e:
        health.parse_check(words.split())
    assert named in str(e.value)
    assert "\n" not in str(e.value)


WORDS = st.text(st.characters(min_codepoint=1, max_codepoint=0x2ff, blacklist_characters=" \n"),
                min_size=1, max_size=12)


@given(kind=st.sampled_from(["tcp", "http", "dns", "smtp", "tftp", "udp", "tcp_expect", "x"]),
       args=st.lists(st.one_of(WORDS, st.sampled_from(["GET", "/", "200", "A", "00ff", "off"])),
                     max_size=5))
def test_the_parser_answers_a_check_or_one_error(kind, args):
    try:
        check = health.parse_check([kind, *args])
    except health.CheckError as e:
        assert "\n" not in str(e)
        return
    assert health.parse_check(check.command().split()) == check      # `write` round-trips


@given(words=st.lists(WORDS, max_size=6))
def test_a_bad_command_changes_nothing(words):
    state = state_from("8080", "127.0.0.1:81")
    before = commands.dump(state).splitlines()[1:]
    for line in (f"healthcheck {' '.join(words)}", f"server 0 healthcheck {' '.join(words)}"):
        answer = ask(state, line)
        if answer:                                    # an error: one line, nothing changed
            assert answer.count("\n") == 1
            assert commands.dump(state).splitlines()[1:] == before


# --- rise and fall ---------------------------------------------------------------------------

def test_down_after_fall_failures_up_after_rise_passes():
    h = health.Health(since=0.0)
    assert h.record(False, "http status 500", 1, rise=2, fall=3) is None
    assert h.record(False, "http status 500", 2, rise=2, fall=3) is None
    assert h.record(False, "http status 500", 3, 2, 3) == "down: http status 500 (3/3)"
    assert (h.up, h.since, h.last) == (False, 3, "http status 500")
    assert h.record(False, "timeout", 4, 2, 3) is None               # still down: no new line
    assert h.record(True, "", 5, 2, 3) is None
    assert h.record(False, "refused", 6, 2, 3) is None                # a failure resets the run
    assert h.record(True, "", 7, 2, 3) is None
    assert h.record(True, "", 8, 2, 3) == "up: OK (2/2)"
    assert (h.up, h.since, h.last, h.checks) == (True, 8, "OK", 8)


def test_check_durations_fill_a_histogram():
    h = health.Health()
    h.record(True, "", 1, 1, 1, duration=0.003)
    h.record(True, "", 2, 1, 1, duration=30.0)
    assert h.durations[0] == 1 and h.durations[-1] == 1 and sum(h.durations) == 2
    assert h.duration_sum == pytest.approx(30.003)


# --- selection -------------------------------------------------------------------------------

def test_a_down_server_gets_no_new_client_and_its_clients_fail_over():
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82")
    state.clients.touch(IP, NOW).server = 1
    assert first_choice(state) == 1
    state.servers[1].health.up = False
    assert first_choice(state) == 0
    assert [s.index for s in candidates(state, IP, 1, NOW)] == [0]


def test_maint_takes_nothing_drain_keeps_its_clients():
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82")
    state.clients.touch(IP, NOW).server = 1
    other = ipaddress.ip_address("10.0.0.9")
    assert ask(state, "server 1 drain") == ""
    assert first_choice(state) == 1                           # a tracked client goes on
    state.rr_cursor = 0
    assert first_choice(state, other) == 0                    # a new one does not come
    assert ask(state, "server 1 maint") == ""
    assert first_choice(state) == 0
    assert ask(state, "server 1 ready") == ""
    state.rr_cursor = 0
    assert first_choice(state, other) == 1


def test_slowstart_ramps_a_returning_server_from_a_tenth_to_its_share():
    state = state_from("-r", "8080", "127.0.0.1:81", "127.0.0.1:82")
    ask(state, "slowstart 10")
    ask(state, "server 1 maint")
    health.set_admin(state.servers[1], "ready", NOW)
    assert health.share(state.servers[1], NOW, 10) == pytest.approx(0.1)
    assert health.share(state.servers[1], NOW + 5, 10) == pytest.approx(0.55)

    def picks(now, n=200):
        return sum(first_choice(state, now=now) == 1 for _ in range(n))
    early, middle, late = picks(NOW), picks(NOW + 5), picks(NOW + 10)
    assert early < middle < late == 100                    # round robin: half when ramped
    assert 5 <= early <= 15


def test_slowstart_after_a_blacklisting_ends():
    state = state_from("-r", "8080", "127.0.0.1:81", "127.0.0.1:82")
    ask(state, "slowstart 10")
    state.blacklist(state.servers[1], NOW - 30, 30)            # ends at NOW
    picks = sum(first_choice(state, now=NOW + 0.1) == 1 for _ in range(100))
    assert picks < 15


def test_slowstart_off_changes_nothing():
    state = state_from("-r", "8080", "127.0.0.1:81", "127.0.0.1:82")
    state.servers[1].ramp_start = NOW
    assert [first_choice(state) for _ in range(4)] == [1, 0, 1, 0]      # pen: server 1 first


# --- commands ----------------------------------------------------------------------------------

def test_health_answers_one_line_per_server():
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82", "127.0.0.1:83")
    ask(state, "healthcheck http GET /health")
    ask(state, "server 1 healthcheck off")
    ask(state, "server 2 maint")
    state.servers[0].health.record(False, "http status 500", 0, 2, 1)
    lines = ask(state, "health").splitlines()
    assert lines[0].startswith("0 addr 127.0.0.1 port 81 state down check http "
                               "last http_status_500 since ")
    assert lines[1].startswith("1 addr 127.0.0.1 port 82 state up check none last - since ")
    assert lines[2].startswith("2 addr 127.0.0.1 port 83 state maint check http last - since ")
    rows = penctl.as_json("health", ask(state, "health"))
    assert rows[0]["state"] == "down" and rows[1]["check"] == "none"
    assert isinstance(rows[0]["since"], float)


def test_settings_show_and_set():
    state = State()
    assert [ask(state, n) for n in ("healthcheck_interval", "healthcheck_timeout",
                                    "healthcheck_rise", "healthcheck_fall", "slowstart")] == \
        ["2", "1", "2", "3", "0"]
    for line in ("healthcheck_interval 0.2", "healthcheck_timeout 5", "healthcheck_rise 1",
                 "healthcheck_fall 4", "slowstart 7.5"):
        assert ask(state, line) == ""
    assert (state.health.interval, state.health.timeout, state.health.rise, state.health.fall,
            state.health.slowstart) == (0.2, 5, 1, 4, 7.5)
    assert ask(state, "healthcheck_rise 0") == "healthcheck_rise: must be at least 1, got 0\n"
    assert ask(state, "healthcheck_interval x").startswith("healthcheck_interval: expected")
    assert ask(state, "server 0 healthcheck") .startswith("usage: server 0 healthcheck")
    assert ask(state, "server 0 drain now") == "usage: server 0 drain\n"
    assert ask(state, "metrics_port nope:x").startswith("metrics_port: ")


def test_write_reproduces_the_health_settings():
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82")
    for line in ("healthcheck dns example.com AAAA", "healthcheck_interval 0.5",
                 "healthcheck_fall 2", "server 0 healthcheck tcp_expect 00 01",
                 "server 1 healthcheck off", "server 1 drain", "slowstart 3",
                 "metrics_port 127.0.0.1:9100"):
        assert ask(state, line) == "", line
    copy = commands.scratch_copy(state)
    assert commands.dump(copy).splitlines()[1:] == commands.dump(state).splitlines()[1:]
    assert copy.servers[1].check is health.OFF and copy.servers[1].admin == "drain"
    assert str(copy.health.metrics_port) == "127.0.0.1:9100"


def test_answers_pen_also_gives_stay_the_same_while_off():
    state = state_from("8080", "127.0.0.1:81:10:20:2:1")
    servers, mode, dump = ask(state, "servers"), ask(state, "mode"), commands.dump(state)
    ask(state, "healthcheck tcp")
    assert ask(state, "servers") == servers and ask(state, "mode") == mode
    ask(state, "no healthcheck")
    assert commands.dump(state).splitlines()[1:] == dump.splitlines()[1:]
    assert "healthcheck" not in dump and "slowstart" not in dump


def test_rereading_the_same_check_keeps_the_results():
    state = state_from("8080", "127.0.0.1:81")
    ask(state, "healthcheck tcp")
    state.servers[0].health.record(False, "refused", 0, 1, 1)
    ask(state, "healthcheck tcp")                 # a -F file read again on SIGHUP
    assert not state.servers[0].health.up
    ask(state, "healthcheck smtp")                # a new check starts over
    assert state.servers[0].health.up and state.servers[0].health.last == ""


def test_check_now_is_a_no_op_offline_and_reaches_the_running_process():
    state = state_from("8080", "127.0.0.1:81")
    state.process.check_now(state.servers[0])                  # OFFLINE: nothing happens
    asked = []

    class Process(Offline):
        def check_now(self, server):
            asked.append(server)
    state.process = Process()
    state.process.check_now(state.servers[0])
    assert asked == [state.servers[0]]


# --- the metrics endpoint's request handling (pure) -------------------------------------------

def test_metrics_requests():
    from pen import metrics
    state = state_from("8080", "127.0.0.1:81")
    code, kind, body, with_body = metrics.respond(state, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, with_body) == ("200 OK", True) and body.startswith(b"# HELP pen_up")
    assert kind.startswith("text/plain; version=0.0.4")
    assert metrics.respond(state, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")[::3] == ("200 OK", False)
    code, kind, body, _ = metrics.respond(state, b"GET /status.json HTTP/1.1\r\n\r\n")
    assert kind == "application/json" and b'"servers"' in body
    assert metrics.respond(state, b"POST /metrics HTTP/1.1\r\n\r\n")[0].startswith("405")
    assert metrics.respond(state, b"GET /other HTTP/1.1\r\n\r\n")[0].startswith("404")
    assert metrics.respond(state, b"\x16\x03\x01garbage")[0].startswith("400")


@given(head=st.binary(max_size=300))
def test_any_request_head_gets_an_answer(head):
    from pen import metrics
    code, kind, body, _ = metrics.respond(State(), head)
    assert code[:3] in ("200", "400", "404", "405") and isinstance(body, bytes)


def test_the_status_page_shows_states_and_checks_once_used():
    from pen import status
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82")
    plain = status.html(status.snapshot(state, NOW))
    assert "last check" not in plain
    ask(state, "healthcheck tcp")
    ask(state, "server 1 drain")
    state.servers[0].health.record(False, "tcp refused", NOW, 2, 1)
    snap = status.snapshot(state, NOW)
    assert [s["state"] for s in snap["servers"]] == ["down", "drain"]
    assert snap["servers"][0]["last_check"] == "tcp refused"
    page = status.html(snap)
    assert '<td bgcolor="#80f080">last check</td>' in page and "<td>tcp refused</td>" in page
    assert "<td>drain</td>" in page
