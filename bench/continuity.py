"""Changes under load: what a steady load loses while the balancer is reconfigured and
upgraded, pen-lb beside the C pen.

    python3 bench/continuity.py [--seconds 20] [--reloads 10] [--upgrades 2]

For each balancer and each load (wrk keep-alive, wrk with Connection: close, dnsperf over
-U), the load runs for --seconds while the balancer gets --reloads SIGHUPs, each re-reading
a -F file that alternately drops and restores server 1, and --upgrades upgrades: for pen-lb
`pen --upgrade` (SIGUSR2: the new copy takes the sockets), for the C pen, which has no such
thing, a restart (SIGTERM, start again). It prints the requests (queries) done and the
failed ones: socket errors and non-2xx answers for wrk, lost queries for dnsperf.
Everything runs on 127.0.0.1.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import backends
import loads
import procs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
C_PEN = os.environ.get("PEN_BENCH_CPEN", "/usr/bin/pen")


class Subject:
    """One balancer under test: start it, reload it, upgrade (or restart) it."""

    def __init__(self, name, tmp, udp):
        self.name, self.tmp, self.udp = name, tmp, udp
        self.cfg = os.path.join(tmp, f"{name}.cfg")
        self.pidfile = os.path.join(tmp, f"{name}.pid")
        self.proc = None

    def argv(self, port):
        options = ["-f", "-p", self.pidfile, "-F", self.cfg, "-U"] if self.udp else \
            ["-f", "-p", self.pidfile, "-F", self.cfg]
        if self.name == "ours":
            return [sys.executable, "-m", "pen", *options, f"127.0.0.1:{port}"]
        return [C_PEN, *options, f"127.0.0.1:{port}"]

    def write_config(self, servers, keep_second):
        lines = [f"server 0 address 127.0.0.1 port {servers[0]}"]
        if keep_second:
            lines.append(f"server 1 address 127.0.0.1 port {servers[1]}")
        elif self.name != "ours":       # the C pen cannot remove a server: blacklist it
            lines.append(f"server 1 address 127.0.0.1 port {servers[1]} blacklist 3600")
        if keep_second and self.name != "ours":
            lines[-1] += " blacklist 0"
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, port):
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = procs.start(self.argv(port), os.path.join(self.tmp, f"{self.name}.log"),
                                cwd=REPO, env=env)
        self.port = port

    def ready(self):
        if self.udp:
            return loads.dns_probe(self.port, self.proc) is None
        return procs.wait_tcp(self.port, self.proc) is None

    def reload(self):
        with open(self.pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGHUP)

    def upgrade(self):
        if self.name == "ours":
            result = subprocess.run([sys.executable, "-m", "pen", "--upgrade", "-p",
                                     self.pidfile], capture_output=True, text=True, timeout=90,
                                    env=dict(os.environ, PYTHONPATH=REPO))
            if result.returncode != 0:
                print("   upgrade failed:", result.stderr.strip())
            return
        procs.stop(self.proc)                       # the C pen: a restart
        self.start(self.port)
        self.ready()


def run_one(subject, servers, load, seconds, reloads, upgrades):
    port = procs.free_ports(1)[0]
    subject.write_config(servers, True)
    subject.start(port)
    if not subject.ready():
        return {"failed": "did not start: " + procs.last_words(subject.proc)}
    result = {}
    runner = threading.Thread(target=lambda: result.update(load(port, seconds)))
    runner.start()
    events = ["reload"] * reloads + ["upgrade"] * upgrades
    # spread them: upgrades in the middle of the reloads
    order = events[:reloads // 2] + events[reloads:] + events[reloads // 2:reloads]
    step = seconds / (len(order) + 1)
    keep = True
    for event in order:
        time.sleep(step)
        if event == "reload":
            keep = not keep
            subject.write_config(servers, keep)
            subject.reload()
        else:
            subject.upgrade()
    runner.join(seconds + 60)
    procs.kill_all()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--upgrades", type=int, default=2)
    args = parser.parse_args(argv)
    for tool in ("wrk", "dnsperf", "nginx", "dnsmasq"):
        if not shutil.which(tool):
            sys.exit(f"continuity: {tool} is missing (apt-get install wrk dnsperf nginx-light "
                     "dnsmasq-base)")
    tmp = tempfile.mkdtemp(prefix="pen-continuity-")
    backends.make_files(tmp, 1 << 20)
    queries = backends.write_queries(tmp)
    loads_by_name = {
        "keep-alive": (False, lambda port, s: loads.wrk(f"http://127.0.0.1:{port}/small", s)),
        "Connection: close": (False, lambda port, s: loads.wrk(
            f"http://127.0.0.1:{port}/small", s, close=True)),
        "DNS over UDP": (True, lambda port, s: loads.dnsperf(port, queries, s)),
    }
    print(f"{args.seconds}s of load, {args.reloads} reloads (server 1 dropped and restored) "
          f"and {args.upgrades} upgrades (the C pen: restarts) during each run")
    print(f"{'load':<20} {'balancer':<8} {'done':>10} {'failed':>8}")
    try:
        for name, (udp, load) in loads_by_name.items():
            for who in ("ours", "cpen"):
                http = procs.free_ports(2)
                if udp:
                    servers = procs.free_ports(2)
                    for i, p in enumerate(servers):
                        backends.start_dnsmasq(tmp, p, f"dns{i}")
                else:
                    backends.start_nginx(tmp, *http)
                    servers = http
                outcome = run_one(Subject(who, tmp, udp), servers, load, args.seconds,
                                  args.reloads, args.upgrades)
                label = "pen-lb" if who == "ours" else "C pen"
                if "failed" in outcome:
                    print(f"{name:<20} {label:<8} {outcome['failed']}")
                    continue
                print(f"{name:<20} {label:<8} {outcome['count']:>10} {outcome['errors']:>8}"
                      f"  {outcome.get('note', '')}")
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
