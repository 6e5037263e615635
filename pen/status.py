"""The status report (pen's -w page, `status`, SIGUSR1) as HTML, JSON and Prometheus text.

Pure: `snapshot(state, now)` copies what the report shows into plain data, and each
renderer turns that data into text. Nothing here touches a socket or a file.
"""

from __future__ import annotations

import html as _html
import json as _json
import time

# imported at start-up, not on first use: after -u drops privileges, or in a chroot, the
# Python library may not be readable any more
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import __version__, health
from .state import State

FORMATS = ("html", "json", "prometheus")


def _peer(address) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address else "unix"


def server_state(server, now: float) -> str:
    if server.endpoint is None:
        return "unused"
    if server.admin != "ready":
        return server.admin                   # drain, maint: the operator's word
    if not server.health.up:
        return "down"                         # by its health check
    if server.blacklisted(now):
        return "blacklisted"
    if server.full(False):
        return "full"
    return "up"


def connection_row(conn, now: float) -> dict:
    server = conn.server
    return {"id": conn.id, "client": _peer(conn.client),
            "downfd": conn.downfd, "upfd": conn.upfd,
            "client_slot": conn.entry.slot if conn.entry is not None else -1,
            "server": server.index if server else None,
            "server_address": str(server.endpoint) if server and server.endpoint else None,
            "age": round(max(now - conn.started, 0), 1), "sent": conn.sx, "received": conn.rx}


def _check_kind(state: State, server) -> str | None:
    check = health.effective(state.health, server)
    return check.kind if check else None


def snapshot(state: State, now: float | None = None) -> dict:
    """Everything the status report shows, as plain data (the JSON form)."""
    now = time.time() if now is None else now
    servers = [{
        "index": s.index, "address": s.address, "port": s.listed_port,
        "state": server_state(s, now),
        # pen's "status": when the blacklisting began (its end less the blacklist time)
        "blacklisted_at": int(s.blacklist_until - state.blacklist_time) if s.blacklist_until else 0,
        "blacklisted_for": round(max(s.blacklist_until - now, 0), 1),
        "connections": s.conn, "max": s.max, "hard": s.hard,
        "sent": s.sx, "received": s.rx, "weight": s.weight, "prio": s.prio, "acl": s.acl,
        "connects": s.total, "failures": s.failures,
        "datagrams_sent": s.dgrams_sx, "datagrams_received": s.dgrams_rx,
        "check": _check_kind(state, s), "last_check": s.health.last or None,
        "checks": s.health.checks, "state_since": round(max(now - s.health.since, 0), 1),
        "check_durations": list(s.health.durations),
        "check_duration_sum": round(s.health.duration_sum, 6),
    } for s in state.servers]
    clients = [{
        "slot": c.slot, "address": str(c.ip), "age": round(max(now - c.last, 0), 1),
        "last_server": c.server,
        "connects": c.connects, "sent": c.sx, "received": c.rx,
    } for c in state.clients]
    connections = [connection_row(c, now) for c in list(state.connections.values())]
    return {
        "version": __version__, "time": round(now, 3),
        "uptime": round(max(now - state.started, 0), 1),
        "listen": str(state.listen) if state.listen else None,
        "mode": {name: bool(getattr(state, name))
                 for name in ("hash", "roundrobin", "stubborn", "weight", "prio")},
        "servers": servers,
        "clients_max": state.clients.slots, "clients": clients,
        "conn_max": state.conn_max, "connections": connections,
        "last_connection": state.last_slot, "current_server": state.current,
        "events": dict(sorted(state.counters.items())),   # udp_refused, tls_failures...
        "accepted": state.accepted,
        "sessions": len(state.connections),       # (UDP: one connection per session)
    } | ({"workers": state.worker_table} if state.worker_table else {})


# --- HTML: pen's page, byte for byte in its layout, so that its scrapers keep working -----
# Each table has pen's columns first, in pen's order and with pen's values; pen-lb's own
# columns (the servers' state, the connections' addresses, age and bytes) follow them.

SERVER_COLUMNS = (("server", "index"), ("address", "address"), ("status", "blacklisted_at"),
                  ("port", "port"), ("connections", "connections"), ("max soft", "max"),
                  ("max hard", "hard"), ("sent", "sent"), ("received", "received"),
                  ("weight", "weight"), ("prio", "prio"), ("state", "state"))
HEALTH_COLUMNS = (("check", "check"), ("last check", "last_check"),
                  ("since(secs)", "state_since"))      # only once checks or states are used
CLIENT_COLUMNS = (("client", "slot"), ("address", "address"), ("age(secs)", "age"),
                  ("last server", "last_server"), ("connects", "connects"),
                  ("sent", "sent"), ("received", "received"))
CONNECTION_COLUMNS = (("connection", "id"), ("downfd", "downfd"), ("upfd", "upfd"),
                      ("pending data down", "pending"), ("pending data up", "pending"),
                      ("client", "client_slot"), ("server", "server"),
                      ("client address", "client"), ("server address", "server_address"),
                      ("age(secs)", "age"), ("sent", "sent"), ("received", "received"))


def _cell(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _html.escape("-" if value is None else str(value))


def _table(columns, rows: list[dict]) -> str:
    out = ['<table bgcolor="#c0c0c0">\n<tr>\n']
    out += [f'<td bgcolor="#80f080">{_cell(title)}</td>\n' for title, _ in columns]
    out.append("</tr>\n")
    for row in rows:
        out.append("<tr>\n")
        out += [f"<td>{_cell(row.get(key, 0))}</td>\n" for _, key in columns]
        out.append("</tr>\n")
    out.append("</table>\n")
    return "".join(out)


def html(snap: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["time"]))
    checked = any(s["check"] or s["state"] in ("drain", "maint") for s in snap["servers"])
    clients = [dict(c, age=int(c["age"])) for c in snap["clients"]]       # pen: whole seconds
    connections = [dict(c, server=-1 if c["server"] is None else c["server"])
                   for c in snap["connections"]]
    out = ['<html>\n<head>\n<title>Pen status page</title>\n</head>\n'
           '<body bgcolor="#ffffff"><h1>Pen status page</h1>\n',
           f"Time {when}, {len(snap['servers'])} servers, {snap['current_server']} current<p>\n",
           _table(SERVER_COLUMNS + (HEALTH_COLUMNS if checked else ()), snap["servers"]),
           f"<h2>Active clients</h2>Max number of clients: {snap['clients_max']}<p>",
           _table(CLIENT_COLUMNS, sorted(clients, key=lambda c: c["slot"])),
           f"<h2>Active connections</h2>Number of connections: {snap['conn_max']} max, "
           f"{len(connections)} used, {snap['last_connection']} last<p>",
           _table(CONNECTION_COLUMNS, sorted(connections, key=lambda c: c["id"]))]
    if snap["events"]:
        out.append("<h2>Events</h2>")
        out.append(_table((("event", "event"), ("count", "count")),
                          [{"event": k, "count": v} for k, v in snap["events"].items()]))
    out.append("</body>\n</html>\n")
    return "".join(out)


def json(snap: dict) -> str:
    return _json.dumps(snap, indent=1) + "\n"


# --- Prometheus (prometheus_client's metric families and exposition) --------------------

SERVER_METRICS = (
    ("pen_server_connections", "gauge", "connections", "Connections open to the server."),
    ("pen_server_connections_max", "gauge", "max", "Soft connection limit (0 = none)."),
    ("pen_server_connects_total", "counter", "connects", "Connections made to the server."),
    ("pen_server_failures_total", "counter", "failures", "Connects to the server that failed."),
    ("pen_server_sent_bytes_total", "counter", "sent", "Bytes sent to the server."),
    ("pen_server_received_bytes_total", "counter", "received", "Bytes received from the server."),
    ("pen_server_sent_datagrams_total", "counter", "datagrams_sent",
     "UDP datagrams sent to the server."),
    ("pen_server_received_datagrams_total", "counter", "datagrams_received",
     "UDP datagrams received from the server."),
    ("pen_server_weight", "gauge", "weight", "Server weight."),
    ("pen_server_prio", "gauge", "prio", "Server priority."),
    ("pen_server_checks_total", "counter", "checks", "Health checks made."),
    ("pen_server_state_seconds", "gauge", "state_since",
     "Seconds since the server's state (up, down, drain, maint) last changed."),
)
CHECK_STATES = ("up", "down", "drain", "maint")
WHO = ("server", "address", "port")


def families(snap: dict) -> list:
    """The snapshot as prometheus_client metric families (today's names and labels)."""
    kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
    servers = snap["servers"]

    def who(s):
        return [str(s["index"]), str(s["address"]), str(s["port"])]

    def single(name, kind, text, value):
        return kinds[kind](name, text, value=value)

    def per_server(name, kind, text, value):
        family = kinds[kind](name, text, labels=WHO)
        for s in servers:
            family.add_metric(who(s), value(s))
        return family

    out = [
        single("pen_up", "gauge", "The balancer is running.", 1),
        single("pen_uptime_seconds", "gauge", "Seconds since start.", snap["uptime"]),
        single("pen_connections", "gauge", "Connections in flight.", len(snap["connections"])),
        single("pen_connections_max", "gauge", "Connection limit (-x).", snap["conn_max"]),
        single("pen_clients", "gauge", "Clients in the client table.", len(snap["clients"])),
        single("pen_clients_max", "gauge", "Client table slots (-c).", snap["clients_max"]),
        single("pen_accepts_total", "counter", "TCP connections accepted.", snap["accepted"]),
        single("pen_sessions", "gauge", "UDP sessions (with -U), else connections in flight.",
               snap["sessions"]),
        single("pen_tls_failures_total", "counter", "TLS handshakes that failed.",
               snap["events"].get("tls_failures", 0)),
        single("pen_refusals_total", "counter",
               "Clients that got no server (denied, or none would take them).",
               snap["events"].get("no_server", 0) + snap["events"].get("udp_no_server", 0)),
        per_server("pen_server_up", "gauge",
                   "1 if the server is available (not blacklisted, down, drained, in "
                   "maintenance, unused).", lambda s: int(s["state"] in ("up", "full"))),
        per_server("pen_server_blacklisted_seconds", "gauge", "Seconds of blacklisting left.",
                   lambda s: s["blacklisted_for"]),
    ]
    out += [per_server(name, kind, text, lambda s, key=key: s[key])
            for name, kind, key, text in SERVER_METRICS]
    state = GaugeMetricFamily("pen_server_state", "1 for the server's state, 0 for the others.",
                              labels=WHO + ("state",))
    durations = HistogramMetricFamily("pen_server_check_duration_seconds",
                                      "How long health checks took.", labels=WHO)
    for s in servers:
        word = s["state"] if s["state"] in CHECK_STATES else "up" if s["state"] == "full" \
            else "down"
        for name in CHECK_STATES:
            state.add_metric(who(s) + [name], int(name == word))
        counts, running = s["check_durations"], 0
        buckets = []
        for bound, count in zip([*map(str, health.DURATION_BUCKETS), "+Inf"], counts, strict=True):
            running += count
            buckets.append((bound, running))
        durations.add_metric(who(s), buckets, s["check_duration_sum"])
    events = CounterMetricFamily("pen_events_total",
                                 "Events counted (udp_refused, tls_failures...).",
                                 labels=("event",))
    for name, count in snap["events"].items():
        events.add_metric([name], count)
    return out + [state, durations, events]


class _Snapshot:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snap: dict) -> None:
        self.snap = snap

    def collect(self):
        return families(self.snap)


def prometheus(snap: dict) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snap))
    return generate_latest(registry).decode("utf-8")


def render(state: State, fmt: str = "html", now: float | None = None) -> str:
    return {"html": html, "json": json, "prometheus": prometheus}[fmt](snapshot(state, now))
