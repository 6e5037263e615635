"""The health-check, operator-state, slow-start and metrics commands, in the command
registry (registry.py), so -O, -F, the control port and `write` all carry them:

  healthcheck [TYPE ARGS] / no healthcheck      healthcheck_interval|timeout|rise|fall [V]
  server N healthcheck TYPE ARGS|off            server N drain|maint|ready
  slowstart [S]      metrics_port [[ADDR:]PORT] / no metrics_port      health
"""

from __future__ import annotations

import time

from . import health
from .addr import AddressError, parse_listen
from .errors import CommandError
from .registry import at_most, command, number, show
from .state import State

SERVER_WORDS = ("healthcheck",) + health.ADMIN_STATES
SETTINGS = (            # name, attribute, minimum, integer, default
    ("healthcheck_interval", "interval", 0.01, False, 2.0),
    ("healthcheck_timeout", "timeout", 0.01, False, 1.0),
    ("healthcheck_rise", "rise", 1, True, 2),
    ("healthcheck_fall", "fall", 1, True, 3),
    ("slowstart", "slowstart", 0, False, 0.0),
)


def _parse(words: list) -> health.Check:
    try:
        return health.parse_check(words)
    except health.CheckError as e:
        raise CommandError(str(e)) from None


def _changed(state: State) -> None:
    state.process.health_changed()


def _restart(servers) -> None:
    """Servers whose check changed: their results start over."""
    now = time.time()
    for server in servers:
        server.health.reset(now)


@command("healthcheck")
def healthcheck(state: State, args: list) -> str:
    if not args:
        return state.health.check.command() if state.health.check else ""
    check = _parse(args)
    if check != state.health.check:
        state.health.check = check
        _restart(s for s in state.servers if s.check is None)
        _changed(state)
    return ""


@command("no healthcheck")
def no_healthcheck(state: State, args: list) -> str:
    at_most(args, 0, "no healthcheck")
    if state.health.check is not None:
        state.health.check = None
        _restart(s for s in state.servers if s.check is None)
        _changed(state)
    return ""


def _setting(name: str, attr: str, minimum, integer: bool) -> None:
    @command(name)
    def handler(state: State, args: list) -> str:
        if at_most(args, 1, f"{name} [{'N' if integer else 'S'}]"):
            setattr(state.health, attr, number(args[0], name, minimum, integer))
            _changed(state)
            return ""
        return show(getattr(state.health, attr))


for _name, _attr, _minimum, _integer, _default in SETTINGS:
    _setting(_name, _attr, _minimum, _integer)


@command("metrics_port")
def metrics_port(state: State, args: list) -> str:
    if not at_most(args, 1, "metrics_port [[ADDR:]PORT]"):
        return str(state.health.metrics_port) if state.health.metrics_port else ""
    try:
        endpoint = parse_listen(args[0], "tcp")
    except AddressError as e:
        raise CommandError(f"metrics_port: {e}") from None
    if endpoint.is_unix:
        raise CommandError(f"metrics_port: expected [ADDR:]PORT, got {args[0]!r}")
    old = state.health.metrics_port
    if str(endpoint) != str(old):
        state.health.metrics_port = endpoint
        try:
            _changed(state)
        except CommandError:
            state.health.metrics_port = old
            raise
    return ""


@command("no metrics_port")
def no_metrics_port(state: State, args: list) -> str:
    at_most(args, 0, "no metrics_port")
    if state.health.metrics_port is not None:
        state.health.metrics_port = None
        _changed(state)
    return ""


@command("health", whole=True)
def health_(state: State, args: list) -> str:
    at_most(args, 0, "health")
    now = time.time()
    return "".join(health.health_line(s, state.health, now) for s in state.servers)


def server_words(state: State, args: list) -> str:
    """`server N healthcheck TYPE ARGS|off` and `server N drain|maint|ready`."""
    index = number(args[0], "server")
    if index > 10000:
        raise CommandError(f"server: number too large: {index}")
    word, rest = args[1], args[2:]
    if word not in SERVER_WORDS:
        raise CommandError(f"server {index}: unknown word {word!r} "
                           "(drain, maint, ready, healthcheck, or FIELD VALUE pairs)")
    if word == "healthcheck":
        if not rest:
            raise CommandError(f"usage: server {index} healthcheck TYPE [ARGS]|off")
        check = health.OFF if rest == ["off"] else _parse(rest)
        server = state.server(index)
        if check != server.check:
            server.check = check
            _restart([server])
            _changed(state)
        return ""
    at_most(rest, 0, f"server {index} {word}")
    server = state.server(index)
    health.set_admin(server, word, time.time())
    return ""


def dump_lines(state: State) -> list[str]:
    """What `write` adds for these settings: only what differs from the defaults, so a
    configuration without them writes what it wrote before."""
    settings = state.health
    lines = [f"healthcheck {settings.check.command()}"] if settings.check else []
    lines += [f"{name} {show(getattr(settings, attr))}"
              for name, attr, _, _, default in SETTINGS if getattr(settings, attr) != default]
    for server in state.servers:
        if server.check is not None:
            lines.append(f"server {server.index} healthcheck {server.check.command()}")
        if server.admin != "ready":
            lines.append(f"server {server.index} {server.admin}")
    if settings.metrics_port is not None:
        lines.append(f"metrics_port {settings.metrics_port}")
    return lines

