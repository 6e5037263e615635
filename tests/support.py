"""Helpers for tests that run real processes on loopback: pen itself, HTTP backends, curl.

Everything listens on 127.0.0.0/8 or ::1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pen_lab.errors import wait_for  # noqa: F401  (the one wait helper, shared with the lab)

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768                              # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()
_PORTS = random.Random()                          # unaffected by tests that seed random
_HANDED_OUT: set[int] = set()                     # free_port: each port once per process


def fill_backlog(listener) -> list:
    """Fill a listen(0) socket's accept queue, so that the next connect's SYN is dropped and
    that connect hangs (a server that never answers, on loopback). The fillers: close them."""
    fillers = []
    while True:
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(listener.getsockname())
        except (socket.timeout, BlockingIOError):
            s.close()
            return fillers
        fillers.append(s)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to, below the kernel's ephemeral range: between this probe
    and the test's own bind, no automatic bind (a connect, pen's UDP session sockets, a TFTP
    server's transfer port) can take it, as one once did to a port the kernel had handed out.
    (Where the range starts too low to leave room, the kernel picks, as before.)
    A port is handed out once per test process: two draws in one test (a listener and its
    -C port) never name the same one before either is bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        for _ in range(200 if _EPHEMERAL_LOW > 11000 else 0):
            port = _PORTS.randrange(10000, _EPHEMERAL_LOW)
            if port in _HANDED_OUT:
                continue
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def steady_fds(pid: int) -> int:
    """pid's fd count once it holds still for 0.2 s: a connection that just ended (a
    start-up probe, the last curl) may still be closing when a test takes its baseline."""
    def steady():
        count = open_fds(pid)
        time.sleep(0.2)
        return count if open_fds(pid) == count else None
    return wait_for(steady, what="a steady fd count")


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Pen:
    """A `python -m pen -f ...` process; `args` is pen's command line after the options."""

    def __init__(self, *args: str, wait: tuple | None = None, env: dict | None = None,
                 nofile: int | None = None) -> None:
        self.args = [sys.executable, "-m", "pen", "-f", *args]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pen-test-{os.getpid()}-{id(self)}.log"
        self.log = open(self.log_path, "w+")
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=str(ROOT),
                                     preexec_fn=(lambda: _limit_fds(nofile)) if nofile else None)
        if wait is not None:
            host, port = wait
            wait_for(lambda: self.proc.poll() is not None or can_connect(host, port),
                     what=f"pen to listen on {host}:{port}")
            if self.proc.poll() is not None:
                raise AssertionError(f"pen exited {self.proc.returncode}: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig=None) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig or 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def _limit_fds(n: int) -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def server_conns(pen: Pen, server: int = 0) -> int:
    """The connections pen holds to a server, from the table SIGUSR1 makes it log."""
    import re
    before = pen.output().count(" conn ")
    pen.proc.send_signal(10)
    wait_for(lambda: pen.output().count(" conn ") > before, what="pen's server table")
    return int(re.findall(rf"^.*: {server} addr .* conn (\d+) ", pen.output(), re.M)[-1])


def run_pen(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run pen to completion (for bad-argument tests)."""
    return subprocess.run([sys.executable, "-m", "pen", "-f", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


class Backend:
    """An HTTP/1.1 backend on loopback (keep-alive) that reports its name and what it saw.

    GET /             -> JSON {"name", "peer", "xff", "proto"}
    GET /bytes/N      -> N deterministic bytes
    POST /sha256      -> JSON {"sha256", "length"} of the request body
    """

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.requests: list[dict] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, body: bytes, ctype="application/json"):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                seen = {"name": backend.name, "peer": self.client_address[0],
                        "xff": self.headers.get_all("X-Forwarded-For"),
                        "proto": self.headers.get("X-Forwarded-Proto"), "path": self.path}
                backend.requests.append(seen)
                if self.path.startswith("/bytes/"):
                    return self._send(pattern(int(self.path[7:])), "application/octet-stream")
                self._send(json.dumps(seen).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = read_chunked(self.rfile)
                else:
                    body = self.rfile.read(length)
                backend.requests.append({"name": backend.name, "path": self.path,
                                         "xff": self.headers.get_all("X-Forwarded-For")})
                self._send(json.dumps({"sha256": hashlib.sha256(body).hexdigest(),
                                       "length": len(body), "name": backend.name}).encode())

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family,
                                                               "daemon_threads": True})
        self.server = server_class((host, port), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def spec(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_chunked(rfile) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        body += rfile.read(size)
        rfile.readline()


def pattern(n: int) -> bytes:
    """n deterministic pseudo-random bytes: a transfer that drops or reorders would show."""
    return random.Random(n).randbytes(n)


def curl(url: str, *extra: str, interface: str | None = None, timeout: float = 10) -> str:
    cmd = ["curl", "-sS", "--max-time", str(timeout), *extra]
    if interface:
        cmd += ["--interface", interface]
    result = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=timeout + 5)
    if result.returncode != 0:
        raise AssertionError(f"curl {url} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def curl_json(url: str, **kw) -> dict:
    return json.loads(curl(url, **kw))


def slow_download(port, size, wrap=None) -> bytes:
    """GET /bytes/size with a 4 KiB receive buffer, read 4 KiB at a time: the backend
    writes far faster than this client reads, so pen must hold back (backpressure)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", port))
    sock = wrap(raw) if wrap else raw
    with sock:
        sock.sendall(f"GET /bytes/{size} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head[:100]
    return body
