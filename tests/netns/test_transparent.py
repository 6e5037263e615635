"""Transparent mode end to end: client -> pen -> server, the server routing back via pen.

    client ns  c0 ──── p0  pen ns  p1 ──── s0  server ns
    10.77.1.2/24    10.77.1.1   10.77.2.1    10.77.2.2/24   (fd77:1::/64, fd77:2::/64 alike)

The server's default route is pen, so its replies to the client's own address reach the
pen namespace, where `pen-setup transparent` diverts them to pen's transparent socket.
"""

import subprocess
import sys

import pytest
from netns_lab import ROOT, dns_server

pytestmark = pytest.mark.root

CLIENT4, PEN4_CLIENT_SIDE, PEN4_SERVER_SIDE, SERVER4 = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
CLIENT6, PEN6_CLIENT_SIDE, PEN6_SERVER_SIDE, SERVER6 = "fd77:1::2", "fd77:1::1", "fd77:2::1", "fd77:2::2"


@pytest.fixture
def topology(lab):
    cli, pen, srv = lab.ns("c"), lab.ns("p"), lab.ns("s")
    lab.veth(cli, "c0", pen, "p0")
    lab.veth(pen, "p1", srv, "s0")
    lab.addr(cli, "c0", f"{CLIENT4}/24", f"{CLIENT6}/64")
    lab.addr(pen, "p0", f"{PEN4_CLIENT_SIDE}/24", f"{PEN6_CLIENT_SIDE}/64")
    lab.addr(pen, "p1", f"{PEN4_SERVER_SIDE}/24", f"{PEN6_SERVER_SIDE}/64")
    lab.addr(srv, "s0", f"{SERVER4}/24", f"{SERVER6}/64")
    lab.run(srv, "ip", "route", "add", "default", "via", PEN4_SERVER_SIDE)
    lab.run(srv, "ip", "-6", "route", "add", "default", "via", PEN6_SERVER_SIDE)
    record = f"/tmp/{lab.prefix}-setup.json"
    lab.files.append(record)
    out = lab.run(pen, sys.executable, "-m", "pen.setup_host", "transparent", "--state", record)
    assert "ran: iptables -t mangle -A DIVERT -j MARK --set-mark 1" in out
    lab.peer_server(srv, "s4", "0.0.0.0", 8080)
    lab.peer_server(srv, "s6", "::", 8086)
    dns_server(lab, srv, "d4", "0.0.0.0", 5353)
    dns_server(lab, srv, "d6", "::", 5356)
    return lab, cli, pen, srv


def fetch(lab, cli, url):
    return lab.run(cli, "curl", "-sS", "--max-time", "5", url).split()


@pytest.mark.parametrize("family", [4, 6])
def test_server_sees_the_client_itself_only_in_transparent_mode(topology, family):
    lab, cli, pen, srv = topology
    if family == 4:
        listen, server, url = f"{PEN4_CLIENT_SIDE}:80", f"{SERVER4}:8080", f"http://{PEN4_CLIENT_SIDE}/"
        client, pen_side = CLIENT4, PEN4_SERVER_SIDE
    else:
        listen, server, url = f"[{PEN6_CLIENT_SIDE}]:80", f"[{SERVER6}]:8086", f"http://[{PEN6_CLIENT_SIDE}]/"
        client, pen_side = CLIENT6, PEN6_SERVER_SIDE

    plain = lab.pen(pen, listen, server, port=80)
    assert fetch(lab, cli, url)[1] == pen_side
    lab.stop(plain)

    lab.pen(pen, "-O", "transparent", listen, server, port=80)
    for _ in range(3):                       # several connections, each from the client itself
        assert fetch(lab, cli, url)[1] == client


def dig(lab, cli, server):
    out = lab.run(cli, "dig", "+short", "+time=2", "+tries=1", "-p", "53", f"@{server}",
                  "who.example", "TXT")
    return out.strip().strip('"').split()


@pytest.mark.parametrize("family", [4, 6])
def test_udp_server_sees_the_client_itself_only_in_transparent_mode(topology, family):
    lab, cli, pen, srv = topology
    if family == 4:
        listen, server, target = f"{PEN4_CLIENT_SIDE}:53", f"{SERVER4}:5353", PEN4_CLIENT_SIDE
        client, pen_side = CLIENT4, PEN4_SERVER_SIDE
    else:
        listen, server, target = f"[{PEN6_CLIENT_SIDE}]:53", f"[{SERVER6}]:5356", PEN6_CLIENT_SIDE
        client, pen_side = CLIENT6, PEN6_SERVER_SIDE
    plain = lab.pen(pen, "-U", listen, server, port=53, proto="udp")
    assert dig(lab, cli, target)[1] == pen_side
    lab.stop(plain)
    lab.pen(pen, "-U", "-O", "transparent", listen, server, port=53, proto="udp")
    for _ in range(3):
        assert dig(lab, cli, target)[1] == client


def test_source_pins_a_fixed_address_even_in_transparent_mode(topology):
    lab, cli, pen, srv = topology
    lab.pen(pen, "-O", "transparent", "-O", f"source {PEN4_SERVER_SIDE}",
            f"{PEN4_CLIENT_SIDE}:80", f"{SERVER4}:8080", port=80)
    assert fetch(lab, cli, f"http://{PEN4_CLIENT_SIDE}/")[1] == PEN4_SERVER_SIDE


def test_undo_leaves_the_namespace_as_it_was(topology):
    lab, cli, pen, srv = topology
    record = f"/tmp/{lab.prefix}-setup.json"
    lab.run(pen, sys.executable, "-m", "pen.setup_host", "transparent", "--undo", "--state", record)
    assert "DIVERT" not in lab.run(pen, "iptables", "-t", "mangle", "-S")
    assert "DIVERT" not in lab.run(pen, "ip6tables", "-t", "mangle", "-S")
    assert "fwmark" not in lab.run(pen, "ip", "rule") + lab.run(pen, "ip", "-6", "rule")
    # without the divert rules the server's SYN-ACK never reaches pen's transparent socket:
    # the connect times out (-t 1), and the client gets no answer
    proc = lab.pen(pen, "-O", "transparent", "-t", "1", f"{PEN4_CLIENT_SIDE}:80",
                   f"{SERVER4}:8080", port=80)
    result = subprocess.run(["ip", "netns", "exec", cli, "curl", "-sS", "--max-time", "4",
                             f"http://{PEN4_CLIENT_SIDE}/"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode != 0 and result.stdout == "", result
    assert f"server 0 ({SERVER4}:8080) failed: timed out" in lab.output(proc)


def test_without_the_capability_pen_names_it(lab):
    """Root's uid with an empty capability bounding set: IP_TRANSPARENT is refused."""
    ns = lab.ns("u")
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "setpriv", "--inh-caps=-all", "--bounding-set=-all",
         "env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "pen", "-f", "-O", "transparent",
         "127.0.0.1:18080", "127.0.0.1:18081"],
        capture_output=True, text=True, timeout=20, cwd="/")
    assert result.returncode == 1, result
    assert result.stderr.strip() == ("pen: transparent: needs CAP_NET_ADMIN "
                                     "(run as root or grant the capability)")
