"""X-Forwarded-For insertion (-H) into every HTTP/1.x request of a client's byte stream.

pen edits whatever chunk it happens to read; this follows request boundaries instead
(Content-Length and chunked bodies), so every request on a keep-alive connection gets the
headers. Bytes that are not HTTP/1.x, and everything after an Upgrade or CONNECT, pass
through untouched.
"""

from __future__ import annotations

import re

MAX_HEAD = 64 * 1024
MAX_LINE = 4096
_REQUEST_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/1\.[0-9]$")
_TOKEN_START = re.compile(rb"^[A-Z]{1,20}( |$)")

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, PASS = range(7)


def add_forwarded(head: bytes, client_ip: str, proto: str) -> tuple[bytes, dict]:
    """Rewrite one complete request head (ending in a blank line) and return it with the
    header fields that decide the body: content-length, transfer-encoding, upgrade."""
    lines = head.split(b"\r\n") if b"\r\n" in head else head.split(b"\n")
    while lines and lines[-1] == b"":
        lines.pop()
    fields: dict[str, bytes] = {}
    xff_at = None
    for i, line in enumerate(lines[1:], 1):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower().decode("latin-1")
        value = value.strip()
        if key == "x-forwarded-for" and xff_at is None:
            xff_at = i
        fields[key] = value if key not in fields else fields[key] + b"," + value
    ip = client_ip.encode()
    if xff_at is not None:
        lines[xff_at] = lines[xff_at].rstrip() + b", " + ip
    else:
        lines.append(b"X-Forwarded-For: " + ip)
    if "x-forwarded-proto" not in fields:
        lines.append(b"X-Forwarded-Proto: " + proto.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n", fields


def _head_end(data: bytes) -> tuple[int, int]:
    """Where the head ends (index, separator length), or (-1, 0)."""
    found = [(i, n) for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    return min(found) if found else (-1, 0)


class ForwardedFor:
    """Feed the client's bytes in, get them back with the headers added."""

    def __init__(self, client_ip: str, proto: str = "http") -> None:
        self.client_ip = client_ip
        self.proto = proto
        self.state = HEAD
        self.buffer = b""
        self.remaining = 0
        self.requests = 0
        self.tunnel_after_body = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data:
            if self.state == PASS:
                out.append(data)
                break
            if self.state in (BODY, CHUNK_DATA):
                take = min(self.remaining, len(data))
                out.append(data[:take])
                data = data[take:]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = CHUNK_END if self.state == CHUNK_DATA else self._body_done()
                continue
            data = self._line_state(data, out)
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is held back (an incomplete head) when the client stops sending."""
        held, self.buffer = self.buffer, b""
        return held

    # states that work line by line ----------------------------------------------------

    def _line_state(self, data: bytes, out: list[bytes]) -> bytes:
        if self.state == HEAD:
            return self._head(data, out)
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                self._give_up(out)
            return b""
        line, rest = self.buffer[:end + 1], self.buffer[end + 1:]
        self.buffer = b""
        out.append(line)
        text = line.strip()
        if self.state == CHUNK_SIZE:
            try:
                size = int(text.split(b";", 1)[0], 16)
            except ValueError:
                self.state = PASS
                return rest
            if size == 0:
                self.state = TRAILER
            else:
                self.state, self.remaining = CHUNK_DATA, size
        elif self.state == CHUNK_END:
            self.state = CHUNK_SIZE
        elif self.state == TRAILER and not text:
            self.state = self._body_done()
        return rest

    def _head(self, data: bytes, out: list[bytes]) -> bytes:
        self.buffer += data
        start = self.buffer.lstrip(b"\r\n")      # blank lines between requests are allowed
        if start and not _TOKEN_START.match(start[:21]):
            self._give_up(out)
            return b""
        end, sep = _head_end(start)
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._give_up(out)
            return b""
        lead = len(self.buffer) - len(start)
        head, rest = self.buffer[:lead + end + sep], self.buffer[lead + end + sep:]
        self.buffer = b""
        request_line = head[lead:].split(b"\n", 1)[0].rstrip(b"\r")
        if not _REQUEST_LINE.match(request_line):
            out.append(head)
            self.state = PASS
            return rest
        rewritten, fields = add_forwarded(head[lead:], self.client_ip, self.proto)
        out.append(head[:lead] + rewritten)
        self.requests += 1
        self.tunnel_after_body = (request_line.startswith(b"CONNECT ")
                                  or b"upgrade" in fields.get("connection", b"").lower())
        if b"chunked" in fields.get("transfer-encoding", b"").lower():
            self.state = CHUNK_SIZE
        elif fields.get("content-length", b"0").strip() not in (b"", b"0"):
            try:
                self.remaining = int(fields["content-length"].split(b",")[0])
            except ValueError:
                self.state = PASS
                return rest
            self.state = BODY if self.remaining > 0 else self._body_done()
        else:
            self.state = self._body_done()
        return rest

    def _body_done(self) -> int:
        return PASS if self.tunnel_after_body else HEAD

    def _give_up(self, out: list[bytes]) -> None:
        """Not HTTP/1.x (or absurdly long): pass everything through from here on."""
        out.append(self.buffer)
        self.buffer = b""
        self.state = PASS
