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
import time

import pytest

from support import ROOT, Backend, curl_json, fill_backlog, free_port, run_pen, wait_for

PENCTL = "/usr/bin/penctl"          # Debian's pen package: the client pen's users script with
C_PEN = "/usr/bin/pen"
USER = ["-u", pwd.getpwuid(os.geteuid()).pw_name]



def penctl(target, *words, binary=None, timeout=15) -> str:
    """Our penctl, or (binary=PENCTL) Debian's, for the tests about compatibility."""
    cmd = [binary, str(target), *words] if binary else [
        sys.executable, "-m", "pen.penctl", str(target), *words]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def c_penctl(target, *words, timeout=15) -> str:
    return penctl(target, *words, binary=PENCTL, timeout=timeout)


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

@pytest.mark.c_pen
def test_real_penctl_reads_pens_formats(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec,
                                                             backends[1].spec + ":10:20:3:1"])
    a, b = backends
    idle(ctl)
    assert c_penctl(ctl, "servers") == (
        f"0 addr 127.0.0.1 port {a.port} conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n"
        f"1 addr 127.0.0.1 port {b.port} conn 0 max 10 hard 20 weight 3 prio 1 sx 0 rx 0\n")
    assert c_penctl(ctl, "mode") == "no hash no roundrobin no stubborn no weight no prio\n"
    assert c_penctl(ctl, "pid") == f"{pen.proc.pid}\n"
    assert c_penctl(ctl, "control") == f"{ctl}\n"
    assert c_penctl(ctl, "listen") == f"127.0.0.1:{port}\n"
    assert c_penctl(ctl, "clients_max") == "2048\n"
    assert c_penctl(ctl, "conn_max") == "500\n"
    assert c_penctl(ctl, "idle_timeout") == "Idle timeout: 0 seconds\n"
    assert c_penctl(ctl, "tarpit_acl") == "tarpit_acl = -1"          # no newline, as pen
    assert c_penctl(ctl, "blacklist", "7") == "7\n"
    assert c_penctl(ctl, "bogus") == "do_cmd: ignoring command starting with 'bogus'\n"
    curl_json(f"http://127.0.0.1:{port}/")
    # (the fixture's readiness probe connected once too)
    recent = re.fullmatch(r"127\.0\.0\.1 connects [12] sx ([1-9]\d*) rx ([1-9]\d*)\n",
                          c_penctl(ctl, "recent"))
    assert recent
    assert c_penctl(ctl, "recent", "0") == ""
    lines = [line.split() for line in c_penctl(ctl, "servers").splitlines()]
    # As in the C pen: a server's sx is what it was sent, a client's sx what it was sent
    # (the reply), so all the servers' rx is the client's sx and the other way round.
    assert int(recent[1]) == sum(int(words[-1]) for words in lines) > 0
    assert int(recent[2]) == sum(int(words[-3]) for words in lines) > 0


@pytest.mark.c_pen
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
                     "mode", "recent 0", "tarpit_acl", "tarpit_acl 2", "tcp_fastclose",
                     "exit", "connection 3", "connection 4096", "close 4096", "connection 500"):
            ours, theirs = c_penctl(ctl, *line.split()), c_penctl(c_ctl, *line.split())
            assert ours == theirs, line
    finally:
        c_pen.terminate()
        c_pen.wait(10)


# --- run-time changes that move traffic ---------------------------------------------------

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
        assert penctl(ctl, "server", "0", "port", str(b.port)) == ""
        assert ask() == "a"                        # the same connection, the same server
        assert landed(port, 2) == {"b"}            # new connections: the new address
        assert ask() == "a"
    assert penctl(ctl, "server", "1", "address", "127.0.0.1", "port", str(a.port)) == ""
    assert f"1 addr 127.0.0.1 port {a.port}" in penctl(ctl, "servers")


# --- config files ---------------------------------------------------------------------------

def test_config_file_and_sighup(backends, start_pen, tmp_path):
    a, b = backends
    cfg = tmp_path / "pen.cfg"
    cfg.write_text(f"# pen-lb test\nroundrobin\nserver 0 address 127.0.0.1 port {a.port}\n")
    pen, port, ctl = start_with_control(start_pen, "-F", str(cfg), servers=[b.spec])
    assert landed(port) == {"a"}
    assert penctl(ctl, "mode").startswith("no hash roundrobin")
    cfg.write_text(f"server 0 address 127.0.0.1 port {b.port}\n")
    pen.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: landed(port, 2) == {"b"}, what="SIGHUP to switch server 0 to b")
    # an error anywhere: nothing of the file is applied, the error names file and line
    cfg.write_text(f"server 0 address 127.0.0.1 port {a.port}\nblacklist 5\nblacklist soon\n")
    pen.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"{cfg}:3: blacklist: expected a number" in pen.output(),
             what="the reload error in the log")
    assert landed(port, 2) == {"b"}
    assert penctl(ctl, "blacklist") == "30\n"
    assert pen.proc.poll() is None


def test_config_file_error_at_start_names_file_and_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("hash\n\nserver 0 colour red\n")
    result = run_pen("-F", str(cfg), f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pen: -F {cfg}:3: server: unknown field 'colour' "
        "(one of acl, address, port, max, hard, blacklist, weight, prio, proxy_protocol)"]
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
    assert penctl(ctl, "write", str(dumped)) == ""
    again, port2, ctl2 = start_with_control(start_pen, "-F", str(dumped))
    idle(ctl)
    idle(ctl2)
    for query in SETTINGS:
        ours = penctl(ctl, query)
        theirs = penctl(ctl2, query)
        if query == "servers":          # traffic counters are not configuration
            ours, theirs = (re.sub(r" sx \d+ rx \d+", "", t) for t in (ours, theirs))
        assert ours == theirs, query
    assert landed(port2, 2) == landed(port, 2)


# --- the status page ------------------------------------------------------------------------

@pytest.mark.c_pen
def test_status_page_command_sigusr1_json_metrics(backends, start_pen, tmp_path):
    page = tmp_path / "status.html"
    pen, port, ctl = start_with_control(start_pen, "-w", str(page),
                                        servers=[b.spec for b in backends])
    curl_json(f"http://127.0.0.1:{port}/")
    html = c_penctl(ctl, "status")
    assert html.startswith("<html>") and page.read_text() == html
    for b in backends:
        assert f"<td>{b.port}</td>" in html
    assert "<h2>Active clients</h2>" in html and "<td>127.0.0.1</td>" in html
    page.unlink()
    pen.proc.send_signal(signal.SIGUSR1)
    wait_for(page.exists, what="SIGUSR1 to write the status page")
    snap = json.loads(penctl(ctl, "status", "json"))
    assert [s["port"] for s in snap["servers"]] == [b.port for b in backends]
    assert snap["clients"][0]["address"] == "127.0.0.1"
    assert sum(s["received"] for s in snap["servers"]) > 0
    ours = json.loads(penctl("--json", ctl, "status"))
    assert ours["servers"][0]["address"] == "127.0.0.1"
    metrics = penctl(ctl, "metrics")
    assert f'pen_server_up{{address="127.0.0.1",port="{backends[0].port}",server="0"}} 1.0' \
        in metrics
    assert penctl(ctl, "status", "prometheus").startswith("# HELP pen_up")
    servers = json.loads(penctl("--json", ctl, "servers"))
    assert [s["port"] for s in servers] == [b.port for b in backends]


# --- exit, root, sockets ----------------------------------------------------------------------

@pytest.mark.c_pen
def test_exit_only_with_X(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    assert c_penctl(ctl, "exit") == "Exit is not enabled; restart with -X flag\n"
    assert pen.proc.poll() is None and landed(port, 1) == {"a"}
    pen2, port2, ctl2 = start_with_control(start_pen, "-X", servers=[backends[0].spec])
    assert c_penctl(ctl2, "exit") == ""
    assert pen2.proc.wait(20) == 0


@pytest.mark.root
def test_root_without_u_gets_no_control_port():
    result = run_pen("-C", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "won't open a control port running as root" in line and "-u" in line


@pytest.mark.c_pen
def test_unix_control_socket_is_private_and_removed(backends, start_pen, tmp_path):
    path = tmp_path / "ctl"
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec], unix=str(path))
    wait_for(path.exists, what="the control socket")
    wait_for(lambda: penctl_ok(str(path)), what="the control socket to answer")
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert c_penctl(str(path), "control") == f"{path}\n"
    assert pen.stop() == 0
    assert not path.exists()


def test_bare_port_warns_without_acl(backends, start_pen):
    port = free_port("0.0.0.0")
    pen, _ = start_pen(*USER, "-C", str(port), servers=[backends[0].spec])
    wait_for(lambda: penctl_ok(f"127.0.0.1:{port}"), what="the control port")
    assert "reachable beyond loopback" in pen.output()
    assert penctl(f"127.0.0.1:{port}", "control") == f"0.0.0.0:{port}\n"


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
    assert raw(ctl, b"") == b"timed out after 1 s waiting for a command\n"   # silent client
    assert 0.9 < time.monotonic() - started < 10
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
    """1000 clients open at once, each sending its command as soon as it is connected (as
    penctl does; from one thread, so no client is starved of the CPU between its connect
    and its send and taken for a silent one), with HTTP traffic in the middle: all answered."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    pen, port, ctl = start_with_control(start_pen, servers=[b.spec for b in backends])
    host, ctl_port = ctl.rsplit(":", 1)
    socks, traffic = [], []
    try:
        for i in range(1000):
            s = socket.create_connection((host, int(ctl_port)), timeout=60)
            s.sendall(b"pid\n" if i % 10 else b"\x01bad\n")
            socks.append(s)
            if i % 200 == 100:
                traffic.append(curl_json(f"http://127.0.0.1:{port}/")["name"])
        answers = []
        for s in socks:
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            answers.append(out)
    finally:
        for s in socks:
            s.close()
    good = f"{pen.proc.pid}\n".encode()
    assert all(a in (good, b"command is not text\n") for a in answers), \
        [a for a in answers if a not in (good, b"command is not text\n")][:3]
    assert answers.count(good) == 900
    assert set(traffic) <= {"a", "b"} and len(traffic) == 5
    assert pen.proc.poll() is None and "Traceback" not in pen.output()


def flood(port, n, source="127.0.0.2"):
    """n control connections from source, held open: half silent, half sending garbage
    that never ends its line."""
    held = []
    for i in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        if i % 2:
            s.sendall(b"\x00\x01 garbage without a newline")
        held.append(s)
    return held


def closed_by_pen(s) -> bool:
    s.setblocking(False)
    try:
        while s.recv(4096):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.c_pen
def test_operator_is_answered_during_a_control_port_flood(backends, start_pen):
    """Issue 14: 500 silent or garbage connections from 127.0.0.2 used to keep penctl
    from 127.0.0.1 unanswered for many seconds (64 slots, 5 s each, the rest in the
    backlog). Now a silent client gives way to a newcomer, and each is closed after 1 s."""
    pen, port, ctl = start_with_control(start_pen, servers=[b.spec for b in backends])
    ctl_port = int(ctl.rsplit(":", 1)[1])
    held = flood(ctl_port, 500)
    try:
        times = []
        for binary in (PENCTL, None, PENCTL, None):         # the real penctl, then ours
            started = time.monotonic()
            assert penctl(ctl, "pid", binary=binary, timeout=3).strip() == str(pen.proc.pid)
            times.append(time.monotonic() - started)
        print(f"\npenctl during a flood of 500: {', '.join(f'{t:.3f}' for t in times)} s")
        # Garbage and silent clients are closed, not left to hold the port.
        wait_for(lambda: all(closed_by_pen(s) for s in held), timeout=20,
                 what="pen to close the flood's connections")
    finally:
        for s in held:
            s.close()
    assert pen.proc.poll() is None and "Traceback" not in pen.output()


def test_connection_and_close(backends, start_pen):
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    idle(ctl)                          # the readiness probe's slot 0 is free again
    with socket.create_connection(("127.0.0.1", port), timeout=10) as keep:
        keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}"):
            chunk = keep.recv(65536)
            assert chunk, reply
            reply += chunk
        [conn] = json.loads(penctl(ctl, "status", "json"))["connections"]
        text = penctl(ctl, "connection", str(conn["id"]))
        client = f"127.0.0.1:{keep.getsockname()[1]}"
        # pen's lines: state 2 (connected), its two fds, client slot 0 and server 0
        fds = re.fullmatch(r"Connection 0:\nstate = 2\ndownfd = (\d+), upfd = (\d+)\n"
                           r"client = 0, server = 0\npend = 0\n"
                           rf"client address = {client}\n(.*\n)+", text)
        assert conn["id"] == 0 and fds and fds[1] != fds[2]
        for fd in fds.groups()[:2]:                          # they are pen's own sockets
            assert os.readlink(f"/proc/{pen.proc.pid}/fd/{fd}").startswith("socket:")
        assert penctl(ctl, "close", str(conn["id"])) == (
            f"Forcibly closing connection {conn['id']}\n")
        assert keep.recv(65536) == b""                      # pen closed it
    assert penctl(ctl, "connection", "3") == (
        "Connection 3:\nstate = 0\ndownfd = -1, upfd = -1\nclient = 0, server = 0\npend = 0\n")
    assert penctl(ctl, "connection", "500") == "Connection 500 out of range\n"
    assert penctl(ctl, "close", "999999") == "Connection 999999 out of range\n"


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
        assert penctl(ctl, "status").startswith("<html>")
        for words in (["servers"], ["status", "json"], ["metrics"], ["recent"]):
            assert penctl(ctl, *words)
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


def test_close_ends_a_connection_still_connecting(start_pen):
    """close N while pen waits for the server to answer its connect: the dial stops and
    the client is closed; no failover follows and the slot is free."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)
    fillers = fill_backlog(hung)
    try:
        pen, port, ctl = start_with_control(
            start_pen, "-t", "30", servers=[f"127.0.0.1:{hung.getsockname()[1]}"])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as waiting:
            def connecting():
                return [c for c in json.loads(penctl(ctl, "status", "json"))["connections"]
                        if c["client"] == f"127.0.0.1:{waiting.getsockname()[1]}"]
            wait_for(connecting, what="pen to take the connection")
            [conn] = connecting()
            assert conn["server"] is None                    # no server yet: connecting
            assert penctl(ctl, "close", str(conn["id"])) == (
                f"Forcibly closing connection {conn['id']}\n")
            assert waiting.recv(100) == b""                  # pen closed it
            wait_for(lambda: not connecting(), what="the connection to be gone")
        assert json.loads(penctl(ctl, "status", "json"))["servers"][0]["failures"] == 0
    finally:
        hung.close()
        for s in fillers:
            s.close()


def test_a_held_connections_bytes_show_while_it_is_open(backends, start_pen):
    """The relay counts bytes when asked (status, servers, connection N), not per chunk:
    a connection still open shows what it moved so far, everywhere."""
    pen, port, ctl = start_with_control(start_pen, servers=[backends[0].spec])
    idle(ctl)
    request = b"GET /bytes/5000 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as keep:
        keep.sendall(request)
        reply = b""
        while len(reply) < 5000 or b"\r\n\r\n" not in reply:
            chunk = keep.recv(65536)
            assert chunk, reply
            reply += chunk
        status = json.loads(penctl(ctl, "status", "json"))
        [conn] = status["connections"]
        assert (conn["sent"], conn["received"]) == (len(request), len(reply))
        server = status["servers"][0]
        assert server["sent"] >= len(request) and server["received"] >= len(reply)
        sx, rx = map(int, re.search(r" sx (\d+) rx (\d+)", penctl(ctl, "servers")).groups())
        assert (sx, rx) == (server["sent"], server["received"])
        text = penctl(ctl, "connection", str(conn["id"]))
        assert f"sx = {len(request)}, rx = {len(reply)}" in text
