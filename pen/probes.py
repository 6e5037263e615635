"""The health-check probes on gevent: one function per check type, each talking to one
server and answering '' (passed) or the reason it failed.

Every probe runs inside one gevent.Timeout (the healthcheck_timeout) and reads at most
READ_LIMIT bytes, so a server that hangs, says nothing, floods or sends garbage fails its
check; no error escapes `probe()`. The checks come from `source` as the data path's do.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

import gevent
from gevent import socket as gsocket

from .health import Check
from .sockets import connect_within, layered

try:                  # at start-up: after -u or a chroot the library may not be readable
    from dnslib import RCODE, DNSRecord
except ImportError:   # the udp extra is not installed: dns checks fail, saying so
    DNSRecord = RCODE = None

READ_LIMIT = 65536            # bytes read from a server per check, at most
DNS_MAX = 4096                # a larger DNS answer to a one-question query fails the check
TFTP_BLOCK = 512
_RESET = struct.pack("ii", 1, 0)          # SO_LINGER on, 0 s


class Failed(Exception):
    """A check failed; the message is the reason."""


@dataclass
class Target:
    """Where and how to check: the server's endpoint, the `source` address, the backend
    TLS context (ssl_backend), whether the balancer relays TCP."""

    endpoint: object
    source: str | None = None
    tls: object = None
    tcp: bool = True


def probe(check: Check, target: Target, timeout: float) -> str:
    """Run one check: '' if it passed, else why not (one line)."""
    if check.kind == "tcp" and target.tls is None:
        timer = None            # the commonest check: its connect has a deadline of its own
    else:
        timer = gevent.Timeout(timeout)
        timer.start()
    try:
        if timer is None:
            try:
                _tcp_connect_and_reset(target, timeout)
            except TimeoutError:
                return f"tcp timeout after {timeout:g} s"
        else:
            PROBES[check.kind](check, target)
        return ""
    except gevent.Timeout as e:
        if e is not timer:
            raise                                  # someone else's
        return f"{check.kind} timeout after {timeout:g} s"
    except Failed as e:
        return str(e)
    except ConnectionRefusedError:
        return f"{check.kind} refused"
    except OSError as e:
        return f"{check.kind} {e.strerror or e.__class__.__name__}"
    except Exception as e:            # dnslib's and ssl's own errors for bad bytes
        return f"{check.kind} bad answer: {e.__class__.__name__}"
    finally:
        if timer is not None:
            timer.close()


# --- sockets ---------------------------------------------------------------------------------

def _socket(target: Target, kind: int):
    endpoint = target.endpoint
    sock = gsocket.socket(endpoint.family, kind)
    try:
        if target.source and not endpoint.is_unix:
            sock.bind((target.source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _connected(target: Target, timeout: float | None = None):
    """A plain non-blocking socket connected to the server (connect_within: no gevent socket
    object unless the check talks; a `tcp` check is connect and close). Bounded by
    probe()'s timeout, or by timeout when given."""
    endpoint = target.endpoint
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        if target.source and not endpoint.is_unix:
            sock.bind((target.source, 0))
        connect_within(sock, endpoint.sockaddr, timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _stream(target: Target):
    """A connected gevent stream (TLS with ssl_backend); the caller closes it."""
    sock = layered(_connected(target))
    try:
        if target.tls is not None:
            sock = target.tls.wrap_socket(sock, server_hostname=target.endpoint.host)
    except BaseException:
        sock.close()
        raise
    return sock


def _read(sock, enough, limit: int = READ_LIMIT) -> bytes:
    """Bytes until enough(data) says so, EOF, or limit bytes (then Failed)."""
    data = b""
    while not enough(data):
        chunk = sock.recv(min(16384, limit + 1 - len(data)))
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise Failed(f"answer longer than {limit} bytes")
    return data


def _host_header(endpoint) -> str:
    if endpoint.is_unix:
        return "localhost"
    host = endpoint.host or endpoint.sockaddr[0]
    return f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"


# --- the checks ---------------------------------------------------------------------------------

def check_tcp(check: Check, target: Target) -> None:
    if target.tls is not None:
        _stream(target).close()
        return
    _tcp_connect_and_reset(target)


def _tcp_connect_and_reset(target: Target, timeout: float | None = None) -> None:
    sock = _connected(target, timeout)
    if not target.endpoint.is_unix:      # close with a reset: no TIME_WAIT per check
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


def check_http(check: Check, target: Target) -> None:
    request = (f"{check.method} {check.path} HTTP/1.1\r\nHost: {_host_header(target.endpoint)}\r\n"
               "User-Agent: pen-lb-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    sock = _stream(target)
    try:
        sock.sendall(request.encode("latin-1"))
        whole = bool(check.body) and check.method != "HEAD"      # the body's first 64 KiB
        data = _read(sock, (lambda d: len(d) >= READ_LIMIT) if whole
                     else (lambda d: b"\r\n" in d or len(d) >= READ_LIMIT))
    finally:
        sock.close()
    line = data.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        raise Failed("http no status line")
    status = int(line[1])
    if (status != check.status) if check.status else not 200 <= status < 400:
        raise Failed(f"http status {status}")
    if whole and check.body not in data.partition(b"\r\n\r\n")[2]:
        raise Failed(f"http body lacks {check.body.decode()!r}")


def _dns_answer(check: Check, query, reply: bytes) -> None:
    if len(reply) > DNS_MAX:
        raise Failed(f"dns answer of {len(reply)} bytes")
    answer = DNSRecord.parse(reply)
    if answer.header.id != query.header.id or answer.header.qr != 1:
        raise Failed("dns answer to another query")
    if [(str(q.qname), q.qtype) for q in answer.questions] != \
            [(str(q.qname), q.qtype) for q in query.questions]:
        raise Failed("dns answer to another question")
    rcode = RCODE.get(answer.header.rcode)
    if rcode != check.rcode:
        raise Failed(f"dns rcode {rcode}")


def check_dns(check: Check, target: Target) -> None:
    if DNSRecord is None:
        raise Failed("dns needs dnslib (pip install dnslib)")
    query = DNSRecord.question(check.name, check.qtype)
    query.header.id = random.randrange(65536)
    packet = query.pack()
    if target.tcp:
        sock = _stream(target)
        try:
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            def whole(d):
                return len(d) >= 2 and len(d) >= 2 + struct.unpack("!H", d[:2])[0]
            data = _read(sock, whole, 2 + DNS_MAX)
            if len(data) < 2 or not whole(data):
                raise Failed("dns answer cut short")
            reply = data[2:2 + struct.unpack("!H", data[:2])[0]]
        finally:
            sock.close()
    else:
        sock = _socket(target, socket.SOCK_DGRAM)
        try:
            sock.connect(target.endpoint.sockaddr)
            sock.send(packet)
            reply = sock.recv(READ_LIMIT)
        finally:
            sock.close()
    _dns_answer(check, query, reply)


def _smtp_reply(sock, data: bytes) -> tuple[int, bytes]:
    """One SMTP reply, read on from data (its last line has a space after the code):
    (code, what came after it)."""
    while True:
        lines = data.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b""):
                raise Failed("smtp bad reply")
            if line[3:4] != b"-":
                return int(line[:3]), b"\r\n".join(lines[i + 1:])
        if len(data) > 8192:
            raise Failed("smtp reply longer than 8192 bytes")
        chunk = sock.recv(4096)
        if not chunk:
            raise Failed("smtp closed")
        data += chunk


def check_smtp(check: Check, target: Target) -> None:
    sock = _stream(target)
    try:
        code, rest = _smtp_reply(sock, b"")
        if code != 220:
            raise Failed(f"smtp banner {code}")
        sock.sendall(b"EHLO pen-lb.healthcheck\r\n")
        code, rest = _smtp_reply(sock, rest)
        if code != 250:
            raise Failed(f"smtp ehlo {code}")
        sock.sendall(b"QUIT\r\n")
    finally:
        sock.close()


def check_tftp(check: Check, target: Target) -> None:
    """A read request; the first DATA block counts as up (and the transfer is cancelled),
    an ERROR packet as down. The reply comes from another port of the same host."""
    sock = _socket(target, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"\x00\x01" + check.name.encode() + b"\x00octet\x00", target.endpoint.sockaddr)
        while True:
            packet, peer = sock.recvfrom(4 + TFTP_BLOCK + 1)
            if peer[0] == target.endpoint.sockaddr[0]:
                break
        opcode = packet[:2]
        if opcode == b"\x00\x03" and packet[2:4] == b"\x00\x01":
            sock.sendto(b"\x00\x05\x00\x00health check done\x00", peer)   # end the transfer
            return
        if opcode == b"\x00\x05" and len(packet) >= 4:
            code = struct.unpack("!H", packet[2:4])[0]
            text = packet[4:].split(b"\x00", 1)[0][:64].decode("ascii", "replace")
            raise Failed(f"tftp error {code} {text}".rstrip())
        raise Failed("tftp bad reply")
    finally:
        sock.close()


def check_udp(check: Check, target: Target) -> None:
    sock = _socket(target, socket.SOCK_DGRAM)
    try:
        sock.connect(target.endpoint.sockaddr)
        sock.send(check.send)
        reply = sock.recv(READ_LIMIT)
    finally:
        sock.close()
    if not reply.startswith(check.expect):
        raise Failed("udp unexpected answer")


def check_tcp_expect(check: Check, target: Target) -> None:
    sock = _stream(target)
    try:
        if check.send:
            sock.sendall(check.send)
        reply = _read(sock, lambda d: len(d) >= len(check.expect), len(check.expect) + 16384)
    finally:
        sock.close()
    if not reply.startswith(check.expect):
        raise Failed("tcp_expect unexpected answer")


PROBES = {"tcp": check_tcp, "http": check_http, "dns": check_dns, "smtp": check_smtp,
          "tftp": check_tftp, "udp": check_udp, "tcp_expect": check_tcp_expect}
