"""Event-loop lag while traffic flows: one of the overload signals (issue 19).

The socket queue delays (UDP, plain TCP) come from kernel receive timestamps; WebSocket and TLS
bytes pass through trio-websocket and ``ssl`` first and have no such stamp. What every transport
shares is the event loop: when it is saturated, a task that asks to wake after ``interval``
wakes late by about one round of every runnable task, which is how long a new message waits to
be looked at. So while messages arrive, a probe sleeps ``interval`` over and over and records
how late it woke; when an interval passes on time without a message the loop is idle and the
lag is 0 (an idle office server keeps no timer ticking).
"""

from __future__ import annotations

import trio

__all__ = ["LoopLag"]

_QUIET_PROBES = 3  # late wakes without a message before the probe parks anyway


class LoopLag:
    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lag = 0.0  # seconds the last probe woke late; 0 when idle
        self._seen = False  # a message arrived since the last probe
        self._busy = trio.Event()

    def poke(self) -> None:
        """A message arrived (called for every message: two attribute checks)."""
        if not self._seen:
            self._seen = True
            if not self._busy.is_set():
                self._busy.set()

    async def run(self) -> None:
        # Under trio's MockClock virtual time stands still while tasks run, so there is no lag
        # to measure, and a probe timer would only be one more deadline for autojump to reach.
        if getattr(trio.lowlevel.current_clock(), "autojump_threshold", None) is not None:
            return
        while True:
            await self._busy.wait()
            self._busy = trio.Event()
            quiet = 0
            while True:
                self._seen = False
                start = trio.current_time()
                await trio.sleep(self.interval)
                self.lag = max(0.0, trio.current_time() - start - self.interval)
                # Idle: no message arrived, and the loop was free or stayed quiet a few times
                # running (a late wake can mean messages queued behind whatever held the loop,
                # unread yet: keep measuring a little; on a machine whose other processes take
                # the CPU the wake is always late, and that alone must not keep the probe up).
                quiet = 0 if self._seen else quiet + 1
                if quiet and (self.lag < self.interval or quiet >= _QUIET_PROBES):
                    break
            self.lag = 0.0
