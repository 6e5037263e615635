"""pen-setup: prepare (and restore) the host for pen's transparent mode.

    pen-setup transparent [--undo] [--dry-run] [--family 4|6|both] [--state FILE]

Transparent mode needs the servers' replies, addressed to the client, delivered to pen's
sockets: a mangle-table DIVERT chain marks packets that belong to a local socket, and a
policy route sends marked packets to the local table. The steps are plain data (`steps`)
and the planners (`plan_apply`, `plan_undo`) are pure, so what would run is testable
without touching the host. Applying only adds what is missing and records what it added in a
state file (one per network namespace); --undo removes exactly those, newest first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from . import service, vrrp

MARK = "1"
TABLE = "100"


@dataclass(frozen=True)
class Step:
    """One piece of host configuration: how to see it, add it and remove it."""

    key: str                     # stable name, recorded in the state file
    check: tuple[str, ...]       # present iff this exits 0 (and prints something, if `output`)
    add: tuple[str, ...]
    remove: tuple[str, ...]
    output: bool = False

    def describe(self) -> str:
        return " ".join(self.add)


def _iptables_steps(tool: str, v: str) -> list[Step]:
    mangle = (tool, "-t", "mangle")
    steps = [Step(f"{v}:chain", (*mangle, "-S", "DIVERT"), (*mangle, "-N", "DIVERT"),
                  (*mangle, "-X", "DIVERT"))]
    for proto in ("tcp", "udp"):
        rule = ("PREROUTING", "-p", proto, "-m", "socket", "-j", "DIVERT")
        steps.append(Step(f"{v}:prerouting-{proto}", (*mangle, "-C", *rule),
                          (*mangle, "-A", *rule), (*mangle, "-D", *rule)))
    for key, rule in (("mark", ("DIVERT", "-j", "MARK", "--set-mark", MARK)),
                      ("accept", ("DIVERT", "-j", "ACCEPT"))):
        steps.append(Step(f"{v}:divert-{key}", (*mangle, "-C", *rule), (*mangle, "-A", *rule),
                          (*mangle, "-D", *rule)))
    return steps


def _routing_steps(ip: tuple[str, ...], v: str, anywhere: str) -> list[Step]:
    rule = ("fwmark", MARK, "lookup", TABLE)
    route = ("local", anywhere, "dev", "lo", "table", TABLE)
    return [
        Step(f"{v}:rule", (*ip, "rule", "list", *rule), (*ip, "rule", "add", *rule),
             (*ip, "rule", "del", *rule), output=True),
        Step(f"{v}:route", (*ip, "route", "show", "table", TABLE, "type", "local", "exact",
                            anywhere), (*ip, "route", "add", *route),
             (*ip, "route", "del", *route), output=True),
    ]


def steps(families: tuple[int, ...] = (4, 6)) -> list[Step]:
    """Everything transparent mode needs, in the order it is applied."""
    out: list[Step] = []
    if 4 in families:
        out += _iptables_steps("iptables", "ipv4") + _routing_steps(("ip", "-4"), "ipv4",
                                                                    "0.0.0.0/0")
    if 6 in families:
        out += _iptables_steps("ip6tables", "ipv6") + _routing_steps(("ip", "-6"), "ipv6", "::/0")
    return out


def plan_apply(all_steps: list[Step], present: set[str]) -> list[Step]:
    """The steps to run: those not yet present, in order."""
    return [step for step in all_steps if step.key not in present]


def plan_undo(all_steps: list[Step], added: set[str], present: set[str]) -> list[Step]:
    """The removals to run: what we added and is still there, newest first (rules before
    the chain that holds them)."""
    return [step for step in reversed(all_steps) if step.key in added and step.key in present]


# --- the thin I/O part ------------------------------------------------------------------

def _run(argv: tuple[str, ...]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise SetupError(f"{argv[0]}: not found (install iptables and iproute2)") from None


class SetupError(Exception):
    pass


def is_present(step: Step) -> bool:
    result = _run(step.check)
    return result.returncode == 0 and (not step.output or bool(result.stdout.strip()))


def default_state_file() -> str:
    """One record per network namespace: /run/pen-setup/transparent.net<inode>.json."""
    try:
        ns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        ns = 0
    return f"/run/pen-setup/transparent.net{ns}.json"


def _load(path: str) -> list[str]:
    try:
        with open(path) as f:
            return list(json.load(f).get("added", []))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise SetupError(f"{path}: unreadable state file: {e}") from None


def _save(path: str, added: list[str]) -> None:
    if not added:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"added": added}, f)


def _execute(step_argv: tuple[str, ...], dry_run: bool, out) -> None:
    print(("would run: " if dry_run else "ran: ") + " ".join(step_argv), file=out)
    if dry_run:
        return
    result = _run(step_argv)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SetupError(f"{' '.join(step_argv)}: {detail[-1] if detail else 'failed'}")


def apply(all_steps: list[Step], state_file: str, dry_run: bool = False, out=None) -> int:
    out = out or sys.stdout
    present = {step.key for step in all_steps if is_present(step)}
    added = _load(state_file)
    todo = plan_apply(all_steps, present)
    for step in all_steps:
        if step.key in present:
            print(f"already there: {step.describe()}", file=out)
    try:
        for step in todo:
            _execute(step.add, dry_run, out)
            if not dry_run:
                added.append(step.key)
    finally:
        if not dry_run:
            _save(state_file, added)
    if not todo:
        print("nothing to do: the host is ready for transparent mode", file=out)
    return 0


def undo(all_steps: list[Step], state_file: str, dry_run: bool = False, out=None) -> int:
    out = out or sys.stdout
    added = _load(state_file)
    if not added:
        print("nothing to undo: pen-setup added nothing here", file=out)
        return 0
    wanted = set(added) & {step.key for step in all_steps}
    present = {step.key for step in all_steps if step.key in wanted and is_present(step)}
    remaining = list(added)
    try:
        for step in plan_undo(all_steps, wanted, present):
            _execute(step.remove, dry_run, out)
            if not dry_run:
                remaining.remove(step.key)
        for key in wanted - present:
            print(f"already gone: {key}", file=out)
            if not dry_run:
                remaining.remove(key)
    finally:
        if not dry_run:
            _save(state_file, remaining)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vrrp"]:
        return vrrp.main(argv[1:])
    if argv[:1] == ["service"]:
        return service.main(argv[1:])
    parser = argparse.ArgumentParser(prog="pen-setup",
                                     description="prepare the host for pen's transparent mode "
                                     "(or `pen-setup vrrp --help`: keepalived for pen's VIP; "
                                     "`pen-setup service NAME [pen arguments]`: a systemd unit)")
    parser.add_argument("feature", choices=["transparent", "vrrp", "service"])
    parser.add_argument("--undo", action="store_true", help="remove what pen-setup added")
    parser.add_argument("--dry-run", action="store_true", help="print, change nothing")
    parser.add_argument("--family", choices=["4", "6", "both"], default="both")
    parser.add_argument("--state", default=None, help="record of what was added "
                        "(default: one file per network namespace under /run/pen-setup)")
    args = parser.parse_args(argv)
    families = (4, 6) if args.family == "both" else (int(args.family),)
    state_file = args.state or default_state_file()
    if os.geteuid() != 0 and not args.dry_run:
        print("pen-setup: needs CAP_NET_ADMIN to change iptables and routing "
              "(run as root)", file=sys.stderr)
        return 1
    try:
        run = undo if args.undo else apply
        return run(steps(families), state_file, args.dry_run)
    except SetupError as e:
        print(f"pen-setup: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
