"""UDP peers for the -U tests, all on 127.0.0.0/8: pen started for UDP, dig, dnsmasq,
a dnslib server, echo / silent / stray backends, in.tftpd and a tftpy server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

from support import free_port, wait_for


def udp_port(host: str = "127.0.0.1") -> int:
    return free_port(host, socket.SOCK_DGRAM)


def udp_bound(host: str, port: int) -> bool:
    """Is something bound to host:port/udp (or to any address on port)? Read from the
    kernel's table: a probe bind would hold the port for a moment, and a peer binding it
    just then (pen starting) would fail with EADDRINUSE, as one did in CI."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    packed = socket.inet_pton(family, host)
    # the kernel prints each 32-bit word of the address in host (little-endian) order
    words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    wanted = {"".join(words), "0" * len(packed) * 2}
    with open(table) as f:
        next(f)                                          # the header
        for line in f:
            address, _, hexport = line.split()[1].partition(":")
            if int(hexport, 16) == port and address in wanted:
                return True
    return False


def start_udp_pen(start_pen, *options, servers=(), host="127.0.0.1"):
    """pen -U on host:<free port>, once its UDP socket is bound."""
    port = udp_port(host)
    pen, _ = start_pen("-U", *options, servers=servers, listen=f"{host}:{port}", wait=False)
    wait_for(lambda: pen.proc.poll() is not None or udp_bound(host, port),
             what=f"pen -U to bind {host}:{port}")
    assert pen.proc.poll() is None, pen.output()
    return pen, port


def dig(port: int, name: str, *extra: str, server: str = "127.0.0.1", timeout: int = 3,
        tries: int = 1) -> subprocess.CompletedProcess:
    cmd = ["dig", f"@{server}", "-p", str(port), f"+tries={tries}", f"+timeout={timeout}",
           *extra, name]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * tries + 10)


def dig_short(port: int, name: str, *extra: str, **kw) -> str:
    result = dig(port, name, "+short", *extra, **kw)
    assert result.returncode == 0, f"dig failed: {result.stdout} {result.stderr}"
    return result.stdout.strip()


class Daemon:
    """A peer server run as a process on host:port."""

    host: str
    port: int
    proc: subprocess.Popen

    @property
    def spec(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Dnsmasq(Daemon):
    """dnsmasq answering NAME.test with `answer`, bound to host:port (UDP and TCP)."""

    def __init__(self, host: str, answer: str) -> None:
        self.host, self.answer = host, answer
        self.port = udp_port(host)
        self.proc = subprocess.Popen(
            [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--no-daemon", "--port",
             str(self.port), "--listen-address", host, "--bind-interfaces", "--no-resolv",
             "--no-hosts", f"--address=/test/{answer}", "--cache-size=0",
             "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None
                 or dig(self.port, "ready.test", "+short", server=host).stdout.strip() == answer,
                 what=f"dnsmasq on {host}:{self.port}")
        assert self.proc.poll() is None, "dnsmasq exited"


class Responder:
    """A UDP backend in a thread: reply(data, addr) -> bytes or None (no answer).
    Records the source address of every datagram in `seen`."""

    def __init__(self, reply, host: str = "127.0.0.1", port: int = 0, sender=None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.sender = sender or self.sock          # answer from another socket (stray test)
        self.reply, self.seen = reply, []
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def spec(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.seen.append(addr)
            answer = self.reply(data, addr)
            if answer is not None:
                self.sender.sendto(answer, addr)

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()
        if self.sender is not self.sock:
            self.sender.close()


def echo(host: str = "127.0.0.1", **kw) -> Responder:
    return Responder(lambda data, addr: data, host, **kw)


def exchange(sock, port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 3):
    """Send data to pen, return the answer (or None after timeout)."""
    sock.settimeout(timeout)
    sock.sendto(data, (host, port))
    try:
        return sock.recvfrom(65535)[0]
    except TimeoutError:
        return None


def client(host: str = "127.0.0.1"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


# --- TFTP ------------------------------------------------------------------------------

def random_file(path, size: int) -> bytes:
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


class InTftpd(Daemon):
    """tftpd-hpa in the foreground, serving (and accepting uploads into) root."""

    def __init__(self, root, host: str = "127.0.0.2") -> None:
        os.chmod(root, 0o777)                       # it drops to `nobody` when run as root
        self.host, self.port = host, udp_port(host)
        self.proc = subprocess.Popen(
            [shutil.which("in.tftpd") or "/usr/sbin/in.tftpd", "-L", "-c", "-s", str(root),
             "-a", f"{host}:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: self.proc.poll() is not None or udp_bound(host, self.port),
                 what=f"in.tftpd on {host}:{self.port}")
        assert self.proc.poll() is None, self.proc.stderr.read()


class Tftpy:
    """A tftpy server in a thread (its transfer sockets are unbound: it answers from the
    address the kernel picks, so it lives on 127.0.0.1 like pen's backend sockets)."""

    def __init__(self, root, host: str = "127.0.0.1") -> None:
        import logging

        import tftpy
        logging.getLogger("tftpy").setLevel(logging.WARNING)
        self.server = tftpy.TftpServer(str(root))
        self.host = host
        # Port 0: tftpy binds and reports the port itself. A port probed free beforehand
        # can be taken (by pen's own ephemeral backend sockets, say) before tftpy binds it.
        self.thread = threading.Thread(target=self.server.listen, args=(host, 0),
                                       kwargs={"timeout": 1}, daemon=True)
        self.thread.start()
        wait_for(self.server.is_running.is_set, what="tftpy to listen")
        self.port = self.server.listenport

    @property
    def spec(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.stop(now=True)
        self.thread.join(10)


def tftp(port: int, command: str, cwd, host: str = "127.0.0.1", timeout: float = 120):
    """The tftp-hpa client: `tftp -m binary HOST PORT -c COMMAND` in cwd."""
    started = time.monotonic()
    result = subprocess.run(["tftp", "-m", "binary", host, str(port), "-c", *command.split()],
                            cwd=cwd, capture_output=True, text=True, timeout=timeout)
    # tftp-hpa reports failures on stdout and still exits 0: look at what it says too.
    assert result.returncode == 0 and "Error" not in result.stdout + result.stderr \
        and "imed out" not in result.stdout + result.stderr, \
        f"tftp {command}: rc={result.returncode} {result.stdout} {result.stderr}"
    return time.monotonic() - started
