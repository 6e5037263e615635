"""Start-up, the main loop, signals and shutdown: the running balancer.

The Runtime is also `state.runtime`: the hooks through which the command language reaches
the I/O layer (listen, exit, status, log).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import stat
import time

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from . import commands, control, daemon, dsr, monitor, status, tls, transparent, udp
from .addr import AddressError, Endpoint, resolve
from .cli import Options, UsageError
from .state import State
from .tcp import Listener, TcpBalancer

log = logging.getLogger("pen")

GRACE = 10.0          # seconds connections in flight get to finish after SIGTERM


def bind(endpoint: Endpoint, socktype: int = socket.SOCK_STREAM, backlog: int = 0):
    """A listening socket (plain, not yet gevent's) for a listen address."""
    if endpoint.is_unix:
        path = endpoint.path
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)                       # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socktype)
        target = path
    else:
        resolve(endpoint, socktype, passive=True)
        sock = socket.socket(endpoint.family, socktype)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if endpoint.family == socket.AF_INET6 and endpoint.host in (None, "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        target = endpoint.sockaddr
    try:
        sock.bind(target)
        if socktype == socket.SOCK_STREAM:
            sock.listen(backlog or socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise UsageError(f"{endpoint}: cannot listen: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class Runtime:
    def __init__(self, state: State, opts: Options) -> None:
        self.state = state
        self.opts = opts
        self.stopping = Event()
        self.conn_log = daemon.ConnectionLog()
        self.balancer = None
        self.tls = None           # tls.Contexts, built by run() before daemonizing
        self.control = None       # control.ControlServer (-C)
        self.control_sock = None  # its socket, bound by run() before dropping privileges
        self.started = None       # daemon's report to the waiting parent (run() sets it)
        self.monitor = None       # monitor.Monitor: health checks, metrics_port

    # hooks for the command language -------------------------------------------------

    def open_log(self) -> None:
        try:
            self.conn_log.open(self.state.log)
        except (OSError, IndexError) as e:
            raise commands.CommandError(
                f"log {self.state.log}: {getattr(e, 'strerror', None) or e}") from None

    def relisten(self, endpoint: Endpoint) -> None:
        """`listen ADDR`: open the new listener first, then close the old one."""
        if self.state.dsr_if:
            raise commands.CommandError("listen: in DSR mode the virtual IP is fixed at start")
        try:
            sock = bind(endpoint, socktype(self.state), backlog=self.opts.backlog)
        except (UsageError, AddressError) as e:
            raise commands.CommandError(f"listen: {e}") from None
        if self.state.udp:
            self.balancer.relisten(sock)
            return
        old = self.balancer.listener
        self.balancer.listener = Listener(sock, self.balancer)
        self.balancer.listener.max_accept = self.opts.multi_accept
        self.balancer.listener.start()
        old.close()

    def set_debug(self) -> None:
        daemon.set_debug(self.state.debug)

    def shutdown(self) -> None:
        self.stopping.set()

    def write_status(self, fmt: str = "html") -> str:
        """`status [html|json|prometheus]`, SIGUSR1: the report; html also goes to -w."""
        text = status.render(self.state, fmt)
        path = self.state.web_stats
        if fmt == "html" and path:
            try:
                with open(path + ".tmp", "w") as f:
                    f.write(text)
                os.replace(path + ".tmp", path)
            except OSError as e:
                raise commands.CommandError(f"Unable to create webstats {path}: {e.strerror}") from None
        return text

    # the main loop ---------------------------------------------------------------------

    def serve(self, listen_sock) -> int:
        state = self.state
        self.open_log()
        balancer = udp.UdpBalancer if state.udp else TcpBalancer
        if self.tls is not None:                  # -E / ssl_backend: the TLS front end
            balancer = functools.partial(tls.TlsBalancer, contexts=self.tls)
        if state.dsr_if:                          # raw frames on dsr_if: nothing is accepted
            balancer = dsr.Forwarder
        self.balancer = balancer(state, listen_sock, self.conn_log.write)
        self.balancer.listener.max_accept = self.opts.multi_accept
        check_transparent(state)
        # both read the state on every connect: `transparent` and `source` may change live
        self.balancer.connect_hooks += [transparent.connect_hook(state), bind_source(state)]
        gevent.signal_handler(signal.SIGTERM, self.shutdown)
        gevent.signal_handler(signal.SIGINT, self.shutdown)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        gevent.signal_handler(signal.SIGUSR1, self.report)
        self.balancer.listener.start()
        if self.control_sock is not None:
            self.control = control.ControlServer(
                gsocket.socket(fileno=self.control_sock.detach()), state)
            self.control.start()
        self.monitor = monitor.Monitor(state)
        self.monitor.start()
        log.info("pen-lb listening on %s, %d servers", state.listen, len(state.servers))
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
        """Stop accepting, give connections in flight GRACE seconds, then close them."""
        self.balancer.listener.close()
        self.monitor.stop()
        if self.control is not None:
            self.control.close()
            if self.state.control.is_unix:
                daemon.remove_file(self.state.control.path)
        deadline = time.monotonic() + GRACE
        while self.state.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for conn in list(self.state.connections.values()):
            if conn.close:
                conn.close()
        gevent.sleep(0)
        if self.state.listen and self.state.listen.is_unix:
            daemon.remove_file(self.state.listen.path)
        log.info("pen-lb exiting")
        return 0

    def reload(self) -> None:
        log.info("SIGHUP: reopening the log")
        try:
            self.open_log()
        except commands.CommandError as e:
            log.error("%s", e)
        if self.state.config_file:
            try:
                commands.reload_file(self.state, self.state.config_file)
                log.info("SIGHUP: %s re-read", self.state.config_file)
            except commands.CommandError as e:
                log.error("SIGHUP: %s; the running configuration is unchanged", e)
        try:
            self.reload_tls()
        except commands.CommandError as e:
            log.error("%s", e)

    def reload_tls(self) -> None:
        """Certificates, keys and ssl_* settings again (SIGHUP, ssl_* commands): new
        handshakes use them, established sessions go on; on error the old ones stay."""
        if not isinstance(self.balancer, tls.TlsBalancer):
            return
        try:
            self.balancer.reload()
        except tls.TlsError as e:
            raise commands.CommandError(f"{e} (the previous certificates stay in service)") from None
        log.info("TLS: certificates and settings reloaded")

    def report(self) -> None:
        """SIGUSR1: write the -w status page (or, without -w, log the servers)."""
        if not self.state.web_stats:
            for line in commands.answer(self.state, "servers").splitlines():
                log.warning("%s", line)
            return
        try:
            self.write_status("html")
        except commands.CommandError as e:
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


def tls_contexts(state: State):
    """-E / ssl_backend: the SSL contexts, or None; a bad certificate is a usage error."""
    if not tls.wanted(state):
        return None
    if state.udp:
        raise UsageError("-E/ssl_backend: TLS needs TCP; it cannot be used with -U")
    try:
        return tls.Contexts(state)
    except tls.TlsError as e:
        raise UsageError(str(e)) from None


def bind_source(state: State):
    """`source IP`: connect to the servers from a fixed local address."""
    def hook(sock, server, client_address):
        if server.endpoint.family != socket.AF_UNIX and state.source:
            sock.bind((state.source, 0))
    return hook


def run(state: State, opts: Options) -> int:
    """Start pen; a user's mistake found on the way is a UsageError (one line, exit 1)."""
    # The listener takes connections (into its backlog) before serve() installs the signal
    # handlers: until then a HUP (logrotate) or USR1 must not kill pen by default action.
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    report = None                 # after daemonizing: tells the waiting parent how it went
    try:
        if opts.demo:
            from .demo import prepare
            prepare(state)
        daemon.setup_logging(state.debug, opts.foreground)
        user = daemon.lookup_user(opts.user) if opts.user else None
        if state.control is not None and os.geteuid() == 0 and user is None:
            raise UsageError(f"-C {state.control}: won't open a control port running as root; "
                             "use -u USER to drop privileges (-u root forces it)")
        if state.udp:
            udp.check(state)
        listen_sock = (dsr.open_socket(state) if state.dsr_if
                       else bind(state.listen, socktype(state), backlog=opts.backlog))
        check_transparent(state)              # before daemonizing, while stderr is the user's
        contexts = tls_contexts(state)
        control_sock = control.open_socket(state.control) if state.control is not None else None
        if control_sock is not None:
            control.warn_if_exposed(state, state.control)
        if not opts.foreground:
            report = daemon.daemonize()
            gevent.reinit()
        try:
            if opts.pidfile:
                daemon.write_pidfile(opts.pidfile)
            if opts.chroot:
                daemon.enter_chroot(opts.chroot)
            if user is not None:
                gevent.get_hub()      # its lazy imports must happen while Python is readable
                daemon.drop_privileges(user)
            runtime = Runtime(state, opts)
            state.runtime = runtime
            runtime.tls = contexts
            runtime.control_sock = control_sock
            runtime.started = report
            return runtime.serve(listen_sock)
        finally:
            daemon.remove_file(opts.pidfile)
    except (UsageError, AddressError, commands.CommandError, daemon.DaemonError) as e:
        if report is not None:
            report(str(e))
        raise UsageError(str(e)) from None
