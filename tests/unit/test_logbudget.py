"""LogBudget: per-event INFO lines capped per second, the rest summed up in one line."""

from __future__ import annotations

import logging

import pytest

from sipserver.mgmt.logbudget import LogBudget


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.budget"]


def test_first_events_of_a_second_are_logged_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.budget")
    log = logging.getLogger("test.budget")
    clock = Clock()
    budget = LogBudget(log, "binding", per_second=3, clock=clock)
    for i in range(10):
        if budget.allow():
            log.info("event %d", i)
    assert _lines(caplog) == ["event 0", "event 1", "event 2"]
    clock.t = 101.2
    assert budget.allow()
    log.info("event next second")
    lines = _lines(caplog)
    assert lines[3].startswith("7 more binding events in the last second were not logged")
    assert "over 3 a second" in lines[3]
    assert lines[4] == "event next second"


def test_tick_writes_the_count_once_the_second_is_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.budget")
    log = logging.getLogger("test.budget")
    clock = Clock()
    budget = LogBudget(log, "flow closed", per_second=1, clock=clock)
    assert budget.allow()
    assert not budget.allow()
    assert not budget.allow()
    budget.tick()  # same second: nothing yet
    assert _lines(caplog) == []
    clock.t = 103.0
    budget.tick()
    assert len(_lines(caplog)) == 1 and _lines(caplog)[0].startswith("2 more flow closed events")
    budget.tick()
    assert len(_lines(caplog)) == 1  # written once


def test_debug_level_logs_every_event_and_disabled_level_none(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.budget")
    budget = LogBudget(log, "binding", per_second=1, clock=Clock())
    caplog.set_level(logging.DEBUG, logger="test.budget")
    assert all(budget.allow() for _ in range(50))
    caplog.set_level(logging.WARNING, logger="test.budget")
    assert not budget.allow(logging.INFO)
    budget.flush()
    assert _lines(caplog) == []  # nothing was counted as suppressed


def test_a_longer_window_rate_limits_a_repeated_warning(caplog: pytest.LogCaptureFixture) -> None:
    """One line per 10 s window; the count line comes at the level of what it stands for."""
    caplog.set_level(logging.INFO, logger="test.budget")
    log = logging.getLogger("test.budget")
    clock = Clock()
    budget = LogBudget(log, "refused connection", per_second=0.1, window=10.0, clock=clock)
    for i in range(5):
        budget.warning("refused %d", i)
        clock.t += 1.0
    assert _lines(caplog) == ["refused 0"]
    clock.t = 110.0  # the next window
    budget.warning("refused %d", 9)
    records = [r for r in caplog.records if r.name == "test.budget"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    assert records[1].getMessage().startswith("4 more refused connection events in the last 10 seconds")
    assert records[2].getMessage() == "refused 9"
    assert records[0].filename == "test_logbudget.py"  # the caller's line, not the budget's


def test_budget_rejects_nonpositive_rates() -> None:
    with pytest.raises(ValueError):
        LogBudget(logging.getLogger("test.budget"), "x", per_second=0)
    with pytest.raises(ValueError):
        LogBudget(logging.getLogger("test.budget"), "x", window=0)


def test_warning_of_computes_its_figures_only_for_a_written_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.budget")
    clock = Clock()
    budget = LogBudget(logging.getLogger("test.budget"), "overload", per_second=1, clock=clock)
    made: list[int] = []

    def figures() -> tuple[object, ...]:
        made.append(1)
        return (len(made),)

    for _ in range(5):
        budget.warning_of("overload %d", figures)
    assert made == [1]  # four counted, none computed
    assert _lines(caplog) == ["overload 1"]
