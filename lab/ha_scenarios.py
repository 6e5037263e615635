"""The HA scenarios: a fault on the pen pair while a client asks the VIP 20 times a second.

Each measures the outage (the longest time without an answer), prints it and fails when it
exceeds the scenario's bound; each leaves the pair as it found it (HaLab.reset), also when
it fails. Their runs (replies, where the VIP was, the gap) go to story.ha_runs for the
report (ha_picture.py).
"""

import time
from collections import Counter

from pen_lab.errors import LabError
from pen_lab.ha import PRIORITIES, STICKY_SOURCES, VIP, outage
from pen_lab.story import check

MASTER, BACKUP = "penbox1", "penbox2"
MAGLEV = ["-O", "maglev"]
CALM = 2.5  # seconds of normal traffic before a fault, so the picture shows the before


def needs_ha(lab):
    if getattr(lab, "topology", None) != "ha":
        raise LabError("this scenario needs the HA lab: `pen-lab down`, then "
                       "`pen-lab up --topology ha` (or let `pen-lab scenario` bring it up)")


def begin(lab, story):
    """Pen (maglev, the same servers) on both boxes; penbox1 the master."""
    needs_ha(lab)
    story.say(f"two pen boxes share the VIP {VIP}: keepalived (set up by pen-setup vrrp,")
    story.say(f"adverts every 0.2 s) gives it to the healthiest: {MASTER} (priority "
              f"{PRIORITIES[MASTER]}), else {BACKUP} ({PRIORITIES[BACKUP]}).")
    specs = [lab.server_spec(name) for name in lab.servers]
    story.command(f"{MASTER}, {BACKUP}", lab.start_pen(MAGLEV, specs))
    lab.wait_master(MASTER)
    story.say(f"{MASTER} holds {VIP} and relays the clients' requests")


def client_loop(lab, story, duration, sources=()):
    client = lab.clients[0]
    story.command(client, lab.start_probe(client, duration, sources=sources) + " &")
    story.say(f"{client} asks the VIP 20 times a second for {duration:g} s, timing each answer")
    return client, duration


def finish(lab, story, loop, bound, title=None):
    """Wait for the client loop; narrate, record and check its outage."""
    client, duration = loop
    run = lab.probe_result(client, duration)
    run.spans = lab.vip_spans(run.start, run.end)
    run.gap = outage([r.t for r in run.replies if r.server], run.start, run.end)
    run.bound = bound
    run.title = title
    run.dead = {box: list(lab.dead[box]) for box in lab.penboxes}
    story.timelines[-1][1].extend(run.replies)
    story.ha_runs.setdefault(story.scenario, []).append(run)
    failed = sum(1 for r in run.replies if r.server is None)
    relayed = {box: run.by_box.count(box) for box in lab.penboxes}
    story.say(f"{client}: {len(run.replies)} requests, {failed} failed; relayed by "
              + ", ".join(f"{box} {count}" for box, count in relayed.items())
              + ("" if any(relayed.values()) else " (DSR: the servers answer directly)"))
    errors = Counter((r.error or "").split(":")[0] for r in run.replies if r.server is None)
    if errors:
        story.say("failed: " + ", ".join(f"{n} {what}" for what, n in errors.most_common()))
    gap, since, until = run.gap
    story.say(f"outage: {gap:.2f} s without an answer ({since - run.start:.2f} s to "
              f"{until - run.start:.2f} s into the loop); bound {bound:g} s")
    check(gap < bound, f"outage {gap:.2f} s exceeds {bound:g} s")
    return run


def show_notify(lab, story, since, boxes=None):
    story.say("pen-setup's notify hook logged (/var/log/pen-vrrp.log):")
    lines = {}
    for box in boxes or lab.living():
        lines[box] = lab.notify_log(box, since)
        story.show("\n".join(lines[box]) or f"{box}: (nothing)")
    return lines


def guarded(scenario):
    """Run an HA scenario, then put the pair back as it was, whatever happened."""
    def run(lab, story):
        needs_ha(lab)
        try:
            scenario(lab, story)
        finally:
            lab.reset()
    run.__doc__ = scenario.__doc__
    return run


# -- the scenarios -------------------------------------------------------------------

@guarded
def stop_pen(lab, story):
    begin(lab, story)
    since = time.time()
    loop = client_loop(lab, story, 8)
    time.sleep(CALM)
    story.event(f"pen dies on {MASTER} (kill -9)")
    story.command(MASTER, lab.kill_pen(MASTER))
    story.say("the watcher (python3 -m pen.vrrp watch) sees pen's pidfd close and writes 1")
    story.say("into keepalived's track file; keepalived enters FAULT at once, drops the VIP")
    story.say(f"and sends a priority-0 advert: {BACKUP} takes over without waiting.")
    lab.wait_master(BACKUP)
    finish(lab, story, loop, 1.0)
    logs = show_notify(lab, story, since)
    check(any("FAULT" in line for line in logs[MASTER]), f"{MASTER} never logged FAULT")


@guarded
def kill_box(lab, story):
    begin(lab, story)
    loop = client_loop(lab, story, 8)
    time.sleep(CALM)
    story.event(f"docker kill {MASTER}")
    lab.kill_box(MASTER)
    story.command("docker", f"docker kill pen-lab-{MASTER}")
    story.say(f"{BACKUP} hears no advert for 3 x 0.2 s plus its skew (0.01 s), takes the VIP")
    story.say("and sends gratuitous ARP: the clients' next packets go to it.")
    lab.wait_master(BACKUP)
    finish(lab, story, loop, 1.0)


@guarded
def partition(lab, story):
    begin(lab, story)
    since = time.time()
    loop = client_loop(lab, story, 12)
    time.sleep(CALM)
    story.event(f"{MASTER} cut off the client network")
    story.command(MASTER, lab.cut_off(MASTER))
    story.say(f"{MASTER}'s cable is out: its keepalived sees the link go down and gives up the")
    story.say(f"VIP; {BACKUP} misses its adverts (3 x 0.2 s plus skew) and takes it over.")
    lab.wait_for(lambda: lab.relayed_by(lab.clients[0]) == BACKUP,
                 f"{BACKUP} to relay the clients", timeout=10)
    time.sleep(2)
    story.event(f"{MASTER} reconnected")
    story.command(MASTER, lab.heal(MASTER))
    story.say(f"{MASTER} is back as backup, hears {BACKUP}'s lower priority and preempts: it")
    story.say(f"takes the VIP back, {BACKUP} steps down.")
    lab.wait_master(MASTER)
    finish(lab, story, loop, 3.0)
    show_notify(lab, story, since)


@guarded
def failback(lab, story):
    begin(lab, story)
    since = time.time()
    for preempt in (True, False):
        if preempt:
            story.say("preempt (pen-setup's default): a returning higher-priority box takes the "
                      "VIP back")
        else:
            story.say("--nopreempt: the returning box stays backup until the master fails")
            for box, command in lab.restart_keepalived(preempt=False):
                story.command(box, command)
            lab.wait_master(MASTER, timeout=20)
            since = time.time()
        lab.kill_box(MASTER)
        story.command("docker", f"docker kill pen-lab-{MASTER}")
        lab.wait_master(BACKUP)
        lab.revive_box(MASTER, with_pen=False)
        story.command("docker", f"docker start pen-lab-{MASTER}")
        story.say(f"{MASTER} is back (keepalived and the watcher) but its pen is not: FAULT")
        loop = client_loop(lab, story, 10)
        time.sleep(CALM)
        story.event(f"pen starts again on {MASTER}")
        story.command(MASTER, lab.start_pen_on(MASTER))
        if preempt:
            lab.wait_master(MASTER, timeout=15)
            story.say(f"preempt: {MASTER} is healthy again and takes the VIP back; {BACKUP} "
                      "steps down")
        else:
            lab.wait_for(lambda: " is BACKUP" in (lab.notify_log(MASTER) or [""])[-1],
                         f"{MASTER} to join as backup", timeout=15)
            deadline = time.time() + 3
            while time.time() < deadline:   # many adverts: it must not take the VIP
                check(lab.holders() == [BACKUP], f"nopreempt: {MASTER} took the VIP back")
                time.sleep(0.3)
            story.say(f"nopreempt: {MASTER} is healthy and backup; {BACKUP} keeps the VIP")
        finish(lab, story, loop, 1.0, title="preempt" if preempt else "nopreempt")
        show_notify(lab, story, since)


@guarded
def split_brain(lab, story):
    begin(lab, story)
    since = time.time()
    loop = client_loop(lab, story, 12)
    time.sleep(CALM)
    story.event("VRRP between the boxes dropped")
    peer = {MASTER: lab.own_address(BACKUP), BACKUP: lab.own_address(MASTER)}
    for box in lab.penboxes:          # what comes from the other box, what goes to it
        for rule in lab.iptables(box, f"-p vrrp -s {peer[box]} -j DROP",
                                 f"-p vrrp -d {peer[box]} -j DROP"):
            story.command(box, rule)
    lab.wait_for(lambda: sorted(lab.holders()) == lab.penboxes, "both boxes to claim the VIP",
                 timeout=10)
    story.say("neither box hears the other: both are master and both hold the VIP:")
    from pen_lab.ha_lab import status_lines
    story.show("\n".join(status_lines(lab.engine)))
    story.say("the clients follow the last gratuitous ARP; both pens pick the same server for")
    story.say("a client (maglev), so nobody notices.")
    time.sleep(2)
    story.event(f"VRRP flows again, {BACKUP} to {MASTER} first")
    story.command(BACKUP, lab.unblock(BACKUP, f"-p vrrp -d {peer[BACKUP]} -j DROP"))
    story.command(MASTER, lab.unblock(MASTER, f"-p vrrp -s {peer[MASTER]} -j DROP"))
    lab.wait_for(lambda: any("SPLIT BRAIN" in line for line in lab.notify_log(MASTER, since)),
                 f"{MASTER}'s hook to log the split brain", timeout=10)
    story.say(f"{MASTER} hears a lower-priority master: its notify hook logs SPLIT BRAIN")
    for box in lab.penboxes:
        story.command(box, lab.heal(box))
    lab.wait_master(MASTER)
    story.say(f"both ways again: {BACKUP} hears {MASTER}'s adverts and steps back")
    finish(lab, story, loop, 1.0)
    logs = show_notify(lab, story, since)
    check(any("SPLIT BRAIN" in line for line in logs[MASTER]),
          f"{MASTER}'s notify hook did not log the split brain")
    check(any("MASTER" in line for line in logs[BACKUP]), f"{BACKUP} never logged MASTER")


@guarded
def sticky(lab, story):
    client = lab.clients[0]
    story.say("20 client addresses; both pens run -O maglev with the same servers, so the box")
    story.say("that takes over sends every client to the server it had.")
    story.command(client, lab.add_sources(client, STICKY_SOURCES))
    begin(lab, story)
    loop = client_loop(lab, story, 10, sources=STICKY_SOURCES)
    time.sleep(CALM + 0.5)
    killed = time.time()
    story.event(f"docker kill {MASTER}")
    lab.kill_box(MASTER)
    lab.wait_master(BACKUP)
    run = finish(lab, story, loop, 1.0)
    story.say("each client address and its server, before and after the kill:")
    moved = []
    for source in STICKY_SOURCES:
        mine = [(r, box) for r, box in zip(run.replies, run.by_box, strict=True)
                if r.client == source and r.server]
        before = sorted({r.server for r, box in mine if r.t < killed and box == MASTER})
        after = sorted({r.server for r, box in mine if r.t > killed and box == BACKUP})
        story.show(f"{source:13} {'/'.join(before) or '-':8} -> {'/'.join(after) or '-'}")
        check(before and after, f"{source}: no answers both before and after the kill")
        if before != after or len(before) != 1:
            moved.append(source)
    check(not moved, f"clients changed server across the failover: {moved}")
    servers = {r.server for r in run.replies if r.server}
    story.say(f"all 20 kept their server; the clients are spread over {len(servers)} servers")


def junk(lab, story):
    needs_ha(lab)
    try:
        begin(lab, story)
        loop = client_loop(lab, story, 8)
        time.sleep(CALM)
        sender = lab.clients[1]
        story.event(f"{sender} sends junk VRRP")
        shown, out = lab.send_vrrp_junk(sender)
        story.command(sender, shown)
        story.show(out)
        story.say("garbage, truncated adverts and a forged priority-254 advert from a stranger:")
        story.say("keepalived checks the source (check_unicast_src), the checksum and the size")
        finish(lab, story, loop, 0.5)
        check(lab.holders() == [MASTER], f"the junk moved the VIP: {lab.holders()}")
        _, out = lab.run(MASTER, "grep -c -i -E 'invalid|bad|not.*peer|discard|unknown' "
                                 "/var/log/keepalived.log", 5)
        story.say(f"{MASTER}'s keepalived refused {out.strip() or '0'} packet(s) in its log")
    finally:
        lab.reset()


DSR_SIZE, DSR_RATE = 3_000_000, 300_000   # a 10 s download: the master dies halfway


def dsr(lab, story):
    needs_ha(lab)
    import hashlib

    from pen_lab.sample import sample_bytes
    story.say('both boxes run pen -O "dsr_if IF": frames to the VIP go straight on to a server')
    story.say("picked from a slot table built from the server list alone, the same on both")
    story.say("boxes; the servers hold the connections and answer the client directly. So when")
    story.say("the master dies, the backup forwards an established download's packets to the")
    story.say("same server, and the download goes on. What the lab sets up first:")
    try:
        for where, command in lab.dsr_setup(VIP, penboxes=tuple(lab.penboxes)):
            story.command(where, command)
        for box in lab.penboxes:   # the VIP is local on the master: its kernel must not reset
            for rule in lab.iptables(box, f"-d {VIP} -p tcp --dport 80 -j DROP"):
                story.command(box, rule)
        ifname = lab.client_if(MASTER)
        story.command(f"{MASTER}, {BACKUP}", lab.start_pen(
            ["-O", f"dsr_if {ifname}"], [lab.dsr_address(s) for s in lab.servers],
            listen=f"{VIP}:80"))
        client = lab.clients[0]
        lab.wait_for(lambda: lab.holders() == [MASTER], f"{MASTER} to hold the VIP", timeout=20)
        lab.wait_for(lambda: lab.download(client, 1, VIP, timeout=3).server,
                     "pen to learn the servers' MACs and pass a request on", timeout=20)
        loop = client_loop(lab, story, 12)
        downloader = lab.clients[1]
        story.command(downloader, lab.slow_download(downloader, DSR_SIZE, DSR_RATE) + " &")
        story.say(f"{downloader} downloads {DSR_SIZE} bytes at {DSR_RATE} bytes/s (10 s)")
        time.sleep(CALM)
        story.event(f"docker kill {MASTER}")
        lab.kill_box(MASTER)
        story.command("docker", f"docker kill pen-lab-{MASTER}")
        arrived = int(lab.run(downloader, "wc -c < /tmp/ha-dsr.bin", 5)[1].strip() or 0)
        story.say(f"{arrived} bytes had arrived when {MASTER} died")
        check(0 < arrived < DSR_SIZE, f"ha-dsr: the download was not under way ({arrived} B)")
        lab.wait_for(lambda: lab.holders() == [BACKUP], f"{BACKUP} to hold the VIP", timeout=10)
        story.say(f"{BACKUP} holds the VIP: the client's acks reach the same server through it")
        code, size, digest, server, err = lab.download_result(downloader, 60)
        check(code == 0, f"ha-dsr: the download failed: {err.strip()}")
        check(size == DSR_SIZE, f"ha-dsr: got {size} of {DSR_SIZE} bytes")
        check(digest == hashlib.sha256(sample_bytes(DSR_SIZE)).hexdigest(),
              "ha-dsr: the download is not byte-exact")
        story.say(f"{size} bytes from {server}, sha256 matches: the connection outlived its box")
        shown, _, out = lab.penctl("servers", box=BACKUP)
        story.command(BACKUP, shown)
        story.show(out)
        finish(lab, story, loop, 1.0)
    finally:
        try:
            lab.reset()
        finally:
            lab.dsr_teardown()


SCENARIOS = [
    ("ha-stop-pen", "HA: pen killed on the master; the VIP moves in < 1 s", stop_pen),
    ("ha-kill-box", "HA: the master box killed (docker kill); < 1 s", kill_box),
    ("ha-partition", "HA: the master cut off the client network; < 3 s", partition),
    ("ha-failback", "HA: the master returns: preempt and nopreempt", failback),
    ("ha-split-brain", "HA: the boxes cannot hear each other; both claim the VIP", split_brain),
    ("ha-sticky", "HA: 20 clients keep their servers across a failover (maglev)", sticky),
    ("ha-vrrp-junk", "HA: junk VRRP packets never affect serving", junk),
    ("ha-dsr", "HA: with DSR an established download survives the master's death", dsr),
]
