"""bench/run.py --workers: the counts it takes, the command lines it builds, the scaling
factors it prints and the processes whose memory it reads (no loads are run here)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import balancers  # noqa: E402
import procs  # noqa: E402
import run  # noqa: E402


@pytest.mark.parametrize("text, counts", [("2", [1, 2]), ("1,2", [1, 2]), ("4,1,2,2", [1, 2, 4])])
def test_worker_counts_always_include_one(text, counts):
    assert run.worker_counts(text) == counts


@pytest.mark.parametrize("text", ["", "0", "two", "1,,2", "257", "-1"])
def test_bad_worker_counts_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        run.worker_counts(text)


def test_bad_workers_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--workers", "0"])
    assert "--workers" in str(exit_.value) and "\n" not in str(exit_.value)
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--workers", "2", "--only", "tls"])
    assert "not --only tls" in str(exit_.value)


def test_one_worker_is_the_plain_command_line(tmp_path):
    one = balancers.ours(None, 1).argv(str(tmp_path), "tcp", 8000, [8001, 8002], None)
    two = balancers.ours(None, 2).argv(str(tmp_path), "udp", 8000, [8001, 8002], None)
    assert "-O" not in one and one[-4:] == ["-r", "127.0.0.1:8000", "127.0.0.1:8001",
                                            "127.0.0.1:8002"]
    assert two[two.index("-O") + 1] == "workers 2" and "-U" in two
    assert two.index("-O") < two.index("-f")          # an option before the addresses


def test_haproxy_gets_nbthread_n(tmp_path):
    argv = balancers.HAProxy(2).argv(str(tmp_path), "tcp", 8000, [8001, 8002], None)
    conf = Path(argv[argv.index("-f") + 1]).read_text()
    assert "nbthread 2\n" in conf and "127.0.0.1:8001" in conf
    keys = [b.key for b in balancers.scaling_balancers([1, 2])]
    assert keys == ["ours-w1", "ours-w2", "haproxy-t1", "haproxy-t2", "cpen"]


def summary():
    cells = {"ours-w1": {"rate": 100.0, "efficiency": 50.0},
             "ours-w2": {"rate": 180.0, "efficiency": 45.0},
             "haproxy-t1": {"rate": 200.0, "efficiency": 80.0},
             "haproxy-t2": {"na": "refused"},
             "cpen": {"rate": 150.0, "efficiency": 70.0}}
    return {"keepalive": cells}


def test_scaling_factor_is_n_over_one():
    s = summary()
    assert run.scaling(s, "keepalive", "ours-w2", "ours-w1", "rate") == pytest.approx(1.8)
    assert run.scaling(s, "keepalive", "ours-w2", "ours-w1", "efficiency") == pytest.approx(0.9)
    assert run.scaling(s, "keepalive", "haproxy-t2", "haproxy-t1", "rate") is None


def test_scaling_table_prints_factors_and_memory(capsys):
    args = run.parse_args(["--workers", "2", "--only", "tcp"])
    bench = run.Bench(args, "/nonexistent")
    assert [t[0] for t in bench.tests] == ["keepalive", "newconn"]
    bench.tests = bench.tests[:1]
    bench.memory = {("ours-w2", "tcp"): [{"parent": 20480, "workers": [30720, 31744]},
                                         {"parent": 20480, "workers": [29696, 31744]}],
                    ("ours-w1", "tcp"): [{"parent": 28672, "workers": []}]}
    run.print_scaling(bench, summary())
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:3] == ["2", "req/s", "180"])
    assert "1.80" in row and "150" in row                      # factor, and the C pen beside
    assert "ours, workers 2      tcp  parent 20.0, workers 29.5 31.0 (total 80.5)" in out
    assert "ours, workers 1      tcp  28.0 (one process)" in out


def test_memory_reads_the_parent_and_each_child():
    """A parent with one child, as pen's supervisor with one worker: both RSS are read, and
    the child counts as a worker (its CPU too: cpu_times walks the same tree)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; child = subprocess.Popen("
         "[sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE); "
         "print(child.pid, flush=True); sys.stdin.read(); child.stdin.close(); child.wait()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert procs.children(parent.pid) == [child]
        memory = procs.memory(parent.pid)
        assert memory["parent"] > 1000 and len(memory["workers"]) == 1
        assert memory["workers"][0] > 0                # (it may still be starting)
    finally:
        parent.stdin.close()
        parent.wait(10)
    assert procs.children(parent.pid) == [] and procs.rss_kib(parent.pid) is None
