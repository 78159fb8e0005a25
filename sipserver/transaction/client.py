"""Client transactions: INVITE (RFC 3261 §17.1.1, as changed by RFC 6026 §7.2) and non-INVITE
(RFC 3261 §17.1.2).

The caller builds the transaction with the request ready to go (our top Via with a fresh
``z9hG4bK`` branch), performs the actions of ``start()`` (sending the request), then feeds every
response matched to it (``on_response``), transport failures (``on_transport_error``) and timers
(``handle_timer``), carrying out the returned actions in order.

Invariants:
- the request is sent once by ``start()`` and again only by timer A/E on unreliable transports;
- every response that the RFC passes to the TU comes back as ``DeliverResponse`` exactly when the
  RFC says; absorbed retransmissions produce no ``DeliverResponse``;
- for a 3xx-6xx the INVITE transaction builds its ACK once (``make_ack_for_non2xx``) and sends the
  same ACK again for each retransmitted final;
- RFC 6026 ACCEPTED: every 2xx is delivered, including retransmissions, because a proxy must
  forward them all upstream (RFC 6026 §7.2); timer M ends the state.
"""

from __future__ import annotations

import attrs

from ..sip import ParseError, Request, Response, make_ack_for_non2xx
from ..sip.build import MAGIC_COOKIE
from .errors import TransactionError
from .events import Action, DeliverResponse, Send, Timeout, TransportError
from .machine import Input, TransactionMachine, TransactionState, Transitions
from .timers import TimerConfig

St = TransactionState
In = Input


@attrs.frozen(slots=True)
class ClientKey:
    """RFC 3261 §17.1.3: a response matches the client transaction whose request carried the same
    top Via branch and whose CSeq method is the response's CSeq method."""

    branch: str
    method: str


def _client_key(request: Request) -> ClientKey:
    try:
        branch = request.top_via.branch
        method = request.cseq.method
    except ParseError as err:
        raise TransactionError(f"request unusable for a client transaction: {err.reason}") from err
    if branch is None or not branch.startswith(MAGIC_COOKIE) or len(branch) <= len(MAGIC_COOKIE):
        # §8.1.1.7: requests we originate always carry an RFC 3261 branch; §17.1.3 matching
        # relies on it.
        raise TransactionError("client transactions need a top Via branch starting with z9hG4bK")
    if method != request.method:
        raise TransactionError("CSeq method differs from the request method")
    return ClientKey(branch, method)


def response_key(response: Response) -> ClientKey | None:
    """The key a response is matched with; None when its top Via or CSeq is unusable."""
    try:
        branch = response.top_via.branch
        method = response.cseq.method
    except ParseError:
        return None
    if branch is None:
        return None
    return ClientKey(branch, method)


@attrs.define(eq=False, slots=True)
class _ClientTransaction(TransactionMachine):
    request: Request
    key: ClientKey
    _started: bool
    _interval: float  # current retransmission interval of timer A or E

    @property
    def branch(self) -> str:
        return self.key.branch

    def start(self) -> list[Action]:
        """The actions to perform right after creation: send the request (once only)."""
        if self._started or self.terminated:
            return []
        self._started = True
        return [Send(self.request)]

    def on_response(self, response: Response, now: float) -> list[Action]:
        """A response matched to this transaction arrived."""
        return self._response_input(response, now)

    def on_transport_error(self, now: float) -> list[Action]:
        """Sending the request (or the ACK) failed, or its connection closed (§17.1.4)."""
        return self._input(In.TRANSPORT_ERROR, None, now)

    # ------------------------------------------------------------------ shared handlers
    def _deliver(self, response: Response, now: float) -> list[Action]:
        return [DeliverResponse(response)]

    def _timeout(self, message: None, now: float) -> list[Action]:
        return [Timeout()]

    def _transport_failed(self, message: None, now: float) -> list[Action]:
        return [TransportError()]


@attrs.define(eq=False, slots=True, init=False)
class InviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.1 (Figure 5) with the ACCEPTED state of RFC 6026 §7.2.

    States: CALLING -> PROCEEDING -> ACCEPTED | COMPLETED -> TERMINATED. Ignored inputs: a 1xx in
    COMPLETED or ACCEPTED; a 2xx in COMPLETED; a 3xx-6xx in ACCEPTED; a transport error in
    ACCEPTED (nothing is sent there); anything in TERMINATED."""

    ack: Request | None

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
            raise TransactionError("an INVITE client transaction needs an INVITE")
        super().__init__(
            reliable, timers, St.CALLING, context, {}, request, _client_key(request), False,
            timers.timer_a,
        )
        self.ack = None
        if not reliable:
            self._arm(In.TIMER_A, now, timers.timer_a)
        self._arm(In.TIMER_B, now, timers.timer_b)

    def _retransmit(self, message: None, now: float) -> list[Action]:
        # §17.1.1.2: timer A doubles each time, without the T2 cap of non-INVITE.
        self._interval *= 2
        self._arm(In.TIMER_A, now, self._interval)
        return [Send(self.request, retransmission=True)]

    def _provisional(self, response: Response, now: float) -> list[Action]:
        # In PROCEEDING the request is no longer retransmitted; the proxy's timer C takes over
        # from timer B (§16.8).
        self._disarm(In.TIMER_A, In.TIMER_B)
        return [DeliverResponse(response)]

    def _accepted(self, response: Response, now: float) -> list[Action]:
        self._disarm(In.TIMER_A, In.TIMER_B)
        self._arm(In.TIMER_M, now, self.timers.timer_m)
        return [DeliverResponse(response)]

    def _rejected(self, response: Response, now: float) -> list[Action]:
        # §17.1.1.3: the ACK is built here, hop by hop, with the response's To (its tag).
        self._disarm(In.TIMER_A, In.TIMER_B)
        ack = make_ack_for_non2xx(self.request, response)
        self.ack = ack
        self._arm(In.TIMER_D, now, self.timers.timer_d(self.reliable))
        return [Send(ack), DeliverResponse(response)]

    def _resend_ack(self, response: Response, now: float) -> list[Action]:
        return [Send(self.ack, retransmission=True)] if self.ack is not None else []

    def _table(self) -> Transitions:
        return INVITE_CLIENT_TRANSITIONS


# RFC 3261 §17 transitions of InviteClientTransaction: (state, input) -> (handler, next state),
# outside the class body so that mypyc can compile the class (scripts/build-native).
INVITE_CLIENT_TRANSITIONS: Transitions = {
    (St.CALLING, In.TIMER_A): (InviteClientTransaction._retransmit, St.CALLING),
    (St.CALLING, In.TIMER_B): (_ClientTransaction._timeout, St.TERMINATED),
    (St.CALLING, In.PROVISIONAL): (InviteClientTransaction._provisional, St.PROCEEDING),
    (St.CALLING, In.SUCCESS): (InviteClientTransaction._accepted, St.ACCEPTED),
    (St.CALLING, In.FAILURE): (InviteClientTransaction._rejected, St.COMPLETED),
    (St.CALLING, In.TRANSPORT_ERROR): (_ClientTransaction._transport_failed, St.TERMINATED),
    (St.PROCEEDING, In.PROVISIONAL): (_ClientTransaction._deliver, St.PROCEEDING),
    (St.PROCEEDING, In.SUCCESS): (InviteClientTransaction._accepted, St.ACCEPTED),
    (St.PROCEEDING, In.FAILURE): (InviteClientTransaction._rejected, St.COMPLETED),
    (St.PROCEEDING, In.TRANSPORT_ERROR): (_ClientTransaction._transport_failed, St.TERMINATED),
    (St.COMPLETED, In.FAILURE): (InviteClientTransaction._resend_ack, St.COMPLETED),
    (St.COMPLETED, In.TIMER_D): (TransactionMachine._nothing, St.TERMINATED),
    (St.COMPLETED, In.TRANSPORT_ERROR): (_ClientTransaction._transport_failed, St.TERMINATED),
    # RFC 6026 §7.2: each retransmitted 2xx goes up too (a proxy forwards every one).
    (St.ACCEPTED, In.SUCCESS): (_ClientTransaction._deliver, St.ACCEPTED),
    (St.ACCEPTED, In.TIMER_M): (TransactionMachine._nothing, St.TERMINATED),
}


@attrs.define(eq=False, slots=True, init=False)
class NonInviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.2 (Figure 6). States: TRYING -> PROCEEDING -> COMPLETED -> TERMINATED.

    Ignored inputs: any response in COMPLETED (retransmissions are absorbed); a transport error in
    COMPLETED (nothing is sent there); anything in TERMINATED. ACK never has a transaction."""

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
            raise TransactionError(f"{request.method} has no non-INVITE client transaction")
        super().__init__(
            reliable, timers, St.TRYING, context, {}, request, _client_key(request), False,
            timers.timer_e,
        )
        if not reliable:
            self._arm(In.TIMER_E, now, timers.timer_e)
        self._arm(In.TIMER_F, now, timers.timer_f)

    def _retransmit_trying(self, message: None, now: float) -> list[Action]:
        self._interval = min(2 * self._interval, self.timers.t2)
        self._arm(In.TIMER_E, now, self._interval)
        return [Send(self.request, retransmission=True)]

    def _retransmit_proceeding(self, message: None, now: float) -> list[Action]:
        # §17.1.2.2: in PROCEEDING timer E is reset to T2 each time.
        self._interval = self.timers.t2
        self._arm(In.TIMER_E, now, self._interval)
        return [Send(self.request, retransmission=True)]

    def _completed(self, response: Response, now: float) -> list[Action]:
        self._disarm(In.TIMER_E, In.TIMER_F)
        self._arm(In.TIMER_K, now, self.timers.timer_k(self.reliable))
        return [DeliverResponse(response)]

    def _table(self) -> Transitions:
        return NON_INVITE_CLIENT_TRANSITIONS


# RFC 3261 §17 transitions of NonInviteClientTransaction: (state, input) -> (handler, next state),
# outside the class body so that mypyc can compile the class (scripts/build-native).
NON_INVITE_CLIENT_TRANSITIONS: Transitions = {
    (St.TRYING, In.TIMER_E): (NonInviteClientTransaction._retransmit_trying, St.TRYING),
    (St.TRYING, In.TIMER_F): (_ClientTransaction._timeout, St.TERMINATED),
    (St.TRYING, In.PROVISIONAL): (_ClientTransaction._deliver, St.PROCEEDING),
    (St.TRYING, In.SUCCESS): (NonInviteClientTransaction._completed, St.COMPLETED),
    (St.TRYING, In.FAILURE): (NonInviteClientTransaction._completed, St.COMPLETED),
    (St.TRYING, In.TRANSPORT_ERROR): (_ClientTransaction._transport_failed, St.TERMINATED),
    (St.PROCEEDING, In.TIMER_E): (NonInviteClientTransaction._retransmit_proceeding, St.PROCEEDING),
    (St.PROCEEDING, In.TIMER_F): (_ClientTransaction._timeout, St.TERMINATED),
    (St.PROCEEDING, In.PROVISIONAL): (_ClientTransaction._deliver, St.PROCEEDING),
    (St.PROCEEDING, In.SUCCESS): (NonInviteClientTransaction._completed, St.COMPLETED),
    (St.PROCEEDING, In.FAILURE): (NonInviteClientTransaction._completed, St.COMPLETED),
    (St.PROCEEDING, In.TRANSPORT_ERROR): (_ClientTransaction._transport_failed, St.TERMINATED),
    (St.COMPLETED, In.TIMER_K): (TransactionMachine._nothing, St.TERMINATED),
}


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
