"""Steering a worker group's clients: the same client address always reaches the same
worker, so that worker's client table knows it (exact tracking without shared tables).

Each worker has its own listening socket in one SO_REUSEPORT group; a classic BPF program
attached to the group (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+) returns the index of the
socket to use: a hash of the packet's source address (IPv4, or the four words of IPv6
xored), TCP and UDP alike. An IPv4 client on an IPv6 socket hashes as IPv4. The kernel
numbers the sockets in the order they joined the group; the parent keeps all of them open,
so a worker that dies and comes back keeps its index.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct

from .portable import PORTABLE

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_NET_OFF = -0x100000          # loads relative to the network header
GOLDEN = 0x9E3779B1              # Fibonacci hashing: neighbouring addresses spread out

# classic BPF opcodes
LD_B_ABS, LD_W_ABS = 0x30, 0x20
RSH_K, MUL_K, MOD_K, XOR_X = 0x74, 0x24, 0x94, 0xAC
JEQ_K, JA, TAX, RET_A = 0x15, 0x05, 0x07, 0x16


class SteeringError(OSError):
    pass


def program(workers: int) -> list[tuple[int, int, int, int]]:
    """The filter: (code, jt, jf, k) instructions returning the worker's index."""
    def ld(offset, code=LD_W_ABS):
        return (code, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF)
    ipv6 = [ld(8), (TAX, 0, 0, 0)]                   # the source's four words, xored
    for offset in (12, 16, 20):
        ipv6 += [ld(offset), (XOR_X, 0, 0, 0), (TAX, 0, 0, 0)]
    ipv6[-1:] = []                                   # (the last xor's result stays in A)
    ipv4 = [ld(12), (JA, 0, 0, len(ipv6))]           # the source address; past IPv6's
    return [ld(0, LD_B_ABS), (RSH_K, 0, 0, 4),      # the IP version
            (JEQ_K, len(ipv4), 0, 6), *ipv4, *ipv6,
            (MUL_K, 0, 0, GOLDEN), (RSH_K, 0, 0, 16), (MOD_K, 0, 0, workers),
            (RET_A, 0, 0, 0)]


def worker_for(address: str, workers: int) -> int:
    """The index the program returns for a client address (tests and tools)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        word = int(ip)
    else:
        a, b, c, d = struct.unpack("!4I", ip.packed)
        word = a ^ b ^ c ^ d
    return (((word * GOLDEN) & 0xFFFFFFFF) >> 16) % workers


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Filter))]


def attach(sock: socket.socket, workers: int) -> None:
    """Attach the program to sock's SO_REUSEPORT group; SteeringError if the kernel
    cannot (not Linux, or older than 4.5; or PEN_PORTABLE, which acts as such a system)."""
    if PORTABLE:
        raise SteeringError(errno.ENOPROTOOPT, "not with PEN_PORTABLE (as on *BSD)")
    code = program(workers)
    filters = (_Filter * len(code))(*[_Filter(*i) for i in code])
    fprog = _Program(len(code), ctypes.cast(filters, ctypes.POINTER(_Filter)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        bytes(memoryview(fprog).cast("B")))
    except OSError as e:
        raise SteeringError(e.errno, f"SO_ATTACH_REUSEPORT_CBPF: {e.strerror}") from None
