"""-l: a log line per request, on -H's request framing, in the C pen's formats.

To a file: `CLIENT TIME SERVER REQUEST-LINE`. To host:port: the datagram penlogd reads,
`+ CLIENT SERVER REQUEST-LINE`, proved with Debian's penlogd merging it into nginx's
access log (sent by penlog, as Apache's piped logs would).
"""

import socket
import subprocess
import time

import pytest
from http_peers import Client, Nginx, Penlogd

from support import Pen, free_port, wait_for

CLIENT = "127.0.0.9"
POST = b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\nGET /body HTTP/1.1\r\n\r\n"


def three_requests(port: int) -> None:
    """Three requests on one keep-alive connection; the second's body looks like a request."""
    client = Client(port, CLIENT)
    for request in (b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n", POST,
                    b"GET /three?q=%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n"):
        client.send(request)
        assert client.response()[0] == 200
    client.close()


@pytest.mark.parametrize("http", [False, True], ids=["-l", "-l -H"])
def test_log_file_has_a_line_per_request_of_a_keep_alive_connection(start_pen, tmp_path, http):
    nginx = Nginx(tmp_path)
    log = tmp_path / "pen.log"
    try:
        pen, port = start_pen("-l", str(log), *(["-H"] if http else []), servers=[nginx.spec])
        three_requests(port)
        def logged():
            return [line for line in log.read_text().splitlines() if line.startswith(CLIENT)]
        wait_for(lambda: len(logged()) >= 3, what="three log lines")
        rows = [line.split(" ", 3) for line in logged()]
        assert [row[3] for row in rows] == ["GET /one HTTP/1.1", "POST /two HTTP/1.1",
                                            "GET /three?q=%C3%A9 HTTP/1.1"]
        assert {row[2] for row in rows} == {"127.0.0.1"}            # no port, as pen
        assert all(abs(int(row[1]) - time.time()) < 60 for row in rows)
    finally:
        nginx.stop()


def test_a_connection_that_is_not_http_is_logged_once_with_its_first_line(start_pen, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    log = tmp_path / "pen.log"
    with listener:
        pen, port = start_pen("-l", str(log), servers=[f"127.0.0.1:{listener.getsockname()[1]}"])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01binary")
            # (pen opens its -l file once it serves: it may listen a moment before)
            wait_for(lambda: log.exists() and "SSH-2.0-OpenSSH_9.2" in log.read_text(),
                     what="the log line")
    lines = [line for line in log.read_text().splitlines() if "SSH" in line]
    assert len(lines) == 1 and lines[0].endswith(" 127.0.0.1 SSH-2.0-OpenSSH_9.2")


def datagrams(sock) -> list[bytes]:
    got = []
    sock.settimeout(5)
    got.append(sock.recv(2048))
    sock.settimeout(0.5)
    try:
        while True:
            got.append(sock.recv(2048))
    except socket.timeout:
        return got


def test_udp_log_is_the_c_pens_datagram(tmp_path):
    """The same request through the C pen and through pen-lb: the same datagram."""
    nginx = Nginx(tmp_path)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    target = f"127.0.0.1:{receiver.getsockname()[1]}"
    seen = {}
    try:
        for name, command in (("c", ["/usr/bin/pen", "-f"]), ("ours", None)):
            port = free_port()
            if command:
                proc = subprocess.Popen([*command, "-l", target, f"127.0.0.1:{port}", nginx.spec],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_for(lambda port=port: _listening(port), what="the C pen")
            else:
                pen = Pen("-l", target, f"127.0.0.1:{port}", nginx.spec, wait=("127.0.0.1", port))
            client = Client(port, CLIENT)
            client.send(b"GET /same HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.response()[0] == 200
            client.close()
            seen[name] = [d for d in datagrams(receiver) if d.startswith(b"+ " + CLIENT.encode())]
            if command:
                proc.terminate()
                proc.wait(10)
            else:
                pen.stop()
        assert seen["ours"] == seen["c"] == [b"+ 127.0.0.9 127.0.0.1 GET /same HTTP/1.1\n"]
    finally:
        receiver.close()
        nginx.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_penlogd_merges_the_real_client_into_the_web_servers_log(start_pen, tmp_path):
    penlogd = Penlogd(tmp_path)
    nginx = Nginx(tmp_path, access_log=penlogd.fifo,
                  log_format='$remote_addr - - [$time_local] "$request" $status $body_bytes_sent')
    try:
        pen, port = start_pen("-l", f"127.0.0.1:{penlogd.port}", servers=[nginx.spec])
        three_requests(port)
        merged = wait_for(lambda: [line for line in penlogd.lines() if "/three" in line],
                          what="penlogd's merged line")
        lines = [line for line in penlogd.lines() if '"GET /one' in line or '"POST /two' in line]
        for line in lines + merged:
            assert line.startswith(CLIENT + " - - ["), line      # not the balancer's address
        assert len(lines) == 2
    finally:
        nginx.stop()
        penlogd.stop()
