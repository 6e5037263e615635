#!/usr/bin/env python3
"""The floor: the least a TCP relay on gevent can do per request, for comparison.

    python3 bench/run.py --only tcp --ours-cmd "python3 bench/floor.py"

Takes pen's bench command line (`-f -r LISTEN SERVER SERVER`) and relays with nothing but
read callbacks: round-robin, no client table, no counters, no limits, no failover, no
greenlets. What pen-lb costs above this is its features and its greenlet per connection;
what this costs above the C pen is CPython and gevent's loop.
"""

import socket
import sys

from gevent import get_hub


def address(spec):
    host, _, port = spec.rpartition(":")
    return (host or "0.0.0.0", int(port))


def main(argv):
    listen, *servers = [a for a in argv if not a.startswith("-")]
    servers = [address(s) for s in servers]
    loop = get_hub().loop
    lsock = socket.create_server(address(listen), backlog=4096)
    lsock.setblocking(False)
    turn = [0]

    def relay(src, dst, open_directions):
        reader, writer = loop.io(src.fileno(), 1), loop.io(dst.fileno(), 2)
        pending = [b""]

        def readable():
            try:
                data = src.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                reader.stop()
                writer.stop()
                open_directions[0] -= 1
                if open_directions[0]:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                else:
                    src.close()
                    dst.close()
                return
            writable(data)

        def writable(data=None):
            data = pending[0] if data is None else data
            try:
                sent = dst.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(data)
            pending[0] = data[sent:]
            if pending[0]:
                reader.stop()
                writer.start(writable)
            else:
                writer.stop()
                reader.start(readable)

        reader.start(readable)

    def accept():
        for _ in range(100):
            try:
                fd, _ = lsock._accept()
            except BlockingIOError:
                return
            client = socket.socket(fileno=fd)
            client.setblocking(False)
            server = servers[turn[0] % len(servers)]
            turn[0] += 1
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            upstream.connect_ex(server)
            open_directions = [2]
            relay(client, upstream, open_directions)
            relay(upstream, client, open_directions)

    loop.io(lsock.fileno(), 1).start(accept)
    get_hub().join()


if __name__ == "__main__":
    main(sys.argv[1:])
