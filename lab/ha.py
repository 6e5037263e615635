"""The HA topology: two pen boxes share a VIP; keepalived, set up by `pen-setup vrrp`, decides.

client net 10.89.1.0/24: VIP .100, penbox1 .10 (priority 250), penbox2 .9 (240), clients .21+
server net 10.89.2.0/24: penbox1 .10, penbox2 .9, servers .11+, emergency .99

Each pen box runs pen (-p PIDFILE), `python3 -m pen.vrrp watch` (the track file keepalived
reads the moment pen exits) and keepalived with the config `pen-setup vrrp --pid-file`
writes: adverts every 0.2 s (VRRPv3), unicast to the other box. `ip -ts monitor address`
records in each box when the VIP came and went, for the report's picture.
This module holds the pure parts (the setup command, the outage, the VIP's whereabouts),
unit-tested without docker; ha_lab.py drives the containers, ha_scenarios.py the stories.
"""

import calendar
import re
import time
from dataclasses import dataclass

from pen_lab.errors import LabError
from pen_lab.pencmd import CONTROL_PORT
from pen_lab.replies import parse_reply

CLIENT_NET = "10.89.1"          # docker_lab.NETWORKS (which needs the docker SDK)
SERVER_NET = "10.89.2"
PEN_PID = "/run/pen-lab-pen.pid"  # docker_lab.PEN_PID


def net_address(net, host):
    return f"{CLIENT_NET if net == 'client' else SERVER_NET}.{host}"


VIP = net_address("client", 100)
ROUTER_ID = 89
ADVERT = 0.2
PRIORITIES = {"penbox1": 250, "penbox2": 240}  # near the top: the backup's skew is small
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
KEEPALIVED_LOG = "/var/log/keepalived.log"
NOTIFY_LOG = "/var/log/pen-vrrp.log"
VIP_LOG = "/var/log/pen-lab-vip.log"
CHAIN = "PEN-LAB-HA"        # every iptables rule a scenario adds lives here, flushed after
STICKY_SOURCES = [net_address("client", 121 + i) for i in range(20)]


def penbox_host(number):
    """penbox1 .10, penbox2 .9: below the servers (.11+) on the server net."""
    return str(11 - number)


# -- the pure parts ------------------------------------------------------------------

def setup_argv(box, client_if, preempt=True):
    """The `pen-setup vrrp` command line that configures keepalived in one pen box."""
    peer = next(net_address("client", penbox_host(int(other[-1])))
                for other in PRIORITIES if other != box)
    argv = ["pen-setup", "vrrp", "--interface", client_if, "--vip", f"{VIP}/24",
            "--priority", str(PRIORITIES[box]), "--router-id", str(ROUTER_ID),
            "--peer", peer, "--advert-int", f"{ADVERT:g}", "--check-port", str(CONTROL_PORT),
            "--pid-file", PEN_PID, "--notify-log", NOTIFY_LOG]
    return argv + ([] if preempt else ["--nopreempt"]) + ["--write", KEEPALIVED_CONF]


def outage(answered, start, end):
    """The longest time without an answer in [start, end]: (seconds, from, to).
    `answered`: the times answers arrived; before the first and after the last count too."""
    times = sorted(t for t in answered if start <= t <= end)
    edges = [start, *times, end]
    gap, since, until = max(((b - a, a, b) for a, b in zip(edges, edges[1:], strict=False)),
                            default=(end - start, start, end))
    return gap, since, until


_MONITOR = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?\] (Deleted )?\S+ +\S+ +"
                      r"inet (\S+)/")


def vip_events(text, vip=VIP):
    """(time, held) from `ip -ts -4 monitor address` lines: when the VIP came and went."""
    events = []
    for line in text.splitlines():
        match = _MONITOR.match(line)
        if match and match[4] == vip:
            t = calendar.timegm(time.strptime(match[1], "%Y-%m-%dT%H:%M:%S"))
            events.append((t + float(match[2] or 0), match[3] is None))
    return events


def vip_spans(events, start, end, dead=()):
    """The spans of [start, end] during which a box held the VIP, from its events; `dead`:
    (from, to) spans when the box was down (a killed box logs no goodbye)."""
    spans, held_since = [], None
    # a killed box logs no goodbye: it held nothing from the kill on, until it says so again
    events = sorted([*events, *((down_from, False) for down_from, _ in dead)])
    for t, held in events + [(end, False)]:
        t = min(max(t, start), end)
        if held and held_since is None:
            held_since = t
        elif not held and held_since is not None:
            spans.append((held_since, t))
            held_since = None
    for down_from, down_to in dead:
        cut = []
        for a, b in spans:
            if b <= down_from or a >= down_to:
                cut.append((a, b))
                continue
            if a < down_from:
                cut.append((a, down_from))
            if b > down_to:
                cut.append((down_to, b))
        spans = cut
    return [(a, b) for a, b in spans if b > a]


@dataclass
class Run:
    """What one HA scenario measured, for its narration and its picture."""
    start: float
    end: float
    replies: list              # Reply per request; t is when it was answered (or sent)
    sent: list                 # when each request left
    boxes: dict                # reply.peer (a box's server-side address) -> box name
    spans: dict = None         # box -> [(from, to)] holding the VIP
    gap: tuple = None          # (seconds, from, to)
    bound: float = None
    dead: dict = None          # box -> [(from, to)] it was down
    title: str = None

    @property
    def by_box(self):
        return [self.boxes.get(r.peer) if r.server else None for r in self.replies]


def parse_probe(text, boxes, client=None):
    """The client loop's output as a Run."""
    start, replies, sent = None, [], []
    for line in text.splitlines():
        if line.startswith("start "):
            start = float(line.split()[1])
            continue
        fields = line.split(" ", 3)
        if len(fields) < 4:
            continue
        try:
            t_sent, t_answered = float(fields[0]), float(fields[1])
        except ValueError:
            continue
        reply = parse_reply(t_answered or t_sent, fields[3], client)
        reply.client = fields[2] if fields[2] != "-" else client
        replies.append(reply)
        sent.append(t_sent)
    if start is None:
        raise LabError(f"the client loop said nothing useful: {text[-300:]!r}")
    # the loop ends with its last send or answer: answers that came late still count
    end = max([start, *sent, *(r.t for r in replies)])
    return Run(start, end, replies, sent, boxes)
