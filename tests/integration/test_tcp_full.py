"""-x full: slowloris from a few addresses cannot lock a new client out (issue 14, part 3),
and the limit stays exactly -x.

Slow clients hold half a request head each (a slowloris that has sent its bytes for now);
they come from 127.0.0.2-6, the new client from 127.0.0.1.
"""

import socket
import threading
import time

from support import curl_json, server_conns, wait_for

HALF_A_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"


def slow(port, source):
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(HALF_A_HEAD)
    return s


def closed_by_pen(s) -> bool:
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_slowloris_from_five_addresses_does_not_lock_out_a_new_client(backends, start_pen):
    """600 slow connections from 5 addresses against the default -x 500: pen used to stop
    accepting and a new client waited forever. Now the 100 newcomers from addresses that
    already hold the most are closed, and a client from a sixth address takes the place of
    the longest-idle slow connection at once."""
    pen, port = start_pen("-d", "-d", servers=[backends[0].spec])
    # -d -d logs each connection's end: start-up's probe must not count against -x
    wait_for(lambda: "connection 0 closed" in pen.output(), what="start-up's probe to end")
    held = [slow(port, f"127.0.0.{2 + i % 5}") for i in range(600)]
    try:
        wait_for(lambda: server_conns(pen) == 500, timeout=30, what="500 slow connections")
        wait_for(lambda: sum(closed_by_pen(s) for s in held) == 100, timeout=30,
                 what="the 100 over -x to be closed")
        started = time.monotonic()
        assert curl_json(f"http://127.0.0.1:{port}/", interface="127.0.0.1",
                         timeout=10)["name"] == "a"
        print(f"\na new client during 600 slow connections: served in "
              f"{time.monotonic() - started:.3f} s")
        assert sum(closed_by_pen(s) for s in held) == 101      # the longest idle gave way
        assert server_conns(pen) <= 500
    finally:
        for s in held:
            s.close()
    assert pen.proc.poll() is None and "Traceback" not in pen.output()


class CountingServer:
    """A TCP server on 127.0.0.1 that counts the connections open to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open = 0
        self.received = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self.drain, args=(conn,), daemon=True).start()

    def drain(self, conn) -> None:
        with conn:
            while data := conn.recv(4096):
                with self.lock:
                    self.received += len(data)
        with self.lock:
            self.open -= 1


def test_x_caps_at_exactly_n(start_pen):
    """-x 5: a sixth connection from an address holding the most is closed at once; one
    from an address holding fewer replaces the longest-idle connection: always 5 open."""
    backend = CountingServer()
    pen, port = start_pen("-d", "-d", "-x", "5", servers=[f"127.0.0.1:{backend.port}"])
    # -d -d logs each connection's end: start-up's probe must not count against -x
    wait_for(lambda: "connection 0 closed" in pen.output(), what="start-up's probe to end")

    def relayed(send):
        """Do send(), and wait until pen has moved its bytes (so idle times are ordered)."""
        before = backend.received
        result = send()
        wait_for(lambda: backend.received > before, what="the bytes at the server")
        return result

    held = [relayed(lambda: slow(port, "127.0.0.2")) for _ in range(5)]
    try:
        assert backend.open == 5
        sixth = slow(port, "127.0.0.2")
        wait_for(lambda: closed_by_pen(sixth), what="the sixth to be closed")
        assert server_conns(pen) == 5 and backend.open == 5
        relayed(lambda: held[1].sendall(b"X-Slow: 1\r\n"))   # the second is idle no longer
        newcomer = slow(port, "127.0.0.3")
        wait_for(lambda: closed_by_pen(held[0]), what="the longest-idle one to give way")
        wait_for(lambda: backend.open == 5 and server_conns(pen) == 5,
                 what="5 connections again")
        assert not any(closed_by_pen(s) for s in held[1:] + [newcomer])
        # 127.0.0.2 holds 4, 127.0.0.3 holds 1: .3 may not displace .2 below its own count
        # plus one, so a second newcomer from .3 still replaces a .2 connection, a third
        # (3 against 2) does not.
        second = slow(port, "127.0.0.3")
        wait_for(lambda: sum(closed_by_pen(s) for s in held) == 2, what="a second .2 to go")
        third = slow(port, "127.0.0.3")
        wait_for(lambda: closed_by_pen(third), what="the third .3 to be refused")
        assert server_conns(pen) == 5
        second.close()
        sixth.close()
        newcomer.close()
    finally:
        for s in held:
            s.close()
        backend.sock.close()
