"""UDP balancing (-U) of DNS with real peers: dig as the client, dnsmasq and dnslib servers.

Client addresses 127.0.0.x (dig -b) are separate clients to pen; each dig query comes
from a fresh port, so it is a fresh session that pen's selection rules place.
"""

import socket
import time

import pytest
from udp_peers import Dnsmasq, Responder, dig, dig_short, start_udp_pen, udp_port

from support import wait_for


@pytest.fixture
def dnsmasqs():
    started = [Dnsmasq("127.0.0.2", "10.9.0.2"), Dnsmasq("127.0.0.3", "10.9.0.3")]
    yield started
    for server in started:
        server.stop()


def ask(port, source, name="www.test", **kw):
    return dig_short(port, name, "-b", source, **kw)


def test_dig_through_pen_and_client_tracking(dnsmasqs, start_pen):
    pen, port = start_udp_pen(start_pen, servers=[d.spec for d in dnsmasqs])
    first = ask(port, "127.0.0.5")
    assert first in ("10.9.0.2", "10.9.0.3")
    assert [ask(port, "127.0.0.5") for _ in range(3)] == [first] * 3
    other = ask(port, "127.0.0.6")
    assert other != first and other in ("10.9.0.2", "10.9.0.3")
    assert ask(port, "127.0.0.6") == other


def test_roundrobin_alternates(dnsmasqs, start_pen):
    pen, port = start_udp_pen(start_pen, "-r", servers=[d.spec for d in dnsmasqs])
    answers = [ask(port, "127.0.0.5") for _ in range(4)]
    assert answers[0] != answers[1] and answers[:2] == answers[2:]


def test_hash_is_stable_per_client_ip(dnsmasqs, start_pen):
    pen, port = start_udp_pen(start_pen, "-h", servers=[d.spec for d in dnsmasqs])
    for source in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
        assert len({ask(port, source) for _ in range(3)}) == 1


def test_refused_server_is_blacklisted_and_the_query_resent(dnsmasqs, start_pen):
    """ICMP port unreachable from a dead server: the same query goes to the next server,
    so dig's single try is answered."""
    dead = f"127.0.0.4:{udp_port('127.0.0.4')}"
    pen, port = start_udp_pen(start_pen, "-r", servers=[dead, dnsmasqs[0].spec])
    for _ in range(4):
        assert ask(port, "127.0.0.5", timeout=2) == "10.9.0.2"
    assert "refused the datagram" in pen.output()


def test_silent_server_passes_the_query_on_but_stays_in(dnsmasqs, start_pen):
    """Silence moves the client's pending query to the next server after -t, but it is
    evidence anyone can forge: the silent server is not blacklisted."""
    silent = Responder(lambda data, addr: None, host="127.0.0.4")
    try:
        # round-robin's first pick is server 1, as in pen: the silent one
        pen, port = start_udp_pen(start_pen, "-t", "1", servers=[dnsmasqs[1].spec, silent.spec])
        started = time.monotonic()
        assert ask(port, "127.0.0.5", timeout=5) == "10.9.0.3"
        assert time.monotonic() - started >= 0.9
        assert len(silent.seen) == 1
        # The client's next query goes to the server that answered it (client table).
        assert ask(port, "127.0.0.5", timeout=5) == "10.9.0.3"
        assert len(silent.seen) == 1
        assert "blacklisted for" not in pen.output()
        assert "left a datagram unanswered" in pen.output()
    finally:
        silent.stop()


def test_unanswerable_datagrams_from_many_sources_take_no_server_out(dnsmasqs, start_pen):
    """Issue 14: 100 datagrams no server answers (dnsmasq ignores a 2-byte query), from
    100 source addresses, used to blacklist both servers after -t and 2*-t; then nobody
    was answered for -b seconds. Now dig is answered at once and throughout."""
    blacklist, timeout = 3, 1
    pen, port = start_udp_pen(start_pen, "-t", str(timeout), "-b", str(blacklist),
                              servers=[d.spec for d in dnsmasqs])
    assert ask(port, "127.0.0.5") in ("10.9.0.2", "10.9.0.3")
    for i in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"127.0.1.{i + 1}", 0))
            s.sendto(b"xx", ("127.0.0.1", port))
    # Every server goes silent for these datagrams twice over (-t, then -t on the next
    # server): ask throughout that and the -b that used to follow.
    until = time.monotonic() + 2 * timeout + blacklist + 1
    answered = 0
    while time.monotonic() < until:
        assert ask(port, f"127.0.0.{6 + answered % 50}", timeout=2) in ("10.9.0.2", "10.9.0.3")
        answered += 1
    assert "blacklisted for" not in pen.output()
    assert answered >= 5


def test_emergency_server_when_all_servers_are_down(dnsmasqs, start_pen):
    dead = [f"127.0.0.4:{udp_port('127.0.0.4')}", f"127.0.0.4:{udp_port('127.0.0.4')}"]
    pen, port = start_udp_pen(start_pen, "-e", dnsmasqs[1].spec, servers=dead)
    assert ask(port, "127.0.0.5", timeout=5) == "10.9.0.3"


def test_client_acl_denies_a_client(dnsmasqs, start_pen):
    pen, port = start_udp_pen(start_pen, "-O", "acl 1 deny 127.0.0.5", "-O", "client_acl 1",
                              servers=[dnsmasqs[0].spec])
    assert dig(port, "www.test", "+short", "-b", "127.0.0.5", timeout=1).returncode == 9
    assert ask(port, "127.0.0.6") == "10.9.0.2"


def test_weights_and_server_limits_place_sessions(dnsmasqs, start_pen):
    """A server at its -x-like soft limit (max 1 session) is skipped while the session lives."""
    a, b = dnsmasqs
    pen, port = start_udp_pen(start_pen, "-r", "-O", "idle_timeout 30",
                              servers=[f"{a.spec}:1", b.spec])
    # dig's query session stays in the table (idle 30 s): server 0 stays full.
    answers = {ask(port, "127.0.0.5") for _ in range(3)}
    assert answers == {"10.9.0.2", "10.9.0.3"}
    assert [ask(port, "127.0.0.5") for _ in range(2)] == ["10.9.0.3"] * 2


# --- big answers and TCP ----------------------------------------------------------------

@pytest.fixture
def big_txt_server():
    """dnslib server whose TXT answer is 16 strings of 250 bytes (about 4 KiB)."""
    from dnslib import QTYPE, RR, TXT
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class Big(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            strings = [(chr(ord("a") + i) * 250).encode() for i in range(16)]
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(strings), ttl=5))
            return reply

    port = udp_port()
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
    server = DNSServer(Big(), address="127.0.0.1", port=port, logger=quiet)
    server.start_thread()
    wait_for(lambda: dig(port, "x.big", "+short").returncode == 0, what="dnslib server")
    yield f"127.0.0.1:{port}"
    server.stop()


def test_large_edns_answer_arrives_intact(big_txt_server, start_pen):
    pen, port = start_udp_pen(start_pen, servers=[big_txt_server])
    result = dig(port, "x.big", "TXT", "+bufsize=4096", "+ignore", "+noall", "+answer",
                 "+comments")
    assert result.returncode == 0, result.stdout
    assert "flags: qr" in result.stdout and " tc" not in result.stdout.split("flags:")[1].split(";")[0]
    answer = "".join(line for line in result.stdout.splitlines() if "\tTXT\t" in line)
    for i in range(16):
        assert '"' + chr(ord("a") + i) * 250 + '"' in answer
    direct = dig(int(big_txt_server.rsplit(":", 1)[1]), "x.big", "TXT", "+bufsize=4096",
                 "+noall", "+answer")
    assert direct.stdout.split() == dig(port, "x.big", "TXT", "+bufsize=4096", "+noall",
                                        "+answer").stdout.split()


def test_dns_over_tcp_through_the_tcp_mode(dnsmasqs, start_pen):
    pen, port = start_pen(servers=[dnsmasqs[0].spec])
    assert dig_short(port, "www.test", "+tcp") == "10.9.0.2"
