"""TLS termination through real peers: curl and `openssl s_client` as clients, certificates
made here (trustme), HTTP backends on loopback."""

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme

from support import (
    Backend,
    curl,
    free_port,
    open_fds,
    pattern,
    run_pen,
    slow_download,
    steady_fds,
    wait_for,
)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def pki(ca, tmp_path):
    files = {"ca": tmp_path / "ca.pem", "site": tmp_path / "site.pem",
             "client": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(files["site"]))
    ca.issue_cert("client@example.test").private_key_and_cert_chain_pem.write_to_path(
        str(files["client"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
def backend():
    started = Backend("plain")
    yield started
    started.stop()


def https(port, path="/", host="127.0.0.1"):
    return f"https://{host}:{port}{path}"


def openssl(port, *args, stdin=b"", timeout=10):
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                          input=stdin, capture_output=True, timeout=timeout)


def tls_failures(pen) -> int:
    """The failure counter, as the debug log reports it (-d)."""
    counts = re.findall(r"\((\d+) TLS failures\)", pen.output())
    return int(counts[-1]) if counts else 0


def start_counted(start_pen, *options, servers):
    """pen with -d, started without the fixture's TCP probe (which would count as a
    failed handshake): waits for the listening line instead."""
    pen, port = start_pen("-d", *options, servers=servers, wait=False)
    wait_for(lambda: "listening on" in pen.output() or pen.proc.poll() is not None,
             what="pen to listen")
    return pen, port


def get_json(url, *extra) -> dict:
    return json.loads(curl(url, *extra))


# termination ---------------------------------------------------------------------------

def test_curl_through_tls_with_forwarded_proto_https(pki, backend, start_pen):
    pen, port = start_pen("-E", pki["site"], "-H", servers=[backend.spec])
    seen = get_json(https(port), "--cacert", pki["ca"])
    assert seen["name"] == "plain"
    assert seen["proto"] == "https" and seen["xff"] == ["127.0.0.1"]


def test_openssl_s_client_gets_tls13_and_alpn_http11(pki, backend, start_pen):
    pen, port = start_pen("-E", pki["site"], "-H", servers=[backend.spec])
    out = openssl(port, "-CAfile", pki["ca"], "-alpn", "h2,http/1.1", "-servername", "localhost", "-ign_eof",
                  stdin=b"GET / HTTP/1.0\r\n\r\n").stdout.decode()
    assert "Verify return code: 0 (ok)" in out
    assert "TLSv1.3" in out
    assert "ALPN protocol: http/1.1" in out
    assert '"name": "plain"' in out                  # the request went through


def test_big_download_is_byte_exact_over_tls(pki, backend, start_pen, tmp_path):
    """A bulk transfer: splice(2) must never take over from the TLS layer."""
    pen, port = start_pen("-E", pki["site"], servers=[backend.spec])
    target = tmp_path / "body"
    size = 3 * 1024 * 1024
    curl(https(port, f"/bytes/{size}"), "--cacert", pki["ca"], "-o", str(target))
    assert target.read_bytes() == pattern(size)


def test_a_slow_tls_reader_gets_every_byte(pki, backend, start_pen):
    """Backpressure through the TLS layer: writes that would block are retried whole."""
    pen, port = start_pen("-E", pki["site"], servers=[backend.spec])
    ctx = ssl.create_default_context(cafile=pki["ca"])
    size = 8 * 1024 * 1024
    body = slow_download(port, size, lambda raw: ctx.wrap_socket(raw, server_hostname="localhost"))
    assert body == pattern(size)


def test_key_in_its_own_file(ca, tmp_path, backend, start_pen):
    cert = ca.issue_cert("127.0.0.1")
    crt, key, ca_file = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    pen, port = start_pen("-E", str(crt), "-K", str(key), servers=[backend.spec])
    assert get_json(https(port), "--cacert", str(ca_file))["name"] == "plain"


def test_minimum_versions(pki, backend, start_pen):
    pen, port = start_pen("-E", pki["site"], servers=[backend.spec])
    assert openssl(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0").returncode != 0
    assert openssl(port, "-tls1_2", "-CAfile", pki["ca"]).returncode == 0
    pen13, port13 = start_pen("-E", pki["site"], "-L", "tls1.3", servers=[backend.spec])
    with pytest.raises(AssertionError, match="failed"):
        curl(https(port13), "--cacert", pki["ca"], "--tls-max", "1.2")
    assert get_json(https(port13), "--cacert", pki["ca"])["name"] == "plain"


def test_sni_picks_the_certificate_for_the_name(ca, pki, tmp_path, backend, start_pen):
    sni = tmp_path / "sni"
    sni.mkdir()
    site = ca.issue_cert("www.example.test")
    site.cert_chain_pems[0].write_to_path(str(sni / "www.example.test.crt"))
    site.private_key_pem.write_to_path(str(sni / "www.example.test.key"))
    pen, port = start_pen("-E", pki["site"], "-O", f"ssl_sni_path {sni}",
                          servers=[backend.spec])
    # curl checks the name: it only succeeds if pen served www.example.test's certificate
    seen = get_json(https(port, host="www.example.test"), "--cacert", pki["ca"],
                     "--resolve", f"www.example.test:{port}:127.0.0.1")
    assert seen["name"] == "plain"
    assert get_json(https(port, host="localhost"), "--cacert", pki["ca"])["name"] == "plain"
    out = openssl(port, "-servername", "other.example.test").stdout.decode()
    assert "CN = localhost" in out or "subject=" in out and "www.example.test" not in out


def test_require_client_certificate(pki, backend, start_pen):
    pen, port = start_counted(start_pen, "-E", pki["site"], "-G", pki["ca"], "-R",
                              servers=[backend.spec])
    seen = get_json(https(port), "--cacert", pki["ca"], "--cert", pki["client"])
    assert seen["name"] == "plain"
    with pytest.raises(AssertionError, match="failed"):
        curl(https(port), "--cacert", pki["ca"])
    stranger = trustme.CA().issue_cert("client@example.test")
    stranger_file = os.path.join(os.path.dirname(pki["ca"]), "stranger.pem")
    stranger.private_key_and_cert_chain_pem.write_to_path(stranger_file)
    with pytest.raises(AssertionError, match="failed"):
        curl(https(port), "--cacert", pki["ca"], "--cert", stranger_file)
    wait_for(lambda: tls_failures(pen) == 2, what="two refused client certificates counted")
    assert len(backend.requests) == 1                 # refused clients never reached it


# reload ----------------------------------------------------------------------------------

def test_sighup_reloads_the_certificate_and_keeps_sessions(pki, tmp_path, backend, start_pen):
    new_ca = trustme.CA()
    new_ca_file = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_file))
    cert_file = tmp_path / "live.pem"
    cert_file.write_bytes(open(pki["site"], "rb").read())
    pen, port = start_pen("-E", str(cert_file), servers=[backend.spec])

    old_ctx = ssl.create_default_context(cafile=pki["ca"])
    session = http.client.HTTPSConnection("127.0.0.1", port, context=old_ctx, timeout=10)
    session.request("GET", "/")
    assert b'"plain"' in session.getresponse().read()
    sock = session.sock

    new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    pen.proc.send_signal(1)

    def new_certificate_served():
        try:
            curl(https(port), "--cacert", str(new_ca_file))
            return True
        except AssertionError:
            return False
    wait_for(new_certificate_served, what="the new certificate after SIGHUP")
    session.request("GET", "/again")                  # the established session goes on
    assert b'"plain"' in session.getresponse().read() and session.sock is sock
    session.close()

    cert_file.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    pen.proc.send_signal(1)
    wait_for(lambda: "previous certificates stay in service" in pen.output(),
             what="the broken certificate to be reported")
    assert get_json(https(port), "--cacert", str(new_ca_file))["name"] == "plain"


# bad input -------------------------------------------------------------------------------

def client_hello() -> bytes:
    """The first flight of a real TLS client, captured over a socket pair."""
    a, b = socket.socketpair()
    ctx = ssl.create_default_context()
    tls = ctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = b.recv(65536)
    tls.close()
    b.close()
    return hello


def closed_by_pen(sock, timeout=8.0) -> bool:
    """Read until pen closes; True if it did within timeout."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def test_bad_clients_are_closed_counted_and_leak_nothing(pki, backend, start_pen):
    pen, port = start_counted(start_pen, "-t", "1", "-E", pki["site"], servers=[backend.spec])
    assert get_json(https(port), "--cacert", pki["ca"])["name"] == "plain"
    baseline = steady_fds(pen.proc.pid)
    hello = client_hello()
    assert hello[0] == 0x16                          # a handshake record

    silent = socket.create_connection(("127.0.0.1", port))        # never says hello
    plaintext = socket.create_connection(("127.0.0.1", port))
    plaintext.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    truncated = socket.create_connection(("127.0.0.1", port))
    truncated.sendall(hello[:40])
    truncated.shutdown(socket.SHUT_WR)
    stalled = socket.create_connection(("127.0.0.1", port))        # half a hello, then nothing
    stalled.sendall(hello[:40])
    started = time.monotonic()
    for sock in (plaintext, truncated, silent, stalled):
        assert closed_by_pen(sock), "pen left a bad client open"
        sock.close()
    assert time.monotonic() - started < 6             # the handshake timeout is -t (1 s)
    wait_for(lambda: tls_failures(pen) == 4, what="four failed handshakes counted")
    wait_for(lambda: open_fds(pen.proc.pid) == baseline, what=f"pen's fds back to {baseline}")
    assert get_json(https(port), "--cacert", pki["ca"])["name"] == "plain"


def test_many_silent_clients_do_not_block_others(pki, backend, start_pen):
    """Handshakes run in each connection's greenlet: waiting clients never stall accept."""
    pen, port = start_pen("-t", "5", "-E", pki["site"], servers=[backend.spec])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        started = time.monotonic()
        assert get_json(https(port), "--cacert", pki["ca"])["name"] == "plain"
        assert time.monotonic() - started < 3
    finally:
        for sock in silent:
            sock.close()


# usage -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["-E", "/nonexistent.pem"], "pen: -E: /nonexistent.pem: no such file"),
    (["-L", "ssl3", "-E", "x.pem"], "pen: -L ssl3: SSLv2/SSLv3 are broken and refused"),
    (["-K", "key.pem"], "pen: TLS needs a certificate: -E cert.pem"),
    (["-O", "ssl_ocsp_response /x.der"], "OCSP stapling is unsupported"),
])
def test_tls_usage_errors_are_one_line(argv, message):
    result = run_pen(*argv, f"127.0.0.1:{free_port()}", "127.0.0.1:1")
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ssl_backend -----------------------------------------------------------------------------

class TlsBackend:
    """A TLS server on loopback that answers each connection with one HTTP response."""

    def __init__(self, cert) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.ctx)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    body = b"tls backend"
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
            except OSError:
                pass

    def stop(self):
        self.sock.close()


def test_ssl_backend_reencrypts_and_verifies_with_the_ca(ca, pki, start_pen):
    server = TlsBackend(ca.issue_cert("127.0.0.1"))
    try:
        pen, port = start_pen("-O", "ssl_backend", "-G", pki["ca"],
                              servers=[f"127.0.0.1:{server.port}"])
        assert curl(f"http://127.0.0.1:{port}/") == "tls backend"
        pen2, port2 = start_pen("-E", pki["site"], "-O", "ssl_backend",
                                servers=[f"127.0.0.1:{server.port}"])  # no -G: unverified
        assert curl(https(port2), "--cacert", pki["ca"]) == "tls backend"
        other_ca = os.path.join(os.path.dirname(pki["ca"]), "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(other_ca)
        pen3, port3 = start_pen("-O", "ssl_backend", "-G", other_ca,
                                servers=[f"127.0.0.1:{server.port}"])
        with pytest.raises(AssertionError, match="failed"):
            curl(f"http://127.0.0.1:{port3}/")
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in pen3.output()
                 or "certificate verify failed" in pen3.output(),
                 what="the unverifiable server to be reported")
    finally:
        server.stop()


def test_a_tls_client_reaches_a_server_that_wants_a_proxy_header(pki, start_pen):
    """-E with proxy_protocol v1 towards the server: the header names the address the client
    reached, taken before the TLS layer hid the accepted socket (it once failed with
    EBADF there, blacklisting every server)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data.split(b"\r\n", 1)[-1]:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                line = data.split(b"\r\n", 1)[0]
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(line), line))
    threading.Thread(target=serve, daemon=True).start()
    try:
        pen, port = start_pen("-E", pki["site"], "-O", "proxy_protocol v1",
                              servers=[f"127.0.0.1:{listener.getsockname()[1]}"])
        line = curl(https(port), "--cacert", pki["ca"])
        assert re.fullmatch(rf"PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ {port}", line), line
        assert "blacklisted" not in pen.output()
    finally:
        listener.close()
