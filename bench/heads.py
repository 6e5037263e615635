#!/usr/bin/env python3
"""What unfinished request heads cost a balancer with -H: resident memory (RSS) before and
after N connections each send a head that never ends (no blank line), in pieces.

    python3 bench/heads.py [--connections 495] [--sizes 65000,30000] [--piece 1000]
                           [--ours DIR ...] [--no-c-pen]

Each balancer (`python3 -m pen` from each --ours checkout, default this one, and the C pen)
runs `-f -H LISTEN SINK` on 127.0.0.1 in front of a sink that reads and drops everything.
For each head size, a fresh balancer: RSS at rest, then the N connections send their heads,
and once every byte has left the clients (the kernel's send queues are empty) and the
balancer's RSS holds still, RSS again. What became of the connections is counted: held
open, or answered (the status) and closed. A 100-byte head shows what a connection costs
without a head to hold. Loopback only.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)      # bytes not yet acknowledged by the peer


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def unsent(sock) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A server that accepts and reads everything, so no balancer is held back by it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.running = True
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while self.running:
            for key, _ in self.selector.select(0.2):
                if key.fileobj is self.sock:
                    try:
                        conn, _ = self.sock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(key.fileobj)
                    key.fileobj.close()


def wait_listening(port: int, proc, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the balancer exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the balancer did not listen: {proc.args}")


def steady_rss(pid: int, seconds: float = 20) -> int:
    """RSS once it holds still for half a second (bounded by `seconds`)."""
    deadline = time.monotonic() + seconds
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def heads(port: int, count: int, size: int, piece: int):
    """count connections each sending `size` bytes of a head that never ends."""
    head = b"GET /unfinished HTTP/1.1\r\nHost: bench\r\n"
    line = b"X-Pad: " + b"p" * 90 + b"\r\n"
    head += line * ((size - len(head)) // len(line))
    head += b"X-Last: " + b"q" * max(0, size - len(head) - 10)
    head = head[:size]
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        socks.append(s)
    for offset in range(0, size, piece):        # round-robin: every head grows together
        for s in socks:
            try:
                s.sendall(head[offset:offset + piece])
            except OSError:
                pass                            # refused and closed already
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_queued(s) for s in socks):
        time.sleep(0.1)
    return socks


def _queued(s) -> int:
    try:
        return unsent(s)
    except OSError:
        return 0


def answers(socks) -> dict:
    """Which connections the balancer answered (by status) or closed, after the heads."""
    seen: dict = {}
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(200)
            key = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else (
                "closed" if not data else "other")
        except BlockingIOError:
            key = "held"
        except OSError:
            key = "reset"
        seen[key] = seen.get(key, 0) + 1
    return seen


def run_one(name: str, argv: list[str], cwd, args, sink, size: int) -> tuple:
    """One balancer, started fresh (freed memory seldom goes back to the system)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=cwd) if cwd else None
    proc = subprocess.Popen([*argv, "-f", "-H", f"127.0.0.1:{port}", f"127.0.0.1:{sink.port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=cwd)                # (python -m puts cwd first on the path)
    try:
        wait_listening(port, proc)
        before = steady_rss(proc.pid)
        socks = heads(port, args.connections, size, args.piece)
        after = steady_rss(proc.pid)
        seen = answers(socks)
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return name, size, before, after, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=495)
    parser.add_argument("--sizes", default="100,30000,65000",
                        type=lambda text: [int(x) for x in text.split(",")])
    parser.add_argument("--piece", type=int, default=1000)
    parser.add_argument("--ours", action="append", help="a pen-lb checkout (default: this one)")
    parser.add_argument("--no-c-pen", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # N clients + the sink's side

    sink = Sink()
    balancers = []
    for checkout in args.ours or [HERE]:
        commit = subprocess.run(["git", "-C", checkout, "log", "-1", "--format=%h"],
                                capture_output=True, text=True).stdout.strip()
        balancers.append((f"pen-lb {commit}", [sys.executable, "-m", "pen"], checkout))
    if not args.no_c_pen:
        balancers.append(("C pen", ["/usr/bin/pen"], None))
    rows = [run_one(name, argv, cwd, args, sink, size)
            for name, argv, cwd in balancers for size in args.sizes]
    sink.running = False

    print(f"{args.connections} connections, each an unfinished head sent in "
          f"{args.piece}-byte pieces; RSS in MB")
    print(f"{'balancer':<16} {'head':>7} {'before':>7} {'after':>7} {'growth':>7} "
          f"{'KiB/conn':>8}  connections")
    for name, size, before, after, seen in rows:
        per = (after - before) / args.connections
        states = ", ".join(f"{n} {k}" for k, n in sorted(seen.items()))
        print(f"{name:<16} {size:>7} {before / 1024:>7.1f} {after / 1024:>7.1f} "
              f"{(after - before) / 1024:>7.1f} {per:>8.1f}  {states}")


if __name__ == "__main__":
    main()
