"""``engine._put`` is ``LruTable.put``: below the limit, at it, past it, and for a held key."""

from __future__ import annotations

import logging

import pytest

from mamori.sensor.detection.bounded import LruTable
from mamori.sensor.detection.engine import _put


def _both(limit: int, steps: list[tuple[str, int]]) -> tuple[LruTable[str, int],
                                                              LruTable[str, int]]:
    ours: LruTable[str, int] = LruTable(limit, "ours")
    theirs: LruTable[str, int] = LruTable(limit, "theirs")
    for key, value in steps:
        _put(ours, key, value)
        theirs.put(key, value)
    return ours, theirs


def test_new_keys_past_the_limit_evict_the_oldest_and_count() -> None:
    ours, theirs = _both(3, [(f"k{i}", i) for i in range(7)])
    assert list(ours.items()) == list(theirs.items()) == [("k4", 4), ("k5", 5), ("k6", 6)]
    assert ours.evicted == theirs.evicted == 4


def test_a_storm_of_new_and_held_keys_far_past_the_limit_matches_put() -> None:
    """A hundred times the limit, new keys mixed with held ones: the table never grows
    past its limit and stays, entry for entry and count for count, what ``put`` makes."""
    limit = 16
    steps = [(f"k{i // 3 if i % 3 == 0 else i}", i) for i in range(100 * limit)]
    ours: LruTable[str, int] = LruTable(limit, "ours")
    theirs: LruTable[str, int] = LruTable(limit, "theirs")
    for key, value in steps:
        _put(ours, key, value)
        theirs.put(key, value)
        assert len(ours) <= limit
        assert list(ours.items()) == list(theirs.items())
    assert ours.evicted == theirs.evicted > 90 * limit


def test_a_held_key_is_refreshed_and_moves_last() -> None:
    steps = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("d", 5), ("a", 6), ("e", 7)]
    ours, theirs = _both(3, steps)
    assert list(ours.items()) == list(theirs.items()) == [("d", 5), ("a", 6), ("e", 7)]
    assert ours.evicted == theirs.evicted == 2


def test_a_table_over_a_lowered_limit_sheds_on_the_next_put() -> None:
    ours, theirs = _both(5, [(f"k{i}", i) for i in range(5)])
    ours.limit = theirs.limit = 2
    _put(ours, "k0", 10)  # held, but the table is over its limit: shed to it
    theirs.put("k0", 10)
    assert list(ours.items()) == list(theirs.items()) == [("k4", 4), ("k0", 10)]
    assert ours.evicted == theirs.evicted == 3


def test_the_first_eviction_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table: LruTable[str, int] = LruTable(2, "logged table")
    with caplog.at_level(logging.WARNING, logger="mamori.detection"):
        for i in range(6):
            _put(table, f"k{i}", i)
    said = [r for r in caplog.records if "logged table" in r.getMessage()]
    assert len(said) == 1
    assert table.evicted == 4 and list(table) == ["k4", "k5"]
