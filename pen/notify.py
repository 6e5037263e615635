"""systemd's notify protocol (sd_notify(3)), with the standard library: one datagram per
state change to the AF_UNIX socket named by $NOTIFY_SOCKET. Without it (not under a
Type=notify unit) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("pen")


def notify(*fields: str) -> bool:
    """Send KEY=VALUE fields (READY=1, RELOADING=1, MAINPID=N, STOPPING=1...); True if
    a notify socket took them."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or not path.startswith(("/", "@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path     # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
        return True
    except OSError as e:
        log.debug("notify %s: %s", path, e)
        return False
