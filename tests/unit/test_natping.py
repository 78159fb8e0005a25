"""Server-sent keepalives for UDP phones without outbound (issue 17), sans-IO."""

from __future__ import annotations

import collections

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.natping import (
    BRANCH_PREFIX,
    SLOT,
    NatKeepalive,
    keepalive_options,
    keepalive_response_branch,
    keepalive_template,
)

LOCAL = ("192.0.2.1", 5060)


def flow(i: int) -> Flow:
    return Flow(Transport.UDP, LOCAL, (f"198.51.{i // 250}.{i % 250 + 1}", 5060 + i % 7), 0)


def test_first_ping_within_one_interval_then_every_interval() -> None:
    """The deadline is the first point of the 100 ms grid at or after the ping (pings go in
    batches, issue 17): the ping is due within the tick before it."""
    ka = NatKeepalive(25.0, 3)
    f = flow(1)
    ka.track(f, 100.0)
    first = ka.next_deadline()
    assert first is not None and 100.0 <= first < 125.1
    assert round(first / ka.tick, 6) == round(first / ka.tick)
    assert ka.due(first - ka.tick) == ([], [])
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
    for i in range(n):
        st = ka.state(flow(i))
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


def test_pings_go_in_batches_on_a_coarse_grid() -> None:
    """Issue 17, keepalive CPU: 20,000 phones wake the runtime about ten times a second (one
    batch per 100 ms tick), not once per phone; every batch is near its even share."""
    ka = NatKeepalive(25.0, 3)
    n = 20_000
    for i in range(n):
        ka.track(flow(i), 0.0)
    wakes, batches, now = 0, [], 0.0
    while (t := ka.next_deadline()) is not None and t < 50.0 + ka.tick / 2:
        assert t >= now
        now = t
        wakes += 1
        to_ping, dead = ka.due(now)
        assert dead == []
        for f in to_ping:
            ka.sent(f, BRANCH_PREFIX + "x")
            ka.heard(f)
        batches.append(len(to_ping))
    phase_zero = sum(1 for i in range(n) if ka.state(flow(i)).next_ping == 75.0)  # type: ignore[union-attr]
    assert sum(batches) == 2 * n + phase_zero  # every phone twice in two intervals
    assert wakes <= 2 * 25.0 / ka.tick + 1
    share = n * ka.tick / 25.0
    assert max(batches) < 2 * share


def test_after_a_stall_the_overdue_pings_drain_in_bounded_batches_and_keep_their_phase() -> None:
    """The runtime was away for three intervals (a stalled VM): the 50,000 overdue pings are
    not sent in one burst (at most CATCH_UP times a tick's share per tick) and every flow keeps
    its own phase afterwards: no burst now or ever after (issue 17)."""
    ka = NatKeepalive(25.0, 3)
    n = 50_000
    flows = [flow(i) for i in range(n)]
    for f in flows:
        ka.track(f, 0.0)
    phase = {f: ka.state(f).next_ping % 25.0 for f in flows}  # type: ignore[union-attr]
    now = 75.0 + 12.5
    sizes = []
    while len(sizes) < 1000:
        t = ka.next_deadline()
        assert t is not None
        now = max(now, t)
        to_ping, _ = ka.due(now)
        for f in to_ping:
            ka.heard(f)
        sizes.append(len(to_ping))
        if sum(sizes) >= n:
            break
    assert sum(sizes) == n and max(sizes) <= 10 * n * ka.tick / 25.0 + 1
    for f in flows:
        st = ka.state(f)
        assert st is not None and st.next_ping > 75.0
        assert abs((st.next_ping - phase[f]) / 25.0 - round((st.next_ping - phase[f]) / 25.0)) < 1e-6


def test_template_renders_the_same_bytes_as_keepalive_options() -> None:
    """Per-flow precomputed OPTIONS (issue 17, keepalive CPU): only the identifier changes."""
    via = f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH_PREFIX}{SLOT}"
    tpl = keepalive_template("sip:bob@192.0.2.77:5060;line=x", via, "192.0.2.1")
    assert tpl is not None
    for ident in ("0123456789abcdef", "ff"):
        branch = BRANCH_PREFIX + ident
        want = keepalive_options("sip:bob@192.0.2.77:5060;line=x", via.replace(BRANCH_PREFIX + SLOT, branch),
                                 branch, "192.0.2.1").to_bytes()
        assert tpl.render(ident) == want


def test_keepalive_responses_are_recognised_without_parsing() -> None:
    """The branch of the top Via when it is a keepalive's; None for any other message, which
    then goes through the parser and the transaction layer as usual."""
    ours = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH_PREFIX}00ff;received=1.2.3.4\r\n"
            "From: <sip:keepalive@192.0.2.1>;tag=00ff\r\nContent-Length: 0\r\n\r\n").encode()
    assert keepalive_response_branch(ours) == BRANCH_PREFIX + "00ff"
    compact = ours.replace(b"Via:", b"v:").replace(b";received=1.2.3.4", b"")
    assert keepalive_response_branch(compact) == BRANCH_PREFIX + "00ff"
    forwarded = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1\r\n"
                 f"Via: SIP/2.0/UDP 192.0.2.9;branch={BRANCH_PREFIX}00ff\r\n\r\n").encode()
    assert keepalive_response_branch(forwarded) is None  # not the top Via: a real response
    assert keepalive_response_branch(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n") is None
