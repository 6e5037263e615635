"""The Balancer interface the runtime drives, and the choice of one for a configuration.

Four implementations: tcp.TcpBalancer (TCP and UNIX streams), tls.TlsBalancer (the same
with TLS on either side), udp.UdpBalancer (-U) and dsr.Forwarder (dsr_if: raw frames).
"""

from __future__ import annotations

from typing import Protocol

from .dsr import Forwarder
from .logs import ConnectionLog
from .sockets import ConnectHook
from .state import State
from .tcp import TcpBalancer
from .tls import TlsBalancer
from .udp import UdpBalancer


class Balancer(Protocol):
    state: State
    connect_hooks: list[ConnectHook]   # shape each server socket before it connects

    def start(self) -> None:
        """Take clients: connections, datagrams or frames."""

    def close(self, drain: bool = False) -> None:
        """Take no more clients. TCP connections in flight go on (the runtime drains
        them); UDP sessions end too unless drain (an upgrade: the listen socket stays
        open for their answers); DSR ends."""

    def listening_socket(self):
        """The socket clients reach us on (handed to a new copy by an upgrade)."""

    def relisten(self, endpoint) -> None:
        """`listen ADDR`: take clients there instead. UsageError if the address cannot be
        had, CommandError if the mode cannot move."""

    def shed(self, count: int) -> None:
        """Close count connections or sessions: a worker group's member holding more than
        its -x allows now (board.SharedState.connection_limit)."""


def create(state: State, sock, conn_log: ConnectionLog, contexts=None, *,
           max_accept: int = 100, backlog: int = 0) -> Balancer:
    """The balancer for this configuration, by precedence: dsr_if (frames, nothing is
    accepted) over -U (datagrams) over TLS contexts (-E / ssl_backend) over plain TCP.
    TLS with -U is refused at start-up (runtime.tls_contexts)."""
    if state.dsr_if:
        return Forwarder(state, sock, conn_log)
    if state.udp:
        return UdpBalancer(state, sock, conn_log)
    if contexts is not None:
        return TlsBalancer(state, sock, conn_log, contexts=contexts, max_accept=max_accept,
                           backlog=backlog)
    return TcpBalancer(state, sock, conn_log, max_accept=max_accept, backlog=backlog)
