"""The probes against servers that misbehave: a hang, silence, random bytes, an oversized or
truncated DNS answer, a TFTP DATA flood. Each is a failed check with a reason, within the
timeout, never an exception. (The probes run here on gevent; the peers are threads.)"""

import os
import socket
import struct
import threading
import time

import pytest
from udp_peers import Responder

from pen import health, probes
from pen.addr import parse_server, resolve

TIMEOUT = 0.5


def run(words, spec, tcp=True, timeout=TIMEOUT):
    endpoint = resolve(parse_server(spec, 0).endpoint)
    started = time.monotonic()
    reason = probes.probe(health.parse_check(words.split()), probes.Target(endpoint, tcp=tcp),
                          timeout)
    assert time.monotonic() - started < timeout + 1.0
    return reason


class TcpPeer:
    """A TCP server that runs behave(conn) for each connection."""

    def __init__(self, behave):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.spec = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave, self.conns = behave, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            self.behave(conn)
        except OSError:
            pass

    def stop(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def peer():
    made = []

    def make(behave):
        made.append(TcpPeer(behave))
        return made[-1]
    yield make
    for p in made:
        p.stop()


def silent(conn):
    time.sleep(3)


def random_bytes(conn):
    conn.recv(4096)
    conn.sendall(os.urandom(3000))
    conn.close()


def flood(conn):
    chunk = b"x" * 65536
    for _ in range(64):                     # 4 MiB, more than any check reads
        conn.sendall(chunk)


@pytest.mark.parametrize("words", ["http GET /", "smtp", "dns example.com",
                                   "tcp_expect 00 ff"])
def test_a_server_that_accepts_and_says_nothing_fails_in_time(peer, words):
    reason = run(words, peer(silent).spec)
    assert reason == f"{words.split()[0]} timeout after 0.5 s"


@pytest.mark.parametrize("words, why", [
    ("http GET /", "http no status line"), ("smtp", "smtp bad reply"),
    ("tcp_expect 00 ff", "tcp_expect unexpected answer")])
def test_random_bytes_fail_the_check(peer, words, why):
    reason = run(words, peer(random_bytes).spec)
    assert reason in (why, f"{words.split()[0]} timeout after 0.5 s") or "bad" in reason


@pytest.mark.parametrize("words", ["http GET / 200 needle", "smtp", "tcp_expect 00 ffff"])
def test_a_flood_is_cut_at_the_read_limit(peer, words):
    reason = run(words, peer(flood).spec)
    assert reason in ("http no status line", "smtp reply longer than 8192 bytes",
                      "tcp_expect unexpected answer"), reason


def test_an_http_body_is_searched_in_its_first_64_kib(peer):
    def big(conn):
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nneedle" + b"x" * 200000)
        conn.close()
    server = peer(big)
    assert run("http GET / 200 needle", server.spec) == ""
    assert run("http GET / 200 haystack", server.spec) == "http body lacks 'haystack'"


def test_refused_and_hung_connects():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                   # bound, not listening: refused
        assert run("tcp", f"127.0.0.1:{port}") == "tcp refused"


def dns_peer(answer):
    """A UDP peer answering every query with answer(query_bytes)."""
    return Responder(lambda data, addr: answer(data))


@pytest.mark.parametrize("name, answer, why", [
    ("random", lambda q: os.urandom(40), "dns bad answer"),
    ("truncated", lambda q: q[:2] + b"\x81\x80\x00\x01\x00\x01", "dns bad answer"),
    ("wrong id", lambda q: bytes([q[0] ^ 1]) + q[1:2] + b"\x81\x80" + q[4:],
     "dns answer to another query"),
    ("oversized", lambda q: q[:2] + b"\x81\x80" + q[4:] + b"\x00" * 5000, "dns answer of"),
])
def test_bad_dns_answers_fail_the_check(name, answer, why):
    server = dns_peer(answer)
    try:
        assert run("dns example.com", server.spec, tcp=False).startswith(why)
    finally:
        server.stop()


def test_dns_over_tcp_with_a_lying_length_fails(peer):
    def liar(conn):
        conn.recv(4096)
        conn.sendall(struct.pack("!H", 60000) + b"\x00" * 100)
        conn.close()
    assert run("dns example.com", peer(liar).spec) == "dns answer cut short"


def test_a_tftp_data_flood_is_one_packet_and_an_error_is_down():
    def flood_data(data, addr):
        for block in range(1, 200):             # a flood; the probe reads the first
            sender.sendto(struct.pack("!HH", 3, block) + b"d" * 512, addr)
        return None
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server = Responder(flood_data)
    try:
        assert run("tftp file", server.spec, tcp=False) == ""
    finally:
        server.stop()
        sender.close()
    missing = Responder(lambda data, addr: b"\x00\x05\x00\x01File not found\x00")
    try:
        assert run("tftp file", missing.spec, tcp=False) == "tftp error 1 File not found"
    finally:
        missing.stop()
