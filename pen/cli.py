"""pen's command line: options, listen address and servers, turned into one State.

Every option that pen's control language can express becomes a command line for
commands.execute, so the command line, -O, -F files and the control port share one path.
"""

from __future__ import annotations

import getopt
import os
import signal
import socket
import sys
import time

from . import __version__, commands, group, member
from .addr import AddressError, ServerSpec, parse_listen, parse_server, resolve
from .errors import UsageError
from .runtime import Options, run
from .state import State
from .tls_contexts import TlsError, protocol_minimum

# pen 0.34's getopt string (plus -N from its usage text); -D -P -Q -n -S are accepted and
# ignored as in pen.
OPTSTRING = "A:B:C:DE:F:G:HK:L:NO:PQRS:T:UWXZab:c:de:fhi:j:l:m:no:p:q:rst:u:w:x:"

# Options whose value maps straight onto a command.
AS_COMMAND = {"-b": "blacklist", "-c": "clients_max", "-e": "emergency_server",
              "-B": "abuse_server", "-t": "timeout", "-T": "tracking", "-x": "conn_max",
              "-l": "log", "-w": "web_stats"}
FLAGS = {"-h": ["hash"], "-N": ["hash", "roundrobin"], "-r": ["roundrobin"],
         "-s": ["stubborn"], "-W": ["weight"], "-H": ["http"], "-a": ["ascii"]}
IGNORED = {"-D", "-P", "-Q", "-n", "-S"}

# TLS files and flags: command-line only, as in pen (tls.py reads them from the State).
TLS_FILES = {"-E": "ssl_cert", "-K": "ssl_key", "-G": "ssl_ca_file", "-A": "ssl_ca_dir"}

USAGE = """usage: pen [options] [host:]port|/path/to/socket server [server ...]
       server = host[:port[:soft[:hard[:weight[:prio]]]]] | [ipv6]:port... | /path
       pen --demo      (a demo: pen on 127.0.0.1:8080 in front of two local backends)
options: -b sec blacklist [30]  -c N clients [2048]  -e host:port emergency
  -B host:port abuse  -C [addr:]port|/path control  -F file config  -H X-Forwarded-For
  -O/-o cmd penctl command  -T sec tracking [0]  -U udp  -W weight  -X allow exit
  -a ascii dumps  -d debug  -f foreground  -h hash  -j dir chroot  -l file|host:port log
  -m N accepts per wake-up  -p file pid  -q N backlog  -r roundrobin  -s stubborn
  -t sec connect timeout [3]  -u user  -w file status page  -x N max connections [500]
  -N hash without tracking (-h -r)  -D -P -Q -n -S N: accepted and ignored, as in pen 0.34
  TLS: -E cert -K key -G cafile -A cadir -R -L ssl23|tls1|tls1.1|tls1.2|tls1.3 -Z
  pen --upgrade -p PIDFILE [-t S]   (SIGUSR2: a new copy takes over, nothing dropped)
  pen --version   pen --help
See `man pen` for details; pen-lb follows it."""


def _count(opt: str, value: str, minimum: int = 0) -> int:
    if not value.lstrip("-").isdigit() or int(value) < minimum:
        raise UsageError(f"{opt}: expected a number of at least {minimum}, got {value!r}")
    return int(value)


def parse(argv: list[str]) -> tuple[State, Options]:
    """argv (without the program name) -> State and Options; raises UsageError."""
    state, opts = State(), Options(argv=list(argv), cwd=os.getcwd())
    if argv[:1] == ["--demo"]:
        opts.demo = opts.foreground = True
        return state, opts
    try:
        pairs, rest = getopt.gnu_getopt(argv, OPTSTRING)
    except getopt.GetoptError as e:       # e.opt: "x" for -x, "foo" for --foo
        raise UsageError(f"{'--' if len(e.opt) > 1 else '-'}{e.opt}: {e.msg}") from None
    settings: list[tuple[str, str]] = []     # (origin, command), applied in argv order
    later: list[tuple[str, str]] = []        # -O/-o: after the servers exist
    control = None                           # -C: the control listener
    for opt, value in pairs:
        origin = f"{opt} {value}".strip()
        if opt in AS_COMMAND:
            settings.append((origin, f"{AS_COMMAND[opt]} {value}"))
        elif opt in FLAGS:
            settings += [(origin, name) for name in FLAGS[opt]]
        elif opt in ("-O", "-o"):
            later.append((origin, value))
        elif opt in TLS_FILES:
            setattr(state, TLS_FILES[opt], value)
        elif opt == "-R":
            state.ssl_require_client = True
        elif opt == "-Z":
            state.ssl_compat = True
        elif opt == "-L":
            try:
                protocol_minimum(value)
            except TlsError as e:
                raise UsageError(str(e)) from None
            state.ssl_protocol = value.lower()
        elif opt == "-d":
            state.debug += 1
        elif opt == "-f":
            opts.foreground = True
        elif opt == "-C":
            control = value
        elif opt == "-F":
            state.config_file = value
        elif opt == "-X":
            state.allow_exit = True
        elif opt == "-U":
            state.udp = True
        elif opt == "-p":
            opts.pidfile = value
        elif opt == "-u":
            opts.user = value
        elif opt == "-j":
            opts.chroot = value
        elif opt == "-q":
            opts.backlog = _count(opt, value, 1)
        elif opt == "-m":
            opts.multi_accept = _count(opt, value, 1)
        elif opt == "-i":
            raise UsageError("-i: Windows services are not supported")
        elif opt not in IGNORED:
            raise UsageError(f"{opt}: not supported")
    if not rest:
        raise UsageError("missing listen address and servers (see pen --help)")
    proto = "udp" if state.udp else "tcp"
    try:
        state.listen = parse_listen(rest[0], proto)
    except AddressError as e:
        raise UsageError(f"{rest[0]}: {e}") from None
    apply(state, settings)
    for index, text in enumerate(rest[1:]):
        try:
            spec = parse_server(text, state.listen.port, proto)
            add_server(state, index, spec, proto)
        except AddressError as e:
            raise UsageError(f"{text}: {e}") from None
    opts.answers = apply(state, later)
    if control is not None:
        try:
            state.control = parse_listen(control)
        except AddressError as e:
            raise UsageError(f"-C {control}: {e}") from None
    if state.config_file and member.ENV in os.environ:
        # a worker: the parent read -F (perhaps before dropping privileges) and sends
        # the running configuration; SIGHUP re-reads the file here too
        state.config_servers = commands.defined_servers(state.config_file)
    elif state.config_file:                  # -F: after -O, as pen reads it
        try:
            opts.answers += commands.load_config(state, state.config_file)
        except commands.CommandError as e:
            raise UsageError(f"-F {e}") from None
    return state, opts


def add_server(state: State, index: int, spec: ServerSpec, proto: str = "tcp") -> None:
    endpoint = spec.endpoint
    if not endpoint.is_unix:
        resolve(endpoint, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    server = state.server(index)
    server.endpoint = endpoint
    server.max, server.hard, server.weight, server.prio = spec.max, spec.hard, spec.weight, spec.prio


def apply(state: State, lines: list[tuple[str, str]]) -> str:
    """Run (origin, command) pairs; their answers, joined."""
    out = []
    for origin, line in lines:
        try:
            out.append(commands.terminated(commands.execute(state, line)))
        except commands.CommandError as e:
            raise UsageError(f"{origin}: {e}") from None
    return "".join(out)


def upgrade_running(args: list[str]) -> int:
    """pen --upgrade -p PIDFILE [-t SECONDS]: SIGUSR2 to the pen the pid file names, then
    wait until the file names the new copy (it writes it once it serves)."""
    try:
        pairs, rest = getopt.getopt(args, "p:t:")
    except getopt.GetoptError as e:
        raise UsageError(f"--upgrade: {e.msg}") from None
    given = dict(pairs)
    if rest or "-p" not in given:
        raise UsageError("usage: pen --upgrade -p PIDFILE [-t SECONDS]")
    pidfile, timeout = given["-p"], _count("-t", given.get("-t", "60"), 1)
    old = _pid_in(pidfile)
    if old is None:
        raise UsageError(f"--upgrade: -p {pidfile}: no pid in it")
    try:
        os.kill(old, signal.SIGUSR2)
    except OSError as e:
        raise UsageError(f"--upgrade: pid {old}: {e.strerror}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _pid_in(pidfile)
        if new not in (None, old):
            print(f"pen: upgraded: pid {old} hands over to pid {new}")
            return 0
        time.sleep(0.1)
    raise UsageError(f"--upgrade: no new copy took over within {timeout}s; "
                     f"pid {old} serves on (its log says why)")


def _pid_in(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise UsageError(f"--upgrade: -p {path}: {e.strerror}") from None
    return int(text) if text.isdigit() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("--help", "-?"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 1
    if argv[0] in ("--version", "-V"):
        print(f"pen-lb {__version__}")
        return 0
    try:
        if argv[0] == "--upgrade":
            return upgrade_running(argv[1:])
        state, opts = parse(argv)
        if opts.answers:              # as pen: what -O, -o and -F commands answer, on stdout
            sys.stdout.write(opts.answers)
            sys.stdout.flush()
        if state.workers > 1 and member.ENV not in os.environ:
            return group.run(state, opts)
        return run(state, opts)
    except UsageError as e:
        print(f"pen: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
