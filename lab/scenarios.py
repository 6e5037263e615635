"""The lab's scenarios: each sets pen up, drives real clients, and checks what servers saw.

Every scenario takes (lab, story): `lab` is a DockerLab or a LocalLab, `story` narrates.
A scenario raises AssertionError (via check) when pen misbehaves.
"""

import hashlib
import time
from dataclasses import dataclass

from pen_lab import ha_scenarios
from pen_lab.errors import LabError
from pen_lab.flow import Flow
from pen_lab.replies import count_by_server, servers_of
from pen_lab.sample import sample_bytes
from pen_lab.story import check

BLACKLIST = 3  # seconds: short, so a mended server comes back within the scenario


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: object
    local: bool = False  # also runs on loopback (demo --local)
    topology: str = "classic"  # the docker lab it needs (`pen-lab up --topology ...`)


def http_specs(lab):
    return [lab.server_spec(name) for name in lab.servers]


def start(lab, story, options, servers, **kwargs):
    story.command("pen box" if lab.kind == "docker" else "host",
                  lab.start_pen(options, servers, **kwargs))


def show_penctl(lab, story, *words):
    shown, _, out = lab.penctl(*words)
    story.command("pen box" if lab.kind == "docker" else "host", shown)
    story.show(out)
    return out


def show_seen(lab, story, names, service="http"):
    story.say("what each server saw:")
    for name in names:
        entries = [e for e in lab.seen(name) if e["service"] == service]
        peers = sorted({e["peer"] for e in entries})
        story.show(f"{name}: {len(entries)} {service} request(s) from {', '.join(peers) or '-'}")


def pen_flow(lab, caption, clients, servers, saw=lambda name: (), source=None):
    """The usual picture's boxes: clients, then pen, then servers with what each saw.
    `source`: where pen connects to the servers from, when not its own address."""
    flow = Flow(caption)
    for client in clients:
        flow.box(client, client, 0, [lab.client_address(client)])
    pen_lines = [f"clients reach it at {lab.pen_address}"]
    if source or lab.pen_server_side != lab.pen_address:
        pen_lines.append(f"to servers from {source or lab.pen_server_side}")
    flow.box("pen", "pen", 1, pen_lines)
    for server in servers:
        flow.box(server, server, 2, [lab.address(server)], saw=saw(server))
    return flow


def seen_lines(entries, describe):
    """One line per distinct thing a server saw (describe(entry) -> text), with a count."""
    counts = {}
    for entry in entries:
        text = describe(entry)
        counts[text] = counts.get(text, 0) + 1
    lines = []
    for text, n in counts.items():
        first, *rest = text.split("\n")
        lines += [f"{first} (x{n})" if n > 1 else first, *rest]
    return lines


def all_answered(replies, what):
    failed = [r for r in replies if r.server is None]
    check(not failed, f"{what}: {len(failed)} of {len(replies)} requests failed "
                      f"(first: {failed[0].error if failed else ''})")


# -- tracking vs round robin ---------------------------------------------------------

def tracking(lab, story):
    story.say("pen remembers each client's server (client tracking): a returning client")
    story.say("goes back to the same server. With -r it forgets and deals requests in turn.")
    start(lab, story, ["-b", str(BLACKLIST)], http_specs(lab))
    story.say("each client sends 4 requests:")
    picked = {}
    for client in lab.clients:
        replies = lab.http(client, 4)
        story.replies(client, replies)
        all_answered(replies, client)
        picked[client] = set(servers_of(replies))
        check(len(picked[client]) == 1,
              f"tracking: {client} was sent to several servers: {sorted(picked[client])}")
    distinct = set().union(*picked.values())
    check(len(distinct) == min(len(lab.clients), len(lab.servers)),
          f"tracking: new clients should be dealt round robin, got {picked}")
    show_penctl(lab, story, "recent")

    story.say("now with -r (round robin, no tracking):")
    start(lab, story, ["-r", "-b", str(BLACKLIST)], http_specs(lab))
    for client in lab.clients:
        replies = lab.http(client, 2 * len(lab.servers))
        story.replies(client, replies)
        all_answered(replies, client)
        counts = count_by_server(replies)
        check(sorted(counts) == lab.servers and set(counts.values()) == {2},
              f"round robin: {client} should see every server twice, got {counts}")
    show_penctl(lab, story, "servers")


# -- failover ------------------------------------------------------------------------

FAILURES = {
    "stop": "docker stop: the container shuts down, its address stops answering",
    "kill": "docker kill: SIGKILL, the container is gone at once",
    "pause": "docker pause: processes frozen, but the kernel still completes handshakes",
    "disconnect": "docker network disconnect: the server drops off the network",
}
LOCAL_FAILURES = {
    "stop": "SIGTERM: the backend exits, its port refuses connections",
    "kill": "SIGKILL: the backend is gone at once, its port refuses connections",
    "pause": "SIGSTOP: the backend is frozen, but the kernel still completes handshakes",
}


def failover(how):
    def scenario(lab, story):
        about = (FAILURES if lab.kind == "docker" else LOCAL_FAILURES).get(how)
        if about is None:
            raise LabError(f"failover by {how} is not available on the {lab.kind} lab")
        victim = lab.servers[1]
        client = lab.clients[0]
        story.say("pen notices a dead server only when a connect fails (refused or not done")
        story.say("within -t seconds); it then blacklists it for -b seconds and tries the next.")
        start(lab, story, ["-r", "-t", "1", "-b", str(BLACKLIST)], http_specs(lab))
        before = lab.http(client, 2 * len(lab.servers), interval=0.05)
        story.replies(client, before)
        all_answered(before, "before the failure")
        check(sorted(set(servers_of(before))) == lab.servers, "round robin reaches every server")

        story.event(f"{victim} breaks ({about})")
        lab.break_server(victim, how)
        during = lab.http(client, 4 * len(lab.servers), interval=0.1, timeout=3)
        story.replies(client, during)
        lost = [r for r in during if r.server is None]
        check(victim not in servers_of(during), f"{victim} answered while broken")
        if how == "pause":
            # the frozen server's accept queue (backlog 1) swallows two connections; the
            # third handshake is dropped, pen's connect times out and it fails over
            story.say(f"{len(lost)} request(s) hung in the frozen server's accept queue")
            check(len(lost) <= 2, f"pause: {len(lost)} requests lost, expected at most 2")
        else:
            check(not lost, f"{how}: {len(lost)} requests failed, pen should fail over")
        tail = during[-len(lab.servers):]
        all_answered(tail, "after pen noticed the failure")
        show_penctl(lab, story, "servers")

        lab.mend_server(victim, how)
        story.event(f"{victim} is back; pen retries it once -b {BLACKLIST}s have passed")
        deadline = time.monotonic() + BLACKLIST + 10
        returned = []
        while time.monotonic() < deadline and victim not in servers_of(returned):
            returned += lab.http(client, len(lab.servers), interval=0.2)
        story.replies(client, returned)
        check(victim in servers_of(returned), f"{victim} did not come back after the blacklist")
        show_seen(lab, story, lab.servers)
    return scenario


# -- emergency server ----------------------------------------------------------------

def emergency(lab, story):
    story.say("-e names a server of last resort, used only when every server is unavailable.")
    spec = lab.server_spec(lab.emergency)
    start(lab, story, ["-r", "-t", "1", "-b", str(BLACKLIST)], http_specs(lab), emergency=spec)
    client = lab.clients[0]
    before = lab.http(client, len(lab.servers))
    story.replies(client, before)
    all_answered(before, "with all servers up")
    check(lab.emergency not in servers_of(before), "emergency server used while servers are up")
    story.event("every server stops")
    for name in lab.servers:
        lab.break_server(name, "stop")
    during = lab.http(client, 3, timeout=len(lab.servers) + 4)
    story.replies(client, during)
    all_answered(during, "with every server down")
    check(set(servers_of(during)) == {lab.emergency},
          f"with every server down the emergency server answers, got {servers_of(during)}")
    for name in lab.servers:
        lab.mend_server(name, "stop")
    story.event(f"servers are back; pen returns to them after -b {BLACKLIST}s")
    deadline = time.monotonic() + BLACKLIST + 10
    after = []
    while time.monotonic() < deadline and not (after and after[-1].server in lab.servers):
        after += lab.http(client, 1, interval=0.3)
    story.replies(client, after)
    check(after[-1].server in lab.servers,
          "regular servers did not take over again after the blacklist time")


# -- X-Forwarded-For -----------------------------------------------------------------

def xff(lab, story):
    story.say("A server behind pen sees pen's address as the peer. With -H pen adds an")
    story.say("X-Forwarded-For header naming the real client.")
    client = lab.clients[0]
    start(lab, story, ["-r"], http_specs(lab))
    plain = lab.http(client, 1)
    all_answered(plain, "without -H")
    story.say(f"without -H: peer {plain[0].peer}, X-Forwarded-For {plain[0].xff}")
    check(plain[0].xff is None, "X-Forwarded-For present without -H")
    story.picture(xff_flow(lab, "without -H: the server sees only pen", client, plain))
    start(lab, story, ["-r", "-H"], http_specs(lab))
    marked = lab.http(client, 2)
    all_answered(marked, "with -H")
    story.say(f"with -H: peer {marked[0].peer}, X-Forwarded-For {marked[0].xff}")
    expected = lab.client_address(client)
    check(all(r.xff == expected for r in marked),
          f"X-Forwarded-For should be {expected}, got {[r.xff for r in marked]}")
    story.picture(xff_flow(lab, "with -H: pen names the client in X-Forwarded-For", client,
                           marked))


def xff_flow(lab, caption, client, replies):
    """What each answering server reported seeing: the TCP peer and the header."""
    by_server = {}
    for reply in replies:
        by_server.setdefault(reply.server, []).append(reply)
    flow = pen_flow(lab, caption, [client], by_server, lambda name: seen_lines(
        by_server[name], lambda r: f"peer {r.peer}\nX-Forwarded-For {r.xff or '(none)'}"))
    flow.arrow(client, "pen", f"GET / ({len(replies)}x)")
    for name, got in by_server.items():
        xff = {r.xff for r in got if r.xff}
        header = f"\nX-Forwarded-For: {', '.join(sorted(xff))}" if xff else ""
        flow.arrow("pen", name, f"GET /{header}")
    return flow


# -- control ACL ---------------------------------------------------------------------

def control_acl(lab, story):
    story.say("The control port (-C) has no password; control_acl decides who may use it.")
    story.say("The lab permits only 127.0.0.1 (acl 9 permit 127.0.0.1; control_acl 9).")
    start(lab, story, ["-r"], http_specs(lab))
    out = show_penctl(lab, story, "servers")
    lines = [line for line in out.splitlines() if " addr " in line]
    check(len(lines) == len(lab.servers), f"penctl from the pen box: expected "
                                          f"{len(lab.servers)} server lines, got {out!r}")
    client = lab.clients[0]
    shown, _, out = lab.penctl("servers", client=client)
    story.command(client, shown)
    story.show(out)
    check(" addr " not in out, f"control port answered {client}: {out!r}")
    story.say(f"refused: {client} is not in acl 9")
    flow = Flow("the control port answers the pen box itself and refuses a client")
    here = "pen box" if lab.kind == "docker" else "host"
    flow.box("local", f"penctl on the {here}", 0, ["from 127.0.0.1"])
    flow.box(client, f"penctl on {client}", 0, [f"from {lab.client_address(client)}"])
    first = (out.strip().splitlines() or ["(connection closed)"])[0].rpartition(": ")[2][:40]
    flow.box("control", "pen's control port (-C)", 1, ["acl 9 permit 127.0.0.1", "control_acl 9"],
             saw=[f"127.0.0.1: allowed, {len(lines)} server lines",
                  f"{lab.client_address(client)}: refused"])
    flow.arrow("local", "control", f"servers\n-> {len(lines)} server lines")
    flow.arrow(client, "control", f"servers\n-> {first or '(nothing)'}", style="refused")
    story.picture(flow)


# -- docker-only scenarios -----------------------------------------------------------

def transparent(lab, story):
    story.say("-O transparent: pen connects to the server FROM the client's own address")
    story.say("(IP_TRANSPARENT). Replies must come back through the pen box, where a")
    story.say("policy route hands them to pen's socket:")
    for command in lab.transparent_setup():
        story.command("pen box", command)
    start(lab, story, ["-r", "-O", "transparent"], http_specs(lab))
    for client in lab.clients:
        replies = lab.http(client, 2)
        story.replies(client, replies)
        all_answered(replies, client)
        expected = lab.client_address(client)
        check(all(r.peer == expected for r in replies),
              f"transparent: servers should see {expected}, saw {[r.peer for r in replies]}")
    show_seen(lab, story, lab.servers)
    seen = {name: [e for e in lab.seen(name) if e["service"] == "http"] for name in lab.servers}
    flow = pen_flow(lab, "-O transparent: each server sees the client's own address",
                    lab.clients, lab.servers,
                    lambda name: seen_lines(seen[name], lambda e: f"peer {e['peer']}"),
                    source="each client's address")
    for client in lab.clients:
        flow.arrow(client, "pen", "GET /")
    for name, entries in seen.items():
        peers = sorted({e["peer"] for e in entries})
        if peers:
            flow.arrow("pen", name, "connects from\n" + ", ".join(peers))
    story.picture(flow)


def tls(lab, story):
    story.say("-E/-K: pen terminates TLS; the servers get plain HTTP (-H marks it https).")
    cert, key = lab.make_certificate()
    start(lab, story, ["-r", "-H", "-E", cert, "-K", key], http_specs(lab), service="https")
    client = lab.clients[0]
    replies = lab.http(client, len(lab.servers), scheme="https")
    story.replies(client, replies)
    all_answered(replies, "https through pen")
    check(all(r.xff == lab.client_address(client) for r in replies), "X-Forwarded-For over TLS")
    check(all(r.proto == "https" for r in replies),
          f"X-Forwarded-Proto should be https, got {[r.proto for r in replies]}")
    answered = sorted(set(servers_of(replies)))
    flow = pen_flow(lab, "-E: TLS from the client to pen, plain HTTP from pen to the servers",
                    [client], answered, lambda name: seen_lines(
                        [r for r in replies if r.server == name],
                        lambda r: f"peer {r.peer}\nX-Forwarded-For {r.xff}\n"
                                  f"X-Forwarded-Proto {r.proto}"))
    flow.arrow(client, "pen", f"TLS to :{lab.ports['https']} ({len(replies)}x)", style="tls")
    for name in answered:
        flow.arrow("pen", name, f"plain HTTP to :{lab.ports['http']}\n"
                                f"+ X-Forwarded-Proto: https")
    story.picture(flow)


def dns(lab, story):
    story.say("-U: pen balances UDP. dig asks for a TXT record; each server answers its name.")
    start(lab, story, ["-U", "-r"], [lab.server_spec(s, "dns") for s in lab.servers],
          service="dns")
    answers = []
    for client in lab.clients:
        shown, out = lab.dig(client, "who.lab", "TXT")
        story.command(client, shown)
        story.show(out)
        answers.append(out.strip().strip('"'))
    check(all(a in lab.servers for a in answers), f"dig answers should name servers: {answers}")
    shown, out = lab.dig(lab.clients[0], "who.lab", "A")
    story.command(lab.clients[0], shown)
    story.show(out)
    check(out.strip() in [lab.address(s) for s in lab.servers], f"A answer: {out!r}")
    show_seen(lab, story, lab.servers, "dns")
    seen = {name: [e for e in lab.seen(name) if e["service"] == "dns"] for name in lab.servers}
    flow = pen_flow(lab, "-U: each query and its answer pass through pen", lab.clients,
                    lab.servers, lambda name: seen_lines(
                        seen[name], lambda e: f"query from {e['peer']}"))
    for client, answer in zip(lab.clients, answers, strict=True):
        flow.arrow(client, "pen", "TXT who.lab?", style="udp")
        flow.arrow("pen", client, f'answer "{answer}"', style="reply")
    for name, entries in seen.items():
        if entries:
            flow.arrow("pen", name, f"{len(entries)} query(ies)", style="udp")
            flow.arrow(name, "pen", f"{len(entries)} answer(s)", style="reply")
    story.picture(flow)


def tftp(lab, story):
    from pen_lab.tftpd import SAMPLE_NAME, SAMPLE_SIZE
    story.say("TFTP through pen -U: a get and a put, checked byte for byte. (A TFTP server")
    story.say("answers from a new port; the C pen 0.34 drops those replies.)")
    start(lab, story, ["-U", "-r"], [lab.server_spec(s, "tftp") for s in lab.servers],
          service="tftp")
    client = lab.clients[0]
    shown, digest = lab.tftp_get(client, SAMPLE_NAME)
    story.command(client, shown)
    check(digest != hashlib.sha256(b"").hexdigest(), "tftp get: nothing arrived")
    check(digest == hashlib.sha256(sample_bytes(SAMPLE_SIZE)).hexdigest(),
          f"tftp get: sha256 {digest!r} differs from the served file")
    story.say("get: byte-exact")
    shown, name, digest = lab.tftp_put(client)
    story.command(client, shown)
    stored = {s: lab.upload_digest(s, name) for s in lab.servers}
    holders = [s for s, d in stored.items() if d]
    check(len(holders) == 1 and stored[holders[0]] == digest,
          f"tftp put: expected one byte-exact copy, got {stored}")
    story.say(f"put: stored byte-exact on {holders[0]}")
    seen = {name: [e for e in lab.seen(name) if e["service"] == "tftp"] for name in lab.servers}
    involved = [name for name in lab.servers if seen[name]]
    flow = pen_flow(lab, "-U: a TFTP get and put; the server answers from a new port",
                    [client], involved, lambda name: seen_lines(
                        seen[name], lambda e: f"{e['op']} {e['file']}\nfrom {e['peer']}"))
    flow.arrow(client, "pen", f"get {SAMPLE_NAME}\nput {name}", style="udp")
    flow.arrow("pen", client, f"{SAMPLE_NAME}: {SAMPLE_SIZE} bytes, byte-exact",
               style="reply")
    for server in involved:
        ops = " + ".join(sorted({e["op"] for e in seen[server]}))
        flow.arrow("pen", server, f"{ops} requests, blocks", style="udp")
        flow.arrow(server, "pen", "data, acks\n(from its transfer port)", style="reply")
    story.picture(flow)


def smtp(lab, story):
    story.say("SMTP through pen: swaks sends mail; the server that took it files it in a maildir.")
    start(lab, story, ["-r"], [lab.server_spec(s, "smtp") for s in lab.servers], service="smtp")
    filed = {}  # client -> (subject, server)
    for number, client in enumerate(lab.clients, 1):
        subject = f"lab mail {number} {time.time():.0f}"
        shown, code, out = lab.send_mail(client, subject)
        story.command(client, shown)
        story.show("\n".join(out.splitlines()[-3:]))
        check(code == 0, f"swaks from {client} failed: {out[-300:]}")
        found = {s: lab.mail_with_subject(s, subject) for s in lab.servers}
        holders = [s for s, text in found.items() if text]
        check(len(holders) == 1, f"mail {subject!r} should be in one maildir: {holders}")
        check(f"X-Lab-Backend: {holders[0]}" in found[holders[0]], "maildir copy is marked")
        story.say(f"delivered into {holders[0]}'s maildir")
        filed[client] = (subject, holders[0])
    seen = {name: [e for e in lab.seen(name) if e["service"] == "smtp"] for name in lab.servers}
    involved = sorted({server for _, server in filed.values()})
    flow = pen_flow(lab, "each mail's path: client, pen, a server, that server's maildir",
                    lab.clients, involved, lambda name: seen_lines(
                        seen[name], lambda e: f"SMTP from {e['peer']}"))
    for server in involved:
        flow.box(f"{server}-maildir", f"{server}'s maildir", 3, ["/srv/lab/maildir/new"],
                 saw=[f'"{s}"' for s, held in filed.values() if held == server])
    for client, (_subject, server) in filed.items():
        flow.arrow(client, "pen", "SMTP to :25")
        flow.arrow("pen", server, f"{client}'s mail")
        flow.arrow(server, f"{server}-maildir", "files it", style="file")
    story.picture(flow)


# -- direct server return --------------------------------------------------------------

DSR_SIZE = 2_000_000  # bytes each client downloads


def dsr(lab, story):
    story.say('-O "dsr_if IF": pen accepts no connection. It answers ARP for the virtual IP,')
    story.say("and passes each frame from a client on to a server (rewriting only the MAC")
    story.say("addresses); the server holds the VIP on its loopback and answers the client")
    story.say("directly. The servers join the client net; what the lab sets up first:")
    vip = lab.dsr_vip
    try:
        for where, command in lab.dsr_setup(vip):
            story.command(where, command)
        ifname = lab.interface("penbox")
        start(lab, story, ["-O", f"dsr_if {ifname}"], [lab.dsr_address(s) for s in lab.servers],
              listen=f"{vip}:{lab.ports['http']}")
        lab.wait_for(lambda: lab.download(lab.clients[0], 1, vip, timeout=3).server,
                     "pen to learn the servers' MACs and pass a request on", timeout=20)
        lab.clear_seen()
        before = lab.nic_bytes("penbox", ifname)
        story.say(f"each client downloads {DSR_SIZE} bytes from http://{vip}/:")
        got = {}
        for client in lab.clients:
            download = lab.download(client, DSR_SIZE, vip)
            story.command(client, download.command)
            check(download.error is None, f"dsr: {client}'s download failed: {download.error}")
            check(download.size == DSR_SIZE, f"dsr: {client} got {download.size} bytes")
            check(download.sha256 == hashlib.sha256(sample_bytes(DSR_SIZE)).hexdigest(),
                  f"dsr: {client}'s download is not byte-exact")
            story.show(f"{download.size} bytes from {download.server}, sha256 matches")
            got[client] = download
        after = lab.nic_bytes("penbox", ifname)
        received, sent = after[0] - before[0], after[1] - before[1]
        total = sum(d.size for d in got.values())
        story.say(f"the clients got {total} bytes; meanwhile the pen box's {ifname} received "
                  f"{received} and sent {sent} bytes: the requests and acks, not the replies")
        check(received < total / 4 and sent < total / 4,
              f"dsr: the pen box carried {received}/{sent} bytes of {total}: "
              f"replies went through it")
        show_penctl(lab, story, "servers")
        seen = {name: [e for e in lab.seen(name) if e["service"] == "http"]
                for name in lab.servers}
        show_seen(lab, story, lab.servers)
        for client, download in got.items():
            peers = {e["peer"] for e in seen[download.server]}
            check(lab.client_address(client) in peers,
                  f"dsr: {download.server} should see {client} itself, saw {sorted(peers)}")
        story.picture(dsr_flow(lab, vip, got, seen, received, sent))
    finally:
        lab.stop_pen()
        lab.dsr_teardown()


def dsr_flow(lab, vip, got, seen, received, sent):
    involved = sorted({d.server for d in got.values()})
    flow = Flow("direct server return: the replies go from the servers to the clients, "
                "not through pen")
    for client, download in got.items():
        flow.box(client, client, 0, [lab.client_address(client)],
                 saw=[f"got {download.size} bytes", f"from {vip}, by {download.server}"])
    flow.box("pen", "pen (-O dsr_if)", 1, [f"answers ARP for the VIP {vip}",
                                          "accepts no connection"],
             saw=[f"its box received {received} bytes", f"and sent {sent} bytes"])
    for server in involved:
        flow.box(server, server, 2, [lab.dsr_address(server), f"{vip} on lo"],
                 saw=seen_lines(seen[server], lambda e: f"peer {e['peer']}"))
    for client in got:
        flow.arrow(client, "pen", f"to {vip}: SYN,\nrequest, acks")
    for server in involved:
        flow.arrow("pen", server, "the same frames,\nnew MAC address")
    for client, download in got.items():
        flow.arrow(download.server, client, f"{download.server} -> {client}: "
                                            f"{download.size} bytes from {vip}", style="reply")
    return flow


SCENARIOS = {s.name: s for s in [
    Scenario("tracking", "client tracking vs round robin (-r)", tracking, local=True),
    *[Scenario(f"failover-{how}", f"failover when a server is {done}", failover(how),
               local=how != "disconnect") for how, done in
      [("stop", "stopped"), ("kill", "killed"), ("pause", "paused"),
       ("disconnect", "disconnected")]],
    Scenario("emergency", "the emergency server (-e)", emergency, local=True),
    Scenario("xff", "X-Forwarded-For (-H)", xff, local=True),
    Scenario("control-acl", "control port guarded by control_acl", control_acl, local=True),
    Scenario("transparent", "transparent mode: servers see the client", transparent),
    Scenario("tls", "TLS termination (-E)", tls),
    Scenario("dns", "DNS over UDP (-U)", dns),
    Scenario("tftp", "TFTP get and put over UDP (-U)", tftp),
    Scenario("smtp", "SMTP to a maildir", smtp),
    Scenario("dsr", "direct server return: servers answer the clients themselves", dsr),
    *[Scenario(name, title, run, topology="ha") for name, title, run in ha_scenarios.SCENARIOS],
]}

TOUR = ["tracking", "failover-stop", "emergency", "xff", "control-acl", "smtp", "dsr"]
LOCAL_TOUR = ["tracking", "failover-kill", "emergency", "xff", "control-acl"]
HA_TOUR = [name for name, _, _ in ha_scenarios.SCENARIOS]


def run_scenario(name, lab, story):
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise LabError(f"scenario: unknown {name!r} (known: {', '.join(SCENARIOS)})")
    if lab.kind == "local" and not scenario.local:
        raise LabError(f"scenario {name!r} needs docker; locally: {', '.join(LOCAL_TOUR)}")
    story.begin(name, scenario.title)
    lab.clear_seen()
    try:
        scenario.run(lab, story)
    finally:
        lab.stop_pen()
    story.say(f"PASS {name}")
