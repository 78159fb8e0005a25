"""The stateful proxy's response context (RFC 3261 §16), with RFC 5626 §7 flow failover. Sans-IO.

The runtime creates one ``ResponseContext`` per request it forwards statefully, tells it what
happened (responses, branch failures, a CANCEL, the clock) and executes the actions it returns:
start a branch, CANCEL or abandon one, forward a response, send the final, drop a binding.

Invariants:
- One ``Target`` per ``+sip.instance``: at most one branch per target is pending at any time, so
  two flows of one instance never ring in parallel (OB-AP-01). Candidates of a target are tried in
  the order given; only 430, a transport failure, a timeout or a 408 move on to the next one
  (OB-AP-02, OB-AP-03, OB-CS-07).
- Targets of equal q are forked in parallel, q groups in series, highest q first (RFC 3261
  §16.6); a group starts only when the previous one ended without a 2xx or 6xx.
- At most one ``FinalResponse`` is emitted, never after a 2xx to INVITE was forwarded, and it
  never carries 430 or 503 (see ``selection``). 100 Trying is never forwarded (PX-09).
- No ``StartBranch`` after the request was answered, cancelled (PX-14) or met a 6xx (PX-10).
- ``Done`` is the last action, emitted exactly once: when the caller has its answer (final sent
  or a 2xx forwarded) and no branch is pending. ``finished`` is then True and every further input
  returns ``[]``, except a 2xx to INVITE on a known branch, which is always forwarded (RFC 3261
  §16.7 step 5).
- Unknown branch ids, inputs for ended branches and calls out of order return ``[]``; the only
  exception raised is ``ValueError`` from constructors given unusable values.
- Time is an input: timer C (INVITE only, PX-08) and the wait for a CANCELled branch's final are
  reported by ``next_deadline()`` and run by ``handle_timer(now)``.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence

import attrs

from sipserver.sip import Response, reason_phrase

from .selection import Outcome, Selection, select_final

__all__ = [
    "AbandonBranch",
    "Action",
    "BranchFailure",
    "BranchInfo",
    "BranchState",
    "CancelBranch",
    "Candidate",
    "Done",
    "FinalResponse",
    "ForwardResponse",
    "RemovalCause",
    "RemoveBinding",
    "ResponseContext",
    "StartBranch",
    "Target",
]


def _finite(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, not {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive finite number, not {value!r}")


# --------------------------------------------------------------------------- targets


@attrs.frozen(eq=False)
class Candidate:
    """One place to send the request: a registered binding (one flow) or a plain destination.

    ``ref`` is the runtime's own object, handed back untouched in ``StartBranch``; candidates
    compare by identity. ``binding_key`` is what to remove from the location store when the flow
    turns out dead (None for targets that are not registered bindings)."""

    ref: object
    q: float = attrs.field(default=1.0, validator=_finite)
    binding_key: object | None = None
    label: str = ""


def _non_empty(
    _inst: object, _attribute: attrs.Attribute[tuple[Candidate, ...]], value: tuple[Candidate, ...]
) -> None:
    if not value:
        raise ValueError("a target needs at least one candidate")


def _to_candidates(value: Sequence[Candidate]) -> tuple[Candidate, ...]:
    return tuple(value)


@attrs.frozen
class Target:
    """One forking target: the flows of one ``+sip.instance`` ordered by ascending reg-id
    (OB-AP-04), or a single binding/destination. Tried one candidate at a time (OB-AP-01)."""

    candidates: tuple[Candidate, ...] = attrs.field(converter=_to_candidates, validator=_non_empty)

    @property
    def q(self) -> float:
        return self.candidates[0].q


# --------------------------------------------------------------------------- inputs


class BranchFailure(enum.Enum):
    """Why a branch ended without a final response (told by the runtime)."""

    #: The send failed, the connection was gone, or the flow token's Flow is dead: the flow is
    #: dead, which RFC 5626 §5.3.1/§7 treats like a 430 (OB-AP-02, OB-CS-07; PX-13 for others).
    TRANSPORT = "transport"
    #: The client transaction's timer B/F fired with no response (RFC 3261 §17.1).
    TIMEOUT = "timeout"


class RemovalCause(enum.Enum):
    """Why ``RemoveBinding`` was emitted."""

    FLOW_FAILED = "430"  # a 430 Flow Failed came back (RFC 5626 §5.3.1, §7)
    TRANSPORT = "transport"  # sending on the flow failed / the flow is gone
    TIMEOUT = "timeout"  # no response, and policy (timeout_removes_binding) calls that dead


class BranchState(enum.Enum):
    CALLING = "calling"  # request handed to the runtime, nothing heard yet
    PROCEEDING = "proceeding"  # a provisional arrived
    CANCELLING = "cancelling"  # CANCEL sent, waiting for the final (487 expected)
    COMPLETED = "completed"  # a final response arrived
    FAILED = "failed"  # ended without a final: transport failure, timeout, abandoned

    @property
    def pending(self) -> bool:
        return self in (BranchState.CALLING, BranchState.PROCEEDING, BranchState.CANCELLING)


# --------------------------------------------------------------------------- actions


@attrs.frozen
class StartBranch:
    """Build the branch request for ``candidate`` and run a client transaction for it."""

    branch_id: int
    candidate: Candidate


@attrs.frozen
class CancelBranch:
    """Send a CANCEL for this INVITE branch (RFC 3261 §9.1, §16.10)."""

    branch_id: int


@attrs.frozen
class AbandonBranch:
    """Stop this branch's client transaction without sending anything (RFC 3261 §16.8, timer C
    with no provisional; or a CANCELled branch whose final never came, §9.1)."""

    branch_id: int


@attrs.frozen
class ForwardResponse:
    """Relay a 1xx (not 100) or 2xx upstream now (RFC 3261 §16.7 step 5, PX-09)."""

    response: Response
    branch_id: int


@attrs.frozen
class FinalResponse:
    """The one final response for the caller. ``response`` is a copy of the chosen downstream
    response with ``status``/``reason`` applied; None means answer locally with
    ``make_response(request, status, reason, to_tag=...)``."""

    response: Response | None
    status: int
    reason: str


@attrs.frozen
class RemoveBinding:
    """The flow behind this binding is dead: remove it from the location store (RFC 5626 §7)."""

    binding_key: object
    cause: RemovalCause


@attrs.frozen
class Done:
    """The context is over: the caller has its answer and no branch is pending."""


Action = (
    StartBranch
    | CancelBranch
    | AbandonBranch
    | ForwardResponse
    | FinalResponse
    | RemoveBinding
    | Done
)


@attrs.frozen
class BranchInfo:
    """Read-only view of one branch for the management API."""

    branch_id: int
    label: str
    state: BranchState
    last_status: int | None
    failure: BranchFailure | None


# --------------------------------------------------------------------------- state


@attrs.define
class _Branch:
    id: int
    target: int  # index into ResponseContext._runs
    candidate: Candidate
    state: BranchState = BranchState.CALLING
    last_status: int | None = None
    failure: BranchFailure | None = None
    provisional: bool = False  # any 1xx, 100 included, allows a CANCEL (RFC 3261 §9.1)
    cancel_wanted: bool = False  # CANCEL asked for before any provisional: send on the first
    by_timer_c: bool = False  # we CANCELled it because timer C fired
    timer_c_at: float | None = None
    cancel_at: float | None = None  # give up waiting for the final of a CANCELled branch

    @property
    def cancelling(self) -> bool:
        return self.state is BranchState.CANCELLING or self.cancel_wanted


@attrs.define
class _TargetRun:
    target: Target
    tried: int = 0

    def has_next(self) -> bool:
        return self.tried < len(self.target.candidates)


def _to_targets(value: Sequence[Target]) -> tuple[Target, ...]:
    return tuple(value)


def _has_targets(
    _inst: object, _attribute: attrs.Attribute[tuple[Target, ...]], value: tuple[Target, ...]
) -> None:
    if not value:
        raise ValueError("a response context needs at least one target")


@attrs.define
class ResponseContext:
    """RFC 3261 §16 response context for one statefully forwarded request.

    ``timer_c`` is the INVITE branch timer (> 3 min, RFC 3261 §16.6 step 11); ``serial_by_q``
    tries q groups one after another (False: all targets at once); ``timeout_removes_binding``
    makes a branch timeout remove the binding like a dead flow; ``cancel_grace`` is how long a
    CANCELled branch may take to send its final (64*T1, RFC 3261 §9.1) before it is abandoned.
    """

    request_method: str
    targets: tuple[Target, ...] = attrs.field(converter=_to_targets, validator=_has_targets)
    created_at: float = attrs.field(kw_only=True, alias="now")
    timer_c: float = attrs.field(default=180.0, kw_only=True, validator=_positive)
    serial_by_q: bool = attrs.field(default=True, kw_only=True)
    timeout_removes_binding: bool = attrs.field(default=False, kw_only=True)
    cancel_grace: float = attrs.field(default=32.0, kw_only=True, validator=_positive)

    _runs: list[_TargetRun] = attrs.field(init=False, factory=list, repr=False)
    _groups: list[list[int]] = attrs.field(init=False, factory=list, repr=False)
    _next_group: int = attrs.field(init=False, default=0, repr=False)
    _branches: dict[int, _Branch] = attrs.field(init=False, factory=dict, repr=False)
    _next_id: int = attrs.field(init=False, default=1, repr=False)
    _outcomes: list[Outcome] = attrs.field(init=False, factory=list, repr=False)
    _started: bool = attrs.field(init=False, default=False, repr=False)
    _cancelled: bool = attrs.field(init=False, default=False, repr=False)
    _got_6xx: bool = attrs.field(init=False, default=False, repr=False)
    _final_sent: bool = attrs.field(init=False, default=False, repr=False)
    _forwarded_2xx: bool = attrs.field(init=False, default=False, repr=False)
    _done: bool = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._runs = [_TargetRun(t) for t in self.targets]
        # Stable sort: equal q keeps the runtime's order.
        order = sorted(range(len(self._runs)), key=lambda i: -self._runs[i].target.q)
        if self.serial_by_q:
            self._groups = [
                list(group)
                for _, group in itertools.groupby(order, key=lambda i: self._runs[i].target.q)
            ]
        else:
            self._groups = [order]

    # ------------------------------------------------------------------ queries
    @property
    def is_invite(self) -> bool:
        return self.request_method == "INVITE"

    @property
    def finished(self) -> bool:
        """``Done`` was emitted: the runtime can drop this context."""
        return self._done

    @property
    def answered(self) -> bool:
        """The caller has its answer: the final was sent or a 2xx was forwarded."""
        return self._final_sent or self._forwarded_2xx

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def pending_branches(self) -> tuple[int, ...]:
        """Ids of the branches still waiting for a final response."""
        return tuple(b.id for b in self._branches.values() if b.state.pending)

    def branches(self) -> tuple[BranchInfo, ...]:
        """Every branch started so far, oldest first (management API)."""
        return tuple(
            BranchInfo(b.id, b.candidate.label, b.state, b.last_status, b.failure)
            for b in self._branches.values()
        )

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has work to do next (timer C, CANCEL grace), or None."""
        if self._done:
            return None
        deadlines = [
            d
            for b in self._branches.values()
            if b.state.pending
            for d in (b.timer_c_at, b.cancel_at)
            if d is not None
        ]
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ inputs
    def start(self, now: float) -> list[Action]:
        """Fork to the first q group (RFC 3261 §16.6)."""
        if self._started or self._done:
            return []
        self._started = True
        actions: list[Action] = []
        self._start_next_group(now, actions)
        return actions

    def on_response(self, branch_id: int, response: Response, now: float) -> list[Action]:
        """A response arrived on a branch's client transaction (RFC 3261 §16.7)."""
        b = self._branches.get(branch_id)
        if b is None:
            return []
        status = response.status
        if self.is_invite and 200 <= status <= 299:
            return self._on_invite_2xx(b, response, now)
        if self._done or not b.state.pending:
            return []
        actions: list[Action] = []
        if 100 <= status <= 199:
            self._on_provisional(b, response, now, actions)
            return actions

        b.last_status = status
        was_cancelling = b.cancelling
        b.state = BranchState.COMPLETED
        if 200 <= status <= 299:
            # Non-INVITE: the first 2xx is the final; later ones are absorbed (§16.7 step 5).
            if not self.answered:
                self._final_sent = True
                actions.append(FinalResponse(response.copy(), status, response.reason))
            self._end_branch(
                b, None, retry=False, was_cancelling=was_cancelling, now=now, actions=actions
            )
            return actions

        outcome = Outcome.of(response)
        retry = False
        if status == 430:
            # RFC 5626 §7 / OB-AP-02: the flow is dead; drop its binding, try the next flow.
            if b.candidate.binding_key is not None:
                actions.append(RemoveBinding(b.candidate.binding_key, RemovalCause.FLOW_FAILED))
            retry = True
        elif status == 408:
            retry = True  # OB-AP-03: 408 may mean this flow is stale, so the next may do better
        elif 600 <= status <= 699:
            # PX-10: a 6xx ends the whole fork; cancel the rest and answer at once.
            self._got_6xx = True
            self._cancel_all(now, actions)
        elif status == 487 and b.by_timer_c:
            # We cancelled it for timer C, not the caller: to the caller it is a timeout.
            outcome = Outcome(408)
        self._end_branch(
            b, outcome, retry=retry, was_cancelling=was_cancelling, now=now, actions=actions
        )
        return actions

    def on_branch_failed(self, branch_id: int, cause: BranchFailure, now: float) -> list[Action]:
        """A branch ended with no response: its flow failed or its transaction timed out."""
        b = self._branches.get(branch_id)
        if b is None or self._done or not b.state.pending:
            return []
        actions: list[Action] = []
        was_cancelling = b.cancelling
        b.state = BranchState.FAILED
        b.failure = cause
        key = b.candidate.binding_key
        if cause is BranchFailure.TRANSPORT:
            if key is not None:
                # OB-CS-07: a dead flow inside the combined server is an internal 430.
                actions.append(RemoveBinding(key, RemovalCause.TRANSPORT))
                outcome = Outcome(430)
            else:
                outcome = Outcome(503)  # PX-13: a transport error counts as 503 on that branch
        else:
            if key is not None and self.timeout_removes_binding:
                actions.append(RemoveBinding(key, RemovalCause.TIMEOUT))
            outcome = Outcome(408)
        if b.by_timer_c:
            outcome = Outcome(408)
        self._end_branch(
            b, outcome, retry=True, was_cancelling=was_cancelling, now=now, actions=actions
        )
        return actions

    def on_cancel(self, now: float) -> list[Action]:
        """A CANCEL matched the server transaction (RFC 3261 §16.10, PX-14).

        Every pending branch is CANCELled (those without a provisional yet as soon as one
        arrives, §9.1) and the final becomes 487. A CANCEL of a non-INVITE changes nothing, and
        neither does one after the caller got its answer."""
        if not self.is_invite or self._cancelled or self.answered or self._done:
            return []
        self._cancelled = True
        actions: list[Action] = []
        self._cancel_all(now, actions)
        self._settle(now, actions)
        return actions

    def handle_timer(self, now: float) -> list[Action]:
        """Run the deadlines that have passed (timer C: RFC 3261 §16.8, PX-08)."""
        if self._done:
            return []
        actions: list[Action] = []
        for b in list(self._branches.values()):
            if not b.state.pending:
                continue
            if b.cancel_at is not None and b.cancel_at <= now:
                # §9.1: the CANCELled branch never answered; stop waiting for it.
                actions.append(AbandonBranch(b.id))
                b.state = BranchState.FAILED
                b.failure = BranchFailure.TIMEOUT
                self._end_branch(
                    b, Outcome(408), retry=False, was_cancelling=True, now=now, actions=actions
                )
            elif b.timer_c_at is not None and b.timer_c_at <= now:
                if b.provisional:
                    b.by_timer_c = True
                    self._send_cancel(b, now, actions)
                else:
                    # §16.8: no provisional at all counts as a 408 from that branch.
                    actions.append(AbandonBranch(b.id))
                    was_cancelling = b.cancelling
                    b.state = BranchState.FAILED
                    b.failure = BranchFailure.TIMEOUT
                    self._end_branch(
                        b,
                        Outcome(408),
                        retry=True,
                        was_cancelling=was_cancelling,
                        now=now,
                        actions=actions,
                    )
        return actions

    # ------------------------------------------------------------------ internals
    def _on_provisional(
        self, b: _Branch, response: Response, now: float, actions: list[Action]
    ) -> None:
        b.last_status = response.status
        b.provisional = True
        if b.state is BranchState.CALLING:
            b.state = BranchState.PROCEEDING
        if b.cancel_wanted and b.state is not BranchState.CANCELLING:
            self._send_cancel(b, now, actions)
        elif response.status != 100 and b.timer_c_at is not None:
            b.timer_c_at = now + self.timer_c  # §16.7 step 2: a real provisional resets timer C
        if response.status != 100 and not self.answered:
            actions.append(ForwardResponse(response, b.id))

    def _on_invite_2xx(self, b: _Branch, response: Response, now: float) -> list[Action]:
        # §16.7 step 5: every 2xx to INVITE goes upstream at once, from every branch, even
        # after a final was sent; the caller's ACK settles which dialog it keeps.
        actions: list[Action] = [ForwardResponse(response, b.id)]
        if self._done:
            return actions
        self._forwarded_2xx = True
        if b.state.pending:
            b.state = BranchState.COMPLETED
            b.last_status = response.status
            b.timer_c_at = b.cancel_at = None
        # §16.7 step 10: the call is answered, so the other branches are CANCELled.
        self._cancel_all(now, actions)
        self._settle(now, actions)
        return actions

    def _send_cancel(self, b: _Branch, now: float, actions: list[Action]) -> None:
        b.cancel_wanted = False
        b.state = BranchState.CANCELLING
        b.timer_c_at = None
        b.cancel_at = now + self.cancel_grace
        actions.append(CancelBranch(b.id))

    def _cancel_all(self, now: float, actions: list[Action]) -> None:
        """CANCEL every pending branch; one without a provisional waits for it (§9.1).
        Non-INVITE branches cannot be CANCELled usefully and are left to end by themselves."""
        if not self.is_invite:
            return
        for b in self._branches.values():
            if b.state is BranchState.CALLING and not b.provisional:
                b.cancel_wanted = True
            elif b.state is BranchState.PROCEEDING:
                self._send_cancel(b, now, actions)

    @property
    def _closed(self) -> bool:
        """No new branch may start."""
        return self.answered or self._cancelled or self._got_6xx

    def _launch(self, target: int, now: float, actions: list[Action]) -> None:
        run = self._runs[target]
        candidate = run.target.candidates[run.tried]
        run.tried += 1
        b = _Branch(self._next_id, target, candidate)
        self._next_id += 1
        if self.is_invite:
            b.timer_c_at = now + self.timer_c
        self._branches[b.id] = b
        actions.append(StartBranch(b.id, candidate))

    def _start_next_group(self, now: float, actions: list[Action]) -> None:
        group = self._groups[self._next_group]
        self._next_group += 1
        for target in group:
            self._launch(target, now, actions)

    def _end_branch(
        self,
        b: _Branch,
        outcome: Outcome | None,
        *,
        retry: bool,
        was_cancelling: bool,
        now: float,
        actions: list[Action],
    ) -> None:
        """``b`` has ended: fail over within its target (OB-AP-02) or store the target's result."""
        b.timer_c_at = b.cancel_at = None
        b.cancel_wanted = False
        run = self._runs[b.target]
        if retry and not was_cancelling and not self._closed and run.has_next():
            self._launch(b.target, now, actions)
        elif outcome is not None:
            # Only a target's last result counts: a flow that failed before the next flow gave
            # a real answer says nothing about the target.
            self._outcomes.append(outcome)
        self._settle(now, actions)

    def _settle(self, now: float, actions: list[Action]) -> None:
        """Start the next q group, send the final, or finish, as the state now allows."""
        if self._done:
            return
        idle = not any(b.state.pending for b in self._branches.values())
        if not self.answered:
            if self._cancelled:
                if idle:
                    self._send_final(self._cancelled_final(), actions)
            elif self._got_6xx:
                self._send_final(select_final(self._outcomes), actions)
            elif idle:
                if self._next_group < len(self._groups):
                    self._start_next_group(now, actions)
                    return
                self._send_final(select_final(self._outcomes), actions)
        if self.answered and idle:
            self._done = True
            actions.append(Done())

    def _cancelled_final(self) -> Selection:
        """PX-14: after the caller's CANCEL the answer is 487, a branch's own 487 if one came."""
        for outcome in self._outcomes:
            if outcome.status == 487 and outcome.response is not None:
                dup = outcome.response.copy()
                return Selection(dup.status, dup.reason, dup)
        return Selection(487, reason_phrase(487), None)

    def _send_final(self, selection: Selection, actions: list[Action]) -> None:
        self._final_sent = True
        actions.append(FinalResponse(selection.response, selection.status, selection.reason))
