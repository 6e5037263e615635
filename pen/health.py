"""Active health checks, operator states and slow start: the data and the decisions.

Pure: a check's words parse into a `Check`; each server's `Health` counts passed and failed
checks (rise/fall) and says when the server changes state; `admin` is the operator's word
(ready, drain, maint); `share` is the slow-start ramp. The probes that do the I/O live in
probes.py, the scheduler in monitor.py.
"""

from __future__ import annotations

import binascii
import re
import time
from bisect import bisect_left
from dataclasses import dataclass, field

ADMIN_STATES = ("ready", "drain", "maint")
DNS_TYPES = ("A", "AAAA", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "SRV", "CAA", "ANY")
DNS_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
RAMP_FLOOR = 0.1                 # a server coming back starts at 10% of its share
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_PAYLOAD = 1024               # bytes of a udp/tcp_expect payload or prefix
_TOKEN = re.compile(r"[!-~]+")   # printable ASCII, no spaces: a path, a name, a substring


class CheckError(ValueError):
    """A bad check command; the message names the bad word."""


@dataclass(frozen=True)
class Check:
    """One check: its type and its arguments as given (for `write`) and parsed."""

    kind: str
    words: tuple = ()            # the arguments as written
    method: str = ""             # http
    path: str = ""               # http
    status: int = 0              # http: 0 = any 2xx or 3xx
    body: bytes = b""            # http: a substring the body must contain
    name: str = ""               # dns: the name asked for; tftp: the file
    qtype: str = "A"             # dns
    rcode: str = "NOERROR"       # dns
    send: bytes = b""            # udp, tcp_expect
    expect: bytes = b""          # udp, tcp_expect: a prefix the answer must start with

    def command(self) -> str:
        return " ".join((self.kind, *self.words))


def _hex(word: str, what: str) -> bytes:
    try:
        value = binascii.unhexlify(word)
    except (binascii.Error, ValueError):
        raise CheckError(f"{what}: expected hex bytes, got {word!r}") from None
    if len(value) > MAX_PAYLOAD:
        raise CheckError(f"{what}: at most {MAX_PAYLOAD} bytes, got {len(value)}")
    return value


def _token(word: str, what: str) -> str:
    if not _TOKEN.fullmatch(word) or len(word) > 255:
        raise CheckError(f"{what}: bad {word!r}")
    return word


def _count(args: list, least: int, most: int, usage: str) -> None:
    if not least <= len(args) <= most:
        raise CheckError(f"usage: healthcheck {usage}")


def parse_check(words: list) -> Check:
    """`TYPE [ARGS]` -> Check; CheckError names the bad word."""
    if not words:
        raise CheckError("usage: healthcheck tcp|http|dns|smtp|tftp|udp|tcp_expect [ARGS]")
    kind, args = words[0], list(words[1:])
    given = tuple(args)
    if kind in ("tcp", "smtp"):
        _count(args, 0, 0, kind)
        return Check(kind, given)
    if kind == "http":
        _count(args, 2, 4, "http METHOD PATH [STATUS] [BODY_SUBSTRING]")
        method = args[0].upper()
        if method not in METHODS:
            raise CheckError(f"healthcheck http: unknown method {args[0]!r}")
        path = _token(args[1], "healthcheck http path")
        if not path.startswith("/"):
            raise CheckError(f"healthcheck http: path must start with '/', got {args[1]!r}")
        status = 0
        if len(args) > 2:
            if not (args[2].isdigit() and 100 <= int(args[2]) <= 599):
                raise CheckError(f"healthcheck http: bad status {args[2]!r} (100-599)")
            status = int(args[2])
        body = _token(args[3], "healthcheck http body").encode() if len(args) > 3 else b""
        return Check(kind, given, method=method, path=path, status=status, body=body)
    if kind == "dns":
        _count(args, 1, 3, "dns NAME [TYPE] [RCODE]")
        name = _token(args[0], "healthcheck dns name")
        if len(name) > 253 or ".." in name.strip("."):
            raise CheckError(f"healthcheck dns: bad name {args[0]!r}")
        qtype = args[1].upper() if len(args) > 1 else "A"
        if qtype not in DNS_TYPES:
            raise CheckError(f"healthcheck dns: unknown type {args[1]!r}")
        rcode = args[2].upper() if len(args) > 2 else "NOERROR"
        if rcode not in DNS_RCODES:
            raise CheckError(f"healthcheck dns: unknown rcode {args[2]!r}")
        return Check(kind, given, name=name, qtype=qtype, rcode=rcode)
    if kind == "tftp":
        _count(args, 1, 1, "tftp FILE")
        return Check(kind, given, name=_token(args[0], "healthcheck tftp file"))
    if kind == "udp":
        _count(args, 1, 2, "udp SEND_HEX [EXPECT_HEX_PREFIX]")
        send = _hex(args[0], "healthcheck udp")
        if not send:
            raise CheckError("healthcheck udp: nothing to send")
        expect = _hex(args[1], "healthcheck udp") if len(args) > 1 else b""
        return Check(kind, given, send=send, expect=expect)
    if kind == "tcp_expect":
        _count(args, 2, 2, "tcp_expect SEND_HEX EXPECT_HEX_PREFIX")
        send, expect = _hex(args[0], "healthcheck tcp_expect"), _hex(args[1], "healthcheck tcp_expect")
        if not expect:
            raise CheckError("healthcheck tcp_expect: nothing to expect")
        return Check(kind, given, send=send, expect=expect)
    raise CheckError(f"healthcheck: unknown type {kind!r} "
                     "(tcp, http, dns, smtp, tftp, udp or tcp_expect)")


OFF = Check("off")               # `server N healthcheck off`: no check, whatever the default


@dataclass
class Health:
    """One server's check results: up or down, the runs of passes and failures, the last
    result, when the state last changed, and how long checks took."""

    up: bool = True
    passes: int = 0              # passed checks in a row
    fails: int = 0               # failed checks in a row
    last: str = ""               # "" before the first check, "OK", or the reason it failed
    since: float = field(default_factory=time.time)   # when the state last changed
    checks: int = 0
    durations: list = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def record(self, ok: bool, reason: str, now: float, rise: int, fall: int,
               duration: float = 0.0) -> str | None:
        """Count one check; the log line's tail when the server changes state, else None."""
        self.checks += 1
        self.duration_sum += duration
        self.durations[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.last = "OK" if ok else reason
        if ok:
            self.passes, self.fails = self.passes + 1, 0
            if not self.up and self.passes >= rise:
                self.up, self.since = True, now
                return f"up: {self.last} ({self.passes}/{rise})"
        else:
            self.fails, self.passes = self.fails + 1, 0
            if self.up and self.fails >= fall:
                self.up, self.since = False, now
                return f"down: {reason} ({self.fails}/{fall})"
        return None

    def reset(self, now: float) -> None:
        """The check changed or went away: up, and nothing known."""
        changed = not self.up
        self.up, self.passes, self.fails, self.last = True, 0, 0, ""
        if changed:
            self.since = now


@dataclass
class HealthSettings:
    """The `healthcheck*`, `slowstart` and `metrics_port` settings, and the hooks through
    which the running balancer hears of changes (None in pure tests)."""

    check: Check | None = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    slowstart: float = 0.0
    metrics_port: object = None                      # addr.Endpoint


def effective(settings: HealthSettings, server) -> Check | None:
    """The check server gets: its own, or the default; None for none."""
    check = server.check if server.check is not None else settings.check
    return None if check is OFF else check


def state_word(server, now: float) -> str:
    """up, down, drain or maint (`health`, the status page); the operator's word first."""
    if server.admin != "ready":
        return server.admin
    return "up" if server.health.up and not server.blacklisted(now) else "down"


def set_admin(server, word: str, now: float) -> None:
    if word not in ADMIN_STATES:
        raise CheckError(f"server {server.index}: unknown state {word!r} (ready, drain, maint)")
    if word == server.admin:
        return
    server.admin = word
    server.health.since = now
    if word == "ready":
        comes_back(server, now)


def comes_back(server, now: float) -> None:
    """The server returns (check rise, blacklist end, ready): slow start begins here."""
    server.ramp_start = now
    server.ramp_credit = 0.0


def share(server, now: float, slowstart: float) -> float:
    """The fraction of its share the server gets now: RAMP_FLOOR to 1 over slowstart s."""
    if slowstart <= 0:
        return 1.0
    if server.blacklist_until and server.blacklist_until <= now:   # a blacklisting ended
        comes_back(server, server.blacklist_until)
        server.blacklist_until = 0.0
    if not server.ramp_start:
        return 1.0
    elapsed = now - server.ramp_start
    if elapsed >= slowstart:
        server.ramp_start = 0.0            # ramp done: later calls return at once
        return 1.0
    return RAMP_FLOOR + (1.0 - RAMP_FLOOR) * max(elapsed, 0.0) / slowstart


def admit(server, now: float, slowstart: float) -> bool:
    """Slow start in rotation: a server at share f is taken f of the times its turn comes
    (a credit that grows by f each turn), deterministic so the ramp is smooth."""
    fraction = share(server, now, slowstart)
    if fraction >= 1.0:
        return True
    server.ramp_credit += fraction
    if server.ramp_credit >= 1.0:
        server.ramp_credit -= 1.0
        return True
    return False


def health_line(server, settings: HealthSettings, now: float) -> str:
    """A `health` answer line: one word per value (a reason's spaces become '_')."""
    check = effective(settings, server)
    last = server.health.last.replace(" ", "_") or "-"
    return (f"{server.index} addr {server.address} port {server.port} "
            f"state {state_word(server, now)} check {check.kind if check else 'none'} "
            f"last {last} since {max(now - server.health.since, 0):.1f}\n")
