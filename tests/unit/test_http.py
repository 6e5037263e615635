"""HTTP/1.x request framing (pen/http.py): X-Forwarded-For per request, every rejection
reason, -l's request lines, the memory an unfinished head may hold. Pure, no sockets."""

import pytest

from pen.http import MAX_HEAD, MAX_LINE, Rejected, Requests

CLIENT = "192.0.2.7"
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def run(data: bytes, step: int | None = None, ip: str | None = CLIENT, seen=None) -> bytes:
    """What goes to the server when data arrives in pieces of `step` bytes (None: whole)."""
    stream = Requests(ip, on_request=None if seen is None else seen.append)
    if step is None:
        return stream.feed(data) + stream.flush()
    out = b"".join(stream.feed(data[i:i + step]) for i in range(0, len(data), step))
    return out + stream.flush()


def rejected(data: bytes, step: int | None = None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        run(data, step)
    return caught.value


def test_adds_both_headers():
    assert run(GET) == (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\n"
                        b"X-Forwarded-Proto: http\r\n\r\n")


def test_appends_to_an_existing_header_and_keeps_proto():
    out = run(b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n")
    assert b"X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n" in out
    assert out.count(b"X-Forwarded-Proto") == 1


def test_several_forwarded_for_fields_merge_into_one_ending_with_the_client():
    out = run(b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\nHost: x\r\n"
              b"x-forwarded-for:7.7.7.7 , 8.8.8.8\r\nX-Forwarded-For:\r\n\r\n")
    assert out.count(b"orwarded-For") == 1
    assert b"X-Forwarded-For: 6.6.6.6, 7.7.7.7 , 8.8.8.8, 192.0.2.7\r\n" in out


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
    post = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(GET) + GET
    out = run(post)
    assert out.count(b"X-Forwarded-For") == 1 and out.endswith(GET)


def test_empty_lines_before_a_request_are_dropped():
    assert run(GET + b"\r\n\r\n" + GET) == run(GET + GET)


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00binary tls hello\r\nGET / HTTP/1.1\r\n\r\n",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",           # PostgreSQL's SSLRequest
    b"\r\n\x16\x03\x01",
])
def test_a_stream_that_starts_with_a_control_byte_passes_untouched(data):
    assert run(data) == data
    assert run(data, 1) == data


@pytest.mark.parametrize("data", [
    b"GET /x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",      # HTTP/0.9: llhttp reads its headers
    b"\tGET /x HTTP/1.1\r\n\r\n",
    b"\x1cGET /x HTTP/1.1\r\n\r\n",                       # whitespace to Python's split()
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"EHLO mail.example\r\n",
])
def test_any_other_stream_is_http_from_its_first_byte(data):
    assert rejected(data).status == 400
    assert rejected(data, 1).status == 400


@pytest.mark.parametrize("head", [
    b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
])
def test_upgrade_and_connect_turn_into_a_tunnel(head):
    frames = b"\x81\x05GET / HTTP/1.1\r\n\r\n \x00garbage"
    for step in (None, 1):
        out = run(head + frames, step)
        assert out.count(b"X-Forwarded-For") == 1 and out.endswith(frames)


def test_upgrade_without_connection_upgrade_is_no_tunnel():
    head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
    assert rejected(head + b"\x81\x05hello\r\n").status == 400
    assert b"hello" not in run(head + b"\x81\x05hello")


def test_an_unfinished_head_is_not_flushed_at_eof():
    assert run(b"GET / HTT") == b""
    assert run(b"GET / HTTP/1.1\r\nHost: x\r\n") == b""   # never completed


# each rejection reason ------------------------------------------------------------------

@pytest.mark.parametrize("request_line", [
    b"GET  /x HTTP/1.1",            # two spaces (nginx and llhttp accept it)
    b"GET /x  HTTP/1.1",
    b"GET /x HTTP/1.1 ",
    b"GET\t/x HTTP/1.1",
    b"GET /\xc3\xa9 HTTP/1.1",      # not ASCII
    b"GET /x HTTP/2.0",
    b"GET /x HTTP/1.2",
    b"GET /x http/1.1",
    b"G(T /x HTTP/1.1",
    b"GET x HTTP/1.1",
    b"GET h:443 HTTP/1.1",          # authority-form is CONNECT's
    b"CONNECT /x HTTP/1.1",
    b"GET * HTTP/1.1",              # asterisk-form is OPTIONS'
    b"GET x+y://h/ HTTP/1.1",
    b" GET /x HTTP/1.1",            # a server may split on any whitespace: still HTTP
    b"GET /x\x00 HTTP/1.1",
    b"\r\nget /x\x01 http/1.1",
])
@pytest.mark.parametrize("position", ["first", "second"])
def test_a_malformed_request_line_is_rejected(request_line, position):
    data = request_line + b"\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    if position == "second":
        data = GET + data
    for step in (None, 1):
        assert rejected(data, step).status == 400


@pytest.mark.parametrize("ending", [b"\n", b"\r\r\n"])
def test_lines_end_in_crlf(ending):
    assert rejected(GET + b"GET / HTTP/1.1" + ending + b"Host: x\r\n\r\n").status == 400
    assert rejected(GET + b"GET / HTTP/1.1\r\nHost: x" + ending + b"\r\n").status == 400


@pytest.mark.parametrize("fold", [b" Content-Length: 5", b"\tX-Forwarded-For: 6.6.6.6",
                                  b" more"])
def test_obs_fold_is_rejected(fold):
    data = GET + b"GET / HTTP/1.1\r\nX-A: b\r\n" + fold + b"\r\n\r\nhello"
    for step in (None, 1):
        assert rejected(data, step).status == 400


@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nContent-Length: 5",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Content-Length: 5, 5",
    b"Content-Length: +5",
    b"Content-Length: 0x5",
    b"Content-Length: ",
    b"Content-Length: 1234567890123456789",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunkedx",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"Transfer-Encoding: identity",
    b"Host : x",
    b": x",
    b"No colon",
    b"X-A: a\x00b",
    b"X-A: a\rb",
    b"X-A: a\x7fb",
])
def test_framing_fields_that_are_not_exactly_understood_are_rejected(fields):
    data = GET + b"POST / HTTP/1.1\r\n" + fields + b"\r\n\r\n0\r\n\r\n"
    for step in (None, 1):
        assert rejected(data, step).status == 400


def test_transfer_encoding_in_http10_is_rejected():
    assert rejected(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").status == 400


def test_transfer_encoding_is_matched_without_case_or_surrounding_space():
    out = run(b"POST / HTTP/1.1\r\nTransfer-Encoding:  CHUNKED \r\n\r\n1\r\na\r\n0\r\n\r\n" + GET)
    assert out.count(b"X-Forwarded-For") == 2


@pytest.mark.parametrize("body", [
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"10000000000000000\r\n",                 # 17 hex digits: over 64 bits
    b"5;a b\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",                 # no CRLF after the data
    b"5\r\nhello\n0\r\n\r\n",
    b"0\r\n folded: trailer\r\n\r\n",
    b"0\r\nbad trailer\r\n\r\n",
])
def test_invalid_chunks_are_rejected(body):
    data = GET + b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body + GET
    for step in (None, 1):
        assert rejected(data, step).status == 400


@pytest.mark.parametrize("step", [None, 1, 1000, 4096])
def test_a_head_over_the_limit_is_rejected_in_one_piece_or_many(step):
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    error = rejected(GET + b"GET / HTTP/1.1\r\n" + fields + b"\r\n", step)
    assert error.status == 431 and error.answer.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("step", [None, 1, 1000])
def test_a_line_over_the_limit_is_rejected_before_its_end(step):
    assert rejected(GET + b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_LINE, step).status == 431
    assert rejected(b"GET /" + b"a" * MAX_LINE, step).status == 431


def test_empty_lines_count_towards_the_head():
    assert rejected(GET + b"\r\n" * (MAX_HEAD // 2 + 1)).status == 431


def test_merged_forwarded_for_is_bounded():
    fields = b"X-Forwarded-For: %s\r\n" % (b"1" * 1000) * 9
    assert rejected(b"GET / HTTP/1.1\r\n" + fields + b"\r\n").status == 431


def test_the_answers_close_the_connection():
    for status in (400, 431):
        answer = Rejected(status, "why").answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in head
        assert f"Content-Length: {len(body)}".encode() in head


# what an unfinished head holds ------------------------------------------------------------

def test_no_part_of_a_head_passes_before_its_end():
    """http.server processes a head cut short by EOF as if it were complete."""
    stream = Requests(CLIENT)
    assert stream.feed(GET) and stream.feed(b"GET /b HTTP/1.1\r\n") == b""
    for i in range(30):
        assert stream.feed(b"X-F%d: %s\r\n" % (i, b"a" * 900)) == b""
    assert stream.flush() == b""
    out = stream.feed(b"\r\n")
    assert out.startswith(b"GET /b HTTP/1.1\r\n") and out.count(b"\r\n") == 34


def test_an_unfinished_head_holds_at_most_the_head_limit():
    stream = Requests(CLIENT)
    stream.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(Rejected):
        for _ in range(MAX_HEAD // 1000 + 1):
            stream.feed(b"X-F: %s\r\n" % (b"a" * 993))
            assert sum(map(len, stream.head)) + len(stream.partial) <= MAX_HEAD


# watching only (-l without -H) -------------------------------------------------------------

def test_request_lines_are_reported_as_each_head_ends():
    seen = []
    post = b"POST /f HTTP/1.1\r\nContent-Length: 16\r\n\r\nGET /no HTTP/1.1"
    run(GET + post + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", step=3, seen=seen)
    assert seen == [b"GET /a HTTP/1.1", b"POST /f HTTP/1.1", b"GET /b HTTP/1.1"]


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH_9.2\r\nmore\r\n", b"\x16\x03\x01\x02\x00"])
def test_a_stream_that_is_not_http_is_reported_once_with_its_first_line(data):
    seen = []
    assert run(data, ip=None, seen=seen) == data
    assert seen == [data.split(b"\r")[0]]


def test_watching_changes_nothing_and_stops_where_it_cannot_follow():
    seen = []
    data = GET + b"GET  /bad HTTP/1.1\r\n\r\n" + GET
    assert run(data, ip=None, seen=seen) == data
    assert run(data, step=1, ip=None) == data
    assert seen == [b"GET /a HTTP/1.1"]
