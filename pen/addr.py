"""pen's address grammar: listen addresses and server specs, resolved once at start.

    listen:  port | host:port | :::port | /unix/path      (split at the LAST colon)
    server:  host[:port[:soft[:hard[:weight[:prio]]]]] | [v6addr][:port...] | /unix/path
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field


class AddressError(ValueError):
    """A user's bad address: the message names it."""


@dataclass
class Endpoint:
    """Where to listen or connect: an inet host/port or a UNIX socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None
    family: int = socket.AF_INET
    sockaddr: tuple | str = field(default=())

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def address(self) -> str:
        """The resolved address without its port (a UNIX socket's path), as pen logs it."""
        return self.path or self.sockaddr[0]

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def parse_port(text: str, what: str = "port", proto: str = "tcp") -> int:
    """A number 0-65535 or a service name from /etc/services."""
    if text.isdigit():
        port = int(text)
        if port > 65535:
            raise AddressError(f"{what} out of range: {text}")
        return port
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        raise AddressError(f"unknown {what}: {text!r}") from None


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def parse_listen(text: str, proto: str = "tcp") -> Endpoint:
    """pen's listen address: port, host:port, :::port, [v6]:port or a socket path."""
    if "/" in text:
        return Endpoint(path=text, family=socket.AF_UNIX, sockaddr=text)
    if text.startswith("["):
        host, fields = _split_host(text)
        if len(fields) != 1 or not fields[0]:
            raise AddressError(f"missing port after ']' in listen address {text!r}")
        return Endpoint(host=host or None, port=parse_port(fields[0], "listen port", proto))
    host, sep, port = text.rpartition(":")
    if not sep:
        host = ""
    if not port:
        raise AddressError(f"missing port in listen address {text!r}")
    return Endpoint(host=_unbracket(host) or None, port=parse_port(port, "listen port", proto))


@dataclass
class ServerSpec:
    """One server as written on pen's command line."""

    endpoint: Endpoint
    max: int = 0
    hard: int = 0
    weight: int = 0
    prio: int = 0


def _split_host(text: str) -> tuple[str, list[str]]:
    """Split 'host:rest...' or '[v6]:rest...' into the host and the remaining fields."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise AddressError(f"expected ':' after ']' in {text!r}")
        return host, rest[1:].split(":") if rest else []
    host, *fields = text.split(":")
    return host, fields


def _count(text: str, what: str, spec: str) -> int:
    if not text.isdigit():
        raise AddressError(f"bad {what} {text!r} in server {spec!r}")
    return int(text)


def parse_server(text: str, default_port: int, proto: str = "tcp") -> ServerSpec:
    """host[:port[:soft[:hard[:weight[:prio]]]]], [v6addr]:port..., or a UNIX path."""
    if text.startswith("/"):
        return ServerSpec(Endpoint(path=text, family=socket.AF_UNIX, sockaddr=text))
    host, fields = _split_host(text)
    if not host:
        hint = " (IPv6 needs [brackets])" if text.count(":") >= 2 else ""
        raise AddressError(f"missing host in server {text!r}{hint}")
    if len(fields) > 5:
        raise AddressError(f"too many fields in server {text!r} (IPv6 needs [brackets])")
    fields += [""] * (5 - len(fields))
    port = parse_port(fields[0], "server port", proto) if fields[0] else default_port
    soft, hard, weight, prio = (
        _count(value, what, text) if value else 0
        for value, what in zip(fields[1:], ("soft limit", "hard limit", "weight", "prio"), strict=True)
    )
    return ServerSpec(Endpoint(host=host, port=port), soft, hard, weight, prio)


def resolve(endpoint: Endpoint, socktype: int = socket.SOCK_STREAM, passive: bool = False) -> Endpoint:
    """Fill in family and sockaddr (once, at start; pen does not re-resolve)."""
    if endpoint.is_unix:
        return endpoint
    host = endpoint.host
    if host is None and passive:
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, endpoint.port, 0, socktype, 0,
                                   socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as e:
        raise AddressError(f"cannot resolve {host!r}: {e.strerror}") from None
    except UnicodeError:                       # not a valid host name at all
        raise AddressError(f"bad host name {host!r}") from None
    family, _, _, _, sockaddr = infos[0]
    endpoint.family, endpoint.sockaddr = family, sockaddr
    return endpoint


def client_ip(address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's IP as pen keys it: IPv4-mapped IPv6 folded to IPv4, UNIX peers None."""
    if not isinstance(address, tuple) or not address:
        return None
    return _parse_ip(address[0])


@functools.lru_cache(maxsize=4096)        # clients come back: parse each address once
def _parse_ip(text: str):
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip
