"""The one bounded-table helper (issue 15): least recently used first, cap always held."""

from __future__ import annotations

import pytest

from sipserver.bounded import LruTable


def test_put_evicts_least_recently_used_and_reports_it() -> None:
    t: LruTable[str, int] = LruTable(2)
    assert t.put("a", 1) == [] and t.put("b", 2) == []
    t.touch("a")  # b is now the least recently used
    assert t.put("c", 3) == [("b", 2)]
    assert list(t) == ["a", "c"] and len(t) == 2


def test_put_of_a_present_key_refreshes_it() -> None:
    t: LruTable[str, int] = LruTable(2)
    t.put("a", 1)
    t.put("b", 2)
    assert t.put("a", 10) == []
    assert t.oldest() == ("b", 2)
    assert t.put("c", 3) == [("b", 2)]
    assert t["a"] == 10


def test_cap_holds_under_a_flood_of_new_keys() -> None:
    t: LruTable[int, int] = LruTable(100)
    for i in range(10_000):
        t.put(i, i)
    assert len(t) == 100 and t.oldest() == (9_900, 9_900)


def test_empty_and_invalid() -> None:
    assert LruTable[str, int](1).oldest() is None
    with pytest.raises(ValueError):
        LruTable(0)
