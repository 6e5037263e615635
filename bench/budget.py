#!/usr/bin/env python3
"""The CPU budget of a keep-alive request on this machine: who spends what.

    python3 bench/budget.py [--rounds N] [--seconds S]

Runs `wrk -c50 -t2` keep-alive through the C pen and through ours, in front of the same nginx
as bench/run.py, and reads the CPU each party spent (/proc for the balancer and nginx, rusage
for wrk) and how busy the machine was. From the C pen's rounds it derives the fastest a
balancer that cost nothing could go here: the cores divided by what nginx and wrk spend per
request. That bounds every keep-alive rate goal, whatever the balancer is written in.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile

import backends
import balancers
import loads
import procs


def machine_ticks():
    """(all, idle) jiffies from the first line of /proc/stat (idle includes iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return sum(fields), fields[3] + fields[4]


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_round(balancer, tmp, http_ports, nginx_pid, seconds):
    port = procs.free_ports(1)[0]
    proc = balancer.start(tmp, "tcp", port, http_ports, None, "budget")
    try:
        reason = procs.wait_tcp(port, proc) or loads.http_probe(port)
        if reason:
            sys.exit("budget.py: %s did not serve: %s" % (balancer.label, reason))
        nginx = sum(procs.cpu_times(nginx_pid))
        own = sum(procs.cpu_times(proc.pid))
        wrk, machine = children_cpu(), machine_ticks()
        outcome = loads.wrk("http://127.0.0.1:%d/small" % port, seconds)
        if "failed" in outcome:
            sys.exit("budget.py: %s: %s" % (balancer.label, outcome["failed"]))
        total, idle = (b - a for a, b in zip(machine, machine_ticks(), strict=True))
        n = outcome["count"]
        return {"rate": n / outcome["seconds"],
                "balancer": (sum(procs.cpu_times(proc.pid)) - own) * 1e6 / n,
                "nginx": (sum(procs.cpu_times(nginx_pid)) - nginx) * 1e6 / n,
                "wrk": (children_cpu() - wrk) * 1e6 / n,
                "busy": 1 - idle / total if total else 0.0}
    finally:
        procs.stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    cpus = os.cpu_count()
    chosen = [b for b in balancers.all_balancers() if b.key in ("cpen", "ours")]
    with tempfile.TemporaryDirectory(prefix="pen-budget-") as tmp:
        backends.make_files(tmp, 10**6)
        http_ports = procs.free_ports(2)
        nginx = backends.start_nginx(tmp, *http_ports)
        try:
            results = {b.key: [] for b in chosen}
            for _ in range(args.rounds):
                for b in chosen:
                    results[b.key].append(one_round(b, tmp, http_ports, nginx.pid,
                                                    args.seconds))
        finally:
            procs.kill_all()
    print("per keep-alive request (wrk -c50 -t2, %d s, median of %d rounds, %d CPUs):"
          % (args.seconds, args.rounds, cpus))
    med = {key: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
           for key, rounds in results.items()}
    for b in chosen:
        m = med[b.key]
        print("  %-6s %8.0f req/s  balancer %5.1f us  nginx %5.1f us  wrk %5.1f us  machine %3.0f%% busy"
              % (b.key, m["rate"], m["balancer"], m["nginx"], m["wrk"], 100 * m["busy"]))
    c = med["cpen"]
    others = c["nginx"] + c["wrk"]
    free = cpus * 1e6 / others
    print("a balancer costing nothing (the cores / nginx+wrk with the C pen, %.1f us): at most"
          " %.0f req/s = %.2fx the C pen's rate" % (others, free, free / c["rate"]))
    for goal in (1.0, 1.5):
        budget = cpus * 1e6 / (goal * c["rate"]) - others
        print("%.1fx the C pen's rate leaves a balancer %.1f us of CPU per request"
              " (the C pen spent %.1f us)" % (goal, budget, c["balancer"]))


if __name__ == "__main__":
    main()
