"""Direct server return on gevent: raw frames in on `dsr_if`, the same frames out to a server.

pen accepts no connection in this mode. It answers ARP for the virtual IP (the listen
address), learns each server's MAC by ARP, picks a server for each frame from the slot
table (dsr_slots) by a hash of the source (dsr_frames), rewrites the MACs and sends the
frame on; the server, holding the VIP on loopback, answers the client directly. A server is
in the table while it answers ARP and is not blacklisted; the table is rebuilt, moving as
few flows as possible, when that changes or weights change. Linux only (AF_PACKET).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import time

import gevent
from gevent import socket as gsocket

from . import dsr_frames as frames
from .addr import AddressError, resolve
from .dsr_slots import SLOTS, rebalance
from .errors import CommandError, UsageError
from .state import Server, State

log = logging.getLogger("pen")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 1 << 3
SIOCGIFADDR = 0x8915

ARP_INTERVAL = 2.0          # how often servers are asked for their MAC
ARP_RETRY = 0.5             # ... while some have not answered yet
ARP_STALE = 3 * ARP_INTERVAL + 1.0   # a server silent this long leaves the table
TICK = 0.2                  # how often weights, blacklists and MACs are looked at
MAX_FRAME = 65536

MISSING_CAPABILITY = "dsr_if: needs CAP_NET_RAW (run as root or grant the capability)"


def open_socket(state: State):
    """The raw socket on dsr_if (opened before privileges are dropped). UsageError if the
    mode cannot work here; the message names what is missing."""
    ifname = state.dsr_if
    vip = virtual_ip(state)
    if not hasattr(socket, "AF_PACKET"):
        raise UsageError("dsr_if: direct server return needs Linux (AF_PACKET raw frames)")
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise UsageError(MISSING_CAPABILITY) from None
    try:
        sock.bind((ifname, ETH_P_ALL))
    except OSError as e:
        sock.close()
        why = "no such interface" if e.errno in (errno.ENODEV, errno.ENXIO) else e.strerror
        raise UsageError(f"dsr_if {ifname}: {why}") from None
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass                                  # kernels before 4.20: filtered by pkttype below
    sock.setblocking(False)
    for server in state.servers:
        if server.endpoint is not None and server_ip(server) is None:
            log.warning("dsr: server %d (%s) is not an IPv4 address; it gets no traffic",
                        server.index, server.endpoint)
    _warn_if_forwarding()
    log.debug("dsr: VIP %s on %s", ipaddress.IPv4Address(vip), ifname)
    return sock


def virtual_ip(state: State) -> bytes:
    listen = state.listen
    if listen is None or listen.is_unix or not listen.host:
        raise UsageError("dsr_if: the listen address must be the virtual IP, e.g. 10.0.0.100:80")
    try:
        resolve(listen, socket.SOCK_STREAM)
    except AddressError as e:
        raise UsageError(f"dsr_if: {e}") from None
    if listen.family != socket.AF_INET:
        raise UsageError(f"dsr_if: the virtual IP must be IPv4, got {listen.host}")
    return socket.inet_aton(listen.sockaddr[0])


def server_ip(server: Server) -> bytes | None:
    endpoint = server.endpoint
    if endpoint is None or endpoint.is_unix:
        return None
    try:
        if not endpoint.sockaddr:
            resolve(endpoint, socket.SOCK_STREAM)
    except AddressError:
        return None
    return socket.inet_aton(endpoint.sockaddr[0]) if endpoint.family == socket.AF_INET else None


def interface_ip(ifname: str) -> bytes:
    """The interface's own IPv4 address (the sender of our ARP requests), or 0.0.0.0."""
    import fcntl
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR,
                                 struct.pack("256s", ifname.encode()[:15]))
        return packed[20:24]
    except OSError:
        return b"\0\0\0\0"


def _warn_if_forwarding() -> None:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            if f.read().strip() == "1":
                log.warning("dsr: net.ipv4.ip_forward is 1: the kernel may forward frames "
                            "for the VIP as well; set it to 0 on the pen host")
    except OSError:
        pass


class Forwarder:
    """A Balancer (balancer.py) for dsr_if: the frame pump. Nothing is accepted or
    connected, so connect hooks and the -l log have nothing to act on."""

    def __init__(self, state: State, sock, conn_log=None) -> None:
        self.state = state
        self.ifname = state.dsr_if
        self.sock = sock if isinstance(sock, gsocket.socket) else gsocket.socket(
            fileno=sock.detach())
        self.mac = self.sock.getsockname()[4]
        self.our_ip = interface_ip(self.ifname)
        self.vip = virtual_ip(state)
        self.port = state.listen.port
        self.connect_hooks: list = []     # nothing connects in DSR mode
        self.table: list[int | None] = [None] * SLOTS
        self.weights: dict[int, int] = {}
        self.arp_seen: dict[bytes, tuple[bytes, float]] = {}   # server IP -> (MAC, when)
        self.loops: list = []

    # the table ---------------------------------------------------------------------

    def live_weights(self, now_wall: float, now: float) -> dict[int, int]:
        weights = {}
        for server in self.state.servers:
            ip = server_ip(server)
            seen = self.arp_seen.get(ip) if ip else None
            if seen is None or now - seen[1] > ARP_STALE or server.blacklisted(now_wall):
                continue
            weights[server.index] = server.weight if server.weight > 0 else 1
        return weights

    def refresh(self) -> None:
        weights = self.live_weights(time.time(), time.monotonic())
        if weights != self.weights:
            old, self.table = self.table, rebalance(self.table, weights)
            changed = sum(a != b for a, b in zip(old, self.table, strict=True))
            log.info("dsr: servers %s in the table (weights %s); %d of %d slots moved",
                     sorted(weights) or "none", weights, changed, SLOTS)
            self.weights = weights

    def pick(self, packet: frames.Packet) -> tuple[Server, bytes] | None:
        slot = frames.flow_hash(packet, self.state.roundrobin)
        for _ in range(2):
            index = self.table[slot]
            if index is None or index >= len(self.state.servers):
                return None
            server = self.state.servers[index]
            seen = self.arp_seen.get(server_ip(server) or b"")
            if seen is not None and not server.blacklisted(time.time()):
                return server, seen[0]
            self.refresh()                   # blacklisted since the last tick: rebuild now
        return None

    # frames ------------------------------------------------------------------------

    def handle(self, frame: bytes, csum_not_ready: bool) -> None:
        kind = frames.ethertype(frame)
        if kind == frames.ETH_P_ARP:
            arp = frames.parse_arp(frame)
            if arp is None:
                self.state.count("dsr_bad_frames")
            else:
                self.on_arp(arp)
        elif kind == frames.ETH_P_IP and frame[:6] == self.mac:
            packet = frames.parse_ipv4(frame)
            if packet is None:
                self.state.count("dsr_bad_frames")
            elif packet.dst == self.vip:
                self.forward(frame, packet, csum_not_ready)
            elif self.tarpitted(packet.dst):
                reply = frames.tarpit_reply(frame, self.mac)
                if reply is not None:
                    self.state.count("dsr_tarpitted")
                    self.send(reply)

    def forward(self, frame: bytes, packet: frames.Packet, csum_not_ready: bool) -> None:
        wanted = frames.IPPROTO_UDP if self.state.udp else frames.IPPROTO_TCP
        if packet.proto != wanted or (packet.dport is not None and packet.dport != self.port):
            self.state.count("dsr_ignored")
            return
        found = self.pick(packet)
        if found is None:
            self.state.count("dsr_no_server")
            return
        server, mac = found
        if csum_not_ready:
            frame = frames.complete_checksum(frame)
        if self.send(frames.readdress(frame, mac, self.mac)):
            server.sx += len(frame)
            if frames.is_syn(packet) or packet.proto == frames.IPPROTO_UDP:
                server.total += 1

    def on_arp(self, arp: frames.Arp) -> None:
        if arp.sender_ip in self.server_ips():
            self.arp_seen[arp.sender_ip] = (arp.sender_mac, time.monotonic())
        if (arp.op == frames.ARP_REQUEST and arp.sender_ip != arp.target_ip
                and arp.sender_mac != self.mac
                and (arp.target_ip == self.vip or self.tarpitted(arp.target_ip))):
            self.send(frames.arp_reply(arp, self.mac))

    def tarpitted(self, ip: bytes) -> bool:
        n = self.state.tarpit_acl
        if n < 0 or ip == self.our_ip or ip in self.server_ips():
            return False
        return self.state.acls.matches(n, ipaddress.IPv4Address(ip))

    def server_ips(self) -> set[bytes]:
        return {ip for ip in map(server_ip, self.state.servers) if ip}

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
            return True
        except OSError as e:
            self.state.count("dsr_send_errors")
            if e.errno == errno.EMSGSIZE:
                log.debug("dsr: a %d-byte frame is too big for %s (offloaded segment? "
                          "try `ethtool -K IF tx off` on the sender)", len(frame), self.ifname)
            else:
                log.debug("dsr: send: %s", e)
            return False

    # loops -------------------------------------------------------------------------

    def receive(self) -> None:
        while True:
            try:
                frame, ancillary, _, address = self.sock.recvmsg(MAX_FRAME, 64)
            except OSError as e:
                if e.errno == errno.EBADF:
                    return
                self.state.count("dsr_receive_errors")
                log.debug("dsr: receive: %s", e)
                gevent.sleep(0.01)
                continue
            if address[2] == PACKET_OUTGOING:
                continue
            try:
                self.handle(frame, _checksum_not_ready(ancillary))
            except (ValueError, IndexError, struct.error) as e:
                self.state.count("dsr_bad_frames")
                log.debug("dsr: bad frame: %s", e)

    def maintain(self) -> None:
        """Ask the servers for their MACs (often until all answered) and keep the table."""
        next_arp = 0.0
        while True:
            now = time.monotonic()
            if now >= next_arp:
                ips = self.server_ips()
                for ip in ips:
                    self.send(frames.arp_request(self.mac, self.our_ip, ip))
                missing = any(ip not in self.arp_seen for ip in ips)
                next_arp = now + (ARP_RETRY if missing else ARP_INTERVAL)
            self.refresh()
            gevent.sleep(TICK)

    def start(self) -> None:
        self.loops = [gevent.spawn(self.receive), gevent.spawn(self.maintain)]
        log.info("dsr: forwarding %s:%d on %s (MAC %s)", ipaddress.IPv4Address(self.vip),
                 self.port, self.ifname, frames.mac_text(self.mac))

    def relisten(self, endpoint) -> None:
        raise CommandError("listen: in DSR mode the virtual IP is fixed at start")

    def listening_socket(self):
        return self.sock

    def shed(self, count: int) -> None:
        pass                    # DSR holds no connections (and never runs in a group)

    def close(self, drain: bool = False) -> None:
        for loop in self.loops:
            loop.kill(block=False)
        self.sock.close()


def _checksum_not_ready(ancillary) -> bool:
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 4:
            return bool(struct.unpack_from("I", data)[0] & TP_STATUS_CSUMNOTREADY)
    return False
