"""The overload signal's rule (sipserver/overload.py; RFC 3261 §21.5.4, issue 19)."""

from __future__ import annotations

from sipserver.overload import Shedder


def test_one_stall_sheds_nothing() -> None:
    """A 400 ms pause delays what queued behind it; the queue drains in milliseconds and
    nothing is refused."""
    s = Shedder(0.05)
    assert [s.overloaded(d, 10.0 + i * 0.001) for i, d in enumerate((0.4, 0.39, 0.38, 0.01))] == [False] * 4


def test_a_delay_that_persists_sheds_until_it_falls_under_a_quarter() -> None:
    s = Shedder(0.05)
    assert not s.overloaded(0.06, 1.0)
    assert not s.overloaded(0.08, 1.03)  # over for 30 ms: not yet
    assert s.overloaded(0.09, 1.06)  # over for the limit's length: shed
    assert s.overloaded(0.03, 1.1)  # under the limit, still above a quarter: go on
    assert not s.overloaded(0.01, 1.2)  # drained
    assert not s.overloaded(0.06, 1.21)  # a new episode must persist again


def test_zero_turns_it_off() -> None:
    s = Shedder(0.0)
    assert not any(s.overloaded(10.0, t) for t in (1.0, 5.0, 50.0))
