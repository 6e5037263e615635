"""Who gives way when a bounded set of clients is full (pure: no sockets, no clock).

A slow client (slowloris) or a silent one (a control-port flood) costs an attacker nothing
but a socket, so a limit alone lets a few addresses hold every slot while newcomers wait
forever. When the set is full, a newcomer may take the place of the longest-idle client of
the address that holds the most, so an address can never crowd out another that holds
fewer, and the limit itself is never exceeded.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, NamedTuple


class Held(NamedTuple):
    """One client in the set: what to close (key), its address, and when it last did
    something (any clock, the smaller the longer idle)."""

    key: Any
    ip: Any
    since: float


def giving_way(counts: Mapping[Any, int], newcomer_ip, lead: int = 2) -> set:
    """The addresses whose longest-idle client may give way to a newcomer from newcomer_ip
    (counts: clients held per address): those holding the most, provided they hold at
    least `lead` more than the newcomer's does now; empty if none. With lead 2 the swap
    never leaves the victim's address with fewer than the newcomer's (no ping-pong between
    two addresses); lead 0 lets an address's newcomer replace its own longest-idle client."""
    if not counts:
        return set()
    top = max(counts.values())
    if top < counts.get(newcomer_ip, 0) + lead:
        return set()
    return {ip for ip, n in counts.items() if n == top}


def longest_idle(held: Iterable[Held], addresses: set) -> Held | None:
    """The longest-idle client of these addresses."""
    return min((h for h in held if h.ip in addresses), key=lambda h: h.since, default=None)


def victim(held: Iterable[Held], newcomer_ip, lead: int = 2) -> Held | None:
    """The client that gives way to a newcomer from newcomer_ip, or None (the newcomer
    waits or goes): giving_way's longest-idle client."""
    held = list(held)
    counts = Counter(h.ip for h in held)
    return longest_idle(held, giving_way(counts, newcomer_ip, lead))
