"""pen-setup service NAME [pen arguments]: a systemd unit for one pen.

Type=notify (pen says READY=1 once it serves, RELOADING=1 on SIGHUP, MAINPID= when a new
copy takes over after SIGUSR2), `systemctl reload` sends SIGHUP, and the sandbox is as tight
as pen's arguments allow: a DynamicUser unless pen drops privileges itself (-u), only the
capabilities its features need, a read-only system but for the files it writes.
"""

from __future__ import annotations

import getopt
import os
import shlex
import shutil
import sys

from .cli import OPTSTRING
from .errors import UsageError

UNIT_DIR = "/etc/systemd/system"


def pen_command() -> list[str]:
    """How systemd starts this pen: the installed `pen`, or this Python with -m pen."""
    found = shutil.which("pen")
    return [found] if found else [sys.executable, "-m", "pen"]


def render(name: str, args: list[str], command: list[str] | None = None) -> str:
    """The unit text for `pen ARGS` under the name pen-NAME."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"service {name!r}: use letters, digits, - and _ only")
    try:
        pairs, rest = getopt.gnu_getopt(args, OPTSTRING)
    except getopt.GetoptError as e:
        raise UsageError(f"service: -{e.opt}: {e.msg}") from None
    if not rest:
        raise UsageError("service: give pen's listen address and servers after the name")
    options = [opt for opt, _ in pairs]
    values = {opt: value for opt, value in pairs}
    if "-f" in options or "-p" in options:
        raise UsageError("service: leave out -f and -p: the unit runs pen in the foreground "
                         "with its pid file under /run")
    commands = " ".join(value for opt, value in pairs if opt in ("-O", "-o"))
    runtime_dir = f"pen-{name}"
    pidfile = f"/run/{runtime_dir}/pen.pid"
    capabilities = ["CAP_NET_BIND_SERVICE"]
    families = ["AF_INET", "AF_INET6", "AF_UNIX"]
    if "transparent" in commands:
        capabilities.append("CAP_NET_ADMIN")
    if "dsr_if" in commands:
        capabilities += ["CAP_NET_ADMIN", "CAP_NET_RAW"]
        families.append("AF_PACKET")
    if "-u" in options:                      # pen starts as root, then drops to the user
        capabilities += ["CAP_SETUID", "CAP_SETGID"]
    if "-j" in options:
        capabilities.append("CAP_SYS_CHROOT")
    writable = sorted({os.path.dirname(os.path.abspath(values[opt]))
                       for opt in ("-l", "-w") if opt in values and ":" not in values[opt]})
    exec_start = shlex.join([*(command or pen_command()), "-f", "-p", pidfile, *args])
    lines = [
        "[Unit]",
        f"Description=pen load balancer {name}",
        "Documentation=man:pen(1)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=all",                  # a new copy after SIGUSR2 sends MAINPID=
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"PIDFile={pidfile}",
        f"RuntimeDirectory={runtime_dir}",
        "RuntimeDirectoryPreserve=yes",      # the pid file outlives a copy that hands over
        "Restart=on-failure",
        "TimeoutStopSec=45",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        f"RestrictAddressFamilies={' '.join(families)}",
        f"CapabilityBoundingSet={' '.join(dict.fromkeys(capabilities))}",
        f"AmbientCapabilities={' '.join(dict.fromkeys(capabilities))}",
    ]
    if "-u" not in options:
        lines.append("DynamicUser=yes")
    if writable:
        lines.append(f"ReadWritePaths={' '.join(writable)}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """pen-setup service [--output FILE|-] NAME [pen arguments]"""
    output = None
    if argv[:1] == ["--output"] and len(argv) >= 2:
        output, argv = argv[1], argv[2:]
    if not argv or argv[0].startswith("-"):
        print("usage: pen-setup service [--output FILE|-] NAME [pen arguments]",
              file=sys.stderr)
        return 1
    name, args = argv[0], argv[1:]
    try:
        text = render(name, args)
    except UsageError as e:
        print(f"pen-setup: {e}", file=sys.stderr)
        return 1
    if output == "-":
        sys.stdout.write(text)
        return 0
    path = output or os.path.join(UNIT_DIR, f"pen-{name}.service")
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        print(f"pen-setup: {path}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"pen-setup: wrote {path}; next: systemctl daemon-reload && "
          f"systemctl enable --now pen-{name}")
    return 0
