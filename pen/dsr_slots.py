"""The DSR slot table: 256 slots shared out among the live servers in proportion to weight.

A flow's hash picks a slot, the slot names a server. When the set of live servers or their
weights change, `rebalance` moves as few slots as possible: a slot stays with its server
while that server is up and has not more than its new share, so the flows of the servers
still up keep going to the same place. (pen fills its table once and never again.)
"""

from __future__ import annotations

SLOTS = 256


def shares(weights: dict[int, int], slots: int = SLOTS) -> dict[int, int]:
    """Slots per server, proportional to weight, summing to `slots` (largest remainder).

    Every server with a positive weight gets at least one slot while there are enough.
    """
    live = {index: w for index, w in weights.items() if w > 0}
    if not live:
        return {}
    total = sum(live.values())
    exact = {index: slots * w / total for index, w in live.items()}
    share = {index: int(x) for index, x in exact.items()}
    spare = slots - sum(share.values())
    for index in sorted(live, key=lambda i: (share[i] - exact[i], i))[:spare]:
        share[index] += 1
    for index in sorted(live):                     # a tiny weight still gets its one slot
        if share[index] == 0:
            donor = max(share, key=lambda i: (share[i], -i))
            if share[donor] > 1:
                share[donor] -= 1
                share[index] = 1
    return share


def rebalance(table: list[int | None], weights: dict[int, int]) -> list[int | None]:
    """A new table for these live servers (index -> weight), changing as few slots as possible.

    Slots whose server is still live and within its share keep it; the rest are handed round
    (interleaved, so consecutive slots alternate between servers) to those short of theirs.
    """
    share = shares(weights, len(table))
    kept: dict[int, int] = dict.fromkeys(share, 0)
    new: list[int | None] = [None] * len(table)
    for slot, owner in enumerate(table):
        if owner in share and kept[owner] < share[owner]:
            new[slot] = owner
            kept[owner] += 1
    wanting = [index for index in sorted(share) if kept[index] < share[index]]
    turn = 0
    for slot, owner in enumerate(new):
        if owner is not None or not wanting:
            continue
        turn %= len(wanting)
        index = wanting[turn]
        new[slot] = index
        kept[index] += 1
        if kept[index] == share[index]:
            wanting.pop(turn)
        else:
            turn += 1
    return new


def moved(old: list[int | None], new: list[int | None]) -> int:
    return sum(a != b for a, b in zip(old, new, strict=True))
