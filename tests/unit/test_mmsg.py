"""Batches of datagrams (pen.mmsg) on real loopback sockets, both kinds: recvmmsg/sendmmsg
(Linux) and one recvfrom/sendto per datagram."""

import os
import select
import socket
import struct
import subprocess
import sys

import pytest

from pen import mmsg
from support import ROOT

LINUX_64 = sys.platform.startswith("linux") and struct.calcsize("P") == 8


@pytest.fixture(params=["mmsg", "plain"])
def batch(request):
    if request.param == "mmsg":
        if not mmsg.AVAILABLE:
            pytest.skip("recvmmsg/sendmmsg: 64-bit Linux only "
                        "(test_the_batches_load_on_64_bit_linux says if they should)")
        return mmsg.Batch()
    return mmsg.PlainBatch()


@pytest.mark.skipif(not LINUX_64, reason="recvmmsg/sendmmsg batches: 64-bit Linux only")
def test_the_batches_load_on_64_bit_linux():
    """Where batches can work, a loader that fails (libc, ctypes) is a failure, not a skip."""
    assert mmsg.AVAILABLE
    assert isinstance(mmsg.best(), mmsg.Batch)


def test_pen_portable_turns_the_linux_accelerations_off():
    probe = ("from pen import mmsg, relay; "
             "print(type(mmsg.best()).__name__, relay.SPLICE)")
    for value, expected in (("1", "PlainBatch False"),
                            ("0", "Batch True" if LINUX_64 else None)):
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT), PEN_PORTABLE=value),
                                timeout=30, check=True)
        if expected is not None:
            assert result.stdout.split() == expected.split()


def udp(host="127.0.0.1", family=socket.AF_INET):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def test_a_name_is_what_the_kernel_reports_and_turns_back_into_the_address(batch):
    for host, family in (("127.0.0.3", socket.AF_INET), ("::1", socket.AF_INET6)):
        with udp(host, family) as sender, udp(host, family) as receiver:
            sender.sendto(b"x", receiver.getsockname())
            assert batch.receive(receiver) == 1
            assert batch.address(batch.sources(1)[0]) == sender.getsockname()
            assert batch.sources(1)[0] == batch.name(sender.getsockname())


def test_receive_takes_what_waits_up_to_a_batch_with_lengths_and_bytes_intact(batch):
    with udp() as sender, udp() as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert batch.receive(receiver) == 0
        big = os.urandom(65507)
        payloads = [b"", big] + [b"%d" % n for n in range(batch.slots + 5)]
        for data in payloads:
            sender.sendto(data, receiver.getsockname())
        first = batch.receive(receiver)
        assert first == batch.slots
        assert [batch.copy(i) for i in range(first)] == payloads[:first]
        assert [batch.size_of([0]), batch.size_of([1]), batch.size_of([0, 1])] == [0, 65507, 65507]
        assert batch.receive(receiver) == len(payloads) - first
        assert [batch.copy(i) for i in range(len(payloads) - first)] == payloads[first:]
        assert batch.receive(receiver) == 0


def test_send_passes_chosen_slots_on_in_order_to_one_peer(batch):
    with udp() as sender, udp() as relay, udp() as peer:
        for n in range(6):
            sender.sendto(b"d%d" % n, relay.getsockname())
        assert batch.receive(relay) == 6
        assert batch.send(relay, [0, 2, 3, 5], 1, batch.name(peer.getsockname())) == 3
        got = [peer.recvfrom(100) for _ in range(3)]
        assert [data for data, _ in got] == [b"d2", b"d3", b"d5"]
        assert {source for _, source in got} == {relay.getsockname()}
        with pytest.raises(BlockingIOError):
            peer.recvfrom(100)


def refused(sock, address):
    """Send from sock (with IP_RECVERR) to a closed port; return once the ICMP error is
    waiting on sock."""
    sock.setsockopt(socket.IPPROTO_IP, 11, 1)           # IP_RECVERR: Linux's number
    sock.sendto(b"x", address)
    poller = select.poll()
    poller.register(sock, select.POLLERR)
    assert poller.poll(2000), "no ICMP error within 2 s"


def closed_port():
    with udp() as gone:
        return gone.getsockname()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR: Linux")
def test_a_refusal_is_reported_as_connection_refused_by_receive(batch):
    """The balancer fails over on it."""
    with udp() as sock:
        refused(sock, closed_port())
        with pytest.raises(ConnectionRefusedError):
            batch.receive(sock)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR: Linux")
def test_a_refusal_is_reported_as_connection_refused_by_send(batch):
    with udp() as sock, udp() as sender:
        sender.sendto(b"y", sock.getsockname())
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        assert poller.poll(2000) and batch.receive(sock) == 1
        address = closed_port()
        refused(sock, address)
        with pytest.raises(ConnectionRefusedError):
            batch.send(sock, [0], 0, batch.name(address))
