"""pen's signals: TERM and INT stop, HUP reloads, USR1 reports, USR2 upgrades.

pen binds its listening socket, and may be sent signals (logrotate's HUP, an upgrade's USR2),
before it serves. From the start of run() until handle() a HUP, USR1 or USR2 is held: it
neither kills pen by default action nor is lost, and is acted on once pen serves.
"""

from __future__ import annotations

import signal

import gevent

HELD = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

_held: list[int] = []      # signals that came before handle(), in order, each once
_actions: dict = {}        # set by handle(): signal -> what the process does for it


def hold() -> None:
    """From now until handle(), note HUP, USR1 and USR2 instead of acting on them."""
    _held.clear()
    _actions.clear()
    for sig in HELD:
        signal.signal(sig, _note)


def _note(signum, frame) -> None:
    if signum in _actions:        # Python ran this handler late, after handle(): act now
        gevent.get_hub().loop.run_callback(_actions[signum])
    elif signum not in _held:     # (two of a kind before serving merge, as the kernel's do)
        _held.append(signum)


def handle(process) -> None:
    """Act on pen's signals from now on, for a Runtime or a worker group's parent
    (group.Group), beginning with those held since hold()."""
    _actions.update({signal.SIGTERM: process.shutdown, signal.SIGINT: process.shutdown,
                     signal.SIGHUP: process.reload, signal.SIGUSR1: process.report,
                     signal.SIGUSR2: process.upgrade})
    for sig, action in _actions.items():
        gevent.signal_handler(sig, action)
    held = list(_held)
    _held.clear()
    for sig in held:
        gevent.get_hub().loop.run_callback(_actions[sig])
