"""The TCP balancer through real sockets: curl as the client, HTTP backends on loopback.

Client addresses 127.0.0.x are separate clients to pen (curl --interface).
"""

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from support import (
    ROOT,
    Backend,
    Pen,
    curl,
    curl_json,
    free_port,
    open_fds,
    pattern,
    run_pen,
    server_conns,
    slow_download,
    steady_fds,
    wait_for,
)


def url(port, path="/", host="127.0.0.1"):
    return f"http://{host}:{port}{path}"


def test_tracking_keeps_a_client_and_a_new_client_goes_to_the_next(backends, start_pen):
    pen, port = start_pen(servers=[b.spec for b in backends])
    first = curl_json(url(port), interface="127.0.0.2")["name"]
    assert [curl_json(url(port), interface="127.0.0.2")["name"] for _ in range(3)] == [first] * 3
    other = curl_json(url(port), interface="127.0.0.3")["name"]
    assert other != first
    assert curl_json(url(port), interface="127.0.0.3")["name"] == other


def test_roundrobin_alternates(backends, start_pen):
    pen, port = start_pen("-r", servers=[b.spec for b in backends])
    names = [curl_json(url(port), interface="127.0.0.2")["name"] for _ in range(4)]
    assert names[0] != names[1] and names[:2] == names[2:]


def test_dead_server_fails_over_without_client_errors_and_returns(start_pen):
    live = Backend("live")
    dead_port = free_port()
    try:
        pen, port = start_pen("-r", "-b", "2", servers=[f"127.0.0.1:{dead_port}", live.spec])
        # Every request is answered even though server 0 refuses connections.
        assert {curl_json(url(port))["name"] for _ in range(4)} == {"live"}
        revived = Backend("revived", port=dead_port)
        try:
            # After the blacklist time (2 s) the server is used again.
            wait_for(lambda: curl_json(url(port))["name"] == "revived", timeout=10,
                     what="the revived server to be chosen again")
        finally:
            revived.stop()
    finally:
        live.stop()


def test_emergency_server_when_all_servers_are_down(start_pen):
    emergency = Backend("emergency")
    try:
        pen, port = start_pen("-e", emergency.spec,
                              servers=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
        assert curl_json(url(port))["name"] == "emergency"
    finally:
        emergency.stop()


def test_no_server_at_all_closes_the_client(start_pen):
    pen, port = start_pen(servers=[f"127.0.0.1:{free_port()}"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100) == b""


def test_abuse_server_for_clients_the_acl_denies(backends, start_pen):
    abuse = Backend("abuse")
    try:
        pen, port = start_pen("-B", abuse.spec, "-O", "acl 1 deny 127.0.0.66",
                              "-O", "client_acl 1", servers=[b.spec for b in backends])
        assert curl_json(url(port), interface="127.0.0.66")["name"] == "abuse"
        assert curl_json(url(port), interface="127.0.0.67")["name"] in ("a", "b")
    finally:
        abuse.stop()


def test_x_forwarded_for_on_every_keep_alive_request(backends, start_pen):
    pen, port = start_pen("-H", servers=[backends[0].spec])
    out = curl(url(port, "/1"), url(port, "/2"), "-H", "X-Forwarded-For: 198.51.100.1",
               interface="127.0.0.5")
    seen = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines()]
    assert [s["xff"] for s in seen] == [["198.51.100.1, 127.0.0.5"]] * 2
    assert [s["proto"] for s in seen] == ["http", "http"]
    # both requests came over one backend connection: the relay kept it alive
    assert len({r["peer"] for r in backends[0].requests}) == 1
    assert len(backends[0].requests) == 2


def test_ipv6_client_to_ipv4_server_and_back(start_pen):
    v4 = Backend("v4")
    v6 = Backend("v6", host="::1")
    try:
        pen, port = start_pen(listen=f"[::1]:{free_port('::1')}", servers=[v4.spec])
        assert curl_json(f"http://[::1]:{port}/")["name"] == "v4"
        pen, port = start_pen("-H", servers=[v6.spec])
        seen = curl_json(url(port), interface="127.0.0.9")
        assert seen["name"] == "v6" and seen["peer"] == "::1" and seen["xff"] == ["127.0.0.9"]
    finally:
        v4.stop()
        v6.stop()


@pytest.mark.parametrize("http", [False, True], ids=["splice", "with -H"])
def test_4mib_transfers_are_byte_exact_both_ways(backends, start_pen, tmp_path, http):
    pen, port = start_pen(*(["-H"] if http else []), servers=[backends[0].spec])
    size = 4 * 1024 * 1024
    down = tmp_path / "down"
    curl(url(port, f"/bytes/{size}"), "-o", str(down))
    assert hashlib.sha256(down.read_bytes()).digest() == hashlib.sha256(pattern(size)).digest()
    up = tmp_path / "up"
    up.write_bytes(pattern(size + 7))
    reply = json.loads(curl(url(port, "/sha256"), "--data-binary", f"@{up}"))
    assert reply == {"sha256": hashlib.sha256(pattern(size + 7)).hexdigest(),
                     "length": size + 7, "name": "a"}


def test_chunked_upload_through_minus_h(backends, start_pen, tmp_path):
    pen, port = start_pen("-H", servers=[backends[0].spec])
    up = tmp_path / "up"
    up.write_bytes(pattern(300_000))
    out = curl(url(port, "/sha256"), "-H", "Transfer-Encoding: chunked",
               "--data-binary", f"@{up}", url(port, "/after"))
    reply, end = json.JSONDecoder().raw_decode(out)
    assert json.loads(out[end:])["length"] == 300_000
    assert reply["sha256"] == hashlib.sha256(pattern(300_000)).hexdigest()
    assert [r["xff"] for r in backends[0].requests] == [["127.0.0.1"], ["127.0.0.1"]]


class ReplyAfterEof:
    """A raw TCP server that reads until the client half-closes, then answers."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"got %d bytes" % len(data))


def test_half_close_client_still_receives_the_reply(start_pen):
    server = ReplyAfterEof()
    pen, port = start_pen(servers=[f"127.0.0.1:{server.port}"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(1000):
            reply += chunk
    assert reply == b"got 100000 bytes"
    server.sock.close()


def test_tcp_fastclose_ends_the_connection_at_the_clients_eof(start_pen):
    """With tcp_fastclose down|both, the client's EOF closes both sides at once: the reply
    the server would send after it never comes."""
    server = ReplyAfterEof()
    pen, port = start_pen("-O", "tcp_fastclose down", servers=[f"127.0.0.1:{server.port}"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"x" * 1000)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    server.sock.close()


def test_idle_timeout_closes_a_connection_that_went_quiet(backends, start_pen):
    pen, port = start_pen("-O", "idle_timeout 1", servers=[backends[0].spec])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read()                   # a keep-alive answer, then quiet
    quiet = time.monotonic()
    assert conn.sock.recv(10) == b""
    assert 0.9 <= time.monotonic() - quiet < 5
    conn.close()


def test_idle_timeout_closes_a_silent_client(backends, start_pen):
    pen, port = start_pen("-O", "idle_timeout 1", servers=[backends[0].spec])
    started = time.monotonic()                 # (before pen can have accepted it)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(10) == b""
        assert 0.9 <= time.monotonic() - started < 5


def test_connection_limit_refuses_the_same_address_until_one_ends(backends, start_pen):
    pen, port = start_pen("-d", "-d", "-x", "1", servers=[backends[0].spec])
    # -d -d logs each connection's end: start-up's probe must be gone before the holder
    wait_for(lambda: "connection 0 closed" in pen.output(), what="start-up's probe to end")
    holder = socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_for(lambda: server_conns(pen) == 1, what="the first connection")
    with pytest.raises(AssertionError, match=r"failed \((52|56)\)"):   # empty reply, reset
        curl(url(port), timeout=1)             # closed at once: its address holds -x already
    holder.close()
    wait_for(lambda: server_conns(pen) == 0, what="the first connection to end")
    assert curl_json(url(port))["name"] == "a"


def servers_via_usr1(pen: Pen) -> str:
    """SIGUSR1 makes pen log its server table (the `servers` answer): pen's log so far,
    for wait_for to poll (each poll asks again)."""
    pen.proc.send_signal(signal.SIGUSR1)
    return pen.output()


def test_unix_socket_listener_and_unix_server(tmp_path, start_pen):
    backend_path = tmp_path / "backend.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(backend_path))
    server.listen()

    def echo_once():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"unix:" + conn.recv(100))
    threading.Thread(target=echo_once, daemon=True).start()
    listen_path = tmp_path / "pen.sock"
    pen = Pen(str(listen_path), str(backend_path))
    try:
        wait_for(listen_path.exists, what="the UNIX listener")
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        wait_for(lambda: client.connect_ex(str(listen_path)) == 0, what="connect")
        client.sendall(b"hello")
        assert client.recv(100) == b"unix:hello"
        client.close()
    finally:
        pen.stop()
        server.close()
    assert not listen_path.exists()


@pytest.mark.parametrize("argv, message", [
    (["-x", "abc", "80", "127.0.0.1"], "pen: -x abc: conn_max: expected a number, got 'abc'"),
    (["80", "no-such-host.invalid"], "pen: no-such-host.invalid: cannot resolve"),
    (["80", "127.0.0.1:1:x"], "pen: 127.0.0.1:1:x: bad soft limit"),
    (["-Y", "80", "127.0.0.1"], "pen: -Y: option -Y not recognized"),
    (["no-such-host.invalid:80", "127.0.0.1"], "pen: cannot resolve 'no-such-host.invalid'"),
    (["[::1", "127.0.0.1"], "pen: [::1: unclosed '['"),
    (["[::1]", "127.0.0.1"], "pen: [::1]: missing port after ']'"),
    (["-u", "no-such-user", "PORT", "127.0.0.1"], "pen: -u no-such-user: no such user"),
    (["-l", "/nonexistent/dir/log", "PORT", "127.0.0.1"],
     "pen: log /nonexistent/dir/log: No such file or directory"),
    (["-l", "no-such-host.invalid:514", "PORT", "127.0.0.1"],
     "pen: log no-such-host.invalid:514: "),
])
def test_bad_command_lines_exit_1_with_one_line(argv, message):
    port = str(free_port())
    result = run_pen(*(port if arg == "PORT" else arg for arg in argv))
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_a_config_file_with_bad_bytes_names_its_line(tmp_path):
    config = tmp_path / "pen.cfg"
    config.write_bytes(b"blacklist 5\n\xff\xfe bad\n")
    result = run_pen("-F", str(config), str(free_port()), "127.0.0.1")
    assert result.returncode == 1
    assert result.stderr.startswith(f"pen: -F {config}:2: do_cmd: ignoring command")
    assert result.stderr.count("\n") == 1


def test_a_daemon_that_cannot_start_says_why_and_exits_1(backends, tmp_path):
    # The error is found after daemonizing (pid file, log): the process the user started
    # waits for the daemon's report and passes it on.
    for argv, message in ((["-p", str(tmp_path / "no" / "pen.pid")], "pen: -p "),
                          (["-l", str(tmp_path / "no" / "pen.log")], "pen: log ")):
        result = subprocess.run([sys.executable, "-m", "pen", *argv, str(free_port()),
                                 backends[0].spec], capture_output=True, text=True,
                                timeout=10, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert result.returncode == 1
        assert result.stderr.startswith(message) and result.stderr.endswith(
            ": No such file or directory\n") and result.stderr.count("\n") == 1


def test_listen_address_in_use_is_one_line(backends):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = run_pen(f"127.0.0.1:{taken.getsockname()[1]}", backends[0].spec)
    assert result.returncode == 1 and "cannot listen: Address already in use" in result.stderr


def test_daemon_writes_and_removes_its_pid_file(backends, tmp_path):
    pidfile = tmp_path / "pen.pid"
    port = free_port()
    subprocess.run([sys.executable, "-m", "pen", "-p", str(pidfile), f"127.0.0.1:{port}",
                    backends[0].spec], check=True, timeout=10,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    # exit 0 means the daemon reported that it serves: no waiting needed
    pid = int(pidfile.read_text())
    assert curl_json(url(port))["name"] == "a"
    os.kill(pid, 15)
    wait_for(lambda: not pidfile.exists(), what="the pid file to be removed")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to exit")


def test_sigterm_lets_a_connection_in_flight_finish(start_pen):
    server = ReplyAfterEof()
    pen, port = start_pen(servers=[f"127.0.0.1:{server.port}"])
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"abc")
    wait_for(lambda: "conn 1" in servers_via_usr1(pen), what="the connection")
    pen.proc.send_signal(15)
    wait_for(lambda: not _connectable(port), what="the listener to close")
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b"got 3 bytes"
    s.close()
    assert pen.proc.wait(15) == 0
    server.sock.close()


def _connectable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_out_of_fds_pauses_accepting_and_recovers(backends, tmp_path):
    """With a tiny fd limit, a burst of clients exhausts pen's fds: it must log once, keep
    running, and serve again when the burst is gone."""
    port = free_port()
    pen = Pen("-x", "1000", f"127.0.0.1:{port}", backends[0].spec, wait=("127.0.0.1", port),
              nofile=40)
    try:
        burst = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        wait_for(lambda: "pausing accepts" in pen.output(), what="the out-of-fds message")
        for s in burst:
            s.close()
        wait_for(lambda: _served(port), what="pen to serve again")
        assert pen.proc.poll() is None
        assert pen.output().count("pausing accepts") == 1
        assert "blacklisted" not in pen.output()
    finally:
        pen.stop()


def _served(port):
    try:
        return curl_json(url(port), timeout=2)["name"] == "a"
    except AssertionError:
        return False


def test_a_silent_client_costs_two_fds_and_no_pipe(backends, start_pen):
    """Client socket + upstream socket: no pipes, nothing else, however many wait."""
    pen, port = start_pen(servers=[backends[0].spec])
    fds = lambda: open_fds(pen.proc.pid)  # noqa: E731
    before = steady_fds(pen.proc.pid)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    wait_for(lambda: fds() - before == 40, what="40 more fds", timeout=10)
    time.sleep(0.3)                       # nothing else may appear while they stay silent
    assert fds() - before == 40
    for s in silent:
        s.close()
    wait_for(lambda: fds() == before, what="the fds to be released")


def test_connection_log_names_client_server_and_request(backends, start_pen, tmp_path):
    log = tmp_path / "pen.log"
    pen, port = start_pen("-l", str(log), servers=[backends[0].spec])
    curl_json(url(port, "/logged"), interface="127.0.0.7")
    line = wait_for(lambda: next((row for row in log.read_text().splitlines()
                                  if row.startswith("127.0.0.7 ")), None),
                    what="the connection's log line")
    ip, epoch, server, request = line.split(" ", 3)
    assert abs(int(epoch) - time.time()) < 60
    # the server's address without its port, as the C pen writes it
    assert server == "127.0.0.1" and request == "GET /logged HTTP/1.1"


@pytest.mark.parametrize("text", [True, False], ids=["-a text", "hex"])
def test_debug_level_3_dumps_each_chunk_both_ways(backends, start_pen, text):
    pen, port = start_pen("-d", "-d", "-d", *(["-a"] if text else []),
                          servers=[backends[0].spec])
    curl_json(url(port, "/dumped"))
    closed = re.compile(r"connection (\d+) closed: (\d+) bytes to the server, (\d+) to")
    done = wait_for(lambda: [m for m in closed.finditer(pen.output()) if int(m[2])],
                    what="the connection's closing line")
    out = pen.output()
    request = b"GET /dumped HTTP/1.1"
    assert (request.decode() if text else request[:16].hex(" ")) in out   # a line: 16 bytes
    assert f"connection {done[0][1]} to client: " in out
    assert ("HTTP/1.1 200 OK" if text else b"HTTP/1.1 200 OK".hex(" ")) in out


def test_a_slow_reader_gets_every_byte(backends, start_pen):
    """Download: the relay splices, and waits whenever the client's socket is full."""
    pen, port = start_pen(servers=[backends[0].spec])
    size = 16 * 1024 * 1024
    assert slow_download(port, size) == pattern(size)


def test_a_slow_server_gets_every_byte_through_minus_h(start_pen):
    """Upload through -H (copied, never spliced): sends that would block are kept and
    finished when the server reads again."""
    size = 16 * 1024 * 1024
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    got = {}

    def slow_server():
        while "body" not in got:                 # (the fixture's probe comes first, empty)
            conn, _ = listener.accept()
            with conn:
                data = bytearray()
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
                if not data:
                    continue
                head, _, body = bytes(data).partition(b"\r\n\r\n")
                body = bytearray(body)
                while len(body) < size and (chunk := conn.recv(4096)):
                    body += chunk
                got["head"], got["body"] = head, bytes(body)
                conn.sendall(b"HTTP/1.0 204 No Content\r\n\r\n")

    server = threading.Thread(target=slow_server, daemon=True)
    server.start()
    pen, port = start_pen("-H", servers=[f"127.0.0.1:{listener.getsockname()[1]}"])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"POST /up HTTP/1.0\r\nContent-Length: {size}\r\n\r\n".encode())
        s.sendall(pattern(size))
        assert s.recv(100).startswith(b"HTTP/1.0 204")
    server.join(20)
    listener.close()
    assert b"X-Forwarded-For: 127.0.0.1" in got["head"]
    assert got["body"] == pattern(size)


def test_a_connection_leaves_no_garbage_cycles():
    """The runtime collects the young generation rarely (gc.set_threshold), which is only
    sound while a finished connection is freed by reference counting alone."""
    import gc

    import gevent

    from pen.cli import parse
    from pen.tcp import TcpBalancer

    echo = socket.create_server(("127.0.0.1", 0))
    connections = 200

    def serve():
        for _ in range(connections):
            try:
                conn, _ = echo.accept()
            except OSError:                    # closed under it: the test ended early
                return
            with conn:
                conn.sendall(conn.recv(100))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    state, _ = parse(["-f", "127.0.0.1:0", f"127.0.0.1:{echo.getsockname()[1]}"])
    listen = socket.create_server(("127.0.0.1", 0))
    balancer = TcpBalancer(state, listen)
    balancer.start()
    done = threading.Event()

    def clients():
        for _ in range(connections):
            with socket.create_connection(listen.getsockname(), timeout=5) as s:
                s.sendall(b"ping")
                assert s.recv(10) == b"ping"
        done.set()

    def after_a_loop_turn(condition):
        gevent.sleep(0.01)                     # the balancer runs while this greenlet waits
        return condition()

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        threading.Thread(target=clients, daemon=True).start()
        wait_for(lambda: after_a_loop_turn(done.is_set), timeout=60, what="the clients")
        wait_for(lambda: after_a_loop_turn(lambda: not state.connections), what="all closed")
        gc.collect()
        assert [type(o).__name__ for o in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        server.join(5)
        balancer.close()
        echo.close()


def test_version_and_long_option_errors():
    version = subprocess.run([sys.executable, "-m", "pen", "--version"], capture_output=True,
                             text=True, timeout=10, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert version.returncode == 0 and version.stdout.startswith("pen-lb ")
    result = run_pen("--no-such-option", "80", "127.0.0.1")
    assert result.returncode == 1 and result.stderr == (
        "pen: --no-such-option: option --no-such-option not recognized\n")


def pipes(pid: int) -> int:
    """The pipes pid holds: a relay direction that splices holds one (two fds)."""
    fds = f"/proc/{pid}/fd"
    return sum(os.readlink(f"{fds}/{fd}").startswith("pipe:") for fd in os.listdir(fds))


def test_a_keep_alive_connection_of_small_requests_never_splices(backends, start_pen):
    """Only full reads count towards splicing: 320 KiB of small answers on one keep-alive
    connection stay on recv/send (a pipe would cost two splices per small chunk). A
    direction that splices keeps its pipe until the connection ends."""
    pen, port = start_pen(servers=[backends[0].spec])
    before = pipes(pen.proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    moved = 0
    while moved < 320 * 1024:                  # more than relay.BULK (256 KiB)
        conn.request("GET", "/bytes/2000")     # small answers: no read fills 64 KiB
        moved += len(conn.getresponse().read())
    assert pipes(pen.proc.pid) == before
    conn.close()
