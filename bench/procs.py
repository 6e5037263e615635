"""Process bookkeeping for the benchmark: start, wait for readiness, measure CPU, kill.

Every process is started in its own session (process group) and remembered, so
`kill_all()` can end it and anything it forked (nginx workers) by that group id.
"""

import os
import signal
import socket
import subprocess
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_started = []  # Popen objects, in start order


def free_ports(count):
    """Return `count` distinct free TCP+UDP ports on 127.0.0.1 (held open together while picking)."""
    held, ports = [], []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held += [tcp, udp]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue  # the UDP twin is taken: try another port
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def start(argv, log_path, cwd=None, env=None):
    """Start argv in the background, stdout+stderr to log_path; return the Popen."""
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=cwd, env=env, start_new_session=True)
    finally:
        log.close()
    proc.log_path = log_path
    _started.append(proc)
    return proc


def last_words(proc, limit=90):
    """The last non-empty line a process wrote, for 'n/a (reason)' cells."""
    try:
        with open(proc.log_path, "rb") as f:
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return "no output"
    lines = [ln for ln in lines if ln]
    if not lines:
        return "exited with status %s, no output" % proc.poll()
    return lines[-1][:limit]


def stop(proc, grace=3.0):
    """Terminate one started process and its process group; wait for it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # also reap any leftovers in the group (nginx workers, forked children)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    if proc in _started:
        _started.remove(proc)


def kill_all():
    for proc in reversed(list(_started)):
        stop(proc, grace=1.0)


def wait_tcp(port, proc, deadline_s=15.0):
    """Poll-connect 127.0.0.1:port until it accepts; None when ready, else a reason string."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return last_words(proc)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.05)
    return "not listening on port %d after %.0fs" % (port, deadline_s)


def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        text = f.read()
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return text[text.rindex(")") + 2:].split()


def _children_map():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_stat_fields(int(name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    return children


def cpu_times(pid):
    """(user, system) seconds of pid, all its threads and live descendants (stat fields
    14 utime, 15 stime), plus those of its waited-for children (16 cutime, 17 cstime)."""
    children = _children_map()
    todo, user, system = [pid], 0, 0
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
        except OSError:
            continue
        # fields[0] is stat field 3 (state): field N is fields[N - 3]
        user += int(fields[11])
        system += int(fields[12])
        if current == pid:
            user += int(fields[13])
            system += int(fields[14])
        todo += children.get(current, [])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def run_tool(argv, timeout):
    """Run a load tool to completion; return (exit status, stdout+stderr text)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if exc.stdout else ""
        return -1, out + "\n[timed out after %ss]" % timeout
    return done.returncode, done.stdout.decode(errors="replace")


def children(pid):
    """The child processes of pid (all its threads' /proc/PID/task/TID/children), in pid
    order: a supervising parent's workers."""
    found = set()
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return []
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                found.update(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return sorted(found)


def rss_kib(pid):
    """Resident set size of pid in KiB (VmRSS in /proc/PID/status), None once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory(pid):
    """{"parent": KiB, "workers": [KiB per child, in pid order]} of a balancer process."""
    workers = [rss_kib(child) for child in children(pid)]
    return {"parent": rss_kib(pid), "workers": [w for w in workers if w is not None]}
