"""pen-setup service: the systemd unit pen's arguments call for, verified by systemd."""

import os
import shutil
import subprocess
import sys

import pytest

from pen import service
from pen.errors import UsageError

PEN = [sys.executable, "-m", "pen"]


def unit(*args, name="web"):
    return service.render(name, list(args), PEN).splitlines()


def test_a_plain_pen_runs_as_a_dynamic_user_with_one_capability():
    lines = unit("-H", "80", "10.0.0.1:8080")
    assert "Type=notify" in lines and "NotifyAccess=all" in lines
    assert f"ExecStart={' '.join(PEN)} -f -p /run/pen-web/pen.pid -H 80 10.0.0.1:8080" in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "DynamicUser=yes" in lines
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in lines
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines


def test_features_add_exactly_the_capabilities_they_need():
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN" in unit(
        "-O", "transparent", "80", "a")
    dsr = unit("-O", "dsr_if eth1", "-r", "10.0.0.100:80", "a")
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW" in dsr
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_PACKET" in dsr
    own_user = unit("-u", "pen", "80", "a")
    assert "DynamicUser=yes" not in own_user
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID" in own_user
    assert "ReadWritePaths=/var/log/pen /var/www" in unit(
        "-l", "/var/log/pen/x.log", "-w", "/var/www/pen.html", "80", "a")


@pytest.mark.parametrize("name, args, message", [
    ("web", ["-f", "80", "a"], "leave out -f and -p"),
    ("web", ["-H"], "give pen's listen address"),
    ("we/b", ["80", "a"], "letters, digits"),
    ("web", ["-Y", "80", "a"], "-Y: option -Y not recognized"),
])
def test_mistakes_are_one_line(name, args, message):
    with pytest.raises(UsageError, match=message):
        service.render(name, args, PEN)


@pytest.mark.skipif(not shutil.which("systemd-analyze") and not os.environ.get("CI"),
                    reason="needs systemd-analyze (.ci/run installs systemd)")
def test_systemd_analyze_verifies_the_unit_and_would_catch_a_bad_one(tmp_path):
    good = tmp_path / "pen-web.service"
    good.write_text(service.render("web", ["-H", "-O", "transparent", "80", "127.0.0.1:8080"],
                                   [sys.executable, "-m", "pen"]))
    result = subprocess.run(["systemd-analyze", "verify", str(good)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    bad = tmp_path / "pen-bad.service"
    bad.write_text(good.read_text().replace(sys.executable, "/nonexistent/python3"))
    result = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "/nonexistent/python3" in result.stderr


def test_pen_setup_service_writes_the_unit(tmp_path):
    path = tmp_path / "pen-web.service"
    result = subprocess.run([sys.executable, "-m", "pen.setup_host", "service", "--output",
                             str(path), "web", "80", "127.0.0.1:8080"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "[Service]" in path.read_text() and "wrote" in result.stdout
