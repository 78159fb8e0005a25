"""Server-sent keepalives for UDP phones without outbound (issue 17), sans-IO."""

from __future__ import annotations

import collections

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.natping import BRANCH_PREFIX, NatKeepalive, keepalive_options

LOCAL = ("192.0.2.1", 5060)


def flow(i: int) -> Flow:
    return Flow(Transport.UDP, LOCAL, (f"198.51.{i // 250}.{i % 250 + 1}", 5060 + i % 7), 0)


def test_first_ping_within_one_interval_then_every_interval() -> None:
    ka = NatKeepalive(25.0, 3)
    f = flow(1)
    ka.track(f, 100.0)
    first = ka.next_deadline()
    assert first is not None and 100.0 <= first < 125.0
    assert ka.due(first - 0.001) == ([], [])
    assert ka.due(first) == ([f], [])
    ka.sent(f, BRANCH_PREFIX + "1")
    assert ka.next_deadline() == pytest.approx(first + 25.0)


def test_any_answer_resets_and_silence_kills_after_max_failures() -> None:
    ka = NatKeepalive(10.0, 3)
    f = flow(2)
    ka.track(f, 0.0)
    t = ka.next_deadline()
    assert t is not None
    pings = 0
    for n in range(3):
        to_ping, dead = ka.due(t)
        assert to_ping == [f] and dead == []
        ka.sent(f, f"{BRANCH_PREFIX}{n}")
        pings += 1
        if n == 0:
            assert ka.answered(f"{BRANCH_PREFIX}0")  # answered: failures stay at 0
        t += 10.0
    # pings 1 and 2 unanswered: failures 2; the third unanswered one kills the flow
    to_ping, dead = ka.due(t)
    assert to_ping == [f]
    ka.sent(f, f"{BRANCH_PREFIX}x")
    to_ping, dead = ka.due(t + 10.0)
    assert to_ping == [] and dead == [f] and f not in ka
    assert ka.due(t + 100.0) == ([], [])


def test_a_request_from_the_phone_counts_as_an_answer() -> None:
    ka = NatKeepalive(10.0, 1)
    f = flow(3)
    ka.track(f, 0.0)
    t = ka.next_deadline()
    assert t is not None
    ka.due(t)
    ka.sent(f, BRANCH_PREFIX + "a")
    ka.heard(f)  # e.g. its REGISTER refresh
    assert ka.due(t + 10.0) == ([f], [])
    assert not ka.answered(BRANCH_PREFIX + "a")  # that ping is no longer outstanding


def test_untracked_flows_are_never_pinged_and_unknown_branches_are_not_ours() -> None:
    ka = NatKeepalive(10.0, 3)
    f = flow(4)
    ka.track(f, 0.0)
    ka.untrack(f)
    assert ka.next_deadline() is None and ka.due(1e9) == ([], [])
    assert not ka.answered(BRANCH_PREFIX + "nope")


def test_a_burst_of_registrations_pings_evenly_spread() -> None:
    """50,000 flows tracked at one instant: no one-second window gets more than twice the mean
    rate (issue 17: never one burst)."""
    ka = NatKeepalive(25.0, 3)
    n = 50_000
    for i in range(n):
        ka.track(flow(i), 0.0)
    per_second: collections.Counter[int] = collections.Counter()
    to_ping, _ = ka.due(25.0)
    assert len(to_ping) == n
    for f in to_ping:
        st = ka.state(f)
        assert st is not None
        per_second[int(st.next_ping) % 25] += 1
    mean = n / 25
    assert max(per_second.values()) < 2 * mean and min(per_second.values()) > mean / 2


def test_keepalive_options_is_a_complete_request() -> None:
    msg = keepalive_options("sip:bob@192.0.2.77:5060", f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH_PREFIX}abc",
                            BRANCH_PREFIX + "abc", "192.0.2.1")
    assert msg.method == "OPTIONS" and msg.uri_text == "sip:bob@192.0.2.77:5060"
    assert msg.top_via.branch == BRANCH_PREFIX + "abc" and msg.cseq.method == "OPTIONS"
    assert msg.max_forwards == 70 and msg.call_id == "nk-abc"
