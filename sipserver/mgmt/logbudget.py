"""Per-event log lines that stay affordable under load.

A small office wants one line per registration and per closed connection; a server taking 3,000
REGISTERs a second cannot format and write 3,000 lines a second on the thread that answers them
(it was 15% of the cost of a REGISTER, docs/performance.md). ``LogBudget`` writes the first
``per_second`` events of each second as usual and counts the rest; the count is written as one
line when the second is over. With the logger at DEBUG every event is written.

The same object rate-limits a repeated warning (connections refused at a limit, oversized UDP
sends, overload): a longer ``window`` with a fractional ``per_second``, e.g. ``per_second=0.1,
window=10`` for one line every ten seconds.

Invariant: a budget holds a few numbers, never the suppressed events; the count line is written
at the level of the most severe event it stands for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogBudget", "log_binding_event"]

reg_log = logging.getLogger("sipserver.registrar")


class LogBudget:
    """Rate-limited per-event lines for one kind of event (``what``, e.g. "binding")."""

    __slots__ = (
        "_logger",
        "_what",
        "_window",
        "_limit",
        "_clock",
        "_slot",
        "_used",
        "_suppressed",
        "_level",
    )

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        per_second: float = 20,
        clock: Callable[[], float] = time.monotonic,
        *,
        window: float = 1.0,
    ) -> None:
        """Up to ``per_second * window`` events (at least one) are written in each ``window``
        seconds of ``clock``."""
        if per_second <= 0 or window <= 0:
            raise ValueError("per_second and window must be positive")
        self._logger = logger
        self._what = what
        self._window = window
        self._limit = max(1, int(per_second * window))
        self._clock = clock
        self._slot = -1
        self._used = 0
        self._suppressed = 0
        self._level = logging.NOTSET

    def allow(self, level: int = logging.INFO) -> bool:
        """Whether the caller should write this event's line now. False both when ``level`` is
        off and when this window's budget is spent (then the event is counted)."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return False
        if logger.isEnabledFor(logging.DEBUG):
            return True
        slot = int(self._clock() // self._window)
        if slot != self._slot:
            self.flush()
            self._slot = slot
            self._used = 0
        if self._used < self._limit:
            self._used += 1
            return True
        self._suppressed += 1
        if level > self._level:
            self._level = level
        return False

    def warning(self, msg: str, *args: object) -> None:
        """``logger.warning(msg, *args)`` if the budget allows it (a rate-limited warning)."""
        if self.allow(logging.WARNING):
            self._logger.warning(msg, *args, stacklevel=2)

    def warning_of(self, msg: str, make_args: Callable[[], tuple[object, ...]]) -> None:
        """``warning`` whose arguments are computed only when the line is written: for a
        warning raised on a per-message path (overload shedding), where most are counted."""
        if self.allow(logging.WARNING):
            self._logger.warning(msg, *make_args(), stacklevel=2)

    def flush(self) -> None:
        """Write the count of the events not written since the last flush, if any (called when
        a new window starts, and by the runtime's timer so a quiet period does not hold it)."""
        n = self._suppressed
        if n:
            level = self._level or logging.INFO
            self._suppressed = 0
            self._level = logging.NOTSET
            if self._window == 1.0:
                self._logger.log(
                    level,
                    "%d more %s events in the last second were not logged one by one (over %d a "
                    "second); log_level = \"debug\" logs each",
                    n,
                    self._what,
                    self._limit,
                )
            else:
                self._logger.log(
                    level,
                    "%d more %s events in the last %g seconds were not logged one by one (over "
                    "%d per %g seconds); log_level = \"debug\" logs each",
                    n,
                    self._what,
                    self._window,
                    self._limit,
                    self._window,
                )

    def tick(self) -> None:
        """Flush when the window the suppressed events belong to is over."""
        if self._suppressed and int(self._clock() // self._window) != self._slot:
            self.flush()
            self._slot = -1


def log_binding_event(ev: object, flow: object, budget: LogBudget) -> None:
    """One line per significant binding event (added, replaced, removed) within the log budget;
    refreshes at debug. ``flow`` is the Flow the REGISTER arrived on."""
    kind = type(ev).__name__.removeprefix("Binding").lower()
    level = logging.DEBUG if kind == "refreshed" else logging.INFO
    if budget.allow(level):
        key = getattr(ev, "key", None)
        text = getattr(key, "text", None) or str(key)
        cause = getattr(ev, "cause", None)
        extra = f" ({cause.name.lower()})" if cause is not None and hasattr(cause, "name") else ""
        reg_log.log(level, "binding %s: %s via %s%s", kind, text, getattr(flow, "id", flow), extra)
