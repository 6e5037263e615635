"""pen-setup's plan: what it would run for apply and undo, given what the host has."""

import pytest

from pen import setup_host
from pen.setup_host import plan_apply, plan_undo, steps


def commands(plan, attr):
    return [" ".join(getattr(step, attr)) for step in plan]


def test_apply_on_a_bare_host_adds_everything_in_order():
    plan = plan_apply(steps((4,)), present=set())
    assert commands(plan, "add") == [
        "iptables -t mangle -N DIVERT",
        "iptables -t mangle -A PREROUTING -p tcp -m socket -j DIVERT",
        "iptables -t mangle -A PREROUTING -p udp -m socket -j DIVERT",
        "iptables -t mangle -A DIVERT -j MARK --set-mark 1",
        "iptables -t mangle -A DIVERT -j ACCEPT",
        "ip -4 rule add fwmark 1 lookup 100",
        "ip -4 route add local 0.0.0.0/0 dev lo table 100",
    ]


def test_ipv6_uses_ip6tables_and_ip6_routing():
    adds = commands(plan_apply(steps((6,)), set()), "add")
    assert adds[0] == "ip6tables -t mangle -N DIVERT"
    assert "ip -6 rule add fwmark 1 lookup 100" in adds
    assert adds[-1] == "ip -6 route add local ::/0 dev lo table 100"
    assert not any(a.startswith("iptables ") for a in adds)


def test_apply_is_idempotent_and_skips_what_exists():
    all_steps = steps()
    assert plan_apply(all_steps, {s.key for s in all_steps}) == []
    plan = plan_apply(all_steps, {"ipv4:chain", "ipv4:rule"})
    keys = [s.key for s in plan]
    assert "ipv4:chain" not in keys and "ipv4:rule" not in keys
    assert "ipv4:route" in keys and len(keys) == len(all_steps) - 2


def test_undo_removes_only_what_was_added_newest_first():
    all_steps = steps((4,))
    added = {"ipv4:prerouting-tcp", "ipv4:divert-mark", "ipv4:route"}
    present = {s.key for s in all_steps}
    assert commands(plan_undo(all_steps, added, present), "remove") == [
        "ip -4 route del local 0.0.0.0/0 dev lo table 100",
        "iptables -t mangle -D DIVERT -j MARK --set-mark 1",
        "iptables -t mangle -D PREROUTING -p tcp -m socket -j DIVERT",
    ]


def test_undo_removes_rules_before_their_chain_and_skips_what_is_gone():
    all_steps = steps((4,))
    added = {s.key for s in all_steps}
    plan = plan_undo(all_steps, added, present=added - {"ipv4:rule"})
    removes = commands(plan, "remove")
    assert removes[-1] == "iptables -t mangle -X DIVERT"
    assert "ip -4 rule del fwmark 1 lookup 100" not in removes


def test_every_step_has_a_matching_check_add_and_remove():
    for step in steps():
        assert step.check[0] == step.add[0] == step.remove[0]
    keys = [s.key for s in steps()]
    assert len(keys) == len(set(keys))


def test_apply_and_undo_against_a_fake_host(tmp_path, monkeypatch, capsys):
    """The I/O layer records what it added and undoes exactly that."""
    host = {"ipv4:rule"}                       # someone else's rule: never removed
    by_argv = {}
    for step in steps((4,)):
        by_argv[step.check] = ("check", step.key)
        by_argv[step.add] = ("add", step.key)
        by_argv[step.remove] = ("remove", step.key)

    class Done:
        def __init__(self, rc, out=""):
            self.returncode, self.stdout, self.stderr = rc, out, ""

    def fake_run(argv):
        kind, key = by_argv[tuple(argv)]
        if kind == "check":
            return Done(0 if key in host else 1, "x" if key in host else "")
        (host.add if kind == "add" else host.discard)(key)
        return Done(0)

    monkeypatch.setattr(setup_host, "_run", fake_run)
    record = str(tmp_path / "state.json")
    setup_host.apply(steps((4,)), record)
    assert host == {s.key for s in steps((4,))}
    out = capsys.readouterr().out
    assert "already there: ip -4 rule add fwmark 1 lookup 100" in out
    assert "ran: iptables -t mangle -N DIVERT" in out
    setup_host.apply(steps((4,)), record)
    assert "nothing to do" in capsys.readouterr().out
    setup_host.undo(steps((4,)), record)
    assert host == {"ipv4:rule"}
    setup_host.undo(steps((4,)), record)
    assert "nothing to undo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["nonsense"], ["transparent", "--family", "5"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exc:
        setup_host.main(argv)
    assert exc.value.code == 2
