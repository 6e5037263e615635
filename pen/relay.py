"""Byte pumps: one direction of a connection, from one socket to the other.

A pump copies with recv/send; once a direction has moved BULK bytes (a download, an
upload) it switches to splice(2) through a pipe where the platform has it, so the bytes
stay in the kernel. Small exchanges never pay for the pipe, and a silent connection holds
no fds beyond its two sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

from gevent import socket as gsocket

BUFSIZE = 64 * 1024
BULK = 256 * 1024
SPLICE = sys.platform.startswith("linux") and hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PLAIN = (socket.socket, gsocket.socket)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF, errno.ETIMEDOUT)


class Idle(Exception):
    """No bytes moved either way for idle_timeout seconds."""


class Flow:
    """What both pumps of a connection share: when bytes last moved, and the idle limit."""

    __slots__ = ("last", "idle")

    def __init__(self, idle: float) -> None:
        self.last = time.monotonic()
        self.idle = idle or None

    def waited_out(self) -> bool:
        """After a wait timed out: is the whole connection idle, or only this direction?"""
        return time.monotonic() - self.last >= self.idle


def pump(src, dst, flow: Flow, count, transform=None) -> None:
    """Move bytes src -> dst until src ends; count(n) is told of every chunk.
    Returns on EOF; raises Idle or OSError when the connection should be torn down."""
    sent = 0
    splice = SPLICE and transform is None and plain(src) and plain(dst)
    src.settimeout(flow.idle)
    dst.settimeout(flow.idle)
    read, write = _reader(src, flow), _writer(dst)
    while True:
        data = read()
        if not data:
            if transform is not None and (rest := transform.flush()):
                write(rest)
            return
        flow.last = time.monotonic()
        count(len(data))
        if transform is not None:
            data = transform.feed(data)
        if data:
            write(data)
        sent += len(data)
        if splice and sent >= BULK:
            return splice_pump(src, dst, flow, count)


def _reader(sock, flow: Flow):
    """read() -> the next bytes from sock (b'' at EOF); raises Idle.

    On a plain gevent socket it works at the syscall level: after a short read the socket
    is drained, so it waits for readiness before the next recv instead of paying for a
    recv that fails with EAGAIN (half of all recvs on a keep-alive connection otherwise)."""
    if type(sock) is not gsocket.socket:
        def read_layered() -> bytes:
            while True:
                try:
                    return sock.recv(BUFSIZE)
                except socket.timeout:
                    if flow.waited_out():
                        raise Idle() from None
        return read_layered
    recv, wait, readable = sock._sock.recv, sock._wait, sock._read_event
    ready = True                     # the first recv is tried: a client has usually sent

    def read() -> bytes:
        nonlocal ready
        while True:
            if not ready:
                try:
                    wait(readable)
                except socket.timeout:
                    if flow.waited_out():
                        raise Idle() from None
                    continue
            try:
                data = recv(BUFSIZE)
            except BlockingIOError:
                ready = False
                continue
            ready = len(data) == BUFSIZE
            return data
    return read


def _writer(sock):
    """write(data): all of data to sock. gevent's sendall asks the kernel for SO_SNDBUF on
    every call; a plain socket is written at the syscall level instead."""
    if type(sock) is not gsocket.socket:
        return sock.sendall
    send, wait, writable = sock._sock.send, sock._wait, sock._write_event

    def write(data: bytes) -> None:
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        while sent < len(data):
            wait(writable)              # a peer that reads nothing for idle seconds: timeout
            try:
                sent += send(memoryview(data)[sent:])
            except BlockingIOError:
                pass
    return write


def plain(sock) -> bool:
    """A bare kernel socket: what its fd carries is the stream itself. A layer in user space
    (TLS) is not, and splice(2) would move its raw records past it."""
    return type(sock) in _PLAIN


def end_writes(sock) -> bool:
    """Half-close: tell sock's peer no more bytes come. False when the stream cannot
    (TLS has no half-close: its socket must be closed, which says close_notify)."""
    if not plain(sock):
        return False
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return True


def splice_pump(src, dst, flow: Flow, count) -> None:
    """Zero-copy relay through a pipe: socket -> pipe -> socket, all in the kernel."""
    src_fd, dst_fd = src.fileno(), dst.fileno()
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            try:
                n = os.splice(src_fd, pipe_w, BUFSIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                _wait(src, src._read_event, flow)
                continue
            if n == 0:
                return
            flow.last = time.monotonic()
            count(n)
            while n:
                try:
                    n -= os.splice(pipe_r, dst_fd, n, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    _wait(dst, dst._write_event, flow)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


def _wait(sock, watcher, flow: Flow) -> None:
    """Wait on the socket's own watcher (honouring its timeout, the idle limit), so that
    closing the socket from another greenlet wakes this one, as it does for recv."""
    while True:
        try:
            return sock._wait(watcher)
        except socket.timeout:
            if flow.waited_out():
                raise Idle() from None


def gone(error: OSError) -> bool:
    """An error that just means the peer went away (not worth more than a debug line)."""
    return isinstance(error, (ConnectionError, socket.timeout)) or error.errno in _GONE
