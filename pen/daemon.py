"""Process matters: daemonizing, pid file, chroot, dropping privileges, logging."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import time


class DaemonError(RuntimeError):
    pass


def daemonize():
    """Detach from the terminal: fork, setsid, fork, stdio to /dev/null.

    The process the user started waits until the daemon reports how its start-up went and
    exits with that: a start-up error (a log file that cannot be opened, a bad pid file
    path...) still reaches the user's terminal and exit status. Returns the daemon's
    report(error=None), to be called once: with None when it serves, else the message."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os._exit(_await_start(read_end))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    pending = [write_end]

    def report(error: str | None = None) -> None:
        if pending:
            fd = pending.pop()
            try:
                os.write(fd, (error or STARTED).encode()[:4096])
            except OSError:
                pass
            os.close(fd)
    return report


STARTED = "started"


def _await_start(fd: int) -> int:
    """In the process the user started: the daemon's report, as an exit status."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    message = b"".join(chunks).decode(errors="replace")
    if message == STARTED:
        return 0
    print(f"pen: {message or 'the daemon exited during start-up'}", file=sys.stderr)
    return 1


def write_pidfile(path: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as e:
        raise DaemonError(f"-p {path}: {e.strerror}") from None


def remove_file(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def lookup_user(name: str):
    import pwd
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise DaemonError(f"-u {name}: no such user") from None


def enter_chroot(path: str) -> None:
    try:
        os.chroot(path)
        os.chdir("/")
    except OSError as e:
        raise DaemonError(f"-j {path}: {e.strerror}") from None


def drop_privileges(user) -> None:
    """Switch to user (a pwd entry) after binding, as pen's -u does."""
    if os.getuid() != 0:
        if user.pw_uid != os.getuid():
            raise DaemonError(f"-u {user.pw_name}: only root can switch users")
        return
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def set_debug(debug: int) -> None:
    """pen's debug level as a logging level: 0 warnings, 1 info, 2 and more everything."""
    level = logging.WARNING if debug <= 0 else logging.INFO if debug == 1 else logging.DEBUG
    logging.getLogger("pen").setLevel(level)


def setup_logging(debug: int, foreground: bool) -> None:
    """Diagnostics go to stderr in the foreground, to syslog in the background (as pen)."""
    root = logging.getLogger("pen")
    root.handlers.clear()
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
    root.addHandler(handler)


class Throttled:
    """A log call made at most once per interval: a shortage or a misconfigured host that
    recurs on every connection or datagram must not flood the log."""

    def __init__(self, level: int, interval: float = 60.0) -> None:
        self.level, self.interval, self.last = level, interval, None

    def __call__(self, message: str, *args) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            logging.getLogger("pen").log(self.level, message, *args)


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

    def write(self, client: str, server: str, request: str) -> None:
        """A request as pen logs it: `CLIENT TIME SERVER REQUEST` to a file; to penlogd the
        datagram `+ CLIENT SERVER REQUEST` it merges into the web server's log."""
        try:
            if self.file is not None:
                self.file.write(f"{client} {int(time.time())} {server} {request}\n")
            elif self.udp is not None:
                self.udp.send(f"+ {client} {server} {request}\n".encode()[:1024])
        except OSError:
            pass

    def close(self) -> None:
        for f in (self.file, self.udp):
            if f is not None:
                f.close()
        self.file = self.udp = None


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
