"""The lab's one error type (a message for the user, shown without a traceback), and its
one way of waiting for something to become true."""

import time


class LabError(Exception):
    pass


def wait_for(what, check, timeout=10, interval=0.05):
    """Poll check() until it is true; LabError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout}s waiting for {what}")
