"""The lab on loopback: backends and pen as local processes on 127.0.0.x, no docker, no root.

pen listens on 127.0.0.1, servers on 127.0.0.2-4, the emergency server on 127.0.0.9;
"clients" are source addresses 127.0.0.11-13 (Linux routes all of 127/8 to lo).
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from pen_lab.errors import LabError, wait_for
from pen_lab.pencmd import pen_argv, penctl_argv, shown
from pen_lab.replies import parse_reply
from pen_lab.seenlog import read_seen


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port):
    """Is some socket listening on TCP port `port` (any local address)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


class LocalLab:
    kind = "local"

    def __init__(self, pen, say, servers=3, clients=3):
        if not sys.platform.startswith("linux"):
            raise LabError("--local needs Linux (it uses 127.0.0.x addresses beyond 127.0.0.1)")
        self.pen, self.say = pen, say
        self.work = tempfile.mkdtemp(prefix="pen-lab-local-")
        self.servers = [f"server{i}" for i in range(1, servers + 1)]
        self.clients = [f"client{i}" for i in range(1, clients + 1)]
        self.emergency = "emergency"
        self.addresses = {name: f"127.0.0.{i}" for i, name in enumerate(self.servers, 2)}
        self.addresses[self.emergency] = "127.0.0.9"
        self.addresses.update({name: f"127.0.0.{i}" for i, name in enumerate(self.clients, 11)})
        self.pen_address = self.pen_server_side = "127.0.0.1"
        self.port = free_port()
        self.pen_port = free_port()
        self.control = f"127.0.0.1:{free_port()}"
        self.backends = {}
        self.pen_process = None
        try:
            for name in self.servers + [self.emergency]:
                self._start_backend(name)
        except BaseException:
            self.close()
            raise

    # -- processes -------------------------------------------------------------
    def _start_backend(self, name):
        data = os.path.join(self.work, name)
        argv = [sys.executable, "-m", "pen_lab.backend", "--name", name, "--services", "http",
                "--host", self.addresses[name], "--http-port", str(self.port), "--data", data]
        log = open(os.path.join(self.work, f"{name}.log"), "ab")
        self.backends[name] = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()

        def up():
            if self.backends[name].poll() is not None:
                raise LabError(f"backend {name} exited: {self._tail(name + '.log')}")
            with socket.socket() as probe:
                return probe.connect_ex((self.addresses[name], self.port)) == 0

        wait_for(up, what=f"{name} to listen")

    def _tail(self, file):
        with open(os.path.join(self.work, file), errors="replace") as log:
            return "".join(log.readlines()[-15:])

    def close(self):
        self.stop_pen()
        for process in self.backends.values():
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    # -- addresses -------------------------------------------------------------
    def address(self, name):
        return self.addresses[name]

    def client_address(self, client):
        return self.addresses[client]

    def server_spec(self, name, service="http"):
        if service != "http":
            raise LabError(f"the local lab serves only HTTP, not {service}")
        return f"{self.addresses[name]}:{self.port}"

    # -- the balancer ----------------------------------------------------------
    def start_pen(self, options, servers, service="http", emergency=None):
        self.stop_pen()
        if emergency:
            options = [*options, "-e", emergency]
        argv = pen_argv(self.pen, options, f"127.0.0.1:{self.pen_port}", servers,
                        control=self.control, as_root=os.geteuid() == 0,
                        python=sys.executable)
        log = open(os.path.join(self.work, "pen.log"), "ab")
        try:
            self.pen_process = subprocess.Popen(argv, stdout=log, stderr=log)
        except FileNotFoundError:
            raise LabError(f"--pen {self.pen}: cannot run {argv[0]}") from None
        finally:
            log.close()
        control_port = int(self.control.rpartition(":")[2])

        def ready():
            if self.pen_process.poll() is not None:
                raise LabError(f"pen exited at start: {shown(argv)}\n{self._tail('pen.log')}")
            return listening(self.pen_port) and listening(control_port)

        wait_for(ready, what="pen to listen")
        return shown(argv).replace(sys.executable, "python3")

    def stop_pen(self):
        if self.pen_process is not None:
            self.pen_process.terminate()
            try:
                self.pen_process.wait(5)
            except subprocess.TimeoutExpired:
                self.pen_process.kill()
                self.pen_process.wait()
            self.pen_process = None

    def penctl(self, *words, client=None):
        if client is None:
            argv = penctl_argv(self.pen, self.control, words, python=sys.executable)
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=10)
            return shown(argv), done.returncode, done.stdout.decode(errors="replace")
        # penctl cannot pick its source address; speak its one-line protocol by hand
        host, _, port = self.control.rpartition(":")
        answer = b""
        try:
            with socket.create_connection((host, int(port)), timeout=3,
                                          source_address=(self.addresses[client], 0)) as ctl:
                ctl.sendall(" ".join(words).encode() + b"\n")
                while chunk := ctl.recv(4096):
                    answer += chunk
        except OSError as err:
            answer += f"error: {err}\n".encode()
        shown_cmd = f"echo {' '.join(words)} | nc -s {self.addresses[client]} {host} {port}"
        return shown_cmd, 0, answer.decode(errors="replace")

    # -- clients ---------------------------------------------------------------
    def http(self, client, count=1, interval=0.0, path="/", headers=(), scheme="http",
             timeout=2):
        if scheme != "http":
            raise LabError("the local lab speaks plain HTTP only")
        replies = []
        for _ in range(count):
            t = time.time()
            conn = http.client.HTTPConnection("127.0.0.1", self.pen_port, timeout=timeout,
                                              source_address=(self.addresses[client], 0))
            try:
                conn.request("GET", path, headers=dict(h.split(": ", 1) for h in headers))
                text = conn.getresponse().read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as err:
                text = f"ERROR {err}"
            finally:
                conn.close()
            replies.append(parse_reply(t, text, client))
            time.sleep(interval)
        return replies

    # -- what the servers saw --------------------------------------------------
    def seen(self, name):
        try:
            with open(os.path.join(self.work, name, "seen.jsonl")) as log:
                return read_seen(log.read())
        except FileNotFoundError:
            return []

    def clear_seen(self):
        for name in self.servers + [self.emergency]:
            path = os.path.join(self.work, name, "seen.jsonl")
            if os.path.exists(path):
                open(path, "w").close()

    # -- breaking and mending servers ------------------------------------------
    def break_server(self, name, how):
        process = self.backends[name]
        if how == "pause":
            process.send_signal(signal.SIGSTOP)
            return
        if how not in ("stop", "kill"):
            raise LabError(f"the local lab cannot {how} a server")
        process.terminate() if how == "stop" else process.kill()
        process.wait(5)

    def mend_server(self, name, how):
        if how == "pause":
            self.backends[name].send_signal(signal.SIGCONT)
        else:
            self._start_backend(name)
