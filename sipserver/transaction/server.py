"""Server transactions: INVITE (RFC 3261 §17.2.1 as changed by RFC 6026 §7.1) and non-INVITE
(RFC 3261 §17.2.2).

The runtime creates a server transaction when a request matches none (``TransactionTable
.find_server``) and passes the request to the core itself; the transaction takes over from there:
the core sends every response through ``send_response``, the runtime feeds matched retransmissions
and ACKs to ``on_request``, transport failures to ``on_transport_error`` and timers to
``handle_timer``.

100 Trying (RFC 3261 §17.2.1): the INVITE server transaction sends it itself when the core has sent
nothing within ``TimerConfig.trying`` (200 ms). The proxy core is free to send 100 at once through
``send_response`` (PX-08); that cancels the timer. With ``trying=None`` the transaction never does.

Invariants:
- a response reaches the wire only through ``Send`` actions of this module, and only in a state
  where the RFC lets the core send it (a second final, a 1xx after a final: ignored);
- a retransmitted request is answered with the last response sent, or absorbed if none;
- the ACK for a 3xx-6xx is absorbed (COMPLETED -> CONFIRMED); an ACK that matched in ACCEPTED (an
  ACK for a 2xx, possible with RFC 2543 matching or a UA reusing the branch) goes up to the core
  as ``DeliverRequest`` (RFC 6026, "ACK / to TU");
- RFC 6026 ACCEPTED: retransmitted INVITEs are absorbed, every 2xx the core sends is sent,
  timer L ends the state.
"""

from __future__ import annotations

import attrs

from ..sip import ParseError, Request, Response, make_response
from ..sip.build import MAGIC_COOKIE
from .errors import TransactionError
from .events import Action, DeliverRequest, Send, Timeout, TransportError
from .machine import Input, TransactionMachine, TransactionState, Transitions
from .timers import TimerConfig

St = TransactionState
In = Input


# Keys are plain tuples, not classes: a tuple of strings and ints stops being tracked by the
# garbage collector after its first collection, and a completed UDP transaction keeps its keys
# for 32 s (Timer J), so at thousands of requests a second they were a good part of what every
# collection walked (docs/performance.md).

ServerKey = tuple[str, str, int | None, str]
"""RFC 3261 §17.2.3: (branch, sent-by host, sent-by port, method); ACK counts as INVITE.

The sent-by host is compared without regard to case (a host name is case-insensitive)."""

LegacyKey = tuple[str, int]
"""Bucket for RFC 2543 matching (§17.2.3, a branch without the magic cookie): (Call-ID, CSeq
number) narrow the candidates, the full comparison is done per candidate."""


def has_rfc3261_branch(branch: str | None) -> bool:
    """True when ``branch`` is an RFC 3261 transaction id: the magic cookie *and* something after
    it (RFC 4475 badbranch has the bare cookie and must fall back to RFC 2543 matching)."""
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)


def server_key(request: Request, method: str | None = None) -> ServerKey | None:
    """The §17.2.3 key of ``request`` (None when its branch is not an RFC 3261 one).

    ``method`` overrides the method to match (INVITE for ACK and for CANCEL targets).
    Raises ``ParseError`` for an unusable top Via."""
    via = request.top_via
    branch = via.branch
    if branch is None or not has_rfc3261_branch(branch):
        return None
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    return (branch, via.host.lower(), via.port, method)


def legacy_key(request: Request) -> LegacyKey:
    """Raises ``ParseError`` when Call-ID or CSeq is unusable."""
    return (request.call_id, request.cseq.seq)


def _keys(request: Request) -> tuple[ServerKey | None, LegacyKey]:
    try:
        return server_key(request), legacy_key(request)
    except ParseError as err:
        raise TransactionError(f"request unusable for a server transaction: {err.reason}") from err


@attrs.define(eq=False, slots=True)
class _ServerTransaction(TransactionMachine):
    request: Request
    key: ServerKey | None  # None: matched by the RFC 2543 rules through ``legacy``
    legacy: LegacyKey
    last_response: Response | None

    def on_request(self, request: Request, now: float) -> list[Action]:
        """A request matched to this transaction arrived: a retransmission or (INVITE) an ACK."""
        event = In.ACK if request.method == "ACK" else In.REQUEST
        return self._input(event, request, now)

    def send_response(self, response: Response, now: float) -> list[Action]:
        """The core answers. Returns ``[Send(response), ...]`` when the state allows it, ``[]``
        when it does not (a response after the final one, a status outside 100-699)."""
        return self._response_input(response, now)

    def on_transport_error(self, now: float) -> list[Action]:
        """Sending a response failed or the connection closed (§17.2.4)."""
        return self._input(In.TRANSPORT_ERROR, None, now)

    # ------------------------------------------------------------------ shared handlers
    def _send(self, response: Response, now: float) -> list[Action]:
        self.last_response = response
        return [Send(response)]

    def _send_final(self, response: Response, now: float, *, lingers: bool = True) -> list[Action]:
        """Send a final response. From here on the request and the response are kept only to
        match and answer retransmissions, so both shrink to their bytes (``freeze``: the
        response is serialised there, once, and sent as those bytes every time). A transaction
        that does not linger (non-INVITE over a reliable transport: timer J is 0, RFC 3261
        §17.2.2) leaves its request as it is: serialising it again only to drop it was 3% of
        the CPU of REGISTERs over TCP (py-spy)."""
        self.last_response = response
        response.freeze()
        if lingers:
            self.request.freeze()
        return [Send(response)]

    def _resend_last(self, request: Request, now: float) -> list[Action]:
        if self.last_response is None:
            return []
        return [Send(self.last_response, retransmission=True)]

    def _transport_failed(self, message: None, now: float) -> list[Action]:
        return [TransportError()]


@attrs.define(eq=False, slots=True, init=False)
class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.1 (Figure 7) with the ACCEPTED state of RFC 6026 §7.1.

    States: PROCEEDING -> ACCEPTED | COMPLETED -> CONFIRMED -> TERMINATED. Ignored inputs: a
    response from the core after a final (except 2xx in ACCEPTED); retransmitted INVITEs in
    ACCEPTED and CONFIRMED, ACKs in CONFIRMED (absorbed, as the RFC says); anything in TERMINATED.
    """

    _interval: float  # current timer G interval

    def __init__(
        self,
        request: Request,
        reliable: bool,
        timers: TimerConfig,
        now: float,
        *,
        context: object = None,
    ) -> None:
        if request.method != "INVITE":
            raise TransactionError("an INVITE server transaction needs an INVITE")
        key, legacy = _keys(request)
        super().__init__(reliable, timers, St.PROCEEDING, context, {}, request, key, legacy, None)
        self._interval = timers.timer_g
        if timers.trying is not None:
            self._arm(In.TIMER_TRYING, now, timers.trying)

    def _trying(self, message: None, now: float) -> list[Action]:
        # §17.2.1: the core was silent for 200 ms; answer 100 so the peer stops timer A.
        return self._send(make_response(self.request, 100), now)

    def _provisional(self, response: Response, now: float) -> list[Action]:
        self._disarm(In.TIMER_TRYING)
        return self._send(response, now)

    def _accepted(self, response: Response, now: float) -> list[Action]:
        self._disarm(In.TIMER_TRYING)
        self._arm(In.TIMER_L, now, self.timers.timer_l)
        return self._send_final(response, now)

    def _rejected(self, response: Response, now: float) -> list[Action]:
        self._disarm(In.TIMER_TRYING)
        if not self.reliable:
            self._interval = self.timers.timer_g
            self._arm(In.TIMER_G, now, self._interval)
        self._arm(In.TIMER_H, now, self.timers.timer_h)
        return self._send_final(response, now)

    def _retransmit_final(self, message: None, now: float) -> list[Action]:
        self._interval = min(2 * self._interval, self.timers.t2)
        self._arm(In.TIMER_G, now, self._interval)
        return self._resend_last(self.request, now)

    def _no_ack(self, message: None, now: float) -> list[Action]:
        return [Timeout()]

    def _confirmed(self, ack: Request, now: float) -> list[Action]:
        # §17.2.1: timer G stops in CONFIRMED; I absorbs ACK retransmissions.
        self._disarm(In.TIMER_G, In.TIMER_H)
        self._arm(In.TIMER_I, now, self.timers.timer_i(self.reliable))
        return []

    def _ack_for_2xx(self, ack: Request, now: float) -> list[Action]:
        return [DeliverRequest(ack)]

    def _table(self) -> Transitions:
        return INVITE_SERVER_TRANSITIONS


# RFC 3261 §17 transitions of InviteServerTransaction: (state, input) -> (handler, next state),
# outside the class body so that mypyc can compile the class (scripts/build-native).
INVITE_SERVER_TRANSITIONS: Transitions = {
    (St.PROCEEDING, In.TIMER_TRYING): (InviteServerTransaction._trying, St.PROCEEDING),
    (St.PROCEEDING, In.REQUEST): (_ServerTransaction._resend_last, St.PROCEEDING),
    (St.PROCEEDING, In.PROVISIONAL): (InviteServerTransaction._provisional, St.PROCEEDING),
    (St.PROCEEDING, In.SUCCESS): (InviteServerTransaction._accepted, St.ACCEPTED),
    (St.PROCEEDING, In.FAILURE): (InviteServerTransaction._rejected, St.COMPLETED),
    (St.PROCEEDING, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.TERMINATED),
    (St.COMPLETED, In.REQUEST): (_ServerTransaction._resend_last, St.COMPLETED),
    (St.COMPLETED, In.TIMER_G): (InviteServerTransaction._retransmit_final, St.COMPLETED),
    (St.COMPLETED, In.TIMER_H): (InviteServerTransaction._no_ack, St.TERMINATED),
    (St.COMPLETED, In.ACK): (InviteServerTransaction._confirmed, St.CONFIRMED),
    (St.COMPLETED, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.TERMINATED),
    (St.CONFIRMED, In.REQUEST): (TransactionMachine._nothing, St.CONFIRMED),
    (St.CONFIRMED, In.ACK): (TransactionMachine._nothing, St.CONFIRMED),
    (St.CONFIRMED, In.TIMER_I): (TransactionMachine._nothing, St.TERMINATED),
    (St.ACCEPTED, In.REQUEST): (TransactionMachine._nothing, St.ACCEPTED),
    (St.ACCEPTED, In.ACK): (InviteServerTransaction._ack_for_2xx, St.ACCEPTED),
    (St.ACCEPTED, In.SUCCESS): (_ServerTransaction._send, St.ACCEPTED),
    # RFC 6026 state diagram: a failed 2xx send is reported, the state is kept for timer L.
    (St.ACCEPTED, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.ACCEPTED),
    (St.ACCEPTED, In.TIMER_L): (TransactionMachine._nothing, St.TERMINATED),
}


@attrs.define(eq=False, slots=True, init=False)
class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2 (Figure 8). States: TRYING -> PROCEEDING -> COMPLETED -> TERMINATED.

    Ignored inputs: a retransmitted request in TRYING (absorbed: nothing to resend yet); responses
    from the core in COMPLETED; anything in TERMINATED. The transaction has no timer before the
    core answers: the core always does (its own client transaction times out with F)."""

    def __init__(
        self,
        request: Request,
        reliable: bool,
        timers: TimerConfig,
        now: float,
        *,
        context: object = None,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"{request.method} has no non-INVITE server transaction")
        key, legacy = _keys(request)
        super().__init__(reliable, timers, St.TRYING, context, {}, request, key, legacy, None)

    def _final(self, response: Response, now: float) -> list[Action]:
        timer_j = self.timers.timer_j(self.reliable)
        self._arm(In.TIMER_J, now, timer_j)
        return self._send_final(response, now, lingers=timer_j > 0)

    def _table(self) -> Transitions:
        return NON_INVITE_SERVER_TRANSITIONS


# RFC 3261 §17 transitions of NonInviteServerTransaction: (state, input) -> (handler, next state),
# outside the class body so that mypyc can compile the class (scripts/build-native).
NON_INVITE_SERVER_TRANSITIONS: Transitions = {
    (St.TRYING, In.REQUEST): (TransactionMachine._nothing, St.TRYING),
    (St.TRYING, In.PROVISIONAL): (_ServerTransaction._send, St.PROCEEDING),
    (St.TRYING, In.SUCCESS): (NonInviteServerTransaction._final, St.COMPLETED),
    (St.TRYING, In.FAILURE): (NonInviteServerTransaction._final, St.COMPLETED),
    (St.TRYING, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.TERMINATED),
    (St.PROCEEDING, In.REQUEST): (_ServerTransaction._resend_last, St.PROCEEDING),
    (St.PROCEEDING, In.PROVISIONAL): (_ServerTransaction._send, St.PROCEEDING),
    (St.PROCEEDING, In.SUCCESS): (NonInviteServerTransaction._final, St.COMPLETED),
    (St.PROCEEDING, In.FAILURE): (NonInviteServerTransaction._final, St.COMPLETED),
    (St.PROCEEDING, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.TERMINATED),
    (St.COMPLETED, In.REQUEST): (_ServerTransaction._resend_last, St.COMPLETED),
    (St.COMPLETED, In.TIMER_J): (TransactionMachine._nothing, St.TERMINATED),
    (St.COMPLETED, In.TRANSPORT_ERROR): (_ServerTransaction._transport_failed, St.TERMINATED),
}


ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
