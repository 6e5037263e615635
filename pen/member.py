"""A worker of a group (-O "workers N"), from the worker's side.

The parent (group.py) starts each worker as `python -m pen` with the group's command line
and PEN_WORKER naming what it inherits: its listening socket (its place in the steering
group), the shared board, and a channel to the parent. The worker serves as a single pen
does, on its own socket; the parent has the control port and the health checks. Over the
channel the parent sends commands (the same command language), asks for the worker's
connections and clients, and the worker answers; the channel closing means the parent is
gone, and the worker drains and exits. A heartbeat on the board says the worker's loop
turns.

Frames both ways: a 4-byte big-endian length, then JSON.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time

import gevent
from gevent import socket as gsocket

from . import board as shared
from . import commands, upgrade

log = logging.getLogger("pen")

ENV = "PEN_WORKER"
HEARTBEAT = 0.2               # seconds between a worker's heartbeats
MAX_FRAME = 64 << 20


class ChannelError(OSError):
    pass


def send_frame(sock, document) -> None:
    data = json.dumps(document).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def recv_frame(sock):
    """The next document, or None at EOF; ChannelError on a malformed frame."""
    head = _exactly(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack("!I", head)
    if size > MAX_FRAME:
        raise ChannelError(f"frame of {size} bytes")
    data = _exactly(sock, size)
    if data is None:
        raise ChannelError("frame cut short")
    return json.loads(data)


def _exactly(sock, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Member:
    """This process's place in its group: row (= steering index), the group's size, the
    inherited listening socket, the board and the channel to the parent."""

    def __init__(self, row: int, workers: int, listen, board_fd: int, channel) -> None:
        self.row, self.workers = row, workers
        self.listen = listen
        self.board = shared.Board.attach(board_fd, workers, row)
        self.channel = channel
        self.runtime = None

    def join(self, state) -> None:
        """Before serving: servers onto the board, the group's running configuration
        (what the control port changed since the command line) from the parent."""
        shared.share(state, self.board)
        self.board.set_header("pid", os.getpid())
        first = recv_frame(self.channel)
        if not first or first.get("op") != "configure":
            raise ChannelError("the parent sent no configuration")
        commands.run_lines(state, first["lines"], "(the worker group's configuration)")
        upgrade.restore_clients(state, first.get("clients", []))   # after an upgrade

    def start(self, runtime) -> None:
        """Serving: answer the parent, beat."""
        self.runtime = runtime
        self.channel = gsocket.socket(fileno=self.channel.detach())
        gevent.spawn(self.listen_to_parent)
        gevent.spawn(self.beat)

    def beat(self) -> None:
        """The heartbeat; and -x for the group: connections over this worker's limit
        (another needs its share back) are given back."""
        board, state, balancer = self.board, self.runtime.state, self.runtime.balancer
        while True:
            board.set_header("heartbeat", time.monotonic())
            board.set_header("accepted", state.accepted)
            over = len(state.connections) - state.connection_limit()
            if over > 0:
                balancer.shed(over)
            gevent.sleep(HEARTBEAT)

    def listen_to_parent(self) -> None:
        try:
            while True:
                request = recv_frame(self.channel)
                if request is None:
                    break
                send_frame(self.channel, self.handle(request))
        except (OSError, ValueError) as e:
            log.error("worker %d: the channel to the parent failed: %s", self.row, e)
        log.warning("worker %d: the parent is gone; draining", self.row)
        self.runtime.shutdown()

    def handle(self, request) -> dict:
        if not isinstance(request, dict):
            return {"error": "a request is a JSON object"}
        state, op = self.runtime.state, request.get("op")
        if op == "run":
            return {"answer": commands.answer(state, request["line"])}
        if op == "snapshot":
            self.runtime.refresh()
            return snapshot(state)
        if op == "retire":           # an upgrade: the new group serves; drain, then exit
            runtime = self.runtime
            runtime.grace, runtime.handed_off = state.upgrade_grace, True
            runtime.shutdown()
            return {"retiring": True}
        if op == "close":
            conn = state.connections.get(request["slot"])
            if conn is not None and conn.close:
                conn.close()
            return {"closed": conn is not None}
        return {"error": f"unknown request {op!r}"}


def snapshot(state) -> dict:
    """The worker's own tables, for the parent's answers about the whole group."""
    clients = [[c.slot, str(c.ip), c.server, c.last, c.connects, c.sx, c.rx]
               for c in state.clients]
    connections = [[c.id, _peer(c.client), c.server.index if c.server else None,
                    c.entry.slot if c.entry is not None else -1, c.started, c.sx, c.rx,
                    c.downfd, c.upfd] for c in list(state.connections.values())]
    return {"clients": clients, "connections": connections,
            "counters": dict(state.counters), "accepted": state.accepted,
            "last_slot": state.last_slot, "current": state.current}


def _peer(client):
    if isinstance(client, tuple):
        return [str(client[0]), client[1]]
    return client if client is None else str(client)


def member() -> Member | None:
    """This process's Member when a group's parent started it, else None."""
    spec = os.environ.pop(ENV, None)
    if spec is None:
        return None
    row, workers, listen_fd, board_fd, channel_fd = map(int, spec.split(","))
    listen = socket.socket(fileno=listen_fd)
    listen.setblocking(False)
    channel = socket.socket(fileno=channel_fd)
    channel.settimeout(30)
    return Member(row, workers, listen, board_fd, channel)
