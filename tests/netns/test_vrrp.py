"""Two pen boxes share a VIP through keepalived (VRRP); the VIP leaves a box whose pen died.

    client ns c (10.79.0.10) ─┐
    pen box a (10.79.0.2, priority 150) ├── bridge ns: br      VIP 10.79.0.100/24
    pen box x (10.79.0.3, priority 100) │
    server ns s (10.79.0.101:8080) ─────┘

Each box runs `python -m pen -f 0.0.0.0:80 server` and keepalived with the config that
`pen-setup vrrp` renders (health check on 127.0.0.1:80).
One case sends adverts unicast to the other box, the other to VRRP's multicast group.
The server answers "web <address pen connected from>", which names the box that relayed.
"""

import os
import signal
import sys
import time

import pytest
from netns_lab import wait_for

pytestmark = pytest.mark.root

VIP = "10.79.0.100"
SERVER = "10.79.0.101"
CLIENT = "10.79.0.10"
BOXES = {"a": ("10.79.0.2", 150), "x": ("10.79.0.3", 100)}


def keepalived(lab, box, ns, preempt, unicast):
    """Render the box's config with pen-setup and run keepalived in its namespace."""
    own, priority = BOXES[box]
    peer = next(ip for name, (ip, _) in BOXES.items() if name != box)
    conf = f"/tmp/{lab.prefix}-{box}-keepalived.conf"
    pids = [f"/tmp/{lab.prefix}-{box}-{kind}.pid" for kind in ("main", "vrrp", "check")]
    notify_log = f"/tmp/{lab.prefix}-{box}-notify.log"
    lab.files += [conf, *pids, notify_log]
    # the check runs as root: this Python lives under /root, which nobody cannot enter
    args = ["vrrp", "--interface", lab.ifname(f"{box}0"), "--vip", f"{VIP}/24",
            "--priority", str(priority), "--router-id", "79", "--check-port", "80",
            "--script-user", "root", "--notify-log", notify_log, "--write", conf]
    args += ["--peer", peer] if unicast else []
    args += [] if preempt else ["--nopreempt"]
    lab.sh(sys.executable, "-m", "pen.setup_host", *args)
    assert ("unicast_peer" in open(conf).read()) == unicast
    return lab.spawn(ns, "keepalived", "-n", "-l", "-D", "-P", "-f", conf, "-p", pids[0],
                     "-r", pids[1], "-c", pids[2])


@pytest.fixture
def boxes(lab):
    bridge_ns, members = lab.segment(["c", "a", "x", "s"])
    lab.addr(members["c"], "c0", f"{CLIENT}/24")
    lab.addr(members["s"], "s0", f"{SERVER}/24")
    for box, (own, _) in BOXES.items():
        lab.addr(members[box], f"{box}0", f"{own}/24")
    lab.peer_server(members["s"], "web", SERVER, 8080)
    members["b"] = bridge_ns
    return lab, members


def start_pen(lab, ns, *options):
    return lab.pen(ns, *options, "0.0.0.0:80", f"{SERVER}:8080", port=80)


def holds_vip(lab, ns):
    return f" {VIP}/" in lab.run(ns, "ip", "-4", "-o", "addr", "show")


def answered_by(lab, members):
    """The box address the server saw, or None when the VIP does not answer within 1 s."""
    out = lab.run(members["c"], "curl", "-sS", "--max-time", "1", f"http://{VIP}/",
                  check=False).split()
    return out[1] if len(out) == 2 and out[0] == "web" else None


def wait_for_master(lab, members, box, timeout, keepalived_procs):
    own = BOXES[box][0]
    other = next(name for name in BOXES if name != box)

    def settled():
        for proc in keepalived_procs.values():
            if proc.poll() is not None:
                raise AssertionError(f"keepalived exited: {lab.output(proc)}")
        return (holds_vip(lab, members[box]) and not holds_vip(lab, members[other])
                and answered_by(lab, members) == own)
    try:
        wait_for(settled, timeout=timeout, what=f"box {box} to hold the VIP and answer",
                   interval=0.1)
    except AssertionError:
        logs = "\n".join(f"--- {n}:\n{lab.output(p)}" for n, p in keepalived_procs.items())
        raise AssertionError(f"box {box} never became master\n{logs}") from None


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


@pytest.mark.parametrize("preempt, unicast", [(True, True), (False, False)],
                         ids=["preempt-unicast", "nopreempt-multicast"])
def test_vip_leaves_the_box_whose_pen_died(boxes, preempt, unicast):
    lab, members = boxes
    pens = {box: start_pen(lab, members[box]) for box in BOXES}
    kad = {box: keepalived(lab, box, members[box], preempt, unicast) for box in BOXES}
    wait_for_master(lab, members, "a", 20, kad)       # the higher priority wins the election

    kill(pens["a"])                                   # pen dies; box a and keepalived live on
    died = time.monotonic()
    wait_for_master(lab, members, "x", 15, kad)
    failover = time.monotonic() - died
    print(f"failover after pen died: {failover:.2f} s")
    assert "Entering FAULT STATE" in lab.output(kad["a"])
    # pen-setup's notify hook logged both boxes' changes (it runs as keepalived's child)
    wait_for(lambda: "is FAULT" in read(f"/tmp/{lab.prefix}-a-notify.log") and
             "is MASTER" in read(f"/tmp/{lab.prefix}-x-notify.log"), what="the notify hooks")
    assert failover < 10

    pens["a"] = start_pen(lab, members["a"])
    if preempt:
        back = time.monotonic()
        wait_for_master(lab, members, "a", 15, kad)
        print(f"VIP back on the recovered box after {time.monotonic() - back:.2f} s")
    else:
        # a leaves FAULT for BACKUP once its check passes again, and must not take the VIP
        wait_for(lambda: lab.output(kad["a"]).count("Entering BACKUP STATE") >= 2,
                   timeout=15, what="box a to leave FAULT")
        deadline = time.monotonic() + 4               # several adverts from x meanwhile
        while time.monotonic() < deadline:
            assert answered_by(lab, members) == BOXES["x"][0]
            assert holds_vip(lab, members["x"]) and not holds_vip(lab, members["a"])


def test_vip_leaves_a_box_that_dropped_off_the_segment(boxes):
    lab, members = boxes
    for box in BOXES:
        # while cut off, a's pen fails to reach the server (the health check connects through
        # it) and blacklists it; -b 2 lets it retry soon after a is back
        start_pen(lab, members[box], "-b", "2")
    kad = {box: keepalived(lab, box, members[box], True, True) for box in BOXES}
    wait_for_master(lab, members, "a", 20, kad)

    lab.run(members["b"], "ip", "link", "set", lab.ifname("ba"), "down")   # a is cut off
    lost = time.monotonic()
    wait_for(lambda: holds_vip(lab, members["x"]) and answered_by(lab, members) == BOXES["x"][0],
               timeout=15, what="box x to take over from the vanished box", interval=0.1)
    print(f"failover after box a vanished: {time.monotonic() - lost:.2f} s")

    lab.run(members["b"], "ip", "link", "set", lab.ifname("ba"), "up")     # a is back: preempts
    back = time.monotonic()
    wait_for_master(lab, members, "a", 20, kad)
    print(f"VIP back on box a after {time.monotonic() - back:.2f} s")
