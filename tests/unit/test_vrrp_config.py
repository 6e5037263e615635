"""pen-setup vrrp: the keepalived.conf it renders and the mistakes it refuses."""

import os
import shutil
import subprocess
import sys
import threading

import pytest

from pen import setup_host, vrrp
from pen.vrrp import Vrrp, VrrpError, render
from support import can_connect, free_port, wait_for


def block(text, header):
    """The lines of the `header {` block, up to its closing brace."""
    lines = text.splitlines()
    start = lines.index(header + " {")
    depth, out = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        out.append(line.strip())
        if depth == 0:
            return out
    raise AssertionError(f"{header} not closed")


def test_instance_holds_the_vip_and_tracks_pen():
    text = render(Vrrp("eth1", "192.0.2.10/24", 150, python="/usr/bin/python3"))
    inst = block(text, "vrrp_instance pen_vip_51")
    assert "state BACKUP" in inst and "interface eth1" in inst
    assert "virtual_router_id 51" in inst and "priority 150" in inst and "advert_int 1" in inst
    assert "192.0.2.10/24 dev eth1" in inst
    assert inst[inst.index("track_script {") + 1] == "pen_alive"
    assert "nopreempt" not in inst and "version 3" not in inst
    assert not any("unicast" in line for line in inst)               # multicast by default
    script = block(text, "vrrp_script pen_alive")
    assert 'script "/usr/bin/python3 -m pen.vrrp check 127.0.0.1:80"' in script
    assert {"interval 1", "fall 2", "rise 2"} <= set(script)
    assert not any(line.startswith("weight") for line in script)     # failure means FAULT
    assert {"enable_script_security", "script_user nobody"} <= set(block(text, "global_defs"))
    assert text.count("{") == text.count("}")


def test_options_reach_the_config():
    text = render(Vrrp("bond0", "192.0.2.10/26", 90, router_id=7, peers=("192.0.2.2",
                  "192.0.2.3"), check_port=10080, preempt=False, advert_int=2,
                  script_user="pen", python="/opt/pen/bin/python"))
    inst = block(text, "vrrp_instance pen_vip_7")
    assert {"virtual_router_id 7", "priority 90", "advert_int 2", "nopreempt",
            "check_unicast_src"} <= set(inst)
    peers = inst[inst.index("unicast_peer {") + 1:]
    assert peers[:3] == ["192.0.2.2", "192.0.2.3", "}"]
    assert "192.0.2.10/26 dev bond0" in inst
    assert 'script "/opt/pen/bin/python -m pen.vrrp check 127.0.0.1:10080"' in text
    assert "script_user pen" in text


def test_ipv6_vip_uses_vrrp_version_3():
    text = render(Vrrp("eth0", "2001:db8::10/64", 100, peers=("2001:db8::2",)))
    assert "version 3" in block(text, "vrrp_instance pen_vip_51")
    assert "2001:db8::10/64 dev eth0" in text


@pytest.mark.parametrize("kwargs, named", [
    ({"vip": "192.0.2.10"}, "--vip"),
    ({"vip": "192.0.2.300/24"}, "--vip"),
    ({"priority": 255}, "--priority"),
    ({"priority": 0}, "--priority"),
    ({"router_id": 256}, "--router-id"),
    ({"interface": "has space"}, "--interface"),
    ({"interface": "x" * 16}, "--interface"),
    ({"peers": ("2001:db8::2",)}, "--peer"),
    ({"peers": ("not-an-ip",)}, "--peer"),
    ({"peers": ("192.0.2.10",)}, "--peer"),
    ({"check_port": 0}, "--check-port"),
    ({"script_user": 'a"b'}, "--script-user"),
])
def test_mistakes_name_the_option(kwargs, named):
    settings = dict(interface="eth0", vip="192.0.2.10/24", priority=100) | kwargs
    with pytest.raises(VrrpError, match=f"^{named} "):
        render(Vrrp(**settings))


def test_cli_prints_writes_and_refuses(tmp_path, capsys):
    base = ["vrrp", "--interface", "eth0", "--vip", "192.0.2.10/24", "--priority", "120"]
    assert setup_host.main([*base, "--peer", "192.0.2.3", "--print"]) == 0
    printed = capsys.readouterr().out
    assert "unicast_peer {" in printed and "priority 120" in printed

    target = tmp_path / "keepalived" / "keepalived.conf"
    assert setup_host.main([*base, "--write", str(target)]) == 0
    assert target.read_text() == render(Vrrp("eth0", "192.0.2.10/24", 120))
    assert setup_host.main([*base, "--nopreempt", "--write", str(target)]) == 0
    assert "nopreempt" in target.read_text()
    assert "nopreempt" not in (tmp_path / "keepalived" / "keepalived.conf.bak").read_text()

    capsys.readouterr()
    assert setup_host.main([*base[:-1], "300", "--print"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pen-setup vrrp: --priority 300") and err.count("\n") == 1
    with pytest.raises(SystemExit):                      # neither --print nor --write
        setup_host.main(base)



def test_sub_second_adverts_use_vrrp_version_3_and_keepalived_takes_them(tmp_path):
    text = render(Vrrp("eth1", "192.0.2.10/24", 150, advert_int=0.2))
    inst = block(text, "vrrp_instance pen_vip_51")
    assert "advert_int 0.2" in inst and "version 3" in inst
    assert "version 3" not in block(render(Vrrp("eth1", "192.0.2.10/24", 150, advert_int=3)),
                                    "vrrp_instance pen_vip_51")
    if shutil.which("keepalived") or os.environ.get("CI"):
        good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
        good.write_text(text)
        bad.write_text(text.replace("advert_int 0.2", "advert_int 0.005"))

        def complaints(path):       # (the interface need not exist: only adverts matter)
            out = subprocess.run(["keepalived", "-t", "-f", str(path)], capture_output=True,
                                 text=True, timeout=30)
            return [line for line in (out.stdout + out.stderr).splitlines()
                    if "Advert interval" in line or "outside range" in line]
        assert complaints(good) == []
        assert complaints(bad)                          # the check would catch a bad one


@pytest.mark.parametrize("advert", [0.005, 0.255, 41.5, 256, 0])
def test_advert_intervals_keepalived_cannot_honour_are_refused(advert):
    with pytest.raises(VrrpError, match=r"--advert-int .*: keepalived takes 1..255 whole"):
        render(Vrrp("eth1", "192.0.2.10/24", 150, advert_int=advert))


def test_pid_file_adds_the_watchers_track_file_and_hooks_log_state_changes():
    text = render(Vrrp("eth1", "192.0.2.10/24", 150, pid_file="/run/pen.pid",
                       python="/usr/bin/python3"))
    tracked = block(text, "track_file pen_running")
    assert {'file "/run/pen-vrrp/pen-running"', "weight 0", "init_file 1"} <= set(tracked)
    inst = block(text, "vrrp_instance pen_vip_51")
    assert inst[inst.index("track_file {") + 1] == "pen_running"
    hook = "/usr/bin/python3 -m pen.vrrp notify /var/log/pen-vrrp.log"
    assert f'notify "{hook}" root' in inst
    assert f'notify_master_rx_lower_pri "{hook} split-brain" root' in inst
    assert "/usr/bin/python3 -m pen.vrrp watch /run/pen.pid --check 127.0.0.1:80" in text
    assert "track_file" not in render(Vrrp("eth1", "192.0.2.10/24", 150))
    with pytest.raises(VrrpError, match="^--pid-file 'run/pen.pid'"):
        render(Vrrp("eth1", "192.0.2.10/24", 150, pid_file="run/pen.pid"))
    with pytest.raises(VrrpError, match="^--notify-log "):
        render(Vrrp("eth1", "192.0.2.10/24", 150, notify_log='/var/log/a "b'))


def test_notify_lines_name_the_state_and_the_split_brain(tmp_path):
    line = vrrp.notify_line(0.25, ["INSTANCE", "pen_vip_51", "MASTER", "150"])
    assert line.startswith("1970-01-01T00:00:00.250Z ")
    assert line.endswith(" instance pen_vip_51 is MASTER (priority 150)\n")
    assert "SPLIT BRAIN" in vrrp.notify_line(0, ["split-brain"])
    assert "called with nothing" in vrrp.notify_line(0, [])
    log = tmp_path / "pen-vrrp.log"
    assert vrrp.main(["notify", str(log), "INSTANCE", "v", "BACKUP", "100"]) == 0
    assert vrrp.main(["notify", str(log), "split-brain"]) == 0
    assert vrrp.main(["notify", str(log), "split-brain"]) == 0     # every advert: one line
    assert vrrp.main(["notify", str(log), "INSTANCE", "v", "MASTER", "100"]) == 0
    assert vrrp.main(["notify", str(log), "split-brain"]) == 0     # a new one: logged
    lines = [ln.split(" ", 2)[2] for ln in log.read_text().splitlines()]
    assert lines[0] == "instance v is BACKUP (priority 100)" and len(lines) == 4
    assert ["SPLIT BRAIN" in ln for ln in lines] == [False, True, False, True]
    assert vrrp.main(["notify", str(tmp_path / "no" / "dir.log"), "x"]) == 0  # never fails


def test_watch_writes_1_the_moment_pen_exits(tmp_path):
    """A listener stands in for pen: the track file says 0 while it runs, 1 once killed."""
    port = free_port()
    pen = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                            f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"])
    pid_file, track = tmp_path / "pen.pid", tmp_path / "run" / "pen-running"
    pid_file.write_text(f"{pen.pid}\n")
    wait_for(lambda: can_connect("127.0.0.1", port), what="the stand-in to listen")
    watcher = threading.Thread(target=vrrp.watch, daemon=True,
                               args=(str(pid_file), f"127.0.0.1:{port}", str(track)),
                               kwargs={"poll": 0.05, "rounds": 2})
    try:
        watcher.start()
        wait_for(lambda: track.exists() and track.read_text() == "0\n", what="0 while it runs")
        pen.kill()
        wait_for(lambda: track.read_text() == "1\n", what="1 once it exits")
        watcher.join(5)
        assert not watcher.is_alive()
    finally:
        pen.kill()
        pen.wait()


def test_watch_keeps_1_without_a_pen(tmp_path):
    track = tmp_path / "pen-running"
    vrrp.watch(str(tmp_path / "missing.pid"), "127.0.0.1:1", str(track), poll=0.01, rounds=2)
    assert track.read_text() == "1\n"
    (tmp_path / "junk.pid").write_text("not a pid")
    vrrp.watch(str(tmp_path / "junk.pid"), "127.0.0.1:1", str(track), poll=0.01, rounds=1)
    assert track.read_text() == "1\n"
