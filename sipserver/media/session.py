"""Anchored calls: which ng command each SIP event needs, and what its reply does. Sans-IO.

``MediaSessions`` keeps one record per anchored call (keyed by Call-ID; per branch the callee's
leg, per tag the party's classification) and turns the SIP events the proxy sees into
``MediaStep`` values: an ``NgCommand`` to send to rtpengine and a continuation that applies the
reply to the message (the body and Content-Length replaced by rtpengine's SDP) or, when no
rtpengine answered, applies ``media.on_failure``. It never sends, waits or reads a clock.

How the proxy uses it (every call returns None when the message is none of media's business):

    media = MediaSessions(MediaSettings.from_section(cfg.media), metrics)

    # 1. A request about to go down a branch: INVITE (initial or re-INVITE), UPDATE, PRACK or
    #    ACK with SDP (late offer), BYE. ``out`` is the branch's own copy, with our Via on top
    #    (its branch is the fork's via-branch); ``source`` the sender
    #    (``Leg.sender(request_as_received, arrival_flow)``), ``target`` the branch's
    #    destination (``Leg.target(flow, dest.binding, direct=...)``).
    step = media.on_request(out, source, target, now=now)
    if step is not None:
        outcome = step.finish(await ng_client.execute(step.command))  # edits ``out`` in place
        if outcome.reject:             # only for offers in requests, with on_failure = reject
            ... answer the request (or fail the branch) with outcome.status (503)

    # 2. A response going upstream: 18x/2xx with SDP (answer, or the offer of a late-offer
    #    call), a final failure of the initial INVITE (delete). Call it with our Via still on
    #    top (or pass ``branch=``); for a response built here (408, 487) too.
    step = media.on_response(out, now=now)
    if step is not None:
        step.finish(await ng_client.execute(step.command))  # never rejects: a response passes

    # 3. CANCEL (RFC 3261 §9.2): ``media.on_cancel(call_id)`` (or on_request with the CANCEL).
    # 4. Timers: calls whose BYE never came (media.session_timeout), or whose INVITE never got
    #    a final response.
    media.next_deadline(); for step in media.handle_timer(now): ... execute, finish

A DELETE step changes no message: send it without holding the BYE or the response back.

Rules:
- Offer on INVITE, re-INVITE and UPDATE with SDP; answer on 18x/2xx with SDP. Late offer: an
  INVITE without SDP makes the 18x/2xx with SDP an offer (from the callee's tag) and the ACK
  (or PRACK) with SDP its answer. ng's from-tag is always the offerer's tag.
- Forks: one rtpengine call per Call-ID; each branch's offer carries its Via branch as
  ``via-branch`` and each answer its To tag, so rtpengine keeps one leg per fork. A branch
  that is not anchored (its callee needs no rtpengine) leaves its SDP alone; if such a branch
  wins with a 2xx, the rtpengine call is deleted.
- Delete (the whole call) on BYE, on CANCEL before a 2xx, on a final failure of the initial
  INVITE, and on timeout. A re-INVITE's failure keeps the call.
- The first rtpengine that handled the call gets every later command for it (``server``).
- Failure: an offer in a request becomes a 503 with on_failure = reject; everything else (and
  every failure with on_failure = pass) goes on with its SDP untouched. Each is logged once, at
  WARNING, naming the call and what was done. A transaction never waits for more than the
  client's timeout budget.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Callable
from typing import Any

import attrs

from ..sip import Message, ParseError, Request, Response
from .metrics import MediaMetrics
from .ng import NgAddress, NgCommand, NgError, NgOk, NgResult, answer, delete, describe, offer
from .planner import AnchorMode, Leg, LegView, classify, decide, flags_towards
from .sdp import is_sdp_type, summarize

__all__ = [
    "FailurePolicy",
    "MediaOutcome",
    "MediaSessions",
    "MediaCallInfo",
    "MediaSettings",
    "MediaStep",
    "StepKind",
    "Verdict",
]

log = logging.getLogger("sipserver.media")

MAX_EXCHANGES = 8  # pending offer/answer exchanges kept per call (oldest dropped)


class FailurePolicy(enum.Enum):
    REJECT = "reject"  # an offer no rtpengine handled: 503
    PASS = "pass"  # signalling goes on with the SDP untouched


@attrs.frozen
class MediaSettings:
    mode: AnchorMode = AnchorMode.AUTO
    on_failure: FailurePolicy = FailurePolicy.REJECT
    session_timeout: float = 86400.0  # no signalling for this long after the 2xx: delete
    setup_timeout: float = 600.0  # no final response for this long after the INVITE: delete
    max_sessions: int = 100_000  # anchored calls kept; beyond, new calls are not anchored

    @classmethod
    def from_section(cls, section: Any) -> MediaSettings:
        """From the ``[media]`` config section (duck-typed: this package does not import
        ``sipserver.config``)."""
        return cls(
            AnchorMode(section.anchor),
            FailurePolicy(section.on_failure),
            float(section.session_timeout),
        )


class Verdict(enum.Enum):
    REWRITTEN = "rewritten"  # the body is rtpengine's SDP now
    DONE = "done"  # nothing to change (a delete went through)
    PASSED = "passed"  # no rtpengine handled it: the message goes on untouched
    REJECT = "reject"  # no rtpengine handled the offer: answer the request with ``status``


@attrs.frozen
class MediaOutcome:
    verdict: Verdict
    status: int | None = None
    reason: str | None = None

    @property
    def reject(self) -> bool:
        return self.verdict is Verdict.REJECT


class StepKind(enum.Enum):
    OFFER = "offer"
    ANSWER = "answer"
    DELETE = "delete"  # nothing waits on it: the message can go on before the reply


@attrs.frozen(eq=False)
class MediaStep:
    """One ng command to send, and what its result does (``finish``, exactly once)."""

    kind: StepKind
    command: NgCommand
    apply: Callable[[NgResult], MediaOutcome] = attrs.field(repr=False)

    def finish(self, result: NgResult) -> MediaOutcome:
        return self.apply(result)


_REWRITTEN = MediaOutcome(Verdict.REWRITTEN)
_DONE = MediaOutcome(Verdict.DONE)
_PASSED = MediaOutcome(Verdict.PASSED)


# ------------------------------------------------------------------------------ state


@attrs.define(eq=False)
class _Branch:
    via_branch: str
    callee: LegView
    anchored: bool


@attrs.define(eq=False)
class _Exchange:
    """An offer/answer exchange in a request (re-INVITE, UPDATE): ``offerer`` None while the
    offer is still to come in the response (a re-INVITE without SDP)."""

    offerer: str | None
    answerer: str


@attrs.define(eq=False)
class _Call:
    call_id: str
    caller_tag: str
    caller: LegView
    invite_cseq: int
    late_offer: bool
    deadline: float
    queued: float = attrs.field(init=False, default=float("inf"))  # the live timer heap entry
    branches: dict[str, _Branch] = attrs.field(factory=dict)
    parties: dict[str, LegView] = attrs.field(factory=dict)  # tag -> classification
    exchanges: dict[tuple[str, int, str], _Exchange] = attrs.field(factory=dict)
    # offers made in responses, answered by an ACK/PRACK: (answerer, offerer) -> via-branch
    awaiting_answer: dict[tuple[str, str], str | None] = attrs.field(factory=dict)
    confirmed: bool = False  # a 2xx to the initial INVITE went upstream
    engaged: bool = False  # an ng offer was sent: rtpengine may hold the call
    anchored: bool = False  # an ng offer succeeded
    server: NgAddress | None = None
    started: float = 0.0  # now at the INVITE


@attrs.frozen
class MediaCallInfo:
    """Read-only view of one call for the management API (``MediaSessions.calls``)."""

    call_id: str
    caller_tag: str
    caller: str  # the caller's profile: webrtc | plain
    anchored: bool  # rtpengine took an offer
    confirmed: bool  # a 2xx went upstream
    late_offer: bool
    branches: int  # branches tried
    anchored_branches: int  # of which go through rtpengine
    server: str | None  # the rtpengine holding the call
    age: float


def _bounded_put(table: dict[Any, Any], key: Any, value: Any) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > MAX_EXCHANGES:
        del table[next(iter(table))]


def _sdp(msg: Message) -> bytes | None:
    """The SDP body of ``msg``, or None (no body, or not application/sdp: a multipart body is
    left alone)."""
    if not msg.body:
        return None
    try:
        content_type = msg.header("content-type")
    except ParseError:
        return None
    return msg.body if is_sdp_type(content_type) else None


def _set_body(msg: Message, body: bytes) -> None:
    msg.body = body
    msg.set_header("Content-Length", str(len(body)))


def _failure_text(result: NgResult) -> str:
    if isinstance(result, NgError):
        where = f" ({result.server})" if result.server else ""
        return f"rtpengine{where} said {result.result}: {result.reason}"
    if isinstance(result, NgOk):
        return "rtpengine's reply has no SDP"
    return result.reason


# ------------------------------------------------------------------------------ sessions


class MediaSessions:
    """Anchored calls by Call-ID. See the module docstring for how the proxy drives it."""

    def __init__(self, settings: MediaSettings, metrics: MediaMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else MediaMetrics()
        self._calls: dict[str, _Call] = {}
        self._timers: list[tuple[float, str]] = []  # (deadline when pushed, call-id); lazy

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    @property
    def active(self) -> int:
        """Calls rtpengine is anchoring right now (an offer went through)."""
        return sum(1 for c in self._calls.values() if c.anchored)

    def calls(self, now: float) -> list[MediaCallInfo]:
        """Every call kept, oldest first (management API)."""
        return [
            MediaCallInfo(
                c.call_id,
                c.caller_tag,
                c.caller.profile.value,
                c.anchored,
                c.confirmed,
                c.late_offer,
                len(c.branches),
                sum(1 for b in c.branches.values() if b.anchored),
                str(c.server) if c.server is not None else None,
                max(0.0, now - c.started),
            )
            for c in sorted(self._calls.values(), key=lambda c: c.started)
        ]

    # ------------------------------------------------------------------ requests
    def on_request(
        self, req: Request, source: Leg, target: Leg, *, branch: str | None = None, now: float
    ) -> MediaStep | None:
        """A request about to be forwarded: ``req`` is the copy that goes out (edited in place
        by the step); ``branch`` its Via branch (default: its top Via's)."""
        method = req.method
        if method not in ("INVITE", "UPDATE", "ACK", "PRACK", "BYE", "CANCEL"):
            return None
        try:
            call_id = req.call_id
            from_tag, to_tag = req.from_tag, req.to_tag
            cseq = req.cseq
            if branch is None and method == "INVITE":
                branch = req.top_via.branch
        except ParseError:
            return None
        if not from_tag:
            return None  # RFC 3261 §8.1.1.3 makes it mandatory; rtpengine keys legs by it
        call = self._calls.get(call_id)
        if method == "INVITE" and not to_tag:
            return self._initial_invite(req, call, call_id, from_tag, cseq.seq, source, target, branch or "", now)
        if call is None:
            return None
        if method in ("BYE", "CANCEL"):
            if method == "CANCEL" and call.confirmed:
                return None  # RFC 3261 §9.2: a CANCEL after the 2xx changes nothing
            return self._end(call, method)
        if not to_tag:
            return None
        self._touch(call, now)
        if method in ("ACK", "PRACK"):
            return self._answer_in_request(req, call, from_tag, to_tag, source)
        return self._offer_in_dialog(req, call, from_tag, to_tag, cseq.seq, source, target)

    def _initial_invite(
        self,
        req: Request,
        call: _Call | None,
        call_id: str,
        caller_tag: str,
        seq: int,
        source: Leg,
        target: Leg,
        branch: str,
        now: float,
    ) -> MediaStep | None:
        if call is not None and (call.caller_tag != caller_tag or call.invite_cseq != seq):
            log.info("media: call %s: a second initial INVITE (new From tag or CSeq) is not anchored", call_id)
            return None
        body = _sdp(req)
        caller = classify(source, summarize(body) if body is not None else None)
        callee = classify(target)
        decision = decide(self.settings.mode, caller, callee)
        if not decision.anchor:
            if call is not None:
                call.branches[branch] = _Branch(branch, callee, anchored=False)
            log.debug("media: call %s branch %s not anchored: %s", call_id, branch, decision.reason)
            return None
        if call is None:
            if len(self._calls) >= self.settings.max_sessions:
                log.warning(
                    "media: call %s not anchored: %d anchored calls already (the limit)",
                    call_id,
                    len(self._calls),
                )
                return None
            call = _Call(call_id, caller_tag, caller, seq, body is None, now + self.settings.setup_timeout, started=now)
            self._calls[call_id] = call
            self._queue(call)
        call.parties[caller_tag] = caller
        call.branches[branch] = _Branch(branch, callee, anchored=True)
        log.info("media: call %s branch %s anchored: %s", call_id, branch, decision.reason)
        if body is None:
            return None  # late offer: the 18x/2xx with SDP is the offer
        flags = flags_towards(callee.profile, caller, offer=True)
        command = offer(call_id, caller_tag, body, flags, via_branch=branch or None).routed(call.server)
        call.engaged = True

        def apply(result: NgResult) -> MediaOutcome:
            if isinstance(result, NgOk) and result.sdp is not None:
                self._succeeded(call, result)
                _set_body(req, result.sdp)
                return _REWRITTEN
            b = call.branches.get(branch)
            if b is not None:
                b.anchored = False  # its answer goes upstream untouched
            self._forget_if_idle(call)
            return self._failed(command, result, rejectable=True)

        return MediaStep(StepKind.OFFER, command, apply)

    def _offer_in_dialog(
        self, req: Request, call: _Call, from_tag: str, to_tag: str, seq: int, source: Leg, target: Leg
    ) -> MediaStep | None:
        """re-INVITE or UPDATE (RFC 3311) inside an anchored call."""
        if req.method not in ("INVITE", "UPDATE"):
            return None
        key = (from_tag, seq, req.method)
        body = _sdp(req)
        if body is None:
            if req.method == "INVITE":  # the offer comes in the 2xx, the answer in the ACK
                _bounded_put(call.exchanges, key, _Exchange(None, to_tag))
            return None
        sender = classify(source, summarize(body))
        recipient = call.parties.get(to_tag) or classify(target)
        call.parties[from_tag] = sender
        _bounded_put(call.exchanges, key, _Exchange(from_tag, to_tag))
        flags = flags_towards(recipient.profile, sender, offer=True)
        command = offer(call.call_id, from_tag, body, flags, to_tag=to_tag).routed(call.server)

        def apply(result: NgResult) -> MediaOutcome:
            if isinstance(result, NgOk) and result.sdp is not None:
                self._succeeded(call, result)
                _set_body(req, result.sdp)
                return _REWRITTEN
            call.exchanges.pop(key, None)
            return self._failed(command, result, rejectable=True)

        return MediaStep(StepKind.OFFER, command, apply)

    def _answer_in_request(
        self, req: Request, call: _Call, from_tag: str, to_tag: str, source: Leg
    ) -> MediaStep | None:
        """ACK (or PRACK) with SDP: the answer to an offer made in a response."""
        key = (from_tag, to_tag)
        if key not in call.awaiting_answer:
            return None
        body = _sdp(req)
        if body is None:
            return None
        via_branch = call.awaiting_answer[key]
        recipient = call.parties.get(to_tag)
        if recipient is None:
            return None
        sender = classify(source, summarize(body))
        call.parties[from_tag] = sender
        flags = flags_towards(recipient.profile, sender, offer=False)
        command = answer(call.call_id, to_tag, from_tag, body, flags, via_branch=via_branch).routed(call.server)
        return self._response_step(StepKind.ANSWER, call, command, req)

    # ------------------------------------------------------------------ responses
    def on_response(self, resp: Response, *, branch: str | None = None, now: float) -> MediaStep | None:
        """A response about to go upstream (``resp`` is edited in place by the step);
        ``branch`` is our Via branch it came back on (default: its top Via's)."""
        try:
            call_id = resp.call_id
            cseq = resp.cseq
            from_tag, to_tag = resp.from_tag, resp.to_tag
        except ParseError:
            return None
        call = self._calls.get(call_id)
        if call is None or cseq.method not in ("INVITE", "UPDATE") or resp.status < 101 or not from_tag:
            return None
        self._touch(call, now)
        if cseq.method == "INVITE" and from_tag == call.caller_tag and cseq.seq == call.invite_cseq:
            if branch is None:
                try:
                    branch = resp.top_via.branch
                except ParseError:
                    branch = None
            return self._initial_response(resp, call, to_tag, branch or "", now)
        if not to_tag:
            return None
        ex = call.exchanges.get((from_tag, cseq.seq, cseq.method))
        if ex is None:
            return None
        if resp.status >= 300:
            del call.exchanges[(from_tag, cseq.seq, cseq.method)]
            return None
        body = _sdp(resp)
        if body is None:
            return None
        if ex.offerer is not None:  # the answer to a re-INVITE's or UPDATE's offer
            recipient, sender = call.parties.get(ex.offerer), call.parties.get(ex.answerer)
            if recipient is None or sender is None:
                return None
            sender = classify(sender.leg, summarize(body))
            call.parties[ex.answerer] = sender
            flags = flags_towards(recipient.profile, sender, offer=False)
            command = answer(call_id, ex.offerer, ex.answerer, body, flags).routed(call.server)
            return self._response_step(StepKind.ANSWER, call, command, resp)
        # a re-INVITE without SDP: the 2xx offers (from the UAS, tagged to_tag), the ACK answers
        recipient, sender = call.parties.get(from_tag), call.parties.get(to_tag)
        if recipient is None or sender is None:
            return None
        sender = classify(sender.leg, summarize(body))
        call.parties[to_tag] = sender
        _bounded_put(call.awaiting_answer, (from_tag, to_tag), None)
        flags = flags_towards(recipient.profile, sender, offer=True)
        command = offer(call_id, to_tag, body, flags, to_tag=from_tag).routed(call.server)
        return self._response_step(StepKind.OFFER, call, command, resp)

    def _initial_response(
        self, resp: Response, call: _Call, to_tag: str | None, branch: str, now: float
    ) -> MediaStep | None:
        status = resp.status
        if status >= 300:
            # the best final response goes upstream: the call failed (RFC 3261 §16.7 step 6)
            return None if call.confirmed else self._end(call, f"{status} to the INVITE")
        b = call.branches.get(branch)
        if b is None or not b.anchored:
            if 200 <= status < 300:
                # a fork that needs no rtpengine won: its SDP goes up untouched, the rest is moot
                return self._end(call, f"2xx from branch {branch or '?'}, which is not anchored")
            return None
        if 200 <= status < 300:
            call.confirmed = True
            self._touch(call, now)
        body = _sdp(resp)
        if body is None or not to_tag:
            return None
        callee = classify(b.callee.leg, summarize(body))
        call.parties[to_tag] = callee
        if call.late_offer:
            flags = flags_towards(call.caller.profile, callee, offer=True)
            command = offer(call.call_id, to_tag, body, flags, to_tag=call.caller_tag, via_branch=branch or None)
            _bounded_put(call.awaiting_answer, (call.caller_tag, to_tag), branch or None)
            call.engaged = True
            return self._response_step(StepKind.OFFER, call, command.routed(call.server), resp)
        flags = flags_towards(call.caller.profile, callee, offer=False)
        command = answer(call.call_id, call.caller_tag, to_tag, body, flags, via_branch=branch or None)
        return self._response_step(StepKind.ANSWER, call, command.routed(call.server), resp)

    def _response_step(self, kind: StepKind, call: _Call, command: NgCommand, msg: Message) -> MediaStep:
        """An offer or answer whose message cannot be refused (a response, an ACK): on failure it
        goes on untouched whatever media.on_failure says."""

        def apply(result: NgResult) -> MediaOutcome:
            if isinstance(result, NgOk) and result.sdp is not None:
                self._succeeded(call, result)
                _set_body(msg, result.sdp)
                return _REWRITTEN
            return self._failed(command, result, rejectable=False)

        return MediaStep(kind, command, apply)

    def on_cancel(self, call_id: str) -> MediaStep | None:
        """RFC 3261 §9.2: the caller gave up before a 2xx; delete its call (after a 2xx the
        CANCEL changes nothing and the BYE will come)."""
        call = self._calls.get(call_id)
        if call is None or call.confirmed:
            return None
        return self._end(call, "CANCEL")

    # ------------------------------------------------------------------ ending
    def end_call(self, call_id: str, why: str) -> MediaStep | None:
        """Delete an anchored call now (e.g. the dialog is known to be gone)."""
        call = self._calls.get(call_id)
        return None if call is None else self._end(call, why)

    def _end(self, call: _Call, why: str) -> MediaStep | None:
        self._calls.pop(call.call_id, None)
        if not call.engaged:
            return None
        log.info("media: call %s ends (%s): deleting it from rtpengine", call.call_id, why)
        command = delete(call.call_id).routed(call.server)

        def apply(result: NgResult) -> MediaOutcome:
            if isinstance(result, NgOk):
                return _DONE
            log.warning("media: %s failed: %s", describe(command), _failure_text(result))
            return _PASSED

        return MediaStep(StepKind.DELETE, command, apply)

    def _forget_if_idle(self, call: _Call) -> None:
        """A call none of whose branches is anchored any more, and which rtpengine never took,
        is forgotten."""
        if not call.anchored and not call.confirmed and not any(b.anchored for b in call.branches.values()):
            if self._calls.get(call.call_id) is call:
                del self._calls[call.call_id]

    # ------------------------------------------------------------------ timers
    def _touch(self, call: _Call, now: float) -> None:
        """Signalling seen: the call's deadline moves (a confirmed call's may move earlier, when
        media.session_timeout is below setup_timeout: then its timer entry is renewed)."""
        call.deadline = self._deadline(call, now)
        if call.deadline < call.queued:
            self._queue(call)

    def _queue(self, call: _Call) -> None:
        call.queued = call.deadline
        heapq.heappush(self._timers, (call.deadline, call.call_id))

    def _deadline(self, call: _Call, now: float) -> float:
        s = self.settings
        return now + (s.session_timeout if call.confirmed else s.setup_timeout)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has something to do (possibly early: entries are lazy)."""
        while self._timers and not self._live(*self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _live(self, when: float, call_id: str) -> bool:
        """A heap entry that is its call's current one (superseded entries are dropped)."""
        call = self._calls.get(call_id)
        return call is not None and call.queued == when

    def handle_timer(self, now: float) -> list[MediaStep]:
        """Delete the calls whose signalling stopped: no BYE after ``session_timeout``, no final
        response after ``setup_timeout``."""
        steps: list[MediaStep] = []
        while self._timers and self._timers[0][0] <= now:
            when, call_id = heapq.heappop(self._timers)
            if not self._live(when, call_id):
                continue
            call = self._calls[call_id]
            if call.deadline > now:  # touched since: wait for its real deadline
                self._queue(call)
                continue
            step = self._end(call, "no signalling before media.session_timeout" if call.confirmed else "no final response")
            if step is not None:
                steps.append(step)
        return steps

    # ------------------------------------------------------------------ results
    def _succeeded(self, call: _Call, result: NgOk) -> None:
        if call.server is None:
            call.server = result.server
        if not call.anchored:
            call.anchored = True
            self.metrics.session_anchored()
        if result.warning:
            log.info("media: call %s: rtpengine warns: %s", call.call_id, result.warning)

    def _failed(self, command: NgCommand, result: NgResult, *, rejectable: bool) -> MediaOutcome:
        why = _failure_text(result)
        if rejectable and self.settings.on_failure is FailurePolicy.REJECT:
            self.metrics.failure("reject")
            log.warning("media: %s failed (%s): rejecting with 503 (media.on_failure = reject)", describe(command), why)
            return MediaOutcome(Verdict.REJECT, 503, "Service Unavailable")
        self.metrics.failure("pass")
        if rejectable:
            log.warning("media: %s failed (%s): SDP passed untouched (media.on_failure = pass)", describe(command), why)
        else:
            log.warning("media: %s failed (%s): SDP passed untouched (a response or ACK cannot be refused)", describe(command), why)
        return _PASSED
