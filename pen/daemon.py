"""Process matters: daemonizing, pid file, chroot, dropping privileges."""

from __future__ import annotations

import os
import sys


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


def remove_pidfile(path: str | None) -> None:
    """Remove the pid file if it still names this process (after an upgrade it names the
    new one; a new copy that failed to start never wrote it)."""
    try:
        with open(path or "") as f:
            ours = f.read().strip() == str(os.getpid())
    except OSError:
        return
    if ours:
        remove_file(path)


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
