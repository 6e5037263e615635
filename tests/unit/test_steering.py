"""The steering program, run by a small classic-BPF interpreter on IPv4 and IPv6 headers:
it picks the worker that steering.worker_for names, and always one of the N."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from pen import steering


def run(program, packet: bytes) -> int:
    """Classic BPF, the instructions steering uses; loads relative to SKF_NET_OFF."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code in (steering.LD_B_ABS, steering.LD_W_ABS):
            offset = (k - (steering.SKF_NET_OFF & 0xFFFFFFFF)) & 0xFFFFFFFF
            size = 1 if code == steering.LD_B_ABS else 4
            a = int.from_bytes(packet[offset:offset + size], "big")
        elif code == steering.RSH_K:
            a = (a >> k) & 0xFFFFFFFF
        elif code == steering.MUL_K:
            a = (a * k) & 0xFFFFFFFF
        elif code == steering.MOD_K:
            a = a % k
        elif code == steering.XOR_X:
            a ^= x
        elif code == steering.TAX:
            x = a
        elif code == steering.JA:
            pc += k
        elif code == steering.JEQ_K:
            pc += jt if a == k else jf
        elif code == steering.RET_A:
            return a
        else:
            raise AssertionError(f"unknown opcode {code:#x}")


def ipv4_header(source: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                       ipaddress.IPv4Address(source).packed, bytes([127, 0, 0, 1]))


def ipv6_header(source: str) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64,
                       ipaddress.IPv6Address(source).packed, ipaddress.IPv6Address("::1").packed)


@given(st.ip_addresses(v=4), st.integers(1, 256))
def test_ipv4_sources_pick_the_worker_worker_for_names(ip, workers):
    got = run(steering.program(workers), ipv4_header(str(ip)))
    assert got == steering.worker_for(str(ip), workers) and 0 <= got < workers


# (a v4-mapped address never heads an IPv6 packet: such a client's packets are IPv4)
@given(st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None), st.integers(1, 256))
def test_ipv6_sources_pick_the_worker_worker_for_names(ip, workers):
    got = run(steering.program(workers), ipv6_header(str(ip)))
    assert got == steering.worker_for(str(ip), workers) and 0 <= got < workers


def test_an_ipv4_client_on_an_ipv6_socket_hashes_as_ipv4():
    assert steering.worker_for("::ffff:10.1.2.3", 7) == steering.worker_for("10.1.2.3", 7)


def test_neighbouring_addresses_spread_over_the_workers():
    counts = [0] * 4
    for n in range(1000):
        counts[steering.worker_for(f"10.0.{n // 256}.{n % 256}", 4)] += 1
    assert min(counts) > 200, counts
