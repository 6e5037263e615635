"""Direct server return end to end on one L2 segment (a bridge inside its own namespace).

    client ns (16 addresses) ─┐
    pen ns (10.78.0.2, runs pen -O "dsr_if ...")  ├── bridge ns: br
    server ns s1, s2, s3 (10.78.0.101-103, VIP 10.78.0.100 on lo) ─┘

pen answers ARP for the VIP and passes each client frame to a server; the servers answer
the client directly (their replies carry the server's MAC, never pen's).
"""

import re
import sys

import pytest
from netns_lab import dns_server, wait_for

pytestmark = pytest.mark.root

VIP = "10.78.0.100"
PEN_IP = "10.78.0.2"
SERVERS = {"s1": "10.78.0.101", "s2": "10.78.0.102", "s3": "10.78.0.103"}
CLIENTS = [f"10.78.0.{n}" for n in range(10, 26)]
TARPIT = "10.78.0.200"


def mac_of(lab, ns, ifname):
    out = lab.run(ns, "cat", f"/sys/class/net/{lab.ifname(ifname)}/address")
    return out.strip()


@pytest.fixture
def segment(lab):
    bridge_ns, members = lab.segment(["c", "p", *SERVERS], tx_off=True)
    lab.addr(members["c"], "c0", *[f"{ip}/24" for ip in CLIENTS])
    lab.addr(members["p"], "p0", f"{PEN_IP}/24")
    for name, ip in SERVERS.items():
        ns = members[name]
        lab.addr(ns, f"{name}0", f"{ip}/24")
        lab.run(ns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        lab.run(ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2")
        lab.peer_server(ns, name, "0.0.0.0", 80)
    return lab, members, bridge_ns


def start_pen(lab, members, *options):
    """pen hashing on the client address alone (no -r), so a client keeps its server."""
    proc = lab.pen(members["p"], "-d", "-O", f"dsr_if {lab.ifname('p0')}", *options,
                   f"{VIP}:80", *SERVERS.values(), port=0)
    wait_for(lambda: proc.poll() is not None or "servers [0, 1, 2] in the table"
               in lab.output(proc), what="pen to learn the three servers' MACs")
    assert proc.poll() is None, lab.output(proc)
    return proc


def fetch(lab, members, source):
    out = lab.sh("ip", "netns", "exec", members["c"], "curl", "-sS", "--max-time", "3",
                 "--interface", source, f"http://{VIP}/", check=False)
    return out.split()


def who_serves(lab, members, proc):
    """client address -> server name, once every client is answered."""
    def all_answered():
        if proc.poll() is not None:
            raise AssertionError(lab.output(proc))
        seen = {ip: fetch(lab, members, ip) for ip in CLIENTS}
        return seen if all(len(v) == 2 for v in seen.values()) else None
    seen = wait_for(all_answered, timeout=20, what="every client answered through the VIP",
                      interval=0.3)
    for ip, (_, peer) in seen.items():
        assert peer == ip                          # the server saw the client itself
    return {ip: name for ip, (name, _) in seen.items()}


def test_servers_answer_the_client_directly_and_a_lost_server_moves_only_its_flows(segment):
    lab, members, bridge_ns = segment
    proc = start_pen(lab, members)
    before = who_serves(lab, members, proc)
    assert set(before.values()) == set(SERVERS), before       # all three get flows
    assert all(who_serves(lab, members, proc)[ip] == name for ip, name in before.items())

    # the client reached the VIP through pen's MAC, but the replies came from the servers'
    pen_mac = mac_of(lab, members["p"], "p0")
    neigh = lab.run(members["c"], "ip", "neigh", "show", VIP)
    assert pen_mac in neigh, neigh
    capture = lab.spawn(members["c"], "tcpdump", "-i", lab.ifname("c0"), "-e", "-n", "-l",
                        "-c", "8", f"tcp and src host {VIP}")
    wait_for(lambda: "listening on" in lab.output(capture), what="tcpdump to start")
    for ip in CLIENTS[:4]:
        fetch(lab, members, ip)
    wait_for(lambda: capture.poll() is not None, what="tcpdump to see 8 replies")
    out = lab.output(capture)
    server_macs = {mac_of(lab, members[n], f"{n}0") for n in SERVERS}
    sources = {line.split()[1] for line in out.splitlines() if " > " in line}
    assert sources and sources <= server_macs and pen_mac not in sources, out

    # s2 drops off the segment: once its ARP goes stale, only its clients move
    lab.run(bridge_ns, "ip", "link", "set", lab.ifname("bs2"), "down")
    def s2_gone():
        after = who_serves(lab, members, proc)
        return after if "s2" not in after.values() else None
    after = wait_for(s2_gone, timeout=25, what="s2's flows to move", interval=0.5)
    for ip, name in before.items():
        if name != "s2":
            assert after[ip] == name, (ip, name, after[ip])
    assert {after[ip] for ip, name in before.items() if name == "s2"} <= {"s1", "s3"}
    # the table was rebuilt without server 1 (s2), moving only its third of the slots
    rebuilt = re.search(r"servers \[0, 2\] in the table .*; (\d+) of 256 slots moved",
                        lab.output(proc))
    assert rebuilt, lab.output(proc)
    assert 0 < int(rebuilt.group(1)) <= 86


def test_pen_accepts_no_connection_and_tarpits_listed_addresses(segment):
    lab, members, _ = segment
    proc = start_pen(lab, members, "-O", f"acl 1 permit {TARPIT}", "-O", "tarpit_acl 1")
    who_serves(lab, members, proc)
    assert ":80 " not in lab.run(members["p"], "ss", "-ltnH")     # nothing listens in pen's ns
    probe = (f"import socket; s = socket.create_connection(('{TARPIT}', 22), 5); "
             "s.settimeout(1)\ntry: print('data', s.recv(10))\n"
             "except socket.timeout: print('connected, silence')")
    out = lab.run(members["c"], sys.executable, "-c", probe)
    assert out.strip() == "connected, silence"
    missing = lab.run(members["c"], sys.executable, "-c",
                      "import socket\ntry: socket.create_connection(('10.78.0.201', 22), 4)\n"
                      "except OSError as e: print('refused or unreachable', e.errno)",
                      check=False)
    assert "refused or unreachable" in missing


def test_udp_frames_are_forwarded_with_U(segment):
    lab, members, _ = segment
    for name in SERVERS:       # bound to the VIP so that replies come from it, not from s0
        dns_server(lab, members[name], name, VIP, 53)
    proc = lab.pen(members["p"], "-d", "-U", "-O", f"dsr_if {lab.ifname('p0')}",
                   f"{VIP}:53", *SERVERS.values(), port=0)
    wait_for(lambda: proc.poll() is not None or "servers [0, 1, 2] in the table"
               in lab.output(proc), what="pen to learn the servers' MACs")
    answers = {}
    for ip in CLIENTS:
        out = lab.run(members["c"], "dig", "+short", "+time=2", "+tries=2", "-b", ip,
                      f"@{VIP}", "who.example", "TXT")
        name, peer = out.strip().strip('"').split()
        assert peer == ip
        answers[ip] = name
    assert set(answers.values()) == set(SERVERS)
