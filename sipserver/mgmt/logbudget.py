"""Per-event log lines that stay affordable under load.

A small office wants one line per registration and per closed connection; a server taking 3,000
REGISTERs a second cannot format and write 3,000 lines a second on the thread that answers them
(it was 15% of the cost of a REGISTER, docs/performance.md). ``LogBudget`` writes the first
``per_second`` events of each second as usual and counts the rest; the count is written as one
line when the second is over. With the logger at DEBUG every event is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogBudget"]


class LogBudget:
    """Rate-limited per-event INFO lines for one kind of event (``what``, e.g. "binding")."""

    __slots__ = ("_logger", "_what", "_per_second", "_clock", "_second", "_used", "_suppressed")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        per_second: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._per_second = per_second
        self._clock = clock
        self._second = -1
        self._used = 0
        self._suppressed = 0

    def allow(self, level: int = logging.INFO) -> bool:
        """Whether the caller should write this event's line now. False both when ``level`` is
        off and when this second's budget is spent (then the event is counted)."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return False
        if logger.isEnabledFor(logging.DEBUG):
            return True
        second = int(self._clock())
        if second != self._second:
            self.flush()
            self._second = second
            self._used = 0
        if self._used < self._per_second:
            self._used += 1
            return True
        self._suppressed += 1
        return False

    def flush(self) -> None:
        """Write the count of the events not written since the last flush, if any (called when
        a new second starts, and by the runtime's timer so a quiet period does not hold it)."""
        n = self._suppressed
        if n:
            self._suppressed = 0
            self._logger.info(
                "%d more %s events in the last second were not logged one by one (over %d a "
                "second); log_level = \"debug\" logs each",
                n,
                self._what,
                self._per_second,
            )

    def tick(self) -> None:
        """Flush when the second the suppressed events belong to is over."""
        if self._suppressed and int(self._clock()) != self._second:
            self.flush()
            self._second = -1
