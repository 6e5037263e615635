"""The PROXY protocol (HAProxy's, versions 1 and 2): one header at the start of a
connection that tells the receiver who the client really is.

pen-lb sends it to servers (`proxy_protocol v1|v2`) and takes it from a trusted upstream
balancer (`accept_proxy N`). Pure: bytes in, a Header or bytes out. The parser is bounded
(a v1 line is at most 107 bytes; a v2 length is checked before anything is read past the
fixed part) and says how much more it needs, so the caller reads no byte that is not the
header's.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import Refused

V1_MAX = 107                                   # "PROXY TCP6 <39> <39> 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16                                  # signature, version/command, family, length
V2_MAX = V2_FIXED + 4096                       # addresses and TLVs: more is refused
_V2_ADDRESSES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}   # family/transport -> block size


_STARTS = (b"PROXY ", V2_SIGNATURE)


class ProxyError(ValueError):
    """Bytes that are not a PROXY header (or one we refuse): the connection is closed."""


@dataclass(frozen=True)
class Header:
    """What a PROXY header says. source/destination are (ip, port) tuples, or None for a
    header that carries no addresses (v1 UNKNOWN, v2 LOCAL: a health check, for example)."""

    version: int
    length: int                                # bytes the header took on the wire
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def needed(data: bytes) -> int:
    """How many bytes the header at the start of data takes in all, as far as data tells:
    0 when data cannot start a PROXY header (ProxyError), more than len(data) while it is
    incomplete. Never more than V2_MAX."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        if len(data) < V2_FIXED:
            return V2_FIXED
        total = V2_FIXED + struct.unpack_from("!H", data, 14)[0]
        if total > V2_MAX:
            raise ProxyError(f"PROXY v2 header of {total} bytes (at most {V2_MAX})")
        return total
    if b"PROXY "[:len(data)] == data[:6]:
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyError(f"PROXY v1 line longer than {V1_MAX} bytes")
        return min(len(data) + 1, V1_MAX)
    raise ProxyError("no PROXY header")


def parse(data: bytes) -> Header | None:
    """The header at the start of data, or None if more bytes are needed."""
    total = needed(data)
    if total > len(data):
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data[:total])
    return _parse_v1(data[:total])


def _parse_v1(line: bytes) -> Header:
    try:
        words = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    if words[:2] == ["PROXY", "UNKNOWN"]:
        return Header(1, len(line))
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed PROXY v1 line")
    version = 4 if words[1] == "TCP4" else 6
    source = (_ip(words[2], version), _port(words[4]))
    destination = (_ip(words[3], version), _port(words[5]))
    return Header(1, len(line), source, destination)


def _ip(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"PROXY v1: bad address {text!r}") from None
    if ip.version != version:      # (ipaddress refuses IPv4 octets with leading zeros)
        raise ProxyError(f"PROXY v1: bad address {text!r}")
    return str(ip)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyError(f"PROXY v1: bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> Header:
    version_command, family = data[12], data[13]
    if version_command >> 4 != 2:
        raise ProxyError("PROXY v2: unknown version")
    command = version_command & 0x0F
    if command == 0:                               # LOCAL: the proxy's own connection
        return Header(2, len(data))
    if command != 1:
        raise ProxyError("PROXY v2: unknown command")
    if family == 0:                                # UNSPEC: no addresses to take
        return Header(2, len(data))
    if family not in _V2_ADDRESSES:
        raise ProxyError(f"PROXY v2: unsupported family 0x{family:02x}")
    size = _V2_ADDRESSES[family]
    block = data[V2_FIXED:]
    if len(block) < size:
        raise ProxyError("PROXY v2: address block too short")
    n = 4 if size == 12 else 16
    src = ipaddress.ip_address(block[:n])
    dst = ipaddress.ip_address(block[n:2 * n])
    sport, dport = struct.unpack_from("!HH", block, 2 * n)
    return Header(2, len(data), (str(src), sport), (str(dst), dport))


# --- sending ------------------------------------------------------------------------

def _plain(address):
    """(ip, port) of an inet address tuple, the IPv4 inside an IPv4-mapped IPv6 unmapped;
    None for anything else (a UNIX peer)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(address[1])


def _same_family(source, destination):
    """Both as IPv4 when both are, else both as IPv6 (an IPv4 one mapped)."""
    if source[0].version == destination[0].version:
        return source, destination

    def six(pair):
        ip, port = pair
        return (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip), port
    return six(source), six(destination)


def build(version: int, source, destination, datagram: bool = False) -> bytes:
    """The header to send before a connection's (or, v2 only, a datagram's) first byte:
    source is the client's address, destination the one it reached us on."""
    src, dst = _plain(source), _plain(destination)
    if version == 1:
        if datagram:
            raise ValueError("PROXY v1 has no datagram form")
        if src is None or dst is None:
            return b"PROXY UNKNOWN\r\n"
        src, dst = _same_family(src, dst)
        proto = "TCP4" if src[0].version == 4 else "TCP6"
        return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()
    if src is None or dst is None:                   # LOCAL, no addresses
        return V2_SIGNATURE + bytes((0x20, 0x00)) + b"\0\0"
    src, dst = _same_family(src, dst)
    family = (0x10 if src[0].version == 4 else 0x20) | (0x02 if datagram else 0x01)
    block = src[0].packed + dst[0].packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(block)) + block


class RefuseHeaders:
    """A relay transform for the bytes of a peer that accept_proxy does not trust: a PROXY
    header at their start would forge the client's address, so it is refused (Refused,
    counted as proxy_refused) however late or split it arrives. While the first bytes
    could still begin one they are held; anything else passes on, through `inner` (the
    next transform, or None)."""

    def __init__(self, inner=None) -> None:
        self.inner = inner
        self.held = b""
        self.checking = True

    def feed(self, data: bytes) -> bytes:
        if self.checking:
            data, self.held = self.held + data, b""
            if data.startswith(_STARTS):
                raise Refused("a PROXY header from a peer accept_proxy does not trust",
                              "proxy_refused")
            if any(start.startswith(data) for start in _STARTS):
                self.held = data                    # could still become one: wait
                return b""
            self.checking = False
        return self.inner.feed(data) if self.inner is not None else data

    def flush(self) -> bytes:
        """EOF: what is held was not a header after all."""
        rest, self.held = self.held, b""
        if self.inner is None:
            return rest
        return (self.inner.feed(rest) if rest else b"") + self.inner.flush()
