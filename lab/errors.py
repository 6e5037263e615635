"""The lab's one error type (a message for the user, shown without a traceback), and the
project's one way of waiting for something to become true (the lab and the tests use it)."""

import time


class LabError(Exception):
    pass


class WaitTimeout(LabError, AssertionError):
    """A wait ran out: a user's message in the lab, a failed assertion in a test."""


def wait_for(condition, timeout=10.0, interval=0.02, what="condition", sleep=time.sleep):
    """Poll condition() until it returns something truthy, and return that; WaitTimeout
    naming `what` after timeout seconds. Code under gevent passes sleep=gevent.sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
        sleep(interval)
