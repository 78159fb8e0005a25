"""Per-source abuse resistance: request rate limiting and failed-authentication bans. Sans-IO.

Invariants:
- Time is an input (``now``); a clock that steps backwards is treated as no time passing.
- Memory is bounded: at most ``max_sources`` sources are tracked. Least-recently-seen sources
  are dropped first; for the rate limiter a dropped bucket is one that had refilled (or the
  oldest), so forgetting it only returns the source to the state of a newcomer.
- Nothing here raises on any source string; constructors raise ``ValueError`` for bad limits.
"""

from __future__ import annotations

import collections
import math

import attrs

from ..bounded import LruTable

__all__ = ["FailureBan", "TokenBucketLimiter"]


@attrs.define
class _Bucket:
    tokens: float
    last: float


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number")


@attrs.define
class TokenBucketLimiter:
    """Token bucket per source IP: ``burst`` requests at once, then ``rate`` per second.

    Meant for the cheap first gate in front of parsing and authentication, so a flood from one
    address cannot starve others.
    """

    rate: float
    burst: float
    max_sources: int = 100_000
    _buckets: LruTable[str, _Bucket] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _positive("rate", self.rate)
        _positive("burst", self.burst)
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self._buckets = LruTable(self.max_sources)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = now - bucket.last
        if elapsed > 0:
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.last = now

    def allow(self, source_ip: str, now: float) -> bool:
        """Take one token for ``source_ip``; False when its bucket is empty."""
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets.put(source_ip, bucket)
            self._evict(now)
        else:
            self._buckets.touch(source_ip)
            self._refill(bucket, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    def retry_after(self, source_ip: str, now: float) -> int:
        """Whole seconds (at least 1) until ``source_ip`` has a token again (for Retry-After)."""
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            return 1
        self._refill(bucket, now)
        missing = 1 - bucket.tokens
        return max(1, math.ceil(missing / self.rate)) if missing > 0 else 1

    def _evict(self, now: float) -> None:
        """Drop refilled buckets at the old end (the table's cap drops the oldest anyway).

        A bucket that has refilled carries no information, so dropping it is free; when the
        oldest ones are still draining they go anyway, which only helps that source.
        """
        buckets = self._buckets
        # Opportunistic clean-up of refilled buckets at the old end, a few per call.
        for _ in range(2):
            if len(buckets) <= 1:
                break
            ip, oldest = next(iter(buckets.items()))
            if oldest.tokens + max(0.0, now - oldest.last) * self.rate < self.burst:
                break
            del buckets[ip]

    @property
    def tracked_sources(self) -> int:
        """Number of sources currently tracked (bounded by ``max_sources``)."""
        return len(self._buckets)


@attrs.define
class _Failures:
    times: collections.deque[float]
    banned_until: float = float("-inf")


@attrs.define
class FailureBan:
    """Ban a source after ``max_failures`` failed authentications within ``window`` seconds.

    Stops online password guessing (RFC 3261 §26.3.2.4 warns about dictionary attacks on
    digest). A ban lasts ``ban_time`` seconds; a success resets the failure count but does not
    lift a ban in force (the banned source is not supposed to reach authentication at all).
    ``max_failures = 0`` or ``ban_time = 0`` turns banning off (config: auth.max_failures,
    auth.ban_time), so every value the configuration accepts also runs.
    """

    max_failures: int
    window: float
    ban_time: float
    max_sources: int = 100_000
    _sources: LruTable[str, _Failures] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.max_failures < 0:
            raise ValueError("max_failures must be at least 0 (0: no banning)")
        _positive("window", self.window)
        if not (math.isfinite(self.ban_time) and self.ban_time >= 0):
            raise ValueError(f"ban_time must be a finite number >= 0 (0: no banning), not {self.ban_time!r}")
        if self.max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self._sources = LruTable(self.max_sources)

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0 and self.ban_time > 0

    def record_failure(self, ip: str, now: float) -> None:
        if not self.enabled:
            return
        entry = self._sources.get(ip)
        if entry is None:
            entry = _Failures(collections.deque(maxlen=self.max_failures))
            self._sources.put(ip, entry)
        else:
            self._sources.touch(ip)
        if entry.banned_until > now:
            return
        times = entry.times
        while times and (now - times[0] >= self.window or times[0] > now):
            times.popleft()  # outside the window (or from before a clock step back)
        times.append(now)
        if len(times) >= self.max_failures:
            entry.banned_until = now + self.ban_time
            times.clear()

    def record_success(self, ip: str, now: float) -> None:
        entry = self._sources.get(ip)
        if entry is None:
            return
        if entry.banned_until > now:
            entry.times.clear()
        else:
            del self._sources[ip]

    def is_banned(self, ip: str, now: float) -> bool:
        entry = self._sources.get(ip)
        return entry is not None and entry.banned_until > now

    def ban_remaining(self, ip: str, now: float) -> int:
        """Whole seconds (0 when not banned) the ban on ``ip`` still lasts (for Retry-After)."""
        entry = self._sources.get(ip)
        if entry is None or entry.banned_until <= now:
            return 0
        return max(1, math.ceil(entry.banned_until - now))

    @property
    def tracked_sources(self) -> int:
        """Number of sources currently tracked (bounded by ``max_sources``)."""
        return len(self._sources)
