"""The running HA lab (see ha.py for the topology): pen, keepalived and faults in two boxes."""

import calendar
import io
import shlex
import tarfile
import time

import docker.errors

from pen_lab.docker_lab import CONTROL_PORT, LABEL, NETWORKS, OURS, PEN_LOG, DockerLab
from pen_lab.errors import LabError
from pen_lab.ha import (
    CHAIN,
    KEEPALIVED_CONF,
    KEEPALIVED_LOG,
    NOTIFY_LOG,
    PEN_PID,
    PRIORITIES,
    ROUTER_ID,
    STICKY_SOURCES,
    VIP,
    VIP_LOG,
    net_address,
    parse_probe,
    penbox_host,
    setup_argv,
    vip_events,
    vip_spans,
)
from pen_lab.pencmd import pen_argv, penctl_argv, shown

# -- the lab -------------------------------------------------------------------------

class HaLab(DockerLab):
    """The running HA lab: two pen boxes, the VIP between them, clients asking the VIP."""

    def __init__(self, engine, pen, say):
        super().__init__(engine, pen, say)
        self.penboxes = sorted(PRIORITIES)
        self.pen_address = VIP
        self.pen_server_side = net_address("server", penbox_host(1))
        self.server_side = {net_address("server", penbox_host(int(b[-1]))): b
                            for b in self.penboxes}
        self.dead = {box: [] for box in self.penboxes}   # (from, to) a box was down
        self.started_pen = None                            # (argv) to start again on revival
        self.preempt = True

    # -- bringing a box to life ----------------------------------------------------
    def client_if(self, box):
        prefix = NETWORKS["client"][1] + "."
        _, out = self.run(box, "ip -o -4 addr show", 5)
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].startswith(prefix) and \
                    not fields[3].startswith(VIP + "/"):
                return fields[1]
        raise LabError(f"{box} has no interface on the client net")

    def prepare(self, say=None):
        """keepalived in both boxes, configured by pen-setup vrrp; narrated once."""
        say = say or self.say
        for box in self.penboxes:
            for where, command in self.start_box_services(box):
                say(f"[{where}]$ {command}")

    def start_box_services(self, box):
        """The VIP monitor, the watcher and keepalived (configured by pen-setup) in a box;
        returns what it ran, for narration."""
        client_if = self.client_if(box)
        setup = shlex.join(setup_argv(box, client_if, self.preempt))
        self.must(box, setup + " 2>&1", f"pen-setup vrrp failed in {box}", 20)
        watch = (f"python3 -m pen.vrrp watch {PEN_PID} --check 127.0.0.1:{CONTROL_PORT} "
                 f"--file /run/pen-vrrp/pen-running")
        keepalived = f"keepalived -n -l -D -f {KEEPALIVED_CONF}"
        # a box killed and started again keeps its files: stale pids would name others
        self.run(box, "rm -f /run/keepalived.pid /run/vrrp.pid /run/checkers.pid", 5)
        self._daemon(box, "ip -ts -4 monitor address", VIP_LOG, append=True)
        self._daemon(box, watch, "/var/log/pen-vrrp-watch.log")
        self._daemon(box, keepalived, KEEPALIVED_LOG)
        self.wait_for(lambda: self.run(box, "pgrep -x keepalived", 5)[0] == 0,
                      f"keepalived in {box}")
        return [(box, setup), (box, f"{watch} &"), (box, f"{keepalived} &")]

    def _daemon(self, box, command, log, append=False):
        self.boxes[box].exec_run(["sh", "-c", f"exec {command} {'>>' if append else '>'} "
                                              f"{log} 2>&1"], detach=True)

    def restart_keepalived(self, preempt):
        """Write the config again (--nopreempt or not) and restart keepalived in both boxes."""
        self.preempt = preempt
        commands = []
        for box in self.living():
            setup = shlex.join(setup_argv(box, self.client_if(box), preempt))
            code, out = self.run(box, f"{setup} >/dev/null 2>&1 && pkill -x keepalived; "
                                      f"for i in $(seq 50); do pgrep -x keepalived >/dev/null "
                                      f"|| exit 0; sleep 0.1; done; exit 1", 20)
            if code != 0:
                raise LabError(f"cannot restart keepalived in {box}: {out.strip()}")
            self._daemon(box, f"keepalived -n -l -D -f {KEEPALIVED_CONF}", KEEPALIVED_LOG)
            commands.append((box, setup))
        return commands

    def living(self):
        return [box for box in self.penboxes if self._running(box)]

    # -- pen on both boxes ----------------------------------------------------------
    def start_pen(self, options, servers, service="http", emergency=None, listen=None):
        """The same pen, same servers, on both boxes; returns its command line.
        `listen` defaults to the service's port on every address (DSR: VIP:PORT)."""
        if emergency:
            options = [*options, "-e", emergency]
        argv = pen_argv(self.pen, [*options, "-p", PEN_PID], listen or str(self.ports[service]),
                        servers, as_root=True)
        self.started_pen = argv
        for box in self.living():
            self._start_pen_on(box)
        return shown(argv)

    def _start_pen_on(self, box):
        self._stop_pen_on(box)
        argv = self.started_pen
        script = f"echo $$ > {PEN_PID}; exec {shlex.join(argv)} > {PEN_LOG} 2>&1"
        self.boxes[box].exec_run(["sh", "-c", script], detach=True)
        probe = f"ss -Hltn 'sport = :{CONTROL_PORT}'"
        sockets = 1
        if not any(a.startswith("dsr_if") for a in argv):   # DSR listens on no socket
            probe += f"; ss -Hltn 'sport = :{self.ports['http']}'"
            sockets = 2

        def ready():
            code, out = self.run(box, f"kill -0 $(cat {PEN_PID}) && {{ {probe}; }}", 5)
            if code != 0:
                log = self.run(box, f"tail -n 20 {PEN_LOG}", 5)[1]
                raise LabError(f"pen exited at start in {box}: {shown(argv)}\n{log}")
            return len(out.strip().splitlines()) >= sockets
        self.wait_for(ready, f"pen to listen in {box}")

    def stop_pen(self):
        for box in self.living():
            self._stop_pen_on(box)
        self.started_pen = None

    def _stop_pen_on(self, box):
        self.run(box, f"[ -f {PEN_PID} ] || exit 0; pid=$(cat {PEN_PID}); kill $pid "
                      f"2>/dev/null; for i in $(seq 50); do kill -0 $pid 2>/dev/null || "
                      f"break; sleep 0.1; done; kill -9 $pid 2>/dev/null; rm -f {PEN_PID}", 10)

    def kill_pen(self, box):
        """SIGKILL pen in a box, as a crash would; returns the command."""
        command = f"kill -9 $(cat {PEN_PID})"
        self.run(box, command, 5)
        return command

    def pen_log(self, box="penbox1"):
        return self.run(box, f"tail -n 20 {PEN_LOG}", 5)[1]

    def penctl(self, *words, client=None, box="penbox1"):
        where = client or box
        target = f"{'127.0.0.1' if client is None else self.pen_address}:{CONTROL_PORT}"
        argv = penctl_argv(self.pen, target, words)
        code, out = self.run(where, shlex.join(argv) + " 2>&1", 10)
        return shown(argv), code, out

    # -- who holds the VIP ----------------------------------------------------------
    def holders(self):
        return [box for box in self.living()
                if f" {VIP}/" in self.run(box, "ip -4 -o addr show", 5)[1]]

    def relayed_by(self, client):
        """The box that relays a request to the VIP now, or None."""
        replies = self.http(client, 1, timeout=1)
        return self.server_side.get(replies[0].peer) if replies and replies[0].server else None

    def wait_master(self, box, timeout=20):
        """Until `box` alone holds the VIP and relays the clients' requests."""
        self.wait_for(lambda: self.holders() == [box] and
                      self.relayed_by(self.clients[0]) == box,
                      f"{box} to be master (alone holding {VIP}, relaying)", timeout=timeout)

    def notify_log(self, box, since=0.0):
        """pen-setup's notify hook's lines in a box since a time."""
        _, out = self.run(box, f"cat {NOTIFY_LOG} 2>/dev/null", 5)
        lines = []
        for line in out.splitlines():
            try:
                stamp = calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                continue
            if stamp + 1 >= since:
                lines.append(line)
        return lines

    # -- faults ---------------------------------------------------------------------
    def kill_box(self, box):
        self.dead[box].append((time.time(), float("inf")))   # docker kill may take a while
        self.boxes[box].kill()
        self.wait_for(lambda: not self._running(box), f"{box} to die")

    def revive_box(self, box, with_pen=True):
        """docker start, then the watcher, keepalived and (unless told not to) pen again."""
        self.boxes[box].start()
        self.wait_for(lambda: self._running(box), f"{box} to start")
        began, _ = self.dead[box][-1]
        self.dead[box][-1] = (began, time.time())
        # /run outlives a container's restart (not a real box's): no stale pid or state
        self.run(box, f"rm -f {PEN_PID} /run/pen-vrrp/pen-running", 5)
        self.start_box_services(box)
        if self.started_pen and with_pen:
            self._start_pen_on(box)

    def start_pen_on(self, box):
        """Start the scenario's pen again in one box; returns its command line."""
        self._start_pen_on(box)
        return shown(self.started_pen)

    def iptables(self, box, *rules):
        """Add rules to the lab's own chain in a box (hooked into INPUT and OUTPUT)."""
        setup = (f"iptables -N {CHAIN} 2>/dev/null; "
                 f"for hook in INPUT OUTPUT; do iptables -C $hook -j {CHAIN} 2>/dev/null || "
                 f"iptables -I $hook -j {CHAIN}; done")
        added = [f"iptables -A {CHAIN} {r}" for r in rules]
        self.must(box, " && ".join([f"{{ {setup}; }}", *added]), f"iptables in {box}", 10)
        return added

    def unblock(self, box, rule):
        command = f"iptables -D {CHAIN} {rule}"
        self.must(box, command + " 2>&1", f"iptables in {box}", 10)
        return command

    def own_address(self, box):
        """A pen box's own address on the client net (the VRRP peer address)."""
        return net_address("client", penbox_host(int(box[-1])))

    def cut_off(self, box):
        """Pull the box's client-net cable: its link goes down (iptables would not stop
        ARP, and the clients would keep finding the VIP at the box nobody hears)."""
        command = f"ip link set {self.client_if(box)} down"
        self.must(box, command + " 2>&1", f"cannot cut {box} off", 10)
        return command

    def heal(self, box):
        """Undo cut_off and iptables: the link up, the lab's chain empty."""
        ifname = self.client_if(box)
        self.run(box, f"ip link set {ifname} up; iptables -F {CHAIN} 2>/dev/null", 10)
        return f"ip link set {ifname} up; iptables -F {CHAIN}"

    def reset(self):
        """Undo whatever a scenario did (also after a failure): both boxes up, no rules of
        ours, preempting keepalived, no extra client addresses, pen stopped."""
        for box in self.penboxes:
            if not self._running(box):
                self.revive_box(box)
            self.run(box, f"ip link set {self.client_if(box)} up; "
                          f"iptables -F {CHAIN} 2>/dev/null; for hook in INPUT OUTPUT; do "
                          f"iptables -D $hook -j {CHAIN} 2>/dev/null; done; "
                          f"iptables -X {CHAIN} 2>/dev/null; true", 10)
        if not self.preempt:
            self.restart_keepalived(True)
        for client in self.clients:
            self.run(client, " ; ".join(f"ip addr del {a}/24 dev {self.client_if(client)} "
                                        f"2>/dev/null" for a in STICKY_SOURCES) + "; true", 20)
        self.stop_pen()

    def add_sources(self, client, addresses):
        ifname = self.client_if(client)
        script = "; ".join(f"ip addr add {a}/24 dev {ifname}" for a in addresses)
        code, out = self.run(client, script + " 2>&1", 20)
        if code != 0:
            raise LabError(f"cannot add addresses to {client}: {out.strip()}")
        return f"ip addr add {addresses[0]}/24 ... {addresses[-1]}/24 dev {ifname}"

    def send_vrrp_junk(self, client):
        """Junk protocol-112 packets from a client at both boxes: (command, its output)."""
        argv = ["python3", "-m", "pen_lab.vrrp_junk", "--vrid", str(ROUTER_ID), "--vip", VIP]
        for box in self.penboxes:
            argv += ["--to", net_address("client", penbox_host(int(box[-1])))]
        code, out = self.run(client, shlex.join(argv) + " 2>&1", 30)
        if code != 0:
            raise LabError(f"vrrp_junk failed in {client}: {out.strip()}")
        return " ".join(argv), out

    def slow_download(self, client, size, rate):
        """Start a download of /blob/SIZE from the VIP in a client, read at RATE bytes a
        second through a small window (python3 -m pen_lab.slow_get); returns its command."""
        argv = ["python3", "-m", "pen_lab.slow_get", f"http://{VIP}/blob/{size}",
                "--rate", str(rate), "--out", "/tmp/ha-dsr.bin"]
        self.run(client, "rm -f /tmp/ha-dsr.*", 5)
        self.boxes[client].exec_run(["sh", "-c", f"{shlex.join(argv)} > /tmp/ha-dsr.out "
                                                 f"2>&1; echo $? > /tmp/ha-dsr.done"],
                                    detach=True)
        self.wait_for(lambda: self.run(client, "test -s /tmp/ha-dsr.bin", 5)[0] == 0,
                      "the download to start", timeout=15)
        return " ".join(argv)

    def download_result(self, client, timeout):
        """(exit status, bytes, sha256, the server that answered, what it said)."""
        self.wait_for(lambda: self.run(client, "test -e /tmp/ha-dsr.done", 5)[0] == 0,
                      "the download to end", timeout=timeout, interval=0.5)
        _, out = self.run(client, "cat /tmp/ha-dsr.done /tmp/ha-dsr.out", 10)
        lines = out.splitlines()
        fields = lines[-1].split() if len(lines) > 1 else []
        if len(fields) != 4 or not fields[2].isdigit():
            return int(lines[0] if lines and lines[0].isdigit() else 1), 0, "", "", out[-300:]
        return int(lines[0]), int(fields[2]), fields[3], fields[1], out[-300:]

    # -- the client loop ------------------------------------------------------------
    def start_probe(self, client, duration, rate=20, sources=()):
        """Start the client loop in a container; returns its command line once it runs."""
        argv = ["python3", "-m", "pen_lab.probe", "--url", f"http://{VIP}/", "--rate",
                f"{rate:g}", "--duration", f"{duration:g}"]
        for source in sources:
            argv += ["--source", source]
        self.run(client, "rm -f /tmp/probe.out /tmp/probe.done", 5)
        self.boxes[client].exec_run(["sh", "-c", f"{shlex.join(argv)} > /tmp/probe.out 2>&1; "
                                                 f"touch /tmp/probe.done"], detach=True)
        self.wait_for(lambda: self.run(client, "head -c 6 /tmp/probe.out", 5)[1] == "start ",
                      "the client loop to start")
        shown_argv = argv[:argv.index("--source")] + ["--source", "..."] if sources else argv
        return " ".join(shown_argv)

    def probe_result(self, client, duration):
        """Wait for the client loop to end; returns a Run (replies timed by their answer)."""
        self.wait_for(lambda: self.run(client, "test -e /tmp/probe.done", 5)[0] == 0,
                      "the client loop to end", timeout=duration + 30, interval=0.5)
        _, out = self.run(client, "cat /tmp/probe.out", 10)
        return parse_probe(out, self.server_side, client)

    def vip_spans(self, start, end):
        return {box: vip_spans(vip_events(self.read_file(box, VIP_LOG)), start, end,
                               self.dead[box]) for box in self.penboxes}

    def read_file(self, box, path):
        """A file in a box, running or not (a killed box's files are still there)."""
        if self._running(box):
            return self.run(box, f"cat {path} 2>/dev/null", 10)[1]
        try:
            stream, _ = self.boxes[box].get_archive(path)
        except docker.errors.DockerException:
            return ""
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            data = tar.extractfile(member) if member else None
            return data.read().decode(errors="replace") if data else ""


def status_lines(engine):
    """For `pen-lab status` on the HA lab: which box is master, who holds the VIP."""
    lines = []
    for box in sorted(engine.containers.list(filters=OURS), key=lambda b: b.name):
        name = box.labels.get(f"{LABEL}.name", "")
        if name not in PRIORITIES:
            continue
        addresses = box.exec_run(["ip", "-4", "-o", "addr", "show"]).output.decode()
        holds = f" {VIP}/" in addresses
        notes = box.exec_run(["sh", "-c", f"tail -n 20 {NOTIFY_LOG} 2>/dev/null"]).output
        states = [ln.rsplit(" is ", 1)[1] for ln in notes.decode(errors="replace").splitlines()
                  if " is " in ln]
        state = states[-1].split(" (")[0] if states else "no state yet"
        lines.append(f"vrrp      {name:18} priority {PRIORITIES[name]}: {state}"
                     f"{f', holds the VIP {VIP}' if holds else ''}")
    holders = [line.split()[1] for line in lines if "holds the VIP" in line]
    if len(holders) > 1:
        lines.append(f"vrrp      SPLIT BRAIN: {' and '.join(holders)} both hold {VIP}")
    elif not holders and lines:
        lines.append(f"vrrp      nobody holds {VIP} (is pen running? `pen-lab scenario "
                     f"ha-kill-box` starts it)")
    return lines
