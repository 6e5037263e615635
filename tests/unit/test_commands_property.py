"""Property-based: no input makes the command language raise; every answer is text.

The control port hands commands.answer whatever a client sends; an exception escaping it
would be a traceback instead of an error line.
"""

import os
import socket
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pen import addr, cli, commands
from pen.control import RequestError, on_the_wire, parse_request

# Commands that touch the world outside the State: files, the process, the runtime.
SIDE_EFFECTS = {"write", "include", "log", "exit", "status", "web_stats", "listen"}
NAMES = sorted({name.split()[-1] for name in commands.COMMANDS} - SIDE_EFFECTS)
WORDS = st.one_of(
    st.sampled_from(["0", "1", "-1", "9", "10", "10001", "99999999999999999999", "1e999",
                     "nan", "inf", "-0", "0.5", "permit", "deny", "127.0.0.1", "::1/64",
                     "255.255.255.0", "address", "port", "max", "hard", "weight", "prio",
                     "acl", "blacklist", "/tmp/x", "both", "off", "[", "]", ":", ""]),
    st.text(alphabet=string.printable, max_size=12),
    st.text(max_size=8),
)


@pytest.fixture(autouse=True, scope="module")
def no_dns():
    """Random host names must not become DNS queries: resolve numeric addresses only."""
    real = socket.getaddrinfo

    def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(addr.socket, "getaddrinfo", numeric_only)
        yield


def fresh_state():
    state, _ = cli.parse(["8080", "127.0.0.1:81:5:6:1:2", "[::1]:82"])
    return state


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), no=st.booleans(), args=st.lists(WORDS, max_size=6))
def test_no_exception_escapes_answer(name, no, args):
    state = fresh_state()
    line = " ".join((["no"] if no else []) + [name] + args)
    reply = commands.answer(state, line)
    assert isinstance(reply, str)
    # the state stays usable
    assert commands.answer(state, "servers").count("\n") == len(state.servers)


@settings(max_examples=300, deadline=None)
@given(line=st.text(max_size=200))
def test_arbitrary_lines(line):
    state = fresh_state()
    if line.split() and line.split()[0] in SIDE_EFFECTS:
        return
    assert isinstance(commands.answer(state, line), str)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=6000))
def test_request_bytes_are_a_line_or_one_error(data):
    try:
        line = parse_request(data)
    except RequestError as e:
        assert "\n" not in str(e)
        return
    assert "\n" not in line and len(line) <= commands.MAX_LINE
    if line.split() and line.split()[0] in SIDE_EFFECTS:
        return
    assert isinstance(commands.answer(fresh_state(), line), str)


def test_long_and_binary_requests_are_refused():
    for data in (b"x" * (commands.MAX_LINE + 1), b"servers\x00\n", b"\xff\xfe\n", b"mode\x1b[2J\n"):
        try:
            parse_request(data)
        except RequestError:
            continue
        raise AssertionError(f"{data[:20]!r} accepted")
    assert parse_request(b"servers\r\n") == "servers"
    assert parse_request(b"server 0 weight 2") == "server 0 weight 2"


def test_answers_end_with_a_newline_on_the_wire():
    assert on_the_wire("30") == b"30\n"
    assert on_the_wire("") == b""
    assert on_the_wire("a\nb\n") == b"a\nb\n"


def test_hypothesis_did_not_write_files():
    assert not os.path.exists("/tmp/x")
