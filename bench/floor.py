#!/usr/bin/env python3
"""The floor: the least a TCP or UDP relay on gevent can do per request, for comparison.

    python3 bench/run.py --only tcp --ours-cmd "python3 bench/floor.py"
    python3 bench/run.py --only udp --ours-cmd "python3 bench/floor.py"

Takes pen's bench command line (`-f -r [-U] LISTEN SERVER SERVER`) and relays with nothing
but read callbacks: round-robin, no client table, no counters, no limits, no failover, no
greenlets. UDP moves datagrams with pen-lb's own batches (pen.mmsg), one session per client
and nothing else. What pen-lb costs above this is its features (and, for TCP, its greenlet
per connection); what this costs above the C pen is CPython and gevent's loop.
"""

import os
import socket
import sys

from gevent import get_hub

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pen import mmsg  # noqa: E402  (the checkout's pen, installed or not)


def address(spec):
    host, _, port = spec.rpartition(":")
    return (host or "0.0.0.0", int(port))


def udp(listen, servers):
    loop = get_hub().loop
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(listen)
    lsock.setblocking(False)
    batch = mmsg.best()
    sessions = {}                          # client name -> (backend socket, server name)

    def from_server(sock, client):
        n = batch.receive(sock)
        if n:
            batch.send(lsock, list(range(n)), 0, client)

    def from_clients():
        n = batch.receive(lsock)
        shares = {}
        for i, client in enumerate(batch.sources(n)):
            shares.setdefault(client, []).append(i)
        for client, slots in shares.items():
            session = sessions.get(client)
            if session is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                session = sessions[client] = (
                    sock, batch.name(servers[len(sessions) % len(servers)]))
                loop.io(sock.fileno(), 1).start(from_server, sock, client)
            batch.send(session[0], slots, 0, session[1])

    loop.io(lsock.fileno(), 1).start(from_clients)
    get_hub().join()


def main(argv):
    listen, *servers = [a for a in argv if not a.startswith("-")]
    servers = [address(s) for s in servers]
    if "-U" in argv:
        return udp(address(listen), servers)
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
