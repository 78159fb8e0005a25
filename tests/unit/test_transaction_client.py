"""Client transactions driven with a fake clock (RFC 3261 §17.1.1 / §17.1.2, RFC 6026 §7.2).

Covers timer A doubling and B, D on UDP and TCP, the ACK built for 3xx-6xx and resent for each
retransmitted final, RFC 6026 ACCEPTED (every 2xx delivered, PX-09) and timer M, timer E doubling
to T2 and fixed at T2 in PROCEEDING, F and K, and transport errors (PX-13).
"""

from __future__ import annotations

import pytest

from sipserver.sip import Request, Response, parse_message
from sipserver.transaction import (
    DeliverResponse,
    InviteClientTransaction,
    NonInviteClientTransaction,
    Send,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionError,
    TransactionState,
    TransportError,
)

T = TimerConfig()
BRANCH = "z9hG4bK.cli7f3a"
T0 = 1000.0  # any clock origin works: only differences matter


def request(method: str = "INVITE", transport: str = "UDP", branch: str = BRANCH) -> Request:
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} proxy.example.net:5060;branch={branch}\r\n"
        "Via: SIP/2.0/UDP alice.example.org;branch=z9hG4bK.up1;received=192.0.2.10\r\n"
        "Route: <sip:edge.example.com;lr>\r\n"
        "Max-Forwards: 69\r\n"
        "From: Alice <sip:alice@example.org>;tag=fa1\r\n"
        "To: Bob <sip:bob@example.com>\r\n"
        "Call-ID: call-1@alice.example.org\r\n"
        f"CSeq: 17 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def response(status: int, method: str = "INVITE", to_tag: str | None = "tb9") -> Response:
    to = "Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP proxy.example.net:5060;branch={BRANCH}\r\n"
        "Via: SIP/2.0/UDP alice.example.org;branch=z9hG4bK.up1;received=192.0.2.10\r\n"
        "From: Alice <sip:alice@example.org>;tag=fa1\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1@alice.example.org\r\n"
        f"CSeq: 17 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def ict(reliable: bool = False) -> InviteClientTransaction:
    return InviteClientTransaction(request(transport="TCP" if reliable else "UDP"), reliable, T, T0)


def nict(reliable: bool = False, method: str = "OPTIONS") -> NonInviteClientTransaction:
    req = request(method, transport="TCP" if reliable else "UDP")
    return NonInviteClientTransaction(req, reliable, T, T0)


def run_until(txn: InviteClientTransaction | NonInviteClientTransaction, end: float) -> list[tuple[float, list[object]]]:
    """Advance a fake clock deadline by deadline up to ``end``; record what fired when."""
    fired: list[tuple[float, list[object]]] = []
    while (deadline := txn.next_deadline()) is not None and deadline <= end:
        fired.append((deadline - T0, list(txn.handle_timer(deadline))))
    return fired


# --------------------------------------------------------------------------- INVITE client


def test_start_sends_the_invite_once() -> None:
    txn = ict()
    assert txn.state is TransactionState.CALLING
    assert txn.start() == [Send(txn.request)]
    assert txn.start() == []


def test_invite_over_udp_timer_a_doubles_until_timer_b_times_out() -> None:
    txn = ict()
    txn.start()
    fired = run_until(txn, T0 + 100)
    retransmit = [Send(txn.request, retransmission=True)]
    # A fires at 0.5, then every 1, 2, 4, 8, 16 s (no T2 cap for INVITE); B at 64*T1 = 32 s.
    assert fired == [
        (0.5, retransmit),
        (1.5, retransmit),
        (3.5, retransmit),
        (7.5, retransmit),
        (15.5, retransmit),
        (31.5, retransmit),
        (32.0, [Timeout(), Terminated()]),
    ]
    assert txn.state is TransactionState.TERMINATED
    assert txn.next_deadline() is None


def test_invite_over_tcp_is_never_retransmitted() -> None:
    txn = ict(reliable=True)
    assert txn.start() == [Send(txn.request)]
    assert txn.next_deadline() == T0 + 32.0
    assert run_until(txn, T0 + 100) == [(32.0, [Timeout(), Terminated()])]


def test_handle_timer_before_a_deadline_does_nothing() -> None:
    txn = ict()
    txn.start()
    assert txn.handle_timer(T0 + 0.49) == []
    assert txn.state is TransactionState.CALLING


def test_late_timer_call_does_not_burst_retransmissions() -> None:
    txn = ict()
    txn.start()
    # The runtime woke up late, long after A and B: B still wins, no burst of stale A firings.
    actions = txn.handle_timer(T0 + 40.0)
    assert actions.count(Send(txn.request, retransmission=True)) == 1
    assert actions[-2:] == [Timeout(), Terminated()]


def test_provisional_stops_retransmissions_and_timer_b() -> None:
    txn = ict()
    txn.start()
    ringing = response(180)
    assert txn.on_response(ringing, T0 + 0.2) == [DeliverResponse(ringing)]
    assert txn.state is TransactionState.PROCEEDING
    # The proxy's timer C, not B, bounds PROCEEDING (RFC 3261 §16.8).
    assert txn.next_deadline() is None
    assert txn.handle_timer(T0 + 60) == []


def test_486_builds_ack_and_resends_it_for_each_retransmitted_486_udp() -> None:
    txn = ict()
    txn.start()
    ringing = response(180)
    assert txn.on_response(ringing, T0 + 0.1) == [DeliverResponse(ringing)]
    busy = response(486, to_tag="busy77")
    actions = txn.on_response(busy, T0 + 1.0)
    assert txn.state is TransactionState.COMPLETED
    assert len(actions) == 2
    send, deliver = actions
    assert deliver == DeliverResponse(busy)
    assert isinstance(send, Send) and isinstance(send.message, Request)
    ack = send.message
    assert ack is txn.ack
    # RFC 3261 §17.1.1.3: the ACK reuses the INVITE's top Via (same branch) and CSeq number,
    # takes To (with the tag) from the response, keeps Request-URI, From, Call-ID and Route.
    assert ack.method == "ACK"
    assert ack.uri_text == txn.request.uri_text
    assert len(ack.vias) == 1
    assert ack.top_via.branch == BRANCH
    assert ack.to_tag == "busy77"
    assert ack.from_tag == "fa1"
    assert ack.call_id == txn.request.call_id
    assert (ack.cseq.seq, ack.cseq.method) == (17, "ACK")
    assert ack.header_values("route") == ["<sip:edge.example.com;lr>"]
    # A retransmitted 486 is answered with the same ACK and is not passed up again.
    assert txn.on_response(busy, T0 + 1.5) == [Send(ack, retransmission=True)]
    assert txn.on_response(busy, T0 + 3.0) == [Send(ack, retransmission=True)]
    # Timer D: 32 s after the 486 on UDP.
    assert txn.next_deadline() == T0 + 1.0 + 32.0
    assert txn.handle_timer(T0 + 32.9) == []
    assert txn.handle_timer(T0 + 33.0) == [Terminated()]
    assert txn.on_response(busy, T0 + 34.0) == []


def test_486_over_tcp_terminates_at_once_timer_d_zero() -> None:
    txn = ict(reliable=True)
    txn.start()
    busy = response(486)
    actions = txn.on_response(busy, T0 + 2.0)
    assert isinstance(actions[0], Send) and isinstance(actions[0].message, Request)
    assert actions[0].message.method == "ACK"
    assert actions[1:] == [DeliverResponse(busy), Terminated()]
    assert txn.state is TransactionState.TERMINATED


def test_2xx_goes_to_accepted_every_2xx_delivered_until_timer_m() -> None:
    """RFC 6026 §7.2 / PX-09: the proxy must forward every 2xx, retransmissions included."""
    txn = ict()
    txn.start()
    ok = response(200, to_tag="uas1")
    assert txn.on_response(ok, T0 + 3.0) == [DeliverResponse(ok)]
    assert txn.state is TransactionState.ACCEPTED
    assert txn.ack is None  # the ACK for a 2xx is end to end, not ours
    assert txn.on_response(ok, T0 + 3.5) == [DeliverResponse(ok)]
    forked = response(200, to_tag="uas2")
    assert txn.on_response(forked, T0 + 4.0) == [DeliverResponse(forked)]
    # Non-2xx after the 2xx and 1xx are ignored in ACCEPTED.
    assert txn.on_response(response(486), T0 + 4.0) == []
    assert txn.on_response(response(180), T0 + 4.0) == []
    assert txn.on_transport_error(T0 + 4.0) == []
    # No retransmission of the INVITE after the 2xx, and M = 64*T1 ends it.
    assert run_until(txn, T0 + 100) == [(3.0 + 32.0, [Terminated()])]


def test_2xx_after_provisional() -> None:
    txn = ict()
    txn.start()
    txn.on_response(response(183), T0 + 0.3)
    ok = response(200)
    assert txn.on_response(ok, T0 + 9.0) == [DeliverResponse(ok)]
    assert txn.state is TransactionState.ACCEPTED
    assert txn.next_deadline() == T0 + 9.0 + 32.0


@pytest.mark.parametrize("state_setup", ["calling", "proceeding", "completed"])
def test_invite_transport_error_reports_and_terminates(state_setup: str) -> None:
    """RFC 3261 §17.1.4 / PX-13: the core learns of it (it counts as a 503 on the branch)."""
    txn = ict()
    txn.start()
    if state_setup != "calling":
        txn.on_response(response(180), T0 + 0.1)
    if state_setup == "completed":
        txn.on_response(response(603), T0 + 0.2)
    assert txn.on_transport_error(T0 + 0.3) == [TransportError(), Terminated()]
    assert txn.state is TransactionState.TERMINATED
    assert txn.on_transport_error(T0 + 0.4) == []


def test_status_outside_range_is_ignored() -> None:
    txn = ict()
    txn.start()
    odd = response(200)
    odd.status = 700
    assert txn.on_response(odd, T0) == []
    assert txn.state is TransactionState.CALLING


def test_invite_client_needs_invite_with_rfc3261_branch() -> None:
    with pytest.raises(TransactionError):
        InviteClientTransaction(request("OPTIONS"), False, T, T0)
    with pytest.raises(TransactionError):
        InviteClientTransaction(request(branch="z9hG4bK"), False, T, T0)
    with pytest.raises(TransactionError):
        InviteClientTransaction(request(branch="1234"), False, T, T0)
    broken = request()
    broken.remove_header("Via")
    with pytest.raises(TransactionError):
        InviteClientTransaction(broken, False, T, T0)


# --------------------------------------------------------------------------- non-INVITE client


def test_non_invite_timer_e_doubles_capped_at_t2_then_f_times_out() -> None:
    txn = nict()
    assert txn.state is TransactionState.TRYING
    assert txn.start() == [Send(txn.request)]
    fired = run_until(txn, T0 + 100)
    retransmit = [Send(txn.request, retransmission=True)]
    times = [t for t, actions in fired if actions == retransmit]
    # Intervals 0.5, 1, 2, 4, then 4 (T2) each time until F at 32 s.
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(b - a == 4.0 for a, b in zip(times[3:], times[4:], strict=False))
    assert times[-1] == 31.5
    assert fired[-1] == (32.0, [Timeout(), Terminated()])


def test_non_invite_in_proceeding_retransmits_every_t2() -> None:
    txn = nict()
    txn.start()
    assert txn.handle_timer(T0 + 0.5) == [Send(txn.request, retransmission=True)]
    trying = response(100, "OPTIONS", to_tag=None)
    assert txn.on_response(trying, T0 + 0.7) == [DeliverResponse(trying)]
    assert txn.state is TransactionState.PROCEEDING
    # E keeps its running deadline (1.5), then is reset to T2 each time it fires.
    fired = run_until(txn, T0 + 20)
    assert [t for t, _ in fired] == [1.5, 5.5, 9.5, 13.5, 17.5]


def test_non_invite_final_then_timer_k_udp() -> None:
    txn = nict()
    txn.start()
    ok = response(200, "OPTIONS")
    assert txn.on_response(ok, T0 + 0.25) == [DeliverResponse(ok)]
    assert txn.state is TransactionState.COMPLETED
    # Retransmitted finals are absorbed; no more request retransmissions.
    assert txn.on_response(ok, T0 + 0.5) == []
    assert txn.next_deadline() == T0 + 0.25 + T.t4
    assert run_until(txn, T0 + 100) == [(0.25 + 5.0, [Terminated()])]


def test_non_invite_final_over_tcp_timer_k_zero() -> None:
    txn = nict(reliable=True)
    txn.start()
    assert txn.next_deadline() == T0 + 32.0  # F only, no E on a reliable transport
    fail = response(404, "OPTIONS")
    assert txn.on_response(fail, T0 + 1) == [DeliverResponse(fail), Terminated()]


def test_non_invite_transport_error() -> None:
    txn = nict(method="MESSAGE")
    txn.start()
    assert txn.on_transport_error(T0) == [TransportError(), Terminated()]


def test_non_invite_client_refuses_invite_and_ack() -> None:
    for method in ("INVITE", "ACK"):
        with pytest.raises(TransactionError):
            NonInviteClientTransaction(request(method), False, T, T0)


def test_custom_timer_values_scale_everything() -> None:
    cfg = TimerConfig(t1=0.1, t2=0.4, t4=1.0, d=5.0)
    txn = InviteClientTransaction(request(), False, cfg, 0.0)
    txn.start()
    assert txn.next_deadline() == pytest.approx(0.1)
    busy = response(486)
    txn.on_response(busy, 1.0)
    assert txn.next_deadline() == pytest.approx(6.0)


@pytest.mark.parametrize(
    "kwargs", [{"t1": 0}, {"t1": -1}, {"t2": 0.1}, {"t4": -1}, {"d": -1}, {"trying": 0},
               {"t1": float("nan")}, {"t2": "4"}]
)
def test_bad_timer_config_raises_transaction_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(TransactionError):
        TimerConfig(**kwargs)  # type: ignore[arg-type]
