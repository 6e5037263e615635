"""Who gives way when a bounded set of clients is full (pure: no sockets, no clock).

A slow client (slowloris) or a silent one (a control-port flood) costs an attacker nothing
but a socket, so a limit alone lets a few addresses hold every slot while newcomers wait
forever. When the set is full, a newcomer may take the place of the longest-idle client of
the address that holds the most, so an address can never crowd out another that holds
fewer, and the limit itself is never exceeded.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple


class Held(NamedTuple):
    """One client in the set: what to close (key), its address, and when it last did
    something (any clock, the smaller the longer idle)."""

    key: Any
    ip: Any
    since: float


def victim(held: Iterable[Held], newcomer_ip, lead: int = 2) -> Held | None:
    """The client that gives way to a newcomer from newcomer_ip, or None (the newcomer
    waits or goes): the longest-idle client of the address holding the most, provided that
    address holds at least `lead` more than the newcomer's does now. With lead 2 the swap
    never leaves the victim's address with fewer than the newcomer's (no ping-pong between
    two addresses); lead 0 lets an address's newcomer replace its own longest-idle client."""
    counts: dict[Any, int] = {}
    oldest: dict[Any, Held] = {}
    for h in held:
        counts[h.ip] = counts.get(h.ip, 0) + 1
        if h.ip not in oldest or h.since < oldest[h.ip].since:
            oldest[h.ip] = h
    if not counts:
        return None
    top = max(counts.values())
    if top < counts.get(newcomer_ip, 0) + lead:
        return None
    return min((oldest[ip] for ip, n in counts.items() if n == top), key=lambda h: h.since)
