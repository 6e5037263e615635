"""Datagrams in batches: many per system call with recvmmsg(2) and sendmmsg(2) on Linux.

The UDP balancer receives a batch from one socket and sends its datagrams on before it
receives the next, so one batch's buffers serve every socket. A datagram stays where the
kernel put it: it is sent on from its slot, and copied only when it must be kept.

Peers are named by `name`s: on Linux the raw sockaddr bytes the kernel reports (cheap to
compare and to use as a key; `unpack` turns one into Python's address tuple only for a new
peer); elsewhere, or without libc's recvmmsg, `PlainBatch` does the same job with recvfrom
and sendto and names peers by their address tuples.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys

from .portable import PORTABLE

SLOTS = 32                  # datagrams per batch
SIZE = 65535                # the largest UDP payload
_NAME = 128                 # sizeof(struct sockaddr_storage)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


# The fields read and written per datagram are reached through flat views of the arrays
# (ctypes attribute access costs more than the system call it saves): a header is _HDR
# u32s, its name length and received length at these u32 indexes; an iovec is 2 u64s.
_HDR = ctypes.sizeof(_Mmsghdr) // 4
_NAMELEN = _Msghdr.namelen.offset // 4
_LEN = _Mmsghdr.len.offset // 4


def _libc():
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None               # the views above assume a 64-bit layout
    try:
        libc = ctypes.PyDLL(None, use_errno=True)   # no GIL release: the calls never block
        libc.recvmmsg.restype = libc.sendmmsg.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
AVAILABLE = _LIBC is not None


# names: raw sockaddr bytes <-> Python's address tuples -------------------------------------

def pack(address) -> bytes:
    """The raw sockaddr of an inet address tuple, as recvmmsg reports a peer."""
    host, port = address[0].split("%", 1)[0], address[1]
    if len(address) == 2:
        return (struct.pack("=H", socket.AF_INET) + port.to_bytes(2, "big")
                + socket.inet_pton(socket.AF_INET, host) + bytes(8))
    flowinfo, scope = address[2], address[3]
    return (struct.pack("=H", socket.AF_INET6) + port.to_bytes(2, "big")
            + flowinfo.to_bytes(4, "big") + socket.inet_pton(socket.AF_INET6, host)
            + struct.pack("=I", scope))


def unpack(raw: bytes):
    """Python's address tuple for a raw sockaddr, as recvfrom would have given it."""
    family, = struct.unpack_from("=H", raw)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    scope, = struct.unpack_from("=I", raw, 24)
    return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port,
            int.from_bytes(raw[4:8], "big"), scope)


class Batch:
    """SLOTS receive buffers with room for each sender's name, and the headers that send
    any of them on to one peer."""

    name = staticmethod(pack)            # a peer's name from its address tuple
    address = staticmethod(unpack)       # and back

    def __init__(self, slots: int = SLOTS, size: int = SIZE) -> None:
        self.slots, self.size = slots, size
        self._data = (ctypes.c_char * (size * slots))()
        self._names = (ctypes.c_char * (_NAME * slots))()
        self._iov = (_Iovec * slots)()
        self._hdrs = (_Mmsghdr * slots)()
        self._out_iov = (_Iovec * slots)()
        self._out_hdrs = (_Mmsghdr * slots)()
        self._out_name = ctypes.create_string_buffer(_NAME)
        self._base = ctypes.addressof(self._data)
        names, iov = ctypes.addressof(self._names), ctypes.addressof(self._iov)
        out_iov, out_name = ctypes.addressof(self._out_iov), ctypes.addressof(self._out_name)
        isize = ctypes.sizeof(_Iovec)
        for i in range(slots):
            self._iov[i].base, self._iov[i].len = self._base + i * size, size
            hdr = self._hdrs[i].hdr
            hdr.name, hdr.namelen, hdr.iov, hdr.iovlen = names + i * _NAME, _NAME, iov + i * isize, 1
            out = self._out_hdrs[i].hdr
            out.name, out.iov, out.iovlen = out_name, out_iov + i * isize, 1
        self._view = memoryview(self._data).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._u32 = memoryview(self._hdrs).cast("B").cast("I")
        self._out_u32 = memoryview(self._out_hdrs).cast("B").cast("I")
        self._out_u64 = memoryview(self._out_iov).cast("B").cast("Q")
        self._used = slots                 # headers whose name length the kernel changed

    def receive(self, sock) -> int:
        """Take the datagrams waiting on sock: how many (0 if none). OSError on an error."""
        u32 = self._u32
        for i in range(self._used):
            u32[i * _HDR + _NAMELEN] = _NAME
        n = _LIBC.recvmmsg(sock.fileno(), self._hdrs, self.slots, socket.MSG_DONTWAIT, None)
        if n < 0:
            self._used = 0
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise OSError(code, os.strerror(code))
        self._used = n
        return n

    def sources(self, n: int) -> list:
        """The senders of the first n datagrams, by name."""
        view, u32 = self._name_view, self._u32
        return [view[i * _NAME:i * _NAME + u32[i * _HDR + _NAMELEN]].tobytes()
                for i in range(n)]

    def size_of(self, slots: list) -> int:
        """The bytes in these slots."""
        u32 = self._u32
        return sum([u32[i * _HDR + _LEN] for i in slots])

    def copy(self, i: int) -> bytes:
        start = i * self.size
        return self._view[start:start + self._u32[i * _HDR + _LEN]].tobytes()

    def send(self, sock, slots: list, start: int, peer: bytes) -> int:
        """Send datagrams slots[start:] to peer (a name) from sock: how many left (>= 1)
        before the first that could not. OSError if that was the first."""
        count, namelen = len(slots) - start, len(peer)
        ctypes.memmove(self._out_name, peer, namelen)
        u32, u64, size, base, lengths = (self._out_u32, self._out_u64, self.size,
                                         self._base, self._u32)
        for k in range(count):
            i = slots[start + k]
            u32[k * _HDR + _NAMELEN] = namelen
            u64[k * 2] = base + i * size
            u64[k * 2 + 1] = lengths[i * _HDR + _LEN]
        n = _LIBC.sendmmsg(sock.fileno(), self._out_hdrs, count, socket.MSG_DONTWAIT)
        if n < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return n


class PlainBatch:
    """The same interface with one recvfrom or sendto per datagram; peers named by tuple."""

    @staticmethod
    def name(address):
        return address

    @staticmethod
    def address(peer):
        return peer

    def __init__(self, slots: int = SLOTS, size: int = SIZE) -> None:
        self.slots, self.size = slots, size
        self._data: list = []
        self._sources: list = []

    def receive(self, sock) -> int:
        self._data, self._sources = data, sources = [], []
        for _ in range(self.slots):
            try:
                datagram, source = sock.recvfrom(self.size)
            except BlockingIOError:
                break
            except OSError:
                if data:
                    break                     # the error comes back on the next receive
                raise
            data.append(datagram)
            sources.append(source)
        return len(data)

    def sources(self, n: int) -> list:
        return self._sources[:n]

    def size_of(self, slots: list) -> int:
        return sum([len(self._data[i]) for i in slots])

    def copy(self, i: int) -> bytes:
        return self._data[i]

    def send(self, sock, slots: list, start: int, peer) -> int:
        for k, i in enumerate(slots[start:]):
            try:
                sock.sendto(self._data[i], peer)
            except OSError:
                if k:
                    return k
                raise
        return len(slots) - start


def best() -> Batch | PlainBatch:
    """The batch this platform does best (PEN_PORTABLE=1: the portable one)."""
    return Batch() if AVAILABLE and not PORTABLE else PlainBatch()
