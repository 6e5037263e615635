"""A slow reader: GET a URL with a small receive window and read it at RATE bytes a second.

    python3 -m pen_lab.slow_get URL --rate 300000 [--out FILE]

The window (SO_RCVBUF) is set before connecting, so the server can send only as fast as
this reads: the transfer stays on the wire for size / rate seconds (curl --limit-rate only
paces the reading; the kernel would take the whole body at once). Prints the status line's
code, the X-Lab-Server header and the body's length and sha256.
"""

import argparse
import hashlib
import socket
import sys
import time
from urllib.parse import urlsplit

WINDOW = 32 * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pen_lab.slow_get")
    parser.add_argument("url")
    parser.add_argument("--rate", type=int, default=300_000)
    parser.add_argument("--out", default="/tmp/ha-dsr.bin")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WINDOW)
    sock.settimeout(args.timeout)
    sock.connect((url.hostname, url.port or 80))
    sock.sendall(f"GET {url.path} HTTP/1.0\r\nHost: {url.hostname}\r\n\r\n".encode())
    buf, head, size, digest = b"", None, 0, hashlib.sha256()
    began, chunk, received = time.monotonic(), max(1, args.rate // 20), 0
    with open(args.out, "wb") as out:
        while True:
            piece = sock.recv(chunk)
            if not piece:
                break
            received += len(piece)
            if head is None:
                buf += piece
                if b"\r\n\r\n" not in buf:
                    continue
                head, _, piece = buf.partition(b"\r\n\r\n")
            out.write(piece)
            out.flush()
            digest.update(piece)
            size += len(piece)
            time.sleep(max(0.0, began + received / args.rate - time.monotonic()))
    lines = (head or b"").decode(errors="replace").split("\r\n")
    server = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                   if ln.lower().startswith("x-lab-server:")), "")
    status = lines[0].split()[1] if len(lines[0].split()) > 1 else "?"
    print(status, server or "-", size, digest.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
