"""The lab on docker: two internal networks, a pen box between them, backends, clients.

client net  10.89.1.0/24: clients .21+ , pen box .10
server net  10.89.2.0/24: pen box .10, servers .11+, emergency .99
Servers route the client net back through the pen box (needed for transparent mode).
Everything created carries the label pen-lab=1; `down` removes exactly that.
"""

import shlex
import time
from dataclasses import dataclass

import docker
import docker.errors

from pen_lab import images
from pen_lab.errors import LabError, wait_for
from pen_lab.pencmd import CONTROL_PORT, pen_argv, penctl_argv, shown
from pen_lab.replies import parse_reply
from pen_lab.seenlog import read_seen

LABEL = images.LABEL
# Containers inherit their image's labels, so a container anyone runs from the lab's image
# carries pen-lab=1 too; only the containers `up` creates also carry pen-lab.role.
OURS = {"label": f"{LABEL}.role"}
NETWORKS = {"client": ("pen-lab-client", "10.89.1"), "server": ("pen-lab-server", "10.89.2")}
PENBOX_HOST = "10"
PEN_PID = "/run/pen-lab-pen.pid"
PEN_LOG = "/tmp/pen.log"
SEEN = "/srv/lab/seen.jsonl"
DSR_HOST = 50  # servers join the client net at .51+ for direct server return
DSR_VIP_HOST = 100  # the dsr scenario's virtual IP on the client net


@dataclass(frozen=True)
class Download:
    command: str
    server: str | None  # who answered (X-Lab-Server); None when it failed
    size: int
    sha256: str
    error: str | None


@dataclass(frozen=True)
class Topology:
    name: str
    servers: int
    clients: int
    about: str
    penboxes: int = 1           # 2: the HA pair of lab/ha.py (penbox1, penbox2, a VIP)


TOPOLOGIES = {
    "classic": Topology("classic", 3, 3, "3 servers, an emergency server, 3 clients"),
    "small": Topology("small", 2, 1, "2 servers, an emergency server, 1 client"),
    "ha": Topology("ha", 3, 2, "2 pen boxes sharing a VIP (keepalived), 3 servers, an "
                               "emergency server, 2 clients", penboxes=2),
}


def net_address(net, host):
    return f"{NETWORKS[net][1]}.{host}"


def plan(topology):
    """(name, role, {net: address}) for every container of a topology."""
    boxes = [("penbox", "penbox", {"client": net_address("client", PENBOX_HOST),
                                   "server": net_address("server", PENBOX_HOST)})]
    if topology.penboxes > 1:   # penbox1 .10, penbox2 .9: below the servers
        boxes = [(f"penbox{i}", "penbox", {net: net_address(net, 11 - i)
                                           for net in ("client", "server")})
                 for i in range(1, topology.penboxes + 1)]
    boxes += [(f"server{i}", "server", {"server": net_address("server", 10 + i)})
              for i in range(1, topology.servers + 1)]
    boxes.append(("emergency", "emergency", {"server": net_address("server", 99)}))
    boxes += [(f"client{i}", "client", {"client": net_address("client", 20 + i)})
              for i in range(1, topology.clients + 1)]
    return boxes


def connect(timeout=300):
    try:
        engine = docker.from_env(timeout=timeout)
        engine.ping()
        return engine
    except docker.errors.DockerException as err:
        raise LabError(f"no docker engine answers ({err}); try `pen-lab demo --local`") from None


def down(engine, say, with_images=False):
    """Remove every container and network carrying the lab's label, and nothing else."""
    for box in engine.containers.list(all=True, filters=OURS):
        say(f"removing container {box.name}")
        if box.status == "paused":  # a scenario stopped halfway through a pause
            box.unpause()
        box.remove(force=True)
    for net in engine.networks.list(filters={"label": LABEL}):
        say(f"removing network {net.name}")
        net.remove()
    if with_images:  # the app images first: they are built on the base
        for image in sorted(engine.images.list(filters={"label": LABEL}),
                            key=lambda i: images.BASE_TAG in i.tags):
            say(f"removing image {' '.join(image.tags) or image.short_id}")
            engine.images.remove(image.id, force=True)


def up(engine, say, topology="classic", pen="py", source=None, base=None):
    if topology not in TOPOLOGIES:
        raise LabError(f"--topology: unknown {topology!r} (known: {', '.join(TOPOLOGIES)})")
    image = images.ensure_image(engine, say, source=source, base=base)
    down(engine, lambda _: None)
    try:
        _create(engine, image, TOPOLOGIES[topology], say)
        lab = open_lab(engine, pen, say)
        for name in lab.servers + [lab.emergency]:
            lab.wait_serving(name)
        if hasattr(lab, "prepare"):
            lab.prepare()
        return lab
    except BaseException:
        down(engine, say)
        raise


def _create(engine, image, topology, say):
    for name, prefix in NETWORKS.values():
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
            subnet=f"{prefix}.0/24", gateway=f"{prefix}.1")])
        say(f"network {name} {prefix}.0/24 (internal: no way out)")
        try:
            engine.networks.create(name, driver="bridge", internal=True, ipam=ipam,
                                   labels={LABEL: "1"})
        except docker.errors.APIError as err:
            raise LabError(f"cannot create network {name}: {err.explanation}") from None
    back_route = (f"ip route replace {NETWORKS['client'][1]}.0/24 "
                  f"via {net_address('server', PENBOX_HOST)}")
    for name, role, addresses in plan(topology):
        if role in ("server", "emergency"):
            ip = addresses["server"]
            command = ["sh", "-c", f"{back_route} && exec python3 -m pen_lab.backend "
                                   f"--name {name} --answer {ip}"]
        else:
            command = ["sleep", "infinity"]
        first, *others = addresses.items()
        box = engine.containers.create(
            image, command, name=f"pen-lab-{name}", hostname=name, init=True,
            labels={LABEL: "1", f"{LABEL}.role": role, f"{LABEL}.name": name,
                    f"{LABEL}.topology": topology.name},
            cap_add=["NET_ADMIN"] if role != "client" or topology.penboxes > 1 else [],
            network=NETWORKS[first[0]][0],
            networking_config={NETWORKS[first[0]][0]:
                               engine.api.create_endpoint_config(ipv4_address=first[1])})
        for net, ip in others:
            engine.networks.get(NETWORKS[net][0]).connect(box, ipv4_address=ip)
        box.start()
        say(f"container {name:10} {role:9} " + " ".join(addresses.values()))


def status(engine):
    lines = []
    for net in engine.networks.list(filters={"label": LABEL}):
        subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        lines.append(f"network   {net.name:18} {subnet:15} internal={net.attrs['Internal']}")
    for box in sorted(engine.containers.list(all=True, filters=OURS),
                      key=lambda b: b.name):
        nets = box.attrs["NetworkSettings"]["Networks"]
        ips = " ".join(n["IPAddress"] for n in nets.values() if n["IPAddress"])
        lines.append(f"container {box.name:18} {box.status:10} {ips}")
    if topology_of(engine) == "ha":
        from pen_lab import ha_lab
        lines += ha_lab.status_lines(engine)
    return lines or ["the lab is down (nothing labelled pen-lab=1)"]


def topology_of(engine):
    """The running lab's topology name, or None when it is down."""
    for box in engine.containers.list(all=True, filters=OURS):
        if f"{LABEL}.topology" in box.labels:
            return box.labels[f"{LABEL}.topology"]
    return None


def open_lab(engine, pen, say):
    """The running lab as the scenarios drive it: a DockerLab, or an HaLab for `ha`."""
    if topology_of(engine) == "ha":
        from pen_lab import ha_lab
        return ha_lab.HaLab(engine, pen, say)
    return DockerLab(engine, pen, say)


class DockerLab:
    """The running lab, as the scenarios drive it."""

    kind = "docker"

    def __init__(self, engine, pen, say):
        self.engine = engine
        self.pen = pen
        self.say = say
        boxes = engine.containers.list(all=True, filters=OURS)
        self.boxes = {b.labels[f"{LABEL}.name"]: b for b in boxes}
        first = self.boxes.get("penbox") or self.boxes.get("penbox1")
        if first is None:
            raise LabError("the lab is not up: run `pen-lab up` first")
        roles = {name: b.labels[f"{LABEL}.role"] for name, b in self.boxes.items()}
        topology = TOPOLOGIES[first.labels[f"{LABEL}.topology"]]
        self.topology = topology.name
        self.planned = {name: addresses for name, _, addresses in plan(topology)}
        self.servers = sorted(n for n, r in roles.items() if r == "server")
        self.clients = sorted(n for n, r in roles.items() if r == "client")
        self.emergency = "emergency"
        self.pen_address = net_address("client", PENBOX_HOST)
        self.pen_server_side = net_address("server", PENBOX_HOST)
        self.dsr_vip = net_address("client", DSR_VIP_HOST)
        self.ports = {"http": 80, "https": 443, "dns": 53, "tftp": 69, "smtp": 25}
        self._dsr_undo = []  # what dsr_setup changed, to put back

    # -- addresses -------------------------------------------------------------
    def address(self, name):
        """A box's address on the server net (clients: on the client net)."""
        addresses = self.planned[name]
        return addresses.get("server") or addresses["client"]

    def server_spec(self, name, service="http"):
        return f"{self.address(name)}:{self.ports[service]}"

    # -- running commands ------------------------------------------------------
    def run(self, name, script, timeout=30):
        """Run a shell script in a container, bounded in time: (exit code, output)."""
        argv = ["timeout", str(int(timeout)), "sh", "-c", script]
        result = self.boxes[name].exec_run(argv)
        return result.exit_code, result.output.decode(errors="replace")

    def must(self, name, script, what, timeout=30):
        """run(), where a failure is the lab's: LabError "what: output"; else the output."""
        code, out = self.run(name, script, timeout)
        if code != 0:
            raise LabError(f"{what}: {out.strip()}")
        return out

    def wait_for(self, check, what, timeout=15, interval=0.2):
        wait_for(check, timeout, interval, what=what)

    def wait_serving(self, name):
        self.wait_for(lambda: self.run(name, "ss -Hltn 'sport = :80'", 5)[1].strip(),
                      f"{name} to serve HTTP")

    # -- the balancer ----------------------------------------------------------
    def start_pen(self, options, servers, service="http", emergency=None, listen=None):
        """Start pen in the pen box (stopping the previous one); return its command line.
        `listen` defaults to the service's port on every address (DSR: VIP:PORT)."""
        self.stop_pen()
        if emergency:
            options = [*options, "-e", emergency]
        argv = pen_argv(self.pen, options, listen or str(self.ports[service]), servers,
                        as_root=True)
        script = f"echo $$ > {PEN_PID}; exec {shlex.join(argv)} > {PEN_LOG} 2>&1"
        self.boxes["penbox"].exec_run(["sh", "-c", script], detach=True)
        udp = "-U" in options
        probe = f"ss -Hltn 'sport = :{CONTROL_PORT}'"
        sockets = 1
        if not any(option.startswith("dsr_if") for option in options):  # DSR listens on none
            probe += f"; ss -Hln{'u' if udp else 't'} 'sport = :{self.ports[service]}'"
            sockets = 2

        def ready():
            code, out = self.run("penbox", f"kill -0 $(cat {PEN_PID}) && {{ {probe}; }}", 5)
            if code != 0:
                raise LabError(f"pen exited at start: {shown(argv)}\n{self.pen_log()}")
            return len(out.strip().splitlines()) >= sockets

        self.wait_for(ready, "pen to listen")
        return shown(argv)

    def pen_log(self):
        return self.run("penbox", f"tail -n 20 {PEN_LOG}", 5)[1]

    def stop_pen(self):
        stop = (f"[ -f {PEN_PID} ] || exit 0; pid=$(cat {PEN_PID}); kill $pid 2>/dev/null; "
                f"for i in $(seq 50); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; "
                f"kill -9 $pid")
        self.run("penbox", stop, 10)
        self.run("penbox", f"rm -f {PEN_PID}", 5)

    def penctl(self, *words, client=None):
        """penctl from the pen box itself (allowed) or from a client container (refused)."""
        where = client or "penbox"
        target = f"{'127.0.0.1' if client is None else self.pen_address}:{CONTROL_PORT}"
        argv = penctl_argv(self.pen, target, words)
        code, out = self.run(where, shlex.join(argv) + " 2>&1", 10)
        return shown(argv), code, out

    # -- clients ---------------------------------------------------------------
    def http(self, client, count=1, interval=0.0, path="/", headers=(), scheme="http",
             timeout=2):
        """count curl requests from a client container; one Reply each, timestamped."""
        port = self.ports["https" if scheme == "https" else "http"]
        curl = ["curl", "-sS", "-k", "-m", str(timeout)]
        for header in headers:
            curl += ["-H", header]
        curl.append(f"{scheme}://{self.pen_address}:{port}{path}")
        script = (f"for i in $(seq {count}); do t=$(date +%s.%N); "
                  f"r=$({shlex.join(curl)} 2>&1) || r=\"ERROR $r\"; echo \"$t $r\"; "
                  f"sleep {interval}; done")
        _, out = self.run(client, script, count * (timeout + interval + 1) + 5)
        replies = []
        for line in out.splitlines():
            t, _, text = line.partition(" ")
            try:
                replies.append(parse_reply(float(t), text, client))
            except ValueError:
                continue
        return replies

    def client_address(self, client):
        return self.address(client)

    # -- what the servers saw --------------------------------------------------
    def seen(self, name):
        code, out = self.run(name, f"cat {SEEN} 2>/dev/null", 10)
        return read_seen(out)

    def clear_seen(self):
        for name in self.servers + [self.emergency]:
            if self._running(name):
                self.run(name, f": > {SEEN}", 5)

    def _running(self, name):
        self.boxes[name].reload()
        return self.boxes[name].status == "running"

    # -- breaking and mending servers ------------------------------------------
    def break_server(self, name, how):
        box = self.boxes[name]
        if how == "stop":
            box.stop(timeout=2)
        elif how == "kill":
            box.kill()
            self.wait_for(lambda: not self._running(name), f"{name} to die")
        elif how == "pause":
            box.pause()
        elif how == "disconnect":
            self.engine.networks.get(NETWORKS["server"][0]).disconnect(box)
        else:
            raise LabError(f"unknown way to break a server: {how!r}")

    def mend_server(self, name, how):
        box = self.boxes[name]
        if how in ("stop", "kill"):
            box.start()
            self.wait_serving(name)
        elif how == "pause":
            box.unpause()
        elif how == "disconnect":
            self.engine.networks.get(NETWORKS["server"][0]).connect(
                box, ipv4_address=self.planned[name]["server"])
            # the route back through the pen box went away with the interface
            self.run(name, f"ip route replace {NETWORKS['client'][1]}.0/24 "
                           f"via {self.pen_server_side}", 5)


    # -- docker-only helpers for the UDP, TLS, SMTP and transparent scenarios ----
    def transparent_setup(self):
        """pen-reference's DIVERT rules in the pen box (idempotent); return them for narration."""
        bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        try:
            with open(bridge_nf) as flag:
                if flag.read().strip() != "0":
                    raise LabError(f"transparent mode needs `sysctl -w net.bridge.bridge-nf-call-"
                                   f"iptables=0` on the host ({bridge_nf} is 1)")
        except FileNotFoundError:
            pass  # br_netfilter not loaded: bridged frames skip iptables anyway
        commands = ["iptables -t mangle -N DIVERT",
                    "iptables -t mangle -A PREROUTING -p tcp -m socket -j DIVERT",
                    "iptables -t mangle -A DIVERT -j MARK --set-mark 1",
                    "iptables -t mangle -A DIVERT -j ACCEPT",
                    "ip rule add fwmark 1 lookup 100",
                    "ip route add local 0.0.0.0/0 dev lo table 100"]
        code, _ = self.run("penbox", "iptables -t mangle -L DIVERT -n >/dev/null 2>&1", 5)
        if code != 0:
            self.must("penbox", " && ".join(commands), "transparent setup failed in the pen box",
                      10)
        return commands

    def make_certificate(self):
        cert, key = "/tmp/lab-cert.pem", "/tmp/lab-key.pem"
        self.must("penbox", f"[ -s {cert} ] || openssl req -x509 -newkey rsa:2048 -nodes "
                            f"-days 2 -subj /CN=pen.lab -keyout {key} -out {cert} 2>&1",
                  "openssl failed in the pen box")
        return cert, key

    def dig(self, client, name, qtype):
        argv = ["dig", "+short", "+tries=1", "+time=2", f"@{self.pen_address}", name, qtype]
        return shlex.join(argv), self.run(client, shlex.join(argv), 10)[1]

    def tftp_get(self, client, name):
        get = f"tftp -m binary {self.pen_address} -c get {name} /tmp/got.bin"
        _, out = self.run(client, f"rm -f /tmp/got.bin; timeout 10 {get} >/dev/null 2>&1; "
                                  f"sha256sum /tmp/got.bin 2>/dev/null", 15)
        return get, out.split(" ")[0].strip()

    def tftp_put(self, client):
        name = f"put-{time.time_ns()}.bin"
        put = f"tftp -m binary {self.pen_address} -c put /tmp/put.bin {name}"
        _, out = self.run(client, f"head -c 50000 /dev/urandom > /tmp/put.bin; "
                                  f"timeout 10 {put} >/dev/null 2>&1; sha256sum /tmp/put.bin", 15)
        return put, name, out.split(" ")[0].strip()

    def upload_digest(self, server, name):
        _, out = self.run(server, f"sha256sum /srv/lab/tftp/uploads/{name} 2>/dev/null", 5)
        return out.split(" ")[0].strip() or None

    def send_mail(self, client, subject):
        argv = ["swaks", "--server", f"{self.pen_address}:25", "--from", f"{client}@lab",
                "--to", "learner@lab", "--header", f"Subject: {subject}",
                "--body", "sent through pen", "--timeout", "5"]
        code, out = self.run(client, shlex.join(argv) + " 2>&1", 15)
        return shlex.join(argv), code, out

    def mail_with_subject(self, server, subject):
        _, out = self.run(server, f"grep -l -r -F {shlex.quote('Subject: ' + subject)} "
                                  f"/srv/lab/maildir/new | head -n1 | xargs -r cat", 5)
        return out

    # -- direct server return --------------------------------------------------
    def interface(self, name, net="client"):
        """The name of box `name`'s interface on a lab network (eth0, eth1...)."""
        prefix = NETWORKS[net][1] + "."
        _, out = self.run(name, "ip -o -4 addr show", 5)
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].startswith(prefix):
                return fields[1]
        raise LabError(f"{name} has no interface on the {net} net")

    def dsr_address(self, server):
        """A server's address on the client net while DSR is set up (.51, .52...)."""
        return net_address("client", DSR_HOST + self.servers.index(server) + 1)

    def in_netns(self, name, command, sysctls=None):
        """Run `command` in a throwaway container sharing box `name`'s network namespace,
        with CAP_NET_ADMIN and `sysctls` applied: /proc/sys is read-only inside the lab's
        containers, and clients lack the capability. Returns its output."""
        box = self.boxes[name]
        try:
            out = self.engine.containers.run(
                box.image.id, command, network_mode=f"container:{box.id}",
                sysctls=sysctls or None, cap_add=["NET_ADMIN"], remove=True,
                labels={LABEL: "1", f"{LABEL}.role": "helper", f"{LABEL}.name": f"{name}+"})
        except docker.errors.DockerException as err:
            raise LabError(f"cannot tune {name}'s network: {err}") from None
        return out.decode(errors="replace")

    def _sysctls(self, name, values):
        """Set net.* sysctls in a box; return the previous values (to put back)."""
        paths = " ".join("/proc/sys/" + key.replace(".", "/") for key in values)
        _, out = self.run(name, f"cat {paths}", 5)
        before = dict(zip(values, out.split(), strict=True))
        self.in_netns(name, ["true"], sysctls=values)
        return before

    def dsr_setup(self, vip, penboxes=("penbox",)):
        """Direct server return on the client net: the servers join it (.51+) with `vip` on
        loopback, ARP for it left to pen (arp_ignore=1, arp_announce=2), and answer the
        clients from it directly; the pen boxes stop forwarding IP (pen reads the frames);
        the clients stop offloading transmit checksums (forwarded frames must carry finished
        ones). Everything done is recorded for dsr_teardown(), which runs even when this
        fails halfway. Returns (where, command) pairs to narrate."""
        self.dsr_teardown()
        done = self._dsr_undo = []
        shown_steps = []
        for box in penboxes:
            before = self._sysctls(box, {"net.ipv4.ip_forward": "0"})
            done.append(lambda box=box, before=before: self._sysctls(box, before))
            shown_steps.append((box, "sysctl -w net.ipv4.ip_forward=0"))
        for client in self.clients:
            ifname = self.interface(client)
            was = self.in_netns(client, ["python3", "-m", "pen_lab.nic", ifname, "off"])
            if was.strip() == "on":
                done.append(lambda c=client, i=ifname: self.in_netns(
                    c, ["python3", "-m", "pen_lab.nic", i, "on"]))
            shown_steps.append((client, f"ethtool -K {ifname} tx off"))
        back_route = f"{NETWORKS['client'][1]}.0/24"
        client_net = self.engine.networks.get(NETWORKS["client"][0])
        for server in self.servers:
            box, address = self.boxes[server], self.dsr_address(server)
            # docker refuses an address whose prefix is already routed (via the pen box)
            self.run(server, f"ip route del {back_route}", 5)
            done.append(lambda s=server: self.run(
                s, f"ip route replace {back_route} via {self.pen_server_side}", 5))
            client_net.connect(box, ipv4_address=address)
            done.append(lambda b=box: client_net.disconnect(b))
            self.must(server, f"ip addr add {vip}/32 dev lo",
                      f"cannot put the VIP on {server}'s loopback", 5)
            done.append(lambda s=server: self.run(s, f"ip addr del {vip}/32 dev lo", 5))
            before = self._sysctls(server, {"net.ipv4.conf.all.arp_ignore": "1",
                                            "net.ipv4.conf.all.arp_announce": "2"})
            done.append(lambda s=server, before=before: self._sysctls(s, before))
            shown_steps += [("docker", f"docker network connect --ip {address} "
                                       f"{client_net.name} {box.name}"),
                            (server, f"ip addr add {vip}/32 dev lo"),
                            (server, "sysctl -w net.ipv4.conf.all.arp_ignore=1 "
                                     "net.ipv4.conf.all.arp_announce=2")]
        return shown_steps

    def dsr_teardown(self):
        """Undo what dsr_setup did, newest first; idempotent."""
        undo, self._dsr_undo = self._dsr_undo, []
        for step in reversed(undo):
            try:
                step()
            except (LabError, docker.errors.DockerException) as err:
                self.say(f"dsr teardown: {err}")

    def nic_bytes(self, name, ifname):
        """(received, sent) bytes of a box's interface, from the kernel's counters."""
        stats = f"/sys/class/net/{ifname}/statistics"
        _, out = self.run(name, f"cat {stats}/rx_bytes {stats}/tx_bytes", 5)
        received, sent = (int(n) for n in out.split())
        return received, sent

    def download(self, client, size, address=None, port=80, timeout=20):
        """GET /blob/SIZE from a client: Download(command, server, bytes, sha256, error)."""
        url = f"http://{address or self.pen_address}:{port}/blob/{size}"
        curl = ["curl", "-sS", "-m", str(timeout), "-D", "/tmp/blob.head", "-o",
                "/tmp/blob.bin", url]
        script = (f"rm -f /tmp/blob.*; {shlex.join(curl)} 2>&1 | head -c 300; "
                  f"echo; sed -n 's/^[Xx]-[Ll]ab-[Ss]erver: *//p' /tmp/blob.head; "
                  f"wc -c < /tmp/blob.bin; sha256sum /tmp/blob.bin")
        _, out = self.run(client, script, timeout + 10)
        error, _, rest = out.partition("\n")
        lines = [line.strip() for line in rest.splitlines()]
        if error.strip() or len(lines) < 3:
            return Download(shlex.join(curl), None, 0, "", error.strip() or out.strip())
        return Download(shlex.join(curl), lines[0], int(lines[1]), lines[2].split()[0], None)
