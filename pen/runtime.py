"""Start-up, the main loop, signals and shutdown: the running balancer.

run() does what must happen before serving, in order: check the configuration, bind every
socket (while still privileged), daemonize, write the pid file, chroot, drop privileges.
Runtime then owns the balancer and the control server; it is also `state.process`, the
hooks through which the command language reaches the running process (hooks.py).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from . import (
    balancer,
    commands,
    control,
    daemon,
    demo,
    dsr,
    member,
    monitor,
    signals,
    status,
    tls_contexts,
    transparent,
    udp,
    upgrade,
)
from .addr import AddressError, Endpoint
from .errors import CommandError, UsageError
from .logs import ConnectionLog, set_debug, setup_logging
from .notify import notify
from .sockets import bind, source_hook
from .state import State

log = logging.getLogger("pen")

GRACE = 10.0          # seconds connections in flight get to finish after SIGTERM


@dataclass
class Options:
    """What only the process needs, beside the State (the command line fills both)."""

    foreground: bool = False
    pidfile: str | None = None
    user: str | None = None
    chroot: str | None = None
    backlog: int = 0
    multi_accept: int = 100
    demo: bool = False
    argv: list = field(default_factory=list)    # as given: an upgrade starts pen with it
    cwd: str = "/"                               # where it was given (relative paths)
    answers: str = ""             # what -O/-o and -F commands answered: pen prints it


class Runtime:
    """The running process: one balancer, the control server (-C), the -l log, signals.

    Built whole from sockets run() bound before privileges were dropped (or an upgrade
    handed over: inheritance); serve() runs until SIGTERM/SIGINT, `exit` or a successful
    upgrade (SIGUSR2), then drains."""

    running = True

    def __init__(self, state: State, opts: Options, listen_sock, contexts=None,
                 control_sock=None, started=None, inheritance=None, metrics_sock=None,
                 member=None) -> None:
        self.state = state
        self.member = member             # member.Member: a worker of a group (its parent
        #                                  has the control port and the health checks)
        self.opts = opts
        self.inheritance = inheritance   # upgrade.Inheritance: tell the old copy we serve
        self.upgrading = False
        self.handed_off = False          # a new copy serves: leave it the shared files
        self.grace = GRACE
        self.stopping = Event()
        self.conn_log = ConnectionLog()
        self.started = started    # daemon's report to the waiting parent, or None
        self.balancer = balancer.create(state, listen_sock, self.conn_log, contexts,
                                        max_accept=opts.multi_accept, backlog=opts.backlog)
        # both read the state on every connect: `transparent` and `source` may change live
        self.balancer.connect_hooks += [transparent.connect_hook(state), source_hook(state)]
        self.control = None
        if control_sock is not None:
            self.control = control.ControlServer(
                gsocket.socket(fileno=control_sock.detach()), state)
        self.monitor = monitor.Monitor(state, self.backend_tls, metrics_sock)   # checks, metrics

    # hooks for the command language (hooks.ProcessHooks) ------------------------------

    def open_log(self) -> None:
        try:
            self.conn_log.open(self.state.log)
        except (OSError, IndexError) as e:
            raise CommandError(
                f"log {self.state.log}: {getattr(e, 'strerror', None) or e}") from None

    def relisten(self, endpoint: Endpoint) -> None:
        """`listen ADDR`: the balancer opens the new address first, then lets the old go."""
        try:
            self.balancer.relisten(endpoint)
        except (UsageError, AddressError) as e:
            raise CommandError(f"listen: {e}") from None

    def set_debug(self) -> None:
        set_debug(self.state.debug)

    def shutdown(self) -> None:
        self.stopping.set()

    def health_changed(self) -> None:
        if self.member is None:
            self.monitor.changed()

    def check_now(self, server) -> None:
        if self.member is None:
            self.monitor.check_now(server)

    def refresh(self) -> None:
        """One process: its tables are the balancer's, once its relays have counted the
        bytes they moved (relay.Relay.settle)."""
        for conn in list(self.state.connections.values()):
            if conn.relay is not None:
                conn.relay.settle()

    def backend_tls(self):
        """The balancer's current ssl_backend context (it follows reloads), or None."""
        return getattr(getattr(self.balancer, "contexts", None), "backend", None)

    def save_status(self, text: str) -> None:
        """The HTML status page, to the -w file (if there is one)."""
        daemon.save_status(self.state.web_stats, text)

    def reload_tls(self) -> None:
        """Certificates, keys and ssl_* settings again (SIGHUP, ssl_* commands): new
        handshakes use them, established sessions go on; on error the old ones stay."""
        reload = getattr(self.balancer, "reload", None)     # the TLS balancer's
        if reload is None:
            return
        try:
            reload()
        except tls_contexts.TlsError as e:
            raise CommandError(f"{e} (the previous certificates stay in service)") from None
        log.info("TLS: certificates and settings reloaded")

    # the main loop ---------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until told to stop, then drain; the exit status."""
        state = self.state
        self.open_log()
        signals.handle(self)
        self.balancer.start()
        if self.control is not None:
            self.control.start()
        if self.member is None:
            self.monitor.start()
        else:
            self.member.start(self)
        log.info("pen-lb listening on %s, %d servers", state.listen, len(state.servers))
        announce(self.inheritance, self.opts.pidfile)
        # What start-up built lives as long as we do: not the GC's work. A connection leaves
        # no cycles behind, so the young generation is collected 30x less often than by
        # default (it was a tenth of the user time per new connection).
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        if self.started is not None:
            self.started()
        self.stopping.wait()
        return self.drain()

    def drain(self) -> int:
        """Stop accepting, give connections in flight their grace (GRACE seconds, or
        upgrade_grace after an upgrade), then close them."""
        if not self.handed_off:
            notify("STOPPING=1")
        self.balancer.close(drain=self.handed_off)
        self.monitor.stop()
        if self.control is not None:
            self.control.close()
            if self.state.control.is_unix and not self.handed_off:
                daemon.remove_file(self.state.control.path)
        deadline = time.monotonic() + self.grace
        while self.state.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for conn in list(self.state.connections.values()):
            if conn.close:
                conn.close()
        gevent.sleep(0)
        if self.state.listen and self.state.listen.is_unix and not self.handed_off:
            daemon.remove_file(self.state.listen.path)
        log.info("pen-lb exiting")
        return 0

    def reload(self) -> None:
        """SIGHUP: reopen the -l log, re-read the -F file (all or nothing), reload TLS."""
        log.info("SIGHUP: reopening the log")
        notify("RELOADING=1")
        try:
            self.open_log()
        except CommandError as e:
            log.error("%s", e)
        if self.state.config_file:
            try:
                commands.reload_file(self.state, self.state.config_file)
                log.info("SIGHUP: %s re-read", self.state.config_file)
            except CommandError as e:
                log.error("SIGHUP: %s; the running configuration is unchanged", e)
        try:
            self.reload_tls()
        except CommandError as e:
            log.error("%s", e)
        notify("READY=1")

    def upgrade(self) -> None:
        """SIGUSR2: start a new copy of pen and hand it the sockets and client table; once
        it serves, retire (stop accepting, drain for upgrade_grace seconds, exit)."""
        if self.member is not None:
            return                         # the group's parent upgrades the group
        if self.upgrading:
            log.warning("SIGUSR2: an upgrade is already in progress; ignored")
            return
        if self.opts.chroot:
            log.error("SIGUSR2: a new copy cannot start inside the -j chroot; "
                      "restart pen instead")
            return
        self.upgrading = True
        gevent.spawn(self._upgrade)

    def _upgrade(self) -> None:
        sockets = {f"listen {self.state.listen}": self.balancer.listening_socket()}
        if self.control is not None:
            sockets[f"control {self.state.control}"] = self.control.socket
        if self.monitor.metrics is not None:
            sockets[f"metrics {self.monitor.metrics.endpoint}"] = self.monitor.metrics.socket
        new = upgrade.hand_over(self.opts.argv, self.opts.cwd, sockets, self.state)
        if new is None:
            self.upgrading = False
            return
        log.warning("SIGUSR2: pid %d serves; pid %d stops accepting and gives its %d "
                    "connections %gs to finish", new, os.getpid(),
                    len(self.state.connections), self.state.upgrade_grace)
        self.handed_off = True
        self.grace = self.state.upgrade_grace
        self.stopping.set()

    def report(self) -> None:
        report(self.state)


def announce(inheritance, pidfile: str | None) -> None:
    """We serve: after an upgrade tell the old copy (it may retire) and write the pid file
    only now; tell systemd, with our pid after an upgrade."""
    if inheritance is not None:
        if pidfile:
            daemon.write_pidfile(pidfile)
        inheritance.ready()
        notify(f"MAINPID={os.getpid()}", "READY=1")
    else:
        notify("READY=1")


def report(state: State) -> None:
    """SIGUSR1: write the -w status page (or, without -w, log the servers)."""
    if not state.web_stats:
        for line in commands.answer(state, "servers").splitlines():
            log.warning("%s", line)
        return
    try:
        state.process.refresh()
        state.process.save_status(status.render(state, "html"))
    except CommandError as e:
        log.error("%s", e)


def check_transparent(state: State) -> None:
    """-O transparent without the capability: one line naming it, exit 1."""
    if state.transparent:
        try:
            transparent.check()
        except transparent.TransparentError as e:
            raise UsageError(e.strerror) from None


def socktype(state: State) -> int:
    return socket.SOCK_DGRAM if state.udp else socket.SOCK_STREAM


def tls_contexts_for(state: State):
    """-E / ssl_backend: the SSL contexts, or None; a bad certificate is a usage error."""
    if not tls_contexts.wanted(state):
        return None
    if state.udp:
        raise UsageError("-E/ssl_backend: TLS needs TCP; it cannot be used with -U")
    try:
        return tls_contexts.Contexts(state)
    except tls_contexts.TlsError as e:
        raise UsageError(str(e)) from None


def run(state: State, opts: Options) -> int:
    """Start pen; a user's mistake found on the way is a UsageError (one line, exit 1)."""
    signals.hold()                # a HUP, USR1 or USR2 before serve() waits for it
    report = None                 # after daemonizing: tells the waiting parent how it went
    inheritance = None            # started by an upgrade: what the old copy handed over
    worker = member.member()      # started by a worker group's parent (group.py)
    if worker is not None:
        worker.join(state)
        opts.foreground, opts.pidfile, opts.user = True, None, None
        state.control = None
    try:
        inheritance = upgrade.inherit()
        if opts.demo:
            demo.prepare(state)
        setup_logging(state.debug, opts.foreground)
        user = daemon.lookup_user(opts.user) if opts.user else None
        if state.control is not None and os.geteuid() == 0 and user is None:
            raise UsageError(f"-C {state.control}: won't open a control port running as root; "
                             "use -u USER to drop privileges (-u root forces it)")
        if state.udp:
            udp.check(state)
        control_sock = None           # first: once pen's port listens, its control port does
        if state.control is not None:
            control_sock = inheritance and inheritance.take(f"control {state.control}")
            if control_sock is None:
                control_sock = control.open_socket(state.control)
                control.warn_if_exposed(state, state.control)
        listen_sock = worker.listen if worker else \
            inheritance and (inheritance.take_listeners(state.listen, 1) or [None])[0]
        if listen_sock is None:
            listen_sock = (dsr.open_socket(state) if state.dsr_if
                           else bind(state.listen, socktype(state), backlog=opts.backlog))
        check_transparent(state)              # before daemonizing, while stderr is the user's
        contexts = tls_contexts_for(state)
        metrics_sock = None
        if inheritance is not None:
            if state.health.metrics_port is not None:
                metrics_sock = inheritance.take(f"metrics {state.health.metrics_port}")
            inheritance.restore(state)        # the old copy's client table and blacklist
        elif not opts.foreground:             # (a new copy is detached already)
            report = daemon.daemonize()
            gevent.reinit()
        try:
            if opts.pidfile and inheritance is None:   # a new copy writes it once it serves
                daemon.write_pidfile(opts.pidfile)
            for endpoint in (state.listen, state.control):   # removed on exit, even in -j
                daemon.keep_removable(endpoint.path if endpoint else None)
            daemon.keep_removable(opts.pidfile)
            if opts.chroot:
                daemon.enter_chroot(opts.chroot)
            if user is not None:
                gevent.get_hub()      # its lazy imports must happen while Python is readable
                daemon.drop_privileges(user)
            runtime = Runtime(state, opts, listen_sock, contexts, control_sock, report,
                              inheritance, metrics_sock, worker)
            state.process = runtime
            return runtime.serve()
        finally:
            daemon.remove_pidfile(opts.pidfile)
    except (UsageError, AddressError, CommandError, daemon.DaemonError,
            upgrade.UpgradeError) as e:
        if report is not None:
            report(str(e))
        if inheritance is not None:
            inheritance.failed(str(e))
        raise UsageError(str(e)) from None
