"""The worker group's shared server state: one writer per slot, readers sum.

With `-O "workers N"` each worker process counts its own connections, bytes and failures
in its row of a shared memory board (a buffer of doubles), and the parent writes the health
checks' verdicts in its own row. A process only ever adds to its own row, so there are no
locks on the hot path; a reader sums the rows (connections, bytes) or takes the latest
(blacklisting: a failure one worker saw takes the server out for all). Row N is the
parent's; every row starts with its process's heartbeat.

share(state, board) turns a State into one whose servers keep their shared fields on the
board. With one worker none of this exists: the plain classes are the fast path.
"""

from __future__ import annotations

import dataclasses
import mmap
import os

from .health import Health
from .state import Connection, Server, State

CAPACITY = 1024               # server slots a group shares; the emergency and abuse follow
SUMMED = ("conn", "total", "sx", "rx", "failures", "dgrams_sx", "dgrams_rx")
FIELDS = SUMMED + ("blacklist_until", "down", "ramp_start")
HEADER = ("heartbeat", "pid", "accepted", "live")     # live: connections held now
SLOTS = CAPACITY + 2
ROW = len(HEADER) + SLOTS * len(FIELDS)
_AT = {name: i for i, name in enumerate(FIELDS)}
# A Server's fields that stay the process's own (its settings): share() carries them over.
# The board's fields start from the board; health is the group's (the parent's checks).
_OWN = tuple(f.name for f in dataclasses.fields(Server)
             if f.name not in (*FIELDS, "index", "endpoint", "health"))


def size(workers: int) -> int:
    """Bytes of the board of a group of workers and their parent."""
    return (workers + 1) * ROW * 8


def slot(index: int) -> int:
    """A server's slot: its index; the emergency (-1) and abuse (-2) servers after them."""
    if index < 0:
        return CAPACITY - 1 - index
    if index >= CAPACITY:
        raise ValueError(f"server number out of range: {index} (a worker group shares "
                         f"{CAPACITY} servers)")
    return index


class Board:
    """The shared buffer as one process sees it: `row` is the one it writes."""

    def __init__(self, buffer, workers: int, row: int) -> None:
        self.buffer = buffer
        self.cells = memoryview(buffer).cast("d")
        self.workers = workers
        self.row = row
        self.parent = row == workers

    @classmethod
    def create(cls, workers: int) -> tuple[Board, int]:
        """A new, zeroed board in shared memory for the parent; (board, its fd) — a worker
        maps it from the fd it inherits."""
        fd = os.memfd_create("pen-board", 0)
        os.ftruncate(fd, size(workers))
        return cls(mmap.mmap(fd, size(workers)), workers, workers), fd

    @classmethod
    def attach(cls, fd: int, workers: int, row: int) -> Board:
        board = cls(mmap.mmap(fd, size(workers)), workers, row)
        os.close(fd)
        return board

    def at(self, row: int, index: int, field: str = "conn") -> int:
        return row * ROW + len(HEADER) + slot(index) * len(FIELDS) + _AT[field]

    def total(self, at: int) -> float:
        """The sum over every row of the cell at offset `at` of row 0."""
        cells = self.cells
        return sum(cells[at + r * ROW] for r in range(self.workers + 1))

    def latest(self, at: int) -> float:
        cells = self.cells
        return max(cells[at + r * ROW] for r in range(self.workers + 1))

    def header(self, name: str, row: int | None = None) -> float:
        return self.cells[(self.row if row is None else row) * ROW + HEADER.index(name)]

    def set_header(self, name: str, value: float) -> None:
        self.cells[self.row * ROW + HEADER.index(name)] = value

    def retire(self, row: int) -> None:
        """A dead worker's row (the parent's call): its connections are gone; what it
        counted stays counted, moved into the parent's row; its blacklisting stays."""
        cells, conn = self.cells, _AT["conn"]
        for index in [*range(CAPACITY), -1, -2]:
            theirs, ours = self.at(row, index), self.at(self.workers, index)
            for field in SUMMED:
                if field != "conn":
                    cells[ours + _AT[field]] += cells[theirs + _AT[field]]
            for i in range(len(FIELDS)):
                if i != _AT["blacklist_until"]:
                    cells[theirs + i] = 0.0
            cells[theirs + conn] = 0.0
        cells[row * ROW + HEADER.index("heartbeat")] = 0.0
        cells[row * ROW + HEADER.index("live")] = 0.0

    def close(self) -> None:
        self.cells.release()
        self.buffer.close()


def share(state: State, board: Board) -> None:
    """Make state a worker group member's (or the parent's): its servers (those it has and
    those commands add later) keep their shared fields on the board."""
    server_class = _server_class(board)

    def new_server(index, endpoint=None):
        return server_class(index, endpoint)

    def adopt(old: Server | None) -> Server | None:
        if old is None:
            return None
        new = server_class(old.index, old.endpoint)
        for name in _OWN:
            setattr(new, name, getattr(old, name))
        return new

    state.__class__ = SharedState
    state.new_server = new_server
    state.servers = [adopt(s) for s in state.servers]
    state.emergency, state.abuse = adopt(state.emergency), adopt(state.abuse)
    state.board = board


class SharedConnection(Connection):
    """A connection whose server's byte counts are this process's row of the board."""

    def to_server(self, nbytes: int, datagrams: int = 0) -> None:
        self.sx += nbytes
        cells, at = self.server.board_cells, self.server.cell
        cells[at] += nbytes
        if datagrams:
            cells[at + _AT["dgrams_sx"] - _AT["sx"]] += datagrams
        self.entry.rx += nbytes

    def to_client(self, nbytes: int, datagrams: int = 0) -> None:
        self.rx += nbytes
        cells, at = self.server.board_cells, self.server.cell + _AT["rx"] - _AT["sx"]
        cells[at] += nbytes
        if datagrams:
            cells[at + _AT["dgrams_rx"] - _AT["rx"]] += datagrams
        self.entry.sx += nbytes


class SharedState(State):
    """The accounting of a State whose servers are on the board: add to this row only."""

    connection = SharedConnection

    def assign(self, conn, server) -> None:
        old = conn.server
        if old is not None:
            old.add("conn", -1)
        conn.server = server
        self.current = server.index
        server.add("conn", 1)
        server.add("total", 1)
        if server.index >= 0:
            conn.entry.server = server.index

    def open_connection(self, client):
        conn = super().open_connection(client)
        self.board.set_header("live", len(self.connections))
        return conn

    def close_connection(self, conn) -> None:
        if self.connections.pop(conn.id, None) is conn:
            self.board.set_header("live", len(self.connections))
            if conn.server is not None:
                conn.server.add("conn", -1)

    def elsewhere(self) -> int:
        """Connections the other workers hold now."""
        board = self.board
        return int(sum(board.header("live", row) for row in range(board.workers)
                       if row != board.row))

    def connection_limit(self) -> int:
        """-x for the group: what the others leave free, but never less than this worker's
        share (-x / N), so a flood steered to one worker cannot starve the others; a worker
        over the limit that leaves gives connections back (member.py: shed)."""
        share = -(-self.conn_max // self.board.workers)
        return max(self.conn_max - self.elsewhere(), share)

    def count_failure(self, server) -> None:
        server.add("failures", 1)


def _server_class(board: Board) -> type[Server]:
    """Server, with its shared fields on the board: reads see the whole group."""
    def summed(name):
        offset = _AT[name]

        def get(self):
            return int(board.total(self.cell0 + offset))

        def put(self, value):          # only ever a new server's zero
            board.cells[self.board_at + offset] = value
        return property(get, put)

    def blacklist_get(self):
        return board.latest(self.cell0 + _AT["blacklist_until"])

    def blacklist_put(self, value):
        """This process's word; the parent's 0 (a check passed) clears every row's."""
        rows = range(board.workers + 1) if board.parent and not value else [board.row]
        for row in rows:
            board.cells[board.at(row, self.index, "blacklist_until")] = value

    def parents(name):
        def get(self):
            return board.cells[board.at(board.workers, self.index, name)]

        def put(self, value):
            if board.parent:
                board.cells[board.at(board.workers, self.index, name)] = value
        return property(get, put)

    class SharedHealth(Health):
        """up is the parent's verdict (it runs the checks); 0 on the board is up."""

        @property
        def up(self):
            return board.cells[self.at] == 0.0

        @up.setter
        def up(self, value):
            if board.parent:
                board.cells[self.at] = 0.0 if value else 1.0

    def init(self, index, endpoint=None):
        self.board_at = board.at(board.row, index)
        self.cell0 = board.at(0, index)
        self.board_cells = board.cells
        self.cell = self.board_at + _AT["sx"]
        Server.__init__(self, index, endpoint)
        health = SharedHealth.__new__(SharedHealth)
        health.at = board.at(board.workers, index, "down")
        Health.__init__(health)
        self.health = health

    def add(self, name, n):
        board.cells[self.board_at + _AT[name]] += n

    namespace = {name: summed(name) for name in SUMMED}
    namespace.update(blacklist_until=property(blacklist_get, blacklist_put),
                     ramp_start=parents("ramp_start"), __init__=init, add=add)
    return type("SharedServer", (Server,), namespace)
