"""Moving bytes between a client and its server.

`Relay` moves both directions of a connection in read callbacks on the hub's loop, so a
chunk costs a recv and a send and no greenlet switch; the connection's greenlet waits for
the relay to end. A stream is a plain non-blocking socket or, after its handshake, a TLS
socket, whose record layer (_sslobj) reads and writes the same non-blocking fd. Once a
direction between plain sockets has moved BULK bytes in full reads (a download, an
upload) it switches to splice(2) through a pipe where the platform has it, so the bytes
stay in the kernel; small exchanges, however many a keep-alive connection makes, never
pay for the pipe.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from ssl import SSLEOFError, SSLWantReadError, SSLWantWriteError, SSLZeroReturnError

import gevent
from gevent import socket as gsocket

from .errors import Refused
from .portable import PORTABLE

log = logging.getLogger("pen")

BUFSIZE = 64 * 1024
BULK = 256 * 1024
ROUNDS = 16            # chunks one direction may move per wake-up while its source has more
LOOKS = 4              # the idle check looks this often per idle period (Relay.last_moved)
SPLICE = sys.platform.startswith("linux") and hasattr(os, "splice") and not PORTABLE
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF, errno.ETIMEDOUT)
_READ, _WRITE = 1, 2
_WAIT = (BlockingIOError, SSLWantReadError, SSLWantWriteError)   # nothing to move now
_EOF = (SSLZeroReturnError, SSLEOFError)      # the TLS peer closed (with or without notify)


class Relay:
    """Both directions of a connection between two streams.

    start() sets it going; from then on the loop's callbacks move the bytes and no
    greenlet waits for them (a held connection costs no parked stack). It ends when both
    directions have ended (EOF each way, passed on as a half-close), when one ends with
    `fastclose` set for it, on an error, after idle seconds without a byte, or when
    close() is called (`close N`, shutdown); then it calls on_end() once, which closes
    the sockets. A transform (feed(bytes) -> bytes, flush() -> bytes) may rewrite what
    goes to the server (`transform`) or to the client (`reply_transform`); one that
    raises errors.Refused (http.Rejected, for one) has its answer sent back and ends the
    relay, leaving the refusal in `refused`. to_server(n) and to_client(n) count the bytes
    read each way: not per chunk (a call per chunk cost a keep-alive request a fifth of its
    user time) but when settle() is called, by whoever is about to read the counts, and
    when the relay ends.

    The loop is the hub's unless given: all the relay asks of it is io(fd, events) and
    timer(seconds) watchers, so tests can drive it without sockets or a hub."""

    def __init__(self, client, upstream, idle: float, to_server, to_client,
                 transform=None, fastclose: str = "off", reply_transform=None,
                 loop=None, on_end=None) -> None:
        self.last = time.monotonic()       # when a look (last_moved) first saw `seen`
        self.seen = 0                      # bytes moved either way, as of that look
        self.settled = 0                   # bytes settle() has counted
        self.idle = idle or None
        self.loop = loop = loop or gevent.get_hub().loop
        self.open = 2                      # directions still running
        self.closed = False
        self.on_end = on_end
        self.timer = None                  # the idle check
        self.refused: Refused | None = None
        self.directions = (
            _Direction(self, loop, client, upstream, to_server, transform,
                       fastclose in ("down", "both")),
            _Direction(self, loop, upstream, client, to_client, reply_transform,
                       fastclose in ("up", "both")))

    def start(self) -> None:
        """Watch both sources (and the idle time); from here on the loop moves the bytes."""
        for direction in self.directions:
            direction.reader.start(direction.readable)
        if self.idle:
            self.check_idle()

    def last_moved(self, now: float) -> float:
        """When bytes last moved, as far as looks tell: the time of the first look (this
        call, at `now`) that saw the bytes moved so far. Chunks are not timed as they move
        (a clock read per chunk was a sixteenth of a keep-alive request's user time), so
        this is late by up to the time between looks: the idle check looks every idle/LOOKS
        seconds, an eviction (-x full) at each newcomer."""
        seen = self.settled
        for direction in self.directions:
            seen += direction.moved
        if seen != self.seen:
            self.seen, self.last = seen, now
        return self.last

    def check_idle(self) -> None:
        """A timer callback: end the relay once no byte has moved for idle seconds (it
        ends between idle and idle * (1 + 1/LOOKS) seconds after the last byte)."""
        now = time.monotonic()
        left = self.last_moved(now) + self.idle - now
        if left <= 0:
            log.debug("idle timeout")
            return self.close()
        self.timer = self.loop.timer(min(left, self.idle / LOOKS))
        self.timer.start(self.check_idle)

    def ended(self, direction: "_Direction") -> None:
        self.open -= 1
        if self.open == 0:
            self.close()

    def settle(self) -> None:
        """Count the bytes moved since the last call (to_server, to_client)."""
        for direction in self.directions:
            if direction.moved:
                direction.count(direction.moved)
                self.settled += direction.moved
                direction.moved = 0

    def close(self) -> None:
        """End the relay (at most once): stop watching, count, then on_end()."""
        if self.closed:
            return
        self.closed = True
        self.settle()
        for direction in self.directions:
            direction.stop()
        if self.timer is not None:
            self.timer.stop()
        self.directions = ()               # they point back here: no cycle for the GC
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()


class _Direction:
    """src -> dst. Reading stops while dst cannot take what was read (backpressure);
    what is left waits in `pending` (bytes) or in the pipe (`piped` bytes, splice mode)."""

    __slots__ = ("relay", "src", "dst", "recv", "send", "buffered", "count", "moved",
                 "transform", "fastclose", "reader", "writer", "pending", "bulk_left", "pipe",
                 "piped", "eof")

    def __init__(self, relay, loop, src, dst, count, transform, fastclose) -> None:
        self.relay, self.src, self.dst = relay, src, dst
        self.count, self.transform, self.fastclose = count, transform, fastclose
        self.moved = 0                     # bytes read and not yet counted (Relay.settle)
        if type(src) is socket.socket:     # (the usual case, without a call)
            self.recv, self.buffered = src.recv, None
        else:
            self.recv, self.buffered = _reading(src)
        self.send = dst.send if type(dst) is socket.socket else _writing(dst)
        self.reader = loop.io(src.fileno(), _READ)
        self.writer = None                 # made when dst first pushes back
        self.pending = None
        both_plain = self.buffered is None and type(dst) is socket.socket
        # bytes to copy in full reads before splicing (None: this direction never splices)
        self.bulk_left = BULK if SPLICE and transform is None and both_plain else None
        self.pipe = None
        self.piped = 0
        self.eof = False

    def stop(self) -> None:
        self.reader.stop()
        if self.writer is not None:
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
        """Move a chunk; go on (up to ROUNDS chunks) while src may have more right now (it
        filled the buffer, or TLS holds decrypted bytes the fd will not announce) and dst
        took all of it. (One function: a chunk costs no call but the socket's.)"""
        rounds = ROUNDS
        while True:
            if self.pipe is not None:
                if not self.splice_in():
                    return
                n = BUFSIZE
            else:
                try:
                    data = self.recv(BUFSIZE)
                except _WAIT:
                    return
                except _EOF:
                    data = b""
                except OSError as e:
                    return self.fail(e)
                if not data:
                    return self.end()
                n = len(data)
                self.moved += n
                if self.transform is not None:
                    try:
                        data = self.transform.feed(data)
                    except Refused as refusal:
                        return self.refuse(refusal)
                elif n == BUFSIZE and self.bulk_left is not None:   # a full read: bulk
                    self.bulk_left -= n
                    if self.bulk_left <= 0:
                        self.start_splicing()
                if data:                       # write(data), inlined: once per chunk
                    try:
                        sent = self.send(data)
                    except _WAIT:
                        sent = 0
                    except OSError as e:
                        return self.fail(e)
                    if sent != len(data):
                        self.hold(data, sent)
                        return
            if n != BUFSIZE and (self.buffered is None or self.buffered() <= 0):
                return
            rounds -= 1
            if not rounds:
                return

    def refuse(self, refusal: Refused) -> None:
        """The transform refused what src sent: answer src if there is an answer (one send,
        which a socket that has taken no reply yet takes whole; a client that does not read
        gets nothing), end."""
        self.relay.refused = refusal.with_traceback(None)      # (its frames hold the data)
        reply = next(d for d in self.relay.directions if d is not self)
        if refusal.answer and reply.pending is None and not reply.piped:   # not in a response
            try:
                _writing(self.src)(refusal.answer)
            except OSError:
                pass
        self.relay.close()

    def end(self) -> None:
        """EOF from src: flush what the transform holds, then pass the half-close on."""
        self.eof = True
        self.reader.stop()
        if self.transform is not None and (rest := self.transform.flush()):
            if not self.write(rest):
                return                     # finish() once the rest is written
        self.finish()

    def finish(self) -> None:
        # The last direction to end needs no half-close: closing the sockets sends the FIN.
        if self.fastclose or self.relay.open == 1 or not end_writes(self.dst):
            return self.relay.close()
        self.relay.ended(self)

    # writing ----------------------------------------------------------------------------

    def write(self, data) -> bool:
        """Send data to dst; True if all of it went. Otherwise the rest is pending: stop
        reading until dst is writable again."""
        try:
            sent = self.send(data)
        except _WAIT:
            sent = 0
        except OSError as e:
            self.fail(e)
            return False
        if sent == len(data):
            self.pending = None
            return True
        return self.hold(data, sent)

    def hold(self, data, sent: int) -> bool:
        """dst took only sent bytes: keep the rest pending, read no more until it is
        writable. (Reading runs only while nothing is pending: move() needs no reset.)"""
        self.pending = memoryview(data)[sent:]
        if not self.waiting_to_write():
            self.wait_writable()
        return False

    def wait_writable(self) -> None:
        self.reader.stop()
        if self.writer is None:
            self.writer = self.relay.loop.io(self.dst.fileno(), _WRITE)
        self.writer.start(self.writable)

    def writable(self) -> None:
        if self.pipe is not None:
            self.splice_out()
            return
        if self.write(self.pending):
            self.resume()

    def waiting_to_write(self) -> bool:
        return self.writer is not None and self.writer.active

    def resume(self) -> None:
        """All that was read has been written: read again (or finish after EOF)."""
        self.writer.stop()
        if self.eof:
            return self.finish()
        self.reader.start(self.readable)
        if self.buffered is not None and self.buffered():
            self.readable()            # decrypted bytes the fd will not announce

    # splice mode: socket -> pipe -> socket, all in the kernel ----------------------------

    def start_splicing(self) -> None:
        """From the next read on (what was read now is still sent by copy)."""
        self.bulk_left = None
        try:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:                  # out of fds: go on copying
            log.debug("relay: no pipe for splice: %s", e)

    def splice_in(self) -> bool:
        try:
            n = os.splice(self.src.fileno(), self.pipe[1], BUFSIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return False
        except OSError as e:
            self.fail(e)
            return False
        if n == 0:
            self.end()
            return False
        self.moved += n
        self.piped = n
        return self.splice_out() and n == BUFSIZE

    def splice_out(self) -> bool:
        """Move the piped bytes on to dst; True if all went, else wait for dst."""
        while self.piped:
            try:
                self.piped -= os.splice(self.pipe[0], self.dst.fileno(), self.piped,
                                        flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not self.waiting_to_write():
                    self.wait_writable()
                return False
            except OSError as e:
                self.fail(e)
                return False
        if self.waiting_to_write():
            self.resume()
        return True


def _reading(stream):
    """(recv, buffered) for a stream: a TLS socket reads through its record layer, and
    may hold decrypted bytes (buffered() > 0) that its fd no longer shows."""
    if type(stream) is socket.socket:      # plain: no attribute search (every connection)
        return stream.recv, None
    sslobj = getattr(stream, "_sslobj", None)
    if sslobj is None:
        return stream.recv, None
    return sslobj.read, sslobj.pending


def _writing(stream):
    """send(data) for a stream. TLS: a write that would block raises SSLWantWriteError
    and is retried with the same bytes, as OpenSSL requires."""
    if type(stream) is socket.socket:
        return stream.send
    sslobj = getattr(stream, "_sslobj", None)
    return stream.send if sslobj is None else sslobj.write


def linger(sock, seconds: float = 2.0, most: int = 256 * 1024) -> None:
    """After answering a refused client: say no more comes, and read and drop what it still
    sends (until its EOF, `seconds` or `most` bytes), since closing a socket with unread
    bytes resets the connection, and a reset can destroy the answer before it is read."""
    if not end_writes(sock):
        return                              # TLS: closing says close_notify
    deadline = time.monotonic() + seconds
    while most > 0:
        try:
            data = sock.recv(BUFSIZE)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                gsocket.wait_read(sock.fileno(), left)
            except OSError:                 # (socket.timeout)
                return
            continue
        except OSError:
            return
        if not data:
            return
        most -= len(data)


def end_writes(sock) -> bool:
    """Half-close: tell sock's peer no more bytes come. False when the stream cannot
    (TLS has no half-close: its socket must be closed, which says close_notify)."""
    if type(sock) is not socket.socket and getattr(sock, "_sslobj", None) is not None:
        return False
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return True


def gone(error: OSError) -> bool:
    """An error that just means the peer went away (not worth more than a debug line)."""
    return isinstance(error, (ConnectionError, socket.timeout)) or error.errno in _GONE
