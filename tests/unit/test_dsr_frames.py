"""DSR frame parsing, rewriting and building, on frames captured from veths (tcpdump -xx)."""

import pytest

from pen import dsr_frames as f

CLIENT_MAC = bytes.fromhex("ea3e3fe333a4")
SERVER_MAC = bytes.fromhex("da1926e478f5")
PEN_MAC = bytes.fromhex("020000000001")
CLIENT_IP, SERVER_IP = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])

ARP_WHO_HAS = bytes.fromhex(
    "ffffffffffff ea3e3fe333a4 0806 0001 0800 0604 0001 ea3e3fe333a4 0a090001"
    "000000000000 0a090002")
ARP_IS_AT = bytes.fromhex(
    "ea3e3fe333a4 da1926e478f5 0806 0001 0800 0604 0002 da1926e478f5 0a090002"
    "ea3e3fe333a4 0a090001")
# 10.9.0.1:50914 > 10.9.0.2:80 SYN, with options, correct checksum (tx offload off)
SYN = bytes.fromhex(
    "da1926e478f5 ea3e3fe333a4 0800 4500 003c 97b9 4000 4006 8eee 0a090001 0a090002"
    "c6e2 0050 07bc0827 00000000 a002 faf0 575b 0000 020405b4 0402080a 4ec6bbc0 00000000"
    "0103030a")


def test_arp_request_and_reply_are_parsed():
    who = f.parse_arp(ARP_WHO_HAS)
    assert who == f.Arp(f.ARP_REQUEST, CLIENT_MAC, CLIENT_IP, b"\0" * 6, SERVER_IP)
    at = f.parse_arp(ARP_IS_AT)
    assert (at.op, at.sender_mac, at.sender_ip) == (f.ARP_REPLY, SERVER_MAC, SERVER_IP)


def test_our_arp_frames_match_what_the_kernel_sends():
    assert f.arp_request(CLIENT_MAC, CLIENT_IP, SERVER_IP)[:42] == ARP_WHO_HAS
    reply = f.arp_reply(f.parse_arp(ARP_WHO_HAS), SERVER_MAC)
    assert reply[:42] == ARP_IS_AT and len(reply) == 60          # padded to the minimum


@pytest.mark.parametrize("frame", [b"", ARP_WHO_HAS[:30], SYN, ARP_WHO_HAS[:14] + b"\0\x02"
                                   + ARP_WHO_HAS[16:],   # hardware type 2
                                   ARP_WHO_HAS[:21] + b"\x07" + ARP_WHO_HAS[22:]])  # op 7
def test_anything_but_a_whole_ethernet_ipv4_arp_is_not_arp(frame):
    assert f.parse_arp(frame) is None


def test_syn_is_parsed():
    p = f.parse_ipv4(SYN)
    assert (p.src, p.dst, p.proto, p.sport, p.dport) == (CLIENT_IP, SERVER_IP, 6, 50914, 80)
    assert f.is_syn(p) and not p.fragmented and p.header_len == 20 and p.total_len == 60


@pytest.mark.parametrize("frame", [
    SYN[:30],                                       # truncated header
    SYN[:14] + b"\x65" + SYN[15:],                  # version 6 in an IPv4 ethertype
    SYN[:14] + b"\x44" + SYN[15:],                  # header length 16
    SYN[:16] + b"\x05\xdc" + SYN[18:],              # total length beyond the frame
    ARP_WHO_HAS,
])
def test_bad_or_foreign_frames_are_not_ipv4(frame):
    assert f.parse_ipv4(frame) is None


def test_later_fragments_carry_no_ports_and_hash_on_the_address_alone():
    later = SYN[:20] + b"\x00\x10" + SYN[22:]       # fragment offset 16*8
    p = f.parse_ipv4(later)
    assert p.fragmented and p.sport is None and p.tcp_flags == 0
    first = f.parse_ipv4(SYN[:20] + b"\x20\x00" + SYN[22:])   # MF set, offset 0
    assert first.fragmented and first.sport == 50914
    assert f.flow_hash(p, with_port=True) == f.flow_hash(first, with_port=True) \
        == f.flow_hash(p, with_port=False)


def test_flow_hash_uses_the_port_only_with_roundrobin():
    p = f.parse_ipv4(SYN)
    other_port = f.parse_ipv4(SYN[:34] + b"\x12\x34" + SYN[36:])
    assert f.flow_hash(p, False) == f.flow_hash(other_port, False)
    spread = {f.flow_hash(f.parse_ipv4(SYN[:34] + n.to_bytes(2, "big") + SYN[36:]), True)
              for n in range(1000, 1400)}
    assert len(spread) > 150                       # ports spread over the 256 slots
    assert all(0 <= s < 256 for s in spread)


def test_readdress_changes_only_the_macs():
    out = f.readdress(SYN, SERVER_MAC, PEN_MAC)
    assert out[:12] == SERVER_MAC + PEN_MAC and out[12:] == SYN[12:]


def test_checksum_of_a_captured_header_verifies():
    assert f.checksum(SYN[14:34]) == 0


def test_complete_checksum_fills_in_an_offloaded_tcp_checksum():
    partial = SYN[:50] + b"\x12\x34" + SYN[52:]     # what a sender with tx offload leaves
    assert f.complete_checksum(partial) == SYN
    assert f.complete_checksum(SYN) == SYN


def test_complete_checksum_for_udp_and_leaves_other_frames_alone():
    payload = b"hello dns"
    udp = (40000).to_bytes(2, "big") + (53).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    ip = bytearray(bytes.fromhex("4500") + (20 + len(udp)).to_bytes(2, "big")
                   + bytes.fromhex("0000 4000 4011 0000") + CLIENT_IP + SERVER_IP)
    ip[10:12] = f.checksum(bytes(ip)).to_bytes(2, "big")
    frame = SERVER_MAC + CLIENT_MAC + b"\x08\x00" + bytes(ip) + udp
    done = f.complete_checksum(frame)
    pseudo = CLIENT_IP + SERVER_IP + b"\0\x11" + len(udp).to_bytes(2, "big")
    assert f.checksum(pseudo + done[34:]) == 0
    assert f.complete_checksum(ARP_WHO_HAS) == ARP_WHO_HAS


def test_tarpit_answers_a_syn_with_a_valid_syn_ack_and_nothing_else():
    reply = f.tarpit_reply(SYN, PEN_MAC)
    assert reply[:12] == CLIENT_MAC + PEN_MAC
    p = f.parse_ipv4(reply)
    assert (p.src, p.dst, p.sport, p.dport) == (SERVER_IP, CLIENT_IP, 80, 50914)
    assert p.tcp_flags == f.TCP_SYN | f.TCP_ACK
    assert int.from_bytes(reply[42:46], "big") == 0x07BC0827 + 1     # acks their sequence
    assert int.from_bytes(reply[48:50], "big") == 0                  # window 0
    assert f.checksum(reply[14:34]) == 0
    pseudo = SERVER_IP + CLIENT_IP + b"\0\x06" + (20).to_bytes(2, "big")
    assert f.checksum(pseudo + reply[34:54]) == 0
    ack = SYN[:47] + bytes([f.TCP_ACK]) + SYN[48:]
    assert f.tarpit_reply(ack, PEN_MAC) is None
    assert f.tarpit_reply(ARP_WHO_HAS, PEN_MAC) is None
