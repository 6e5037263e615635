"""Socket helpers every balancer shares: listening sockets, connecting to a server within
the connect timeout, per-socket options, and the connect hooks that shape a server
connection before it is made (`source`, and transparent.py's hook).

A connect hook is fn(sock, server, client_address), called on the unconnected socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from typing import Callable

import gevent
from gevent import socket as gsocket

from .addr import Endpoint, resolve
from .errors import UsageError

ConnectHook = Callable[[socket.socket, object, object], None]

OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY)
FULL_RETRY = 0.01     # a UNIX server's backlog is full (EAGAIN): ask again this often


def bind(endpoint: Endpoint, socktype: int = socket.SOCK_STREAM, backlog: int = 0,
         reuseport: bool = False):
    """A listening socket (plain, not yet gevent's, non-blocking) for a listen address;
    UsageError naming the address if it cannot be had."""
    if endpoint.is_unix:
        path = endpoint.path
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)                       # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socktype)
        target = path
    else:
        resolve(endpoint, socktype, passive=True)
        sock = socket.socket(endpoint.family, socktype)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:                             # a worker group's sockets share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if endpoint.family == socket.AF_INET6 and endpoint.host in (None, "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        target = endpoint.sockaddr
    try:
        sock.bind(target)
        if socktype == socket.SOCK_STREAM:
            sock.listen(backlog or socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise UsageError(f"{endpoint}: cannot listen: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def connect_within(sock, sockaddr, timeout) -> None:
    """connect(2) on a non-blocking socket within timeout (socket.timeout after it).
    The address is already resolved: connect, wait until writable, read the result."""
    deadline = time.monotonic() + timeout if timeout else None
    err = sock.connect_ex(sockaddr)
    while err == errno.EAGAIN and sock.family == socket.AF_UNIX:      # its backlog is full
        # and its fd tells nothing (a socket not yet connected is always writable)
        if deadline is not None and time.monotonic() >= deadline:
            raise socket.timeout("timed out")
        gevent.sleep(FULL_RETRY)
        err = sock.connect_ex(sockaddr)
    if err in _IN_PROGRESS:
        # A server on this host has answered by now (the handshake ran in our syscall):
        # asking again costs a syscall where waiting costs a trip through the loop.
        err = sock.connect_ex(sockaddr)
        if err in _IN_PROGRESS:
            gsocket.wait_write(sock.fileno(), _left(deadline))
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err and err != errno.EISCONN:
        raise OSError(err, os.strerror(err))


def _left(deadline):
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def layered(sock, timeout=None):
    """The gevent socket for a plain one, for the layers (TLS) that work in a blocking
    style; its operations time out after timeout seconds."""
    if type(sock) is socket.socket:
        sock = gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    sock.settimeout(timeout)
    return sock


def set_options(sock, state) -> None:
    """-O tcp_nodelay / keepalive (which a UNIX socket does not have)."""
    try:
        if state.tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if state.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


def server_socket(server, socktype: int, client_address, hooks: list[ConnectHook]):
    """A new non-blocking socket for talking to server on behalf of a client, shaped by
    the connect hooks (closed again if one fails)."""
    sock = socket.socket(server.endpoint.family, socktype | socket.SOCK_NONBLOCK)
    try:
        for hook in hooks:
            hook(sock, server, client_address)
    except BaseException:
        sock.close()
        raise
    return sock


def source_hook(state) -> ConnectHook:
    """`source IP`: connect to the servers from a fixed local address (read on every
    connect: the setting may change while pen runs)."""
    def hook(sock, server, client_address):
        if state.source and server.endpoint.family != socket.AF_UNIX:
            sock.bind((state.source, 0))
    return hook
