"""Memory per held connection: RSS of each balancer before and after N idle connections
are opened through it (each has carried one exchange, so its relay is set up), pen-lb
beside the C pen.

    python3 bench/held.py [--connections 4000]

The backend is a small asyncio echo server in this process's child; everything runs on
127.0.0.1. Prints the RSS growth in KiB per held connection.
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

import procs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
C_PEN = os.environ.get("PEN_BENCH_CPEN", "/usr/bin/pen")
FDS = 65536

ECHO = """
import asyncio, sys
async def echo(reader, writer):
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


def raise_fd_limit():
    """As many fds as this process may have (up to FDS): pen needs two per connection."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = FDS if hard == resource.RLIM_INFINITY else min(FDS, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(argv, port, count, env=None):
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=raise_fd_limit, env=env,
                            cwd=REPO)
    try:
        if procs.wait_tcp(port, proc):
            return None
        held = []
        warm = socket.create_connection(("127.0.0.1", port))      # the first one's costs
        warm.sendall(b"x")
        warm.recv(1)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"x")
            held.append(sock)
        for sock in held:
            assert sock.recv(1) == b"x"
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        for sock in held:
            sock.close()
        warm.close()
        return (after - before) / count, before, after
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4000)
    args = parser.parse_args(argv)
    raise_fd_limit()
    backend_port, ours_port, c_port = procs.free_ports(3)
    backend = subprocess.Popen([sys.executable, "-c", ECHO, str(backend_port)],
                               preexec_fn=raise_fd_limit)
    try:
        procs.wait_tcp(backend_port, backend)
        limit = ["-x", str(args.connections + 100)]
        server = f"127.0.0.1:{backend_port}"
        env = dict(os.environ, PYTHONPATH=REPO)
        rows = [("pen-lb", measure([sys.executable, "-m", "pen", "-f", *limit,
                                    f"127.0.0.1:{ours_port}", server], ours_port,
                                   args.connections, env)),
                ("C pen", measure([C_PEN, "-f", *limit, f"127.0.0.1:{c_port}", server],
                                  c_port, args.connections))]
    finally:
        backend.terminate()
        backend.wait(10)
    print(f"{args.connections} held connections, each after one exchange")
    for name, result in rows:
        if result is None:
            print(f"{name:<8} did not start")
            continue
        per, before, after = result
        print(f"{name:<8} {per:6.2f} KiB per connection (RSS {before / 1024:.1f} -> "
              f"{after / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
