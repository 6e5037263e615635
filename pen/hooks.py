"""What the command language may ask of the running process, as one typed interface.

commands.py reaches the process only through `state.process`. A State that does not serve
(the command line and -F before start-up, the scratch copy a reload checks first, the pure
tests) has OFFLINE: settings are simply kept for the start, and what needs a running
balancer says so. runtime.Runtime is the implementation while pen runs.
"""

from __future__ import annotations

from typing import Protocol

from .errors import CommandError


class ProcessHooks(Protocol):
    running: bool

    def open_log(self) -> None:
        """`log FILE`: (re)open the -l log now."""

    def set_debug(self) -> None:
        """`debug N`: apply the new level to the logging."""

    def relisten(self, endpoint) -> None:
        """`listen ADDR`: serve on endpoint instead; CommandError if it cannot."""

    def reload_tls(self) -> None:
        """An ssl_* setting changed: rebuild the TLS contexts; CommandError if they fail."""

    def save_status(self, text: str) -> None:
        """`status`: the HTML page, also to the -w file."""

    def shutdown(self) -> None:
        """`exit`: stop as SIGTERM does."""

    def health_changed(self) -> None:
        """A healthcheck*, slowstart or metrics_port setting changed: apply it now
        (metrics_port's bind error is the command's answer, a CommandError)."""

    def check_now(self, server) -> None:
        """Check server at once (UDP silence asks); nothing without a check."""

    def refresh(self) -> None:
        """Before a report of the live tables and counts (connections, clients, bytes,
        events): a worker group's parent gathers its workers' (group.py); one process
        has its relays count what they moved."""


class Offline:
    """The hooks of a State with no running balancer behind it."""

    running = False

    def open_log(self) -> None:
        pass                          # opened when the balancer starts

    def set_debug(self) -> None:
        pass                          # applied when the balancer starts

    def relisten(self, endpoint) -> None:
        pass                          # bound when the balancer starts

    def reload_tls(self) -> None:
        pass                          # built (and checked) when the balancer starts

    def save_status(self, text: str) -> None:
        pass

    def shutdown(self) -> None:
        raise CommandError("exit: only available on a running balancer")

    def health_changed(self) -> None:
        pass                          # the checks start with the balancer

    def check_now(self, server) -> None:
        pass

    def refresh(self) -> None:
        pass


OFFLINE = Offline()
