"""dial.Dial through real loopback and UNIX sockets on gevent's loop: pen's failover order,
each failed server blacklisted, -t per connect, cancel, a full UNIX backlog waited out
(by a dial and by a health probe's connect_within).
"""

import errno
import socket
import time
from contextlib import contextmanager

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event

from pen import cli
from pen.addr import resolve
from pen.dial import Dial
from pen.sockets import FULL_RETRY, connect_within
from pen.tcp import TcpBalancer
from support import fill_backlog, wait_for


class Recorded(Dial):
    """A Dial that records how it ended."""

    __slots__ = ("ended", "outcome")

    def __init__(self, state):
        super().__init__(state, ("127.0.0.9", 4000), [])
        self.ended, self.outcome = Event(), None

    def connected(self, server, sock):
        self.outcome = ("connected", server.index, sock)
        self.ended.set()

    def nowhere(self, why):
        self.outcome = ("nowhere", why)
        self.ended.set()


def balancer_state(*servers, timeout="2"):
    """Round-robin over these servers, the first one first."""
    state, _ = cli.parse(["-r", "-t", timeout, "-f", "127.0.0.1:1", *servers])
    for server in state.servers:
        resolve(server.endpoint)
    state.rr_cursor = len(state.servers) - 1
    return state


def waiting(state, attempt=None):
    """A dial (a Recorded one, unless given) started and not awaited."""
    attempt = attempt or Recorded(state)
    attempt.start(None, time.time())
    return attempt


def dial(state, wait=5.0):
    attempt = waiting(state)
    assert attempt.ended.wait(wait), "the dial ended neither way"
    return attempt


@pytest.fixture
def listening():
    socks = []

    def make(backlog=16, family=socket.AF_INET, path=None):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(path or ("127.0.0.1", 0))
        s.listen(backlog)
        socks.append(s)
        return s
    yield make
    for s in socks:
        s.close()


@pytest.fixture
def hung(listening):
    """A server whose connects hang (its backlog full: the SYN is dropped): its spec."""
    server = listening(backlog=0)
    fillers = fill_backlog(server)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    for s in fillers:
        s.close()


@contextmanager
def serving(balancer_class, server):
    """(balancer, its address): one of this class, started on a loopback port in front of
    the listening socket `server`."""
    balancer = balancer_class(balancer_state(f"127.0.0.1:{server.getsockname()[1]}"),
                              socket.create_server(("127.0.0.1", 0)))
    balancer.start()
    try:
        yield balancer, balancer.listening_socket().getsockname()
    finally:
        balancer.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                  # bound, never listening: refused


def test_a_refused_server_is_blacklisted_and_the_next_one_taken(listening):
    good = listening()
    state = balancer_state(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{good.getsockname()[1]}")
    attempt = dial(state)
    kind, index, sock = attempt.outcome
    assert (kind, index) == ("connected", 1)
    assert sock.getpeername() == good.getsockname()
    sock.close()
    assert state.servers[0].failures == 1 and state.servers[0].blacklisted(time.time())
    assert state.servers[1].failures == 0


def test_a_hung_connect_times_out_after_t_and_fails_over(listening, hung):
    good = listening()
    state = balancer_state(hung, f"127.0.0.1:{good.getsockname()[1]}", timeout="0.3")
    started = time.monotonic()
    attempt = dial(state)
    took = time.monotonic() - started
    assert attempt.outcome[:2] == ("connected", 1)
    assert 0.3 <= took < 2.0
    assert state.servers[0].failures == 1
    attempt.outcome[2].close()


def test_no_server_left_says_nowhere():
    state = balancer_state(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}")
    assert dial(state).outcome == ("nowhere", None)
    assert [s.failures for s in state.servers] == [1, 1]


def test_cancel_while_connecting_ends_it_quietly(hung):
    state = balancer_state(hung, timeout="0.2")
    attempt = waiting(state)
    assert attempt.sock is not None                # waiting for the connect
    sock = attempt.sock
    attempt.cancel()
    assert sock.fileno() == -1                     # closed
    assert not attempt.ended.wait(0.5)             # past -t: no timeout, no failover
    assert state.servers[0].failures == 0


@pytest.fixture
def full_unix(listening, tmp_path):
    """A UNIX server whose backlog is full (connect(2) says EAGAIN): (its listening
    socket, its path)."""
    path = str(tmp_path / "server.sock")
    server = listening(backlog=0, family=socket.AF_UNIX, path=path)
    fillers = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        err = s.connect_ex(path)
        if err == errno.EAGAIN:
            s.close()
            break
        assert err == 0, err
        fillers.append(s)
    yield server, path
    for s in fillers:
        s.close()


def test_a_full_unix_backlog_is_waited_out(full_unix):
    server, path = full_unix
    state = balancer_state(path)

    class Counted(Recorded):
        __slots__ = ("asked",)

        def again(self):
            self.asked += 1
            super().again()
    attempt = Counted(state)
    attempt.asked = 0
    waiting(state, attempt)
    assert attempt.sock is not None and not attempt.ended.wait(0.3)   # waiting for room
    # asked again now and then (every FULL_RETRY s), not on every turn of the loop: the
    # fd of a socket not yet connected is always writable, so waiting on it would spin
    assert 5 <= attempt.asked <= 0.3 / FULL_RETRY + 5
    server.accept()[0].close()                     # room for one more
    assert attempt.ended.wait(5)
    assert attempt.outcome[:2] == ("connected", 0)
    assert state.servers[0].failures == 0
    attempt.outcome[2].close()


class CountedSocket(socket.socket):
    """Counts its connect_ex calls."""
    asked = 0

    def connect_ex(self, address):
        self.asked += 1
        return super().connect_ex(address)


def test_a_probe_to_a_full_unix_backlog_asks_now_and_then_and_times_out(full_unix):
    """A health probe's connect (sockets.connect_within) waits out a full backlog the way
    a dial does, and gives up at its timeout; it used to wait on the always-writable fd,
    spinning through the loop and never timing out."""
    server, path = full_unix
    with CountedSocket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as sock:
        with pytest.raises(socket.timeout):
            gevent.spawn(connect_within, sock, path, 0.3).get(timeout=5)
        assert 5 <= sock.asked <= 0.3 / FULL_RETRY + 5
    with CountedSocket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as sock:
        connecting = gevent.spawn(connect_within, sock, path, 5)
        wait_for(lambda: sock.asked >= 3, sleep=gevent.sleep, what="it to ask again")
        assert not connecting.ready()              # still waiting for room
        server.accept()[0].close()                 # room for one more
        connecting.get(timeout=5)
        assert sock.getpeername() == path


def test_the_loop_moves_on_while_a_dial_waits(hung):
    """Dialing blocks nothing: another greenlet runs while a connect hangs."""
    state = balancer_state(hung, timeout="0.5")
    attempt = waiting(state)
    ran = gevent.spawn(lambda: "ran")
    assert ran.get(timeout=0.2) == "ran" and not attempt.ended.is_set()
    assert attempt.ended.wait(5) and attempt.outcome == ("nowhere", None)


def test_a_connection_whose_setup_raises_is_closed_and_accepting_goes_on(listening):
    """A bug while a connection is set up (from the accept callback) costs that connection:
    it is counted out and closed, and the next client is accepted."""
    class Broken(TcpBalancer):
        def handle(self, conn, client, address):
            raise RuntimeError("a bug")

    with serving(Broken, listening()) as (balancer, address):
        state = balancer.state
        for _ in range(2):
            with gsocket.create_connection(address, timeout=5) as client:
                assert client.recv(10) == b""               # (gevent's: the loop runs)
        assert state.connections == {} and not balancer.holding
        assert state.accepted == 2


def test_a_connection_closed_before_its_server_layer_starts_stays_closed(listening):
    """ssl_backend: the server's TLS layer is set up in a greenlet that starts on the next
    turn of the loop. A `close N` (or an eviction) before then ends the connection for good:
    the greenlet does nothing, and no server count is left behind."""
    class Layered(TcpBalancer):
        layered_servers = True
        wrapped = 0

        def wrap_upstream(self, sock, server):
            Layered.wrapped += 1
            return sock

        def handle(self, conn, client, address):
            super().handle(conn, client, address)    # connected at once (loopback)
            conn.close()                             # close N, in the same loop turn

    with serving(Layered, listening()) as (balancer, address):
        state = balancer.state
        with gsocket.create_connection(address, timeout=5) as client:
            assert client.recv(10) == b""
        gevent.idle()                                # every queued greenlet has run
        assert Layered.wrapped == 0
        assert state.connections == {} and state.servers[0].conn == 0
        assert not balancer.holding
