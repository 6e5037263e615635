"""The control port (-C): pen's protocol, one command per connection.

The client sends one line (words joined by spaces, then a newline, or EOF), pen answers
with text and closes. Every step has a bound: the line length (commands.MAX_LINE), the time
a client gets to send it and to take the answer, and the number of clients served at once.
When every slot is taken, a client that has sent nothing for GRACE seconds gives way to a
newcomer (the longest-waiting one of the address holding the most: evict.victim), so a flood
of silent or garbage connections cannot keep the operator in the listen backlog.
The command itself is the pure core's: commands.answer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import time

import gevent
from gevent.server import StreamServer
from greenlet import getcurrent

from . import commands, evict
from .addr import Endpoint, client_ip
from .errors import UsageError
from .sockets import bind
from .state import State

log = logging.getLogger("pen")

RECEIVE = 1.0           # seconds a client gets to send its command (it fits in one packet)
TIMEOUT = 5.0           # seconds a client gets to take the answer
CONCURRENCY = 128       # clients served at once; more wait in the listen backlog, unless...
GRACE = 0.1             # ...one of them has sent nothing for this long: it gives way


class RequestError(ValueError):
    """A control client's bad bytes: answered with one line, then closed."""


def parse_request(data: bytes) -> str:
    """The command line in what a client sent (up to its first newline)."""
    line, newline, _ = data.partition(b"\n")
    if len(line) > commands.MAX_LINE:
        raise RequestError(f"command longer than {commands.MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("command is not text") from None
    text = text.rstrip("\r")
    if any(ord(ch) < 32 and ch != "\t" for ch in text) or "\x7f" in text:
        raise RequestError("command is not text")
    return text


def on_the_wire(text: str) -> bytes:
    """An answer as pen sends it: every non-empty answer ends with a newline, except the
    few pen sends without one (commands.Verbatim)."""
    return commands.terminated(text).encode("utf-8", "replace")


def exposed(endpoint: Endpoint) -> bool:
    """Can hosts other than this one reach a control listener bound to endpoint?"""
    if endpoint.is_unix or endpoint.host == "localhost":
        return False
    if not endpoint.host:
        return True                                # a bare port: all interfaces, as in pen
    try:
        return not ipaddress.ip_address(endpoint.host.split("%", 1)[0]).is_loopback
    except ValueError:
        return True                                # a name: assume the worst


def warn_if_exposed(state: State, endpoint: Endpoint) -> None:
    n = state.control_acl
    if exposed(endpoint) and not (0 <= n < len(state.acls.lists) and state.acls.lists[n]):
        log.warning("control port %s is reachable beyond loopback and control_acl %d is empty: "
                    "anyone who can connect controls pen (set control_acl, or -C 127.0.0.1:PORT)",
                    endpoint, state.control_acl)


def open_socket(endpoint: Endpoint):
    """Bind the control listener (-C); a UNIX socket is created owner-only (0600)."""
    try:
        return _bind(endpoint)
    except UsageError as e:
        raise UsageError(f"-C {e}") from None


def _bind(endpoint: Endpoint):
    if not endpoint.is_unix:
        return bind(endpoint)
    old = os.umask(0o177)
    try:
        sock = bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(endpoint.path, 0o600)
    return sock


class ControlServer(StreamServer):
    """gevent's StreamServer, a greenlet per connection, one command per connection, at
    most `concurrency` at once; a full server makes room by closing a silent client."""

    def __init__(self, sock, state: State, timeout: float = RECEIVE,
                 concurrency: int = CONCURRENCY, grace: float = GRACE, answer=None) -> None:
        super().__init__(sock, self.serve_client, spawn=self.admit)
        self.state = state
        # a command line -> its answer (a worker group's parent answers for the group)
        self.answer = answer or (lambda line: commands.answer(state, line))
        self.timeout = timeout
        self.concurrency, self.grace = concurrency, grace
        self.clients: dict = {}   # greenlet -> (ip, accepted at (monotonic) or None: answering)
        self.retry = None               # the timer that resumes accepting once one is silent

    def silent_one(self) -> evict.Held | None:
        """The client to close for a newcomer: silent for GRACE, from the address with the
        most clients waiting for their command (any newcomer's address qualifies)."""
        limit = time.monotonic() - self.grace
        silent = [evict.Held(g, ip, since) for g, (ip, since) in self.clients.items()
                  if since is not None and since <= limit]
        return evict.victim(silent, None, lead=0)

    def full(self) -> bool:
        """gevent asks before each accept; True pauses accepting (a retry is scheduled)."""
        if len(self.clients) < self.concurrency or self.silent_one() is not None:
            return False
        waiting = [since for _, since in self.clients.values() if since is not None]
        if waiting and self.retry is None:
            self.retry = self.loop.timer(max(0.0, min(waiting) + self.grace - time.monotonic()))
            self.retry.start(self.resume)
        return True

    def resume(self) -> None:
        if self.retry is not None:
            self.retry.close()
            self.retry = None
        if self.started:
            self.start_accepting()

    def close(self) -> None:
        super().close()
        if self.retry is not None:
            self.retry.close()
            self.retry = None

    def admit(self, run, handle, close, args) -> None:
        """gevent's spawn: start a client's greenlet, first closing a silent one if full."""
        if len(self.clients) >= self.concurrency:
            gone = self.silent_one()
            if gone is not None:
                del self.clients[gone.key]
                self.state.count("control_evicted")
                gone.key.kill(block=False)          # its handler's finally closes the socket
        greenlet = gevent.spawn(run, handle, close, args)
        self.clients[greenlet] = (client_ip(args[1]), time.monotonic())

    def serve_client(self, sock, address) -> None:
        me = getcurrent()
        try:
            ip = client_ip(address)
            if not self.state.acls.permits(self.state.control_acl, ip):
                self.state.count("control_refused")
                log.info("control: %s denied by control_acl %d", ip, self.state.control_acl)
                return
            try:
                line = parse_request(self.receive(sock))
            except RequestError as e:
                self.state.count("control_refused")
                self.answering(me)
                self.send(sock, f"{e}\n")
                return
            except gevent.Timeout:
                self.state.count("control_refused")
                self.answering(me)
                self.send(sock, f"timed out after {self.timeout:g} s waiting for a command\n")
                return
            self.answering(me)
            log.debug("control: %s: %s", ip or "unix", line)
            try:
                reply = self.answer(line)
            except Exception:                       # a bug, not the client's fault
                log.exception("control: %r failed", line)
                reply = "internal error; see pen's log\n"
            self.send(sock, reply)
        except OSError as e:
            log.debug("control: %s: %s", address, e)
        finally:
            sock.close()
            self.clients.pop(me, None)
            self.resume()                   # a slot is free: accept again if paused

    def answering(self, greenlet) -> None:
        """The client has sent its command: no longer one that may be closed for a newcomer."""
        if greenlet in self.clients:
            self.clients[greenlet] = (self.clients[greenlet][0], None)

    def receive(self, sock) -> bytes:
        """Bytes up to the first newline, EOF, or the end of what the client has sent so far
        (pen answers what one read gets, so a line without a newline is answered at once);
        at most MAX_LINE + 1 and RECEIVE seconds."""
        data = b""
        with gevent.Timeout(self.timeout):
            while b"\n" not in data and len(data) <= commands.MAX_LINE:
                chunk = sock.recv(commands.MAX_LINE + 1 - len(data) + 1)
                if not chunk:
                    break
                data += chunk
                if data and not select.select([sock], [], [], 0)[0]:
                    break                              # nothing more sent yet
        return data

    def send(self, sock, text: str) -> None:
        try:
            with gevent.Timeout(TIMEOUT):
                sock.sendall(on_the_wire(text))
                sock.shutdown(socket.SHUT_WR)
        except (OSError, gevent.Timeout):
            pass
