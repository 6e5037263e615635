"""-O "workers N": one pen over several processes, steered by client address, answering
for the whole group (control port, status), supervising its workers. Linux only (the
steering program is SO_ATTACH_REUSEPORT_CBPF)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
from udp_peers import Responder, start_udp_pen

from support import ROOT, Backend, can_connect, free_port, pattern, run_pen, wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux only")

ADDRESSES = [f"127.0.{n // 200 + 3}.{n % 200 + 10}" for n in range(50)]


def penctl(port: int, *words: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((" ".join(words) + "\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def status_of(ctl: int) -> dict:
    return json.loads(penctl(ctl, "status", "json"))


def get(port: int, source: str, path: str = "/") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        body = conn.getresponse().read()
        return json.loads(body) if path == "/" else {"body": body}
    finally:
        conn.close()


def hold(port: int, source: str) -> socket.socket:
    """A keep-alive connection from source that has been answered once, left open."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(1024).startswith(b"HTTP/1.1 200"), source
    return sock


def by_worker(workers: int) -> dict[int, list[str]]:
    """ADDRESSES by the worker the steering program sends each to."""
    from pen.steering import worker_for
    return {row: [a for a in ADDRESSES if worker_for(a, workers) == row]
            for row in range(workers)}


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    """A running process (not gone, not a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def workers_of(pen, count: int) -> list[int]:
    """The workers' pids once there are count of them (a loaded machine starts Python
    slowly: 30 s)."""
    return wait_for(lambda: len(children(pen.proc.pid)) == count and
                    children(pen.proc.pid), timeout=30, what=f"{count} workers")


def beating(ctl: int, count: int) -> list[dict]:
    """status json's rows for the group's count workers, once each beats (it serves). A
    group started without start_pen's probe and awaited so has no connection from 127.0.0.1
    waiting in a worker's backlog, for the limits to count."""
    def rows():
        try:
            workers = status_of(ctl)["workers"]
        except (OSError, ValueError):             # the control port is not up yet
            return None
        return len(workers) == count and all(w["heartbeat_age"] < 1 for w in workers) \
            and workers
    return wait_for(rows, timeout=30, what=f"{count} workers' heartbeats")


@pytest.fixture(autouse=True)
def steered(monkeypatch):
    """These tests are about Linux's steering; the portable pass (PEN_PORTABLE=1) runs
    them too, and test_without_steering_... its fallback."""
    monkeypatch.setenv("PEN_PORTABLE", "0")


@pytest.fixture
def backends():
    started = [Backend(f"s{i}") for i in range(3)]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def group(start_pen, backends):
    ctl = free_port()
    pen, port = start_pen("-O", "workers 2", "-C", f"127.0.0.1:{ctl}", "-u", "root", "-X",
                          servers=[b.spec for b in backends], wait=False)
    beating(ctl, 2)
    return pen, port, ctl


def test_fifty_addresses_twenty_connections_each_always_one_server(group):
    pen, port, ctl = group
    seen: dict[str, set] = {a: set() for a in ADDRESSES}
    for _ in range(20):
        for address in ADDRESSES:
            seen[address].add(get(port, address)["name"])
    moved = {a: s for a, s in seen.items() if len(s) != 1}
    assert not moved, f"addresses that reached several servers: {moved}"
    status = status_of(ctl)
    clients = [c for c in status["clients"] if c["address"] in seen]   # (not the probes')
    assert len(clients) == 50 and all(c["connects"] == 20 for c in clients)
    # both workers took clients: a client's slot in the group is its worker's slot * 2 + row
    assert {c["slot"] % 2 for c in clients} == {0, 1}
    assert sum(s["connects"] for s in status["servers"]) == status["accepted"] >= 1000
    assert len({next(iter(s)) for s in seen.values()}) == 3      # and all servers used


def test_udp_sessions_from_one_address_reach_one_server(start_pen):
    responders = [Responder(lambda data, addr, n=n: f"u{n}".encode()) for n in range(2)]
    try:
        pen, port = start_udp_pen(start_pen, "-O", "workers 2",
                                  servers=[f"127.0.0.1:{r.port}" for r in responders])
        workers_of(pen, 2)
        for address in ADDRESSES[:20]:
            answers = set()
            for _ in range(5):                 # five sessions: five source ports
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((address, 0))
                    sock.settimeout(5)
                    sock.sendto(b"hello", ("127.0.0.1", port))
                    answers.add(sock.recvfrom(100)[0])
            assert len(answers) == 1, f"{address}: {answers}"
    finally:
        for responder in responders:
            responder.stop()


def test_servers_connection_and_close_answer_for_the_group(group):
    pen, port, ctl = group
    held = []
    for address in ADDRESSES[:10]:              # ten clients held open, on both workers
        sock = socket.create_connection(("127.0.0.1", port), source_address=(address, 0))
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(sock)
    status = wait_for(lambda: (s := status_of(ctl))
                      and len(s["connections"]) == 10 and s, what="10 connections")
    assert sum(s["connections"] for s in status["servers"]) == 10
    servers = penctl(ctl, "servers")
    assert sum(int(line.split(" conn ")[1].split()[0]) for line in servers.splitlines()) == 10
    ids = sorted(c["id"] for c in status["connections"])
    assert {i % 2 for i in ids} == {0, 1}
    victim = ids[-1]
    client = next(c["client"] for c in status["connections"] if c["id"] == victim)
    shown = penctl(ctl, "connection", str(victim))
    assert shown.startswith(f"Connection {victim}:") and f"client address = {client}" in shown
    assert penctl(ctl, "close", str(victim)) == f"Forcibly closing connection {victim}\n"
    wait_for(lambda: len(status_of(ctl)["connections"]) == 9,
             what="the closed connection to go")
    for sock in held:
        sock.close()


def test_a_failure_one_worker_sees_blacklists_the_server_for_all(start_pen, backends):
    dead = free_port()                           # nothing listens there
    ctl = free_port()
    pen, port = start_pen("-O", "workers 2", "-C", f"127.0.0.1:{ctl}", "-u", "root",
                          "-b", "60", servers=[f"127.0.0.1:{dead}", backends[0].spec])
    workers_of(pen, 2)
    for address in ADDRESSES:                    # clients on both workers
        assert get(port, address)["name"] == "s0"
    status = status_of(ctl)
    dead_server = status["servers"][0]
    assert dead_server["state"] == "blacklisted"
    assert dead_server["failures"] == 1, "each worker tried the dead server itself"


def test_settings_reach_every_worker_and_errors_reach_none(group):
    pen, port, ctl = group
    assert penctl(ctl, "server", "0", "blacklist", "600") == ""
    assert penctl(ctl, "server", "1", "blacklist", "600") == ""
    names = {get(port, address)["name"] for address in ADDRESSES}
    assert names == {"s2"}
    assert penctl(ctl, "workers", "3").startswith("workers: set at start-up only")
    assert penctl(ctl, "listen", "127.0.0.1:1").startswith("listen: a worker group cannot")
    assert penctl(ctl, "workers") == "2\n"


def test_a_killed_worker_comes_back_on_the_same_socket(group):
    pen, port, ctl = group
    before = {a: get(port, a)["name"] for a in ADDRESSES}
    status = status_of(ctl)
    row_of = {c["address"]: c["slot"] % 2 for c in status["clients"] if c["address"] in before}
    victim = next(w["pid"] for w in status["workers"] if w["row"] == 0)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in children(pen.proc.pid) and
             len(children(pen.proc.pid)) == 2, what="a new worker")
    assert f"worker 0 (pid {victim}) ended (killed by signal 9)" in pen.output()
    after = {a: get(port, a)["name"] for a in ADDRESSES}
    status = status_of(ctl)
    # the same addresses reach the new worker 0 (same socket, same steering index)...
    assert {c["address"]: c["slot"] % 2 for c in status["clients"]
            if c["address"] in before} == row_of
    assert status["workers"][0]["pid"] != victim and status["workers"][0]["restarts"] == 1
    # the parent's own event beside the workers' (each gather adds theirs afresh)
    assert status["events"]["worker_restarts"] == 1
    assert status_of(ctl)["events"]["worker_restarts"] == 1
    # ...and worker 1's clients kept their table entries, so their servers
    survivors = [a for a in ADDRESSES if row_of[a] == 1]
    assert survivors and all(after[a] == before[a] for a in survivors)


def test_a_stuck_worker_is_killed_and_replaced(group):
    pen, port, ctl = group
    victim = beating(ctl, 2)[1]["pid"]
    os.kill(victim, signal.SIGSTOP)
    wait_for(lambda: victim not in children(pen.proc.pid) and
             len(children(pen.proc.pid)) == 2, timeout=20, what="the stuck worker replaced")
    # (3 s and a little: more on a loaded machine, where the parent looks late)
    assert re.search(rf"worker 1 \(pid {victim}\): no heartbeat for [3-9]\.\d", pen.output())
    assert {get(port, a)["name"] for a in ADDRESSES} <= {"s0", "s1", "s2"}


def test_sigterm_drains_every_worker(group):
    pen, port, ctl = group
    size = 8 << 20
    held = []
    for address in ADDRESSES[:6]:              # six downloads held in flight, both workers
        sock = socket.create_connection(("127.0.0.1", port), source_address=(address, 0))
        sock.sendall(f"GET /bytes/{size} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        held.append(sock)
    status = wait_for(lambda: (s := status_of(ctl))
                      and len(s["connections"]) == 6 and s, what="six downloads in flight")
    assert {c["id"] % 2 for c in status["connections"]} == {0, 1}
    workers = children(pen.proc.pid)
    pen.proc.send_signal(signal.SIGTERM)
    bodies = {}

    def read(sock):
        sock.settimeout(20)
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
        sock.close()
        bodies[sock] = bytes(data).partition(b"\r\n\r\n")[2]

    readers = [threading.Thread(target=read, args=(sock,)) for sock in held]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    assert len(bodies) == 6 and all(body == pattern(size) for body in bodies.values())
    assert pen.proc.wait(30) == 0
    assert not any(alive(w) for w in workers)


def test_sighup_rereads_the_file_in_every_worker(start_pen, backends, tmp_path):
    config = tmp_path / "pen.cfg"
    config.write_text(f"server 0 address 127.0.0.1 port {backends[0].port}\n")
    pen, port = start_pen("-O", "workers 2", "-F", str(config), servers=[])
    workers_of(pen, 2)
    assert {get(port, a)["name"] for a in ADDRESSES} == {"s0"}
    config.write_text(f"server 0 address 127.0.0.1 port {backends[1].port}\n")
    pen.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: {get(port, a)["name"] for a in ADDRESSES} == {"s1"},
             what="every worker to use the new server")


@pytest.mark.parametrize("words, message", [
    (["-O", "workers 0"], "workers: must be at least 1, got 0"),
    (["-O", "workers 257"], "workers: at most 256, got 257"),
    (["-O", "workers many"], "workers: expected a number, got 'many'"),
    (["-O", "workers 2", "-O", "dsr_if lo"], "workers: DSR (dsr_if) cannot be split"),
])
def test_bad_worker_counts_and_modes_are_one_line(words, message):
    done = run_pen(*words, f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_workers_auto_is_the_cpus_this_process_may_use(start_pen, backends):
    ctl = free_port()
    pen, port = start_pen("-O", "workers auto", "-C", f"127.0.0.1:{ctl}", "-u", "root",
                          servers=[backends[0].spec])
    cpus = len(os.sched_getaffinity(0))
    # (a group's parent opens its control port after the workers' listening sockets)
    wait_for(lambda: can_connect("127.0.0.1", ctl), what="the control port")
    assert penctl(ctl, "workers") == f"{cpus}\n"
    if cpus > 1:
        workers_of(pen, cpus)
    assert get(port, ADDRESSES[0])["name"] == "s0"


def test_the_parents_health_checks_take_a_server_out_of_every_worker(group):
    pen, port, ctl = group
    assert penctl(ctl, "healthcheck_interval", "0.2") == ""
    assert penctl(ctl, "server", "0", "healthcheck", "http", "GET", "/", "200", "nowhere") == ""
    wait_for(lambda: " state down " in penctl(ctl, "health").splitlines()[0],
             what="server 0 down")
    assert {get(port, a)["name"] for a in ADDRESSES} == {"s1", "s2"}
    metrics = penctl(ctl, "metrics").splitlines()
    up = sorted(line.rsplit(" ", 1)[1] for line in metrics if line.startswith("pen_server_up{"))
    assert up == ["0.0", "1.0", "1.0"], up
    accepts = next(line for line in metrics if line.startswith("pen_accepts_total "))
    assert float(accepts.split()[1]) >= len(ADDRESSES)          # the workers' sum


def pen_upgrade(pidfile, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pen", "--upgrade", "-p", str(pidfile), *extra],
                          capture_output=True, text=True, timeout=90,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_an_upgrade_carries_the_group_its_clients_and_a_download_in_flight(
        start_pen, backends, tmp_path):
    pidfile, ctl = tmp_path / "pen.pid", free_port()
    pen, port = start_pen("-O", "workers 2", "-p", str(pidfile), "-C", f"127.0.0.1:{ctl}",
                          "-u", "root", servers=[b.spec for b in backends])
    old_workers = workers_of(pen, 2)
    before = {a: get(port, a)["name"] for a in ADDRESSES}
    size, got = 8 << 20, {}
    download = threading.Thread(target=lambda: got.update(
        body=get(port, ADDRESSES[0], f"/bytes/{size}")["body"]))
    download.start()
    wait_for(lambda: status_of(ctl)["connections"],
             what="the download in flight")
    done = pen_upgrade(pidfile)
    assert done.returncode == 0, done.stderr
    new_pid = int(pidfile.read_text())
    assert new_pid != pen.proc.pid
    assert {a: get(port, a)["name"] for a in ADDRESSES} == before   # every client kept
    assert penctl(ctl, "workers") == "2\n" and penctl(ctl, "pid") == f"{new_pid}\n"
    download.join(60)
    assert got["body"] == pattern(size)
    assert pen.proc.wait(60) == 0                      # the old group drained and left
    assert not any(alive(w) for w in old_workers)
    os.kill(new_pid, signal.SIGTERM)
    wait_for(lambda: not alive(new_pid), timeout=30,
             what="the new group to stop")


def test_an_upgrade_that_changes_the_worker_count_is_refused_and_the_old_serves_on(
        start_pen, backends, tmp_path):
    pidfile, config = tmp_path / "pen.pid", tmp_path / "pen.cfg"
    config.write_text("workers 2\n")
    pen, port = start_pen("-F", str(config), "-p", str(pidfile),
                          servers=[backends[0].spec])
    workers_of(pen, 2)
    config.write_text("workers 1\n")
    done = pen_upgrade(pidfile, "-t", "10")
    assert done.returncode == 1
    assert f"pid {pen.proc.pid} serves on" in done.stderr
    wait_for(lambda: "serves with 2 worker(s) and this one wants 1" in pen.output(),
             what="the reason in the log")
    assert get(port, ADDRESSES[0])["name"] == "s0"
    assert int(pidfile.read_text()) == pen.proc.pid


def test_workers_drain_and_exit_when_the_parent_is_gone(group):
    pen, port, ctl = group
    workers = workers_of(pen, 2)
    pen.proc.kill()
    pen.proc.wait(10)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=20,
             what="the orphaned workers to exit")


def limited_group(start_pen, backends, limit: int):
    """Two workers under -x limit, with a control port: (pen, port, ctl, addresses by worker)."""
    ctl = free_port()
    pen, port = start_pen("-O", "workers 2", "-x", str(limit), "-C", f"127.0.0.1:{ctl}",
                          "-u", "root", servers=[backends[0].spec], wait=False)
    beating(ctl, 2)
    return pen, port, ctl, by_worker(2)


def test_the_connection_limit_holds_for_the_group(start_pen, backends):
    pen, port, ctl, on = limited_group(start_pen, backends, 4)
    held = [hold(port, a) for a in on[0][:2] + on[1][:2]]     # two on each worker
    wait_for(lambda: len(status_of(ctl)["connections"]) == 4,
             what="four connections")
    refused = status_of(ctl)["events"].get("conn_refused_full", 0)
    with socket.create_connection(("127.0.0.1", port), source_address=(on[1][2], 0)) as late:
        late.settimeout(10)
        try:
            late.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = late.recv(1024)
        except ConnectionResetError:
            answer = b""                          # closed at once: refused
        assert answer == b"", "worker 1 served a fifth connection past -x 4"
    status = status_of(ctl)
    assert status["events"].get("conn_refused_full") == refused + 1
    held.pop().close()
    wait_for(lambda: len(status_of(ctl)["connections"]) == 3,
             what="a free place")
    assert get(port, on[1][2])["name"] == "s0"
    for sock in held:
        sock.close()


def test_a_flood_steered_to_one_worker_cannot_starve_the_other(start_pen, backends):
    pen, port, ctl, on = limited_group(start_pen, backends, 10)
    flood = [hold(port, a) for a in on[0][:10]]           # the whole -x, all on worker 0
    wait_for(lambda: len(status_of(ctl)["connections"]) == 10,
             what="the flood holding -x")
    held = [hold(port, a) for a in on[1][:5]]             # worker 1's share: -x / 2
    # worker 0 gives back what it holds beyond the group's limit, within a heartbeat or two
    status = wait_for(lambda: (s := status_of(ctl))
                      and len(s["connections"]) == 10 and s, what="-x restored")
    assert sorted(c["id"] % 2 for c in status["connections"]) == [0] * 5 + [1] * 5
    assert status["events"]["conn_evicted_full"] == 5
    for sock in flood + held:
        sock.close()


def test_without_steering_pen_says_so_and_serves_with_one_worker(start_pen, backends,
                                                                  monkeypatch):
    monkeypatch.setenv("PEN_PORTABLE", "1")          # as on a system without CBPF steering
    ctl = free_port()
    pen, port = start_pen("-O", "workers 2", "-C", f"127.0.0.1:{ctl}", "-u", "root",
                          servers=[backends[0].spec])
    assert get(port, ADDRESSES[0])["name"] == "s0"
    assert penctl(ctl, "workers") == "1\n"
    assert children(pen.proc.pid) == []
    assert "workers: the kernel cannot steer clients" in pen.output()
    assert "serving with 1 worker" in pen.output()


def test_systemd_hears_the_parent_alone(start_pen, backends, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(30)
    with listener:
        pen, port = start_pen("-O", "workers 2", servers=[backends[0].spec],
                              env={"NOTIFY_SOCKET": path})
        workers_of(pen, 2)
        assert listener.recv(512) == b"READY=1"
        wait_for(lambda: get(port, ADDRESSES[0]) and get(port, ADDRESSES[1]),
                 what="both workers serving")      # (a worker's READY=1 would be here)
        pen.proc.send_signal(signal.SIGTERM)
        assert pen.proc.wait(30) == 0
        listener.settimeout(0.5)
        messages = []
        try:
            while True:
                messages.append(listener.recv(512))
        except TimeoutError:
            pass
        assert messages == [b"STOPPING=1"], messages
