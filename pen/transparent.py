"""Transparent proxying: connect to the servers from the client's own address.

The backend socket gets IP_TRANSPARENT (IPV6_TRANSPARENT) and is bound to the client's
address before it connects, so the server sees the real client. The kernel lets a socket
bind a foreign address only with CAP_NET_ADMIN (or CAP_NET_RAW); the servers' replies come
back to pen only if they route through the pen host and that host diverts them to local
sockets (`pen-setup transparent` installs the rules).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from .logs import Throttled

log = logging.getLogger("pen")

# Linux values; Python's socket module lacks some of them on older versions.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SOL_IP = getattr(socket, "SOL_IP", 0)

MISSING_CAPABILITY = "transparent: needs CAP_NET_ADMIN (run as root or grant the capability)"


class TransparentError(OSError):
    """Transparency is impossible here; the message says why."""


def bind_address(client_address, family: int):
    """The local address a backend socket of `family` binds to for this client, or None when
    the two cannot match (a UNIX client, or an IPv6 client to an IPv4 server).

    A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; they are unmapped for an
    IPv4 server. The port is 0: the kernel picks one, so a client reusing its port at once
    cannot collide with the previous backend connection still in TIME_WAIT.
    """
    if not isinstance(client_address, tuple) or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        ip = ipaddress.ip_address(client_address[0].split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if family == socket.AF_INET:
        return (str(ip), 0) if ip.version == 4 else None
    if ip.version == 4:
        return None
    return (str(ip), 0, 0, client_address[3] if len(client_address) > 3 else 0)


def set_transparent(sock) -> None:
    """IP_TRANSPARENT on an inet socket; TransparentError naming the capability if denied."""
    if sock.family == socket.AF_INET6:
        level, option = socket.IPPROTO_IPV6, IPV6_TRANSPARENT
    else:
        level, option = SOL_IP, IP_TRANSPARENT
    try:
        sock.setsockopt(level, option, 1)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise TransparentError(e.errno, MISSING_CAPABILITY) from None
        if e.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            raise TransparentError(e.errno, "transparent: this system has no IP_TRANSPARENT "
                                   "(Linux only)") from None
        raise


def check(family: int = socket.AF_INET) -> None:
    """Can this process make transparent sockets? Raises TransparentError if not."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        set_transparent(probe)


def apply(sock, client_address, state) -> bool:
    """Make `sock` (unbound, about to talk to a server) transparent for this client.

    With `source IP` set the socket is still made transparent (the source may then be a
    foreign address) but binding is left to the source hook. True if the socket was bound.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    address = None if state.source else bind_address(client_address, sock.family)
    if address is None and not state.source:
        return False
    set_transparent(sock)
    if address is not None:
        sock.bind(address)
        return True
    return False


def connect_hook(state):
    """TcpBalancer.connect_hooks entry: transparent while `state.transparent` is on.

    A missing capability is the host's fault, not the server's: the hook logs it and lets
    the connection go out from pen's own address rather than blacklisting every server.
    """
    warn = Throttled(logging.ERROR)

    def hook(sock, server, client_address):
        if not state.transparent:
            return
        try:
            apply(sock, client_address, state)
        except TransparentError as e:
            warn("%s; connecting from pen's own address", e.strerror)
    return hook
