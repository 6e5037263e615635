"""Fixtures shared by all tests: pen processes and HTTP backends on loopback."""

import os

import pytest

from support import Backend, Pen, free_port


def pytest_collection_modifyitems(config, items):
    """Tests marked root need root; CI runs as root, so there they always run."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); .ci/run runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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
