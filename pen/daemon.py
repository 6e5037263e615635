"""Process matters: daemonizing, pid file, chroot, dropping privileges."""

from __future__ import annotations

import contextlib
import os
import sys

from .errors import CommandError


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
    """The pid, without a newline, as pen writes it. Written aside and renamed into place,
    so that a reader (systemd's PIDFile=, a script waiting for an upgrade) never sees the
    file empty; in place where the directory takes no new file but the pid file is ours."""
    pid = str(os.getpid())
    aside = f"{path}.{pid}.tmp"
    try:
        try:
            with open(aside, "w") as f:
                f.write(pid)
        except OSError:
            with open(path, "w") as f:
                f.write(pid)
            return
        os.replace(aside, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise DaemonError(f"-p {path}: {e.strerror}") from None


class Leftover:
    """A file pen removes on exit (pid file, UNIX socket), still reachable after -j: its
    directory is held open, so the removal works inside the jail too."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.basename(path)
        try:
            self.dir_fd: int | None = os.open(os.path.dirname(path) or ".",
                                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.dir_fd = None

    def remove(self) -> None:
        try:
            if self.dir_fd is None:
                os.unlink(self.path)
            else:
                os.unlink(self.name, dir_fd=self.dir_fd)
        except OSError:
            pass

    def read(self) -> str:
        try:
            fd = (os.open(self.path, os.O_RDONLY) if self.dir_fd is None
                  else os.open(self.name, os.O_RDONLY, dir_fd=self.dir_fd))
        except OSError:
            return ""
        with os.fdopen(fd) as f:
            return f.read()


_leftovers: dict[str, Leftover] = {}


def keep_removable(path: str | None) -> None:
    """Remember path's directory now, while it is reachable (before -j)."""
    if path and path not in _leftovers:
        _leftovers[path] = Leftover(path)


def remove_file(path: str | None) -> None:
    if path:
        (_leftovers.pop(path, None) or Leftover(path)).remove()


def remove_pidfile(path: str | None) -> None:
    """Remove the pid file if it still names this process (after an upgrade it names the
    new one; a new copy that failed to start never wrote it)."""
    if path and (_leftovers.get(path) or Leftover(path)).read().strip() == str(os.getpid()):
        remove_file(path)


def lookup_user(name: str):
    import pwd
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise DaemonError(f"-u {name}: no such user") from None


def prepare_jail() -> None:
    """Import now what the process will import later: after -j, Python's own tree is gone.

    gevent sets up its hub (loop, config, thread pool, resolver) lazily, pen-lb imports
    some modules on first use, and codecs are looked up by name on first use."""
    import codecs
    import importlib

    import gevent
    hub = gevent.get_hub()
    _ = hub.threadpool, hub.resolver  # both created on first access
    for name in ("idna", "ascii", "latin-1", "utf-8"):
        codecs.lookup(name)
    for module in JAIL_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:           # an optional extra (maxminddb) that is not installed
            pass


# Modules imported on first use, somewhere after start-up.
JAIL_IMPORTS = ("fcntl", "pwd", "grp", "ssl", "json", "html", "pprint", "traceback",
                "linecache", "logging.handlers", "encodings.idna", "gevent.pool",
                "gevent.ssl", "gevent.threadpool", "gevent.resolver.thread",
                "gevent.resolver.blocking", "maxminddb", "pen.acl", "pen.commands",
                "pen.control", "pen.dsr", "pen.status", "pen.tls", "pen.transparent",
                "pen.udp", "pen.geoip")


def enter_chroot(path: str) -> None:
    prepare_jail()
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


def save_status(path: str | None, text: str) -> None:
    """The HTML status page, to the -w file (if there is one); CommandError if it fails."""
    if not path:
        return
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise CommandError(f"Unable to create webstats {path}: {e.strerror}") from None
