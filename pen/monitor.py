"""The running side of health checks and the metrics endpoint.

A Monitor is started by the runtime and stopped when it drains. It checks every server
that has a check once per healthcheck_interval (a check that takes longer delays the next
one, never overlaps it), first checks spread over one interval so the servers are not all
checked at once, and keeps the metrics listener (metrics_port). The runtime passes it
settings changes (changed) and requests for a check at once (check_now: UDP silence asks),
which it honours at most once per MIN_GAP of the interval.
"""

from __future__ import annotations

import heapq
import logging
import time

import gevent
from gevent.event import Event

from . import greenlets, health, metrics, probes
from .state import Server, State

log = logging.getLogger("pen")

MIN_GAP = 0.25                # of the interval: check_now waits at least this since the last
TICKS = 10                    # the scheduler's wake-ups per interval...
MIN_TICK, MAX_TICK = 0.02, 0.25   # ...within these bounds (seconds)
MAX_CHECKS = 512              # checks in flight at once
RENEW = 1.0                   # seconds between looks at the server table


class Monitor:
    """The check scheduler and the metrics listener of a running balancer. backend_tls()
    gives the balancer's current ssl_backend context (or None); metrics_sock is a metrics
    listener an upgrade handed over."""

    def __init__(self, state: State, backend_tls=lambda: None, metrics_sock=None) -> None:
        self.state = state
        self.backend_tls = backend_tls
        self.metrics_sock = metrics_sock
        self.due: dict[int, float] = {}          # server index -> when its next check is due
        self.heap: list[tuple[float, int]] = []  # (due, index), some stale: due says
        self.started: dict[int, float] = {}      # server index -> when its last check began
        self.running: set[int] = set()
        self.stopped = False
        self.changed_event = Event()
        self.supervisor = None
        self.metrics = None                      # metrics.MetricsServer

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.update_metrics()
        self.supervisor = gevent.spawn(self.supervise)

    def stop(self) -> None:
        if self.supervisor is not None:       # at once, and no cycle through it left behind
            self.supervisor.kill(block=True, timeout=1)
            self.supervisor = None
        self.stopped = True                      # checks in flight end within their timeout
        self.due.clear()
        self.heap.clear()
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
        sock, self.metrics_sock = self.metrics_sock, None     # (an upgrade's, once)
        new = metrics.MetricsServer.open(wanted, self.state, sock) if wanted is not None else None
        if self.metrics is not None:
            self.metrics.close()
        self.metrics = new
        if new is not None:
            new.start()

    # checks -------------------------------------------------------------------------------

    def supervise(self) -> None:
        """One greenlet starts the checks that are due, each in a worker greenlet, waking
        at most TICKS times an interval: a sleeping greenlet per server would wake the loop
        once per check, and that alone cost 3% of a core at 200 checks a second. The list
        of checked servers is renewed every RENEW seconds and when a setting changes."""
        renewed = 0.0
        while True:
            now = time.monotonic()
            if self.changed_event.is_set() or now - renewed >= RENEW:
                self.changed_event.clear()
                self.renew(now)
                renewed = now
            self.start_due(now)
            tick = min(max(self.state.health.interval / TICKS, MIN_TICK), MAX_TICK)
            wake = min(self.heap[0][0] if self.heap else now + RENEW, renewed + RENEW)
            self.changed_event.wait(timeout=max(wake - time.monotonic(), tick))

    def renew(self, now: float) -> None:
        """Follow the server table: new checked servers get first checks spread over one
        interval; servers without a check (or gone) are dropped."""
        settings, servers = self.state.health, self.state.servers
        checked = {s.index for s in servers
                   if s.endpoint is not None and health.effective(settings, s) is not None}
        for index in [i for i in self.due if i not in checked]:
            del self.due[index]
        new = sorted(checked - self.due.keys())
        for position, index in enumerate(new):
            self.schedule(index, now + settings.interval * position / len(new))

    def schedule(self, index: int, when: float) -> None:
        self.due[index] = when
        heapq.heappush(self.heap, (when, index))

    def start_due(self, now: float) -> None:
        heap, servers = self.heap, self.state.servers
        while heap and heap[0][0] <= now and len(self.running) < MAX_CHECKS:
            when, index = heapq.heappop(heap)
            if self.due.get(index) != when or index in self.running or index >= len(servers):
                continue                 # rescheduled, dropped, or its check still runs
            self.running.add(index)
            greenlets.spawn(self.check, servers[index])   # a parked greenlet: no new stack

    def check_now(self, server: Server) -> None:
        """Check server at once, but not sooner than MIN_GAP of an interval after its last."""
        due = self.due.get(server.index)
        if due is not None:
            earliest = self.started.get(server.index, 0.0) + \
                MIN_GAP * self.state.health.interval
            when = max(earliest, time.monotonic())
            if when < due:
                self.schedule(server.index, when)
                self.changed_event.set()

    def target(self, server: Server) -> probes.Target:
        state = self.state
        return probes.Target(server.endpoint, source=state.source,
                             tls=self.backend_tls() if state.ssl_backend else None,
                             tcp=not state.udp)

    def check(self, server: Server) -> None:
        """One check; the next is due one interval after this one began (at once if it took
        longer: checks of a server never overlap)."""
        settings = self.state.health
        started = time.monotonic()
        self.started[server.index] = started
        scheduled = self.due.get(server.index, started)
        try:
            check = health.effective(settings, server)
            if check is None or server.endpoint is None:
                return
            reason = probes.probe(check, self.target(server), settings.timeout)
            self.record(server, check, reason, time.monotonic() - started)
        finally:
            self.running.discard(server.index)
            if server.index in self.due:     # on the beat, unless the check ran long
                self.schedule(server.index, max(scheduled + settings.interval,
                                                time.monotonic()))

    def record(self, server: Server, check, reason: str, duration: float) -> None:
        settings, now = self.state.health, time.time()
        if self.stopped or health.effective(settings, server) is not check:
            return                             # the check changed while this one ran
        change = server.health.record(not reason, reason, now, settings.rise, settings.fall,
                                      duration)
        if change is not None:
            log.warning("server %s (%s) %s", server.index, server.endpoint, change)
            if server.health.up:
                health.comes_back(server, now)
