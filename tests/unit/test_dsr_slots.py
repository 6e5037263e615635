"""The DSR slot table: proportional shares, and rebuilds that move as few flows as possible."""

from collections import Counter

import pytest

from pen.dsr_slots import SLOTS, moved, rebalance, shares


def build(weights):
    return rebalance([None] * SLOTS, weights)


def test_equal_weights_share_evenly_and_interleave():
    table = build({0: 1, 1: 1})
    assert Counter(table) == {0: 128, 1: 128}
    assert table[:4] == [0, 1, 0, 1]


def test_shares_follow_weight_and_always_sum_to_the_table():
    assert shares({0: 3, 1: 1}) == {0: 192, 1: 64}
    three = shares({0: 1, 1: 1, 2: 1})
    assert sum(three.values()) == SLOTS and sorted(three.values()) == [85, 85, 86]
    assert shares({0: 1000, 1: 1}) == {0: 255, 1: 1}     # a tiny weight still gets a slot
    assert shares({}) == {} and shares({0: 0}) == {}


def test_no_live_server_empties_the_table():
    assert rebalance(build({0: 1}), {}) == [None] * SLOTS


def test_a_server_going_down_moves_only_its_own_slots():
    before = build({0: 1, 1: 1, 2: 1})
    after = rebalance(before, {0: 1, 2: 1})
    for old, new in zip(before, after, strict=True):
        if old != 1:
            assert new == old                       # flows of the servers still up stay put
        else:
            assert new in (0, 2)
    assert Counter(after) == {0: 128, 2: 128}
    assert moved(before, after) == Counter(before)[1]


def test_a_server_coming_back_takes_only_what_it_needs():
    before = build({0: 1, 2: 1})
    after = rebalance(before, {0: 1, 1: 1, 2: 1})
    assert moved(before, after) == Counter(after)[1] == 85
    assert all(new == old for old, new in zip(before, after, strict=True) if new != 1)


def test_reweighting_moves_the_minimum():
    before = build({0: 1, 1: 1})
    after = rebalance(before, {0: 3, 1: 1})
    assert Counter(after) == {0: 192, 1: 64}
    assert moved(before, after) == 64               # exactly the slots 1 had to give up


@pytest.mark.parametrize("steps", [
    [{0: 1}, {0: 1, 1: 2}, {1: 2}, {0: 5, 1: 2, 2: 1}, {2: 1}, {0: 1, 1: 1, 2: 1, 3: 1}],
])
def test_every_rebuild_is_proportional_and_complete(steps):
    table = [None] * SLOTS
    for weights in steps:
        new = rebalance(table, weights)
        assert Counter(new) == shares(weights)
        # the number of moves equals what the shares force: nothing more
        forced = sum(max(0, Counter(table)[i] - shares(weights).get(i, 0)) for i in Counter(table)
                     if i is not None) + Counter(table)[None] - Counter(new)[None]
        assert moved(table, new) == forced
        table = new
