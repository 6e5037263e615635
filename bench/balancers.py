"""How each balancer is started: our pen, the C pen, HAProxy.

Both pens get the same command line: `-f -r LISTEN SERVER1 SERVER2`, plus `-U` for UDP and
`-E cert.pem` for TLS.  `-r` (plain round-robin) because every load comes from 127.0.0.1 and
pen's client tracking would otherwise send all of it to one backend.  HAProxy runs in the
foreground (`-db`), one process, `nbthread 1`, `mode tcp` (a layer-4 relay like pen), round-robin.
"""

import os
import shlex
import sys

import procs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HAPROXY_CONF = """\
global
    nbthread {nbthread}
    maxconn 4096
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}{ssl}
    default_backend servers
backend servers
    balance roundrobin
    server s1 127.0.0.1:{port1}
    server s2 127.0.0.1:{port2}
"""


class Balancer:
    def __init__(self, key, label, base_argv, env=None, cwd=None):
        self.key, self.label = key, label
        self.base_argv, self.env, self.cwd = base_argv, env, cwd

    def argv(self, tmp, mode, port, backends, cert):
        flags = ["-f", "-r"]
        if mode == "udp":
            flags.append("-U")
        if mode == "tls":
            flags += ["-E", cert]
        servers = ["127.0.0.1:%d" % p for p in backends]
        return self.base_argv + flags + ["127.0.0.1:%d" % port] + servers

    def supports(self, mode):
        return True

    def start(self, tmp, mode, port, backends, cert, tag):
        argv = self.argv(tmp, mode, port, backends, cert)
        log = os.path.join(tmp, "%s-%s.log" % (self.key, tag))
        return procs.start(argv, log, cwd=self.cwd, env=self.env)


class HAProxy(Balancer):
    """HAProxy with `nbthread` threads (1 unless given: --workers compares N with N)."""

    def __init__(self, threads=None):
        suffix = "" if threads is None else " nbthread %d" % threads
        super().__init__("haproxy" if threads is None else "haproxy-t%d" % threads,
                         "HAProxy" + suffix, ["haproxy"])
        self.threads = threads or 1

    def supports(self, mode):
        return mode != "udp"

    def argv(self, tmp, mode, port, backends, cert):
        conf = os.path.join(tmp, "haproxy-%s-t%d.cfg" % (mode, self.threads))
        ssl = " ssl crt %s" % cert if mode == "tls" else ""
        with open(conf, "w") as f:
            f.write(HAPROXY_CONF.format(port=port, ssl=ssl, port1=backends[0], port2=backends[1],
                                        nbthread=self.threads))
        return ["haproxy", "-db", "-f", conf]


def ours(command=None, workers=None):
    """Our pen: `python3 -m pen` run from the repository (no install needed), or a command
    given by --ours-cmd / PEN_BENCH_OURS (e.g. "pen" to validate the harness with the C pen).
    With workers N > 1 it gets `-O "workers N"`; workers 1 is the plain command line (one
    process, as before the option existed)."""
    command = command or os.environ.get("PEN_BENCH_OURS")
    env = dict(os.environ)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO + (os.pathsep + extra if extra else "")
    argv = shlex.split(command) if command else [sys.executable, "-m", "pen"]
    label = "ours (%s)" % command if command else "ours"
    if workers is None:
        return Balancer("ours", label, argv, env=env, cwd=REPO)
    if workers > 1:
        argv = argv + ["-O", "workers %d" % workers]
    return Balancer("ours-w%d" % workers, "%s workers %d" % (label, workers), argv,
                    env=env, cwd=REPO)


# By absolute path: once pen-lb is installed, `pen` on PATH is pen-lb itself, and the
# benchmark would quietly compare ours with ours.
C_PEN = os.environ.get("PEN_BENCH_CPEN", "/usr/bin/pen")


def all_balancers(ours_command=None):
    return [ours(ours_command), Balancer("cpen", "C pen", [C_PEN]), HAProxy()]


def scaling_balancers(counts, ours_command=None):
    """For --workers: ours and HAProxy at each count (N workers, nbthread N), and the C pen
    once (one process: it has no workers)."""
    return ([ours(ours_command, n) for n in counts] + [HAProxy(n) for n in counts]
            + [Balancer("cpen", "C pen", [C_PEN])])
