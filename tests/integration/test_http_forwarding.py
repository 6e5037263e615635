"""-H through real sockets: X-Forwarded-For that a client can neither forge nor skip.

Each case of issue 14 runs on one keep-alive connection (a good request first, then the
attack), through pen-lb -H to nginx, to a strict server (llhttp) and to a lenient one
(Python's http.server, which unfolds obs-fold and splits request lines on any
whitespace). Whatever a server processed must carry the real client (127.0.0.9) as its
last X-Forwarded-For entry, and pen-lb answers the attack itself (400, 431 for size).
"""

import json
import os
import pwd
import socket

import pytest
from http_peers import Client, Nginx, StrictBackend

from support import Backend, Pen, free_port, wait_for

CLIENT = "127.0.0.9"
FORGED = b"X-Forwarded-For: 6.6.6.6\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n" + FORGED + b"\r\n"
PAD = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990) for i in range(70))     # ~70 KiB

CASES = {   # name: (bytes after a good request, piece size, pen-lb's answer)
    "two spaces in the request line": (
        b"GET  /forged HTTP/1.1\r\nHost: x\r\n" + FORGED + b"\r\n" + SMUGGLED, None, 400),
    "request line with a tab": (
        b"GET\t/forged HTTP/1.1\r\nHost: x\r\n" + FORGED + b"\r\n" + SMUGGLED, None, 400),
    "head over the limit in one piece": (
        b"GET /big HTTP/1.1\r\nHost: x\r\n" + PAD + b"\r\n" + SMUGGLED, None, 431),
    "head over the limit in pieces": (
        b"GET /big HTTP/1.1\r\nHost: x\r\n" + PAD + b"\r\n" + SMUGGLED, 1000, 431),
    "folded Content-Length": (
        b"POST /fold HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Content-Length: %d\r\n\r\n"
        % len(SMUGGLED) + SMUGGLED, None, 400),
    "folded X-Forwarded-For": (
        b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: b\r\n " + FORGED + b"\r\n", None, 400),
    "Transfer-Encoding: xchunked": (
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED, None, 400),
    "Content-Length with Transfer-Encoding": (
        b"POST /te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, None, 400),
    "repeated Content-Length": (
        b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n"
        % len(SMUGGLED) + SMUGGLED, None, 400),
    "invalid chunk size": (
        b"POST /chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, None, 400),
    "HTTP/0.9 line before headers": (
        b"GET /nine\r\nHost: x\r\n" + FORGED + b"\r\n", None, 400),
}


class Target:
    """A server behind its own pen-lb -H, for the whole module."""

    def __init__(self, kind, tmp) -> None:
        self.kind = kind
        self.server = {"nginx": lambda: Nginx(tmp), "strict": StrictBackend,
                       "lenient": lambda: Backend("lenient")}[kind]()
        self.ctl = free_port()
        self.port = free_port()
        self.pen = Pen("-H", "-u", pwd.getpwuid(os.geteuid()).pw_name,
                       "-C", f"127.0.0.1:{self.ctl}", f"127.0.0.1:{self.port}",
                       self.server.spec, wait=("127.0.0.1", self.port))
        self.sentinels = 0

    def processed(self) -> list[tuple[str, str]]:
        """(path, X-Forwarded-For as one list) of every request the server processed."""
        if self.kind == "lenient":
            return [(r["path"], ", ".join(r["xff"] or [])) for r in self.server.requests]
        return self.server.processed()

    def caught_up(self) -> None:
        """A request on a new connection, awaited in the server's record: what the
        earlier connection sent has been processed by then."""
        self.sentinels += 1
        path = f"/sentinel-{self.sentinels}"
        client = Client(self.port, CLIENT)
        client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert client.response()[0] == 200
        client.close()
        wait_for(lambda: any(p == path for p, _ in self.processed()),
                 what=f"{self.kind} to record {path}")

    def events(self) -> dict:
        with socket.create_connection(("127.0.0.1", self.ctl), timeout=10) as ctl:
            ctl.sendall(b"status json\n")
            answer = b""
            while chunk := ctl.recv(65536):
                answer += chunk
        return json.loads(answer)["events"]

    def stop(self) -> None:
        self.pen.stop()
        self.server.stop()


@pytest.fixture(scope="module", params=["nginx", "strict", "lenient"])
def target(request, tmp_path_factory):
    started = Target(request.param, tmp_path_factory.mktemp(request.param))
    yield started
    started.stop()


def assert_client_is_last(target, since: int) -> list:
    """What the server processed since `since` requests: each ends with the client."""
    processed = target.processed()[since:]
    assert processed, "the server processed nothing"
    for path, xff in processed:
        assert xff.split(",")[-1].strip() == CLIENT, (target.kind, path, xff)
    return processed


@pytest.mark.parametrize("case", CASES)
def test_an_attack_on_a_keep_alive_connection_is_answered_by_pen(target, case):
    attack, piece, status = CASES[case]
    before = target.events().get("http_rejected", 0)
    since = len(target.processed())
    client = Client(target.port, CLIENT)
    client.send(b"GET /first HTTP/1.1\r\nHost: x\r\n" + FORGED + b"\r\n")
    assert client.response()[0] == 200
    client.send(attack, piece)
    answer = client.rest(timeout=3)
    client.close()
    target.caught_up()
    processed = assert_client_is_last(target, since)
    assert not any(path in ("/smuggled", "/forged") for path, _ in processed)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert target.events()["http_rejected"] == before + 1


def test_several_forwarded_for_fields_end_with_the_client(target):
    since = len(target.processed())
    client = Client(target.port, CLIENT)
    for _ in range(2):
        client.send(b"GET /two HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n"
                    b"X-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\r\n")
        assert client.response()[0] == 200
    client.close()
    target.caught_up()
    processed = assert_client_is_last(target, since)
    assert ("/two", f"6.6.6.6, 7.7.7.7, 8.8.8.8, {CLIENT}") in processed


def test_a_tunnel_passes_after_its_head(start_pen):
    """Upgrade: the head gets the headers, then the bytes pass as they are, both ways."""
    listener = socket.create_server(("127.0.0.1", 0))
    pen, port = start_pen("-H", servers=[f"127.0.0.1:{listener.getsockname()[1]}"])
    frames = b"\x81\x05GET / HTTP/1.1\r\n\r\n \x00 not http"
    with listener, socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\n" + frames)
        seen = b""
        while not seen:                 # (pen's start-up probe connected and left first)
            server, _ = listener.accept()
            server.settimeout(10)
            seen = server.recv(65536)
        with server:
            while not seen.endswith(frames):
                chunk = server.recv(65536)
                assert chunk, seen
                seen += chunk
            head = seen[:-len(frames)]
            assert b"X-Forwarded-For: 127.0.0.1\r\n" in head and head.endswith(b"\r\n\r\n")
            server.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x82\x02ok")
            answer = b""
            while not answer.endswith(b"ok"):
                answer += client.recv(65536)
