"""A worker group (-O "workers N"): one pen over several cores, clients tracked exactly.

The parent binds N listening sockets in one SO_REUSEPORT group steered by client address
(steering.py), creates the shared board (board.py) and starts N workers, each today's
single-process balancer on its own socket (member.py). The parent serves no client: it
has the control port, the health checks and the metrics listener, and answers for the
whole balancer:
- a command that may change the configuration runs on the parent's State first (its
  answer, or its error, is the answer) and then on every worker's;
- questions about servers read the board, which sums what every worker counted;
- questions about connections and clients gather the workers' tables first (connection
  numbers are the worker's slot * N + its row; client slots likewise);
- `close N` goes to the worker that holds connection N.
It supervises: a worker that exits, or whose heartbeat stops, is started again at once on
the same socket (so the same clients reach it); SIGTERM drains every worker, SIGHUP reaches
every worker, SIGUSR1 writes the status page for the group, SIGUSR2 upgrades the group.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections import Counter

import gevent
import gevent.lock
from gevent import socket as gsocket
from gevent import subprocess as gsubprocess
from gevent.event import Event

from . import board as shared
from . import commands, control, daemon, monitor, signals, steering, tls_contexts, upgrade
from .errors import CommandError, UsageError
from .logs import set_debug, setup_logging
from .member import ENV, HEARTBEAT, ChannelError, recv_frame, send_frame
from .notify import notify
from .registry import WHOLE
from .runtime import Options, announce, check_transparent, report, socktype
from .sockets import bind
from .state import Client, Connection, State

log = logging.getLogger("pen")

STALE = 3.0               # seconds without a heartbeat: the worker is stuck; kill it
STARTING = 30.0           # seconds a new worker gets to beat first (imports, -F, TLS files)
SUPERVISE = 0.1           # seconds between looks at the workers
ASK = 5.0                 # seconds a worker gets to answer the parent
GRACE = 15.0              # seconds the parent waits for draining workers after SIGTERM


def check(state: State, opts: Options) -> None:
    """What a group cannot do: one line naming it (UsageError)."""
    if state.dsr_if:
        raise UsageError("workers: DSR (dsr_if) cannot be split over workers: one raw "
                         "socket per interface; use workers 1")
    if state.listen.is_unix:
        raise UsageError("workers: a UNIX socket listener cannot be shared by workers")
    if opts.chroot:
        raise UsageError("workers: -j (chroot) cannot start workers inside the jail")
    if not sys.platform.startswith("linux"):
        raise UsageError("workers: needs Linux (SO_REUSEPORT steering)")


def bind_group(state: State, opts: Options, workers: int) -> list:
    """N listening sockets in one SO_REUSEPORT group, steered by client address;
    SteeringError if the kernel cannot steer."""
    socks = []
    try:
        for _ in range(workers):
            socks.append(bind(state.listen, socktype(state), backlog=opts.backlog,
                              reuseport=True))
        steering.attach(socks[0], workers)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Worker:
    """The parent's handle on one worker: its row, socket, process and channel."""

    def __init__(self, row: int, listen) -> None:
        self.row = row
        self.listen = listen
        self.process = None
        self.channel = None
        self.started = 0.0
        self.restarts = 0
        self.due = 0.0              # (monotonic) when to start it again after a failure
        self.quick_deaths = 0       # deaths soon after starting, in a row: the back-off
        self.asking = None          # a lock: one request at a time on the channel

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0


class Group:
    """The parent of a worker group; also the group's process hooks (hooks.ProcessHooks)."""

    running = True

    def __init__(self, state: State, opts: Options, socks: list, board, board_fd: int,
                 control_sock=None, started=None, inheritance=None, metrics_sock=None) -> None:
        self.state, self.opts = state, opts
        self.board, self.board_fd = board, board_fd
        self.workers = [Worker(row, sock) for row, sock in enumerate(socks)]
        self.started = started
        self.inheritance = inheritance   # upgrade.Inheritance: tell the old copy we serve
        self.upgrading = self.handed_off = False
        self.stopping = Event()
        self.control = None
        if control_sock is not None:
            self.control = control.ControlServer(gsocket.socket(fileno=control_sock.detach()),
                                                 state, answer=self.answer)
        self.monitor = monitor.Monitor(state, metrics_sock=metrics_sock)   # checks, metrics
        self.theirs = Counter()                 # the workers' events in state.counters

    # workers ----------------------------------------------------------------------------

    def spawn(self, worker: Worker, clients: list = ()) -> None:
        """Start the worker's process (the group's command line, its socket, the board,
        a channel, and after an upgrade its clients); OSError if it cannot be started."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [worker.listen.fileno(), self.board_fd, theirs.fileno()]
        env = dict(os.environ, **{ENV: ",".join(map(str, [worker.row, len(self.workers),
                                                            *fds]))})
        env.pop("NOTIFY_SOCKET", None)          # systemd hears the parent alone
        try:
            worker.process = gsubprocess.Popen(
                [sys.executable, "-m", "pen", *self.opts.argv], cwd=self.opts.cwd, env=env,
                pass_fds=fds, stdin=gsubprocess.DEVNULL, stdout=gsubprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.channel = gsocket.socket(fileno=ours.detach())
        worker.asking = gevent.lock.Semaphore()
        worker.started = time.monotonic()
        try:
            send_frame(worker.channel, {"op": "configure", "clients": list(clients),
                                        "lines": commands.dump(self.state).splitlines()})
        except OSError as e:
            log.error("worker %d (pid %d): %s", worker.row, worker.pid, e)  # it died: seen
        log.info("worker %d: pid %d", worker.row, worker.pid)

    def ask(self, worker: Worker, request: dict) -> dict | None:
        """A worker's answer to one request; None if it is gone or slow (it is restarted)."""
        if worker.channel is None:
            return None
        with worker.asking:
            try:
                with gevent.Timeout(ASK):
                    send_frame(worker.channel, request)
                    return recv_frame(worker.channel)
            except (OSError, ValueError, ChannelError, gevent.Timeout) as e:
                log.error("worker %d (pid %d): no answer to %s: %s", worker.row, worker.pid,
                          request.get("op"), e or "timed out")
                return None

    def ask_all(self, request: dict) -> list:
        jobs = [gevent.spawn(self.ask, w, request) for w in self.workers]
        gevent.joinall(jobs)
        return [job.value for job in jobs]

    def supervise(self) -> None:
        """Restart a worker that exited or stopped beating; within a second of noticing."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is None:
                    if now >= worker.due:
                        self.start_again(worker)
                    continue
                code = worker.process.poll()
                beat = self.board.header("heartbeat", worker.row)
                silent = now - max(beat, worker.started)
                if code is None and silent > (STALE if beat > worker.started else STARTING):
                    log.error("worker %d (pid %d): no heartbeat for %.1f s; killing it",
                              worker.row, worker.pid, silent)
                    worker.process.kill()
                    code = worker.process.wait()
                if code is not None and not self.stopping.is_set():
                    self.restart(worker, code)
            self.stopping.wait(SUPERVISE)

    def restart(self, worker: Worker, code: int) -> None:
        """A worker ended: its row retires; it starts again at once, or after a back-off
        (0.1 s doubling to 5 s) while it keeps dying within a second of starting."""
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        self.board.retire(worker.row)
        now = time.monotonic()
        worker.quick_deaths = worker.quick_deaths + 1 if now - worker.started < 1 else 0
        delay = min(0.1 * 2 ** (worker.quick_deaths - 1), 5.0) if worker.quick_deaths else 0
        log.error("worker %d (pid %d) ended (%s); starting it again%s", worker.row,
                  worker.pid, how, f" in {delay:g} s" if delay else "")
        self.state.count("worker_restarts")
        worker.restarts += 1
        worker.process, worker.due = None, now + delay
        if not delay:
            self.start_again(worker)

    def start_again(self, worker: Worker) -> None:
        try:
            self.spawn(worker)
        except OSError as e:
            log.error("worker %d: cannot start: %s; trying again in 1 s", worker.row, e)
            worker.process, worker.due = None, time.monotonic() + 1.0

    # the control port -------------------------------------------------------------------

    def answer(self, line: str) -> str:
        """The control port's answer, for the whole group."""
        try:
            words = commands.split(line)
            if not words:
                return ""
            name = commands.lookup(words)[0]
        except CommandError as e:
            return f"{e}\n"
        if name == "close" and len(words) == 2:
            return self.close(words[1])
        try:
            reply = commands.execute(self.state, line)
        except CommandError as e:
            return f"{e}\n"                   # the workers are not asked
        if name in WHOLE:      # the parent's State has the settings, the board the counts,
            return reply       # and refresh() gathers the workers' tables (status, recent)
        for worker, answer in zip(self.workers,
                                  self.ask_all({"op": "run", "line": line}), strict=True):
            if answer is not None and answer.get("answer") != reply:
                log.warning("worker %d answered %r with %r (the parent: %r)", worker.row,
                            line, answer.get("answer"), reply)
        return reply

    def close(self, word: str) -> str:
        try:
            n = int(word)
        except ValueError:
            return commands.answer(self.state, f"close {word}")
        if n < 0:
            return f"Connection {n} out of range\n"
        worker = self.workers[n % len(self.workers)]
        self.ask(worker, {"op": "close", "slot": n // len(self.workers)})
        return f"Forcibly closing connection {n}\n"

    def refresh(self) -> None:
        self.gather()

    def gather(self) -> None:
        """The workers' connection and client tables into the parent's State, numbered
        for the group (a worker's slot * N + its row)."""
        state, n = self.state, len(self.workers)
        connections, clients, counters, accepted = {}, [], Counter(), 0
        servers = {s.index: s for s in state.servers}
        for row, snap in enumerate(self.ask_all({"op": "snapshot"})):
            if not snap or "connections" not in snap:
                continue
            entries = {}
            for slot, ip, server, last, connects, sx, rx in snap["clients"]:
                entry = Client(ip, server, last, slot * n + row, connects, sx, rx)
                entries[entry.slot] = entry
                clients.append(entry)
            for cid, client, server, cslot, started, sx, rx, downfd, upfd in \
                    snap["connections"]:
                conn = Connection(cid * n + row, tuple(client) if isinstance(client, list)
                                  else client, server=servers.get(server),
                                  entry=entries.get(cslot * n + row), started=started,
                                  sx=sx, rx=rx, downfd=downfd, upfd=upfd)
                connections[conn.id] = conn
            counters.update(snap["counters"])
            accepted += snap["accepted"]
        state.connections = dict(sorted(connections.items()))
        clients.sort(key=lambda c: c.last)          # least recently used first, as a table
        state.clients = Snapshot(state.clients.slots, clients)
        # the parent's own events (control_refused, worker_restarts...) and the workers'
        state.counters.subtract(self.theirs)
        state.counters.update(counters)
        state.counters = +state.counters          # (a restarted worker's events start anew)
        self.theirs = counters
        state.accepted = accepted
        state.worker_table = [{"row": w.row, "pid": w.pid, "restarts": w.restarts,
                               "heartbeat_age": round(time.monotonic() - self.board.header(
                                   "heartbeat", w.row), 2)} for w in self.workers]

    # process hooks (hooks.ProcessHooks) -------------------------------------------------

    def open_log(self) -> None:
        pass                               # the workers log the connections

    def set_debug(self) -> None:
        set_debug(self.state.debug)

    def relisten(self, endpoint) -> None:
        raise CommandError("listen: a worker group cannot move its address while it runs; "
                           "restart pen with the new one")

    def reload_tls(self) -> None:
        """Check the TLS settings here (the error is the command's); the workers reload."""
        if tls_contexts.wanted(self.state):
            try:
                tls_contexts.Contexts(self.state)
            except tls_contexts.TlsError as e:
                raise CommandError(f"{e} (the previous certificates stay in service)") \
                    from None

    def save_status(self, text: str) -> None:
        daemon.save_status(self.state.web_stats, text)

    def shutdown(self) -> None:
        self.stopping.set()

    def health_changed(self) -> None:
        self.monitor.changed()

    def check_now(self, server) -> None:
        self.monitor.check_now(server)

    # the main loop ----------------------------------------------------------------------

    def serve(self) -> int:
        signals.handle(self)
        inherited = self.clients_by_row()
        for worker in self.workers:
            try:
                self.spawn(worker, inherited[worker.row])
            except OSError as e:
                for started in self.workers:
                    if started.process is not None:
                        started.process.kill()
                raise UsageError(f"workers: cannot start a worker: {e}") from None
        if self.control is not None:
            self.control.start()
        self.monitor.start()
        supervisor = gevent.spawn(self.supervise)
        log.info("pen-lb listening on %s with %d workers, %d servers", self.state.listen,
                 len(self.workers), len(self.state.servers))
        if self.inheritance is not None:           # an upgrade: the old group may retire
            self.await_heartbeats()                # once every new worker serves
        announce(self.inheritance, self.opts.pidfile)
        if self.started is not None:
            self.started()
        self.stopping.wait()
        supervisor.kill()
        return self.drain()

    def clients_by_row(self) -> list[list]:
        """The client table an upgrade handed over, split by the worker each client's
        address is steered to."""
        rows: list[list] = [[] for _ in self.workers]
        for c in self.state.clients:
            rows[steering.worker_for(str(c.ip), len(rows))].append(
                [str(c.ip), c.server, c.last, c.connects, c.sx, c.rx])
        return rows

    def await_heartbeats(self) -> None:
        """Until every worker has beaten once (it serves), at most STARTING seconds."""
        deadline = time.monotonic() + STARTING
        while time.monotonic() < deadline and not all(
                self.board.header("heartbeat", w.row) > w.started for w in self.workers):
            gevent.sleep(HEARTBEAT / 2)

    def drain(self) -> int:
        """SIGTERM: every worker drains (GRACE); after an upgrade the old workers get
        upgrade_grace, and the shared files stay for the new group."""
        if not self.handed_off:
            notify("STOPPING=1")
        if self.control is not None:
            self.control.close()
            if self.state.control.is_unix and not self.handed_off:
                daemon.remove_file(self.state.control.path)
        self.monitor.stop()
        for worker in self.workers:
            if self.handed_off:
                self.ask(worker, {"op": "retire"})
            else:
                self.signal(worker, signal.SIGTERM)
                worker.listen.close()          # new clients are refused, not left queued
        grace = self.state.upgrade_grace if self.handed_off else GRACE
        deadline = time.monotonic() + grace + 5
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                with gevent.Timeout(max(deadline - time.monotonic(), 0.1)):
                    worker.process.wait()
            except gevent.Timeout:
                log.error("worker %d (pid %d) did not stop; killing it", worker.row,
                          worker.pid)
                worker.process.kill()
        log.info("pen-lb exiting")
        return 0

    def signal(self, worker: Worker, sig: int) -> None:
        if worker.process is None:
            return
        try:
            worker.process.send_signal(sig)
        except OSError:
            pass

    def reload(self) -> None:
        """SIGHUP: the -F file again here (all or nothing), then in every worker."""
        notify("RELOADING=1")
        if self.state.config_file:
            try:
                commands.reload_file(self.state, self.state.config_file)
            except CommandError as e:
                log.error("SIGHUP: %s; the running configuration is unchanged", e)
                notify("READY=1")
                return
        for worker in self.workers:
            self.signal(worker, signal.SIGHUP)
        log.info("SIGHUP: passed to %d workers", len(self.workers))
        notify("READY=1")

    def report(self) -> None:
        report(self.state)

    def upgrade(self) -> None:
        """SIGUSR2: start a new copy (its own group of workers) and hand it the group's
        sockets, client tables and blacklist; once its workers serve, ours drain for
        upgrade_grace seconds and exit (as a single pen does: runtime.Runtime.upgrade)."""
        if self.upgrading:
            log.warning("SIGUSR2: an upgrade is already in progress; ignored")
            return
        self.upgrading = True
        gevent.spawn(self._upgrade)

    def _upgrade(self) -> None:
        state = self.state
        self.gather()
        sockets = {upgrade.group_name(state.listen, w.row): w.listen for w in self.workers}
        if self.control is not None:
            sockets[f"control {state.control}"] = self.control.socket
        if self.monitor.metrics is not None:
            sockets[f"metrics {self.monitor.metrics.endpoint}"] = self.monitor.metrics.socket
        new = upgrade.hand_over(self.opts.argv, self.opts.cwd, sockets, state)
        if new is None:
            self.upgrading = False
            return
        log.warning("SIGUSR2: pid %d serves; the %d workers of pid %d stop accepting and "
                    "give their connections %gs to finish", new, len(self.workers),
                    os.getpid(), state.upgrade_grace)
        self.handed_off = True
        self.stopping.set()


class Snapshot(list):
    """The group's client table as gathered: iterable like a ClientTable; slots is each
    worker's table size (the setting)."""

    def __init__(self, slots: int, clients: list) -> None:
        super().__init__(clients)
        self.slots = slots

    def resize(self, slots: int) -> None:
        self.slots = slots


def run(state: State, opts: Options) -> int:
    """Start a worker group (state.workers > 1); a user's mistake is a UsageError."""
    signals.hold()
    report = None
    inheritance = None
    try:
        inheritance = upgrade.inherit()
        setup_logging(state.debug, opts.foreground)
        check(state, opts)
        user = daemon.lookup_user(opts.user) if opts.user else None
        if state.control is not None and os.geteuid() == 0 and user is None:
            raise UsageError(f"-C {state.control}: won't open a control port running as root; "
                             "use -u USER to drop privileges (-u root forces it)")
        try:
            socks = inheritance and inheritance.take_listeners(state.listen, state.workers)
            socks = socks or bind_group(state, opts, state.workers)
        except steering.SteeringError as e:
            log.warning("workers: the kernel cannot steer clients to workers (%s); "
                        "serving with 1 worker", e.strerror)
            if not opts.foreground:          # (the log is syslog's: say it here too)
                print(f"pen: workers: the kernel cannot steer clients ({e.strerror}); "
                      "serving with 1 worker", file=sys.stderr)
            from . import runtime
            state.workers = 1
            return runtime.run(state, opts)
        check_transparent(state)
        control_sock = metrics_sock = None
        if state.control is not None:
            control_sock = inheritance and inheritance.take(f"control {state.control}")
            if control_sock is None:
                control_sock = control.open_socket(state.control)
                control.warn_if_exposed(state, state.control)
        board, board_fd = shared.Board.create(state.workers)
        shared.share(state, board)
        if inheritance is not None:
            if state.health.metrics_port is not None:
                metrics_sock = inheritance.take(f"metrics {state.health.metrics_port}")
            inheritance.restore(state)        # the old group's clients and blacklist
        elif not opts.foreground:
            report = daemon.daemonize()
            gevent.reinit()
        try:
            if opts.pidfile and inheritance is None:   # a new copy writes it once it serves
                daemon.write_pidfile(opts.pidfile)
            daemon.keep_removable(state.control.path if state.control else None)
            daemon.keep_removable(opts.pidfile)
            if user is not None:
                gevent.get_hub()
                daemon.drop_privileges(user)
            group = Group(state, opts, socks, board, board_fd, control_sock, report,
                          inheritance, metrics_sock)
            state.process = group
            return group.serve()
        finally:
            daemon.remove_pidfile(opts.pidfile)
    except (UsageError, CommandError, daemon.DaemonError, upgrade.UpgradeError) as e:
        if report is not None:
            report(str(e))
        if inheritance is not None:
            inheritance.failed(str(e))
        raise UsageError(str(e)) from None
