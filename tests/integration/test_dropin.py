"""Drop-in: what a user migrating from the C pen sees, run beside the C pen (/usr/bin/pen)
and driven by its own penctl, curl and raw sockets, on loopback only (issue 15)."""

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import ROOT, Pen, curl, curl_json, free_port, wait_for

PENCTL = "/usr/bin/penctl"
C_PEN = "/usr/bin/pen"
ME = pwd.getpwuid(os.geteuid()).pw_name
USER = ["-u", ME]                  # as root, -C needs -u (both pens)
C_USER = ["-u", "nobody" if os.geteuid() == 0 else ME]

needs_c_pen = pytest.mark.skipif(not (os.path.exists(C_PEN) and os.path.exists(PENCTL)),
                                 reason="needs Debian's pen and penctl: apt-get install pen")


def penctl(target, *words, timeout=15) -> str:
    result = subprocess.run([PENCTL, str(target), *words], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def penctl_ok(ctl) -> bool:
    try:
        return penctl(ctl, "pid", timeout=5).strip().isdigit()
    except (AssertionError, subprocess.TimeoutExpired):
        return False


def idle(ctl):
    wait_for(lambda: all(" conn 0 " in line for line in penctl(ctl, "servers").splitlines()),
             what="connections in flight to end")


class CPen:
    """The C pen in the foreground, its stdout kept apart (it prints -O answers there)."""

    def __init__(self, *options, servers, listen: str, ctl: str) -> None:
        self.proc = subprocess.Popen([C_PEN, "-f", *C_USER, "-C", ctl, *options, listen, *servers],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or penctl_ok(ctl), what="the C pen")
        assert self.proc.poll() is None, "the C pen exited"

    def stop(self) -> str:
        """Its stdout (buffered in a pipe, flushed on exit)."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return out.decode()


def ours(*options, servers, listen: str, ctl: str) -> Pen:
    pen = Pen(*USER, "-C", ctl, *options, listen, *servers)
    wait_for(lambda: pen.proc.poll() is not None or penctl_ok(ctl), what="our pen")
    assert pen.proc.poll() is None, pen.output()
    return pen


def address():
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def shared():
    """A directory both pens may write in after dropping to nobody."""
    path = Path(tempfile.mkdtemp(prefix="pen-dropin-"))
    os.chmod(path, 0o777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


# --- 1. -j: chroot into an empty directory -----------------------------------------------

@pytest.mark.root
def test_chroot_into_an_empty_directory_serves_answers_and_reloads(backends, tmp_path):
    """Everything the process imports later is imported before the chroot: traffic,
    penctl, the status page and a SIGHUP re-read of -F (inside the jail) all work."""
    jail = tmp_path / "jail"
    jail.mkdir()
    config = tmp_path / "pen.cfg"                 # read at start from the real root...
    config.write_text("blacklist 5\n")
    ctl, listen = address(), address()
    pidfile = tmp_path / "pen.pid"
    pen = Pen("-j", str(jail), "-F", str(config), "-p", str(pidfile), "-C", ctl, "-u", "root",
              "-w", "status.html", listen, backends[0].spec, backends[1].spec)
    try:
        wait_for(lambda: pen.proc.poll() is not None or penctl_ok(ctl), what="pen in its jail")
        assert pen.proc.poll() is None, pen.output()
        assert os.readlink(f"/proc/{pen.proc.pid}/root") == str(jail)
        assert {curl_json(f"http://{listen}/", interface=f"127.0.0.{i}")["name"]
                for i in (2, 3, 4, 5)} == {"a", "b"}
        assert penctl(ctl, "blacklist") == "5\n"
        assert penctl(ctl, "status").startswith("<html>")
        assert (jail / "status.html").read_text().startswith("<html>")
        (jail / "status.html").unlink()
        pen.proc.send_signal(signal.SIGUSR1)                  # -w, inside the jail
        wait_for(lambda: (jail / "status.html").exists(), what="SIGUSR1's status page")
        assert "addr 127.0.0.1" in penctl(ctl, "servers")
        inside = jail / str(config).lstrip("/")   # ...and on SIGHUP from inside the jail
        inside.parent.mkdir(parents=True)
        inside.write_text("blacklist 9\n")
        pen.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: penctl(ctl, "blacklist") == "9\n", what="the -F file re-read")
        assert curl_json(f"http://{listen}/")["name"] in ("a", "b")
        assert pidfile.read_text() == str(pen.proc.pid)          # pen's: no newline
    finally:
        assert pen.stop() == 0
    output = pen.log_path.read_text()
    assert "Traceback" not in output and "Error" not in output, output
    assert not pidfile.exists()                  # removed from inside the jail


@pytest.mark.root
def test_chroot_as_a_daemon_leaves_no_stale_pid_file(backends, tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    listen, pidfile = address(), tmp_path / "pen.pid"
    started = subprocess.run([sys.executable, "-m", "pen", "-j", str(jail), "-p", str(pidfile),
                              listen, backends[0].spec], capture_output=True, text=True,
                             timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert started.returncode == 0 and started.stderr == "", started.stderr
    pid = int(pidfile.read_text())
    try:
        assert curl_json(f"http://{listen}/")["name"] == "a"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), what="the pid file to go")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to exit")


# --- 2. -s: stubborn -------------------------------------------------------------------

@needs_c_pen
@pytest.mark.parametrize("which", ["ours", "c"])
def test_stubborn_closes_a_client_whose_server_is_out(backends, which):
    """man pen: "if the initial choice is unavailable, the client connection is closed
    without trying another server"; without -s the client fails over."""
    ctl, listen = address(), address()
    servers = [b.spec for b in backends]
    pen = (CPen("-s", servers=servers, listen=listen, ctl=ctl) if which == "c"
           else ours("-s", servers=servers, listen=listen, ctl=ctl))
    try:
        url = f"http://{listen}/"
        first = curl_json(url, interface="127.0.0.2")["name"]
        index = "ab".index(first)
        penctl(ctl, "server", str(index), "blacklist", "600")
        with pytest.raises(AssertionError, match=r"\((52|56)\)"):    # empty reply / reset
            curl(url, interface="127.0.0.2")
        penctl(ctl, "no", "stubborn")
        assert curl_json(url, interface="127.0.0.2")["name"] == "ab"[1 - index]
    finally:
        pen.stop()


# --- 3. acl N permit|deny country CC ----------------------------------------------------

def test_country_acl_denies_a_country_through_real_sockets(backends, start_pen, tmp_path):
    mmdb_writer = pytest.importorskip("mmdb_writer")
    netaddr = pytest.importorskip("netaddr")
    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True,
                                    database_type="GeoLite2-Country")
    writer.insert_network(netaddr.IPSet(["127.0.0.2/32"]), {"country": {"iso_code": "SE"}})
    writer.insert_network(netaddr.IPSet(["127.0.0.3/32"]), {"country": {"iso_code": "US"}})
    database = tmp_path / "country.mmdb"
    writer.to_db_file(str(database))
    config = tmp_path / "pen.cfg"
    config.write_text(f"geoip_database {database}\nacl 1 deny country SE\n"
                      "acl 1 permit 0.0.0.0 0.0.0.0\nclient_acl 1\n")
    ctl = address()
    pen, port = start_pen(*USER, "-C", ctl, "-F", str(config), servers=[backends[0].spec])
    url = f"http://127.0.0.1:{port}/"
    assert curl_json(url, interface="127.0.0.3")["name"] == "a"           # US
    assert curl_json(url, interface="127.0.0.4")["name"] == "a"           # unknown: no match
    with pytest.raises(AssertionError, match=r"\((52|56)\)"):
        curl(url, interface="127.0.0.2")                                  # SE: denied
    penctl(ctl, "write", str(tmp_path / "out.cfg"))
    written = (tmp_path / "out.cfg").read_text()
    assert f"geoip_database {database}\n" in written
    assert "acl 1 deny country SE\nacl 1 permit 0.0.0.0 0.0.0.0\n" in written


# --- 5. the control port's texts, beside the C pen --------------------------------------

def raw_ask(target: str, data: bytes) -> bytes:
    """Send data and nothing more (no newline, no EOF); read the answer to its end."""
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def held(listen: str, n: int) -> list:
    host, port = listen.rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]


def slots(ctl) -> list[int]:
    """The connection slots in use, read through `connection N` as a script would."""
    return [n for n in range(6) if "\nstate = 2\n" in penctl(ctl, "connection", str(n))]


@needs_c_pen
def test_the_control_port_answers_as_the_c_pen_does(backends, tmp_path, shared):
    unix_server = str(tmp_path / "backend.sock")
    servers = [f"localhost:{backends[0].port}", backends[1].spec, unix_server]
    options = ["-O", "tarpit_acl 2", "-O", "blacklist 7", "-O", "tcp_fastclose"]
    c_ctl, c_listen, ctl, listen = address(), address(), address(), address()
    c_pen = CPen("-p", str(shared / "c.pid"), "-w", str(shared / "c.html"), *options,
                 servers=servers, listen=c_listen, ctl=c_ctl)
    pen = ours("-p", str(shared / "ours.pid"), "-w", str(shared / "ours.html"), *options,
               servers=servers, listen=listen, ctl=ctl)
    try:
        idle(c_ctl)
        idle(ctl)
        # servers: a host name shows its address, a UNIX socket port 1
        assert penctl(ctl, "servers") == penctl(c_ctl, "servers")
        assert re.match(r"0 addr 127\.0\.0\.1 port \d+ .*\n1 .*\n2 addr \S+/backend\.sock "
                        r"port 1 conn 0 ", penctl(ctl, "servers"))
        for line in ("tarpit_acl", "tcp_fastclose", "exit", "connection 3", "connection 500",
                     "close 500", "bogus"):
            assert penctl(ctl, *line.split()) == penctl(c_ctl, *line.split()), line
        assert penctl(ctl, "tarpit_acl") == "tarpit_acl = 2"               # no newline
        # a line without a newline (and without EOF) is answered at once
        for data in (b"mode", b"blacklist"):
            assert raw_ask(ctl, data) == raw_ask(c_ctl, data) != b""
        # connection slots: the first free one from the last one taken
        for target, where in ((ctl, listen), (c_ctl, c_listen)):
            first, second = held(where, 2)
            wait_for(lambda t=target: slots(t) == [0, 1], what="two connections")
            first.close()
            wait_for(lambda t=target: slots(t) == [1], what="the first to end")
            third = held(where, 1)
            wait_for(lambda t=target: slots(t) == [1, 2], what="the third in slot 2")
            page = penctl(target, "status")
            assert "Number of connections: 500 max, 2 used, 2 last<p>" in page
            for sock in (second, *third):
                sock.close()
        # the status page: pen's layout, pen's columns, in pen's order
        idle(ctl)
        idle(c_ctl)
        theirs, mine = penctl(c_ctl, "status"), penctl(ctl, "status")
        assert skeleton(mine) == skeleton(theirs)
        assert pens_cells(mine) == pens_cells(theirs)
        # the pid file: the number alone
        for name in ("c.pid", "ours.pid"):
            assert re.fullmatch(r"\d+", (shared / name).read_text())
    finally:
        pen.stop()
        c_out = c_pen.stop()
    # -O answers on stdout at start-up, as pen prints them
    assert c_out == "tarpit_acl = 27\ndo_cmd: ignoring tcp_fastclose without argument\n"
    assert pen.log_path.read_text().startswith(c_out)


PEN_WIDTHS = (11, 7, 7)             # pen's columns in its three tables; ours follow them


def skeleton(page: str) -> list[str]:
    """The page's lines with values taken out (the time, every cell) and each row cut to
    pen's columns: what a scraper of pen's page relies on."""
    page = re.sub(r"Time [\d: -]+,", "Time T,", page)
    lines, table, column = [], -1, 0
    for line in page.splitlines():
        if line.endswith('<table bgcolor="#c0c0c0">'):
            table += 1
        if line == "<tr>":
            column = 0
        if line.startswith("<td"):
            column += 1
            if table < len(PEN_WIDTHS) and column > PEN_WIDTHS[table]:
                continue
            line = re.sub(r"<td>.*</td>", "<td>V</td>", line)
        lines.append(line)
    return lines


def pens_cells(page: str) -> list[list[str]]:
    """Each row's cells, cut to pen's columns (ours follow them), ages and times aside."""
    tables = re.findall(r"<table.*?</table>", page, re.S)
    out = []
    for index, (table, width) in enumerate(zip(tables, PEN_WIDTHS, strict=True)):
        for row in re.findall(r"<tr>\n(.*?)</tr>", table, re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row)[:width]
            if index == 1 and "<td>" in row:
                cells[2] = "age"            # seconds since the client was seen: timing
            out.append(cells)
    return out


def test_skeleton_ignores_only_values_and_our_columns():
    cells = "".join(f"<td>{n}</td>\n" for n in range(12))
    page = ("<html>\nTime 2026-01-01 00:00:00, 1 servers\n"
            f'<table bgcolor="#c0c0c0">\n<tr>\n{cells}</tr>\n</table>\n')
    assert skeleton(page) == ["<html>", "Time T, 1 servers", '<table bgcolor="#c0c0c0">',
                              "<tr>", *["<td>V</td>"] * 11, "</tr>", "</table>"]


# --- 6. decisions: round-robin's first pick, prio ties, SO_KEEPALIVE --------------------

@needs_c_pen
@pytest.mark.parametrize("mode, specs, expected", [
    (["-r"], ("", ""), ["b", "a", "b", "a"]),                  # first pick: server 1
    (["-r", "-O", "prio"], (":0:0:0:1", ":0:0:0:1"), ["a"] * 4),   # ties: the first
])
def test_selection_matches_the_c_pen(backends, mode, specs, expected):
    servers = [b.spec + extra for b, extra in zip(backends, specs, strict=True)]
    for which in ("ours", "c"):
        ctl, listen = address(), address()
        pen = (CPen(*mode, servers=servers, listen=listen, ctl=ctl) if which == "c"
               else ours(*mode, servers=servers, listen=listen, ctl=ctl))
        try:
            idle(ctl)
            got = [curl_json(f"http://{listen}/", interface=f"127.0.0.{i}")["name"]
                   for i in (2, 3, 4, 5)]
        finally:
            pen.stop()
        assert got == expected, which


def keepalive_timers(port: int) -> list[str]:
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"timer:\((\w+)", out)


@needs_c_pen
def test_client_sockets_have_so_keepalive_as_in_pen(backends):
    for which in ("ours", "c"):
        ctl, listen = address(), address()
        pen = (CPen(servers=[backends[0].spec], listen=listen, ctl=ctl) if which == "c"
               else ours(servers=[backends[0].spec], listen=listen, ctl=ctl))
        try:
            [client] = held(listen, 1)
            port = int(listen.rsplit(":", 1)[1])
            wait_for(lambda p=port: keepalive_timers(p) == ["keepalive"],
                     what=f"{which}: the accepted socket's keepalive timer")
            client.close()
        finally:
            pen.stop()
