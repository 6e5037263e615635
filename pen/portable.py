"""PEN_PORTABLE=1 in the environment turns off the Linux-only accelerations: splice(2)
for bulk TCP (relay.py) and recvmmsg/sendmmsg batches for UDP (mmsg.py). pen-lb then
moves bytes as it does on *BSD and other POSIX systems (recv/send, recvfrom/sendto), so
that path is tested on Linux too (.ci/run runs the integration tests both ways)."""

import os

PORTABLE = os.environ.get("PEN_PORTABLE", "") not in ("", "0")
