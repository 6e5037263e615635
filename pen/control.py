"""The control port (-C): pen's protocol, one command per connection.

The client sends one line (words joined by spaces, then a newline, or EOF), pen answers
with text and closes. Every step has a bound: the line length (commands.MAX_LINE), the time
a client gets to send it and to take the answer, and the number of clients served at once.
The command itself is the pure core's: commands.answer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from . import commands
from .addr import Endpoint, client_ip
from .errors import UsageError
from .sockets import bind
from .state import State

log = logging.getLogger("pen")

TIMEOUT = 5.0           # seconds a client gets to send its command, and to read the answer
CONCURRENCY = 64        # clients served at once; more wait in the listen backlog


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
    """gevent's StreamServer, a pool of CONCURRENCY greenlets, one command per connection."""

    def __init__(self, sock, state: State, timeout: float = TIMEOUT,
                 concurrency: int = CONCURRENCY) -> None:
        # an explicit Pool: gevent would import it lazily, after -u has dropped privileges
        super().__init__(sock, self.serve_client, spawn=Pool(concurrency))
        self.state = state
        self.timeout = timeout

    def serve_client(self, sock, address) -> None:
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
                self.send(sock, f"{e}\n")
                return
            except gevent.Timeout:
                self.state.count("control_refused")
                self.send(sock, f"timed out after {self.timeout:g} s waiting for a command\n")
                return
            log.debug("control: %s: %s", ip or "unix", line)
            try:
                reply = commands.answer(self.state, line)
            except Exception:                       # a bug, not the client's fault
                log.exception("control: %r failed", line)
                reply = "internal error; see pen's log\n"
            self.send(sock, reply)
        except OSError as e:
            log.debug("control: %s: %s", address, e)
        finally:
            sock.close()

    def receive(self, sock) -> bytes:
        """Bytes up to the first newline, EOF, or the end of what the client has sent so far
        (pen answers what one read gets, so a line without a newline is answered at once);
        at most MAX_LINE + 1 and TIMEOUT seconds."""
        data = b""
        with gevent.Timeout(self.timeout):
            while b"\n" not in data and len(data) <= commands.MAX_LINE:
                if data and not select.select([sock], [], [], 0)[0]:
                    break                              # nothing more sent yet
                chunk = sock.recv(commands.MAX_LINE + 1 - len(data) + 1)
                if not chunk:
                    break
                data += chunk
        return data

    def send(self, sock, text: str) -> None:
        try:
            with gevent.Timeout(self.timeout):
                sock.sendall(on_the_wire(text))
                sock.shutdown(socket.SHUT_WR)
        except (OSError, gevent.Timeout):
            pass
