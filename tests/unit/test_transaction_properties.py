"""Properties of the four transaction machines under arbitrary input (RFC 3261 §17, RFC 6026).

Hypothesis drives each machine, through a ``TransactionTable``, with random sequences of peer
messages, core responses, transport errors and clock jumps, and checks after every step that
nothing raises, ``Terminated`` comes once and last, a terminated transaction is silent and gone
from the table, the table's next deadline is the transaction's, and unreliable-only behaviour
(retransmissions) never happens on reliable transports. Once the final answer is given (the
peer's for a client, the core's for a server) and enough time passes, every machine ends
TERMINATED. A deterministic walk then feeds every input in every reachable state (h2 style).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip import Request, Response, make_response, parse_message
from sipserver.transaction import (
    Action,
    DeliverRequest,
    DeliverResponse,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    Timeout,
    TimerConfig,
    Transaction,
    TransactionState,
    TransactionTable,
    TransportError,
)
from sipserver.transaction.client import INVITE_CLIENT_TRANSITIONS, NON_INVITE_CLIENT_TRANSITIONS
from sipserver.transaction.server import INVITE_SERVER_TRANSITIONS, NON_INVITE_SERVER_TRANSITIONS

T = TimerConfig()
KINDS = ["ict", "nict", "ist", "nist"]
STATUSES = [100, 180, 183, 200, 202, 302, 401, 404, 486, 487, 500, 503, 603, 700]
# Longer than any timer chain: B/F/H/L/M (64*T1), D (32 s) plus I/K (T4) and the 100 delay.
ENOUGH = 1000.0


def request(method: str, transport: str) -> Request:
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} h.example.net;branch=z9hG4bK.prop1\r\n"
        "From: <sip:alice@example.org>;tag=pf\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: prop@h\r\n"
        f"CSeq: 9 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def peer_response(txn: Transaction, status: int) -> Response:
    resp = make_response(txn.request, status, to_tag="pt")
    # make_response picks the reason; a status outside 100-699 is forced afterwards.
    resp.status = status
    return resp


def build(kind: str, reliable: bool, now: float) -> Transaction:
    transport = "TCP" if reliable else "UDP"
    if kind == "ict":
        return InviteClientTransaction(request("INVITE", transport), reliable, T, now)
    if kind == "nict":
        return NonInviteClientTransaction(request("OPTIONS", transport), reliable, T, now)
    if kind == "ist":
        return InviteServerTransaction(request("INVITE", transport), reliable, T, now)
    return NonInviteServerTransaction(request("REGISTER", transport), reliable, T, now)


class Driver:
    """Feeds one transaction through a table and checks the invariants after each step."""

    def __init__(self, kind: str, reliable: bool) -> None:
        self.kind = kind
        self.reliable = reliable
        self.now = 0.0
        self.table = TransactionTable()
        self.txn = build(kind, reliable, self.now)
        self.terminated_seen = False
        if isinstance(self.txn, (InviteClientTransaction, NonInviteClientTransaction)):
            self.check(self.table.start(self.txn))
        else:
            self.table.add(self.txn)

    @property
    def is_client(self) -> bool:
        return isinstance(self.txn, (InviteClientTransaction, NonInviteClientTransaction))

    def check(self, actions: list[Action]) -> None:
        txn = self.txn
        if self.terminated_seen:
            assert actions == []
        if Terminated() in actions:
            assert actions.count(Terminated()) == 1 and actions[-1] == Terminated()
            self.terminated_seen = True
        assert (txn.state is TransactionState.TERMINATED) == self.terminated_seen
        assert (txn in self.table) == (not self.terminated_seen)
        if self.terminated_seen:
            assert txn.next_deadline() is None
        assert self.table.next_deadline() == txn.next_deadline()
        for action in actions:
            if isinstance(action, DeliverResponse):
                assert self.is_client
            if isinstance(action, DeliverRequest):
                assert self.kind == "ist" and action.request.method == "ACK"
            if isinstance(action, Send) and action.message is txn.request:
                # Request retransmissions are timer A/E: unreliable transports only.
                assert self.is_client
                assert not (action.retransmission and self.reliable)
            if isinstance(action, Timeout):
                assert self.kind != "nist"

    def advance(self, dt: float) -> None:
        self.now += dt
        results = self.table.handle_timers(self.now)
        assert len(results) <= 1
        actions = results[0][1] if results else []
        self.check(actions)
        # Everything due has fired.
        deadline = self.txn.next_deadline()
        assert deadline is None or deadline > self.now

    def message(self, status: int) -> None:
        txn = self.txn
        if isinstance(txn, (InviteClientTransaction, NonInviteClientTransaction)):
            found = self.table.receive_response(peer_response(txn, status), self.now)
            actions = found[1] if found is not None else []
            if found is not None:
                assert found[0] is txn
            else:
                assert self.terminated_seen
        else:
            actions = self.table.send_response(txn, peer_response(txn, status), self.now)
        self.check(actions)

    def retransmission(self, ack: bool) -> None:
        txn = self.txn
        if self.is_client:
            return
        req = request("ACK" if ack else txn.request.method, "TCP" if self.reliable else "UDP")
        if ack:
            req.set_header("CSeq", "9 ACK")
        found = self.table.receive_request(req, self.now)
        if found is None:
            # Only an ACK for a non-INVITE, or anything after termination, finds nothing.
            assert self.terminated_seen or (ack and self.kind == "nist")
            return
        self.check(found[1])

    def transport_error(self) -> None:
        self.check(self.table.transport_error(self.txn, self.now))

    def finish(self) -> None:
        """The final answer comes (peer's or core's), then time runs out."""
        txn = self.txn
        if txn.state in (TransactionState.CALLING, TransactionState.TRYING, TransactionState.PROCEEDING):
            self.message(500)
        self.advance(ENOUGH)
        self.advance(ENOUGH)
        assert txn.state is TransactionState.TERMINATED
        assert len(self.table) == 0 and self.table.next_deadline() is None


step = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=40.0, allow_nan=False)),
    st.tuples(st.just("message"), st.sampled_from(STATUSES)),
    st.tuples(st.just("retransmission"), st.booleans()),
    st.tuples(st.just("transport_error"), st.none()),
    st.tuples(st.just("deadline"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    reliable=st.booleans(),
    steps=st.lists(step, max_size=40),
)
def test_random_inputs_never_raise_and_end_terminated(
    kind: str, reliable: bool, steps: list[tuple[str, object]]
) -> None:
    driver = Driver(kind, reliable)
    for name, arg in steps:
        if name == "advance":
            assert isinstance(arg, float)
            driver.advance(arg)
        elif name == "deadline":
            deadline = driver.txn.next_deadline()
            if deadline is not None:
                driver.advance(deadline - driver.now)
        elif name == "message":
            assert isinstance(arg, int)
            driver.message(arg)
        elif name == "retransmission":
            assert isinstance(arg, bool)
            driver.retransmission(arg)
        else:
            driver.transport_error()
    driver.finish()


# --------------------------------------------------------------------------- every state x input

# How to reach each state of each machine from its start (messages are statuses / "ack").
RECIPES: dict[str, dict[TransactionState, list[object]]] = {
    "ict": {
        TransactionState.CALLING: [],
        TransactionState.PROCEEDING: [180],
        TransactionState.COMPLETED: [180, 486],
        TransactionState.ACCEPTED: [200],
    },
    "nict": {
        TransactionState.TRYING: [],
        TransactionState.PROCEEDING: [100],
        TransactionState.COMPLETED: [404],
    },
    "ist": {
        TransactionState.PROCEEDING: [],
        TransactionState.COMPLETED: [486],
        TransactionState.CONFIRMED: [486, "ack"],
        TransactionState.ACCEPTED: [200],
    },
    "nist": {
        TransactionState.TRYING: [],
        TransactionState.PROCEEDING: [100],
        TransactionState.COMPLETED: [200],
    },
}

# Timers D, K, J and I are zero on reliable transports: these states end as they begin.
ZERO_LENGTH_WHEN_RELIABLE = {
    ("ict", TransactionState.COMPLETED),
    ("nict", TransactionState.COMPLETED),
    ("nist", TransactionState.COMPLETED),
    ("ist", TransactionState.CONFIRMED),
}

ALL_INPUTS: list[tuple[str, Callable[[Driver], None]]] = [
    ("1xx", lambda d: d.message(180)),
    ("2xx", lambda d: d.message(200)),
    ("3xx-6xx", lambda d: d.message(486)),
    ("bad status", lambda d: d.message(700)),
    ("request", lambda d: d.retransmission(False)),
    ("ack", lambda d: d.retransmission(True)),
    ("transport error", lambda d: d.transport_error()),
    ("next timer", lambda d: d.advance((d.txn.next_deadline() or d.now + 1.0) - d.now)),
]


@pytest.mark.parametrize("reliable", [False, True])
@pytest.mark.parametrize(
    ("kind", "state"), [(k, s) for k, states in RECIPES.items() for s in states]
)
def test_every_input_in_every_state(kind: str, state: TransactionState, reliable: bool) -> None:
    for _, feed in ALL_INPUTS:
        driver = Driver(kind, reliable)
        for item in RECIPES[kind][state]:
            if item == "ack":
                driver.retransmission(True)
            else:
                assert isinstance(item, int)
                driver.message(item)
        if reliable and (kind, state) in ZERO_LENGTH_WHEN_RELIABLE:
            assert driver.txn.state is TransactionState.TERMINATED
        else:
            assert driver.txn.state is state
        feed(driver)
        driver.finish()


def test_transition_tables_only_name_known_states_and_inputs() -> None:
    for table in (
        INVITE_CLIENT_TRANSITIONS,
        NON_INVITE_CLIENT_TRANSITIONS,
        INVITE_SERVER_TRANSITIONS,
        NON_INVITE_SERVER_TRANSITIONS,
    ):
        assert table
        for (state, event), (handler, next_state) in table.items():
            assert isinstance(state, TransactionState) and isinstance(event, Input)
            assert isinstance(next_state, TransactionState) and callable(handler)
            # Nothing leaves TERMINATED.
            assert state is not TransactionState.TERMINATED


def test_transport_error_action_is_reported_for_clients() -> None:
    driver = Driver("ict", reliable=False)
    assert driver.table.transport_error(driver.txn, 0.0) == [TransportError(), Terminated()]
