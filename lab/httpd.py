"""HTTP backend: answers every GET with its own name and the peer address it sees.

GET /blob/SIZE answers SIZE bytes of sample content instead (a download to check byte for
byte), naming the server in an X-Lab-Server header.
"""

import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pen_lab.sample import sample_bytes

BLOB = re.compile(r"/blob/(\d{1,9})$")
MAX_BLOB = 64 << 20  # a bound on what one request makes the server build


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        seen = self.server.seen.record(
            "http", self.client_address[0], path=self.path,
            xff=self.headers.get("X-Forwarded-For"),
            proto=self.headers.get("X-Forwarded-Proto"))
        blob = BLOB.match(self.path)
        if blob and int(blob.group(1)) <= MAX_BLOB:
            body, kind = sample_bytes(int(blob.group(1))), "application/octet-stream"
        else:
            body, kind = (json.dumps(seen) + "\n").encode(), "application/json"
        self.send_response(200)
        self.send_header("X-Lab-Server", self.server.seen.server)
        self.send_header("Content-Type", kind)
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
