"""What a lab backend saw: one JSON line per request, read back by the scenarios."""

import json
import os
import threading
import time

_lock = threading.Lock()


class SeenLog:
    """Append-only JSON-lines log shared by the services of one backend."""

    def __init__(self, path, server):
        self.path = path
        self.server = server
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def record(self, service, peer, **details):
        entry = {"t": round(time.time(), 3), "server": self.server,
                 "service": service, "peer": peer, **details}
        with _lock, open(self.path, "a") as log:
            log.write(json.dumps(entry) + "\n")
        return entry


def read_seen(text):
    """Parse a seen log's text into a list of entries (torn last lines are ignored)."""
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
