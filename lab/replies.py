"""What a client got back: parsed answers from the lab's HTTP backends."""

import json
from dataclasses import dataclass


@dataclass
class Reply:
    t: float
    server: str | None = None  # backend that answered; None when the request failed
    peer: str | None = None    # address the backend saw the request come from
    xff: str | None = None
    proto: str | None = None
    client: str | None = None
    error: str | None = None


def parse_reply(t, text, client=None):
    """A backend's one-line JSON answer, or the client's error text."""
    try:
        seen = json.loads(text)
        return Reply(t, seen["server"], seen["peer"], seen.get("xff"), seen.get("proto"), client)
    except (ValueError, KeyError, TypeError):
        return Reply(t, client=client, error=text.strip()[:200] or "no answer")


def servers_of(replies):
    return [r.server for r in replies if r.server]


def count_by_server(replies):
    counts = {}
    for name in servers_of(replies):
        counts[name] = counts.get(name, 0) + 1
    return counts
