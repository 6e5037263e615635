"""Connecting a client to a server from loop callbacks, failing over in pen's order.

A Dial tries the servers select names (choose, then failover), one after another: a
non-blocking connect(2), then (unless the server has answered already, as one on this host
has) a write watcher and a -t timer on the loop. Each server that fails is blacklisted before
the next is asked for. No greenlet waits for any of it: a plain connection goes from the
accept callback through its Dial to its relay without a switch.
"""

from __future__ import annotations

import errno
import os
import socket
import time

import gevent

from .select import choose, failover
from .sockets import FULL_RETRY, OUT_OF_FDS, server_socket

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY)
_CONNECTED = (0, errno.EISCONN)
_WRITE = 2
_NONE_LEFT = iter(())     # Dial.servers once it has ended: no server is tried after that


class Dial:
    """One client's way to a server: start() begins; then exactly one of the two hooks a
    subclass gives is called. connected(server, sock): the caller owns sock from there,
    and may still call failed(server, why) to go on to the next server. nowhere(why): why
    is None when no server would take the client, else the reason we could not try: our
    own shortage (out of fds, or no local port left: EAGAIN from a TCP connect), which
    blames no server. cancel() ends it quietly (`close N`)."""

    __slots__ = ("state", "client", "hooks", "ip", "now", "servers", "server", "sock",
                 "waiter", "timer")

    def __init__(self, state, client, hooks) -> None:
        self.state, self.client, self.hooks = state, client, hooks
        self.servers = self.server = self.sock = self.waiter = self.timer = None

    def connected(self, server, sock) -> None:
        raise NotImplementedError

    def nowhere(self, why: str | None) -> None:
        raise NotImplementedError

    def start(self, ip, now: float) -> None:
        """Choose a server for the client at ip (as of now) and connect to it."""
        client = self.client
        port = client[1] if type(client) is tuple else None
        self.ip, self.now = ip, now
        self.connect(choose(self.state, ip, port, now))

    def after(self, failed):
        """The next server in pen's order after failed (blacklisted now), or None. (The
        failover order is asked for only once a server has failed.)"""
        if self.servers is None:
            self.servers = failover(self.state, failed, self.ip, self.now)
        return next(self.servers, None)

    def connect(self, server) -> None:
        """Connect to server, or on failure to the next; nowhere() when none is left."""
        while server is not None:
            try:
                sock = server_socket(server, socket.SOCK_STREAM, self.client, self.hooks)
            except OSError as e:
                if e.errno in OUT_OF_FDS:            # our shortage, not the server's fault
                    return self.end("no fd for an upstream socket")
                self.state.server_failed(server, f"failed: {e.strerror or e}", time.time())
                server = self.after(server)
                continue
            sockaddr = server.endpoint.sockaddr
            err = sock.connect_ex(sockaddr)
            if err in _IN_PROGRESS:
                # A server on this host has answered by now (the handshake ran in our
                # syscall): asking again costs a syscall where waiting costs a loop trip.
                err = sock.connect_ex(sockaddr)
            if err in _CONNECTED:
                return self.connected(server, sock)
            if err in _IN_PROGRESS:
                return self.wait(server, sock)
            if err == errno.EAGAIN:
                if sock.family == socket.AF_UNIX:           # the server's backlog is full
                    return self.wait(server, sock, full=True)
                sock.close()                                # no local port: our shortage
                return self.end("no local port for a connect")
            sock.close()
            self.state.server_failed(server, f"failed: {os.strerror(err)}", time.time())
            server = self.after(server)
        self.end(None)

    def failed(self, server, why: str) -> None:
        """The caller could not use the connected server (its PROXY header or TLS
        handshake failed): blacklist it, go on to the next."""
        self.state.server_failed(server, f"failed: {why}", time.time())
        self.connect(self.after(server))

    def cancel(self) -> None:
        self.stop()
        self.servers = _NONE_LEFT

    # waiting for a connect in progress -------------------------------------------------

    def wait(self, server, sock, full: bool = False) -> None:
        """Until writable: connected or refused. At most -t seconds. A UNIX server whose
        backlog is full is asked again every FULL_RETRY seconds: its fd tells nothing (a
        socket that is not connected yet is always writable)."""
        loop = gevent.get_hub().loop
        self.server, self.sock = server, sock
        if full:
            self.waiter = loop.timer(FULL_RETRY, FULL_RETRY)
            self.waiter.start(self.again)
        else:
            self.waiter = loop.io(sock.fileno(), _WRITE)
            self.waiter.start(self.writable)
        if self.state.timeout:
            self.timer = loop.timer(self.state.timeout)
            self.timer.start(self.timed_out, update=True)    # -t from now, not loop time

    def again(self) -> None:
        err = self.sock.connect_ex(self.server.endpoint.sockaddr)
        if err == errno.EAGAIN:
            return                                 # still full: the timer asks again
        self.waiter.stop()
        if err in _IN_PROGRESS:
            self.waiter = gevent.get_hub().loop.io(self.sock.fileno(), _WRITE)
            self.waiter.start(self.writable)
            return
        self.answered(err)

    def writable(self) -> None:
        self.answered(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def answered(self, err: int) -> None:
        server, sock = self.server, self.sock
        self.stop(close=False)
        if err and err != errno.EISCONN:
            sock.close()
            self.state.server_failed(server, f"failed: {os.strerror(err)}", time.time())
            return self.connect(self.after(server))
        self.connected(server, sock)

    def timed_out(self) -> None:
        server = self.server
        self.stop()
        self.state.server_failed(server, "failed: timed out", time.time())
        self.connect(self.after(server))

    def stop(self, close: bool = True) -> None:
        """Stop waiting (closing the socket unless it is handed on)."""
        if self.waiter is not None:
            self.waiter.stop()
            self.waiter = None
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if self.sock is not None:
            if close:
                self.sock.close()
            self.sock = self.server = None

    def end(self, why) -> None:
        self.servers = _NONE_LEFT
        self.nowhere(why)
