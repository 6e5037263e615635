"""Logging: pen's debug levels on Python's logging, throttled warnings, and the -l log.

Diagnostics go to the "pen" logger (stderr in the foreground, syslog as a daemon); the -l
log is pen's own record of connections, to a file or to penlogd over UDP.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
import time

log = logging.getLogger("pen")


def set_debug(debug: int) -> None:
    """pen's debug level as a logging level: 0 warnings, 1 info, 2 and more everything."""
    level = logging.WARNING if debug <= 0 else logging.INFO if debug == 1 else logging.DEBUG
    log.setLevel(level)


def setup_logging(debug: int, foreground: bool) -> None:
    """Diagnostics go to stderr in the foreground, to syslog in the background (as pen)."""
    log.handlers.clear()
    set_debug(debug)
    if foreground:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    else:
        try:
            handler = logging.handlers.SysLogHandler("/dev/log")
        except OSError:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter("pen[%(process)d]: %(message)s"))
    log.addHandler(handler)


class Throttled:
    """A log call made at most once per interval: a shortage or a misconfigured host that
    recurs on every connection or datagram must not flood the log."""

    def __init__(self, level: int, interval: float = 60.0) -> None:
        self.level, self.interval, self.last = level, interval, None

    def __call__(self, message: str, *args) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            log.log(self.level, message, *args)


class ConnectionLog:
    """pen's -l log: a line per request, to a file or to a UDP host:port (penlogd)."""

    def __init__(self) -> None:
        self.target: str | None = None
        self.file = None
        self.udp = None

    def open(self, target: str | None) -> None:
        self.close()
        self.target = target
        if not target:
            return
        host, sep, port = target.rpartition(":")
        if sep and port.isdigit() and "/" not in target:
            info = socket.getaddrinfo(host.strip("[]"), int(port), 0, socket.SOCK_DGRAM)[0]
            self.udp = socket.socket(info[0], socket.SOCK_DGRAM)
            self.udp.setblocking(False)
            self.udp.connect(info[4])
        else:
            self.file = open(target, "a", buffering=1)

    def request(self, client_ip, server, request: str) -> None:
        """A client's request (its request line, or UDP) relayed to server, as pen logs
        it: `CLIENT TIME SERVER REQUEST` to a file; to penlogd the datagram
        `+ CLIENT SERVER REQUEST` it merges into the web server's log."""
        client, address = str(client_ip), server.endpoint.address
        try:
            if self.file is not None:
                self.file.write(f"{client} {int(time.time())} {address} {request}\n")
            elif self.udp is not None:
                self.udp.send(f"+ {client} {address} {request}\n".encode()[:1024])
        except OSError:
            pass

    def close(self) -> None:
        for f in (self.file, self.udp):
            if f is not None:
                f.close()
        self.file = self.udp = None
