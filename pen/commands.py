"""pen's command language: one parser and one set of handlers for the command line (-O/-o,
the options mapped onto commands by cli.py), -F config files, `include`, and the control port.

A handler takes the State and the words after the command name and returns the answer text
('' for setters). A bad argument raises CommandError with a one-line message.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from . import __version__, geoip, health_commands
from . import status as status_report
from .acl import AclError, parse_entry
from .addr import AddressError, parse_listen, parse_server, resolve
from .errors import CommandError
from .registry import COMMANDS, Handler, at_most, command, number, show
from .state import State

MAX_LINE = 4096


class Verbatim(str):
    """An answer sent exactly as it is: the control port adds no newline (pen's tarpit_acl
    answer has none)."""


def terminated(text: str) -> str:
    """An answer as pen sends or prints it: ended by a newline unless it is Verbatim."""
    if text and not text.endswith("\n") and not isinstance(text, Verbatim):
        return text + "\n"
    return text


def setting(name: str, attr: str, *, minimum: float = 0, integer: bool = True,
            render: Callable[[object], str] = show, after: Callable[[State], None] | None = None,
            echo: bool = True):
    """A numeric setting: `name` shows it, `name V` sets it (and, with echo, shows the new
    value, as pen does for most of them)."""
    @command(name)
    def handler(state: State, args: list) -> str:
        if at_most(args, 1, f"{name} [N]"):
            setattr(state, attr, number(args[0], name, minimum, integer))
            if after:
                after(state)
            if not echo:
                return ""
        return render(getattr(state, attr))
    return handler


def flag(name: str, attr: str | None = None) -> None:
    """A boolean mode: `name` turns it on, `no name` off."""
    attr = attr or name

    def setter(value: bool) -> Handler:
        def handler(state: State, args: list) -> str:
            at_most(args, 0, name)
            setattr(state, attr, value)
            return ""
        return handler
    COMMANDS[name], COMMANDS["no " + name] = setter(True), setter(False)


def text_setting(name: str, attr: str, after: Callable[[State], None] | None = None,
                 echo: bool = False, clearable: bool = True, what: str = "FILE"):
    """`name` shows a word (a file, an address, an interface), `name VALUE` sets it (with
    echo, shows it as pen does for log and web_stats), `no name` clears it if clearable."""
    @command(name)
    def handler(state: State, args: list) -> str:
        if at_most(args, 1, f"{name} [{what}]"):
            setattr(state, attr, args[0])
            if after:
                after(state)
            if not echo:
                return ""
        return getattr(state, attr) or ""

    if not clearable:
        return handler

    @command("no " + name)
    def clear(state: State, args: list) -> str:
        setattr(state, attr, None)
        if after:
            after(state)
        return ""
    return handler


# --- modes and settings ---------------------------------------------------------------

for _name in ("hash", "roundrobin", "stubborn", "weight", "prio", "http", "tcp_nodelay",
              "keepalive", "ascii"):
    flag(_name)
flag("transparent")
flag("maglev")
flag("ssl_backend")
# Obsolete in pen 0.26+ and accepted as no-ops so that pen's own `write` output loads.
for _name in ("block", "delayed_forward", "abort_on_error"):
    COMMANDS[_name] = COMMANDS["no " + _name] = lambda state, args: ""
for _name in ("poll", "epoll", "select", "kqueue"):
    COMMANDS[_name] = lambda state, args: ""

setting("blacklist", "blacklist_time", integer=False)
setting("timeout", "timeout", integer=False, minimum=0.001)
setting("tracking", "tracking", integer=False)
setting("debug", "debug", after=lambda state: state.process.set_debug())
setting("conn_max", "conn_max", minimum=1)
setting("pending_max", "pending_max", minimum=1, echo=False)
setting("client_acl", "client_acl", minimum=-1)
setting("control_acl", "control_acl", minimum=-1)
setting("idle_timeout", "idle_timeout", integer=False,
        render=lambda v: f"Idle timeout: {show(v)} seconds")
setting("tarpit_acl", "tarpit_acl", minimum=-1, render=lambda v: Verbatim(f"tarpit_acl = {v}"))
setting("ssl_client_renegotiation_interval", "ssl_renegotiation_interval", echo=False)
text_setting("log", "log", after=lambda state: state.process.open_log(), echo=True)
text_setting("web_stats", "web_stats", echo=True)


def _tls_changed(state: State, attr: str | None = None, old=None) -> None:
    """A TLS setting changed on a running balancer: rebuild its contexts now (the old ones
    stay, and so does the old value of attr, when the new setting cannot be used)."""
    try:
        state.process.reload_tls()
    except CommandError:
        if attr is not None:
            setattr(state, attr, old)
        raise


text_setting("ssl_sni_path", "ssl_sni_path", after=_tls_changed)


@command("ssl_ocsp_response")
def ssl_ocsp_response(state: State, args: list) -> str:
    raise CommandError("ssl_ocsp_response: OCSP stapling is unsupported: Python's ssl module "
                       "cannot staple a response")


COMMANDS["no ssl_ocsp_response"] = lambda state, args: ""


@command("clients_max")
def clients_max(state: State, args: list) -> str:
    if at_most(args, 1, "clients_max [N]"):
        state.clients.resize(number(args[0], "clients_max"))
    return str(state.clients.slots)


@command("tcp_fastclose")
def tcp_fastclose(state: State, args: list) -> str:
    if not args:                                     # pen's answer, word for word
        return "do_cmd: ignoring tcp_fastclose without argument\n"
    if len(args) != 1 or args[0] not in ("up", "down", "both", "off"):
        raise CommandError("usage: tcp_fastclose up|down|both|off")
    state.tcp_fastclose = args[0]
    return ""


text_setting("source", "source", what="IP")
text_setting("dsr_if", "dsr_if", clearable=False, what="IF")


@command("ssl_ciphers")
def ssl_ciphers(state: State, args: list) -> str:
    if not args:
        return state.ssl_ciphers or ""
    old, state.ssl_ciphers = state.ssl_ciphers, " ".join(args)
    _tls_changed(state, "ssl_ciphers", old)
    return ""


SSL_OPTIONS = ("no_sslv2", "no_sslv3", "no_tlsv1", "no_tlsv1.1", "no_tlsv1.2",
               "cipher_server_preference")


@command("ssl_option")
def ssl_option(state: State, args: list) -> str:
    if not args:
        return " ".join(state.ssl_options)
    for option in args:
        if option not in SSL_OPTIONS:
            raise CommandError(f"ssl_option: unknown option {option!r} "
                               f"(one of {', '.join(SSL_OPTIONS)})")
    old = list(state.ssl_options)
    state.ssl_options = old + [o for o in dict.fromkeys(args) if o not in old]
    _tls_changed(state, "ssl_options", old)
    return ""


@command("mode", whole=True)
def mode(state: State, args: list) -> str:
    names = ("hash", "roundrobin", "stubborn", "weight", "prio")
    answer = " ".join(n if getattr(state, n) else "no " + n for n in names)
    return answer + " maglev" if state.maglev else answer      # pen's answer while off


# --- servers and access lists ---------------------------------------------------------

SERVER_FIELDS = ("acl", "address", "port", "max", "hard", "blacklist", "weight", "prio",
                 "proxy_protocol")
PROXY_VERSIONS = ("v1", "v2", "off")


@command("server")
def server(state: State, args: list) -> str:
    """server N [acl A] [address A] [port P] [max M] [hard H] [blacklist S] [weight W] [prio P]"""
    if len(args) >= 2 and (args[1] in health_commands.SERVER_WORDS
                           or len(args) == 2 and args[1] not in SERVER_FIELDS):
        return health_commands.server_words(state, args)   # healthcheck, drain, maint, ready
    if not args or len(args) % 2 == 0:
        raise CommandError("usage: server N [" + "|".join(f"{f} V" for f in SERVER_FIELDS) + "]...")
    index = number(args[0], "server")
    if index > 10000:
        raise CommandError(f"server: number too large: {index}")
    changes = dict(zip(args[1::2], args[2::2], strict=True))
    for key in changes:                # validate all before changing anything
        if key not in SERVER_FIELDS:
            raise CommandError(f"server: unknown field {key!r} (one of {', '.join(SERVER_FIELDS)})")
    if changes.get("proxy_protocol", "off") not in PROXY_VERSIONS:
        raise CommandError(f"server {index} proxy_protocol: expected v1, v2 or off, "
                           f"got {changes['proxy_protocol']!r}")
    srv = state.server(index)
    if "address" in changes or "port" in changes:
        listen_port = state.listen.port if state.listen else 0
        host = changes.get("address", srv.name if srv.endpoint else None)
        if host is None:
            raise CommandError(f"server {index}: needs an address")
        port = changes.get("port", str(srv.port or listen_port))
        try:
            if host.startswith("/"):             # a UNIX socket has no port (pen shows 1)
                srv.endpoint = parse_server(host, listen_port).endpoint
            else:
                spec = parse_server(f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                                    listen_port)
                srv.endpoint = resolve(spec.endpoint)
        except AddressError as e:
            raise CommandError(f"server {index}: {e}") from None
    for key in ("acl", "max", "hard", "weight", "prio"):
        if key in changes:
            setattr(srv, key, number(changes[key], f"server {index} {key}", -1 if key == "acl" else 0))
    if "blacklist" in changes:
        state.blacklist(srv, time.time(), number(changes["blacklist"], "blacklist", integer=False))
    if "proxy_protocol" in changes:
        srv.proxy_protocol = changes["proxy_protocol"]
    return ""


@command("proxy_protocol")
def proxy_protocol(state: State, args: list) -> str:
    """proxy_protocol [v1|v2|off]: send a PROXY header to every server (unless a server's
    own `server N proxy_protocol` says otherwise)."""
    if not at_most(args, 1, "proxy_protocol [v1|v2|off]"):
        return state.proxy_protocol
    if args[0] not in PROXY_VERSIONS:
        raise CommandError(f"proxy_protocol: expected v1, v2 or off, got {args[0]!r}")
    state.proxy_protocol = args[0]
    return ""


setting("accept_proxy", "accept_proxy", minimum=0, echo=False)
setting("upgrade_grace", "upgrade_grace", integer=False, echo=False)

MAX_WORKERS = 256


@command("workers", whole=True)
def workers(state: State, args: list) -> str:
    """workers [N|auto]: how many processes serve (group.py); set at start-up only."""
    if not at_most(args, 1, "workers [N|auto]"):
        return str(state.workers)
    if args[0] == "auto":
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    else:
        n = number(args[0], "workers", minimum=1)
        if n > MAX_WORKERS:
            raise CommandError(f"workers: at most {MAX_WORKERS}, got {args[0]}")
    if state.process.running and n != state.workers:   # (a -F file re-read: the same N)
        raise CommandError("workers: set at start-up only (-O \"workers N\"); restart pen")
    state.workers = n
    return ""


@command("no accept_proxy")
def no_accept_proxy(state: State, args: list) -> str:
    at_most(args, 0, "no accept_proxy")
    state.accept_proxy = -1
    return ""


@command("servers", whole=True)
def servers(state: State, args: list) -> str:
    state.process.refresh()                      # the bytes moved until now
    return "".join(
        f"{s.index} addr {s.address} port {s.listed_port} conn {s.conn} max {s.max} hard {s.hard} "
        f"weight {s.weight} prio {s.prio} sx {s.sx} rx {s.rx}\n"
        for s in state.servers)


def _special_server(attr: str, name: str):
    @command(name)
    def handler(state: State, args: list) -> str:
        srv = getattr(state, attr)
        if not at_most(args, 1, f"{name} [HOST:PORT]"):
            return str(srv.endpoint) if srv else ""
        listen_port = state.listen.port if state.listen else 0
        try:
            spec = parse_server(args[0], listen_port)
            endpoint = spec.endpoint if spec.endpoint.is_unix else resolve(spec.endpoint)
        except AddressError as e:
            raise CommandError(f"{name}: {e}") from None
        setattr(state, attr, state.new_server(-1 if attr == "emergency" else -2, endpoint))
        return ""

    @command("no " + name)
    def clear(state: State, args: list) -> str:
        setattr(state, attr, None)
        return ""


_special_server("emergency", "emergency_server")
_special_server("abuse", "abuse_server")


@command("acl")
def acl(state: State, args: list) -> str:
    if len(args) not in (3, 4):
        raise CommandError("usage: acl N permit|deny ADDRESS [MASK] | acl N permit|deny country CC")
    try:
        entry = parse_entry(*args[1:])
        state.acls.add(number(args[0], "acl"), entry)
    except AclError as e:
        raise CommandError(f"acl: {e}") from None
    if entry.country and state.geoip_database is None and geoip.default_path():
        try:                       # as pen with its GeoIP.dat: found where it usually is
            geoip_database(state, [geoip.default_path()])
        except CommandError:       # unreadable: no country is known, as in pen without one
            pass
    return ""


@command("geoip_database")
def geoip_database(state: State, args: list) -> str:
    """pen-lb: the .mmdb file `acl N ... country CC` looks addresses up in."""
    if not at_most(args, 1, "geoip_database [FILE]"):
        return state.geoip_database or ""
    try:
        state.acls.geoip = geoip.open_database(args[0])
    except geoip.GeoipError as e:
        raise CommandError(f"geoip_database: {e}") from None
    state.geoip_database = args[0]
    return ""


@command("no geoip_database")
def no_geoip_database(state: State, args: list) -> str:
    state.geoip_database, state.acls.geoip = None, None
    return ""


@command("no acl")
def no_acl(state: State, args: list) -> str:
    if len(args) != 1:
        raise CommandError("usage: no acl N")
    try:
        state.acls.clear(number(args[0], "acl"))
    except AclError as e:
        raise CommandError(f"acl: {e}") from None
    return ""


# --- the running balancer -------------------------------------------------------------

@command("pid", whole=True)
def pid(state: State, args: list) -> str:
    return str(os.getpid())


@command("listen")
def listen(state: State, args: list) -> str:
    if not at_most(args, 1, "listen [ADDRESS:PORT]"):
        return str(state.listen) if state.listen else ""
    try:
        endpoint = parse_listen(args[0], "udp" if state.udp else "tcp")
    except AddressError as e:
        raise CommandError(f"listen: {e}") from None
    if str(endpoint) == str(state.listen):
        return ""                  # already listening there (a -F file re-read on SIGHUP)
    state.process.relisten(endpoint)
    state.listen = endpoint
    return ""


@command("control", whole=True)
def control(state: State, args: list) -> str:
    return str(state.control) if state.control else ""


@command("recent", whole=True)
def recent(state: State, args: list) -> str:
    seconds = number(at_most(args, 1, "recent [S]")[0], "recent", integer=False) if args else 300
    since = time.time() - seconds
    state.process.refresh()
    return "".join(f"{c.ip} connects {c.connects} sx {c.sx} rx {c.rx}\n"
                   for c in state.clients if c.last >= since)


def _slot(state: State, args: list, name: str) -> int | str:
    """A connection slot (0 to conn_max - 1), or pen's answer for one out of range."""
    if len(args) != 1:
        raise CommandError(f"usage: {name} N")
    n = number(args[0], name, minimum=-(2 ** 31))
    if not 0 <= n < max(state.conn_max, max(state.connections, default=-1) + 1):
        return f"Connection {n} out of range\n"
    return n


@command("connection", whole=True)
def connection(state: State, args: list) -> str:
    state.process.refresh()
    n = _slot(state, args, "connection")
    if isinstance(n, str):
        return n
    conn = state.connections.get(n)
    if conn is None:                 # a free slot, as pen shows one that was never used
        return f"Connection {n}:\nstate = 0\ndownfd = -1, upfd = -1\nclient = 0, server = 0\npend = 0\n"
    server = conn.server
    snap = status_report.connection_row(conn, time.time())
    # pen's lines first (scripts parse them; state 2 = connected, 1 = connecting), then
    # what pen-lb knows beyond them
    return (f"Connection {conn.id}:\n"
            f"state = {2 if server else 1}\n"
            f"downfd = {conn.downfd}, upfd = {conn.upfd}\n"
            f"client = {snap['client_slot']}, server = {server.index if server else -1}\n"
            f"pend = 0\n"
            f"client address = {snap['client']}\n"
            f"server address = {snap['server_address'] or '-'}\n"
            f"age = {snap['age']:.1f} s, sx = {conn.sx}, rx = {conn.rx}\n")


@command("close")
def close(state: State, args: list) -> str:
    n = _slot(state, args, "close")
    if isinstance(n, str):
        return n
    conn = state.connections.get(n)
    if conn is not None and conn.close:
        conn.close()
    return f"Forcibly closing connection {n}\n"


@command("socket", whole=True)
def socket_(state: State, args: list) -> str:
    return "socket: pen-lb has no socket table; see `connection N`\n"


@command("exit", whole=True)
def exit_(state: State, args: list) -> str:
    if not state.allow_exit:
        return "Exit is not enabled; restart with -X flag\n"           # pen's answer
    state.process.shutdown()
    return ""


@command("status", whole=True)
def status(state: State, args: list) -> str:
    """status [html|json|prometheus]: the report; html is also written to the -w file."""
    fmt = at_most(args, 1, "status [html|json|prometheus]")[0] if args else "html"
    if fmt not in status_report.FORMATS:
        raise CommandError(f"status: unknown format {fmt!r} (html, json or prometheus)")
    state.process.refresh()
    text = status_report.render(state, fmt)
    if fmt == "html":
        state.process.save_status(text)
    return text


@command("metrics", whole=True)
def metrics(state: State, args: list) -> str:
    """Prometheus text metrics (the same as `status prometheus`)."""
    at_most(args, 0, "metrics")
    state.process.refresh()
    return status_report.render(state, "prometheus")


@command("include")
def include(state: State, args: list) -> str:
    if len(args) != 1:
        raise CommandError("usage: include FILE")
    run_file(state, args[0])
    return ""


@command("write", whole=True)
def write(state: State, args: list) -> str:
    target = args[0] if args else state.config_file
    if not target:
        raise CommandError("write: no file given and no -F file to write to")
    text = dump(state)
    try:
        with open(target, "w") as f:
            f.write(text)
    except OSError as e:
        raise CommandError(f"write: {target}: {e.strerror}") from None
    return ""


@command("dummy", "no dummy", "idlers")
def unsupported(state: State, args: list) -> str:
    raise CommandError("not supported by pen-lb (pen's test-only dummy web server and idlers)")


def dump(state: State) -> str:
    """The running configuration as commands; `pen -F FILE LISTEN` reproduces it."""
    def onoff(name):
        return name if getattr(state, name) else "no " + name
    lines = [f"# Generated by pen-lb {__version__} {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if state.geoip_database:
        lines.append(f"geoip_database {state.geoip_database}")
    lines += state.acls.commands()
    lines += [onoff("ascii"), f"blacklist {show(state.blacklist_time)}",
              f"client_acl {state.client_acl}", f"clients_max {state.clients.slots}",
              f"conn_max {state.conn_max}", f"control_acl {state.control_acl}",
              f"debug {state.debug}", onoff("hash"), onoff("http"),
              f"idle_timeout {show(state.idle_timeout)}", onoff("keepalive"),
              f"log {state.log}" if state.log else "no log", f"pending_max {state.pending_max}",
              onoff("roundrobin")]
    lines += [s.command() for s in state.servers]
    for attr, name in (("emergency", "emergency_server"), ("abuse", "abuse_server")):
        srv = getattr(state, attr)
        lines.append(f"{name} {srv.endpoint}" if srv else f"no {name}")
    if state.source:
        lines.append(f"source {state.source}")
    lines += [onoff("stubborn"), f"tcp_fastclose {state.tcp_fastclose}", onoff("tcp_nodelay"),
              f"timeout {show(state.timeout)}", f"tracking {show(state.tracking)}"]
    if state.transparent:
        lines.append("transparent")
    if state.tarpit_acl >= 0:
        lines.append(f"tarpit_acl {state.tarpit_acl}")
    if state.dsr_if:
        lines.append(f"dsr_if {state.dsr_if}")
    if state.ssl_ciphers:
        lines.append(f"ssl_ciphers {state.ssl_ciphers}")
    lines += [f"ssl_option {o}" for o in state.ssl_options]
    if state.ssl_sni_path:
        lines.append(f"ssl_sni_path {state.ssl_sni_path}")
    if state.ssl_backend:
        lines.append("ssl_backend")
    if state.maglev:
        lines.append("maglev")
    if state.proxy_protocol != "off":
        lines.append(f"proxy_protocol {state.proxy_protocol}")
    if state.accept_proxy >= 0:
        lines.append(f"accept_proxy {state.accept_proxy}")
    if state.workers != 1:
        lines.append(f"workers {state.workers}")
    if state.upgrade_grace != 30:
        lines.append(f"upgrade_grace {show(state.upgrade_grace)}")
    lines += [f"web_stats {state.web_stats}" if state.web_stats else "no web_stats",
              onoff("weight"), onoff("prio")]
    lines += health_commands.dump_lines(state)
    return "\n".join(lines) + "\n"


# --- parsing and running ---------------------------------------------------------------

def split(line: str) -> list[str]:
    """Words of a command line; '#' starts a comment line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    return line.split()


def lookup(words: list[str]) -> tuple[str, Handler, list[str]]:
    if words[0] == "no" and len(words) > 1:
        name, rest = "no " + words[1], words[2:]
    else:
        name, rest = words[0], words[1:]
    handler = COMMANDS.get(name)
    if handler is None:
        raise CommandError(f"do_cmd: ignoring command starting with '{words[0]}'")
    return name, handler, rest


def execute(state: State, line: str) -> str:
    """Run one command line; raises CommandError on any user mistake."""
    if len(line) > MAX_LINE:
        raise CommandError(f"command longer than {MAX_LINE} bytes")
    words = split(line)
    if not words:
        return ""
    name, handler, args = lookup(words)
    base = name[3:] if name.startswith("no ") else name
    try:
        return handler(state, args)
    except (AddressError, AclError) as e:
        raise CommandError(f"{base}: {e}") from None


def answer(state: State, line: str) -> str:
    """The control port's answer: the command's output, or its error as a line."""
    try:
        return execute(state, line)
    except CommandError as e:
        return f"{e}\n"


def run_lines(state: State, lines, origin: str) -> str:
    """Run commands from a file or the command line; errors name origin and line."""
    out = []
    for number_, line in enumerate(lines, 1):
        try:
            out.append(terminated(execute(state, line)))
        except CommandError as e:
            raise CommandError(f"{origin}:{number_}: {e}") from None
    return "".join(out)


_including: list[str] = []


def scratch_copy(state: State) -> State:
    """A State with the running configuration (replayed from `dump`) and nothing live."""
    copy = State()
    for attr in ("listen", "udp", "allow_exit", "config_file", "control"):
        setattr(copy, attr, getattr(state, attr))
    run_lines(copy, dump(state).splitlines(), "(running configuration)")
    return copy


def load_config(state: State, path: str) -> str:
    """-F at start-up: run the file (its answers back) and remember the servers it
    defines, so that a reload of a file that no longer defines one removes it."""
    answers = run_file(state, path)
    state.config_servers = defined_servers(path)
    return answers


def reload_file(state: State, path: str) -> None:
    """SIGHUP: re-read the -F file, all or nothing. It runs against a scratch copy first;
    only if every line passes there does it run for real. A server the file defined
    before and no longer does is removed (its slot emptied: connections to it finish)."""
    run_file(scratch_copy(state), path)
    run_file(state, path)
    defined = defined_servers(path)
    for index in sorted(state.config_servers - defined):
        state.remove_server(index)
    state.config_servers = defined


def defined_servers(path: str) -> set[int]:
    """The server numbers a config file's own `server N ...` lines name."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {int(words[1]) for words in map(split, lines)
            if len(words) > 1 and words[0] == "server" and words[1].isdigit()}


def run_file(state: State, path: str) -> str:
    if path in _including or len(_including) > 8:
        raise CommandError(f"include: {path}: included from itself or nested too deep")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:   # bad bytes: a bad line
            lines = f.read().splitlines()
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None
    _including.append(path)
    try:
        return run_lines(state, lines, path)
    finally:
        _including.pop()
