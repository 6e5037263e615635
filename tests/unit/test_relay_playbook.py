"""The relay's edge cases without a socket or a hub, in the manner of mitmproxy's layer
playbooks: script what the peers do (bytes, EOF, a full send buffer, an error), fire the
loop's watchers as the kernel would, and check what the relay did in return.

The socket tests in tests/integration stay; these pin down each decision on its own.
"""

from __future__ import annotations

from collections import deque

import pytest

from pen.relay import LOOKS, Relay

READ, WRITE = 1, 2
EOF_ = object()


class Watcher:
    def __init__(self, fd, events) -> None:
        self.fd, self.events, self.active, self.callback = fd, events, False, None

    def start(self, callback, *args) -> None:
        self.active, self.callback, self.args = True, callback, args

    def stop(self) -> None:
        self.active = False


class Loop:
    """What Relay asks of gevent's loop: io and timer watchers, fired by the test."""

    def __init__(self) -> None:
        self.watchers: list[Watcher] = []

    def io(self, fd, events) -> Watcher:
        watcher = Watcher(fd, events)
        self.watchers.append(watcher)
        return watcher

    def timer(self, seconds) -> Watcher:
        watcher = self.io(None, 0)
        watcher.seconds = seconds
        return watcher

    def active(self, fd, events) -> bool:
        return any(w.active for w in self.watchers if (w.fd, w.events) == (fd, events))

    def fire(self, fd, events) -> None:
        """fd became readable/writable: run the active watcher's callback, as the loop would."""
        for watcher in [w for w in self.watchers if (w.fd, w.events) == (fd, events)]:
            if watcher.active:
                watcher.callback(*watcher.args)

    def readable(self, stream: "Stream") -> None:
        """Level-triggered, as libev is: the fd stays readable while the peer's bytes (or
        its EOF) wait, so the watcher fires again until they are taken or it stops."""
        for _ in range(100):
            if not (stream.incoming and self.active(stream.fd, READ)):
                return
            self.fire(stream.fd, READ)

    def fire_timers(self) -> None:
        for watcher in [w for w in self.watchers if w.fd is None and w.active]:
            watcher.stop()
            watcher.callback(*watcher.args)


class Stream:
    """A non-blocking stream: recv takes what the peer sent, send takes up to `room` bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.incoming: deque = deque()
        self.sent = bytearray()
        self.room: int | None = None          # None: the send buffer never fills
        self.half_closed = False

    def fileno(self) -> int:
        return self.fd

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        item = self.incoming.popleft()
        if item is EOF_:
            return b""
        if isinstance(item, Exception):
            raise item
        if len(item) > size:
            self.incoming.appendleft(item[size:])
        return item[:size]

    def send(self, data) -> int:
        if self.room == 0:
            raise BlockingIOError
        take = len(data) if self.room is None else min(len(data), self.room)
        self.sent += bytes(data[:take])
        if self.room is not None:
            self.room -= take
        return take

    def shutdown(self, how) -> None:
        self.half_closed = True


class Held:
    """A transform that keeps everything until flush (as -H keeps an unfinished head)."""

    def __init__(self) -> None:
        self.kept = b""

    def feed(self, data: bytes) -> bytes:
        self.kept += data
        return b""

    def flush(self) -> bytes:
        kept, self.kept = self.kept, b""
        return kept


CLIENT, SERVER = 10, 20


def playbook(**options):
    loop, client, server = Loop(), Stream(CLIENT), Stream(SERVER)
    counted = {"to_server": 0, "to_client": 0}

    def counter(key):
        def count(n):
            counted[key] += n
        return count

    relay = Relay(client, server, options.pop("idle", 0), counter("to_server"),
                  counter("to_client"), loop=loop, **options)
    relay.start()
    return relay, loop, client, server, counted


def test_bytes_move_both_ways_and_are_counted_when_settled():
    relay, loop, client, server, counted = playbook()
    client.incoming.append(b"GET / HTTP/1.0\r\n\r\n")
    loop.readable(client)
    server.incoming.append(b"HTTP/1.0 200 OK\r\n\r\n")
    loop.readable(server)
    assert bytes(server.sent) == b"GET / HTTP/1.0\r\n\r\n"
    assert bytes(client.sent) == b"HTTP/1.0 200 OK\r\n\r\n"
    assert counted == {"to_server": 0, "to_client": 0}     # no call per chunk
    relay.settle()
    assert counted == {"to_server": 18, "to_client": 19}
    relay.settle()                                        # counted once
    assert counted == {"to_server": 18, "to_client": 19}
    client.incoming.append(b"more")
    loop.readable(client)
    relay.close()                                         # the end counts the rest
    assert counted == {"to_server": 22, "to_client": 19}


def test_client_half_close_is_passed_on_and_the_server_may_still_answer():
    relay, loop, client, server, _ = playbook()
    client.incoming.extend([b"question", EOF_])
    loop.readable(client)
    assert server.half_closed and not relay.closed
    assert not loop.active(CLIENT, READ)              # nothing more to read from the client
    server.incoming.extend([b"answer", EOF_])
    loop.readable(server)
    assert bytes(client.sent) == b"answer"
    assert relay.closed
    assert not client.half_closed     # the last direction closes: closing sends the FIN


def test_server_half_close_is_passed_on_and_the_client_may_still_send():
    relay, loop, client, server, _ = playbook()
    server.incoming.extend([b"banner", EOF_])
    loop.readable(server)
    assert client.half_closed and not relay.closed
    client.incoming.extend([b"late words", EOF_])
    loop.readable(client)
    assert bytes(server.sent) == b"late words" and relay.closed


@pytest.mark.parametrize("fastclose, closes_on_client_eof, closes_on_server_eof", [
    ("off", False, False), ("down", True, False), ("up", False, True), ("both", True, True)])
def test_fastclose_ends_the_relay_at_that_sides_eof(fastclose, closes_on_client_eof,
                                                     closes_on_server_eof):
    relay, loop, client, server, _ = playbook(fastclose=fastclose)
    client.incoming.append(EOF_)
    loop.readable(client)
    assert relay.closed == closes_on_client_eof
    assert server.half_closed == (not closes_on_client_eof)
    relay, loop, client, server, _ = playbook(fastclose=fastclose)
    server.incoming.append(EOF_)
    loop.readable(server)
    assert relay.closed == closes_on_server_eof


def timer_seconds(loop) -> float:
    return next(w.seconds for w in loop.watchers if w.fd is None and w.active)


def test_idle_timeout_closes_a_quiet_relay_and_spares_a_busy_one():
    relay, loop, client, server, _ = playbook(idle=5)
    assert timer_seconds(loop) <= 5 / LOOKS     # it looks often enough to be late by little
    loop.fire_timers()
    assert not relay.closed
    relay.last -= 10                           # ten seconds since a look saw bytes move...
    client.incoming.append(b"busy")
    loop.readable(client)                      # ... but some moved since that look
    loop.fire_timers()
    assert not relay.closed
    assert timer_seconds(loop) <= 5 / LOOKS
    relay.settle()                             # counting bytes does not move any
    relay.last -= 10
    loop.fire_timers()
    assert relay.closed


def test_backpressure_stops_reading_until_the_destination_takes_the_rest():
    relay, loop, client, server, _ = playbook()
    server.room = 3
    client.incoming.append(b"hello world")
    loop.readable(client)
    assert bytes(server.sent) == b"hel"
    assert not loop.active(CLIENT, READ) and loop.active(SERVER, WRITE)
    client.incoming.append(b"!")               # not read while the server is full
    loop.readable(client)
    assert bytes(server.sent) == b"hel"
    server.room = None
    loop.fire(SERVER, WRITE)
    assert bytes(server.sent) == b"hello world"
    assert loop.active(CLIENT, READ) and not loop.active(SERVER, WRITE)
    loop.readable(client)
    assert bytes(server.sent) == b"hello world!"


def test_a_transform_that_holds_bytes_gives_them_up_at_eof_before_the_half_close():
    relay, loop, client, server, _ = playbook(transform=Held())
    client.incoming.extend([b"unfinished ", b"head", EOF_])
    loop.readable(client)
    assert bytes(server.sent) == b"unfinished head" and server.half_closed


def test_held_bytes_that_meet_backpressure_at_eof_are_written_before_the_half_close():
    relay, loop, client, server, _ = playbook(transform=Held())
    server.room = 4
    client.incoming.extend([b"held bytes", EOF_])
    loop.readable(client)
    assert bytes(server.sent) == b"held" and not server.half_closed
    server.room = None
    loop.fire(SERVER, WRITE)
    assert bytes(server.sent) == b"held bytes" and server.half_closed and not relay.closed


def test_a_reset_ends_the_relay():
    relay, loop, client, server, _ = playbook()
    client.incoming.append(ConnectionResetError(104, "Connection reset by peer"))
    loop.readable(client)
    assert relay.closed
    assert not loop.active(SERVER, READ)       # both directions stopped
