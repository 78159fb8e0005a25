"""Server transactions driven with a fake clock (RFC 3261 §17.2.1 / §17.2.2, RFC 6026 §7.1).

Covers the 100 Trying sent after 200 ms of silence (PX-08), retransmitted INVITEs answered with
the last provisional / final, timer G doubling to T2, H without ACK, ACK -> CONFIRMED and timer I
(PX-16: the ACK for a non-2xx is absorbed), RFC 6026 ACCEPTED with timer L, and the non-INVITE
server transaction with timer J.
"""

from __future__ import annotations

import enum
import gc

import pytest

from sipserver.sip import Request, Response, make_response, parse_message
from sipserver.transaction import (
    DeliverRequest,
    InviteServerTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionError,
    TransactionState,
    TransportError,
)

T = TimerConfig()
T0 = 50.0
NO_AUTO_TRYING = TimerConfig(trying=None)


def request(method: str = "INVITE", transport: str = "UDP", to_tag: str | None = None) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} ua.example.org:5070;branch=z9hG4bK.srv91;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=fa9\r\n"
        f"To: {to}\r\n"
        "Call-ID: srv-call@ua.example.org\r\n"
        f"CSeq: 4 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def ist(reliable: bool = False, timers: TimerConfig = NO_AUTO_TRYING) -> InviteServerTransaction:
    return InviteServerTransaction(request(transport="TCP" if reliable else "UDP"), reliable, timers, T0)


def nist(reliable: bool = False) -> NonInviteServerTransaction:
    req = request("REGISTER", transport="TCP" if reliable else "UDP")
    return NonInviteServerTransaction(req, reliable, T, T0)


def answer(txn: InviteServerTransaction | NonInviteServerTransaction, status: int) -> Response:
    return make_response(txn.request, status, to_tag="srvtag" if status > 100 else None)


def fire_all(txn: InviteServerTransaction | NonInviteServerTransaction, end: float) -> list[tuple[float, list[object]]]:
    fired: list[tuple[float, list[object]]] = []
    while (deadline := txn.next_deadline()) is not None and deadline <= end:
        fired.append((deadline - T0, list(txn.handle_timer(deadline))))
    return fired


# --------------------------------------------------------------------------- INVITE server


def test_core_silent_for_200ms_transaction_sends_100_trying() -> None:
    """RFC 3261 §17.2.1 (PX-08): a 100 Trying goes out if the core has not answered in 200 ms."""
    txn = ist(timers=T)
    assert txn.state is TransactionState.PROCEEDING
    assert txn.next_deadline() == pytest.approx(T0 + 0.2)
    assert txn.handle_timer(T0 + 0.1) == []
    actions = txn.handle_timer(T0 + 0.2)
    assert len(actions) == 1 and isinstance(actions[0], Send)
    trying = actions[0].message
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to_tag is None and trying.top_via.branch == "z9hG4bK.srv91"
    assert txn.last_response is trying
    # A retransmitted INVITE now gets the 100 again.
    assert txn.on_request(request(), T0 + 0.5) == [Send(trying, retransmission=True)]
    assert txn.next_deadline() is None


def test_core_answering_first_cancels_the_automatic_100() -> None:
    txn = ist(timers=T)
    trying = answer(txn, 100)
    assert txn.send_response(trying, T0 + 0.01) == [Send(trying)]
    assert txn.next_deadline() is None
    assert txn.handle_timer(T0 + 1.0) == []


def test_retransmitted_invite_before_any_response_is_absorbed() -> None:
    txn = ist()
    assert txn.on_request(request(), T0 + 0.1) == []


def test_retransmitted_invite_resends_last_provisional() -> None:
    txn = ist()
    trying = answer(txn, 100)
    ringing = answer(txn, 180)
    assert txn.send_response(trying, T0) == [Send(trying)]
    assert txn.send_response(ringing, T0 + 1) == [Send(ringing)]
    assert txn.state is TransactionState.PROCEEDING
    assert txn.on_request(request(), T0 + 2) == [Send(ringing, retransmission=True)]


def test_486_udp_timer_g_doubles_to_t2_then_h_times_out_without_ack() -> None:
    txn = ist()
    busy = answer(txn, 486)
    assert txn.send_response(busy, T0) == [Send(busy)]
    assert txn.state is TransactionState.COMPLETED
    fired = fire_all(txn, T0 + 100)
    resend = [Send(busy, retransmission=True)]
    times = [t for t, actions in fired if actions == resend]
    # G: 0.5, then intervals 1, 2, 4, 4, 4... (capped at T2); H at 64*T1 = 32 s.
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert times[-1] == 31.5
    assert fired[-1] == (32.0, [Timeout(), Terminated()])
    assert txn.terminated


def test_retransmitted_invite_in_completed_resends_final() -> None:
    txn = ist()
    busy = answer(txn, 486)
    txn.send_response(busy, T0)
    assert txn.on_request(request(), T0 + 0.2) == [Send(busy, retransmission=True)]


def test_ack_confirms_stops_g_and_h_then_timer_i() -> None:
    """PX-16: the ACK for a non-2xx is absorbed: nothing goes to the core."""
    txn = ist()
    busy = answer(txn, 486)
    txn.send_response(busy, T0)
    txn.handle_timer(T0 + 0.5)
    ack = request("ACK", to_tag="srvtag")
    assert txn.on_request(ack, T0 + 0.75) == []
    assert txn.state is TransactionState.CONFIRMED
    # ACK and INVITE retransmissions are absorbed in CONFIRMED; no more 486s.
    assert txn.on_request(ack, T0 + 1.0) == []
    assert txn.on_request(request(), T0 + 1.0) == []
    assert fire_all(txn, T0 + 100) == [(0.75 + T.t4, [Terminated()])]


def test_486_tcp_no_g_and_ack_terminates_at_once() -> None:
    txn = ist(reliable=True)
    busy = answer(txn, 486)
    txn.send_response(busy, T0)
    assert txn.next_deadline() == T0 + 32.0  # H only
    assert txn.on_request(request("ACK", "TCP", to_tag="srvtag"), T0 + 0.1) == [Terminated()]


def test_486_tcp_without_ack_times_out_by_h() -> None:
    txn = ist(reliable=True)
    txn.send_response(answer(txn, 486), T0)
    assert fire_all(txn, T0 + 100) == [(32.0, [Timeout(), Terminated()])]


def test_2xx_accepted_absorbs_invites_sends_2xx_and_l_terminates() -> None:
    """RFC 6026 §7.1: no ACK wait for 2xx in the transaction; timer L = 64*T1."""
    txn = ist()
    ok = answer(txn, 200)
    assert txn.send_response(ok, T0 + 2) == [Send(ok)]
    assert txn.state is TransactionState.ACCEPTED
    assert txn.on_request(request(), T0 + 2.5) == []
    # The core (a proxy forwarding a retransmitted or forked 2xx) still gets it sent.
    assert txn.send_response(ok, T0 + 3) == [Send(ok)]
    # Non-2xx or 1xx from the core after the 2xx is not sent.
    assert txn.send_response(answer(txn, 486), T0 + 3) == []
    assert txn.send_response(answer(txn, 180), T0 + 3) == []
    # An ACK matched here is an ACK for the 2xx: it goes up to be routed.
    ack = request("ACK", to_tag="srvtag")
    assert txn.on_request(ack, T0 + 4) == [DeliverRequest(ack)]
    # A failed 2xx send is reported, the state is kept.
    assert txn.on_transport_error(T0 + 5) == [TransportError()]
    assert txn.state is TransactionState.ACCEPTED
    assert fire_all(txn, T0 + 100) == [(2 + 32.0, [Terminated()])]


def test_second_final_from_core_is_ignored() -> None:
    txn = ist()
    busy = answer(txn, 486)
    txn.send_response(busy, T0)
    assert txn.send_response(answer(txn, 500), T0) == []
    assert txn.send_response(answer(txn, 200), T0) == []
    assert txn.last_response is busy


@pytest.mark.parametrize("after", [None, 180, 486])
def test_invite_server_transport_error(after: int | None) -> None:
    txn = ist()
    if after is not None:
        txn.send_response(answer(txn, after), T0)
    assert txn.on_transport_error(T0 + 1) == [TransportError(), Terminated()]
    assert txn.state is TransactionState.TERMINATED


def test_invite_server_needs_invite() -> None:
    with pytest.raises(TransactionError):
        InviteServerTransaction(request("BYE"), False, T, T0)
    broken = request()
    broken.set_header("CSeq", "not a cseq")
    with pytest.raises(TransactionError):
        InviteServerTransaction(broken, False, T, T0)


# --------------------------------------------------------------------------- non-INVITE server


def test_non_invite_retransmission_absorbed_then_resends_final_then_j() -> None:
    txn = nist()
    assert txn.next_deadline() is None  # no timer until the core answers
    assert txn.on_request(request("REGISTER"), T0 + 0.5) == []
    ok = answer(txn, 200)
    assert txn.send_response(ok, T0 + 1) == [Send(ok)]
    assert txn.state is TransactionState.COMPLETED  # from TRYING (RFC 3261 Figure 8)
    assert txn.on_request(request("REGISTER"), T0 + 1.5) == [Send(ok, retransmission=True)]
    assert txn.on_request(request("REGISTER"), T0 + 2.5) == [Send(ok, retransmission=True)]
    assert txn.send_response(answer(txn, 500), T0 + 2) == []
    # J = 64*T1 on UDP.
    assert fire_all(txn, T0 + 100) == [(1 + 32.0, [Terminated()])]


def test_non_invite_provisional_then_final() -> None:
    txn = nist()
    trying = answer(txn, 100)
    assert txn.send_response(trying, T0) == [Send(trying)]
    assert txn.state is TransactionState.PROCEEDING
    assert txn.on_request(request("REGISTER"), T0 + 0.5) == [Send(trying, retransmission=True)]
    fail = answer(txn, 401)
    assert txn.send_response(fail, T0 + 1) == [Send(fail)]
    assert txn.on_request(request("REGISTER"), T0 + 1.5) == [Send(fail, retransmission=True)]


def test_non_invite_over_tcp_j_is_zero() -> None:
    txn = nist(reliable=True)
    ok = answer(txn, 200)
    assert txn.send_response(ok, T0) == [Send(ok), Terminated()]


@pytest.mark.parametrize("reliable", [False, True])
def test_only_a_lingering_transaction_shrinks_its_request_to_bytes(reliable: bool) -> None:
    """RFC 3261 §17.2.2: over UDP the request is kept for timer J (64*T1) to match
    retransmissions, so it is reduced to its bytes; over TCP the transaction ends with its final
    response and the request is not serialised again only to be dropped."""
    txn = nist(reliable=reliable)
    ok = answer(txn, 200)
    txn.send_response(ok, T0)
    assert ok._frozen is not None  # the response is sent as its serialised bytes either way
    assert (txn.request._frozen is not None) is (not reliable)


@pytest.mark.parametrize("after", [None, 100, 200])
def test_non_invite_server_transport_error(after: int | None) -> None:
    txn = nist()
    if after is not None:
        txn.send_response(answer(txn, after), T0)
    assert txn.on_transport_error(T0 + 1) == [TransportError(), Terminated()]


def test_non_invite_server_refuses_invite_and_ack() -> None:
    for method in ("INVITE", "ACK"):
        with pytest.raises(TransactionError):
            NonInviteServerTransaction(request(method), False, T, T0)


@pytest.mark.parametrize("status", [200, 404])
def test_retransmission_after_final_gets_the_same_bytes_from_compacted_messages(status: int) -> None:
    """RFC 3261 §17.2.2: a retransmitted request in COMPLETED is answered with the final response.
    After the final response the transaction keeps its request and response compacted (parsed
    views dropped for the 32 s of timer J); what goes on the wire must not change, and the
    request still reads as before."""
    txn = nist()
    resp = answer(txn, status)
    first = txn.send_response(resp, T0)
    assert len(first) == 1 and isinstance(first[0], Send)
    sent = first[0].message.to_bytes()
    assert txn.request._vias is None and resp._headers is None  # compacted
    again = txn.on_request(request("REGISTER"), T0 + 1.0)
    assert len(again) == 1 and isinstance(again[0], Send) and again[0].retransmission
    assert again[0].message.to_bytes() == sent
    assert parse_message(sent).to_tag == "srvtag"
    assert txn.request.top_via.branch == "z9hG4bK.srv91" and txn.request.cseq.seq == 4
    assert resp.status == status and resp.header("call-id") == "srv-call@ua.example.org"


def test_invite_final_response_compacts_and_retransmits_unchanged() -> None:
    """RFC 3261 §17.2.1: timer G retransmits the 3xx-6xx final response byte for byte."""
    txn = ist()
    resp = answer(txn, 486)
    sent = txn.send_response(resp, T0)[0].message.to_bytes()  # type: ignore[attr-defined]
    actions = txn.handle_timer(T0 + T.timer_g + 0.001)
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].message.to_bytes() == sent
    assert txn.request.method == "INVITE" and txn.request.from_tag == "fa9"


def _tracked_reachable(root: object) -> list[object]:
    """Every object the garbage collector still tracks that ``root`` reaches (root included),
    stopping at what all transactions share (timer configuration, state enum members)."""
    seen: set[int] = set()
    out: list[object] = []
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (TimerConfig, type, enum.Enum)) or not gc.is_tracked(obj):
            continue
        seen.add(id(obj))
        out.append(obj)
        todo.extend(gc.get_referents(obj))
    return out


def test_completed_udp_transaction_keeps_few_objects_for_the_collector() -> None:
    """A completed UDP non-INVITE transaction lives 32 s (timer J, RFC 3261 §17.2.2); at 3,000
    REGISTERs a second that is ~100,000 of them, and every young-generation collection walks
    what they keep. After one collection only the transaction, its request and its response
    may still be tracked: keys, timer table and compacted header lines are tuples and dicts of
    strings and numbers, which the collector stops tracking (docs/performance.md)."""
    txn = nist()
    txn.send_response(answer(txn, 200), T0)
    assert txn.next_deadline() == pytest.approx(T0 + 64 * T.t1)  # timer J armed
    gc.collect()
    kinds = sorted(type(o).__name__ for o in _tracked_reachable(txn))
    assert kinds == ["NonInviteServerTransaction", "Request", "Response"]
    # and it still answers a retransmission
    again = txn.on_request(request("REGISTER"), T0 + 1.0)
    assert len(again) == 1 and isinstance(again[0], Send) and again[0].retransmission
