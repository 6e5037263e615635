#!/usr/bin/env python3
"""User-space instructions per request of ours and of bench/floor.py, counted by callgrind.

    python3 bench/instructions.py [--seconds S] [--only keepalive|newconn]
                                  [--ours-cmd CMD] [--floor-cmd CMD]

CPU time on a shared machine swings by +-30% between rounds (bench/gap.py); instruction
counts repeat to about 1%. Each balancer runs under `valgrind --tool=callgrind` in front of
the same nginx; after a 2 s warm-up the counters are zeroed (callgrind_control -z), wrk
runs (-c10 -t1, the keep-alive or the Connection: close load) and the counters are dumped:
their total over wrk's requests is what one request cost in user space. The kernel's share
(system time) is not counted; it is the same system calls for both.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import backends
import loads
import procs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Instructions per request, ours and floor.")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", choices=["keepalive", "newconn"])
    parser.add_argument("--ours-cmd", default="%s -m pen" % sys.executable)
    parser.add_argument("--floor-cmd",
                        default="%s %s" % (sys.executable, os.path.join(HERE, "floor.py")))
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be positive")
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            parser.error("needs %s" % tool)
    return args


def count(command, test, seconds, tmp, http_ports):
    """(instructions per request, requests) of one balancer under callgrind."""
    port = procs.free_ports(1)[0]
    out = os.path.join(tmp, "callgrind.%s.%d.out" % (test, port))
    argv = (["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
            + shlex.split(command)
            + ["-f", "-r", "127.0.0.1:%d" % port]
            + ["127.0.0.1:%d" % p for p in http_ports])
    proc = procs.start(argv, os.path.join(tmp, "balancer.log"), cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        reason = procs.wait_tcp(port, proc, deadline_s=120) or loads.http_probe(port)
        if reason:
            sys.exit("bench/instructions.py: %s did not start: %s" % (command, reason))
        url = "http://127.0.0.1:%d/small" % port
        loads.wrk(url, 2, close=test == "newconn", connections=10, threads=1)   # warm-up
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       capture_output=True)
        load = loads.wrk(url, seconds, close=test == "newconn", connections=10, threads=1)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)
        time.sleep(0.5)                       # the dump is written by the process itself
    finally:
        procs.stop(proc)
    if "failed" in load or not load["count"]:
        sys.exit("bench/instructions.py: %s: %s" % (command, load.get("failed", "no requests")))
    dumps = sorted(glob.glob(out + ".*"))     # the zeroed-then-dumped part: out.1
    with open(dumps[0]) as f:
        total = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
    return total / load["count"], load["count"]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tests = [args.only] if args.only else ["keepalive", "newconn"]
    tmp = tempfile.mkdtemp(prefix="pen-instructions-")
    try:
        backends.make_files(tmp, 10**6)
        http_ports = procs.free_ports(2)
        backends.start_nginx(tmp, *http_ports)
        print("ours = %s; floor = %s; wrk -c10 -t1 for %ds after a 2 s warm-up" % (
            args.ours_cmd, args.floor_cmd, args.seconds))
        for test in tests:
            ours, n_ours = count(args.ours_cmd, test, args.seconds, tmp, http_ports)
            floor, n_floor = count(args.floor_cmd, test, args.seconds, tmp, http_ports)
            print("%-9s ours %8.0f  floor %8.0f  instructions per request: ours/floor %.2f"
                  "  (%d and %d requests)" % (test, ours, floor, ours / floor, n_ours,
                                              n_floor), flush=True)
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
