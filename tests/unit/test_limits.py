"""Per-source rate limiting and failed-authentication bans (sans-IO, time passed in)."""

from __future__ import annotations

import pytest

from sipserver.auth.limits import FailureBan, TokenBucketLimiter

T0 = 1000.0


# --------------------------------------------------------------------------- token bucket


def test_burst_then_refusal_then_refill() -> None:
    limiter = TokenBucketLimiter(rate=2.0, burst=5)
    assert [limiter.allow("198.51.100.1", T0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.retry_after("198.51.100.1", T0) == 1
    # 2 tokens per second: after 1 s two more requests pass, the third does not.
    assert [limiter.allow("198.51.100.1", T0 + 1.0) for _ in range(3)] == [True, True, False]
    # A long pause refills only up to the burst.
    assert sum(limiter.allow("198.51.100.1", T0 + 1000.0) for _ in range(10)) == 5


def test_retry_after_counts_whole_seconds() -> None:
    limiter = TokenBucketLimiter(rate=0.1, burst=1)  # one token per 10 s
    assert limiter.allow("a", T0)
    assert not limiter.allow("a", T0)
    assert limiter.retry_after("a", T0) == 10
    assert limiter.retry_after("a", T0 + 4.5) == 6
    assert limiter.retry_after("a", T0 + 10) == 1
    assert limiter.allow("a", T0 + 10)
    assert limiter.retry_after("never-seen", T0) == 1


def test_sources_are_independent() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2)
    assert limiter.allow("a", T0) and limiter.allow("a", T0)
    assert not limiter.allow("a", T0)
    assert limiter.allow("b", T0) and limiter.allow("b", T0)
    assert not limiter.allow("b", T0)


def test_clock_stepping_back_grants_nothing() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1)
    assert limiter.allow("a", T0)
    assert not limiter.allow("a", T0 - 100)
    assert not limiter.allow("a", T0 + 0.5)
    assert limiter.allow("a", T0 + 1.0)


def test_memory_bounded_with_many_sources() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=3, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", T0)
        assert limiter.tracked_sources <= 100
    # The most recent sources are still remembered and still limited.
    last = "10.0.39.15"
    assert limiter.allow(last, T0) and limiter.allow(last, T0)
    assert not limiter.allow(last, T0)


def test_refilled_buckets_are_dropped() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2)
    for i in range(50):
        limiter.allow(f"a{i}", T0)
    # Much later every old bucket is full again, so new arrivals clear them out.
    for i in range(50):
        limiter.allow(f"b{i}", T0 + 100)
    assert limiter.tracked_sources < 60


@pytest.mark.parametrize(
    "kw", [dict(rate=0, burst=1), dict(rate=1, burst=0.5), dict(rate=float("nan"), burst=1),
           dict(rate=1, burst=1, max_sources=0)]
)
def test_limiter_refuses_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- failure ban


def test_ban_after_n_failures_within_window_then_expiry() -> None:
    ban = FailureBan(max_failures=3, window=60.0, ban_time=300.0)
    ban.record_failure("203.0.113.9", T0)
    ban.record_failure("203.0.113.9", T0 + 10)
    assert not ban.is_banned("203.0.113.9", T0 + 10)
    ban.record_failure("203.0.113.9", T0 + 20)
    assert ban.is_banned("203.0.113.9", T0 + 20)
    assert ban.ban_remaining("203.0.113.9", T0 + 20) == 300
    assert ban.is_banned("203.0.113.9", T0 + 319)
    assert not ban.is_banned("203.0.113.9", T0 + 321)
    assert ban.ban_remaining("203.0.113.9", T0 + 321) == 0
    # After the ban the count starts over.
    ban.record_failure("203.0.113.9", T0 + 330)
    assert not ban.is_banned("203.0.113.9", T0 + 330)


def test_failures_spread_beyond_window_do_not_ban() -> None:
    ban = FailureBan(max_failures=3, window=60.0, ban_time=300.0)
    for i in range(10):
        ban.record_failure("a", T0 + i * 31)  # never three within 60 s
    assert not ban.is_banned("a", T0 + 310)


def test_success_resets_failure_count() -> None:
    ban = FailureBan(max_failures=3, window=60.0, ban_time=300.0)
    ban.record_failure("a", T0)
    ban.record_failure("a", T0 + 1)
    ban.record_success("a", T0 + 2)
    ban.record_failure("a", T0 + 3)
    ban.record_failure("a", T0 + 4)
    assert not ban.is_banned("a", T0 + 4)
    ban.record_failure("a", T0 + 5)
    assert ban.is_banned("a", T0 + 5)


def test_success_does_not_lift_a_ban_in_force() -> None:
    ban = FailureBan(max_failures=1, window=60.0, ban_time=100.0)
    ban.record_failure("a", T0)
    ban.record_success("a", T0 + 1)
    assert ban.is_banned("a", T0 + 1)
    assert not ban.is_banned("a", T0 + 101)


def test_failures_while_banned_do_not_extend_ban() -> None:
    ban = FailureBan(max_failures=2, window=60.0, ban_time=100.0)
    ban.record_failure("a", T0)
    ban.record_failure("a", T0)
    for i in range(50):
        ban.record_failure("a", T0 + i)
    assert not ban.is_banned("a", T0 + 101)


def test_ban_sources_independent() -> None:
    ban = FailureBan(max_failures=2, window=60.0, ban_time=100.0)
    ban.record_failure("a", T0)
    ban.record_failure("a", T0)
    ban.record_failure("b", T0)
    assert ban.is_banned("a", T0) and not ban.is_banned("b", T0)
    assert not ban.is_banned("c", T0)


def test_ban_memory_bounded() -> None:
    ban = FailureBan(max_failures=5, window=60.0, ban_time=100.0, max_sources=50)
    for i in range(5_000):
        ban.record_failure(f"ip{i}", T0)
        assert ban.tracked_sources <= 50
    # Recent sources are still counted.
    for _ in range(4):
        ban.record_failure("ip4999", T0)
    assert ban.is_banned("ip4999", T0)


@pytest.mark.parametrize(
    "kw", [dict(max_failures=-1, window=1, ban_time=1), dict(max_failures=1, window=0, ban_time=1),
           dict(max_failures=1, window=1, ban_time=-1)]
)
def test_ban_refuses_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailureBan(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [dict(max_failures=0, window=1, ban_time=1), dict(max_failures=1, window=1, ban_time=0)])
def test_zero_failures_or_zero_ban_time_turns_banning_off(kw: dict[str, float]) -> None:
    """Issue 16: auth.max_failures = 0 and auth.ban_time = 0 are accepted by the config as "no
    banning"; the runtime must run with them, and never ban."""
    ban = FailureBan(**kw)  # type: ignore[arg-type]
    for _ in range(100):
        ban.record_failure("192.0.2.1", T0)
    assert not ban.is_banned("192.0.2.1", T0) and ban.ban_remaining("192.0.2.1", T0) == 0
