"""Overload control: when to answer new requests 503 instead of handling them (RFC 3261
§21.5.4). Sans-IO: the measured queue delay and ``now`` go in, a yes or no comes out.

Shedding starts when requests have waited longer than the limit for at least the limit's own
length of time, and goes on until the waits are under a quarter of it:
- one stall (a full garbage collection, a slow disk write) delays the requests queued behind it,
  but they drain in milliseconds; answering them 503 would send a small office's phones away
  for Retry-After seconds with no overload at all, so a delay must persist to count;
- stopping at the limit itself would keep a standing queue of about the limit (measured: every
  request 200 ms late at 6,000/s).
"""

from __future__ import annotations

import attrs


@attrs.define
class Shedder:
    limit: float  # seconds a request may wait; 0 turns shedding off
    shedding: bool = False
    over_since: float | None = None  # when the delay went over the limit (not shedding yet)

    def overloaded(self, delay: float, now: float) -> bool:
        if self.limit <= 0:
            return False
        if self.shedding:
            if delay < self.limit / 4:
                self.shedding = False
                self.over_since = None
        elif delay <= self.limit:
            self.over_since = None
        elif self.over_since is None:
            self.over_since = now
        elif now - self.over_since >= self.limit:
            self.shedding = True
        return self.shedding
