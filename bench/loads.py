"""The load generators (wrk, curl, dnsperf), their output parsers and small readiness probes.

Every runner returns a dict: {"count": units done, "seconds": wall time, "errors": N,
"note": text or ""} where a unit is a request, a megabyte (10**6 bytes) or a DNS query.
"""

import re
import socket
import ssl
import struct
import time

import procs


def _number(pattern, text, default=None, cast=float):
    match = re.search(pattern, text)
    return cast(match.group(1)) if match else default


def _wrk_count(text):
    """'123456 requests in 5.00s' -> (123456, 5.0); the duration may be in ms, s or m."""
    match = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", text)
    if not match:
        return None, None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(3)]
    return int(match.group(1)), float(match.group(2)) * scale


def wrk(url, seconds, close=False, connections=50, threads=2):
    argv = ["wrk", "-c%d" % connections, "-t%d" % threads, "-d%ds" % seconds, "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    status, out = procs.run_tool(argv + [url], timeout=seconds + 30)
    count, wall = _wrk_count(out)
    if status != 0 or count is None:
        return {"failed": "wrk: " + (out.strip().splitlines() or ["no output"])[-1][:80]}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)",
                                             _line(out, "Socket errors")))
    bad = _number(r"Non-2xx or 3xx responses: (\d+)", out, 0, int)
    note = []
    if errors:
        note.append("%d socket errors" % errors)
    if bad:
        note.append("%d non-2xx" % bad)
    return {"count": count - bad, "seconds": wall, "errors": errors + bad, "note": ", ".join(note)}


def _line(text, start):
    for line in text.splitlines():
        if line.strip().startswith(start):
            return line
    return ""


def curl_download(url, expected_bytes, max_seconds):
    argv = ["curl", "-s", "-S", "-o", "/dev/null", "--max-time", str(max_seconds),
            "-w", "%{size_download} %{time_total} %{http_code}", url]
    status, out = procs.run_tool(argv, timeout=max_seconds + 10)
    fields = out.split()
    if len(fields) < 3:
        return {"failed": "curl: " + out.strip()[:80]}
    size, wall, code = int(fields[-3]), float(fields[-2]), fields[-1]
    if status != 0 or code != "200" or size != expected_bytes:
        return {"failed": "curl: status %d, http %s, %d of %d bytes" % (status, code, size, expected_bytes)}
    return {"count": size / 1e6, "seconds": wall, "errors": 0, "note": ""}


def dnsperf(port, query_file, seconds, clients=8, outstanding=100):
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", query_file, "-l", str(seconds),
            "-c", str(clients), "-q", str(outstanding), "-t", "2"]
    status, out = procs.run_tool(argv, timeout=seconds + 30)
    sent = _number(r"Queries sent:\s+(\d+)", out, None, int)
    completed = _number(r"Queries completed:\s+(\d+)", out, None, int)
    lost = _number(r"Queries lost:\s+(\d+)", out, 0, int)
    wall = _number(r"Run time \(s\):\s+([\d.]+)", out)
    if status != 0 or completed is None or not wall:
        return {"failed": "dnsperf: " + (out.strip().splitlines() or ["no output"])[-1][:80]}
    note = "%d of %d lost" % (lost, sent) if lost else ""
    return {"count": completed, "seconds": wall, "errors": lost, "note": note, "lost": lost}


def http_probe(port, use_tls=False, deadline_s=5.0):
    """One GET /small through the balancer; None if a 200 came back, else the reason."""
    request = b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + deadline_s
    reason = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                sock = raw
                if use_tls:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    sock = context.wrap_socket(raw)
                sock.sendall(request)
                answer = b""
                while len(answer) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            if answer.startswith(b"HTTP/1.1 200"):
                return None
            reason = "probe got %r" % answer[:40]
        except (OSError, ssl.SSLError) as exc:
            reason = "probe: %s" % (exc.strerror or exc)
        time.sleep(0.1)
    return reason


def dns_query(name, ident=0x4242):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)


def dns_probe(port, proc, deadline_s=10.0):
    """Send A queries to 127.0.0.1:port until one is answered; None when answered, else why."""
    deadline = time.monotonic() + deadline_s
    query = dns_query("probe.bench.test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return procs.last_words(proc)
            try:
                sock.sendto(query, ("127.0.0.1", port))
                answer = sock.recv(2048)
                if answer[:2] == query[:2]:
                    return None
            except OSError:
                time.sleep(0.05)
    return "no DNS answer on port %d after %.0fs" % (port, deadline_s)
