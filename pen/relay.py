"""Moving bytes between a client and its server.

Plain sockets (the common case) are relayed by `Relay`: each direction is a read callback
on the hub's loop, so a chunk costs a recv and a send, with no greenlet switch. Once a
direction has moved BULK bytes (a download, an upload) it switches to splice(2) through a
pipe where the platform has it, so the bytes stay in the kernel; small exchanges never
pay for the pipe. The connection's greenlet waits for the relay to end.

Layered streams (TLS) are relayed by `pump`, one greenlet per direction, because their
reads and writes must run the TLS state machine in a blocking style.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time

import gevent
from gevent import socket as gsocket
from greenlet import getcurrent

log = logging.getLogger("pen")

BUFSIZE = 64 * 1024
BULK = 256 * 1024
SPLICE = sys.platform.startswith("linux") and hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PLAIN = (socket.socket, gsocket.socket)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF, errno.ETIMEDOUT)
_READ, _WRITE = 1, 2


class Idle(Exception):
    """No bytes moved either way for idle_timeout seconds."""


class Flow:
    """What both directions of a connection share: when bytes last moved, the idle limit."""

    __slots__ = ("last", "idle")

    def __init__(self, idle: float) -> None:
        self.last = time.monotonic()
        self.idle = idle or None

    def waited_out(self) -> bool:
        """After a wait timed out: is the whole connection idle, or only this direction?"""
        return time.monotonic() - self.last >= self.idle


# plain sockets: the event-driven relay -------------------------------------------------

class Relay:
    """Both directions of a connection between two plain non-blocking sockets.

    run() returns when both directions have ended (EOF each way, passed on as a
    half-close), when one ends with `fastclose` set for it, on an error, or after idle
    seconds without a byte; an exception thrown into its greenlet ends it too. The
    caller closes the sockets."""

    def __init__(self, client, upstream, flow: Flow, to_server, to_client,
                 transform=None, fastclose: str = "off") -> None:
        self.flow = flow
        self.hub = gevent.get_hub()
        self.open = 2                      # directions still running
        self.waiting = None                # the greenlet in run()
        self.timer = None                  # the idle check
        loop = self.hub.loop
        self.directions = (
            _Direction(self, loop, client, upstream, to_server, transform,
                       fastclose in ("down", "both")),
            _Direction(self, loop, upstream, client, to_client, None,
                       fastclose in ("up", "both")))

    def run(self) -> None:
        for direction in self.directions:
            direction.start()
        if self.flow.idle:
            self.check_idle()
        self.waiting = getcurrent()
        try:
            while self.waiting is not None:
                self.hub.switch()          # close() switches back
        finally:
            self.waiting = None
            self.close()
            self.directions = ()           # they point back here: no cycle for the GC

    def check_idle(self) -> None:
        """A timer callback: end the relay once no byte has moved for idle seconds."""
        left = self.flow.last + self.flow.idle - time.monotonic()
        if left <= 0:
            log.debug("idle timeout")
            return self.close()
        self.timer = self.hub.loop.timer(left)
        self.timer.start(self.check_idle)

    def ended(self, direction: "_Direction") -> None:
        self.open -= 1
        if self.open == 0:
            self.close()

    def close(self) -> None:
        for direction in self.directions:
            direction.stop()
        if self.timer is not None:
            self.timer.stop()
        waiting, self.waiting = self.waiting, None
        if waiting is not None and waiting is not getcurrent():
            waiting.switch()               # from a callback in the hub: wake run()


class _Direction:
    """src -> dst. Reading stops while dst cannot take what was read (backpressure);
    what is left waits in `pending` (bytes) or in the pipe (`piped` bytes, splice mode)."""

    __slots__ = ("relay", "src", "dst", "count", "transform", "fastclose", "reader", "writer",
                 "pending", "splice", "pipe", "piped", "eof")

    def __init__(self, relay, loop, src, dst, count, transform, fastclose) -> None:
        self.relay, self.src, self.dst = relay, src, dst
        self.count, self.transform, self.fastclose = count, transform, fastclose
        self.reader = loop.io(src.fileno(), _READ)
        self.writer = loop.io(dst.fileno(), _WRITE)
        self.pending = None
        self.splice = BULK if SPLICE and transform is None else None   # bytes to go until then
        self.pipe = None
        self.piped = 0
        self.eof = False

    def start(self) -> None:
        self.reader.start(self.readable)

    def stop(self) -> None:
        self.reader.stop()
        self.writer.stop()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None

    def fail(self, error: OSError) -> None:
        if not gone(error):
            log.info("relay: %s", error)
        self.relay.close()

    # reading ----------------------------------------------------------------------------

    def readable(self) -> None:
        if self.pipe is not None:
            return self.splice_in()
        try:
            data = self.src.recv(BUFSIZE)
        except BlockingIOError:
            return
        except OSError as e:
            return self.fail(e)
        if not data:
            return self.end()
        self.relay.flow.last = time.monotonic()
        self.count(len(data))
        if self.transform is not None:
            data = self.transform.feed(data)
        elif self.splice is not None:
            self.splice -= len(data)
            if self.splice <= 0:
                self.start_splicing()
        if data:
            self.write(data)

    def end(self) -> None:
        """EOF from src: flush what the transform holds, then pass the half-close on."""
        self.eof = True
        self.reader.stop()
        if self.transform is not None and (rest := self.transform.flush()):
            if not self.write(rest):
                return                     # finish() once the rest is written
        self.finish()

    def finish(self) -> None:
        if self.fastclose or not end_writes(self.dst):
            return self.relay.close()
        self.relay.ended(self)

    # writing ----------------------------------------------------------------------------

    def write(self, data) -> bool:
        """Send data to dst; True if all of it went. Otherwise the rest is pending: stop
        reading until dst is writable again."""
        try:
            sent = self.dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.fail(e)
            return False
        if sent == len(data):
            return True
        self.pending = memoryview(data)[sent:]
        self.wait_writable()
        return False

    def wait_writable(self) -> None:
        self.reader.stop()
        self.writer.start(self.writable)

    def writable(self) -> None:
        if self.pipe is not None:
            return self.splice_out()
        pending = self.pending
        try:
            sent = self.dst.send(pending)
        except BlockingIOError:
            return
        except OSError as e:
            return self.fail(e)
        if sent < len(pending):
            self.pending = pending[sent:]
            return
        self.pending = None
        self.resume()

    def resume(self) -> None:
        """All that was read has been written: read again (or finish after EOF)."""
        self.writer.stop()
        if self.eof:
            return self.finish()
        self.reader.start(self.readable)

    # splice mode: socket -> pipe -> socket, all in the kernel ----------------------------

    def start_splicing(self) -> None:
        """From the next read on (what was read now is still sent by copy)."""
        self.splice = None
        try:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:                  # out of fds: go on copying
            log.debug("relay: no pipe for splice: %s", e)

    def splice_in(self) -> None:
        try:
            n = os.splice(self.src.fileno(), self.pipe[1], BUFSIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            return self.fail(e)
        if n == 0:
            return self.end()
        self.relay.flow.last = time.monotonic()
        self.count(n)
        self.piped = n
        self.splice_out()

    def splice_out(self) -> None:
        """Move the piped bytes on to dst; wait for dst if it cannot take them all."""
        while self.piped:
            try:
                self.piped -= os.splice(self.pipe[0], self.dst.fileno(), self.piped,
                                        flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not self.writer.active:
                    self.wait_writable()
                return
            except OSError as e:
                return self.fail(e)
        if self.writer.active:
            self.resume()


# layered streams (TLS): a greenlet per direction ----------------------------------------

def pump(src, dst, flow: Flow, count, transform=None) -> None:
    """Move bytes src -> dst until src ends; count(n) is told of every chunk.
    Returns on EOF; raises Idle or OSError when the connection should be torn down."""
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


# both ---------------------------------------------------------------------------------

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


def gone(error: OSError) -> bool:
    """An error that just means the peer went away (not worth more than a debug line)."""
    return isinstance(error, (ConnectionError, socket.timeout)) or error.errno in _GONE
