"""The control port's pure parts: who can reach it."""

import pytest

from pen.addr import parse_listen
from pen.control import exposed


@pytest.mark.parametrize("text, reachable", [
    ("8888", True), ("0.0.0.0:8888", True), (":::8888", True), ("192.0.2.1:8888", True),
    ("ctl.example:8888", True), ("127.0.0.1:8888", False), ("127.1.2.3:8888", False),
    ("[::1]:8888", False), ("localhost:8888", False), ("/run/pen.ctl", False),
])
def test_exposed(text, reachable):
    assert exposed(parse_listen(text)) is reachable
