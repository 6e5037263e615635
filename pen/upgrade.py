"""Upgrades and restarts that drop nothing (SIGUSR2): the running pen starts a new copy of
itself (the same command line; the program found anew on disk), hands it every listening
socket and its client table over a UNIX socket pair, and once the new copy serves, stops
accepting and lets its own connections finish (`upgrade_grace`). A new copy that fails to
start says why over the same pair; the old one logs it and goes on serving.

The wire, old -> new: one byte carrying the sockets (SCM_RIGHTS), then a length line and a
JSON document naming them and holding the client table and blacklist. New -> old: a line,
`ready` or `error: WHY`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
import time

import gevent
from gevent import socket as gsocket
from gevent import subprocess as gsubprocess

from .state import State

log = logging.getLogger("pen")

ENV = "PEN_UPGRADE_FD"
MAX_SOCKETS = 16
TIMEOUT = 60.0               # seconds a new copy gets to serve (imports, -F, TLS files...)


class UpgradeError(RuntimeError):
    pass


# --- the old process --------------------------------------------------------------------

def snapshot(state: State, names: list[str]) -> bytes:
    """What the new copy needs besides the sockets: their names, the client table (least
    recently used first) and the servers' blacklisting, as JSON."""
    clients = [[str(c.ip), c.server, c.last, c.connects, c.sx, c.rx]
               for c in state.clients if c.ip is not None]
    blacklist = [[s.index, str(s.endpoint), s.blacklist_until]
                 for s in state.servers if s.blacklist_until > time.time()]
    return json.dumps({"sockets": names, "clients": clients, "blacklist": blacklist}).encode()


def start_successor(argv: list[str], cwd: str, sockets: dict[str, socket.socket],
                    state: State):
    """Start the new copy and hand it the sockets and the state; returns (process, the
    old side of the pair) for wait_ready()."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    names = list(sockets)
    try:
        env = dict(os.environ, **{ENV: str(theirs.fileno())})
        # gevent's Popen: the hub reaps a copy that fails
        process = gsubprocess.Popen([sys.executable, "-m", "pen", *argv], cwd=cwd, env=env,
                                    pass_fds=[theirs.fileno()], stdin=gsubprocess.DEVNULL)
    finally:
        theirs.close()
    try:
        socket.send_fds(ours, [b"S"], [sockets[n].fileno() for n in names])
        state.process.refresh()             # the clients' bytes until now
        document = snapshot(state, names)
        ours.sendall(b"%d\n" % len(document) + document)
    except OSError as e:
        ours.close()
        raise UpgradeError(f"handing over to pid {process.pid}: {e.strerror}") from None
    return process, ours


def wait_ready(process, pair: socket.socket, timeout: float = TIMEOUT) -> None:
    """Return once the new copy serves; UpgradeError with its reason otherwise."""
    sock = gsocket.socket(fileno=pair.detach())
    answer = b""
    try:
        with gevent.Timeout(timeout, UpgradeError(f"pid {process.pid} did not serve within "
                                                  f"{timeout:g}s")):
            while b"\n" not in answer and len(answer) < 4096:
                try:
                    chunk = sock.recv(4096)
                except OSError:            # it exited with our bytes unread: a reset
                    chunk = b""
                if not chunk:
                    break
                answer += chunk
    finally:
        sock.close()
    line = answer.split(b"\n", 1)[0].decode(errors="replace")
    if line == "ready":
        return
    if process.poll() is None and not line:
        process.kill()
    raise UpgradeError(line.removeprefix("error: ") if line else
                       f"pid {process.pid} exited ({process.wait()}) before serving")


def hand_over(argv: list[str], cwd: str, sockets: dict[str, socket.socket],
              state: State) -> int | None:
    """SIGUSR2's first half: start the new copy, hand it the sockets and the state, wait
    until it serves; its pid, or None (logged: this copy serves on) if it did not."""
    try:
        process, pair = start_successor(argv, cwd, sockets, state)
        log.warning("SIGUSR2: started pid %d with %d sockets and %d clients", process.pid,
                    len(sockets), len(state.clients))
        wait_ready(process, pair)
    except UpgradeError as e:
        log.error("SIGUSR2: the new copy did not take over: %s; pid %d serves on", e,
                  os.getpid())
        return None
    return process.pid


# --- the new process --------------------------------------------------------------------

class Inheritance:
    """What a new copy received: sockets by name, the old client table and blacklist."""

    def __init__(self, pair: socket.socket, sockets: dict[str, socket.socket],
                 document: dict) -> None:
        self.pair = pair
        self.sockets = sockets
        self.document = document

    def take(self, name: str) -> socket.socket | None:
        sock = self.sockets.pop(name, None)
        if sock is not None:
            sock.setblocking(False)
        return sock

    def take_listeners(self, listen, workers: int) -> list[socket.socket] | None:
        """The listening sockets for `workers` processes (one: [the socket]); None if the
        old copy handed none over; UpgradeError if it ran another number of workers (a
        SO_REUSEPORT group cannot be grown or shrunk in place)."""
        names = [group_name(listen, row) for row in range(workers)] if workers > 1 \
            else [f"listen {listen}"]
        had = [name for name in self.sockets if name == f"listen {listen}"
               or name.startswith(f"listen {listen} #")]
        if not had:
            return None
        if sorted(had) != sorted(names):
            raise UpgradeError(f"upgrade: the running pen serves with {len(had)} worker(s) "
                               f"and this one wants {workers}; restart pen to change that")
        return [self.take(name) for name in names]

    def restore(self, state: State) -> None:
        """The old client table (a client keeps its server) and blacklist, into state."""
        restore_clients(state, self.document.get("clients", []))
        for index, address, until in self.document.get("blacklist", []):
            if index < len(state.servers) and str(state.servers[index].endpoint) == address:
                state.servers[index].blacklist_until = until
        for sock in self.sockets.values():            # addresses the new config dropped
            sock.close()
        self.sockets.clear()

    def ready(self) -> None:
        self._say("ready")

    def failed(self, reason: str) -> None:
        self._say(f"error: {reason}")

    def _say(self, line: str) -> None:
        if self.pair is None:
            return
        try:
            self.pair.sendall(line.encode()[:4000] + b"\n")
        except OSError:
            pass
        self.pair.close()
        self.pair = None


def group_name(listen, row: int) -> str:
    """The name a worker group's listening socket is handed over by."""
    return f"listen {listen} #{row}"


def restore_clients(state: State, clients: list) -> None:
    """Client table rows [ip, server, last, connects, sx, rx] (as snapshot() writes them)
    into state's table, least recently used first."""
    for ip, server, last, connects, sx, rx in clients:
        try:
            key = ipaddress.ip_address(ip)
        except ValueError:
            continue
        entry = state.clients.touch(key, last)
        entry.server, entry.connects, entry.sx, entry.rx = server, connects, sx, rx


def inherit() -> Inheritance | None:
    """In a new copy started by an upgrade: receive what the old one hands over (blocking:
    this runs at start-up, before the hub). None when this is not an upgrade."""
    fd = os.environ.pop(ENV, None)
    if fd is None:
        return None
    pair = socket.socket(fileno=int(fd))
    pair.settimeout(TIMEOUT)
    try:
        _, fds, _, _ = socket.recv_fds(pair, 1, MAX_SOCKETS)
        length = b""
        while not length.endswith(b"\n"):
            byte = pair.recv(1)
            if not byte or len(length) > 20:
                raise UpgradeError("the old process sent no state")
            length += byte
        size, data = int(length), b""
        while len(data) < size:
            chunk = pair.recv(min(1 << 20, size - len(data)))
            if not chunk:
                raise UpgradeError("the old process's state ended early")
            data += chunk
        document = json.loads(data)
    except (OSError, ValueError) as e:
        pair.close()
        raise UpgradeError(f"upgrade: receiving the sockets: {e}") from None
    names = document.get("sockets", [])
    if len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        pair.close()
        raise UpgradeError(f"upgrade: {len(fds)} sockets for {len(names)} names")
    return Inheritance(pair, {name: socket.socket(fileno=fd)
                              for name, fd in zip(names, fds, strict=True)}, document)
