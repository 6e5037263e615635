"""Network namespaces made (and always removed) by the tests themselves.

Every name starts with `pt<pid>` so that parallel runs and leftovers are recognisable, and
every address lives inside namespaces this module created: nothing reaches the host's links.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support import wait_for  # noqa: F401  (the netns tests import it from here)

ROOT = Path(__file__).resolve().parent.parent.parent

# A tiny HTTP server that answers every GET with "<name> <peer address>".
PEER_SERVER = r"""
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = f"{name} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
class S(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    daemon_threads = True
S((host, port), H).serve_forever()
"""


class Lab:
    """Namespaces, veths, bridges and processes; `close()` removes them all."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"pt{os.getpid() % 100000}{tag}"
        self.namespaces: list[str] = []
        self.procs: list[tuple[subprocess.Popen, object]] = []
        self.files: list[str] = []             # removed by close()

    def sh(self, *argv: str, check: bool = True, timeout: float = 20) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout}")
        return result.stdout

    def ns(self, short: str) -> str:
        """A new namespace with lo up; returns its full name."""
        name = f"{self.prefix}{short}"
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 20) -> str:
        return self.sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair with one end in each namespace; names are made unique first."""
        a, b = self.ifname(if_a), self.ifname(if_b)
        self.sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.sh("ip", "link", "set", a, "netns", ns_a)
        self.sh("ip", "link", "set", b, "netns", ns_b)
        self.run(ns_a, "ip", "link", "set", a, "up")
        self.run(ns_b, "ip", "link", "set", b, "up")

    def segment(self, shorts, tx_off: bool = False) -> tuple[str, dict]:
        """One L2 segment: a bridge inside its own namespace "b" (so the host's
        br_netfilter never sees it) and a namespace per short name, joined by veth
        `{short}0` <-> bridge port `b{short}`. tx_off: no transmit checksum offload (frames
        re-sent from a raw socket must carry finished checksums)."""
        bridge_ns, br = self.ns("b"), self.ifname("br")
        self.run(bridge_ns, "ip", "link", "add", br, "type", "bridge")
        self.run(bridge_ns, "ip", "link", "set", br, "up")
        members = {short: self.ns(short) for short in shorts}
        for short, ns in members.items():
            inside, port = f"{short}0", f"b{short}"
            self.veth(ns, inside, bridge_ns, port)
            self.run(bridge_ns, "ip", "link", "set", self.ifname(port), "master", br)
            if tx_off:
                for end_ns, end in ((ns, inside), (bridge_ns, port)):
                    self.run(end_ns, "ethtool", "-K", self.ifname(end), "tx", "off")
        return bridge_ns, members

    def ifname(self, short: str) -> str:
        name = f"{self.prefix}{short}"
        assert len(name) <= 15, name
        return name

    def addr(self, ns: str, ifname: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.run(ns, "ip", "addr", "add", cidr, "dev", self.ifname(ifname), *extra)

    def spawn(self, ns: str, *argv: str, env: dict | None = None) -> subprocess.Popen:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"{self.prefix}-{len(self.procs)}.log"
        log = open(out, "w+")
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT),
                                start_new_session=True)
        proc.log_path = out
        self.procs.append((proc, log))
        return proc

    def output(self, proc) -> str:
        return Path(proc.log_path).read_text()

    def peer_server(self, ns: str, name: str, host: str, port: int) -> subprocess.Popen:
        proc = self.spawn(ns, sys.executable, "-c", PEER_SERVER, name, host, str(port))
        self.wait_listening(ns, port, proc)
        return proc

    def pen(self, ns: str, *args: str, port: int, proto: str = "tcp") -> subprocess.Popen:
        proc = self.spawn(ns, sys.executable, "-m", "pen", "-f", *args)
        if port:
            self.wait_listening(ns, port, proc, proto)
        return proc

    def wait_listening(self, ns: str, port: int, proc, proto: str = "tcp") -> None:
        flag = "-ltnH" if proto == "tcp" else "-lunH"

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}: {self.output(proc)}")
            return any(line.split()[3].rsplit(":", 1)[-1] == str(port)
                       for line in self.run(ns, "ss", flag).splitlines() if line.strip())
        wait_for(ready, what=f"port {port} in {ns}")

    def stop(self, proc) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def close(self) -> None:
        for proc, log in reversed(self.procs):
            try:
                self.stop(proc)
            except ProcessLookupError:
                pass
            log.close()
            try:
                os.unlink(proc.log_path)
            except OSError:
                pass
        for name in reversed(self.namespaces):
            # deleting a namespace deletes the veth ends and bridges inside it
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.namespaces.clear()
        for path in self.files:
            try:
                os.unlink(path)
            except OSError:
                pass

# A tiny DNS server (dnslib) that answers every query with a TXT record "<name> <peer>".
DNS_SERVER = r"""
import socket, sys
from dnslib import QTYPE, RR, TXT, DNSRecord
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
while True:
    data, peer = s.recvfrom(4096)
    try:
        query = DNSRecord.parse(data)
    except Exception:
        continue
    reply = query.reply()
    reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT(f"{name} {peer[0]}"), ttl=0))
    s.sendto(reply.pack(), peer)
"""


def dns_server(lab: Lab, ns: str, name: str, host: str, port: int) -> subprocess.Popen:
    proc = lab.spawn(ns, sys.executable, "-c", DNS_SERVER, name, host, str(port))
    lab.wait_listening(ns, port, proc, "udp")
    return proc
