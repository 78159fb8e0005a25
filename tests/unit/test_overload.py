"""The overload signal's rule (sipserver/overload.py; RFC 3261 §21.5.4, issue 19)."""

from __future__ import annotations

from sipserver.overload import Shedder


def test_one_stall_sheds_nothing() -> None:
    """A 400 ms pause delays what queued behind it; the queue drains in milliseconds and
    nothing is refused."""
    s = Shedder(0.05)
    assert [s.overloaded(d, 10.0 + i * 0.001) for i, d in enumerate((0.4, 0.39, 0.38, 0.01))] == [False] * 4


def test_a_delay_that_persists_engages_shedding_of_a_share() -> None:
    s = Shedder(0.05)
    assert not s.overloaded(0.06, 1.0)
    assert not s.overloaded(0.08, 1.03)  # over for 30 ms: not yet
    assert s.overloaded(0.09, 1.06)  # over for the limit's length: engaged, this one shed
    assert s.shedding and s.share == 0.5
    # Same delay, same tick: every second new request is shed.
    assert [s.overloaded(0.09, 1.061) for _ in range(4)] == [True, False, True, False]


def test_the_share_follows_the_delay() -> None:
    """Above half the limit the share grows until everything new is shed; once the delay is
    gone it falls to nothing and shedding ends within a fraction of a second (issue 19: back to
    normal within 2 s after the load drops)."""
    s = Shedder(0.2)
    t = 0.0
    while not s.update(0.5, t):
        t += 0.01
    for _ in range(20):
        t += 0.02
        s.update(0.5, t)
    assert s.share == 1.0 and all(s.take() for _ in range(5))
    end = t
    while s.update(0.0, t):
        t += 0.02
    assert t - end < 0.5 and s.share == 0.0 and not s.take()
    assert not s.update(0.3, t + 0.01)  # a new episode must persist again


def test_a_verdict_given_ahead_is_used_once() -> None:
    s = Shedder(0.05)
    s.verdict = False
    assert not s.overloaded(10.0, 1.0)  # the early path admitted it
    assert s.verdict is None


def test_zero_turns_it_off() -> None:
    s = Shedder(0.0)
    assert not any(s.overloaded(10.0, t) for t in (1.0, 5.0, 50.0))
