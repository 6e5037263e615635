"""Greenlets that outlive their task.

A new greenlet's first frame maps a fresh 16 KiB frame stack (mmap) that is unmapped when
it dies (munmap and its TLB shootdown): four syscalls and page faults per connection for
the two greenlets a connection used to get. A parked worker takes the next task for the
price of one switch; at most KEEP of them wait, the rest end.
"""

from __future__ import annotations

import sys

import gevent
from greenlet import getcurrent, greenlet

KEEP = 256
_TASK = object()           # marks a switch that hands a parked worker its next task


class Pool:
    def __init__(self, keep: int = KEEP) -> None:
        self.hub = gevent.get_hub()
        self.idle: list[greenlet] = []
        self.keep = keep

    def spawn(self, task, *args) -> greenlet:
        """Run task(*args) in a greenlet of its own, from the loop's next turn."""
        worker = self.idle.pop() if self.idle else greenlet(self._work, self.hub)
        self.hub.loop.run_callback(worker.switch, _TASK, task, args)
        return worker

    def _work(self, marker, task, args) -> None:
        while True:
            try:
                task(*args)
            except BaseException:                 # as gevent does for a greenlet's error
                self.hub.handle_error(getcurrent(), *sys.exc_info())
            task = args = None
            if len(self.idle) >= self.keep:
                return
            task, args = self._park()

    def _park(self):
        """Wait for the next task. A late wake-up meant for the finished task (a switch or
        an exception thrown in) is not one: keep waiting."""
        self.idle.append(getcurrent())
        while True:
            try:
                got = self.hub.switch()
            except Exception:
                continue
            if type(got) is tuple and len(got) == 3 and got[0] is _TASK:
                return got[1], got[2]


_pool: Pool | None = None


def spawn(task, *args) -> greenlet:
    """task(*args) in a parked greenlet of this hub's pool (made on first use, and anew
    after a fork)."""
    global _pool
    if _pool is None or _pool.hub is not gevent.get_hub():
        _pool = Pool()
    return _pool.spawn(task, *args)
