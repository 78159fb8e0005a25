"""The stateful proxy's response context: forking, failover over an instance's flows, CANCEL,
timer C and the final answer (RFC 3261 §16.6-§16.10, RFC 5626 §7; PX-08..PX-14, OB-AP-01..06,
OB-CS-07). Plain calls with a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.proxy.context import (
    AbandonBranch,
    Action,
    BranchFailure,
    BranchState,
    CancelBranch,
    Candidate,
    Done,
    FinalResponse,
    ForwardResponse,
    RemovalCause,
    RemoveBinding,
    ResponseContext,
    StartBranch,
    Target,
)
from sipserver.sip import Request, Response, make_request, make_response

T0 = 1000.0
A = TypeVar("A")


def _request(method: str = "INVITE") -> Request:
    return make_request(
        method,
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcaller1"),
            ("From", "<sip:alice@example.com>;tag=a1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1@192.0.2.10"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
    )


def resp(status: int, *headers: tuple[str, str], method: str = "INVITE") -> Response:
    return make_response(_request(method), status, to_tag="callee", headers=list(headers))


def cand(label: str, q: float = 1.0, key: object | None = "auto") -> Candidate:
    return Candidate(object(), q, f"key-{label}" if key == "auto" else key, label)


def target(*candidates: Candidate) -> Target:
    return Target(candidates)


def of(actions: Sequence[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def ids(actions: Sequence[Action]) -> list[int]:
    return [a.branch_id for a in of(actions, StartBranch)]


def final(actions: Sequence[Action]) -> FinalResponse:
    finals = of(actions, FinalResponse)
    assert len(finals) == 1, actions
    return finals[0]


def started(ctx: ResponseContext) -> list[StartBranch]:
    return of(ctx.start(T0), StartBranch)


def invite_ctx(
    *targets: Target,
    timer_c: float = 180.0,
    serial_by_q: bool = True,
    timeout_removes_binding: bool = False,
    cancel_grace: float = 32.0,
) -> ResponseContext:
    return ResponseContext(
        "INVITE",
        targets,
        now=T0,
        timer_c=timer_c,
        serial_by_q=serial_by_q,
        timeout_removes_binding=timeout_removes_binding,
        cancel_grace=cancel_grace,
    )


# --------------------------------------------------------------------------- basics


def test_empty_target_list_is_the_runtimes_job() -> None:
    with pytest.raises(ValueError):
        ResponseContext("INVITE", [], now=T0)
    with pytest.raises(ValueError):
        Target(())
    with pytest.raises(ValueError):
        Candidate(object(), float("nan"))
    with pytest.raises(ValueError):
        invite_ctx(target(cand("a")), timer_c=0.0)


def test_start_is_one_shot_and_unknown_branches_are_ignored() -> None:
    ctx = invite_ctx(target(cand("a")))
    assert len(ctx.start(T0)) == 1
    assert ctx.start(T0) == []
    assert ctx.on_response(99, resp(200), T0) == []
    assert ctx.on_branch_failed(99, BranchFailure.TRANSPORT, T0) == []


def test_100_trying_is_never_forwarded_other_1xx_are() -> None:
    """PX-09."""
    ctx = invite_ctx(target(cand("a")))
    (sb,) = started(ctx)
    assert ctx.on_response(sb.branch_id, resp(100), T0) == []
    r180 = resp(180)
    assert ctx.on_response(sb.branch_id, r180, T0) == [ForwardResponse(r180, sb.branch_id)]


# --------------------------------------------------------------------------- forking


def test_parallel_fork_200_forwarded_and_other_branch_cancelled() -> None:
    """RFC 3261 §16.7 steps 5 and 10: 2xx goes up at once; the other ringing branch is CANCELled."""
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    assert (b1.candidate.label, b2.candidate.label) == ("a", "b")
    ctx.on_response(b2.branch_id, resp(180), T0)
    ok = resp(200)
    actions = ctx.on_response(b1.branch_id, ok, T0 + 1)
    assert actions == [ForwardResponse(ok, b1.branch_id), CancelBranch(b2.branch_id)]
    assert ctx.answered and not ctx.finished
    actions = ctx.on_response(b2.branch_id, resp(487), T0 + 2)
    assert actions == [Done()]
    assert ctx.finished and ctx.next_deadline() is None


def test_every_2xx_of_every_branch_is_forwarded() -> None:
    """PX-09: forking can produce several 2xx; all go upstream and no final follows."""
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    first, second = resp(200), resp(200)
    a1 = ctx.on_response(b1.branch_id, first, T0)
    a2 = ctx.on_response(b2.branch_id, second, T0)
    assert of(a1, ForwardResponse) == [ForwardResponse(first, b1.branch_id)]
    assert of(a2, ForwardResponse) == [ForwardResponse(second, b2.branch_id)]
    assert of(a1 + a2, FinalResponse) == []
    assert a2[-1] == Done()


def test_2xx_cancels_unprovisioned_branch_when_its_provisional_arrives() -> None:
    """RFC 3261 §9.1: no CANCEL before a provisional; it goes out on the first one."""
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    assert of(ctx.on_response(b1.branch_id, resp(200), T0), CancelBranch) == []
    actions = ctx.on_response(b2.branch_id, resp(180), T0 + 1)
    assert actions == [CancelBranch(b2.branch_id)]  # and the 180 is not forwarded after a 2xx


def test_serial_fork_by_q() -> None:
    """RFC 3261 §16.6: the q=0.5 group starts only after the q=1.0 group failed."""
    ctx = invite_ctx(target(cand("low", q=0.5)), target(cand("high", q=1.0)))
    (b1,) = started(ctx)
    assert b1.candidate.label == "high"
    actions = ctx.on_response(b1.branch_id, resp(486), T0 + 1)
    (b2,) = of(actions, StartBranch)
    assert b2.candidate.label == "low"
    assert of(actions, FinalResponse) == []
    assert final(ctx.on_response(b2.branch_id, resp(404), T0 + 2)).status == 486


def test_serial_fork_stops_after_2xx_and_equal_q_is_parallel() -> None:
    ctx = invite_ctx(target(cand("x", q=0.7)), target(cand("y", q=0.7)), target(cand("z", q=0.1)))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(200), T0)
    assert of(ctx.on_response(b2.branch_id, resp(486), T0), StartBranch) == []
    assert ctx.finished


def test_parallel_fork_of_all_q_when_serial_disabled() -> None:
    ctx = invite_ctx(target(cand("a", q=1.0)), target(cand("b", q=0.2)), serial_by_q=False)
    assert [s.candidate.label for s in started(ctx)] == ["a", "b"]


def test_486_and_404_gives_486() -> None:
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    assert ctx.on_response(b1.branch_id, resp(486), T0) == []
    assert final(ctx.on_response(b2.branch_id, resp(404), T0)).status == 486


def test_430_and_480_gives_480() -> None:
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(430), T0)
    r480 = resp(480)
    fr = final(ctx.on_response(b2.branch_id, r480, T0))
    assert fr.status == 480 and fr.response is not None and fr.response is not r480


def test_only_430_gives_480_and_removes_binding() -> None:
    """OB-AP-06/OB-CS-07: the caller never sees 430."""
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    actions = ctx.on_response(b1.branch_id, resp(430), T0)
    assert RemoveBinding("key-a", RemovalCause.FLOW_FAILED) in actions
    fr = final(actions)
    assert (fr.status, fr.reason) == (480, "Temporarily Unavailable")
    assert (
        fr.response is not None
        and fr.response.start_line() == "SIP/2.0 480 Temporarily Unavailable"
    )
    assert actions[-1] == Done()


def test_503_alone_gives_500_with_retry_after() -> None:
    """PX-11; Retry-After of the chosen response is kept."""
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    fr = final(ctx.on_response(b1.branch_id, resp(503, ("Retry-After", "90")), T0))
    assert fr.status == 500
    assert fr.response is not None and fr.response.header("Retry-After") == "90"


def test_486_and_503_gives_486() -> None:
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(503), T0)
    assert final(ctx.on_response(b2.branch_id, resp(486), T0)).status == 486


def test_600_cancels_pending_branches_and_is_final_at_once() -> None:
    """PX-10: a 6xx ends the fork; later finals do not produce a second final."""
    ctx = invite_ctx(target(cand("a")), target(cand("b")), target(cand("c")))
    b1, b2, b3 = started(ctx)
    ctx.on_response(b2.branch_id, resp(183), T0)
    actions = ctx.on_response(b1.branch_id, resp(600), T0 + 1)
    assert CancelBranch(b2.branch_id) in actions
    assert CancelBranch(b3.branch_id) not in actions  # no provisional yet (RFC 3261 §9.1)
    assert final(actions).status == 600
    assert ctx.answered and not ctx.finished
    assert ctx.on_response(b3.branch_id, resp(180), T0 + 2) == [CancelBranch(b3.branch_id)]
    assert ctx.on_response(b2.branch_id, resp(487), T0 + 3) == []
    assert ctx.on_response(b3.branch_id, resp(487), T0 + 3) == [Done()]


def test_2xx_after_a_6xx_final_is_still_forwarded() -> None:
    """RFC 3261 §16.7 step 5: any 2xx to INVITE is forwarded, even after a final was sent."""
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b2.branch_id, resp(180), T0)
    ctx.on_response(b1.branch_id, resp(603), T0)
    ok = resp(200)
    actions = ctx.on_response(b2.branch_id, ok, T0 + 1)
    assert actions == [ForwardResponse(ok, b2.branch_id), Done()]


def test_challenges_of_two_branches_are_merged() -> None:
    """PX-12: two branches challenge with different realms; the caller gets both."""
    pa1 = 'Digest realm="one.example", nonce="111"'
    pa2 = 'Digest realm="two.example", nonce="222", algorithm=SHA-256'
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(407, ("Proxy-Authenticate", pa1)), T0)
    fr = final(ctx.on_response(b2.branch_id, resp(401, ("WWW-Authenticate", pa2)), T0))
    assert fr.status == 407 and fr.response is not None
    assert fr.response.header_lines("Proxy-Authenticate") == [pa1]
    assert fr.response.header_lines("WWW-Authenticate") == [pa2]


# --------------------------------------------------------------------------- flows of an instance


def test_430_on_first_flow_fails_over_to_second_flow() -> None:
    """OB-AP-02/OB-AP-04: reg-id 1 fails with 430; reg-id 2 gets the request in the same
    transaction and the caller never sees the 430."""
    flow1, flow2 = cand("reg1"), cand("reg2")
    other = cand("other")
    ctx = invite_ctx(target(flow1, flow2), target(other))
    b1, b_other = started(ctx)
    assert b1.candidate is flow1 and b_other.candidate is other  # OB-AP-01: one flow at a time
    actions = ctx.on_response(b1.branch_id, resp(430), T0 + 1)
    assert actions[0] == RemoveBinding("key-reg1", RemovalCause.FLOW_FAILED)
    (b2,) = of(actions, StartBranch)
    assert b2.candidate is flow2 and b2.branch_id not in (b1.branch_id, b_other.branch_id)
    assert of(actions, ForwardResponse) == [] and of(actions, CancelBranch) == []
    assert set(ctx.pending_branches()) == {b_other.branch_id, b2.branch_id}
    ok = resp(200)
    assert of(ctx.on_response(b2.branch_id, ok, T0 + 2), ForwardResponse) == [
        ForwardResponse(ok, b2.branch_id)
    ]


def test_transport_failure_at_send_fails_over_at_once() -> None:
    """OB-CS-07: a dead flow is an internal 430, even when it fails the moment it is sent."""
    flow1, flow2 = cand("reg1"), cand("reg2")
    ctx = invite_ctx(target(flow1, flow2))
    (b1,) = started(ctx)
    actions = ctx.on_branch_failed(b1.branch_id, BranchFailure.TRANSPORT, T0)
    assert actions == [RemoveBinding("key-reg1", RemovalCause.TRANSPORT), StartBranch(2, flow2)]
    actions = ctx.on_branch_failed(2, BranchFailure.TRANSPORT, T0)
    assert actions[0] == RemoveBinding("key-reg2", RemovalCause.TRANSPORT)
    fr = final(actions)
    assert (fr.status, fr.response) == (480, None)  # answered locally, never 430


def test_transport_failure_of_unregistered_target_counts_as_503() -> None:
    """PX-13: no binding to remove; the branch counts as 503, sent upstream as 500."""
    ctx = invite_ctx(target(cand("gw", key=None)))
    (b1,) = started(ctx)
    actions = ctx.on_branch_failed(b1.branch_id, BranchFailure.TRANSPORT, T0)
    assert of(actions, RemoveBinding) == []
    assert (final(actions).status, final(actions).response) == (500, None)


def test_timeout_moves_on_but_keeps_binding() -> None:
    flow1, flow2 = cand("reg1"), cand("reg2")
    ctx = invite_ctx(target(flow1, flow2))
    (b1,) = started(ctx)
    actions = ctx.on_branch_failed(b1.branch_id, BranchFailure.TIMEOUT, T0 + 32)
    assert actions == [StartBranch(2, flow2)]
    fr = final(ctx.on_branch_failed(2, BranchFailure.TIMEOUT, T0 + 64))
    assert (fr.status, fr.response) == (408, None)


def test_timeout_removes_binding_when_configured() -> None:
    flow1, flow2 = cand("reg1"), cand("reg2")
    ctx = invite_ctx(target(flow1, flow2), timeout_removes_binding=True)
    (b1,) = started(ctx)
    actions = ctx.on_branch_failed(b1.branch_id, BranchFailure.TIMEOUT, T0 + 32)
    assert actions == [RemoveBinding("key-reg1", RemovalCause.TIMEOUT), StartBranch(2, flow2)]


def test_486_on_first_flow_never_tries_second_flow() -> None:
    """OB-AP-03: any final other than 408/430 ends the instance's branch."""
    ctx = invite_ctx(target(cand("reg1"), cand("reg2")))
    (b1,) = started(ctx)
    actions = ctx.on_response(b1.branch_id, resp(486), T0)
    assert of(actions, StartBranch) == [] and of(actions, RemoveBinding) == []
    assert final(actions).status == 486
    assert [b.label for b in ctx.branches()] == ["reg1"]


def test_408_from_ua_tries_next_flow_and_keeps_binding() -> None:
    flow2 = cand("reg2")
    ctx = invite_ctx(target(cand("reg1"), flow2))
    (b1,) = started(ctx)
    actions = ctx.on_response(b1.branch_id, resp(408), T0)
    assert actions == [StartBranch(2, flow2)]
    # The second flow's real answer decides, not the first flow's 408.
    assert final(ctx.on_response(2, resp(486), T0)).status == 486


def test_no_failover_after_answer_but_binding_still_removed() -> None:
    ctx = invite_ctx(target(cand("a")), target(cand("reg1"), cand("reg2")))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(200), T0)
    actions = ctx.on_response(b2.branch_id, resp(430), T0)
    assert actions == [RemoveBinding("key-reg1", RemovalCause.FLOW_FAILED), Done()]


# --------------------------------------------------------------------------- CANCEL


def test_cancel_before_provisional_is_sent_when_180_arrives() -> None:
    """PX-14 + RFC 3261 §9.1."""
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    assert ctx.on_cancel(T0 + 1) == []
    actions = ctx.on_response(b1.branch_id, resp(180), T0 + 2)
    assert CancelBranch(b1.branch_id) in actions
    r487 = resp(487)
    fr = final(ctx.on_response(b1.branch_id, r487, T0 + 3))
    assert fr.status == 487 and fr.response is not None and fr.response is not r487
    assert ctx.finished


def test_cancel_then_487s_gives_final_487() -> None:
    ctx = invite_ctx(target(cand("a")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b1.branch_id, resp(180), T0)
    ctx.on_response(b2.branch_id, resp(183), T0)
    actions = ctx.on_cancel(T0 + 1)
    assert actions == [CancelBranch(b1.branch_id), CancelBranch(b2.branch_id)]
    assert ctx.on_response(b1.branch_id, resp(487), T0 + 2) == []
    actions = ctx.on_response(b2.branch_id, resp(486), T0 + 2)  # a race: still 487 for the caller
    assert final(actions).status == 487 and actions[-1] == Done()


def test_cancel_stops_failover_and_later_groups() -> None:
    ctx = invite_ctx(target(cand("reg1"), cand("reg2")), target(cand("low", q=0.1)))
    (b1,) = started(ctx)
    ctx.on_cancel(T0)
    actions = ctx.on_branch_failed(b1.branch_id, BranchFailure.TRANSPORT, T0)
    assert of(actions, StartBranch) == []
    fr = final(actions)
    assert (fr.status, fr.response) == (487, None)


def test_cancel_before_start_answers_487_at_once() -> None:
    ctx = invite_ctx(target(cand("a")))
    actions = ctx.on_cancel(T0)
    assert final(actions).status == 487 and actions[-1] == Done()
    assert ctx.start(T0) == []


def test_cancel_after_answer_changes_nothing() -> None:
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    ctx.on_response(b1.branch_id, resp(486), T0)
    assert ctx.on_cancel(T0) == []


def test_2xx_after_cancel_wins_over_487() -> None:
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    ctx.on_response(b1.branch_id, resp(180), T0)
    ctx.on_cancel(T0)
    ok = resp(200)
    assert ctx.on_response(b1.branch_id, ok, T0) == [ForwardResponse(ok, b1.branch_id), Done()]


def test_cancelled_branch_that_never_answers_is_abandoned() -> None:
    ctx = invite_ctx(target(cand("a")), cancel_grace=32.0)
    (b1,) = started(ctx)
    ctx.on_response(b1.branch_id, resp(180), T0)
    ctx.on_cancel(T0 + 5)
    assert ctx.next_deadline() == T0 + 37
    assert ctx.handle_timer(T0 + 36) == []
    actions = ctx.handle_timer(T0 + 37)
    assert actions[0] == AbandonBranch(b1.branch_id)
    assert final(actions).status == 487 and ctx.finished


# --------------------------------------------------------------------------- timer C


def test_timer_c_with_provisional_cancels_the_branch() -> None:
    """PX-08 / RFC 3261 §16.8; a real 1xx resets timer C (§16.7 step 2), 100 does not."""
    ctx = invite_ctx(target(cand("a")), timer_c=180.0)
    (b1,) = started(ctx)
    assert ctx.next_deadline() == T0 + 180
    ctx.on_response(b1.branch_id, resp(100), T0 + 10)
    assert ctx.next_deadline() == T0 + 180
    ctx.on_response(b1.branch_id, resp(180), T0 + 100)
    assert ctx.next_deadline() == T0 + 280
    assert ctx.handle_timer(T0 + 279) == []
    assert ctx.handle_timer(T0 + 280) == [CancelBranch(b1.branch_id)]
    # We cancelled, not the caller: the caller hears a timeout, not 487.
    fr = final(ctx.on_response(b1.branch_id, resp(487), T0 + 281))
    assert (fr.status, fr.response) == (408, None)


def test_timer_c_after_only_100_still_cancels() -> None:
    ctx = invite_ctx(target(cand("a")))
    (b1,) = started(ctx)
    ctx.on_response(b1.branch_id, resp(100), T0)
    assert ctx.handle_timer(T0 + 180) == [CancelBranch(b1.branch_id)]


def test_timer_c_without_provisional_is_408_and_moves_on() -> None:
    flow2 = cand("reg2")
    ctx = invite_ctx(target(cand("reg1"), flow2))
    (b1,) = started(ctx)
    actions = ctx.handle_timer(T0 + 180)
    assert actions == [AbandonBranch(b1.branch_id), StartBranch(2, flow2)]
    actions = ctx.handle_timer(T0 + 360)
    assert actions[0] == AbandonBranch(2)
    assert final(actions).status == 408
    states = [b.state for b in ctx.branches()]
    assert states == [BranchState.FAILED, BranchState.FAILED]


# --------------------------------------------------------------------------- non-INVITE


def test_message_fork_first_2xx_is_final_later_ones_dropped() -> None:
    ctx = ResponseContext("MESSAGE", [target(cand("a")), target(cand("b"))], now=T0)
    b1, b2 = started(ctx)
    assert ctx.next_deadline() is None  # no timer C outside INVITE
    first = resp(202, method="MESSAGE")
    actions = ctx.on_response(b1.branch_id, first, T0)
    fr = final(actions)
    assert fr.status == 202 and fr.response is not None and fr.response is not first
    assert of(actions, CancelBranch) == []  # CANCEL is for INVITE only (RFC 3261 §9.1)
    assert ctx.on_response(b2.branch_id, resp(200, method="MESSAGE"), T0) == [Done()]


def test_message_cancel_and_6xx() -> None:
    ctx = ResponseContext("MESSAGE", [target(cand("a")), target(cand("b"))], now=T0)
    b1, b2 = started(ctx)
    assert ctx.on_cancel(T0) == []
    actions = ctx.on_response(b1.branch_id, resp(603, method="MESSAGE"), T0)
    fr = final(actions)
    assert actions == [fr] and (fr.status, fr.reason) == (603, "Decline")
    assert ctx.on_response(b2.branch_id, resp(200, method="MESSAGE"), T0) == [Done()]


# --------------------------------------------------------------------------- management view


def test_branch_view_for_management_api() -> None:
    ctx = invite_ctx(target(cand("reg1"), cand("reg2")), target(cand("b")))
    b1, b2 = started(ctx)
    ctx.on_response(b2.branch_id, resp(180), T0)
    ctx.on_response(b1.branch_id, resp(430), T0)
    view = {(b.branch_id, b.label): (b.state, b.last_status) for b in ctx.branches()}
    assert view == {
        (b1.branch_id, "reg1"): (BranchState.COMPLETED, 430),
        (b2.branch_id, "b"): (BranchState.PROCEEDING, 180),
        (3, "reg2"): (BranchState.CALLING, None),
    }
    assert ctx.pending_branches() == (b2.branch_id, 3)


# --------------------------------------------------------------------------- property test

STATUSES = [100, 180, 183, 200, 202, 302, 401, 407, 408, 430, 480, 486, 487, 500, 503, 600, 603]

# A step: (kind, branch pick, status, failure cause, seconds to advance the clock).
Step = tuple[str, int, int, BranchFailure, float]
step = st.tuples(
    st.sampled_from(["resp", "resp", "resp", "fail", "timer", "cancel"]),
    st.integers(0, 20),
    st.sampled_from(STATUSES),
    st.sampled_from(list(BranchFailure)),
    st.floats(0, 400),
)
target_sets = st.lists(
    st.lists(st.tuples(st.sampled_from([1.0, 0.5, 0.1]), st.booleans()), min_size=1, max_size=3),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "MESSAGE"]),
    shape=target_sets,
    steps=st.lists(step, max_size=40),
    serial=st.booleans(),
    timeout_removes=st.booleans(),
)
def test_random_event_sequences_keep_the_invariants(
    method: str,
    shape: list[list[tuple[float, bool]]],
    steps: list[Step],
    serial: bool,
    timeout_removes: bool,
) -> None:
    targets = []
    owner: dict[int, int] = {}  # id(candidate) -> target index
    for t_index, cands in enumerate(shape):
        q0 = cands[0][0]
        built = [
            Candidate(object(), q0, f"k{t_index}.{i}" if registered else None, f"t{t_index}.{i}")
            for i, (_, registered) in enumerate(cands)
        ]
        for c in built:
            owner[id(c)] = t_index
        targets.append(Target(built))
    ctx = ResponseContext(
        method, targets, now=T0, serial_by_q=serial, timeout_removes_binding=timeout_removes
    )
    invite = method == "INVITE"
    now = T0
    branch_target: dict[int, int] = {}
    seen: list[Action] = []
    finals = 0
    forwarded_2xx = False
    done = False
    cancelled = False

    def check(actions: list[Action]) -> None:
        nonlocal finals, forwarded_2xx, done
        for a in actions:
            assert not done or (
                isinstance(a, ForwardResponse) and invite and 200 <= a.response.status < 300
            ), f"{a} after Done"
            if isinstance(a, StartBranch):
                assert not (cancelled or forwarded_2xx or finals), "new branch after answer/CANCEL"
                assert a.branch_id not in branch_target
                branch_target[a.branch_id] = owner[id(a.candidate)]
            elif isinstance(a, ForwardResponse):
                assert a.response.status not in (100, 430)
                if a.response.status < 200:
                    assert not (finals or forwarded_2xx), "provisional after the answer"
                if 200 <= a.response.status < 300:
                    assert invite
                    forwarded_2xx = True
            elif isinstance(a, FinalResponse):
                finals += 1
                assert finals == 1, "two final responses"
                assert not forwarded_2xx, "final after a forwarded INVITE 2xx"
                assert a.status not in (430, 503) and 200 <= a.status <= 699
                if a.response is not None:
                    assert a.response.status == a.status
            elif isinstance(a, CancelBranch):
                assert invite
            elif isinstance(a, Done):
                done = True
        seen.extend(actions)
        # OB-AP-01: never two flows of one instance at once.
        pending = ctx.pending_branches()
        owners = [branch_target[b] for b in pending]
        assert len(owners) == len(set(owners))
        # Every branch ended <=> the context finished (nothing left hanging).
        assert ctx.finished == (not pending)
        assert ctx.finished == done

    check(ctx.start(now))
    for kind, pick, status, cause, advance in steps:
        known = sorted(branch_target)
        bid = known[pick % len(known)]
        if kind == "resp":
            check(ctx.on_response(bid, resp(status, method=method), now))
        elif kind == "fail":
            check(ctx.on_branch_failed(bid, cause, now))
        elif kind == "timer":
            now += advance
            check(ctx.handle_timer(now))
            deadline = ctx.next_deadline()
            assert deadline is None or deadline > now  # everything due has been handled
        else:
            cancelled = cancelled or invite
            check(ctx.on_cancel(now))

    # Finish every branch with a final response: the context must finish with an answer.
    for _ in range(50):
        pending = ctx.pending_branches()
        if not pending:
            break
        check(ctx.on_response(pending[0], resp(487, method=method), now))
    assert ctx.finished and done
    assert finals == 1 or forwarded_2xx
