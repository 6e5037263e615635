"""pen -U under pressure: out of file descriptors, and a flood of new sources under -x."""

import socket
from pathlib import Path

from udp_peers import client, echo, exchange, udp_bound, udp_port

from support import Pen, wait_for


def start(*args, nofile=None):
    port = udp_port()
    pen = Pen("-U", *args[:-1], f"127.0.0.1:{port}", *args[-1], nofile=nofile)
    wait_for(lambda: pen.proc.poll() is not None or udp_bound("127.0.0.1", port),
             what="pen -U to bind")
    assert pen.proc.poll() is None, pen.output()
    return pen, port


def test_out_of_fds_drops_new_sessions_logs_once_and_recovers():
    backend = echo()
    pen, port = start("-O", "idle_timeout 1", [backend.spec], nofile=48)
    try:
        clients = [client() for _ in range(80)]
        answers = [exchange(sock, port, b"ping", timeout=0.3) for sock in clients]
        answered = sum(answer == b"ping" for answer in answers)
        assert 10 < answered < 80                      # some sessions got sockets, not all
        assert pen.proc.poll() is None
        assert pen.output().count("no socket for") == 1
        for sock in clients:
            sock.close()
        # Once the idle sessions expire, their fds are back and new clients are served.
        fresh = client()
        wait_for(lambda: exchange(fresh, port, b"again", timeout=0.3) == b"again", timeout=10,
                 what="a new session after the idle ones expired")
        fresh.close()
    finally:
        pen.stop()
        backend.stop()


def test_flood_of_sources_stays_within_the_session_limit():
    backend = echo()
    pen, port = start("-x", "8", [backend.spec], nofile=64)
    try:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                assert exchange(sock, port, b"x", timeout=2) == b"x"
        assert pen.proc.poll() is None and "no socket" not in pen.output()
        fds = len(list(Path(f"/proc/{pen.proc.pid}/fd").iterdir()))
        assert fds < 40
    finally:
        pen.stop()
        backend.stop()
