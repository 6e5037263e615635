"""X-Forwarded-For insertion per request: pure, no sockets."""

import pytest

from pen.http import ForwardedFor


def run(data: bytes, step: int | None = None, ip="192.0.2.7") -> bytes:
    rewriter = ForwardedFor(ip)
    if step is None:
        return rewriter.feed(data) + rewriter.flush()
    out = b"".join(rewriter.feed(data[i:i + step]) for i in range(0, len(data), step))
    return out + rewriter.flush()


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def test_adds_both_headers():
    out = run(GET)
    assert out == (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\n"
                   b"X-Forwarded-Proto: http\r\n\r\n")


def test_appends_to_an_existing_header_and_keeps_proto():
    out = run(b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n")
    assert b"X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n" in out
    assert out.count(b"X-Forwarded-Proto") == 1


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_every_request_on_a_keep_alive_connection(step):
    body = b"x=1&y=2"
    post = b"POST /f HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out = run(GET + post + GET, step)
    assert out.count(b"X-Forwarded-For: 192.0.2.7") == 3
    assert out.endswith(b"\r\n\r\n") and body + b"GET /a" in out


@pytest.mark.parametrize("step", [None, 1, 5])
def test_chunked_bodies_are_followed(step):
    chunked = (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nGET /\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n")
    out = run(chunked + GET, step)
    assert out.count(b"X-Forwarded-For") == 2
    assert b"5\r\nGET /\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\nGET /a" in out


def test_a_body_that_looks_like_a_request_is_not_touched():
    body = GET
    post = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    out = run(post)
    assert out.count(b"X-Forwarded-For") == 1 and out.endswith(GET)


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00binary tls hello",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"hello world\r\n\r\n",
    b"EHLO mail.example\r\n",
])
def test_non_http_passes_untouched(data):
    assert run(data) == data
    assert run(data, 1) == data


def test_upgrade_turns_into_a_tunnel():
    ws = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    frames = b"\x81\x05GET / HTTP/1.1\r\n\r\n"
    out = run(ws + frames)
    assert out.count(b"X-Forwarded-For") == 1 and out.endswith(frames)


def test_incomplete_head_is_flushed_at_eof():
    assert run(b"GET / HTTP/1.1\r\nHost") == b"GET / HTTP/1.1\r\nHost"


def test_oversized_head_gives_up_and_passes_through():
    head = b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000
    assert run(head) == head


def test_http10_and_bare_newlines():
    out = run(b"GET / HTTP/1.0\nHost: x\n\n")
    assert b"X-Forwarded-For: 192.0.2.7" in out
