"""The HA lab's pure pieces, no docker needed: the setup command, the outage, the VIP's
whereabouts, the client loop's output, the junk adverts and the picture."""

import socket
import struct

import pytest

from pen.vrrp import Vrrp, render
from pen_lab import ha, vrrp_junk
from pen_lab.ha_picture import draw
from pen_lab.replies import Reply


def test_each_box_is_set_up_by_pen_setup_with_the_other_as_its_peer():
    one = ha.setup_argv("penbox1", "eth0")
    two = ha.setup_argv("penbox2", "eth1", preempt=False)
    assert one[:2] == ["pen-setup", "vrrp"] and one[-2:] == ["--write", ha.KEEPALIVED_CONF]

    def value(argv, option):
        return argv[argv.index(option) + 1]
    assert value(one, "--peer") == "10.89.1.9" and value(two, "--peer") == "10.89.1.10"
    assert (value(one, "--priority"), value(two, "--priority")) == ("250", "240")
    assert value(one, "--vip") == "10.89.1.100/24" and value(one, "--advert-int") == "0.2"
    assert value(one, "--pid-file") == ha.PEN_PID
    assert "--nopreempt" in two and "--nopreempt" not in one
    # what those options render: sub-second VRRPv3, unicast from the peer only, the watcher
    text = render(Vrrp("eth0", "10.89.1.100/24", 150, 89, ("10.89.1.9",), 10999,
                       advert_int=0.2, pid_file=ha.PEN_PID, python="/usr/bin/python3"))
    assert {"    version 3", "    advert_int 0.2", "    check_unicast_src",
            "        pen_running"} <= set(text.splitlines())


def test_outage_is_the_longest_time_without_an_answer():
    assert ha.outage([1.0, 1.05, 1.1, 1.9, 1.95], 1.0, 2.0) == pytest.approx((0.8, 1.1, 1.9))
    assert ha.outage([1.0, 1.5], 0.0, 2.0) == pytest.approx((1.0, 0.0, 1.0))   # a late start
    assert ha.outage([0.1, 0.2], 0.0, 3.0) == pytest.approx((2.8, 0.2, 3.0))   # never back
    assert ha.outage([], 0.0, 3.0) == pytest.approx((3.0, 0.0, 3.0))
    assert ha.outage([5.0, -1.0], 0.0, 1.0)[0] == pytest.approx(1.0)          # outside: ignored


MONITOR = """\
[2026-11-29T02:10:00.250000] 3: eth0    inet 10.89.1.100/24 scope global secondary eth0
       valid_lft forever preferred_lft forever
[2026-11-29T02:10:01.000000] 3: eth0    inet 10.89.1.55/24 scope global secondary eth0
[2026-11-29T02:10:04.500000] Deleted 3: eth0    inet 10.89.1.100/24 scope global secondary eth0
garbage line
"""
T0 = 1795918200.0   # 2026-11-29T02:10:00Z


def test_vip_events_and_spans_from_ip_monitor():
    events = ha.vip_events(MONITOR)
    assert events == [(pytest.approx(T0 + 0.25), True), (pytest.approx(T0 + 4.5), False)]
    assert ha.vip_spans(events, T0, T0 + 10) == [pytest.approx((T0 + 0.25, T0 + 4.5))]
    held = [(T0 + 1, True)]          # still held at the end
    assert ha.vip_spans(held, T0, T0 + 5) == [pytest.approx((T0 + 1, T0 + 5))]
    assert ha.vip_spans(held, T0, T0 + 5, dead=[(T0 + 2, float("inf"))]) == \
        [pytest.approx((T0 + 1, T0 + 2))]
    # killed while holding it, back at +3: holds nothing until its log says so (+4)
    assert ha.vip_spans(held + [(T0 + 4, True)], T0, T0 + 5, dead=[(T0 + 2, T0 + 3)]) == \
        [pytest.approx((T0 + 1, T0 + 2)), pytest.approx((T0 + 4, T0 + 5))]


def test_the_client_loops_output_becomes_a_run():
    text = ('start 100.0\n'
            '100.00 100.01 - {"server": "server2", "peer": "10.89.2.10"}\n'
            '100.05 0.000000 10.89.1.121 ERROR TimeoutError: timed out\n'
            '100.10 100.12 10.89.1.122 {"server": "server1", "peer": "10.89.2.9"}\n'
            'torn')
    run = ha.parse_probe(text, {"10.89.2.10": "penbox1", "10.89.2.9": "penbox2"}, "client1")
    assert (run.start, run.end, run.sent) == (100.0, 100.12, [100.0, 100.05, 100.1])
    assert [r.t for r in run.replies] == [100.01, 100.05, 100.12]
    assert run.by_box == ["penbox1", None, "penbox2"]
    assert [r.client for r in run.replies] == ["client1", "10.89.1.121", "10.89.1.122"]
    with pytest.raises(ha.LabError):
        ha.parse_probe("Traceback ...", {})


def test_junk_adverts_are_what_they_claim():
    forged = vrrp_junk.advert("10.89.1.22", "10.89.1.10", 89, 254, ["10.89.1.100"])
    pseudo = socket.inet_aton("10.89.1.22") + socket.inet_aton("10.89.1.10") + \
        struct.pack("!BBH", 0, 112, len(forged))
    assert vrrp_junk.checksum(pseudo + forged) == 0                  # a valid VRRPv3 advert
    assert forged[:4] == bytes([0x31, 89, 254, 1]) and forged[-4:] == socket.inet_aton(
        "10.89.1.100")
    packets = vrrp_junk.junk("10.89.1.22", "10.89.1.10", 89, "10.89.1.100")
    assert len(packets) == 5 and packets[-1] == forged
    assert vrrp_junk.checksum(pseudo + packets[3]) != 0              # the wrong checksum


def test_the_picture_shows_bands_requests_events_and_the_outage():
    start = 1000.0
    replies = [Reply(start + i * 0.05, "server1", "10.89.2.10", client="client1")
               for i in range(40)]
    replies.append(Reply(start + 2.1, None, client="client1", error="timed out <x>"))
    replies += [Reply(start + 2.8 + i * 0.05, "server1", "10.89.2.9", client="client1")
                for i in range(40)]
    run = ha.Run(start, start + 5, replies, [r.t for r in replies],
                 {"10.89.2.10": "penbox1", "10.89.2.9": "penbox2"})
    run.spans = {"penbox1": [(start, start + 2.0)], "penbox2": [(start + 2.7, start + 5)]}
    run.dead = {"penbox1": [(start + 2.0, float("inf"))], "penbox2": []}
    run.gap, run.bound = ha.outage([r.t for r in replies if r.server], start, start + 5), 1.0
    svg = draw(run, [(start + 2.0, "docker kill penbox1"), (start + 99, "later: not drawn")])
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg
    assert "VIP on penbox1" in svg and "VIP on penbox2" in svg and "via penbox2" in svg
    assert "outage 0.85 s (bound 1 s)" in svg
    assert svg.count("<circle") == 80 and svg.count("<path") == 1
    assert "docker kill penbox1" in svg and "later: not drawn" not in svg
    assert "timed out &lt;x&gt;" in svg and "penbox1 down" in svg
