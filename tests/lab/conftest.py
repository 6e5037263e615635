"""The docker lab for the scenario tests: built and brought up once per session, then removed.

PEN_LAB_PEN=c runs the scenarios against the C pen instead of ours. Without a docker engine
the tests are skipped, unless PEN_LAB_REQUIRE_DOCKER=1 (tox -e lab) makes that an error.
"""

import os

import pytest

PEN = os.environ.get("PEN_LAB_PEN", "py")


def bring_up(topology):
    """The docker lab of a topology, up for the fixture's scope, then removed."""
    from pen_lab import docker_lab
    from pen_lab.errors import LabError
    try:
        engine = docker_lab.connect()
    except LabError as err:
        if os.environ.get("PEN_LAB_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PEN_LAB_REQUIRE_DOCKER=1 but {err}", pytrace=False)
        pytest.skip(str(err))
    try:
        running = docker_lab.up(engine, print, topology=topology, pen=PEN)
    except LabError as err:
        pytest.fail(str(err), pytrace=False)
    yield running
    docker_lab.down(engine, lambda _: None)


@pytest.fixture(scope="session")
def lab():
    yield from bring_up("classic")


@pytest.fixture(scope="module")
def ha_lab():
    """The HA pair (two pen boxes, keepalived), for test_ha.py's module."""
    yield from bring_up("ha")


HA_OUTAGES = []  # "scenario: measured outage (bound)" lines, printed after the run


@pytest.fixture(scope="session")
def ha_outages():
    return HA_OUTAGES


def pytest_terminal_summary(terminalreporter):
    if HA_OUTAGES:
        terminalreporter.section("HA lab: the clients' outage in each scenario")
        for line in HA_OUTAGES:
            terminalreporter.write_line(line)
