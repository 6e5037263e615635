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
    nbthread 1
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
    def __init__(self):
        super().__init__("haproxy", "HAProxy", ["haproxy"])

    def supports(self, mode):
        return mode != "udp"

    def argv(self, tmp, mode, port, backends, cert):
        conf = os.path.join(tmp, "haproxy-%s.cfg" % mode)
        ssl = " ssl crt %s" % cert if mode == "tls" else ""
        with open(conf, "w") as f:
            f.write(HAPROXY_CONF.format(port=port, ssl=ssl, port1=backends[0], port2=backends[1]))
        return ["haproxy", "-db", "-f", conf]


def ours(command=None):
    """Our pen: `python3 -m pen` run from the repository (no install needed), or a command
    given by --ours-cmd / PEN_BENCH_OURS (e.g. "pen" to validate the harness with the C pen)."""
    command = command or os.environ.get("PEN_BENCH_OURS")
    env = dict(os.environ)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO + (os.pathsep + extra if extra else "")
    if command:
        return Balancer("ours", "ours (%s)" % command, shlex.split(command), env=env, cwd=REPO)
    return Balancer("ours", "ours", [sys.executable, "-m", "pen"], env=env, cwd=REPO)


# By absolute path: once pen-lb is installed, `pen` on PATH is pen-lb itself, and the
# benchmark would quietly compare ours with ours.
C_PEN = os.environ.get("PEN_BENCH_CPEN", "/usr/bin/pen")


def all_balancers(ours_command=None):
    return [ours(ours_command), Balancer("cpen", "C pen", [C_PEN]), HAProxy()]
