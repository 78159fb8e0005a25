"""The server's one clock (DESIGN.md: time is an input).

Everything the runtime hands to sans-IO code as ``now`` comes from here: trio's clock, monotonic
(``trio.testing.MockClock`` in tests, so timers can be skipped through instead of slept). Wall
time (binding expiry, which is stored and must survive a restart) is derived from it with an
offset fixed when the server starts, so both move together under a mock clock.
"""

from __future__ import annotations

import time

import trio


class Clock:
    def __init__(self) -> None:
        #: Monotonic seconds: transactions, response contexts, flows, nonces, rate limits.
        self.now = trio.current_time
        self._offset = 0.0
        try:
            self.start()
        except RuntimeError:  # built outside trio.run: ``start`` is called again by the server
            pass

    def start(self) -> None:
        """Fix the wall-clock offset (inside ``trio.run``)."""
        self._offset = time.time() - trio.current_time()

    def wall(self) -> float:
        """Seconds since the epoch, derived from ``now``: binding expiry (RFC 3261 §10.3)."""
        return trio.current_time() + self._offset

    def from_wall(self, wall: float) -> float:
        """The monotonic time at which the wall clock reads ``wall``."""
        return wall - self._offset
