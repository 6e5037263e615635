"""A bad VRRP neighbour: junk protocol-112 packets at the pen boxes (the HA lab's bad input).

    python3 -m pen_lab.vrrp_junk --to ADDR [--to ADDR] [--vrid N] [--rounds 20]

Each round sends every target: random bytes, a truncated advert, an advert of an unknown
version, one with a wrong checksum, and a well-formed VRRPv3 advert claiming priority 254
for the pair's router id from this (non-peer) address, which keepalived must not obey.
Bounded: ROUNDS x 5 packets per target, 20 rounds a second. Needs CAP_NET_RAW.
"""

import argparse
import os
import socket
import struct
import sys
import time

VRRP = 112


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def advert(source, target, vrid, priority, addresses, version=3, good_sum=True):
    """A VRRPv3 advertisement (RFC 5798): checksummed over an IPv4 pseudo-header."""
    body = struct.pack("!BBBBHH", version << 4 | 1, vrid, priority, len(addresses), 20, 0)
    body += b"".join(socket.inet_aton(a) for a in addresses)
    pseudo = socket.inet_aton(source) + socket.inet_aton(target) + struct.pack(
        "!BBH", 0, VRRP, len(body))
    total = checksum(pseudo + body)
    if not good_sum:
        total ^= 0x5A5A
    packet = body
    return packet[:6] + struct.pack("!H", total) + packet[8:]


def junk(source, target, vrid, vip):
    forged = advert(source, target, vrid, 254, [vip])
    return [os.urandom(40), forged[:5], advert(source, target, vrid, 254, [vip], version=7),
            advert(source, target, vrid, 254, [vip], good_sum=False), forged]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pen_lab.vrrp_junk")
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--vrid", type=int, default=89)
    parser.add_argument("--vip", default="10.89.1.100")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    sent = 0
    for _ in range(min(args.rounds, 200)):
        for target in args.to:
            sock.connect((target, 0))
            source = sock.getsockname()[0]
            for packet in junk(source, target, args.vrid, args.vip):
                sock.send(packet)
                sent += 1
        time.sleep(0.05)
    print(f"sent {sent} junk VRRP packets to {', '.join(args.to)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
