"""The status report: pen's HTML page (escaped), JSON with the same data, Prometheus text."""

import json
import re

from pen import cli, penctl, status
from pen.addr import Endpoint
from pen.state import Server

NOW = 1_800_000_000.0


def busy_state():
    state, _ = cli.parse(["8080", "127.0.0.1:81:10:20:3:1", "[::1]:82"])
    state.started = NOW - 60
    s0, s1 = state.servers
    s0.conn, s0.sx, s0.rx, s0.total = 2, 1000, 5000, 7
    state.blacklist(s1, NOW, 30)
    client = state.clients.touch(__import__("ipaddress").ip_address("10.0.0.5"), NOW - 4)
    client.server, client.connects, client.sx, client.rx = 0, 3, 100, 200
    conn = state.open_connection(("10.0.0.5", 40000))
    conn.server, conn.started, conn.sx, conn.rx = s0, NOW - 2, 10, 20
    return state


def test_snapshot_has_pens_columns():
    snap = status.snapshot(busy_state(), NOW)
    s0, s1 = snap["servers"]
    assert (s0["address"], s0["port"], s0["state"], s0["connections"], s0["max"], s0["hard"],
            s0["sent"], s0["received"], s0["weight"], s0["prio"]) == (
        "127.0.0.1", 81, "up", 2, 10, 20, 1000, 5000, 3, 1)
    assert (s1["state"], s1["blacklisted_for"]) == ("blacklisted", 30)
    assert snap["clients"] == [{"slot": 0, "address": "10.0.0.5", "age": 4, "last_server": 0,
                                "connects": 3, "sent": 100, "received": 200}]
    [conn] = snap["connections"]
    assert (conn["client"], conn["server"], conn["server_address"], conn["age"]) == (
        "10.0.0.5:40000", 0, "127.0.0.1:81", 2)
    assert snap["uptime"] == 60 and snap["conn_max"] == 500 and snap["clients_max"] == 2048


def test_html_page_has_three_tables_with_the_data():
    state = busy_state()
    state.current = 1                 # pen's "current": the server last connected to
    page = status.html(status.snapshot(state, NOW))
    assert page.startswith("<html>") and page.rstrip().endswith("</html>")
    assert page.count("<table") == 3
    assert "Time 2027-01-15 08:00:00, 2 servers, 1 current<p>\n" in page.replace(
        status.time.strftime("%Y-%m-%d %H:%M:%S", status.time.localtime(NOW)), "2027-01-15 08:00:00")
    rows = re.findall(r"<tr>\n(.*?)</tr>", page, re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    # pen's columns and values first (status: when the blacklisting began), then ours
    assert ["0", "127.0.0.1", "0", "81", "2", "10", "20", "1000", "5000", "3", "1", "up"] in cells
    assert ["1", "::1", str(int(NOW)), "82", "0", "0", "0", "0", "0", "0", "0",
            "blacklisted"] in cells
    assert ["0", "10.0.0.5", "4", "0", "3", "100", "200"] in cells
    assert ["0", "-1", "-1", "0", "0", "-1", "0", "10.0.0.5:40000", "127.0.0.1:81", "2", "10",
            "20"] in cells
    assert "Number of connections: 500 max, 1 used, 0 last<p><table" in page


def test_event_counters_and_datagrams_in_every_form():
    state = busy_state()
    state.servers[0].dgrams_sx, state.servers[0].dgrams_rx = 12, 11
    state.counters["udp_refused"] += 2
    state.counters["tls_failures"] += 1
    snap = status.snapshot(state, NOW)
    assert snap["events"] == {"tls_failures": 1, "udp_refused": 2}
    assert (snap["servers"][0]["datagrams_sent"], snap["servers"][0]["datagrams_received"]) == (
        12, 11)
    page = status.html(snap)
    assert page.count("<table") == 4
    assert "<td>udp_refused</td>\n<td>2</td>" in page
    text = status.prometheus(snap)
    assert value(text, "pen_events_total", event="udp_refused") == 2
    assert value(text, "pen_server_sent_datagrams_total", **SERVER0) == 12
    assert status.html(status.snapshot(busy_state(), NOW)).count("<table") == 3   # no events


def test_html_escapes_what_it_shows():
    state = busy_state()
    state.servers.append(Server(2, Endpoint(path="/run/<script>&\"x'.sock")))
    state.open_connection("<b>unix peer</b>")
    page = status.html(status.snapshot(state, NOW))
    assert "<script>" not in page and "<b>" not in page
    assert "/run/&lt;script&gt;&amp;&quot;x&#x27;.sock" in page
    assert "&lt;b&gt;unix peer&lt;/b&gt;" in page


def test_json_is_the_snapshot():
    snap = status.snapshot(busy_state(), NOW)
    assert json.loads(status.json(snap)) == json.loads(json.dumps(snap))


SERVER0 = {"server": "0", "address": "127.0.0.1", "port": "81"}


def value(text, name, **labels):
    """A sample's value, as prometheus_client's own parser reads the text."""
    from prometheus_client.parser import text_string_to_metric_families
    found = [sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name == name and sample.labels == labels]
    assert len(found) == 1, (name, labels)
    return found[0]


def test_prometheus_text_format():
    text = status.prometheus(status.snapshot(busy_state(), NOW))
    assert value(text, "pen_connections") == 1 and value(text, "pen_connections_max") == 500
    assert value(text, "pen_server_sent_bytes_total", **SERVER0) == 1000
    assert value(text, "pen_server_up", server="1", address="::1", port="82") == 0
    assert value(text, "pen_server_connects_total", **SERVER0) == 7
    assert value(text, "pen_server_state", state="up", **SERVER0) == 1
    assert value(text, "pen_server_check_duration_seconds_count", **SERVER0) == 0
    lines = text.splitlines()
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names))


def test_prometheus_label_escaping():
    state = busy_state()
    state.servers.append(Server(2, Endpoint(path='/tmp/a"b\\c\nd')))
    text = status.prometheus(status.snapshot(state, NOW))
    assert 'address="/tmp/a\\"b\\\\c\\nd"' in text


def test_render_formats():
    state = busy_state()
    for fmt in status.FORMATS:
        assert status.render(state, fmt, NOW)


# penctl's --json: pen's answers as data (works against the C pen too)

def test_penctl_json_parses_pens_answers():
    servers = ("0 addr 127.0.0.1 port 81 conn 0 max 10 hard 20 weight 3 prio 1 sx 5 rx 6\n"
               "1 addr ::1 port 82 conn 1 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n")
    assert penctl.as_json("servers", servers)[0] == {
        "server": 0, "addr": "127.0.0.1", "port": 81, "conn": 0, "max": 10, "hard": 20,
        "weight": 3, "prio": 1, "sx": 5, "rx": 6}
    assert penctl.as_json("recent 60", "10.0.0.1 connects 2 sx 3 rx 4\n") == [
        {"address": "10.0.0.1", "connects": 2, "sx": 3, "rx": 4}]
    assert penctl.as_json("mode", "hash no roundrobin no stubborn weight no prio\n") == {
        "hash": True, "roundrobin": False, "stubborn": False, "weight": True, "prio": False}
    assert penctl.as_json("blacklist", "30\n") == {"answer": 30}
    assert penctl.as_json("status json", '{"servers": []}\n') == {"servers": []}
