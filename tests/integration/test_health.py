"""Active health checks with real servers, each broken the way its check detects: after
`fall` failed checks no client reaches the broken server, and after `rise` passed ones it
gets clients again. Operator states and slow start with curl from several client addresses.
"""

import json
import os
import pwd
import re
import socket
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from udp_peers import Dnsmasq, InTftpd, Responder, client, exchange, start_udp_pen, tftp

from support import ROOT, Backend, curl_json, free_port, wait_for

FAST = ("-O", "healthcheck_interval 0.2", "-O", "healthcheck_timeout 0.5",
        "-O", "healthcheck_rise 2", "-O", "healthcheck_fall 2")
USER = ("-u", pwd.getpwuid(os.geteuid()).pw_name)      # pen refuses -C as root without -u


def ctl(target, *words, json_=False):
    cmd = [sys.executable, "-m", "pen.penctl", *(["--json"] if json_ else []), target, *words]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=15,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if json_ else result.stdout


def start_checked(start_pen, *options, servers=(), udp=False):
    """pen with a control port and fast checks: (pen, port, control address)."""
    control = f"127.0.0.1:{free_port()}"
    args = (*USER, "-C", control, *FAST, *options)
    if udp:
        pen, port = start_udp_pen(start_pen, *args, servers=servers)
    else:
        pen, port = start_pen(*args, servers=servers)
    wait_for(lambda: pen.proc.poll() is not None or _answers(control), what="the control port")
    assert pen.proc.poll() is None, pen.output()
    return pen, port, control


def _answers(control):
    try:
        return ctl(control, "pid").strip().isdigit()
    except (AssertionError, subprocess.TimeoutExpired):
        return False


def states(control):
    return {row["server"]: row for row in ctl(control, "health", json_=True)}


def wait_state(control, index, state, last=None):
    def reached():
        row = states(control)[index]
        return row["state"] == state and (last is None or row["last"] == last)
    wait_for(reached, timeout=20, interval=0.1, what=f"server {index} to be {state}")


# --- HTTP ------------------------------------------------------------------------------------

class HealthBackend:
    """An HTTP backend whose /health answers `status`; / answers its name."""

    def __init__(self, name):
        self.name, self.status, self.hits = name, 200, 0
        self.checked_from = []                   # peers of /health requests
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/health":
                    backend.checked_from.append(self.client_address[0])
                    backend.host_headers = self.headers.get_all("Host")
                    code, body = backend.status, b"health"
                else:
                    backend.hits += 1
                    code, body = 200, json.dumps({"name": backend.name}).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server_class = type("S", (ThreadingHTTPServer,), {"daemon_threads": True})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.spec = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_pair():
    pair = [HealthBackend("a"), HealthBackend("b")]
    yield pair
    for backend in pair:
        backend.stop()


def names(port, n=8, **kw):
    return [curl_json(f"http://127.0.0.1:{port}/", **kw)["name"] for _ in range(n)]


def test_http_check_takes_a_failing_server_out_and_back(http_pair, start_pen):
    a, b = http_pair
    pen, port, control = start_checked(start_pen, "-r", "-O", "healthcheck http GET /health",
                                       servers=[a.spec, b.spec])
    wait_state(control, 1, "up", "OK")
    assert set(names(port)) == {"a", "b"}
    b.status = 500
    wait_state(control, 1, "down")
    assert re.search(rf"server 1 \({re.escape(b.spec)}\) down: http status 500 \(2/2\)",
                     pen.output())
    before = b.hits
    assert set(names(port)) == {"a"} and b.hits == before     # no client reaches b
    b.status = 200
    wait_state(control, 1, "up")
    assert f"server 1 ({b.spec}) up: OK (2/2)" in pen.output()
    assert "b" in names(port)
    assert "Traceback" not in pen.output()


def test_checks_come_from_the_source_address_with_the_servers_host(http_pair, start_pen):
    a, b = http_pair
    pen, port, control = start_checked(start_pen, "-O", "source 127.0.0.7",
                                       "-O", "healthcheck http GET /health", servers=[a.spec])
    wait_state(control, 0, "up", "OK")
    assert set(a.checked_from) == {"127.0.0.7"}
    assert a.host_headers == [a.spec]


def test_http_check_over_tls_with_ssl_backend(start_pen, tmp_path):
    import ssl

    import trustme
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass
    threading.Thread(target=serve, daemon=True).start()
    spec = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        pen, port, control = start_checked(start_pen, "-O", "ssl_backend", "-G", str(ca_file),
                                           "-O", "healthcheck http GET / 200 ok",
                                           servers=[spec])
        wait_state(control, 0, "up", "OK")
        plain, _, plain_control = start_checked(start_pen, "-O", "healthcheck http GET /",
                                                servers=[spec])
        wait_state(plain_control, 0, "down")            # TLS bytes are no HTTP answer
        assert "Traceback" not in pen.output() + plain.output()
    finally:
        listener.close()


def test_http_status_and_body_of_the_check(http_pair, start_pen):
    a, b = http_pair
    pen, port, control = start_checked(
        start_pen, "-O", "healthcheck http GET /health 200 health",
        "-O", "server 1 healthcheck http GET /health 204", servers=[a.spec, b.spec])
    wait_state(control, 1, "down", "http_status_200")
    wait_state(control, 0, "up", "OK")
    ctl(control, "server 1 healthcheck off")
    wait_state(control, 1, "up", "-")
    assert states(control)[1]["check"] == "none"


# --- operator states and slow start ---------------------------------------------------------

def test_drain_keeps_tracked_clients_maint_takes_all_ready_returns(backends, start_pen):
    control = f"127.0.0.1:{free_port()}"
    pen, port = start_pen(*USER, "-C", control, servers=[b.spec for b in backends])
    wait_for(lambda: _answers(control), what="the control port")
    url = f"http://127.0.0.1:{port}/"
    first = {ip: curl_json(url, interface=ip)["name"] for ip in
             ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")}
    assert set(first.values()) == {"a", "b"}                   # tracked, alternating
    assert ctl(control, "server 1 drain") == ""
    assert states(control)[1]["state"] == "drain"
    for ip, name in first.items():                             # tracked clients go on
        assert curl_json(url, interface=ip)["name"] == name
    fresh = [curl_json(url, interface=f"127.0.0.{n}")["name"] for n in range(21, 25)]
    assert fresh == ["a"] * 4                                  # no new client for b
    assert ctl(control, "server 1 maint") == ""
    assert {curl_json(url, interface=ip)["name"] for ip in first} == {"a"}
    assert ctl(control, "server 1 ready") == ""
    later = {curl_json(url, interface=f"127.0.0.{n}")["name"] for n in range(31, 35)}
    assert later == {"a", "b"}
    assert ctl(control, "server 1 sleep") == \
        "server 1: unknown word 'sleep' (drain, maint, ready, healthcheck, or FIELD VALUE pairs)\n"


def test_slowstart_gives_a_returning_server_a_small_share_first(backends, start_pen):
    control = f"127.0.0.1:{free_port()}"
    pen, port = start_pen(*USER, "-C", control, "-r", "-O", "slowstart 600",
                          servers=[b.spec for b in backends])
    wait_for(lambda: _answers(control), what="the control port")
    url = f"http://127.0.0.1:{port}/"
    assert names(port, 10).count("b") == 5                      # not ramping: half
    ctl(control, "server 1 maint")
    ctl(control, "server 1 ready")                              # comes back: from 10%
    got = [curl_json(url, interface=f"127.0.0.{n}")["name"] for n in range(40, 60)]
    assert 1 <= got.count("b") <= 3


# --- DNS (UDP) ---------------------------------------------------------------------------------

def dns_reply(rcode_of):
    def reply(data, addr):
        from dnslib import QTYPE, RR, A, DNSRecord
        query = DNSRecord.parse(data)
        answer = query.reply()
        answer.header.rcode = rcode_of()
        if not answer.header.rcode:
            answer.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("10.9.9.9"), ttl=5))
        return answer.pack()
    return reply


def test_dns_check_over_udp(start_pen):
    dnsmasq = Dnsmasq("127.0.0.1", "10.1.1.1")
    rcode = {"now": 2}                                          # SERVFAIL
    broken = Responder(dns_reply(lambda: rcode["now"]))
    try:
        pen, port, control = start_checked(
            start_pen, "-r", "-O", "healthcheck dns ready.test", servers=[dnsmasq.spec,
                                                                          broken.spec], udp=True)
        wait_state(control, 1, "down", "dns_rcode_SERVFAIL")
        wait_state(control, 0, "up", "OK")
        assert "server 1 (" + broken.spec + ") down: dns rcode SERVFAIL (2/2)" in pen.output()
        seen = len(broken.seen)
        sock = client()
        from dnslib import DNSRecord
        for i in range(6):
            answer = exchange(sock, port, DNSRecord.question(f"q{i}.test").pack())
            assert answer and str(DNSRecord.parse(answer).a.rdata) == "10.1.1.1"
        checks = len(broken.seen) - seen
        assert checks <= 4 and all(addr[1] != sock.getsockname()[1] for addr in broken.seen)
        rcode["now"] = 0
        wait_state(control, 1, "up")
        got = set()
        for i in range(4):
            fresh = client()                     # a new session each: round robin again
            got.add(str(DNSRecord.parse(exchange(fresh, port, DNSRecord.question(
                f"r{i}.test").pack())).a.rdata))
            fresh.close()
        assert got == {"10.1.1.1", "10.9.9.9"}
    finally:
        dnsmasq.stop()
        broken.stop()


def test_dns_check_over_tcp_in_tcp_mode(start_pen):
    dnsmasq = Dnsmasq("127.0.0.1", "10.1.1.1")
    try:
        pen, port, control = start_checked(start_pen, "-O", "healthcheck dns ready.test",
                                           "-O", "server 1 healthcheck dns ready.test A NXDOMAIN",
                                           servers=[dnsmasq.spec, dnsmasq.spec])
        wait_state(control, 0, "up", "OK")
        wait_state(control, 1, "down", "dns_rcode_NOERROR")
    finally:
        dnsmasq.stop()


# --- a UDP server that stops answering ------------------------------------------------------

def test_udp_check_finds_a_silent_server(start_pen):
    answering = {"b": True}
    a = Responder(lambda data, addr: b"a:" + data)
    b = Responder(lambda data, addr: b"b:" + data if answering["b"] else None)
    try:
        pen, port, control = start_checked(
            start_pen, "-r", "-O", "healthcheck udp 70696e67", servers=[a.spec, b.spec],
            udp=True)
        wait_state(control, 1, "up", "OK")
        answering["b"] = False
        wait_state(control, 1, "down", "udp_timeout_after_0.5_s")
        sock = client()
        assert {exchange(sock, port, b"hello")[:2] for _ in range(6)} == {b"a:"}
        answering["b"] = True
        wait_state(control, 1, "up")
        replies = set()
        for _ in range(6):
            fresh = client()                     # a new session each: round robin again
            replies.add(exchange(fresh, port, b"hello")[:2])
            fresh.close()
        assert replies == {b"a:", b"b:"}
    finally:
        a.stop()
        b.stop()


# --- SMTP --------------------------------------------------------------------------------------

class FakeSmtp:
    """An SMTP server greeting `greeting` (421 busy, or 220 and a minimal EHLO/QUIT)."""

    def __init__(self):
        self.greeting = b"421 fake busy\r\n"
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(fake.greeting)
                if not fake.greeting.startswith(b"220"):
                    return
                for line in self.rfile:
                    if line.upper().startswith(b"EHLO"):
                        self.wfile.write(b"250-fake\r\n250 OK\r\n")
                    elif line.upper().startswith(b"QUIT"):
                        self.wfile.write(b"221 bye\r\n")
                        return

        server_class = type("S", (socketserver.ThreadingTCPServer,),
                            {"daemon_threads": True, "allow_reuse_address": True})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.spec = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def banner(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        line = sock.makefile("rb").readline()
        try:
            sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return line


def test_smtp_check_with_aiosmtpd_and_a_server_greeting_421(start_pen):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink
    good = Controller(Sink(), hostname="127.0.0.1", port=free_port(), server_hostname="smtp-a")
    good.start()
    fake = FakeSmtp()
    try:
        pen, port, control = start_checked(start_pen, "-r", "-O", "healthcheck smtp",
                                           servers=[f"127.0.0.1:{good.port}", fake.spec])
        wait_state(control, 0, "up", "OK")
        wait_state(control, 1, "down", "smtp_banner_421")
        assert {banner(port)[:10] for _ in range(6)} == {b"220 smtp-a"}
        fake.greeting = b"220 fake ready\r\n"
        wait_state(control, 1, "up", "OK")
        assert {banner(port)[:10] for _ in range(6)} == {b"220 smtp-a", b"220 fake r"}
    finally:
        good.stop()
        fake.stop()


# --- TFTP --------------------------------------------------------------------------------------

def test_tftp_check_with_in_tftpd_with_and_without_the_file(tmp_path, start_pen):
    roots = [tmp_path / "with", tmp_path / "without"]
    for root in roots:
        root.mkdir()
    (roots[0] / "health.txt").write_text("A\n")
    os.chmod(roots[0] / "health.txt", 0o644)
    servers = [InTftpd(roots[0], "127.0.0.2"), InTftpd(roots[1], "127.0.0.3")]
    try:
        pen, port, control = start_checked(start_pen, "-r", "-O", "healthcheck tftp health.txt",
                                           servers=[s.spec for s in servers], udp=True)
        wait_state(control, 0, "up", "OK")
        # file not found (read in the same look: a later check may fail another way)
        wait_for(lambda: (row := states(control)[1])["state"] == "down"
                 and row["last"].startswith("tftp_error_1"), timeout=20,
                 what="server 1 down for tftp_error_1")
        work = tmp_path / "client"
        work.mkdir()
        for _ in range(4):
            tftp(port, "get health.txt", work, timeout=20)
            assert (work / "health.txt").read_text() == "A\n"
            (work / "health.txt").unlink()
        (roots[1] / "health.txt").write_text("B\n")
        os.chmod(roots[1] / "health.txt", 0o644)
        wait_state(control, 1, "up", "OK")
        got = set()
        for _ in range(4):
            tftp(port, "get health.txt", work, timeout=20)
            got.add((work / "health.txt").read_text())
            (work / "health.txt").unlink()
        assert got == {"A\n", "B\n"}
    finally:
        for server in servers:
            server.stop()


# --- bad checks and bad servers -------------------------------------------------------------

def test_a_bad_check_command_is_one_line_and_changes_nothing(start_pen, tmp_path):
    backend = Backend("a")
    try:
        pen, port, control = start_checked(start_pen, "-O", "healthcheck tcp",
                                           servers=[backend.spec])
        assert ctl(control, "healthcheck http GOT /") == \
            "healthcheck http: unknown method 'GOT'\n"
        assert ctl(control, "healthcheck") == "tcp\n"
        config = tmp_path / "pen.cfg"
        config.write_text("healthcheck_fall 2\nhealthcheck dns example.com BOGUS\n")
        from support import run_pen
        result = run_pen("-F", str(config), f"127.0.0.1:{free_port()}", backend.spec)
        assert result.returncode == 1
        assert result.stderr.strip().endswith(
            f"{config}:2: healthcheck dns: unknown type 'BOGUS'")
    finally:
        backend.stop()


# --- the metrics endpoint --------------------------------------------------------------------

def scrape(url, *extra, interface=None):
    cmd = ["curl", "-sS", "--max-time", "5", *extra]
    if interface:
        cmd += ["--interface", interface]
    return subprocess.run(cmd + [url], capture_output=True, text=True, timeout=10)


def samples(text):
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_says_what_servers_says(http_pair, start_pen):
    a, b = http_pair
    mport = free_port()
    pen, port, control = start_checked(
        start_pen, "-r", "-O", f"metrics_port 127.0.0.1:{mport}",
        "-O", "server 1 healthcheck http GET /health", "-O", "acl 3 deny 127.0.0.5",
        "-O", "control_acl 3", servers=[a.spec, b.spec])
    b.status = 503
    wait_state(control, 1, "down")
    names(port, 6)
    url = f"http://127.0.0.1:{mport}"
    wait_for(lambda: all(" conn 0 " in line for line in ctl(control, "servers").splitlines()),
             what="connections to end")
    got = samples(scrape(f"{url}/metrics").stdout)
    for line in ctl(control, "servers").splitlines():
        row = dict(zip(["server", *line.split()[1::2]], [line.split()[0], *line.split()[2::2]],
                       strict=True))
        who = (("address", row["addr"]), ("port", row["port"]), ("server", row["server"]))
        assert got[("pen_server_sent_bytes_total", who)] == int(row["sx"])
        assert got[("pen_server_received_bytes_total", who)] == int(row["rx"])
        assert got[("pen_server_connections", who)] == int(row["conn"])
    down = (("address", "127.0.0.1"), ("port", b.spec.split(":")[1]), ("server", "1"))
    assert got[("pen_server_state", down + (("state", "down"),))] == 1
    assert got[("pen_server_up", down)] == 0
    assert got[("pen_server_check_duration_seconds_count", down)] >= 2
    assert got[("pen_accepts_total", ())] >= 6
    assert got[("pen_refusals_total", ())] == 0
    head = scrape(f"{url}/metrics", "-I")
    assert head.stdout.startswith("HTTP/1.1 200 OK") and "text/plain" in head.stdout
    assert json.loads(scrape(f"{url}/status.json").stdout)["servers"][1]["state"] == "down"
    assert scrape(f"{url}/metrics", "-X", "POST", "-o", "/dev/null", "-w",
                  "%{http_code}").stdout == "405"
    assert scrape(f"{url}/nothing", "-o", "/dev/null", "-w", "%{http_code}").stdout == "404"
    assert scrape(f"{url}/metrics", interface="127.0.0.5").returncode != 0   # control_acl
    ctl(control, "server 0 maint")
    with pytest.raises(AssertionError):
        names(port, 1)                                   # 0 in maint, 1 down: nobody
    assert samples(scrape(f"{url}/metrics").stdout)[("pen_refusals_total", ())] == 1
    ctl(control, "server 0 ready")
    other = free_port()
    assert ctl(control, f"metrics_port 127.0.0.1:{other}") == ""
    assert scrape(f"http://127.0.0.1:{other}/metrics").stdout.startswith("# HELP pen_up")
    assert scrape(f"{url}/metrics").returncode != 0                         # the old one closed
    assert ctl(control, f"metrics_port 127.0.0.1:{port}").startswith("metrics_port ")
    assert ctl(control, "metrics_port") == f"127.0.0.1:{other}\n"           # unchanged
    assert ctl(control, "no metrics_port") == ""
    assert scrape(f"http://127.0.0.1:{other}/metrics").returncode != 0
    assert "Traceback" not in pen.output()
