"""UDP sessions as data: the bounded table keyed by client address, and the sweep that
decides which sessions have gone idle and which have waited -t for a silent server
(udp.py passes their datagram on; silence never blacklists: any client can cause it).

A session here is anything with `last` (when a datagram last moved either way),
`pending_since` (when the oldest datagram the server has not answered was sent; 0 = none),
both on the monotonic clock, `unanswered` (datagrams sent since the server's last answer)
and `answered` (whether the server has answered this session at all). udp.py does the I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

UDP_IDLE = 30.0       # seconds a session lives without traffic when idle_timeout is 0


def idle_limit(idle_timeout: float) -> float:
    """pen's idle_timeout 0 means "never" for TCP; a UDP session must end some time."""
    return idle_timeout if idle_timeout > 0 else UDP_IDLE


class SessionTable:
    """Sessions by client (ip, port), least recently used first.

    `add` never lets the table grow past its limit: the least recently used sessions are
    handed back to be closed, so a flood of (spoofed) new sources recycles slots instead of
    exhausting memory or file descriptors."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[Any, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key) -> bool:
        return key in self._sessions

    def get(self, key):
        """The client's session, made most recently used; None if it has none."""
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def add(self, key, session, limit: int) -> list:
        """Insert a new session; returns the sessions evicted to stay within limit (>= 1)."""
        evicted = []
        old = self._sessions.pop(key, None)
        if old is not None:
            evicted.append(old)
        while len(self._sessions) >= max(limit, 1):
            evicted.append(self._sessions.popitem(last=False)[1])
        self._sessions[key] = session
        return evicted

    def remove(self, key, session) -> None:
        """Forget key if it still maps to this session (a newer one may have taken the key)."""
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def sessions(self) -> list:
        return list(self._sessions.values())


def is_silent(session, now: float, timeout: float) -> bool:
    """Has the server left this session without an answer? It left a datagram unanswered for `timeout`
    seconds, and either never answered the session or left a retry unanswered too.
    One unanswered datagram in an answered session is normal (TFTP's final ACK)."""
    return (timeout > 0 and session.pending_since > 0
            and now - session.pending_since >= timeout
            and (not session.answered or session.unanswered >= 2))


def sweep(sessions: Iterable, now: float, idle: float, timeout: float) -> tuple[list, list]:
    """(expired, silent): sessions with no traffic for `idle` seconds, and the others whose
    server is_silent (timeout 0 = never)."""
    expired, silent = [], []
    for session in sessions:
        if now - session.last >= idle:
            expired.append(session)
        elif is_silent(session, now, timeout):
            silent.append(session)
    return expired, silent
