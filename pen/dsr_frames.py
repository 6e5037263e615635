"""Ethernet frames for direct server return: parse, rewrite and build (pure, no sockets).

pen in DSR mode is a tiny layer-2 switch: it answers ARP for the virtual IP, learns the
servers' MAC addresses by ARP, and passes each IPv4 frame for the VIP on to a server by
rewriting only the MAC addresses. The servers hold the VIP on loopback and answer the
client directly. Addresses are kept as raw bytes (4 for IPv4, 6 for MAC) throughout.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ETH_HEADER = 14
ARP_REQUEST, ARP_REPLY = 1, 2
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

_ARP = struct.Struct("!HHBBH6s4s6s4s")     # htype ptype hlen plen op sha spa tha tpa


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ethertype(frame: bytes) -> int:
    return int.from_bytes(frame[12:14], "big") if len(frame) >= ETH_HEADER else -1


def ethernet(dst: bytes, src: bytes, ether_type: int, payload: bytes) -> bytes:
    frame = dst + src + ether_type.to_bytes(2, "big") + payload
    return frame + b"\0" * (60 - len(frame))          # pad to Ethernet's minimum


# --- ARP ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arp:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(frame: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP packet, or None for anything else (or truncated)."""
    if ethertype(frame) != ETH_P_ARP or len(frame) < ETH_HEADER + _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, ETH_HEADER)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return Arp(op, sha, spa, tha, tpa)


def arp_frame(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes,
              target_ip: bytes, dst: bytes | None = None) -> bytes:
    payload = _ARP.pack(1, ETH_P_IP, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)
    return ethernet(dst or target_mac, sender_mac, ETH_P_ARP, payload)


def arp_request(our_mac: bytes, our_ip: bytes, target_ip: bytes) -> bytes:
    """Who has target_ip? (broadcast)"""
    return arp_frame(ARP_REQUEST, our_mac, our_ip, b"\0" * 6, target_ip, dst=BROADCAST)


def arp_reply(request: Arp, our_mac: bytes) -> bytes:
    """request.target_ip is at our_mac, told to whoever asked."""
    return arp_frame(ARP_REPLY, our_mac, request.target_ip, request.sender_mac,
                     request.sender_ip)


# --- IPv4 --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """What DSR needs to know about an IPv4 frame."""

    src: bytes
    dst: bytes
    proto: int
    header_len: int            # IPv4 header length
    total_len: int
    sport: int | None          # None: not TCP/UDP, or a non-first fragment
    dport: int | None
    tcp_flags: int
    fragmented: bool           # part of a fragmented datagram (first or later)


def parse_ipv4(frame: bytes) -> Packet | None:
    if ethertype(frame) != ETH_P_IP or len(frame) < ETH_HEADER + 20:
        return None
    version_ihl = frame[ETH_HEADER]
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or len(frame) < ETH_HEADER + ihl:
        return None
    total = int.from_bytes(frame[ETH_HEADER + 2:ETH_HEADER + 4], "big")
    if total < ihl or ETH_HEADER + total > len(frame):
        return None
    frag = int.from_bytes(frame[ETH_HEADER + 6:ETH_HEADER + 8], "big")
    more, offset = bool(frag & 0x2000), frag & 0x1FFF
    proto = frame[ETH_HEADER + 9]
    src, dst = frame[ETH_HEADER + 12:ETH_HEADER + 16], frame[ETH_HEADER + 16:ETH_HEADER + 20]
    l4 = ETH_HEADER + ihl
    sport = dport = None
    flags = 0
    if offset == 0 and proto in (IPPROTO_TCP, IPPROTO_UDP) and total - ihl >= 8:
        sport = int.from_bytes(frame[l4:l4 + 2], "big")
        dport = int.from_bytes(frame[l4 + 2:l4 + 4], "big")
        if proto == IPPROTO_TCP and total - ihl >= 20:
            flags = frame[l4 + 13]
    return Packet(src, dst, proto, ihl, total, sport, dport, flags, more or offset > 0)


def is_syn(packet: Packet) -> bool:
    return packet.proto == IPPROTO_TCP and packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN


def flow_hash(packet: Packet, with_port: bool, slots: int = 256) -> int:
    """The slot of a packet's flow: source address, plus source port with `-r`.

    All fragments of a datagram hash on the address alone: later fragments carry no ports.
    """
    key = packet.src
    if with_port and packet.sport is not None and not packet.fragmented:
        key += packet.sport.to_bytes(2, "big")
    return zlib.crc32(key) % slots


def readdress(frame: bytes, dst_mac: bytes, src_mac: bytes) -> bytes:
    """The same frame, sent on from src_mac to dst_mac: the payload is untouched."""
    return dst_mac + src_mac + frame[12:]


# --- checksums ---------------------------------------------------------------------------

def checksum(data: bytes, start: int = 0) -> int:
    """The Internet checksum (RFC 1071) of data, continuing from a partial sum."""
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return sum(struct.unpack("!4H", src + dst)) + proto + length


def complete_checksum(frame: bytes) -> bytes:
    """Finish the TCP/UDP checksum of a frame read before the NIC would have done it.

    A local sender with checksum offload hands the kernel a frame whose L4 checksum is only
    the pseudo-header's; a raw socket sees it that way (TP_STATUS_CSUMNOTREADY). Sent on
    as is, the server would drop it. Frames this cannot fix are returned unchanged.
    """
    packet = parse_ipv4(frame)
    if packet is None or packet.fragmented or packet.proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return frame
    l4 = ETH_HEADER + packet.header_len
    end = ETH_HEADER + packet.total_len
    field = l4 + (16 if packet.proto == IPPROTO_TCP else 6)
    if field + 2 > end:
        return frame
    segment = bytearray(frame[l4:end])
    segment[field - l4:field - l4 + 2] = b"\0\0"
    value = checksum(bytes(segment), _pseudo_sum(packet.src, packet.dst, packet.proto,
                                                 len(segment)))
    if packet.proto == IPPROTO_UDP and value == 0:
        value = 0xFFFF
    return frame[:field] + value.to_bytes(2, "big") + frame[field + 2:]


# --- the tarpit --------------------------------------------------------------------------

def tarpit_reply(frame: bytes, our_mac: bytes, secret: int = 0) -> bytes | None:
    """A SYN+ACK answering a TCP SYN, from the address it was sent to; None if not a SYN.

    The window is zero and nothing ever follows: a scanner sees an open port and waits.
    """
    packet = parse_ipv4(frame)
    if packet is None or not is_syn(packet) or packet.fragmented:
        return None
    l4 = ETH_HEADER + packet.header_len
    their_seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    our_seq = zlib.crc32(packet.src + packet.dst + frame[l4:l4 + 4], secret) & 0xFFFFFFFF
    tcp = bytearray(struct.pack("!HHIIBBHHH", packet.dport, packet.sport, our_seq,
                                (their_seq + 1) & 0xFFFFFFFF, 5 << 4, TCP_SYN | TCP_ACK,
                                0, 0, 0))
    tcp[16:18] = checksum(bytes(tcp), _pseudo_sum(packet.dst, packet.src, IPPROTO_TCP,
                                                  len(tcp))).to_bytes(2, "big")
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64,
                               IPPROTO_TCP, 0, packet.dst, packet.src))
    ip[10:12] = checksum(bytes(ip)).to_bytes(2, "big")
    return ethernet(frame[6:12], our_mac, ETH_P_IP, bytes(ip + tcp))
