"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table that maps a
client's address to a server, the same on every box that has the same server list.

Each server has its own permutation of the table's slots, derived from its name (address
and port) alone; the servers take turns claiming their next free preferred slot, each in
proportion to its weight, until the table is full. A server that leaves frees only its
own slots, which the others' permutations fill: its clients move, nearly everyone else's
stay. Names and clients are hashed with blake2b, never Python's hash(), so two pens (two
processes, two boxes) build identical tables.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

SIZE = 65537                    # a prime, so every skip walks all the slots


def _hash(data: bytes, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "big")


def client_slot(key: bytes, size: int = SIZE) -> int:
    return _hash(key, b"client") % size


def build(servers: list[tuple[int, str, int]], size: int = SIZE) -> array:
    """The table: for each slot, the index of its server. servers: (index, name, weight)
    with weight > 0; an empty list gives an empty table."""
    if not servers:
        return array("i")
    heaviest = max(weight for _, _, weight in servers)
    turns = []                       # per server: [next slot, skip, credit, share, index]
    for index, name, weight in servers:
        key = name.encode()
        turns.append([_hash(key, b"offset") % size, _hash(key, b"skip") % (size - 1) + 1,
                      0.0, weight / heaviest, index])
    table = array("i", [-1]) * size
    left = size
    while True:
        for turn in turns:
            turn[2] += turn[3]
            while turn[2] >= 1.0:              # a heavier server claims more slots a round
                turn[2] -= 1.0
                slot, skip = turn[0], turn[1]
                while table[slot] >= 0:        # walk its permutation to a free slot
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = turn[4]
                slot += skip
                turn[0] = slot - size if slot >= size else slot
                left -= 1
                if left == 0:
                    return table


class Maglev:
    """The tables for the sets of servers that were up lately (a server that comes and
    goes flips between two sets: neither is built again)."""

    def __init__(self, size: int = SIZE, keep: int = 8) -> None:
        self.size, self.keep = size, keep
        self.tables: OrderedDict[tuple, array] = OrderedDict()

    def lookup(self, servers: list[tuple[int, str, int]], client: bytes) -> int | None:
        """The index of the server for client among servers (index, name, weight)."""
        key = tuple(servers)
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = build(servers, self.size)
            while len(self.tables) > self.keep:
                self.tables.popitem(last=False)
        else:
            self.tables.move_to_end(key)
        if not table:
            return None
        return table[client_slot(client, self.size)]
