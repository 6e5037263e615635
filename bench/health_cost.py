#!/usr/bin/env python3
"""What active health checks cost: pen-lb with N servers (200) and a `tcp` check every
S seconds (1), idle otherwise, measured in CPU seconds per second of pen's process, beside
the same pen without checks.

    python3 bench/health_cost.py [--servers 200] [--interval 1] [--seconds 20] [--check tcp]

The servers are N listening sockets on 127.0.0.1 in this process, accepting and closing
in a thread; only pen's own CPU time (utime + stime of its process) is counted.
"""

import argparse
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of pid."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def servers(n: int):
    """n listeners that accept and close; returns their ports and a stop function."""
    selector, socks = selectors.DefaultSelector(), []
    for _ in range(n):
        sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        socks.append(sock)
    running = [True]

    def serve():
        while running[0]:
            for key, _ in selector.select(0.2):
                try:
                    conn, _ = key.fileobj.accept()
                    conn.close()
                except OSError:
                    pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        running[0] = False
        thread.join(2)
        for sock in socks:
            sock.close()
    return [s.getsockname()[1] for s in socks], stop


def measure(ports, options, seconds: float, warmup: float) -> tuple[float, float]:
    """pen's (user, system) CPU seconds per wall second over `seconds`, after `warmup`."""
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    port = listen.getsockname()[1]
    listen.close()
    argv = [sys.executable, "-m", "pen", "-f", *options, f"127.0.0.1:{port}",
            *[f"127.0.0.1:{p}" for p in ports]]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            sys.exit(f"bench/health_cost.py: pen exited {proc.returncode}")
        (user0, sys0), start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        user1, sys1 = cpu_seconds(proc.pid)
        wall = time.monotonic() - start
        return (user1 - user0) / wall, (sys1 - sys0) / wall
    finally:
        proc.terminate()
        proc.wait(15)


def floor(ports, count: int = 4000) -> float:
    """CPU seconds (this thread's user + system) of one bare connect and reset-close from
    Python: what any TCP check of a loopback server costs, whoever makes it."""
    reset = struct.pack("ii", 1, 0)
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect(("127.0.0.1", ports[i % len(ports)]))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        sock.close()
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--check", default="tcp", help="the healthcheck command's arguments")
    args = parser.parse_args()
    if not (1 <= args.servers <= 2000 and 0.05 <= args.interval and 1 <= args.seconds <= 300):
        parser.error("--servers 1-2000, --interval >= 0.05, --seconds 1-300")
    ports, stop = servers(args.servers)
    try:
        warmup = max(2.0, 2 * args.interval)
        idle = measure(ports, [], args.seconds, warmup)
        checked = measure(ports, ["-O", f"healthcheck {args.check}",
                                  "-O", f"healthcheck_interval {args.interval:g}"],
                          args.seconds, warmup)
        bare = floor(ports) if args.check == "tcp" else None
    finally:
        stop()
    cost = sum(checked) - sum(idle)
    print(f"{args.servers} servers, `healthcheck {args.check}` every {args.interval:g} s, "
          f"{args.seconds:g} s measured, load average {os.getloadavg()[0]:.2f}")
    for label, (user, system) in (("without checks", idle), ("with checks", checked)):
        print(f"  pen {label + ':':16s}{100 * (user + system):5.2f}% of one core "
              f"(user {100 * user:.2f}%, system {100 * system:.2f}%)")
    print(f"  the checks cost:    {100 * cost:5.2f}% of one core "
          f"({'under' if cost < 0.03 else 'OVER'} the 3% goal)")
    if bare is not None:
        rate = args.servers / args.interval
        print(f"  floor: a bare connect + close from Python costs {1e6 * bare:.0f} us here, "
              f"{100 * bare * rate:.2f}% of one core at {rate:g} a second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
