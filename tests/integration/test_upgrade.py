"""Upgrades that drop nothing (SIGUSR2, `pen --upgrade -p`): the new copy takes the
listening sockets and the client table, the old one finishes what it has; a new copy
that cannot start leaves the old one serving; systemd hears of each step (NOTIFY_SOCKET).
"""

import os
import pwd
import signal
import socket
import subprocess
import sys
import threading

import pytest
from udp_peers import echo

from support import (
    ROOT,
    Pen,
    curl_json,
    free_port,
    pattern,
    slow_download,
    steady_fds,
    wait_for,
)


def pen_upgrade(pidfile, *extra, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pen", "--upgrade", "-p", str(pidfile), *extra],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def penctl(ctl, *words) -> str:
    return subprocess.run([sys.executable, "-m", "pen.penctl", ctl, *words], capture_output=True,
                          text=True, timeout=10, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          check=True).stdout


def pid_in(pidfile) -> int:
    return int(pidfile.read_text())


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def upgradable(tmp_path):
    """upgradable(*args) -> (Pen, port, pidfile): pen -f -p PIDFILE; whichever copy the pid
    file names at the end is stopped."""
    started = []

    def start(*args, servers, udp=False):
        port = free_port(kind=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        pidfile = tmp_path / "pen.pid"
        pen = Pen("-p", str(pidfile), *args, f"127.0.0.1:{port}", *servers,
                  wait=None if udp else ("127.0.0.1", port))
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the pid file")
        started.append((pen, pidfile))
        return pen, port, pidfile
    yield start
    for pen, pidfile in started:
        try:
            last = pid_in(pidfile)
        except (OSError, ValueError):
            last = None
        pen.stop()
        if last and alive(last):
            os.kill(last, signal.SIGTERM)
            wait_for(lambda last=last: not alive(last), what="the last copy to exit")


def test_an_upgrade_under_load_drops_nothing_and_tracked_clients_keep_their_server(
        backends, upgradable):
    ctl = f"127.0.0.1:{free_port()}"
    pen, port, pidfile = upgradable("-u", pwd.getpwuid(os.geteuid()).pw_name, "-C", ctl,
                                    "-O", "upgrade_grace 5", servers=[b.spec for b in backends])
    url = f"http://127.0.0.1:{port}/"
    tracked = {ip: curl_json(url, interface=ip)["name"] for ip in ("127.0.0.2", "127.0.0.4")}
    assert set(tracked.values()) == {"a", "b"}          # round-robin spread them
    failures, done, served = [], threading.Event(), [0]

    def load():                        # a new connection per request, all through the upgrade
        while not done.is_set():
            try:
                curl_json(url, interface="127.0.0.3", timeout=5)
                served[0] += 1
            except AssertionError as e:
                failures.append(str(e))
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    download = {}
    downloader = threading.Thread(target=lambda: download.update(
        body=slow_download(port, 8 << 20)), daemon=True)
    downloader.start()                 # in flight on the old copy when it hands over
    wait_for(lambda: served[0] >= 20, what="load before the upgrade")
    old = pen.proc.pid
    result = pen_upgrade(pidfile)
    assert result.returncode == 0, result.stderr
    new = pid_in(pidfile)
    assert new != old and f"pid {old} hands over to pid {new}" in result.stdout
    before = served[0]
    wait_for(lambda: served[0] >= before + 20, what="load after the upgrade")
    downloader.join(30)
    assert download["body"] == pattern(8 << 20)          # finished on the old copy, whole
    assert pen.proc.wait(15) == 0                         # the old copy drained and left
    done.set()
    loader.join(10)
    assert failures == []
    # the new copy knows the old one's clients (their counts too) and keeps their servers
    assert "127.0.0.2 connects 1 " in penctl(ctl, "recent")
    assert {ip: curl_json(url, interface=ip)["name"] for ip in reversed(tracked)} == tracked
    assert "SIGUSR2: pid %d serves" % new in pen.output()


def test_a_new_copy_that_cannot_start_leaves_the_old_one_serving(backends, upgradable,
                                                                  tmp_path):
    cfg = tmp_path / "pen.cfg"
    cfg.write_text("blacklist 5\n")
    pen, port, pidfile = upgradable("-F", str(cfg), servers=[backends[0].spec])
    cfg.write_text("blacklist soon\n")                    # the new copy will refuse this
    result = pen_upgrade(pidfile, "-t", "3")
    assert result.returncode == 1
    assert f"pid {pen.proc.pid} serves on" in result.stderr
    wait_for(lambda: "did not take over" in pen.output(), what="the old copy to log it")
    assert "pen.cfg:1: blacklist: expected a number" in pen.output()
    assert pid_in(pidfile) == pen.proc.pid
    assert curl_json(f"http://127.0.0.1:{port}/")["name"] == "a"


def test_sigusr2_during_an_upgrade_is_ignored_with_a_line(backends, upgradable):
    pen, port, pidfile = upgradable(servers=[backends[0].spec])
    pen.proc.send_signal(signal.SIGUSR2)
    # (two signals sent at once would merge into one: the second goes once the first
    # has started a new copy, which takes a good part of a second to serve)
    wait_for(lambda: "SIGUSR2: started pid" in pen.output(), what="the upgrade to start")
    pen.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "an upgrade is already in progress; ignored" in pen.output(),
             what="the second SIGUSR2 to be refused")
    wait_for(lambda: pid_in(pidfile) != pen.proc.pid, what="the one upgrade")
    assert pen.output().count("SIGUSR2: started pid") == 1


def test_twenty_upgrades_leak_no_file_descriptor(backends, upgradable):
    pen, port, pidfile = upgradable(servers=[backends[0].spec])
    counts = []
    for _ in range(20):
        result = pen_upgrade(pidfile)
        assert result.returncode == 0, result.stderr
        new = pid_in(pidfile)
        assert curl_json(f"http://127.0.0.1:{port}/")["name"] == "a"
        counts.append(steady_fds(new))
    assert len(set(counts[2:])) == 1, counts


def test_udp_answers_across_an_upgrade(upgradable):
    backend = echo()
    try:
        pen, port, pidfile = upgradable("-U", servers=[backend.spec], udp=True)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)

        def ask(n):
            client.sendto(b"q%d" % n, ("127.0.0.1", port))
            return client.recv(100)
        assert wait_for(lambda: ask(0), what="the first answer") == b"q0"
        assert [ask(n) for n in range(1, 21)] == [b"q%d" % n for n in range(1, 21)]
        assert pen_upgrade(pidfile).returncode == 0
        assert [ask(n) for n in range(21, 41)] == [b"q%d" % n for n in range(21, 41)]
        client.close()
    finally:
        backend.stop()


def test_systemd_hears_ready_reloading_and_the_new_main_pid(backends, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(15)
    pidfile = tmp_path / "pen.pid"
    port = free_port()
    pen = Pen("-p", str(pidfile), f"127.0.0.1:{port}", backends[0].spec,
              env={"NOTIFY_SOCKET": path})
    new = None
    try:
        assert listener.recv(512) == b"READY=1"
        pen.proc.send_signal(signal.SIGHUP)
        assert listener.recv(512) == b"RELOADING=1"
        assert listener.recv(512) == b"READY=1"
        assert pen_upgrade(pidfile).returncode == 0
        new = pid_in(pidfile)
        assert listener.recv(512) == f"MAINPID={new}\nREADY=1".encode()
        os.kill(new, signal.SIGTERM)
        assert listener.recv(512) == b"STOPPING=1"
    finally:
        pen.stop()
        if new and alive(new):
            os.kill(new, signal.SIGKILL)
        listener.close()


def test_a_reload_removes_the_servers_the_file_dropped_and_lets_their_connections_finish(
        backends, tmp_path):
    lines = [f"server {i} address 127.0.0.1 port {b.port}\n" for i, b in enumerate(backends)]
    cfg = tmp_path / "pen.cfg"
    cfg.write_text("".join(lines) + "roundrobin\n")
    port = free_port()
    pen = Pen("-d", "-F", str(cfg), f"127.0.0.1:{port}", wait=("127.0.0.1", port))
    try:
        url = f"http://127.0.0.1:{port}/"
        assert {curl_json(url)["name"] for _ in range(4)} == {"a", "b"}
        download = {}
        loader = threading.Thread(target=lambda: download.update(
            body=slow_download(port, 4 << 20)), daemon=True)
        loader.start()
        victim = wait_for(lambda: [i for i, b in enumerate(backends)
                                   if any(r["path"].startswith("/bytes/") for r in b.requests)],
                          what="the download to reach a server")[0]
        survivor = backends[1 - victim].name
        cfg.write_text(lines[1 - victim] + "roundrobin\n")   # the file drops the victim
        pen.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "re-read" in pen.output(), what="the reload")
        assert {curl_json(url)["name"] for _ in range(6)} == {survivor}
        loader.join(30)
        assert download["body"] == pattern(4 << 20)          # its connection finished whole
    finally:
        pen.stop()
