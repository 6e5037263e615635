#!/usr/bin/env python3
"""pen-lb benchmark: our pen vs the C pen vs HAProxy, interleaved, on loopback.

    python3 bench/run.py [--quick] [--only tcp|udp|tls] [--json out.json]
    python3 bench/run.py --workers 1,2 [--only tcp|udp] ...   (scaling over worker processes)

See bench/README.md for what is measured and how to read the table.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time

import backends
import balancers
import loads
import procs

# key, mode, title, rate unit, efficiency unit
TESTS = [
    ("keepalive", "tcp", "keep-alive requests (wrk -c50 -t2, 100 B)", "req/s", "req/CPU-s"),
    ("newconn", "tcp", "new connections (wrk, Connection: close)", "req/s", "req/CPU-s"),
    ("bulk", "tcp", "bulk download (curl, one big file)", "MB/s", "MB/CPU-s"),
    ("udp", "udp", "DNS over UDP (dnsperf -c8 -q100)", "q/s", "q/CPU-s"),
    ("tls_handshake", "tls", "TLS handshakes (wrk over https, Connection: close)", "req/s", "req/CPU-s"),
    ("tls_keepalive", "tls", "TLS keep-alive requests (wrk over https)", "req/s", "req/CPU-s"),
]
MODES = ["tcp", "udp", "tls"]

# goals from the issues: minimum ratio ours/other, per test, for the rate; efficiency vs C pen
RATE_GOALS = {
    "keepalive": {"cpen": 1.5, "haproxy": 1.0},
    "newconn": {"cpen": 1.0},
    "bulk": {"cpen": 1.2},
    "udp": {"cpen": 1.0},
    "tls_handshake": {"cpen": 1.0},
    "tls_keepalive": {"cpen": 1.0},
}
EFFICIENCY_GOAL = {"cpen": 1.0}
SCALING_TESTS = ("keepalive", "newconn", "udp")   # what --workers runs at each count
MIN_CPU_SECONDS = 0.05  # below this the tick counter is too coarse for an efficiency figure


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit("bench/run.py: %s (try --help)" % message)


def parse_args(argv):
    parser = OneLineParser(description="Benchmark our pen against the C pen and HAProxy.")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (2 s loads, 200 MB download): about a minute")
    parser.add_argument("--only", choices=MODES, help="run only the tcp, udp or tls tests")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--rounds", type=int,
                        help="interleaved rounds, median taken (default 5, --quick 2)")
    parser.add_argument("--seconds", type=int, help="duration of each wrk/dnsperf load")
    parser.add_argument("--bulk-mb", type=int, help="size of the download in MB (default 1000)")
    parser.add_argument("--ours-cmd", metavar="CMD",
                        help='command for "ours" instead of python3 -m pen (also PEN_BENCH_OURS)')
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--workers", metavar="LIST", type=worker_counts,
                        help='worker counts to compare, e.g. 1,2: ours with -O "workers N", '
                             "HAProxy with nbthread N, beside the C pen (1 is always run)")
    args = parser.parse_args(argv)
    if args.workers and args.only == "tls":
        parser.error("--workers runs keep-alive, new connections and UDP: not --only tls")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.seconds is None:
        args.seconds = 2 if args.quick else 3
    if args.bulk_mb is None:
        args.bulk_mb = 200 if args.quick else 1000
    if args.rounds < 1 or args.seconds < 1 or args.bulk_mb < 1:
        parser.error("--rounds, --seconds and --bulk-mb must be positive")
    return args


def worker_counts(text):
    """'1,2' -> [1, 2]: the counts --workers compares, sorted, 1 included (the base of
    every scaling factor)."""
    try:
        counts = {int(word) for word in text.split(",")}
    except ValueError:
        counts = set()
    if not counts or min(counts) < 1 or max(counts) > 256:
        raise argparse.ArgumentTypeError("expected worker counts 1-256 like 1,2, got %r" % text)
    return sorted(counts | {1})


def check_tools(modes):
    needed = {"tcp": ["nginx", "wrk", "curl"], "udp": ["dnsmasq", "dnsperf"],
              "tls": ["nginx", "wrk", "openssl"]}
    missing = sorted({t for m in modes for t in needed[m] if not shutil.which(t)})
    if missing:
        sys.exit("bench/run.py: missing tools: %s (apt-get install -y nginx-light wrk curl "
                 "dnsmasq-base dnsperf openssl)" % " ".join(missing))


class Bench:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.modes = [args.only] if args.only else MODES
        self.tests = [t for t in TESTS if t[1] in self.modes]
        self.balancers = balancers.all_balancers(args.ours_cmd)
        self.workers = getattr(args, "workers", None)
        if self.workers:
            self.modes = [m for m in ("tcp", "udp") if m in self.modes]
            self.tests = [t for t in self.tests if t[0] in SCALING_TESTS]
            self.balancers = balancers.scaling_balancers(self.workers, args.ours_cmd)
        self.memory = {}  # (balancer key, mode) -> [procs.memory() after each round's loads]
        self.results = {t[0]: {b.key: [] for b in self.balancers} for t in self.tests}
        self.unavailable = {}  # (balancer key, mode) -> reason, when it cannot run that mode at all
        self.cert = None
        self.query_file = None
        self.http_ports = self.dns_ports = None
        self.load_at_start = os.getloadavg()[0]

    # ---- fixtures -------------------------------------------------------------------------
    def start_backends(self):
        if "tcp" in self.modes or "tls" in self.modes:
            backends.make_files(self.tmp, self.args.bulk_mb * 10**6)
            self.http_ports = procs.free_ports(2)
            backends.start_nginx(self.tmp, *self.http_ports)
            for port in self.http_ports:
                reason = loads.http_probe(port)
                if reason:
                    raise RuntimeError("nginx backend on %d: %s" % (port, reason))
        if "tls" in self.modes:
            self.cert = backends.make_cert(self.tmp)
        if "udp" in self.modes:
            self.dns_ports = procs.free_ports(2)
            self.query_file = backends.write_queries(self.tmp)
            for i, port in enumerate(self.dns_ports, 1):
                proc = backends.start_dnsmasq(self.tmp, port, "dnsmasq%d" % i)
                reason = loads.dns_probe(port, proc)
                if reason:
                    raise RuntimeError("dnsmasq backend on %d: %s" % (port, reason))

    # ---- one balancer, one mode, one round --------------------------------------------------
    def run_mode(self, balancer, mode, round_no):
        tests = [t for t in self.tests if t[1] == mode]
        if not balancer.supports(mode):
            self.unavailable[(balancer.key, mode)] = "%s does not do UDP" % balancer.label
        if (balancer.key, mode) in self.unavailable:
            return
        port = procs.free_ports(1)[0]
        backend_ports = self.dns_ports if mode == "udp" else self.http_ports
        proc = balancer.start(self.tmp, mode, port, backend_ports, self.cert,
                              "%s-r%d" % (mode, round_no))
        try:
            if mode == "udp":
                reason = loads.dns_probe(port, proc)
            else:
                reason = procs.wait_tcp(port, proc) or loads.http_probe(port, mode == "tls")
            if reason:
                if proc.poll() is not None:  # it refused to run: do not try again next round
                    self.unavailable[(balancer.key, mode)] = reason
                for key, *_ in tests:
                    self.record(key, balancer, {"failed": reason})
                return
            for key, *_ in tests:
                user0, system0 = procs.cpu_times(proc.pid)
                outcome = self.load(key, port)
                user1, system1 = procs.cpu_times(proc.pid)
                if proc.poll() is not None:
                    outcome = {"failed": "balancer died: " + procs.last_words(proc)}
                outcome["user_seconds"] = round(user1 - user0, 3)
                outcome["system_seconds"] = round(system1 - system0, 3)
                outcome["cpu_seconds"] = round(user1 - user0 + system1 - system0, 3)
                self.record(key, balancer, outcome)
                if "failed" in outcome and proc.poll() is not None:
                    break
            if proc.poll() is None:
                self.memory.setdefault((balancer.key, mode), []).append(procs.memory(proc.pid))
        finally:
            procs.stop(proc)

    def load(self, key, port):
        seconds = self.args.seconds
        http = "http://127.0.0.1:%d/small" % port
        https = "https://127.0.0.1:%d/small" % port
        if key == "keepalive":
            return loads.wrk(http, seconds)
        if key == "newconn":
            return loads.wrk(http, seconds, close=True)
        if key == "bulk":
            return loads.curl_download("http://127.0.0.1:%d/big" % port,
                                       self.args.bulk_mb * 10**6, max_seconds=300)
        if key == "udp":
            return loads.dnsperf(port, self.query_file, seconds)
        if key == "tls_handshake":
            return loads.wrk(https, seconds, close=True)
        if key == "tls_keepalive":
            return loads.wrk(https, seconds)
        raise ValueError(key)

    def record(self, key, balancer, outcome):
        if "failed" not in outcome:
            outcome["rate"] = outcome["count"] / outcome["seconds"]
            cpu = outcome["cpu_seconds"]
            outcome["efficiency"] = outcome["count"] / cpu if cpu >= MIN_CPU_SECONDS else None
        self.results[key][balancer.key].append(outcome)
        print("  %-14s %-28s %s" % (key, balancer.label[:28], describe(outcome)), flush=True)

    def run(self):
        for round_no in range(1, self.args.rounds + 1):
            waiting = settle()
            print("round %d of %d (%d sockets in TIME_WAIT)" % (
                round_no, self.args.rounds, waiting), flush=True)
            # rotate the order each round so no balancer always runs first (or last)
            shift = (round_no - 1) % len(self.balancers)
            order = self.balancers[shift:] + self.balancers[:shift]
            for mode in self.modes:
                for balancer in order:
                    self.run_mode(balancer, mode, round_no)

    # ---- summary ---------------------------------------------------------------------------
    def summary(self):
        """Per test and balancer: median rate and efficiency over the rounds that worked."""
        out = {}
        for key, mode, *_ in self.tests:
            out[key] = {}
            for b in self.balancers:
                rounds = self.results[key][b.key]
                good = [r for r in rounds if "failed" not in r]
                cell = {"rounds": rounds}
                if (b.key, mode) in self.unavailable and not good:
                    cell["na"] = self.unavailable[(b.key, mode)]
                elif not good:
                    cell["na"] = rounds[0]["failed"] if rounds else "not run"
                else:
                    cell["rate"] = statistics.median(r["rate"] for r in good)
                    effs = [r["efficiency"] for r in good if r["efficiency"] is not None]
                    cell["efficiency"] = statistics.median(effs) if effs else None
                    if effs:   # the CPU a unit costs, split: the process's own code, the kernel
                        for part in ("user", "system"):
                            cell[part + "_us"] = statistics.median(
                                r[part + "_seconds"] * 1e6 / r["count"] for r in good
                                if r["efficiency"] is not None)
                    cell["errors"] = sum(r["errors"] for r in good)
                out[key][b.key] = cell
        return out


TIME_WAIT_CALM = 2000


def time_wait_sockets():
    """Loopback TCP sockets in TIME_WAIT (state 06 in /proc/net/tcp*)."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                count += sum(1 for line in f if line.split()[3:4] == ["06"])
        except OSError:
            pass
    return count


def settle(limit=65.0):
    """Wait (at most limit seconds) for earlier rounds' TIME_WAIT sockets to expire.

    Tens of thousands of them make every connect(2) search hard for a free port; that
    kernel time lands on whichever balancer connects and buries the differences between
    them. Each round starts from the same state instead."""
    deadline = time.monotonic() + limit
    while time_wait_sockets() > TIME_WAIT_CALM and time.monotonic() < deadline:
        time.sleep(1)
    return time_wait_sockets()


def describe(outcome):
    if "failed" in outcome:
        return "n/a (%s)" % outcome["failed"]
    eff = outcome["efficiency"]
    text = "%s/s, %s per CPU-s (cpu %.2fs: user %.2f, system %.2f)" % (
        fmt(outcome["rate"]), fmt(eff), outcome["cpu_seconds"], outcome["user_seconds"],
        outcome["system_seconds"])
    return text + ("  [%s]" % outcome["note"] if outcome.get("note") else "")


def fmt(value):
    if value is None:
        return "-"
    if value >= 100:
        return "{:,.0f}".format(value)
    return "{:.1f}".format(value)


def ratio(summary, key, metric, other):
    ours, theirs = summary[key]["ours"].get(metric), summary[key][other].get(metric)
    if ours is None or not theirs:
        return None
    return ours / theirs


def split(cell):
    """'user+system' microseconds per unit, for the table."""
    if "user_us" not in cell:
        return "n/a"
    return "%s+%s" % (fmt(cell["user_us"]), fmt(cell["system_us"]))


def ceiling(summary, key):
    """The efficiency ratio ours would reach against the C pen if its own code cost
    nothing: the C pen's whole CPU per unit over ours' kernel CPU per unit."""
    ours, cpen = summary[key]["ours"], summary[key]["cpen"]
    if "system_us" not in ours or "system_us" not in cpen or not ours["system_us"]:
        return None
    return (cpen["user_us"] + cpen["system_us"]) / ours["system_us"]


def goal_cell(value, goal):
    if value is None:
        return "n/a"
    shown = "%.2f" % value
    if goal is None:
        return shown
    if value < goal and float(shown) >= goal:  # do not let rounding hide a miss
        shown = "%.3f" % value
    return "%s %s (>=%.1f)" % (shown, "ok" if value >= goal else "MISS", goal)


def print_table(bench, summary):
    labels = {b.key: b.label for b in bench.balancers}
    head = "%-26s %-9s %14s %14s %14s  %-17s %-17s" % (
        "test", "metric", labels["ours"][:14], "C pen", "HAProxy", "ours/C pen", "ours/HAProxy")
    print()
    print(head)
    print("-" * len(head))
    notes = []
    for key, mode, title, unit, eff_unit in bench.tests:
        print(title)
        for metric, name, goals in (("efficiency", eff_unit, EFFICIENCY_GOAL),
                                    ("rate", unit, RATE_GOALS[key])):
            cells = []
            for b in bench.balancers:
                cell = summary[key][b.key]
                cells.append("n/a" if "na" in cell else fmt(cell.get(metric)))
            ratios = [goal_cell(ratio(summary, key, metric, other), goals.get(other))
                      for other in ("cpen", "haproxy")]
            if mode == "udp":
                ratios[1] = "n/a"
            marker = "*" if metric == "efficiency" else " "
            print("%s %-24s %-9s %14s %14s %14s  %-17s %-17s" % (
                marker, "", name, *cells, *ratios))
        cells = [split(summary[key][b.key]) for b in bench.balancers]
        top = ceiling(summary, key)
        print("+ %-24s %-9s %14s %14s %14s  %-17s" % (
            "", "us/" + unit.split("/")[0], *cells,
            "n/a" if top is None else "ceiling %.2f" % top))
        for b in bench.balancers:
            cell = summary[key][b.key]
            if "na" in cell:
                notes.append("%s / %s: n/a (%s)" % (key, b.label, cell["na"]))
            elif cell.get("errors"):
                notes.append("%s / %s: %d errors or lost (%s)" % (
                    key, b.label, cell["errors"],
                    "; ".join(r["note"] for r in cell["rounds"] if r.get("note"))))
        if key == "udp":
            lost = summary[key]["ours"].get("errors")
            if lost is not None:
                notes.append("udp goal 'no lost answers' for ours: %s (%d lost)" % (
                    "ok" if lost == 0 else "MISS", lost))
    print()
    print("* efficiency = units per CPU-second of the balancer process (utime+stime): read it first.")
    print("+ CPU microseconds per unit, user+system. The ceiling is the efficiency ratio ours would")
    print("  reach if its own (Python) code cost nothing: C pen's user+system over ours' system.")
    print("  Rates swing up to 2x between runs on a shared 2-core machine; efficiency is steadier,")
    print("  but an A/A run (C pen in both slots) on a busy machine still spread 0.83-1.12: treat")
    print("  ratios within ~15%% as ties. Load average at start %.1f, now %.1f." % (
        bench.load_at_start, os.getloadavg()[0]))
    for note in notes:
        print("note: " + note)


# ---- --workers: the same tests at each worker count -----------------------------------------

def scaling(summary, key, balancer_key, base_key, metric):
    """metric with N workers over metric with 1 (None where either is missing)."""
    cell, base = summary[key].get(balancer_key, {}), summary[key].get(base_key, {})
    if cell.get(metric) is None or not base.get(metric):
        return None
    return cell[metric] / base[metric]


def median_memory(samples):
    """The rounds' medians: parent RSS and each worker's (by position), in KiB."""
    parent = [s["parent"] for s in samples if s["parent"] is not None]
    most = max((len(s["workers"]) for s in samples), default=0)
    workers = []
    for i in range(most):
        values = [s["workers"][i] for s in samples if len(s["workers"]) > i]
        workers.append(statistics.median(values))
    return {"parent": statistics.median(parent) if parent else None, "workers": workers}


def mib(kib):
    return "%.1f" % (kib / 1024)


def describe_memory(memory):
    if memory["parent"] is None:
        return "n/a"
    if not memory["workers"]:
        return "%s (one process)" % mib(memory["parent"])
    total = memory["parent"] + sum(memory["workers"])
    return "parent %s, workers %s (total %s)" % (
        mib(memory["parent"]), " ".join(mib(w) for w in memory["workers"]), mib(total))


def short_label(balancer):
    key = balancer.key
    if key.startswith("ours-w"):
        return "ours, workers " + key[len("ours-w"):]
    if key.startswith("haproxy-t"):
        return "HAProxy, nbthread " + key[len("haproxy-t"):]
    return balancer.label


def print_scaling(bench, summary):
    """Per test: a rate and an efficiency row per worker count, with the scaling factors
    (N over 1) of ours and HAProxy, the C pen beside them; then each process's memory."""
    head = "%-3s %7s %-10s %14s %7s %14s %7s %14s" % (
        "", "workers", "metric", "ours", "xN/1", "HAProxy", "xN/1", "C pen")
    print()
    print(head)
    print("-" * len(head))
    for key, mode, title, unit, eff_unit in bench.tests:
        print(title)
        summary_cells = summary[key]
        cpen = summary_cells.get("cpen", {})
        for n in bench.workers:
            for metric, name in (("efficiency", eff_unit), ("rate", unit)):
                row = []
                for prefix, base in (("ours-w", "ours-w1"), ("haproxy-t", "haproxy-t1")):
                    cell = summary_cells.get(prefix + str(n), {})
                    factor = scaling(summary, key, prefix + str(n), base, metric)
                    row += ["n/a" if "na" in cell else fmt(cell.get(metric)),
                            "-" if factor is None else "%.2f" % factor]
                if mode == "udp":
                    row[2:4] = ["n/a", "-"]
                marker = "*" if metric == "efficiency" else " "
                print("%-3s %7d %-10s %14s %7s %14s %7s %14s" % (
                    marker, n, name, *row, "n/a" if "na" in cpen else fmt(cpen.get(metric))))
    print()
    print("memory after the loads (RSS in MiB, median over the rounds):")
    for b in bench.balancers:
        for mode in bench.modes:
            samples = bench.memory.get((b.key, mode))
            if samples:
                print("  %-20s %-4s %s" % (short_label(b), mode, describe_memory(
                    median_memory(samples))))
    print()
    print("* efficiency = units per CPU-second of the balancer: its process and all its")
    print("  children (every worker). xN/1 = the figure with N workers (HAProxy: nbthread N)")
    print("  over the figure with 1: the rate row's is the scaling factor; the efficiency row's")
    print("  should stay near 1.0 (each worker as efficient as one). The C pen is one process")
    print("  at every N. On a machine whose cores wrk and the backends share, the rate cannot")
    print("  scale with N; run it on a larger machine to see the factor. Load average at start")
    print("  %.1f, now %.1f." % (bench.load_at_start, os.getloadavg()[0]))
    for key, *_ in bench.tests:
        for b in bench.balancers:
            cell = summary[key][b.key]
            if "na" in cell and not (b.key.startswith("haproxy") and key == "udp"):
                print("note: %s / %s: n/a (%s)" % (key, b.label, cell["na"]))


def write_scaling_json(args, bench, summary, elapsed):
    doc = {
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "workers": bench.workers,
                     "only": args.only},
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                    "kernel": platform.release(), "python": platform.python_version()},
        "balancers": {b.key: {"label": b.label, "command": b.base_argv} for b in bench.balancers},
        "elapsed_seconds": round(elapsed, 1),
        "tests": {},
        "memory_kib": {"%s/%s" % key: {"rounds": samples, "median": median_memory(samples)}
                       for key, samples in bench.memory.items()},
    }
    for key, _mode, title, unit, eff_unit in bench.tests:
        factors = {}
        for n in bench.workers:
            for prefix in ("ours-w", "haproxy-t"):
                for metric in ("rate", "efficiency"):
                    factors["%s%d_%s" % (prefix, n, metric)] = scaling(
                        summary, key, "%s%d" % (prefix, n), prefix + "1", metric)
        doc["tests"][key] = {"title": title, "unit": unit, "efficiency_unit": eff_unit,
                             "results": summary[key], "scaling": factors}
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print("wrote " + args.json)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench_modes = [args.only] if args.only else MODES
    check_tools(bench_modes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/run.py: terminated"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with INT ignored
    tmp = tempfile.mkdtemp(prefix="pen-bench-")
    started = time.monotonic()
    bench = Bench(args, tmp)
    try:
        print("pen-lb benchmark: %d round(s), %ds loads, %d MB download, temp dir %s" % (
            args.rounds, args.seconds, args.bulk_mb, tmp))
        print("balancers: " + ", ".join("%s = %s" % (b.label, " ".join(b.base_argv))
                                        for b in bench.balancers))
        bench.start_backends()
        bench.run()
        summary = bench.summary()
        if bench.workers:
            print_scaling(bench, summary)
        else:
            print_table(bench, summary)
        elapsed = time.monotonic() - started
        print("total time %.0fs" % elapsed)
        if args.json:
            if bench.workers:
                write_scaling_json(args, bench, summary, elapsed)
            else:
                write_json(args, bench, summary, elapsed)
    except KeyboardInterrupt:
        sys.exit("bench/run.py: interrupted")
    except RuntimeError as exc:
        sys.exit("bench/run.py: %s" % exc)
    finally:
        procs.kill_all()
        if args.keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(args, bench, summary, elapsed):
    doc = {
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "bulk_mb": args.bulk_mb,
                     "quick": args.quick, "only": args.only},
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                    "kernel": platform.release(), "python": platform.python_version()},
        "balancers": {b.key: {"label": b.label, "command": b.base_argv} for b in bench.balancers},
        "elapsed_seconds": round(elapsed, 1),
        "tests": {},
    }
    for key, _mode, title, unit, eff_unit in bench.tests:
        entry = {"title": title, "unit": unit, "efficiency_unit": eff_unit,
                 "results": summary[key], "ratios": {}, "goals": {}}
        for other in ("cpen", "haproxy"):
            for metric in ("rate", "efficiency"):
                entry["ratios"]["%s_vs_%s" % (metric, other)] = ratio(summary, key, metric, other)
        entry["ratios"]["efficiency_ceiling_vs_cpen"] = ceiling(summary, key)
        for other, goal in RATE_GOALS[key].items():
            value = entry["ratios"]["rate_vs_%s" % other]
            entry["goals"]["rate_vs_%s" % other] = {"min": goal, "met": value is not None and value >= goal}
        value = entry["ratios"]["efficiency_vs_cpen"]
        entry["goals"]["efficiency_vs_cpen"] = {"min": 1.0, "met": value is not None and value >= 1.0}
        if key == "udp":
            lost = summary[key]["ours"].get("errors")
            entry["goals"]["no_lost_answers"] = {"met": lost == 0}
        doc["tests"][key] = entry
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print("wrote " + args.json)


if __name__ == "__main__":
    main()
