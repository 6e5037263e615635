"""Maglev consistent hashing (pen/maglev.py) and `-O maglev` in selection: few clients move
when a server leaves or returns, weights are honoured, and two pens agree on every client."""

import ipaddress
import os
import subprocess
import sys
from collections import Counter

from pen import commands
from pen.cli import parse
from pen.maglev import build, client_slot
from pen.select import candidates

CLIENTS = [ipaddress.ip_address(f"10.{i >> 8 & 255}.{i & 255}.{i % 7 + 1}").packed
           for i in range(10_000)]
SMALL = 4099                   # a smaller prime keeps the unit tests quick; pen uses 65537


def servers(n, weights=None):
    return [(i, f"10.0.0.{i + 1}:80", (weights or [1] * n)[i]) for i in range(n)]


def picks(table, size=SMALL):
    return [table[client_slot(c, size)] for c in CLIENTS]


def test_removing_one_of_n_servers_moves_about_its_share_only():
    n = 10
    before = picks(build(servers(n), SMALL))
    gone = 3
    after = picks(build([s for s in servers(n) if s[0] != gone], SMALL))
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(CLIENTS)
    assert moved <= 1 / n + 0.01, moved
    assert all(b != gone for b in after)


def test_a_returning_server_takes_back_about_its_share():
    n = 5
    without = picks(build(servers(n)[:-1], SMALL))
    back = picks(build(servers(n), SMALL))
    share = sum(b == n - 1 for b in back) / len(CLIENTS)
    moved = sum(a != b for a, b in zip(without, back, strict=True)) / len(CLIENTS)
    assert abs(share - 1 / n) < 0.02 and moved <= 1 / n + 0.01


def test_weights_give_proportional_shares_of_the_table():
    weights = [1, 2, 3, 4]
    table = build(servers(4, weights), 65537)
    counts = Counter(table)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / len(table) - weight / sum(weights)) < 0.02


def test_two_processes_build_the_same_table():
    """Different hash seeds, same picks: nothing depends on Python's hash()."""
    probe = ("from pen.maglev import build; import hashlib;"
             "print(hashlib.sha256(bytes(str(build([(0,'10.0.0.1:80',1),(1,'10.0.0.2:80',2),"
             "(2,'10.0.0.3:80',1)], 4099)), 'ascii')).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, timeout=60,
                              env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1


def test_maglev_mode_picks_by_table_and_mode_shows_it():
    state, _ = parse(["-O", "maglev", "80", "127.0.0.1:81", "127.0.0.1:82", "127.0.0.1:83"])
    assert commands.execute(state, "mode").endswith(" maglev")
    first = {str(ip): next(candidates(state, ip, 1000, 0.0)).index
             for ip in map(ipaddress.ip_address, ("10.1.1.1", "10.2.2.2", "10.3.3.3"))}
    again, _ = parse(["-O", "maglev", "80", "127.0.0.1:81", "127.0.0.1:82", "127.0.0.1:83"])
    assert {ip: next(candidates(again, ipaddress.ip_address(ip), 9, 0.0)).index
            for ip in first} == first                 # another pen: the same servers
    assert "maglev" in commands.dump(state).splitlines()
    commands.execute(state, "no maglev")
    assert commands.execute(state, "mode") == "no hash no roundrobin no stubborn no weight no prio"


def test_a_blacklisted_server_leaves_the_table_and_its_clients_fail_over():
    state, _ = parse(["-O", "maglev", "80", "127.0.0.1:81", "127.0.0.1:82"])
    ips = [ipaddress.ip_address(f"10.0.{i}.1") for i in range(50)]
    chosen = {ip: next(candidates(state, ip, 1, 0.0)).index for ip in ips}
    assert set(chosen.values()) == {0, 1}
    state.blacklist(state.servers[0], 0.0, 100)
    assert {next(candidates(state, ip, 1, 1.0)).index for ip in ips} == {1}
