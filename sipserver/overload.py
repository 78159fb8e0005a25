"""Overload control: when to answer new requests 503 instead of handling them (RFC 3261
§21.5.4). Sans-IO: the measured queue delay and ``now`` go in, a yes or no comes out.

Shedding *engages* when requests have waited longer than the limit for at least the limit's own
length of time, and ends when the waits are under a quarter of it and nothing is being shed:
- one stall (a full garbage collection, a slow disk write) delays the requests queued behind it,
  but they drain in milliseconds; answering them 503 would send a small office's phones away
  for Retry-After seconds with no overload at all, so a delay must persist to count;
- stopping at the limit itself would keep a standing queue of about the limit.

While engaged it sheds a *share* of the new requests, not all of them (issue 19): shedding all
made the server alternate between answering only 503s, which drains the queue in a moment, and
answering none, which builds it again, and the 200s fell to a fraction of capacity. The share is
steered like PIE (RFC 8033) every ``_TICK`` seconds: up while the delay is above half the limit
(and faster while it rises), down while it is below; every ``1 / share``-th new request is shed
(an accumulator, not a random draw, so tests are deterministic).
"""

from __future__ import annotations

import attrs

_TICK = 0.02  # seconds between updates of the share
_GAIN = 0.5  # share per tick per second of delay above the target (PIE's alpha, scaled)
_TREND = 2.0  # share per tick per second the delay grew since the last tick (PIE's beta)
_START = 0.5  # the share when shedding engages (2x capacity offered sheds about half)


@attrs.define
class Shedder:
    limit: float  # seconds a request may wait; 0 turns shedding off
    shedding: bool = False  # engaged
    over_since: float | None = None  # when the delay went over the limit (not shedding yet)
    share: float = 0.0  # of new requests to shed while engaged
    credit: float = 0.0  # accumulator: a request is shed when it reaches 1
    last_tick: float = 0.0
    last_delay: float = 0.0
    delay: float = 0.0  # the last delay seen
    verdict: bool | None = None  # decided ahead for the request being handled (``decide``)

    def update(self, delay: float, now: float) -> bool:
        """Feed the signal; whether shedding is engaged."""
        if self.limit <= 0:
            return False
        self.delay = delay
        if self.shedding:
            if now - self.last_tick >= _TICK:
                target = self.limit / 2
                self.share += _GAIN * (delay - target) + _TREND * (delay - self.last_delay)
                self.share = min(1.0, max(0.0, self.share))
                self.last_tick, self.last_delay = now, delay
            if delay < self.limit / 4 and self.share <= 0.0:
                self.shedding = False
                self.over_since = None
        elif delay <= self.limit:
            self.over_since = None
        elif self.over_since is None:
            self.over_since = now
        elif now - self.over_since >= self.limit:
            self.shedding = True
            self.share = _START
            self.credit = 1.0  # the first new request after engaging is shed
            self.last_tick, self.last_delay = now, delay
        return self.shedding

    def take(self) -> bool:
        """Whether to shed this new request (engaged: the share of them; none while the
        last delay seen is under a quarter of the limit: the queue is short now, so the
        server has room for it, and a client retrying after the load dropped is served)."""
        if not self.shedding or self.delay < self.limit / 4:
            return False
        self.credit += self.share
        if self.credit >= 1.0:
            self.credit -= 1.0
            return True
        return False

    def untake(self) -> None:
        """Give back a ``take`` that said shed, for a message that turned out not to be a new
        request: the accumulator counts new requests only."""
        self.credit = min(1.0, self.credit + 1.0 - self.share)

    def overloaded(self, delay: float, now: float) -> bool:
        """Whether to answer this new request 503: the verdict ``shedding.shed_early`` already
        gave it, or else fed and decided here."""
        verdict = self.verdict
        if verdict is not None:
            self.verdict = None
            return verdict
        return self.update(delay, now) and self.take()
