"""The UDP balancer in this process (gevent), against UDP backends in threads: counters,
odd datagrams, strays, the session limit, idle expiry, listen and close, bursts. Each test
runs with both ways of moving datagrams: batches (recvmmsg/sendmmsg, Linux) and one
recvfrom/sendto per datagram (elsewhere)."""

import os
import socket

import gevent
import pytest
from gevent import socket as gsocket
from udp_peers import Responder, echo

from pen import commands, mmsg
from pen.cli import parse
from pen.sockets import bind
from pen.udp import UdpBalancer
from support import wait_for


def gwait(condition, timeout=5.0, what="condition"):
    """wait_for for code under gevent: poll without blocking the hub."""
    return wait_for(condition, timeout, what=what, sleep=gevent.sleep)


@pytest.fixture(params=["mmsg", "plain"])
def balance(request):
    """balance(*argv) -> (state, balancer, port): pen -U on 127.0.0.1:<free port>."""
    if request.param == "mmsg" and not mmsg.AVAILABLE:
        pytest.skip("recvmmsg/sendmmsg: 64-bit Linux only (tests/unit/test_mmsg.py checks)")
    running = []

    def start(*argv):
        state, _ = parse(["-U", *argv[:-1], "127.0.0.1:0", *argv[-1]])
        sock = bind(state.listen, socket.SOCK_DGRAM)
        balancer = UdpBalancer(state, gsocket.socket(fileno=sock.detach()))
        # each kind explicitly: with PEN_PORTABLE=1 the balancer's own choice is the plain one
        balancer.batch = mmsg.Batch() if request.param == "mmsg" else mmsg.PlainBatch()
        balancer.start()
        running.append(balancer)
        return state, balancer, balancer.sock.getsockname()[1]

    yield start
    for balancer in running:
        balancer.close()


def ask(sock, port, data, timeout=2.0):
    sock.sendto(data, ("127.0.0.1", port))
    try:
        with gevent.Timeout(timeout):
            return sock.recvfrom(65535)[0]
    except gevent.Timeout:
        return None


def gclient(host="127.0.0.1"):
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def test_counters_per_server_both_ways(balance):
    backend = echo()
    try:
        state, balancer, port = balance([backend.spec])
        client = gclient()
        for _ in range(3):
            assert ask(client, port, b"x" * 100) == b"x" * 100
        server = state.servers[0]
        assert (server.dgrams_sx, server.dgrams_rx, server.sx, server.rx) == (3, 3, 300, 300)
        assert "sx 300 rx 300" in commands.answer(state, "servers")
        assert len(state.connections) == 1 and server.conn == 1 and server.total == 1
        conn = next(iter(state.connections.values()))
        assert (conn.sx, conn.rx, conn.server) == (300, 300, server)
        client.close()
    finally:
        backend.stop()


def test_empty_and_largest_datagrams_pass_intact(balance):
    backend = echo()
    try:
        state, balancer, port = balance([backend.spec])
        client = gclient()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert ask(client, port, b"") == b""
        biggest = os.urandom(65507)
        assert ask(client, port, biggest) == biggest
        assert state.servers[0].sx == 65507
        client.close()
    finally:
        backend.stop()


def test_answers_from_an_unrelated_address_are_dropped_and_counted(balance):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.5", 0))
    stray = Responder(lambda data, addr: b"spoofed", host="127.0.0.2", sender=other)
    try:
        state, balancer, port = balance([stray.spec])
        client = gclient()
        assert ask(client, port, b"hello", timeout=0.5) is None
        gwait(lambda: state.counters["udp_stray"] == 1, what="the stray to be counted")
        assert state.servers[0].dgrams_rx == 0
        client.close()
    finally:
        stray.stop()


def test_session_limit_evicts_the_least_recently_used(balance):
    backend = echo()
    try:
        state, balancer, port = balance("-x", "2", [backend.spec])
        clients = [gclient() for _ in range(3)]
        for sock in clients:
            assert ask(sock, port, b"hi") == b"hi"
        assert state.counters["udp_evicted"] == 1
        assert len(state.connections) == 2 and len(balancer.table) == 2
        assert state.servers[0].conn == 2
        # The evicted first client gets a new session (a new backend port) and an answer.
        assert ask(clients[0], port, b"again") == b"again"
        assert backend.seen[0] != backend.seen[3]
        assert len({addr for addr in backend.seen}) == 4
        for sock in clients:
            sock.close()
    finally:
        backend.stop()


def test_idle_sessions_expire(balance):
    backend = echo()
    try:
        state, balancer, port = balance("-O", "idle_timeout 0.5", [backend.spec])
        client = gclient()
        assert ask(client, port, b"one") == b"one"
        assert ask(client, port, b"two") == b"two"
        assert backend.seen[0] == backend.seen[1]            # one session
        gwait(lambda: state.counters["udp_expired"] == 1, what="the session to expire")
        assert not state.connections and state.servers[0].conn == 0
        assert ask(client, port, b"three") == b"three"
        assert backend.seen[2] != backend.seen[0]            # a new session
        client.close()
    finally:
        backend.stop()


def test_close_connection_command_and_shutdown(balance):
    backend = echo()
    try:
        state, balancer, port = balance([backend.spec])
        client = gclient()
        assert ask(client, port, b"a") == b"a"
        conn_id = next(iter(state.connections))
        assert "server = 0" in commands.answer(state, f"connection {conn_id}")
        commands.execute(state, f"close {conn_id}")
        assert not state.connections and state.servers[0].conn == 0
        assert ask(client, port, b"b") == b"b"
        balancer.close()
        assert not state.connections and len(balancer.table) == 0
        assert ask(client, port, b"c", timeout=0.3) is None
        client.close()
    finally:
        backend.stop()


def test_relisten_moves_to_the_new_address(balance):
    backend = echo()
    try:
        state, balancer, port = balance([backend.spec])
        client = gclient()
        assert ask(client, port, b"a") == b"a"
        state.listen.port = 0
        balancer.relisten(state.listen)
        new_port = balancer.sock.getsockname()[1]
        assert ask(client, new_port, b"b") == b"b"
        assert ask(client, port, b"c", timeout=0.3) is None
        client.close()
    finally:
        backend.stop()


def test_no_server_for_a_denied_client_is_counted(balance):
    backend = echo()
    try:
        state, balancer, port = balance("-O", "acl 1 deny 127.0.0.0 255.0.0.0",
                                        "-O", "client_acl 1", [backend.spec])
        client = gclient()
        assert ask(client, port, b"a", timeout=0.3) is None
        assert state.counters["udp_no_server"] == 1 and not state.connections
        client.close()
    finally:
        backend.stop()


def burst(clients, port, count):
    """Each client sends count numbered datagrams without waiting, then reads its answers:
    {client index: the answers in arrival order}."""
    for n in range(count):
        for k, sock in enumerate(clients):
            sock.sendto(b"%d:%d" % (k, n), ("127.0.0.1", port))
    answers = {}
    for k, sock in enumerate(clients):
        got = answers[k] = []
        with gevent.Timeout(5, AssertionError(f"client {k}: {len(got)} of {count} answers")):
            while len(got) < count:
                got.append(sock.recvfrom(100)[0])
    return answers


def test_bursts_from_several_clients_arrive_complete_and_in_order(balance):
    """More datagrams than a batch holds, from clients whose datagrams interleave in each
    batch: every client gets exactly its own answers, in the order it sent them."""
    backend = echo()
    try:
        state, balancer, port = balance([backend.spec])
        clients = [gclient(f"127.0.0.{k + 1}") for k in range(3)]
        for sock in clients:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        answers = burst(clients, port, 40)     # 120 datagrams: 4 batches, and within
        # the default receive buffers
        for k in range(3):
            assert answers[k] == [b"%d:%d" % (k, n) for n in range(40)]
        server = state.servers[0]
        assert server.dgrams_sx == server.dgrams_rx == 120
        assert len(state.connections) == 3
        for sock in clients:
            sock.close()
    finally:
        backend.stop()
