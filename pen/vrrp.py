"""pen-setup vrrp: several pen boxes share one address; keepalived decides which one holds it.

    pen-setup vrrp --interface IF --vip ADDR/LEN --priority N [--router-id N]
                   [--peer ADDR ...] [--check-port PORT] [--nopreempt] [--pid-file FILE]
                   (--print | --write FILE)

`render` (pure) turns the settings into a keepalived.conf: one vrrp_instance holding the VIP,
tracking a vrrp_script that runs `python -m pen.vrrp check 127.0.0.1:PORT`. The check fails
when nothing accepts a TCP connection there within a second, so a box whose pen died (not
only a dead box) enters FAULT, releases the VIP and the next priority takes it over.
Unicast adverts go to the peers when any are given; otherwise VRRP's multicast group.

keepalived runs scripts at most once a second, and its process tracking (the kernel's proc
connector) answers only in the initial network namespace, so it is blind inside containers.
With --pid-file the instance also tracks a file that `python -m pen.vrrp watch PIDFILE`
keeps: 0 while pen runs (and accepts on the check port), 1 the moment it exits (a pidfd
wakes it); keepalived reads the file on inotify, so the box enters FAULT within
milliseconds. Every state change goes through `python -m pen.vrrp notify LOG`, which also
logs a split brain: a master hearing a lower-priority master (both held the VIP).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import select
import socket
import sys
import time
from dataclasses import dataclass

TRACK_FILE = "/run/pen-vrrp/pen-running"
NOTIFY_LOG = "/var/log/pen-vrrp.log"
LOG_BOUND = 1 << 20             # bytes; the notify log then starts again beside LOG.1


class VrrpError(ValueError):
    pass


@dataclass(frozen=True)
class Vrrp:
    interface: str
    vip: str                          # ADDR/LEN
    priority: int
    router_id: int = 51
    peers: tuple[str, ...] = ()
    check_port: int = 80
    check_host: str = "127.0.0.1"
    preempt: bool = True
    advert_int: float = 1             # seconds; below 1 (or fractions) needs VRRPv3
    script_user: str = "nobody"
    python: str = sys.executable
    pid_file: str | None = None       # pen's -p file: track `pen.vrrp watch`'s file too
    track_file: str = TRACK_FILE
    notify_log: str = NOTIFY_LOG

    def validate(self) -> None:
        if not self.interface or len(self.interface) > 15 or any(c.isspace() or c in '"/'
                                                                 for c in self.interface):
            raise VrrpError(f"--interface {self.interface!r}: not an interface name")
        if "/" not in self.vip:
            raise VrrpError(f"--vip {self.vip}: give ADDR/LEN, e.g. 192.0.2.10/24")
        try:
            vip = ipaddress.ip_interface(self.vip)
        except ValueError:
            raise VrrpError(f"--vip {self.vip}: not an address/prefix length") from None
        if not 1 <= self.priority <= 254:
            raise VrrpError(f"--priority {self.priority}: must be 1..254 "
                            "(255 is for the owner of a real address)")
        if not 1 <= self.router_id <= 255:
            raise VrrpError(f"--router-id {self.router_id}: must be 1..255")
        if not self.script_user or any(c.isspace() or c == '"' for c in self.script_user):
            raise VrrpError(f"--script-user {self.script_user!r}: not a user name")
        if not 1 <= self.check_port <= 65535:
            raise VrrpError(f"--check-port {self.check_port}: must be 1..65535")
        if not (self.advert_int in range(1, 256) or (
                0.01 <= self.advert_int <= 40.95
                and abs(self.advert_int * 100 - round(self.advert_int * 100)) < 1e-9)):
            raise VrrpError(f"--advert-int {self.advert_int:g}: keepalived takes 1..255 whole "
                            "seconds, or 0.01..40.95 in hundredths (VRRPv3)")
        for option, path in (("--pid-file", self.pid_file), ("--track-file", self.track_file),
                             ("--notify-log", self.notify_log)):
            if path is not None and (not path.startswith("/") or any(
                    c.isspace() or c in '"\\' for c in path)):
                raise VrrpError(f"{option} {path!r}: give an absolute path without spaces")
        for peer in self.peers:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                raise VrrpError(f"--peer {peer}: not an IP address") from None
            if address.version != vip.version:
                raise VrrpError(f"--peer {peer}: not the VIP's address family")
            if address == vip.ip:
                raise VrrpError(f"--peer {peer}: is the VIP itself; give the other boxes' "
                                "own addresses")

    @property
    def version3(self) -> bool:
        """VRRPv3: needed for IPv6 and for adverts more often than once a second."""
        return ipaddress.ip_interface(self.vip).version == 6 or \
            self.advert_int not in range(1, 256)

    @property
    def instance(self) -> str:
        return f"pen_vip_{self.router_id}"


def render(vrrp: Vrrp) -> str:
    """keepalived.conf text for `vrrp` (validated first)."""
    vrrp.validate()
    vip = ipaddress.ip_interface(vrrp.vip)
    check = f"{vrrp.python} -m pen.vrrp check {vrrp.check_host}:{vrrp.check_port}"
    notify = f"{vrrp.python} -m pen.vrrp notify {vrrp.notify_log}"
    lines = [
        "# written by pen-setup vrrp: pen's VIP, held by the healthiest box",
        "global_defs {",
        f"    router_id pen_{vrrp.router_id}",
        "    enable_script_security",          # refuse checks that non-root users could edit
        f"    script_user {vrrp.script_user}",
        "}",
        "",
        "# fails when pen does not accept a connection: this box then enters FAULT",
        "vrrp_script pen_alive {",
        f'    script "{check}"',
        "    interval 1",
        "    timeout 2",
        "    fall 2",
        "    rise 2",
        "}",
        "",
    ]
    if vrrp.pid_file:
        lines += [
            f"# 0 while pen (pid in {vrrp.pid_file}) runs, 1 from the moment it exits:",
            f"# kept by `{vrrp.python} -m pen.vrrp watch {vrrp.pid_file} "
            f"--check {vrrp.check_host}:{vrrp.check_port} --file {vrrp.track_file}`",
            "track_file pen_running {",
            f'    file "{vrrp.track_file}"',
            "    weight 0",                    # non-zero means FAULT, at once (inotify)
            "    init_file 1",                 # no watcher yet: not healthy
            "}",
            "",
        ]
    lines += [
        f"vrrp_instance {vrrp.instance} {{",
        "    state BACKUP",                    # the election, not the file, picks the master
        f"    interface {vrrp.interface}",
        f"    virtual_router_id {vrrp.router_id}",
        f"    priority {vrrp.priority}",
        f"    advert_int {vrrp.advert_int:g}",
    ]
    if vrrp.version3:                          # IPv6, or sub-second adverts: only in VRRPv3
        lines.append("    version 3")
    if not vrrp.preempt:
        lines.append("    nopreempt")
    if vrrp.peers:
        # adverts from anyone else (a stray or forged one) are dropped, not obeyed
        lines += ["    check_unicast_src",
                  "    unicast_peer {", *(f"        {peer}" for peer in vrrp.peers), "    }"]
    lines += [
        "    virtual_ipaddress {",
        f"        {vip.with_prefixlen} dev {vrrp.interface}",
        "    }",
        "    track_script {",
        "        pen_alive",
        "    }",
    ]
    if vrrp.pid_file:
        lines += ["    track_file {", "        pen_running", "    }"]
    lines += [
        # the hooks append to a root-owned log, so they run as root (not script_user)
        f'    notify "{notify}" root',
        f'    notify_master_rx_lower_pri "{notify} split-brain" root',
        "}",
    ]
    return "\n".join(lines) + "\n"


# --- the thin I/O part ------------------------------------------------------------------

def check(target: str, timeout: float = 1.0, quiet: bool = False) -> int:
    """Exit status for keepalived: 0 when something accepts a connection at HOST:PORT."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
            return 0
    except (OSError, ValueError) as e:
        if not quiet:
            print(f"pen.vrrp check {target}: {e}", file=sys.stderr)
        return 1


def notify_line(now: float, args: list[str]) -> str:
    """One log line for keepalived's notify arguments (INSTANCE NAME STATE PRIORITY), or for
    the split-brain hook: a master that hears a lower-priority master."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    if args[:1] == ["split-brain"]:
        what = ("SPLIT BRAIN: another box also claimed the VIP as master (it had lost our "
                "adverts); it has the lower priority and yields now")
    elif len(args) >= 3:
        what = f"{args[0].lower()} {args[1]} is {args[2]}" + (
            f" (priority {args[3]})" if len(args) > 3 else "")
    else:
        what = "called with " + (" ".join(args) or "nothing")
    return f"{stamp} {socket.gethostname()} {what}\n"


def notify(log: str, args: list[str]) -> int:
    """Append a line to LOG (bounded: a full log moves to LOG.1); never fails keepalived.
    A split brain is logged once, not for each of the lower master's adverts."""
    now = time.time()
    line = notify_line(now, args)
    try:
        if os.path.getsize(log) > LOG_BOUND:
            os.replace(log, log + ".1")
        if args[:1] == ["split-brain"]:
            with open(log, "rb") as f:
                f.seek(max(0, os.path.getsize(log) - 4096))
                last = f.read().decode(errors="replace").splitlines()[-1:]
            if last and "SPLIT BRAIN" in last[0] and " is " not in last[0]:
                return 0    # the same split brain, still healing
    except OSError:
        pass
    try:
        with open(log, "a") as f:
            f.write(line)
    except OSError as e:
        print(f"pen.vrrp notify {log}: {e.strerror}: {line}", file=sys.stderr, end="")
    return 0


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _pidfd(pid: int | None) -> int | None:
    """A pidfd for a live process (readable once it exits), or None."""
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if select.select([fd], [], [], 0)[0]:          # already exited (a zombie not yet reaped)
        os.close(fd)
        return None
    return fd


def _set(path: str, value: int, last: int | None) -> int:
    if value != last:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:                 # keepalived rereads it on close (inotify)
            f.write(f"{value}\n")
    return value


def watch(pid_file: str, target: str, track_file: str, poll: float = 0.2,
          rounds: int | None = None) -> int:
    """Keep TRACK_FILE at 0 while pen (PID_FILE) runs and accepts at TARGET, and write 1 the
    moment it exits: a pidfd wakes us. A new pid in the file (an upgrade, a restart) is
    followed without a flap when it is already there as the old one exits."""
    last = None
    while rounds is None or (rounds := rounds - 1) >= 0:
        fd = _pidfd(read_pid(pid_file))
        if fd is None:
            last = _set(track_file, 1, last)
            time.sleep(poll)
            continue
        try:
            if check(target, timeout=poll, quiet=True) != 0:    # started, not listening yet (or hung)
                last = _set(track_file, 1, last)
                time.sleep(poll)
                continue
            last = _set(track_file, 0, last)
            while not select.select([fd], [], [], 1.0)[0]:
                if read_pid(pid_file) != _pid_of(fd):
                    break                           # a new pen took over: check it
            else:
                successor = _pidfd(read_pid(pid_file))
                if successor is None:
                    last = _set(track_file, 1, last)
                else:
                    os.close(successor)
        finally:
            os.close(fd)
    return 0


def _pid_of(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def write(path: str, text: str) -> None:
    """Replace `path` atomically; an existing, different file is kept as PATH.bak."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
        os.replace(path, path + ".bak")
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        if len(argv) != 2:
            print("usage: python -m pen.vrrp check HOST:PORT", file=sys.stderr)
            return 1
        return check(argv[1])
    if argv[:1] == ["notify"]:
        if len(argv) < 2:
            print("usage: python -m pen.vrrp notify LOG [keepalived's arguments]",
                  file=sys.stderr)
            return 1
        return notify(argv[1], argv[2:])
    if argv[:1] == ["watch"]:
        parser = argparse.ArgumentParser(
            prog="python -m pen.vrrp watch",
            description="keep keepalived's track file at 0 while pen runs, 1 once it exits")
        parser.add_argument("pid_file", help="pen's -p file")
        parser.add_argument("--check", default="127.0.0.1:80",
                            help="HOST:PORT pen accepts on once started (default 127.0.0.1:80)")
        parser.add_argument("--file", default=TRACK_FILE, help=f"track file [{TRACK_FILE}]")
        args = parser.parse_args(argv[1:])
        try:
            return watch(args.pid_file, args.check, args.file)
        except OSError as e:
            print(f"pen.vrrp watch: {args.file}: {e.strerror}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    parser = argparse.ArgumentParser(
        prog="pen-setup vrrp",
        description="keepalived.conf for a VIP that moves away from a box whose pen died")
    parser.add_argument("--interface", required=True, help="interface that carries the VIP")
    parser.add_argument("--vip", required=True, help="the shared address, ADDR/LEN")
    parser.add_argument("--priority", required=True, type=int,
                        help="1..254; the highest healthy box holds the VIP")
    parser.add_argument("--router-id", type=int, default=51,
                        help="virtual router id, the same on every box (default 51)")
    parser.add_argument("--peer", action="append", default=[],
                        help="another box's own address: unicast adverts (repeatable); "
                        "multicast when none")
    parser.add_argument("--check-port", type=int, default=80,
                        help="a port pen listens on at 127.0.0.1 (its listen port when it "
                        "listens on all addresses, or its -C control port); default 80")
    parser.add_argument("--nopreempt", action="store_true",
                        help="a recovered higher-priority box does not take the VIP back")
    parser.add_argument("--script-user", default="nobody",
                        help="user that runs the check (it only opens a connection); it must "
                        "be able to run this Python (default nobody)")
    parser.add_argument("--advert-int", type=float, default=1,
                        help="seconds between adverts: 1..255, or 0.01..40.95 (VRRPv3)")
    parser.add_argument("--pid-file", help="pen's -p file: also track the file that "
                        "`python -m pen.vrrp watch PIDFILE` keeps (FAULT within "
                        "milliseconds of pen's exit)")
    parser.add_argument("--track-file", default=TRACK_FILE,
                        help=f"the file the watcher writes [{TRACK_FILE}]")
    parser.add_argument("--notify-log", default=NOTIFY_LOG,
                        help=f"where state changes and split brains are logged [{NOTIFY_LOG}]")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--print", action="store_true", help="write the config to stdout")
    out.add_argument("--write", metavar="FILE",
                     help="write the config there, e.g. /etc/keepalived/keepalived.conf")
    args = parser.parse_args(argv)
    vrrp = Vrrp(args.interface, args.vip, args.priority, args.router_id, tuple(args.peer),
                args.check_port, preempt=not args.nopreempt, advert_int=args.advert_int,
                script_user=args.script_user, pid_file=args.pid_file,
                track_file=args.track_file, notify_log=args.notify_log)
    try:
        text = render(vrrp)
        if args.print:
            sys.stdout.write(text)
        else:
            write(args.write, text)
            print(f"wrote {args.write}; start or reload keepalived to apply it")
            if args.pid_file:      # keepalived creates the track file, not its directory
                os.makedirs(os.path.dirname(args.track_file), exist_ok=True)
                print(f"and keep running beside it: {vrrp.python} -m pen.vrrp watch "
                      f"{args.pid_file} --check 127.0.0.1:{args.check_port} "
                      f"--file {args.track_file}")
    except VrrpError as e:
        print(f"pen-setup vrrp: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pen-setup vrrp: {args.write}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
