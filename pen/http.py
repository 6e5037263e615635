"""HTTP/1.x requests in a client's byte stream: X-Forwarded-For (-H) and a log line per
request (-l), on one framing.

`Requests` follows the stream request by request (request line, header fields, a
Content-Length or chunked body), so every request on a keep-alive or pipelined connection
is seen. With -H it adds the headers, and it never passes a byte it did not understand:
what RFC 9112 tells a server or an intermediary to reject (obs-fold, a repeated or
malformed Content-Length, Content-Length with Transfer-Encoding, any coding but a single
`chunked`, a bad chunk size or chunk end, a malformed request line or field, a head over
the limit) raises `Rejected` with the answer for the client (400, or 431 for size), and
the connection ends. Without -H (-l alone) it only watches: the bytes pass unchanged,
and where it cannot follow, it stops watching.

A connection that starts with a control byte (a TLS handshake, most binary protocols) is
not HTTP: it passes untouched, as does everything after an Upgrade or CONNECT head. Any
other connection is HTTP from its first byte, and stays HTTP (with -H, a text protocol
such as SMTP gets 400: lenient servers take a request line without a version, llhttp
even reads its headers, so a first line cannot be waved through for looking unlike HTTP).

Several X-Forwarded-For fields are merged into one, the client last, so that the rightmost
entry is the client's for every server, whether it joins the fields or reads only one.

A head is held until it ends and passes whole, X-Forwarded-For added: a server never sees
part of a head, which some (Python's http.server) would process at EOF as if complete.
So an unfinished head holds at most MAX_HEAD bytes (and a connection at most that much
for its head); each line is checked as it arrives, so a bad one is refused at once.
Bodies, chunks and trailers pass as they arrive.
"""

from __future__ import annotations

import re

from .errors import Refused

MAX_LINE = 8 * 1024         # a request line, field or chunk-size line (nginx: 8k buffers)
MAX_HEAD = 32 * 1024        # a whole head, and a chunked body's trailer (nginx: 4 x 8k)

_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
_BINARY = frozenset(range(0x09)) | frozenset(range(0x0e, 0x1c)) | {0x7f}   # no whitespace
# request-target forms (RFC 9112 3.2): origin, absolute, asterisk (OPTIONS), authority (CONNECT)
_TARGET = re.compile(rb"/[\x21-\x7e]*|[A-Za-z]+://[\x21-\x7e]*")
_AUTHORITY = re.compile(rb"[\x21-\x2e\x30-\x7e]+")
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) HTTP/1\.([01])" % _TCHAR)
_FIELD = re.compile(rb"([%s]+):([\t\x20-\x7e\x80-\xff]*)" % _TCHAR)
_LENGTH = re.compile(rb"[0-9]{1,18}")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_EXT = rb"(?:;[%s]+(?:=(?:[%s]+|%s))?)*" % (_TCHAR, _TCHAR, _QUOTED)    # chunk extensions
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})%s" % _EXT)
_NOTED = frozenset((b"content-length", b"transfer-encoding", b"x-forwarded-for",
                    b"x-forwarded-proto", b"upgrade", b"connection"))
_FIELDS = re.compile(rb"(?:[%s]+:[\t\x20-\x7e\x80-\xff]*\r\n)*" % _TCHAR)
_NOTED_FIELD = re.compile(rb"^(%s):([^\r]*)\r$" % b"|".join(sorted(_NOTED)), re.I | re.M)

# where in a request the stream is
START, LINE, FIELDS, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, PASS = range(9)


class Rejected(Refused):
    """The client sent what cannot be passed on as HTTP: answer it with `status`, end the
    connection (counted as http_rejected)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason, "http_rejected")
        self.status = status
        self.answer = _ANSWERS[status]


_ANSWERS = {status: (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s\n" % (status, text, len(text) + 1, text))
            for status, text in ((400, b"Bad Request"),
                                 (431, b"Request Header Fields Too Large"))}


def _bad(reason: str) -> Rejected:
    return Rejected(400, reason)


class Requests:
    """Feed the client's bytes in, get back what goes to the server.

    forwarded_for: the client's address for -H (None: watch only, change nothing).
    on_request(request_line): called as each request's head ends (-l), or once with the
    first line of a connection that turns out not to be HTTP."""

    def __init__(self, forwarded_for: str | None = None, proto: str = "http",
                 on_request=None) -> None:
        self.rewrite = forwarded_for is not None
        self.client = (forwarded_for or "").encode()
        self.proto = proto.encode()
        self.on_request = on_request
        self.state = START
        self.partial = bytearray()   # an unfinished line
        self.remaining = 0           # body or chunk bytes still to pass
        self.completed = 0           # requests whose end has passed
        self.opening = b""           # the stream's first bytes (for -l, if it is not HTTP)
        self._new_head()

    def _new_head(self) -> None:
        self.size = 0                # bytes of this head (or trailer) so far
        self.request_line = b""
        self.version = b""
        self.tunnel = False
        self.length: int | None = None
        self.chunked = False
        self.upgrade = False         # an Upgrade field ...
        self.connection_upgrade = False      # ... and Connection: upgrade
        self.head: list[bytes] = []  # its lines, held until it ends (see _compact)
        self.compacted = 0           # how many of them _compact has gone over
        self.forwarded: list[bytes] = []     # X-Forwarded-For values, held to the end
        self.forwarded_size = 0
        self.has_proto = False

    def feed(self, data: bytes) -> bytes:
        if self.state == PASS:
            return data
        out: list[bytes] = []
        try:
            self._parse(data, out)
            if self.head:
                self._compact()
        except Rejected:
            if self.rewrite:
                raise
            self.state = PASS            # only watching: stop, the bytes pass as they are
            self.partial = bytearray()
            self._report_opening()
        return b"".join(out) if self.rewrite else data

    def flush(self) -> bytes:
        """At the client's EOF: what is held back. Only the start of a stream not yet known
        to be HTTP goes on; an unfinished request does not (its head would never end)."""
        held, self.partial = self.partial, bytearray()
        return bytes(held) if self.rewrite and self.state == START else b""

    # the stream --------------------------------------------------------------------------

    def _parse(self, data: bytes, out: list[bytes]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self.state
            if state == PASS:
                out.append(data[pos:] if pos else data)
                return
            if state == BODY or state == CHUNK_DATA:
                take = min(self.remaining, end - pos)
                out.append(data[pos:pos + take] if take < end else data)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = CHUNK_END if state == CHUNK_DATA else self._request_done()
                continue
            if state == START:
                data, pos, end = self._start(data, pos)
                continue
            if state == LINE and not self.partial and data[pos] not in b"\r\n":
                # The common case, a whole head within the limit and no bare LF in it (line
                # by line, a bare LF would end a line): checked at once.
                blank = data.find(b"\r\n\r\n", pos)
                if (blank >= 0 and self.size + blank + 4 - pos <= MAX_HEAD
                        and data.count(b"\n", pos, blank) == data.count(b"\r\n", pos, blank)):
                    self._whole_head(data, pos, blank, out)
                    pos = blank + 4
                    continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._hold(data[pos:])
                return
            if self.partial:
                self.partial += data[pos:newline + 1]
                line, self.partial = bytes(self.partial), bytearray()
            else:
                line = data[pos:newline + 1]
            pos = newline + 1
            self._check_size(len(line))
            self._line(line, out)

    def _whole_head(self, data: bytes, pos: int, blank: int, out: list[bytes]) -> None:
        """A head that arrived whole (data[pos:blank] and its blank line): what _line does
        line by line, at once. Fields that are all well formed and short (as nearly all
        are) are checked by one pattern, and only those that frame a request looked at."""
        first_end = data.find(b"\r\n", pos, blank + 2)
        fields = data[first_end + 2:blank + 2]
        if (first_end - pos + 2 <= MAX_LINE and len(fields) <= MAX_LINE
                and _FIELDS.fullmatch(fields)):
            self._request(data[pos:first_end])
            kept = True
            for match in _NOTED_FIELD.finditer(fields):
                kept &= self._note(match[1].lower(), match[2].strip(b" \t"))
            lines = None
        else:                                           # line by line, for the answer
            lines = data[pos:blank].split(b"\r\n")
            kept = True
            for i, text in enumerate(lines):
                if len(text) + 2 > MAX_LINE:
                    raise Rejected(431, "line too long")
                if i:
                    kept &= self._field(text)
                else:
                    self._request(text)
        if kept:
            self.head = [data[pos:blank + 2]]
        else:
            lines = lines or data[pos:blank].split(b"\r\n")
            self.head = [b"".join(text + b"\r\n" for text in lines if not _is_forwarded(text))]
        self._end_of_head(out)

    def _compact(self) -> None:
        """An unfinished head's lines that came in one read become one object: a line
        apiece would cost more in objects than in bytes (as would a growing bytearray,
        in the allocator's slack), and joining per read keeps the work linear."""
        head, start = self.head, self.compacted
        if len(head) - start > 1:
            head[start:] = [b"".join(head[start:])]
        self.compacted = len(head)

    def _hold(self, rest: bytes) -> None:
        self.partial += rest
        self._check_size(len(self.partial))

    def _check_size(self, n: int) -> None:
        if self.state == CHUNK_END and n > 2:
            raise _bad("no CRLF after chunk data")
        if n > MAX_LINE:
            if self.state == CHUNK_SIZE:
                raise _bad("chunk-size line too long")
            raise Rejected(431, "line too long")
        if self.size + n > MAX_HEAD:
            raise Rejected(431, "head too large")

    def _start(self, data: bytes, pos: int):
        """The connection's first byte (after empty lines) decides: a control byte that no
        server takes for part of a request line (TLS, most binary protocols) is not HTTP;
        anything else is, however it goes on (lenient servers take a request line with no
        version, or split it on any whitespace). Returns the stream to go on with: all of
        it once decided, nothing while undecided."""
        head = bytes(self.partial) + data[pos:] if self.partial else data[pos:]
        self.partial = bytearray()
        text = head.lstrip(b"\r\n")
        if not text:
            return self._wait(head)
        self.opening = text[:256]
        self.state = PASS if text[0] in _BINARY else LINE
        if self.state == PASS:
            self._report_opening()
        return head, 0, len(head)

    def _report_opening(self) -> None:
        """-l for a connection that turned out not to be HTTP: its first line, once."""
        if self.on_request is not None and not self.completed:
            self.on_request(self.opening.split(b"\n", 1)[0].split(b"\r", 1)[0])
            self.on_request = None

    def _wait(self, head: bytes):
        self._hold(head)
        return b"", 0, 0

    def _line(self, line: bytes, out: list[bytes]) -> None:
        """One line of a head, chunk-size, chunk end or trailer, ending in LF."""
        if line[-2:-1] != b"\r":
            raise _bad("a line not ended by CRLF")
        text = line[:-2]
        state = self.state
        if state == LINE:
            self.size += len(line)
            if text:
                self._request(text)
                self.head.append(line)
            # (an empty line before a request is dropped: it means nothing)
        elif state == FIELDS:
            if not text:
                self._end_of_head(out)
                return
            self.size += len(line)
            if self._field(text):
                self.head.append(line)
        elif state == CHUNK_SIZE:
            match = _CHUNK_SIZE.fullmatch(text)
            if match is None:
                raise _bad("invalid chunk size")
            out.append(line)
            self.remaining = int(match[1], 16)
            self.state = CHUNK_DATA if self.remaining else TRAILER
        elif state == CHUNK_END:
            if text:
                raise _bad("no CRLF after chunk data")
            out.append(line)
            self.state = CHUNK_SIZE
        elif state == TRAILER:
            if text:
                self.size += len(line)
                _split_field(text)
            else:
                self.state = self._request_done()
            out.append(line)

    def _request(self, text: bytes) -> None:
        match = _REQUEST_LINE.fullmatch(text)
        if match is None:
            raise _bad("malformed request line")
        method, target = match[1], match[2]
        if not (_AUTHORITY.fullmatch(target) if method == b"CONNECT" else
                _TARGET.fullmatch(target) or target == b"*" and method == b"OPTIONS"):
            raise _bad("malformed request target")
        self.request_line = text
        self.version = match[3]
        self.tunnel = method == b"CONNECT"
        self.state = FIELDS

    def _field(self, text: bytes) -> bool:
        """Check a field line (without its CRLF), note what frames the request; False for
        an X-Forwarded-For that -H takes out (to merge at the head's end)."""
        name, value = _split_field(text)
        return name not in _NOTED or self._note(name, value)

    def _note(self, name: bytes, value: bytes) -> bool:
        """What a field that frames the request says; False as _field."""
        if name == b"content-length":
            if self.length is not None:
                raise _bad("repeated Content-Length")
            if not _LENGTH.fullmatch(value):
                raise _bad("invalid Content-Length")
            self.length = int(value)
        elif name == b"transfer-encoding":
            if self.chunked or value.lower() != b"chunked":
                raise _bad("transfer coding other than a single chunked")
            self.chunked = True
        elif name == b"x-forwarded-for" and self.rewrite:
            if value:                       # merged into one field at the head's end
                self.forwarded.append(value)
                self.forwarded_size += len(value) + 2
                if self.forwarded_size > MAX_LINE:
                    raise Rejected(431, "X-Forwarded-For too long")
            return False
        elif name == b"x-forwarded-proto":
            self.has_proto = True
        elif name == b"upgrade":
            self.upgrade = True
        elif name == b"connection":
            tokens = (token.strip().lower() for token in value.split(b","))
            self.connection_upgrade |= b"upgrade" in tokens
        return True

    def _end_of_head(self, out: list[bytes]) -> None:
        if self.chunked and self.length is not None:
            raise _bad("Content-Length with Transfer-Encoding")
        if self.chunked and self.version == b"0":
            raise _bad("Transfer-Encoding in HTTP/1.0")
        out += self.head
        self.head, self.compacted = [], 0           # (not held while the body passes)
        if self.rewrite:
            out.append(b"X-Forwarded-For: %s\r\n" % b", ".join(self.forwarded + [self.client]))
            if not self.has_proto:
                out.append(b"X-Forwarded-Proto: %s\r\n" % self.proto)
        out.append(b"\r\n")
        if self.on_request is not None:
            self.on_request(self.request_line)
        self.tunnel |= self.upgrade and self.connection_upgrade
        self.size = 0                                   # (a trailer has its own limit)
        if self.tunnel:                 # from here on, the bytes are the tunnel's (a body
            self.state = self._request_done()           # included, as llhttp has it)
        elif self.chunked:
            self.state = CHUNK_SIZE
        elif self.length:
            self.state, self.remaining = BODY, self.length
        else:
            self.state = self._request_done()

    def _request_done(self) -> int:
        self.completed += 1
        tunnel = self.tunnel
        self._new_head()
        return PASS if tunnel else LINE


def _split_field(text: bytes) -> tuple[bytes, bytes]:
    """(lower-case name, value without surrounding whitespace) of a field line."""
    if text[0] in b" \t":
        raise _bad("obs-fold (a line starting with whitespace)")
    match = _FIELD.fullmatch(text)
    if match is None:
        raise _bad("malformed header field")
    return match[1].lower(), match[2].strip(b" \t")


def _is_forwarded(text: bytes) -> bool:
    return text[:16].lower() == b"x-forwarded-for:"
