#!/usr/bin/env python3
"""Issue 14's single-client attacks, measured: what a legitimate client sees meanwhile.

    python3 bench/attacks.py [--pen CMD] [--pythonpath DIR] [--only udp,slowloris,control]

  udp        pen -U -t 1 -b 3 before two dnsmasq; 100 datagrams no server answers, from
             127.0.1.1-100; then dig (one try, 1 s) every 0.1 s for 6 s: answered/asked.
  slowloris  pen (default -x 500) before a Python HTTP server; 600 connections from
             127.0.0.2-6 holding half a request head; then curl from 127.0.0.1: seconds
             to be served (10 = never).
  control    pen -C; 500 connections from 127.0.0.2, half silent, half garbage without a
             newline; then penctl pid from 127.0.0.1 (waiting up to 30 s), and again every
             0.2 s for 4 s more (5 s each): answer times.

--pen runs another balancer with the same options (`/usr/bin/pen` for the C pen;
`python3 -m pen` with --pythonpath pointing at an older tree for a before/after).
Everything on 127.0.0.0/8; every loop is bounded in count and time.
"""

import argparse
import os
import pwd
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class Pen:
    def __init__(self, command, pythonpath, *args):
        tree = pythonpath or ROOT           # also the cwd: `python3 -m pen` looks there first
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen([*shlex.split(command), "-f", *args], env=env, cwd=tree,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def dig(port, source, timeout=1):
    result = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "-b", source, "+tries=1",
                             f"+timeout={timeout}", "+short", "www.test"],
                            capture_output=True, text=True, timeout=timeout + 5)
    return result.returncode == 0 and result.stdout.strip() != ""


def udp(args):
    servers = []
    for host in ("127.0.0.2", "127.0.0.3"):
        port = free_port(socket.SOCK_DGRAM)
        servers.append((subprocess.Popen(
            [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--no-daemon", "--port", str(port),
             "--listen-address", host, "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--address=/test/10.9.0.1", "--cache-size=0", "--pid-file="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f"{host}:{port}"))
    port = free_port(socket.SOCK_DGRAM)
    pen = Pen(args.pen, args.pythonpath, "-U", "-t", "1", "-b", "3", f"127.0.0.1:{port}",
              *[spec for _, spec in servers])
    try:
        if not wait(lambda: dig(port, "127.0.0.5")):
            return "pen -U never answered"
        for i in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((f"127.0.1.{i + 1}", 0))
                s.sendto(b"xx", ("127.0.0.1", port))
        asked = answered = 0
        until = time.monotonic() + 6
        while time.monotonic() < until and asked < 100:
            answered += dig(port, f"127.0.0.{10 + asked % 50}")
            asked += 1
            time.sleep(0.1)
        return f"dig answered {answered} of {asked} in the 6 s after the flood"
    finally:
        pen.stop()
        for proc, _ in servers:
            proc.terminate()


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"hi\n")

    def log_message(self, *args):
        pass


def slowloris(args):
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    backend.daemon_threads = True
    backend.handle_error = lambda *a: None            # clients that left: not news here
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    pen = Pen(args.pen, args.pythonpath, f"127.0.0.1:{port}",
              f"127.0.0.1:{backend.server_address[1]}")
    held = []
    try:
        if not wait(lambda: _connects(port)):
            return "pen never listened"
        for i in range(600):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i % 5}", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        time.sleep(1)                 # let the balancer take what it will of the 600
        started = time.monotonic()
        result = subprocess.run(["curl", "-sS", "--max-time", "10", "--interface", "127.0.0.1",
                                 f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
        took = time.monotonic() - started
        served = result.returncode == 0 and result.stdout == "hi\n"
        return (f"curl from 127.0.0.1 {'served' if served else 'NOT served'} after "
                f"{took:.3f} s (600 slow connections from 127.0.0.2-6 held open)")
    finally:
        for s in held:
            s.close()
        pen.stop()
        backend.shutdown()


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def penctl_time(binary, ctl, timeout=5.0):
    started = time.monotonic()
    try:
        result = subprocess.run([binary, ctl, "pid"], capture_output=True, text=True,
                                timeout=timeout)
        ok = result.stdout.strip().isdigit()
    except subprocess.TimeoutExpired:
        ok = False
    return time.monotonic() - started if ok else None


def control(args):
    ctl_port, port = free_port(), free_port()
    ctl = f"127.0.0.1:{ctl_port}"
    user = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
    pen = Pen(args.pen, args.pythonpath, *user, "-C", ctl, f"127.0.0.1:{port}",
              "127.0.0.1:9")
    held = []
    try:
        if not wait(lambda: penctl_time(args.penctl, ctl, 1) is not None):
            return "no control port"
        for i in range(500):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", ctl_port))
            if i % 2:
                s.sendall(b"\x00\x01 garbage without a newline")
            held.append(s)
        times = [penctl_time(args.penctl, ctl, timeout=30)]     # the first: how long at worst
        until = time.monotonic() + 4
        while time.monotonic() < until and len(times) < 40:
            times.append(penctl_time(args.penctl, ctl))
            time.sleep(0.2)
        answered = [t for t in times if t is not None]
        if not answered:
            return f"penctl answered 0 of {len(times)} (30 s, then 5 s timeouts)"
        return (f"penctl answered {len(answered)} of {len(times)}: first {times[0] or 0:.3f} s, "
                f"median {statistics.median(answered):.3f} s, max {max(answered):.3f} s")
    finally:
        for s in held:
            s.close()
        pen.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pen", default=f"{sys.executable} -m pen")
    parser.add_argument("--pythonpath", help="PYTHONPATH for --pen (default: this tree)")
    parser.add_argument("--penctl", default="/usr/bin/penctl")
    parser.add_argument("--only", default="udp,slowloris,control")
    args = parser.parse_args()
    for name in args.only.split(","):
        print(f"{name:10} {globals()[name](args)}", flush=True)


if __name__ == "__main__":
    main()
