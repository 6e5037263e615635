"""How fast a worker group mends a dead worker: pen-lb with -O "workers N" on 127.0.0.1,
a worker killed (SIGKILL) ROUNDS times; for each, the seconds from the kill until the new
worker beats (it serves) and until a client steered to it is answered again. Also each
process's RSS once the group is up.

    python3 bench/supervision.py [--workers 2] [--rounds 10]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import procs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from pen.steering import worker_for  # noqa: E402


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def ask(ctl, line):
    with socket.create_connection(("127.0.0.1", ctl), timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def answered(port, source):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1,
                                      source_address=(source, 0)) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port, ctl = procs.free_ports(2)
    argv = [sys.executable, "-m", "pen", "-f", "-O", f"workers {args.workers}", "-u", "root",
            "-C", f"127.0.0.1:{ctl}", f"127.0.0.1:{port}",
            f"127.0.0.1:{backend.server_address[1]}"]
    pen = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        procs.wait_tcp(port, pen)
        source = next(f"127.0.9.{n}" for n in range(1, 255) if worker_for(f"127.0.9.{n}",
                                                                          args.workers) == 0)
        serving, answering = [], []
        for _ in range(args.rounds):
            time.sleep(1.5)          # a worker dying within 1 s of its start is backed off
            workers = json.loads(ask(ctl, "status json"))["workers"]
            while any(w["heartbeat_age"] > 1 for w in workers):
                time.sleep(0.05)
                workers = json.loads(ask(ctl, "status json"))["workers"]
            victim = workers[0]["pid"]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            answer_at = None
            while True:
                if answer_at is None and answered(port, source):
                    answer_at = time.monotonic()
                now = json.loads(ask(ctl, "status json"))["workers"][0]
                if now["pid"] != victim and now["heartbeat_age"] < 0.5:
                    serving.append(time.monotonic() - now["heartbeat_age"] - killed)
                    break
                time.sleep(0.01)
            while answer_at is None:
                if answered(port, source):
                    answer_at = time.monotonic()
            answering.append(answer_at - killed)
        status = json.loads(ask(ctl, "status json"))
        print(f"pen-lb, {args.workers} workers, {args.rounds} workers killed (SIGKILL):")
        for name, values in (("new worker beating", serving),
                             ("a client of it answered", answering)):
            print(f"  {name:26} min {min(values):.2f} s  median "
                  f"{statistics.median(values):.2f} s  max {max(values):.2f} s")
        print(f"  RSS: parent {rss_kib(pen.pid) / 1024:.1f} MiB, workers "
              + ", ".join(f"{rss_kib(w['pid']) / 1024:.1f}" for w in status["workers"])
              + " MiB")
    finally:
        pen.send_signal(signal.SIGTERM)
        pen.wait(30)
        backend.shutdown()


if __name__ == "__main__":
    main()
