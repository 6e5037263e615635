"""`pen --demo`: pen on 127.0.0.1:8080 in front of two small HTTP backends it starts itself.

The backends answer every request with their name and the client address they see, so
`curl` shows the balancing (and -H's X-Forwarded-For) at a glance. Loopback only.
"""

from __future__ import annotations

import os
import sys

from gevent.server import StreamServer

from .addr import Endpoint, parse_listen, resolve
from .state import State

DEMO_PORT = int(os.environ.get("PEN_DEMO_PORT", "8080"))


def http_backend(name: str):
    """A keep-alive HTTP/1.1 responder that names itself and the peer it sees."""
    def handle(sock, address):
        buffer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                xff = [line.split(b":", 1)[1].strip().decode("latin-1")
                       for line in head.split(b"\r\n")[1:]
                       if line.lower().startswith(b"x-forwarded-for:")]
                body = f"{name}: you are {address[0]}:{address[1]}"
                body += f" (X-Forwarded-For: {xff[0]})\n" if xff else "\n"
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
    return handle


def prepare(state: State) -> list[StreamServer]:
    """Start the two backends and point state at them."""
    backends = []
    for n in (1, 2):
        server = StreamServer(("127.0.0.1", 0), http_backend(f"backend{n}"))
        server.start()
        backends.append(server)
        slot = state.server(n - 1)
        slot.endpoint = resolve(Endpoint(host="127.0.0.1", port=server.server_port))
    state.listen = parse_listen(f"127.0.0.1:{DEMO_PORT}")
    state.http = True
    ports = ", ".join(str(b.server_port) for b in backends)
    print(f"pen-lb demo: listening on http://127.0.0.1:{DEMO_PORT}/ in front of two backends "
          f"on 127.0.0.1 ports {ports} (X-Forwarded-For on).\n"
          f"Try: curl http://127.0.0.1:{DEMO_PORT}/  (client tracking keeps you on one backend)\n"
          f"     curl --interface 127.0.0.2 http://127.0.0.1:{DEMO_PORT}/  (another client)\n"
          f"Ctrl-C stops it.", file=sys.stderr)
    return backends
