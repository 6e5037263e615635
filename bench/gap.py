#!/usr/bin/env python3
"""pen-lb's distance to the floor: CPU per request of ours and of bench/floor.py, A/B.

    python3 bench/gap.py [--rounds N] [--seconds S] [--only keepalive|newconn]
                         [--ours-cmd CMD ...] [--floor-cmd CMD] [--no-settle]

In front of the same nginx as bench/run.py, each round runs the keep-alive and the
new-connection load (wrk -c50 -t2) through ours and through the floor, fresh processes,
order rotating, and prints the CPU microseconds per request of each (user+system from
/proc) and their ratio ours/floor for that round. Ratios of the same round are what to
read: the machine's load moves both sides alike; their spread over the rounds is the noise.
--ours-cmd may be given more than once (a before and an after: `env -C DIR python3 -m pen`
runs another checkout), each compared with the floor of its round.
"""

import argparse
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile

import backends
import balancers
import loads
import procs
from run import settle

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(description="CPU per request: ours against the floor.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--only", choices=["keepalive", "newconn"])
    parser.add_argument("--no-settle", action="store_true",
                        help="do not wait for TIME_WAIT sockets to expire between loads")
    parser.add_argument("--ours-cmd", metavar="CMD", action="append",
                        help="default: python3 -m pen; repeat it to compare several")
    parser.add_argument("--floor-cmd", metavar="CMD",
                        default="%s %s" % (sys.executable, os.path.join(HERE, "floor.py")))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be positive")
    return args


def measure(balancer, tmp, http_ports, test, seconds, tag):
    """(us per request, user us, system us, req/s) of one fresh balancer, or None."""
    port = procs.free_ports(1)[0]
    proc = balancer.start(tmp, "tcp", port, http_ports, None, tag)
    try:
        reason = procs.wait_tcp(port, proc) or loads.http_probe(port)
        if reason:
            sys.exit("bench/gap.py: %s did not start: %s" % (balancer.label, reason))
        user0, system0 = procs.cpu_times(proc.pid)
        out = loads.wrk("http://127.0.0.1:%d/small" % port, seconds, close=test == "newconn")
        user1, system1 = procs.cpu_times(proc.pid)
    finally:
        procs.stop(proc)
    if "failed" in out or not out["count"]:
        print("  %s: %s" % (balancer.label, out.get("failed", "no requests")))
        return None
    n = out["count"]
    user, system = (user1 - user0) * 1e6 / n, (system1 - system0) * 1e6 / n
    return user + system, user, system, n / out["seconds"]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/gap.py: terminated"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with INT ignored
    ours = []
    for i, command in enumerate(args.ours_cmd or [None]):
        b = balancers.ours(command)
        b.key = "ours%d" % (i + 1) if args.ours_cmd and len(args.ours_cmd) > 1 else "ours"
        ours.append(b)
    floor = balancers.Balancer("floor", "floor", shlex.split(args.floor_cmd),
                               env=ours[0].env, cwd=ours[0].cwd)
    everyone = ours + [floor]
    tests = [args.only] if args.only else ["keepalive", "newconn"]
    tmp = tempfile.mkdtemp(prefix="pen-gap-")
    ratios = {(t, b.key): [] for t in tests for b in ours}
    user_ratios = {(t, b.key): [] for t in tests for b in ours}
    try:
        backends.make_files(tmp, 10**6)
        http_ports = procs.free_ports(2)
        backends.start_nginx(tmp, *http_ports)
        print("%s; floor = %s; %d rounds of %ds; load average %.1f" % (
            "; ".join("%s = %s" % (b.key, " ".join(b.base_argv)) for b in ours),
            args.floor_cmd, args.rounds, args.seconds, os.getloadavg()[0]))
        for round_no in range(1, args.rounds + 1):
            for test in tests:
                if not args.no_settle:
                    settle()
                shift = (round_no - 1) % len(everyone)
                order = everyone[shift:] + everyone[:shift]
                got = {b.key: measure(b, tmp, http_ports, test, args.seconds,
                                      "%s-%d" % (test, round_no)) for b in order}
                if got["floor"] is None:
                    continue
                line = []
                for b in everyone:
                    if got[b.key] is None:
                        continue
                    line.append("%s %.1f us (%.1f+%.1f) %.0f/s" % (b.key, *got[b.key]))
                    if b is not floor:
                        r = got[b.key][0] / got["floor"][0]
                        ratios[(test, b.key)].append(r)
                        user_ratios[(test, b.key)].append(got[b.key][1] / got["floor"][1])
                        line[-1] += " [%.3f]" % r
                print("round %d %-9s " % (round_no, test) + "  ".join(line), flush=True)
        for test in tests:
            for b in ours:
                values = ratios[(test, b.key)]
                if values:
                    print("%-9s %s/floor CPU per request: median %.3f (min %.3f, max %.3f, "
                          "%d rounds); user CPU alone: median %.3f" % (
                              test, b.key, statistics.median(values), min(values),
                              max(values), len(values),
                              statistics.median(user_ratios[(test, b.key)])))
        print("load average now %.1f" % os.getloadavg()[0])
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
