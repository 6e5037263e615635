"""Fixtures shared by all tests: pen processes and HTTP backends on loopback."""

import os

import pytest

from support import Backend, Pen, free_port

C_PEN_PACKAGE = ("/usr/bin/pen", "/usr/bin/penctl")


def pytest_collection_modifyitems(config, items):
    """Tests marked root need root, and tests marked c_pen Debian's pen package. .ci/run
    has both (it runs as root and installs pen), so under CI they always run: there a
    missing package fails them instead of skipping them."""
    skips = {}
    if os.geteuid() != 0:
        skips["root"] = "needs root (network namespaces); .ci/run runs these as root"
    if not os.environ.get("CI") and not all(map(os.path.exists, C_PEN_PACKAGE)):
        skips["c_pen"] = "needs Debian's pen package (apt-get install pen); .ci/run installs it"
    for item in items:
        for marker, reason in skips.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def backends():
    """Two HTTP backends on 127.0.0.1."""
    started = [Backend("a"), Backend("b")]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def start_pen():
    """start_pen(*options, servers=[...]) -> (Pen, port): pen on 127.0.0.1:<free port>."""
    running = []

    def start(*options, servers=(), listen=None, wait=True, env=None):
        if listen is None:
            listen = f"127.0.0.1:{free_port()}"
        host, _, port = listen.rpartition(":")
        host, port = host.strip("[]") or "127.0.0.1", int(port)
        pen = Pen(*options, listen, *servers, wait=(host, port) if wait else None, env=env)
        running.append(pen)
        return pen, port

    yield start
    for pen in running:
        pen.stop()
