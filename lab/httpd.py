"""HTTP backend: answers every GET with its own name and the peer address it sees."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        seen = self.server.seen.record(
            "http", self.client_address[0], path=self.path,
            xff=self.headers.get("X-Forwarded-For"),
            proto=self.headers.get("X-Forwarded-Proto"))
        body = (json.dumps(seen) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # the seen log is the record


class LabHTTPServer(ThreadingHTTPServer):
    # A tiny accept queue: a frozen (paused) backend stops completing handshakes
    # after two queued connections, so pen's connect timeout can notice it.
    request_queue_size = 1
    daemon_threads = True


def serve_http(host, port, seen):
    server = LabHTTPServer((host, port), _Handler)
    server.seen = seen
    return server  # caller runs serve_forever()
