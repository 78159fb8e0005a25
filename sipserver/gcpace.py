"""Paces CPython's cycle collector by the work done instead of by its allocation count.

CPython 3.11 starts a young collection when allocations minus deallocations of container objects
pass a threshold. A registrar in steady state frees old objects (transactions whose timer J ran
out, replaced bindings) about as fast as it makes new ones, so that count hardly moves: the young
generation then grows for seconds between collections and each collection walks all of it
(30 ms pauses after 30 s at 3,000 REGISTER/s, docs/performance.md). Counting messages instead
bounds the young generation by what a fixed number of messages leave alive.

Full collections walk every binding (433 ms at 100,000), and the steady-state work makes no
reference cycles (tests/unit/test_no_reference_cycles.py), so they are rare: one per
``middle_per_full`` middle-generation collections.

No trio here: the runtime calls ``message()`` per message and ``idle(now)`` from its timer loop.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["GcPacer"]


class GcPacer:
    """Young collection every ``every`` messages (or after ``idle_after`` seconds without one),
    middle generation every ``young_per_middle``-th, everything every ``middle_per_full``-th."""

    __slots__ = (
        "every",
        "young_per_middle",
        "middle_per_full",
        "idle_after",
        "_collect",
        "_messages",
        "_young",
        "_middle",
        "_last",
        "collections",
    )

    def __init__(
        self,
        every: int = 256,
        young_per_middle: int = 4,
        middle_per_full: int = 10_000,
        idle_after: float = 1.0,
        collect: Callable[[int], int] = gc.collect,
    ) -> None:
        self.every = every
        self.young_per_middle = young_per_middle
        self.middle_per_full = middle_per_full
        self.idle_after = idle_after
        self._collect = collect
        self._messages = 0
        self._young = 0
        self._middle = 0
        self._last = 0.0
        self.collections = [0, 0, 0]  # per generation, for metrics and tests

    def message(self, now: float) -> None:
        """One message handled (``now``: any monotonic clock, the same as ``idle``'s)."""
        self._messages += 1
        if self._messages >= self.every:
            self._run(now)

    def idle(self, now: float) -> None:
        """Called now and then without a message: collect if none ran for ``idle_after`` s, so
        garbage made outside message handling (connections closing, timers) is found too."""
        if now - self._last >= self.idle_after:
            self._run(now)

    def _run(self, now: float) -> None:
        self._messages = 0
        self._last = now
        self._young += 1
        generation = 0
        if self._young >= self.young_per_middle:
            self._young = 0
            self._middle += 1
            generation = 1
            if self._middle >= self.middle_per_full:
                self._middle = 0
                generation = 2
        self.collections[generation] += 1
        self._collect(generation)
