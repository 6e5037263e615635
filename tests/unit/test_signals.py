"""Signals that come while pen starts (signals.hold) are acted on once it serves
(signals.handle), each kind once, in order; none kills pen. Run in a child process: the
handlers are process-wide."""

import os
import subprocess
import sys

CHILD = r"""
import os, signal, gevent
from gevent.event import Event
from pen import signals

done, seen = Event(), []

class Process:
    def shutdown(self): seen.append("shutdown")
    def reload(self): seen.append("reload")
    def report(self): seen.append("report"); done.set()
    def upgrade(self): seen.append("upgrade")

signals.hold()
for sig in (signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR2):
    os.kill(os.getpid(), sig)           # delivered (and noted) before kill returns
signals.handle(Process())
os.kill(os.getpid(), signal.SIGUSR1)    # after handle(): acted on as it comes
assert done.wait(10), seen
print(" ".join(seen))
"""


def run_child() -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PYTHONPATH=root))


def test_signals_before_serving_are_held_then_acted_on_once_each():
    child = run_child()
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["upgrade", "reload", "report"]
