"""HTTP peers for the -H and -l tests, all on 127.0.0.0/8: nginx with a temporary
configuration, a strict backend on llhttp (httptools), the real penlogd and penlog, and a
raw keep-alive client."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import httptools

from support import can_connect, free_port, wait_for


class Nginx:
    """nginx on 127.0.0.1:<free port>, one process (no master), answering every request
    with 200 and the X-Forwarded-For it received; `access_log` is the log's directive
    (a path in log_format `fields`, a FIFO, ...)."""

    def __init__(self, tmp, access_log: str | None = None,
                 log_format: str = "$status|$request_uri|$http_x_forwarded_for") -> None:
        self.port = free_port()
        self.dir = str(tmp)
        self.log = os.path.join(self.dir, "nginx-access.log")
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    log_format fields '{log_format}';
    access_log {access_log or self.log} fields;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ return 200 "xff=$http_x_forwarded_for\\n"; }}
    }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", conf, "-e",
                                      os.path.join(self.dir, "nginx-error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or can_connect("127.0.0.1", self.port),
                 what="nginx to listen")
        assert self.proc.poll() is None, open(os.path.join(self.dir, "nginx-error.log")).read()

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def processed(self) -> list[tuple[str, str]]:
        """(uri, X-Forwarded-For) of each request nginx answered with 200."""
        with open(self.log) as f:
            rows = [line.rstrip("\n").split("|", 2) for line in f]
        return [(uri, xff) for status, uri, xff in rows if status == "200"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class StrictBackend:
    """An HTTP/1.1 server on llhttp: every request it frames is recorded with its
    X-Forwarded-For fields and answered 200 (keep-alive); a parse error answers 400 and
    closes, as a Node.js server does."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def processed(self) -> list[tuple[str, str]]:
        return [(r["path"], ", ".join(r["xff"])) for r in self.requests]

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        backend, current, done = self, {}, []

        class Callbacks:
            def on_url(self, url):
                current.update(path=url.decode("latin-1"), xff=[])

            def on_header(self, name, value):
                if name.lower() == b"x-forwarded-for":
                    current["xff"].append(value.decode("latin-1"))

            def on_message_complete(self):
                backend.requests.append(dict(current))
                done.append(True)

        parser = httptools.HttpRequestParser(Callbacks())
        conn.settimeout(10)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    return
                except httptools.HttpParserError:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    return
                while done:
                    done.pop()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def stop(self) -> None:
        self.running = False
        self.sock.close()


class Penlogd:
    """The C pen's penlogd on a UDP port, writing the merged log to `log`; penlog, fed
    from a FIFO, sends it a web server's log lines (start it before the web server, which
    opens the FIFO as its access log)."""

    def __init__(self, tmp) -> None:
        self.port = free_port(kind=socket.SOCK_DGRAM)
        self.log = os.path.join(str(tmp), "merged.log")
        self.fifo = os.path.join(str(tmp), "web-log.fifo")
        os.mkfifo(self.fifo)
        self.daemon = subprocess.Popen(["penlogd", "-f", "-b", "-l", self.log, str(self.port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.penlog = subprocess.Popen(f"exec penlog 127.0.0.1 {self.port} < {self.fifo}",
                                       shell=True, stderr=subprocess.DEVNULL)

    def lines(self) -> list[str]:
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        for proc in (self.penlog, self.daemon):
            proc.terminate()
            proc.wait(10)


class Client:
    """A raw keep-alive connection from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.9") -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def send(self, data: bytes, piece: int | None = None) -> None:
        for i in range(0, len(data), piece or len(data) or 1):
            self.sock.sendall(data[i:i + (piece or len(data))])

    def response(self) -> tuple[int, bytes]:
        """The next response: (status, body); a Content-Length body."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head.split(b" ")[1]), body

    def rest(self, timeout: float = 10) -> bytes:
        """Everything until the balancer closes the connection (or timeout seconds pass)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed; got {self.buffer[:200]!r}")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def settle(read, timeout: float = 5.0):
    """read() once it returns the same thing twice 0.2 s apart (a server's log caught up)."""
    def steady():
        first = read()
        time.sleep(0.2)
        return first if read() == first else None
    return wait_for(steady, timeout, what="the server's record to settle")
