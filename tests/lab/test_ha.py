"""Every HA scenario end to end on docker: two pen boxes, keepalived, a client loop.

The HA lab is brought up for this module and taken down after it (the classic lab of
test_scenarios.py comes up after it, in its own fixture).
"""

import os

import pytest

from pen_lab import ha_scenarios
from pen_lab.scenarios import run_scenario
from pen_lab.story import Story

PEN = os.environ.get("PEN_LAB_PEN", "py")

pytestmark = pytest.mark.docker


def play(name, lab):
    story = Story()
    run_scenario(name, lab, story)
    return story


@pytest.mark.parametrize("name", [name for name, _, _ in ha_scenarios.SCENARIOS])
def test_ha_scenario(ha_lab, ha_outages, name):
    story = play(name, ha_lab)
    runs = story.ha_runs[name]
    for run in runs:
        ha_outages.append(f"{name}{f' ({run.title})' if run.title else ''}: "
                          f"{run.gap[0]:.2f} s (bound {run.bound:g} s)")
    assert runs and all(run.gap[0] < run.bound for run in runs)


def test_a_failed_scenario_leaves_the_pair_as_it_was(ha_lab, monkeypatch):
    """A partition that fails while the master is cut off still heals: no rules of ours,
    both boxes up, pen stopped."""
    monkeypatch.setattr(ha_lab, "heal", fail)
    with pytest.raises(AssertionError, match="made to fail"):
        play("ha-partition", ha_lab)
    for box in ha_lab.penboxes:
        assert ha_lab._running(box)
        code, out = ha_lab.run(box, "iptables -S", 5)
        assert code == 0 and "PEN-LAB-HA" not in out, out
    assert ha_lab.started_pen is None
    monkeypatch.undo()
    play("ha-kill-box", ha_lab)          # and the next scenario starts from a clean pair


def fail(*args, **kwargs):
    raise AssertionError("made to fail")


def test_down_removes_the_ha_lab_and_nothing_else(ha_lab):
    """Runs last in this module: both pen boxes (killed and started again by the scenarios),
    the clients with their extra addresses, the networks: all gone; a bystander stays."""
    from pen_lab import docker_lab
    engine = ha_lab.engine
    bystander = engine.containers.create(ha_lab.boxes["penbox1"].image, ["true"],
                                         name="pen-lab-test-ha-bystander", network_mode="none")
    try:
        docker_lab.down(engine, print)
        assert engine.containers.list(all=True, filters=docker_lab.OURS) == []
        assert engine.networks.list(filters={"label": docker_lab.LABEL}) == []
        assert docker_lab.topology_of(engine) is None
        assert engine.containers.get(bystander.id)
    finally:
        bystander.remove(force=True)
