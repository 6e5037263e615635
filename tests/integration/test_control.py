"""The control port (-C) driven by Debian's real penctl binary (and ours), -F files with
SIGHUP, `write` round-trips, the -w status page, and the control port's defences.

Everything on loopback. The tests run as root in CI, where -C needs -u: USER is `-u <me>`.
"""

import json
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from support import ROOT, Backend, curl_json, free_port, run_pen, wait_for

PENCTL = "/usr/bin/penctl"          # Debian's pen package: the client pen's users script with
C_PEN = "/usr/bin/pen"
USER = ["-u", pwd.getpwuid(os.geteuid()).pw_name]

needs_penctl = pytest.mark.skipif(not os.path.exists(PENCTL),
                                  reason="needs Debian's penctl: apt-get install pen")


def penctl(target, *words, binary=PENCTL, timeout=15) -> str:
    cmd = [binary, str(target), *words] if binary else [
        sys.executable, "-m", "pen.penctl", str(target), *words]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def ctl_address():
    port = free_port()
    return f"127.0.0.1:{port}", port


def landed(port, n=4):
    return {curl_json(f"http://127.0.0.1:{port}/")["name"] for _ in range(n)}


@pytest.fixture
def four():
    started = [Backend(name) for name in ("a", "b", "emergency", "abuse")]
    yield started
    for backend in started:
        backend.stop()


def start_with_control(start_pen, *options, servers=(), unix=None):
    ctl = unix or ctl_address()[0]
    pen, port = start_pen(*USER, "-C", ctl, *options, servers=servers)
    if not unix:
        wait_for(lambda: penctl_ok(ctl), what="the control port")
    return pen, port, ctl


def idle(ctl):
    """Wait until no connection is in flight (the fixture's readiness probe makes one)."""
    wait_for(lambda: all(" conn 0 " in line for line in penctl(ctl, "servers").splitlines()),
             what="connections in flight to end")


def penctl_ok(ctl):
    try:
        return penctl(ctl, "pid", timeout=5).strip().isdigit()
    except (AssertionError, subprocess.TimeoutExpired):
        return False


# --- pen's answers, through pen's own client ------------------------------------------

@needs_penctl
def test_real_penctl_reads_pens_formats(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec,
                                                             backends[1].spec + ":10:20:3:1"])
    a, b = backends
    idle(ctl)
    assert penctl(ctl, "servers") == (
        f"0 addr 127.0.0.1 port {a.port} conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n"
        f"1 addr 127.0.0.1 port {b.port} conn 0 max 10 hard 20 weight 3 prio 1 sx 0 rx 0\n")
    assert penctl(ctl, "mode") == "no hash no roundrobin no stubborn no weight no prio\n"
    assert penctl(ctl, "pid") == f"{pen.proc.pid}\n"
    assert penctl(ctl, "control") == f"{ctl}\n"
    assert penctl(ctl, "listen") == f"127.0.0.1:{port}\n"
    assert penctl(ctl, "clients_max") == "2048\n"
    assert penctl(ctl, "conn_max") == "500\n"
    assert penctl(ctl, "idle_timeout") == "Idle timeout: 0 seconds\n"
    assert penctl(ctl, "tarpit_acl") == "tarpit_acl = -1\n"
    assert penctl(ctl, "blacklist", "7") == "7\n"
    assert penctl(ctl, "bogus") == "do_cmd: ignoring command starting with 'bogus'\n"
    curl_json(f"http://127.0.0.1:{port}/")
    # (the fixture's readiness probe connected once too)
    recent = re.fullmatch(r"127\.0\.0\.1 connects [12] sx ([1-9]\d*) rx ([1-9]\d*)\n",
                          penctl(ctl, "recent"))
    assert recent
    assert penctl(ctl, "recent", "0") == ""
    lines = [line.split() for line in penctl(ctl, "servers").splitlines()]
    # As in the C pen: a server's sx is what it was sent, a client's sx what it was sent
    # (the reply), so all the servers' rx is the client's sx and the other way round.
    assert int(recent[1]) == sum(int(words[-1]) for words in lines) > 0
    assert int(recent[2]) == sum(int(words[-3]) for words in lines) > 0


@needs_penctl
@pytest.mark.skipif(not os.path.exists(C_PEN), reason="needs the C pen: apt-get install pen")
def test_answers_match_the_c_pen(backends, start_pen, tmp_path):
    """The same commands to the C pen and to ours: the same bytes back."""
    servers = [backends[0].spec, backends[1].spec + ":10:20:3:1"]
    c_ctl, c_port = ctl_address()
    c_listen = f"127.0.0.1:{free_port()}"
    c_pen = subprocess.Popen([C_PEN, "-f", "-u", "nobody" if os.geteuid() == 0 else USER[1],
                              "-C", c_ctl, c_listen, *servers],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: penctl_ok(c_ctl), what="the C pen's control port")
        pen, port, ctl = start_with_control(start_pen, servers=servers)
        idle(ctl)
        idle(c_ctl)
        for line in ("servers", "mode", "clients_max", "conn_max", "blacklist", "timeout",
                     "tracking", "debug", "idle_timeout", "client_acl", "control_acl",
                     "blacklist 7", "timeout 5", "tracking 60", "debug 1", "idle_timeout 9",
                     "client_acl 3", "control_acl 0", "clients_max 4096", "hash", "weight",
                     "mode", "no hash", "prio", "mode", "server 0 weight 4", "server 1 max 2",
                     "servers", "acl 1 permit 127.0.0.1", "bogus", "stubborn", "roundrobin",
                     "mode", "recent 0"):
            ours, theirs = penctl(ctl, *line.split()), penctl(c_ctl, *line.split())
            assert ours == theirs, line
        assert penctl(ctl, "tarpit_acl").rstrip("\n") == penctl(c_ctl, "tarpit_acl")
    finally:
        c_pen.terminate()
        c_pen.wait(10)


# --- run-time changes that move traffic ---------------------------------------------------

@needs_penctl
def test_blacklist_and_whitelist_move_traffic(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, "-r", servers=[b.spec for b in backends])
    assert landed(port) == {"a", "b"}
    penctl(ctl, "server", "1", "blacklist", "3600")
    assert landed(port) == {"a"}
    penctl(ctl, "server", "1", "blacklist", "0")
    penctl(ctl, "server", "0", "blacklist", "3600")
    assert landed(port) == {"b"}
    penctl(ctl, "server", "0", "blacklist", "0")
    assert landed(port) == {"a", "b"}


@needs_penctl
def test_emergency_and_abuse_servers_switched_by_acls(four, start_pen):
    a, b, emergency, abuse = four
    pen, port, ctl = start_with_control(start_pen, "-r", "-e", emergency.spec, "-B", abuse.spec,
                                        servers=[a.spec, b.spec])
    assert landed(port) == {"a", "b"}
    penctl(ctl, "acl", "1", "deny", "127.0.0.1")
    penctl(ctl, "client_acl", "1")
    assert landed(port) == {"abuse"}
    penctl(ctl, "no", "acl", "1")
    assert landed(port) == {"a", "b"}
    # every server refuses the client by its own ACL: the emergency server takes over
    penctl(ctl, "acl", "2", "deny", "127.0.0.0", "255.0.0.0")
    penctl(ctl, "server", "0", "acl", "2")
    penctl(ctl, "server", "1", "acl", "2")
    assert landed(port) == {"emergency"}
    penctl(ctl, "server", "1", "acl", "0")
    assert landed(port) == {"b"}


def test_server_change_leaves_connections_in_flight_alone(backends, start_pen):
    a, b = backends
    pen, port, ctl = start_with_control(start_pen, servers=[a.spec])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as keep:
        request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        def ask():
            keep.sendall(request)
            data = b""
            while b"}" not in data:
                chunk = keep.recv(65536)
                assert chunk, "connection closed"
                data += chunk
            return json.loads(data.split(b"\r\n\r\n", 1)[1])["name"]
        assert ask() == "a"
        assert penctl(ctl, "server", "0", "port", str(b.port), binary=None) == ""
        assert ask() == "a"                        # the same connection, the same server
        assert landed(port, 2) == {"b"}            # new connections: the new address
        assert ask() == "a"
    assert penctl(ctl, "server", "1", "address", "127.0.0.1", "port", str(a.port),
                  binary=None) == ""
    assert f"1 addr 127.0.0.1 port {a.port}" in penctl(ctl, "servers", binary=None)


# --- config files ---------------------------------------------------------------------------

def test_config_file_and_sighup(backends, start_pen, tmp_path):
    a, b = backends
    cfg = tmp_path / "pen.cfg"
    cfg.write_text(f"# pen-lb test\nroundrobin\nserver 0 address 127.0.0.1 port {a.port}\n")
    pen, port, ctl = start_with_control(start_pen, "-F", str(cfg), servers=[b.spec])
    assert landed(port) == {"a"}
    assert penctl(ctl, "mode", binary=None).startswith("no hash roundrobin")
    cfg.write_text(f"server 0 address 127.0.0.1 port {b.port}\n")
    pen.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: landed(port, 2) == {"b"}, what="SIGHUP to switch server 0 to b")
    # an error anywhere: nothing of the file is applied, the error names file and line
    cfg.write_text(f"server 0 address 127.0.0.1 port {a.port}\nblacklist 5\nblacklist soon\n")
    pen.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"{cfg}:3: blacklist: expected a number" in pen.output(),
             what="the reload error in the log")
    assert landed(port, 2) == {"b"}
    assert penctl(ctl, "blacklist", binary=None) == "30\n"
    assert pen.proc.poll() is None


def test_config_file_error_at_start_names_file_and_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("hash\n\nserver 0 colour red\n")
    result = run_pen("-F", str(cfg), f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pen: -F {cfg}:3: server: unknown field 'colour' "
        "(one of acl, address, port, max, hard, blacklist, weight, prio)"]
    missing = run_pen("-F", str(tmp_path / "none.cfg"), f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert missing.returncode == 1 and "none.cfg: No such file or directory" in missing.stderr


SETTINGS = ("servers", "mode", "blacklist", "timeout", "tracking", "clients_max", "conn_max",
            "client_acl", "control_acl", "idle_timeout", "debug", "tcp_fastclose",
            "emergency_server", "abuse_server", "web_stats")


def test_write_round_trip(four, start_pen, tmp_path):
    a, b, emergency, abuse = four
    pen, port, ctl = start_with_control(
        start_pen, "-h", "-W", "-b", "9", "-T", "60", "-x", "77", "-c", "99", "-t", "2",
        "-e", emergency.spec, "-B", abuse.spec, "-w", str(tmp_path / "s.html"),
        "-O", "acl 2 deny 10.0.0.0 255.0.0.0", "-O", "acl 3 permit ::1/128", "-O", "client_acl 2",
        "-O", "idle_timeout 30", "-O", "tcp_fastclose both", "-O", "server 1 acl 3",
        servers=[a.spec + ":5:6:7:8", b.spec])
    dumped = tmp_path / "dumped.cfg"
    assert penctl(ctl, "write", str(dumped), binary=None) == ""
    again, port2, ctl2 = start_with_control(start_pen, "-F", str(dumped))
    idle(ctl)
    idle(ctl2)
    for query in SETTINGS:
        ours = penctl(ctl, query, binary=None)
        theirs = penctl(ctl2, query, binary=None)
        if query == "servers":          # traffic counters are not configuration
            ours, theirs = (re.sub(r" sx \d+ rx \d+", "", t) for t in (ours, theirs))
        assert ours == theirs, query
    assert landed(port2, 2) == landed(port, 2)


# --- the status page ------------------------------------------------------------------------

def test_status_page_command_sigusr1_json_metrics(backends, start_pen, tmp_path):
    page = tmp_path / "status.html"
    pen, port, ctl = start_with_control(start_pen, "-w", str(page),
                                        servers=[b.spec for b in backends])
    curl_json(f"http://127.0.0.1:{port}/")
    html = penctl(ctl, "status", binary=PENCTL if os.path.exists(PENCTL) else None)
    assert html.startswith("<html>") and page.read_text() == html
    for b in backends:
        assert f"<td>{b.port}</td>" in html
    assert "<h2>Active clients</h2>" in html and "<td>127.0.0.1</td>" in html
    page.unlink()
    pen.proc.send_signal(signal.SIGUSR1)
    wait_for(page.exists, what="SIGUSR1 to write the status page")
    snap = json.loads(penctl(ctl, "status", "json", binary=None))
    assert [s["port"] for s in snap["servers"]] == [b.port for b in backends]
    assert snap["clients"][0]["address"] == "127.0.0.1"
    assert sum(s["received"] for s in snap["servers"]) > 0
    ours = json.loads(penctl("--json", ctl, "status", binary=None))
    assert ours["servers"][0]["address"] == "127.0.0.1"
    metrics = penctl(ctl, "metrics", binary=None)
    assert f'pen_server_up{{address="127.0.0.1",port="{backends[0].port}",server="0"}} 1.0' \
        in metrics
    assert penctl(ctl, "status", "prometheus", binary=None).startswith("# HELP pen_up")
    servers = json.loads(penctl("--json", ctl, "servers", binary=None))
    assert [s["port"] for s in servers] == [b.port for b in backends]


# --- exit, root, sockets ----------------------------------------------------------------------

@needs_penctl
def test_exit_only_with_X(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    assert penctl(ctl, "exit") == "exit: not allowed (start pen with -X)\n"
    assert pen.proc.poll() is None and landed(port, 1) == {"a"}
    pen2, port2, ctl2 = start_with_control(start_pen, "-X", servers=[backends[0].spec])
    assert penctl(ctl2, "exit") == ""
    assert pen2.proc.wait(20) == 0


@pytest.mark.root
def test_root_without_u_gets_no_control_port():
    result = run_pen("-C", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "won't open a control port running as root" in line and "-u" in line


@needs_penctl
def test_unix_control_socket_is_private_and_removed(backends, start_pen, tmp_path):
    path = tmp_path / "ctl"
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec], unix=str(path))
    wait_for(path.exists, what="the control socket")
    wait_for(lambda: penctl_ok(str(path)), what="the control socket to answer")
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert penctl(str(path), "control") == f"{path}\n"
    assert pen.stop() == 0
    assert not path.exists()


def test_bare_port_warns_without_acl(backends, start_pen):
    port = free_port("0.0.0.0")
    pen, _ = start_pen(*USER, "-C", str(port), servers=[backends[0].spec])
    wait_for(lambda: penctl_ok(f"127.0.0.1:{port}"), what="the control port")
    assert "reachable beyond loopback" in pen.output()
    assert penctl(f"127.0.0.1:{port}", "control", binary=None) == f"0.0.0.0:{port}\n"


# --- bad control clients never hurt the balancer -------------------------------------------------

def raw(ctl, data: bytes, timeout=15, eof=False) -> bytes:
    host, port = ctl.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        if data:
            s.sendall(data)
        if eof:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_bad_control_clients(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[b.spec for b in backends])
    assert raw(ctl, b"x" * 5000 + b"\n") == b"command longer than 4096 bytes\n"
    assert raw(ctl, b"\x00\xff\xfe garbage\n") == b"command is not text\n"
    assert raw(ctl, b"servers", eof=True).startswith(b"0 addr")   # EOF ends a command too
    started = time.monotonic()
    assert raw(ctl, b"") == b"timed out after 5 s waiting for a command\n"   # silent client
    assert 4 < time.monotonic() - started < 10
    # control_acl: a denied peer is closed without an answer
    raw(ctl, b"acl 4 deny 127.0.0.1\n")
    raw(ctl, b"control_acl 4\n")
    try:
        assert raw(ctl, b"servers\n") == b""
    except ConnectionResetError:                    # closed with the command unread
        pass
    assert pen.proc.poll() is None
    assert landed(port, 2)                                       # traffic still flows
    assert "Traceback" not in pen.output()


def test_a_thousand_control_clients_while_traffic_flows(backends, start_pen):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    pen, port, ctl = start_with_control(start_pen, servers=[b.spec for b in backends])
    answers, errors = [], []

    def client(i):
        try:
            answers.append(raw(ctl, b"pid\n" if i % 10 else b"\x01bad\n", timeout=60))
        except OSError as e:
            errors.append(e)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(1000)]
    for t in threads:
        t.start()
    traffic = [curl_json(f"http://127.0.0.1:{port}/")["name"] for _ in range(5)]
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    assert len(answers) == 1000
    good = f"{pen.proc.pid}\n".encode()
    assert all(a in (good, b"command is not text\n") for a in answers)
    assert answers.count(good) == 900
    assert set(traffic) <= {"a", "b"}
    assert pen.proc.poll() is None and "Traceback" not in pen.output()


def test_connection_and_close(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as keep:
        keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}"):
            chunk = keep.recv(65536)
            assert chunk, reply
            reply += chunk
        [conn] = json.loads(penctl(ctl, "status", "json", binary=None))["connections"]
        text = penctl(ctl, "connection", str(conn["id"]), binary=None)
        client = f"127.0.0.1:{keep.getsockname()[1]}"
        assert text.startswith(f"Connection {conn['id']}:\nstate = 1\ndownfd = -1, upfd = -1\n"
                               f"client = {client}, server = 0\npend = 0\n")
        assert penctl(ctl, "close", str(conn["id"]), binary=None) == (
            f"Forcibly closing connection {conn['id']}\n")
        assert keep.recv(65536) == b""                      # pen closed it
    assert penctl(ctl, "connection", "999999", binary=None) == "Connection 999999: not in use\n"
    assert penctl(ctl, "close", "999999", binary=None) == "close: no connection 999999\n"


@pytest.mark.root
def test_control_port_as_nobody(backends, start_pen):
    """-u nobody: everything the control port needs is loaded before privileges drop."""
    import shutil
    import tempfile
    from pathlib import Path
    shared = Path(tempfile.mkdtemp(prefix="pen-nobody-"))    # pytest's tmp is root-only
    os.chmod(shared, 0o777)
    page = shared / "status.html"
    ctl = ctl_address()[0]
    pen, port = start_pen("-u", "nobody", "-C", ctl, "-w", str(page),
                          servers=[backends[0].spec])
    wait_for(lambda: penctl_ok(ctl), what="the control port")
    assert landed(port, 2) == {"a"}
    try:
        assert penctl(ctl, "status", binary=None).startswith("<html>")
        for words in (["servers"], ["status", "json"], ["metrics"], ["recent"]):
            assert penctl(ctl, *words, binary=None)
        assert page.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert "Traceback" not in pen.output()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_debug_and_ascii_set_at_run_time_turn_dumps_on(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    curl_json(f"http://127.0.0.1:{port}/quiet")
    assert penctl(ctl, "debug", "3") == "3\n"
    penctl(ctl, "ascii")
    curl_json(f"http://127.0.0.1:{port}/loud")
    wait_for(lambda: "GET /loud HTTP/1.1" in pen.output(), what="the dump of the request")
    assert "/quiet" not in pen.output()
