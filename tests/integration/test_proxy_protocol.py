"""The PROXY protocol with real peers on loopback: HAProxy sends it to pen-lb (accept_proxy),
pen-lb sends it to nginx (listen ... proxy_protocol) and to HAProxy (accept-proxy), and a
header that is missing, malformed, slow or from an untrusted peer closes the connection.

Clients come from distinct loopback addresses (curl --interface 127.0.0.N), so the address
a server reports tells which hop it saw."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from pen.proxy_protocol import parse
from support import ROOT, curl, curl_json, free_port, wait_for

pytestmark = pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("nginx"))
                                and not os.environ.get("CI"),
                                reason="needs haproxy and nginx (.ci/run installs them)")


class Peer:
    """haproxy or nginx in the foreground with a config written for the test."""

    def __init__(self, tmp_path, name: str, config: str, port: int) -> None:
        path = tmp_path / f"{name}.conf"
        path.write_text(config)
        argv = (["haproxy", "-db", "-f", str(path)] if name == "haproxy" else
                ["nginx", "-p", str(tmp_path), "-c", str(path), "-g", "daemon off;"])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or _listening(port),
                 what=f"{name} to listen")
        assert self.proc.poll() is None, self.proc.stdout.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def peers(tmp_path):
    started = []

    def start(name, config, port):
        peer = Peer(tmp_path, name, config, port)
        started.append(peer)
        return peer
    yield start
    for peer in started:
        peer.stop()


HAPROXY_SENDS = """
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
listen front
    bind 127.0.0.1:{port}
    server pen 127.0.0.1:{pen} {send}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_in_front_passes_the_client_through_pen_to_the_server(
        send, backends, start_pen, peers):
    pen, pen_port = start_pen("-H", "-O", "acl 1 permit 127.0.0.1", "-O", "accept_proxy 1",
                              servers=[backends[0].spec])
    front = free_port()
    peers("haproxy", HAPROXY_SENDS.format(port=front, pen=pen_port, send=send), front)
    seen = curl_json(f"http://127.0.0.1:{front}/", interface="127.0.0.2")
    assert seen["xff"] == ["127.0.0.2"]           # the client HAProxy saw, not HAProxy
    assert seen["peer"] == "127.0.0.1"


def test_a_trusted_peer_without_a_header_and_an_untrusted_one_with_one_are_refused(
        backends, start_pen):
    ctl = f"127.0.0.1:{free_port()}"
    pen, port = start_pen("-u", pwd.getpwuid(os.geteuid()).pw_name, "-C", ctl, "-H", "-t", "1",
                          "-O", "acl 1 permit 127.0.0.1", "-O", "accept_proxy 1",
                          servers=[backends[0].spec])
    wait_for(lambda: refusals(ctl) == 1, what="the readiness probe's refusal")

    def refused(source, send: bytes) -> bytes:
        """What pen answered before closing (closing with our bytes unread resets)."""
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=(source, 0)) as s:
            s.sendall(send)
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""

    # trusted (127.0.0.1) but no header: plain HTTP is refused, as is silence (after -t)
    assert refused("127.0.0.1", b"GET / HTTP/1.0\r\n\r\n") == b""
    assert refused("127.0.0.1", b"") == b""
    # trusted, with a malformed header
    assert refused("127.0.0.1", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n") == b""
    # untrusted (127.0.0.3) with a header: a forged client address
    assert refused("127.0.0.3", b"PROXY TCP4 10.9.9.9 127.0.0.1 1 80\r\nGET / HTTP/1.0\r\n\r\n") == b""
    # untrusted, its header sent only once pen relays to the server: still refused, silently
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=("127.0.0.3", 0)) as s:
        wait_for(lambda: served(ctl) == 1, what="the untrusted peer's relay")
        s.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 1 80\r\nGET / HTTP/1.0\r\n\r\n")
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    # untrusted without one: served as itself
    assert curl_json(f"http://127.0.0.1:{port}/", interface="127.0.0.3")["xff"] == ["127.0.0.3"]
    # a trusted peer with a good header, split over two packets, then its request
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 10.1.1.1 127.0.0.1 4000 ")
        time.sleep(0.05)                 # the second half arrives later (not a sync stand-in)
        s.sendall(b"80\r\nGET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["xff"] == ["10.1.1.1"]
    assert refusals(ctl) == 6         # and the fixture's readiness probe (no header either)


def status(ctl) -> dict:
    answer = subprocess.run([sys.executable, "-m", "pen.penctl", ctl, "status", "json"],
                            capture_output=True, text=True, timeout=10,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    return json.loads(answer.stdout)


def refusals(ctl) -> int:
    return status(ctl)["events"].get("proxy_refused", 0)


def served(ctl) -> int:
    """Connections open to the first server (its relay runs)."""
    return status(ctl)["servers"][0]["connections"]


NGINX_RECEIVES = """
error_log stderr;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr $proxy_protocol_port $remote_addr\\n"; }}
    }}
}}
"""

HAPROXY_RECEIVES = """
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend back
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src]\\n"
"""


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_behind_pen_learns_the_client_from_the_header(version, start_pen, peers,
                                                           tmp_path):
    back = free_port()
    peers("nginx", NGINX_RECEIVES.format(port=back, tmp=tmp_path), back)
    pen, port = start_pen("-O", f"proxy_protocol {version}", servers=[f"127.0.0.1:{back}"])
    answer = curl(f"http://127.0.0.1:{port}/", interface="127.0.0.4").split()
    assert answer[0] == "127.0.0.4" and answer[2] == "127.0.0.1"


def test_haproxy_behind_pen_with_one_server_set_to_v2(start_pen, peers):
    back = free_port()
    peers("haproxy", HAPROXY_RECEIVES.format(port=back), back)
    pen, port = start_pen("-O", f"server 0 address 127.0.0.1 port {back} proxy_protocol v2",
                          servers=[f"127.0.0.1:{back}"])
    assert curl(f"http://127.0.0.1:{port}/", interface="127.0.0.5").strip() == "127.0.0.5"


def test_udp_servers_set_to_v2_get_the_client_in_front_of_every_datagram(start_pen):
    """-U with proxy_protocol v2: each datagram to the server starts with a v2 header (DGRAM)
    naming the client; the server's answers reach the client as they are."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(10)
    seen = []

    def serve():
        for _ in range(3):
            try:
                data, peer = server.recvfrom(2048)
            except OSError:
                return
            header = parse(data)
            seen.append(header)
            server.sendto(b"%s:%d %s" % (header.source[0].encode(), header.source[1],
                                         data[header.length:]), peer)
    threading.Thread(target=serve, daemon=True).start()
    port = free_port(kind=socket.SOCK_DGRAM)
    pen, _ = start_pen("-U", "-O", "proxy_protocol v2",
                       servers=[f"127.0.0.1:{server.getsockname()[1]}"],
                       listen=f"127.0.0.1:{port}", wait=False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.6", 0))
    client.settimeout(5)
    me = "127.0.0.6:%d" % client.getsockname()[1]

    def ask(payload):
        client.sendto(payload, ("127.0.0.1", port))
        return client.recv(2048)
    assert wait_for(lambda: _answer(ask, b"one"), what="pen -U to answer") == f"{me} one".encode()
    assert ask(b"two") == f"{me} two".encode()
    assert all(h.version == 2 and h.destination == ("127.0.0.1", port) for h in seen)
    client.close()
    server.close()


def _answer(ask, payload):
    try:
        return ask(payload)
    except TimeoutError:
        return None
