"""The running side of health checks and the metrics endpoint.

A Monitor is started by the runtime and stopped when it drains. It keeps one greenlet per
checked server, each checking every healthcheck_interval (a check that takes longer delays
the next one, never overlaps it), first checks spread over one interval so the servers are
not all checked at once, and the metrics listener (metrics_port). Settings changes reach it
through state.health.on_change; `state.health.check_now(server)` asks for a check at once
(UDP silence does), at most one per MIN_GAP of the interval.
"""

from __future__ import annotations

import logging
import time

import gevent
from gevent.event import Event

from . import health, metrics, probes
from .state import Server, State

log = logging.getLogger("pen")

MIN_GAP = 0.25                # of the interval: check_now waits at least this since the last


class Monitor:
    def __init__(self, state: State, tls_context=None) -> None:
        self.state = state
        self.tls_context = tls_context           # ssl_backend's context, for the checks
        self.workers: dict[int, tuple[gevent.Greenlet, Event]] = {}
        self.changed_event = Event()
        self.supervisor = None
        self.metrics = None                      # metrics.MetricsServer

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.state.health.on_change = self.changed
        self.state.health.on_check_now = self.check_now
        self.update_metrics()
        self.supervisor = gevent.spawn(self.supervise)

    def stop(self) -> None:
        self.state.health.on_change = self.state.health.on_check_now = None
        if self.supervisor is not None:
            self.supervisor.kill(block=False)
        for greenlet, _ in self.workers.values():
            greenlet.kill(block=False)
        self.workers.clear()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def changed(self) -> None:
        """A setting changed: the metrics listener now (its errors are the command's),
        the check workers at the supervisor's next turn."""
        self.update_metrics()
        self.changed_event.set()

    def update_metrics(self) -> None:
        wanted = self.state.health.metrics_port
        current = self.metrics.endpoint if self.metrics is not None else None
        if str(wanted) == str(current):
            return
        new = metrics.MetricsServer.open(wanted, self.state) if wanted is not None else None
        if self.metrics is not None:
            self.metrics.close()
        self.metrics = new
        if new is not None:
            new.start()

    # checks -------------------------------------------------------------------------------

    def supervise(self) -> None:
        """Keep one worker per server that has a check; spread new ones over an interval."""
        while True:
            self.reconcile()
            self.changed_event.clear()
            self.changed_event.wait(timeout=max(min(self.state.health.interval, 1.0), 0.05))

    def reconcile(self) -> None:
        settings = self.state.health
        checked = [s for s in self.state.servers
                   if s.endpoint is not None and health.effective(settings, s) is not None]
        wanted = {s.index for s in checked}
        for index in list(self.workers):
            greenlet, _ = self.workers[index]
            if index not in wanted or greenlet.dead:
                greenlet.kill(block=False)
                del self.workers[index]
        for position, server in enumerate(checked):
            if server.index not in self.workers:
                delay = settings.interval * position / max(len(checked), 1)
                wake = Event()
                self.workers[server.index] = (gevent.spawn(self.work, server, delay, wake), wake)

    def check_now(self, server: Server) -> None:
        entry = self.workers.get(server.index)
        if entry is not None:
            entry[1].set()

    def target(self, server: Server) -> probes.Target:
        state = self.state
        return probes.Target(server.endpoint, source=state.source,
                             tls=self.tls_context if state.ssl_backend else None,
                             tcp=not state.udp)

    def work(self, server: Server, delay: float, wake: Event) -> None:
        settings = self.state.health
        wake.wait(timeout=delay)
        while True:
            check = health.effective(settings, server)
            if check is None or server.endpoint is None:
                return
            started = time.monotonic()
            reason = probes.probe(check, self.target(server), settings.timeout)
            self.record(server, check, reason, time.monotonic() - started)
            wake.clear()
            # the next check one interval after this one began (or at once, if it took
            # longer); check_now wakes it earlier, but not before MIN_GAP of the interval
            due = started + settings.interval
            gevent.sleep(max(min(MIN_GAP * settings.interval, due - time.monotonic()), 0))
            wake.wait(timeout=max(due - time.monotonic(), 0))

    def record(self, server: Server, check, reason: str, duration: float) -> None:
        settings, now = self.state.health, time.time()
        if health.effective(settings, server) is not check:
            return                             # the check changed while this one ran
        change = server.health.record(not reason, reason, now, settings.rise, settings.fall,
                                      duration)
        if change is not None:
            log.warning("server %s (%s) %s", server.index, server.endpoint, change)
            if server.health.up:
                health.comes_back(server, now)
