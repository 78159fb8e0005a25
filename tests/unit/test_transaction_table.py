"""TransactionTable: RFC 3261 §17.1.3 / §17.2.3 matching, §9.2 CANCEL matching, the RFC 2543
fallback on RFC 4475 vectors (inv2543, badbranch), and the deadline heap.

Requirement IDs: PX-14 (a CANCEL matching no transaction finds nothing, so the proxy forwards it
statelessly), PX-16 (the ACK for a non-2xx reaches the INVITE server transaction).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sipserver.sip import Request, Response, make_cancel, make_response, parse_message
from sipserver.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionError,
    TransactionState,
    TransactionTable,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc4475"
T = TimerConfig(trying=None)


def vector(name: str) -> Request:
    msg = parse_message((VECTORS / f"{name}.dat").read_bytes())
    assert isinstance(msg, Request)
    return msg


def req(
    method: str,
    *,
    branch: str = "z9hG4bK.m1",
    sent_by: str = "ua.example.org:5060",
    cseq: str | None = None,
    to_tag: str | None = None,
    uri: str = "sip:bob@example.com",
    call_id: str = "match-1@ua",
) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=ft1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def resp(status: int, *, branch: str = "z9hG4bK.m1", method: str = "INVITE") -> Response:
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP proxy.example.net;branch={branch}\r\n"
        "From: <sip:alice@example.org>;tag=ft1\r\n"
        "To: <sip:bob@example.com>;tag=tt\r\n"
        "Call-ID: match-1@ua\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


# --------------------------------------------------------------------------- client matching


def test_response_matches_client_by_branch_and_cseq_method() -> None:
    table = TransactionTable()
    invite = InviteClientTransaction(req("INVITE"), False, T, 0.0)
    cancel = NonInviteClientTransaction(make_cancel(invite.request), False, T, 0.0)
    table.add(invite)
    table.add(cancel)
    assert len(table) == 2
    # Same branch, told apart by the CSeq method (§17.1.3).
    assert table.find_client(resp(180)) is invite
    assert table.find_client(resp(200, method="CANCEL")) is cancel
    assert table.find_client(resp(200, branch="z9hG4bK.other")) is None
    assert table.find_client(resp(200, method="BYE")) is None


def test_receive_response_drives_and_drops_terminated_client() -> None:
    table = TransactionTable()
    txn = NonInviteClientTransaction(req("OPTIONS", branch="z9hG4bK.o1"), True, T, 0.0)
    assert table.start(txn) == [Send(txn.request)]
    found = table.receive_response(resp(200, branch="z9hG4bK.o1", method="OPTIONS"), 1.0)
    assert found is not None
    assert found[0] is txn and found[1][-1] == Terminated()
    assert len(table) == 0 and txn not in table
    assert table.receive_response(resp(200, branch="z9hG4bK.o1", method="OPTIONS"), 1.1) is None


def test_response_without_via_matches_nothing() -> None:
    table = TransactionTable()
    table.add(InviteClientTransaction(req("INVITE"), False, T, 0.0))
    odd = resp(200)
    odd.remove_header("Via")
    assert table.find_client(odd) is None


# --------------------------------------------------------------------------- server matching


def test_retransmission_matches_by_branch_sent_by_and_method() -> None:
    table = TransactionTable()
    txn = InviteServerTransaction(req("INVITE"), False, T, 0.0)
    table.add(txn)
    assert table.find_server(req("INVITE")) is txn
    # sent-by host is case-insensitive
    assert table.find_server(req("INVITE", sent_by="UA.Example.ORG:5060")) is txn
    # other branch, other sent-by, other method: a different transaction
    assert table.find_server(req("INVITE", branch="z9hG4bK.m2")) is None
    assert table.find_server(req("INVITE", sent_by="ua.example.org:5070")) is None
    assert table.find_server(req("BYE")) is None


def test_ack_for_non_2xx_finds_the_invite_server_transaction() -> None:
    """PX-16: the ACK reaches the INVITE server transaction, which absorbs it."""
    table = TransactionTable()
    txn = InviteServerTransaction(req("INVITE"), False, T, 0.0)
    table.add(txn)
    table.send_response(txn, make_response(txn.request, 486, to_tag="tt"), 0.0)
    ack = req("ACK", cseq="1 ACK", to_tag="tt")
    assert table.find_server(ack) is txn
    found = table.receive_request(ack, 0.1)
    assert found == (txn, [])
    assert txn.state is TransactionState.CONFIRMED


def test_ack_with_another_branch_matches_nothing() -> None:
    # The ACK for a 2xx is a new transaction with its own branch: routed by the core.
    table = TransactionTable()
    table.add(InviteServerTransaction(req("INVITE"), False, T, 0.0))
    assert table.find_server(req("ACK", branch="z9hG4bK.ack2xx", cseq="1 ACK")) is None


def test_cancel_finds_its_invite_but_not_as_a_retransmission() -> None:
    table = TransactionTable()
    invite = InviteServerTransaction(req("INVITE"), False, T, 0.0)
    table.add(invite)
    cancel = make_cancel(invite.request)
    assert table.find_invite_for_cancel(cancel) is invite
    # find_server on the CANCEL looks for the CANCEL's own transaction, not the INVITE's.
    assert table.find_server(cancel) is None
    cancel_txn = NonInviteServerTransaction(cancel, False, T, 0.0)
    table.add(cancel_txn)
    assert table.find_server(make_cancel(invite.request)) is cancel_txn
    assert table.find_invite_for_cancel(make_cancel(invite.request)) is invite


def test_cancel_for_unknown_transaction_finds_nothing() -> None:
    """PX-14: nothing matches, so the proxy forwards the CANCEL statelessly."""
    table = TransactionTable()
    table.add(InviteServerTransaction(req("INVITE"), False, T, 0.0))
    stray = make_cancel(req("INVITE", branch="z9hG4bK.gone"))
    assert table.find_invite_for_cancel(stray) is None
    other_host = make_cancel(req("INVITE", sent_by="elsewhere.example.org"))
    assert table.find_invite_for_cancel(other_host) is None
    assert table.find_invite_for_cancel(req("BYE")) is None


def test_cancel_does_not_pick_a_non_invite_transaction() -> None:
    table = TransactionTable()
    table.add(NonInviteServerTransaction(req("MESSAGE"), False, T, 0.0))
    assert table.find_invite_for_cancel(make_cancel(req("MESSAGE"))) is None


def test_duplicate_add_is_refused() -> None:
    table = TransactionTable()
    txn = InviteServerTransaction(req("INVITE"), False, T, 0.0)
    table.add(txn)
    with pytest.raises(TransactionError):
        table.add(txn)
    with pytest.raises(TransactionError):
        table.add(InviteServerTransaction(req("INVITE"), False, T, 0.0))


def test_request_with_unreadable_headers_matches_nothing() -> None:
    table = TransactionTable()
    table.add(InviteServerTransaction(req("INVITE"), False, T, 0.0))
    broken = req("INVITE")
    broken.set_header("Via", "this is not a via")
    assert table.find_server(broken) is None
    assert table.find_invite_for_cancel(make_cancel(req("INVITE"))) is not None
    no_cseq = req("INVITE", branch="1234")
    no_cseq.remove_header("CSeq")
    assert table.find_server(no_cseq) is None


# --------------------------------------------------------------------------- RFC 2543 fallback


def test_rfc2543_invite_without_branch_matches_its_retransmission() -> None:
    """RFC 4475 §3.4.1 inv2543: no branch at all -> §17.2.3 RFC 2543 matching."""
    table = TransactionTable()
    invite = vector("inv2543")
    txn = InviteServerTransaction(invite, False, T, 0.0)
    assert txn.key is None
    table.add(txn)
    assert table.find_server(vector("inv2543")) is txn
    # A different CSeq or Call-ID is a different request.
    other = vector("inv2543")
    other.set_header("CSeq", "57 INVITE")
    assert table.find_server(other) is None
    other = vector("inv2543")
    other.set_header("Call-ID", "another@ift.client.example.com")
    assert table.find_server(other) is None
    # A different top Via (another sender) is a different request too.
    other = vector("inv2543")
    other.set_header("Via", "SIP/2.0/UDP other-gw.example.com")
    assert table.find_server(other) is None
    # received= added by us on receipt does not make it a different request.
    other = vector("inv2543")
    other.set_header("Via", "SIP/2.0/UDP iftgw.example.com;received=192.0.2.99")
    assert table.find_server(other) is txn


def _rfc2543_ack(invite: Request, to_tag: str) -> Request:
    text = invite.to_bytes().decode()
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    lines[0] = lines[0].replace("INVITE", "ACK", 1)
    out = []
    for line in lines:
        if line.startswith("CSeq:"):
            line = "CSeq: 56 ACK"
        elif line.startswith("To:"):
            line = f"{line};tag={to_tag}"
        elif line.startswith("Content-Type:") or line.startswith("Content-Length:"):
            continue
        out.append(line)
    msg = parse_message(("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_rfc2543_ack_matches_by_to_tag_of_the_sent_response() -> None:
    table = TransactionTable()
    txn = InviteServerTransaction(vector("inv2543"), False, T, 0.0)
    table.add(txn)
    ack = _rfc2543_ack(txn.request, "resp-tag")
    assert table.find_server(ack) is None  # nothing sent yet: no ACK can be ours
    table.send_response(txn, make_response(txn.request, 404, to_tag="resp-tag"), 0.0)
    assert table.find_server(ack) is txn
    assert table.find_server(_rfc2543_ack(txn.request, "some-other-tag")) is None
    assert table.receive_request(ack, 0.5) == (txn, [])
    assert txn.state is TransactionState.CONFIRMED


def test_rfc2543_cancel_finds_the_invite() -> None:
    table = TransactionTable()
    txn = InviteServerTransaction(vector("inv2543"), False, T, 0.0)
    table.add(txn)
    cancel = make_cancel(vector("inv2543"))
    assert table.find_invite_for_cancel(cancel) is txn
    assert table.find_server(cancel) is None
    other = make_cancel(vector("inv2543"))
    other.set_header("CSeq", "99 CANCEL")
    assert table.find_invite_for_cancel(other) is None


def test_badbranch_bare_magic_cookie_uses_rfc2543_matching() -> None:
    """RFC 4475 §3.2.1 badbranch: branch is exactly "z9hG4bK" -> fall back, never crash."""
    table = TransactionTable()
    options = vector("badbranch")
    txn = NonInviteServerTransaction(options, False, T, 0.0)
    assert txn.key is None
    table.add(txn)
    assert table.find_server(vector("badbranch")) is txn
    # Another request carrying the same bare cookie but a different Call-ID is not confused.
    other = vector("badbranch")
    other.set_header("Call-ID", "different-call")
    assert table.find_server(other) is None
    ok = make_response(options, 200, to_tag="x1")
    table.send_response(txn, ok, 0.0)
    assert table.receive_request(vector("badbranch"), 1.0) == (txn, [Send(ok, retransmission=True)])


def test_legacy_transaction_leaves_the_table_when_terminated() -> None:
    table = TransactionTable()
    txn = NonInviteServerTransaction(vector("badbranch"), True, T, 0.0)
    table.add(txn)
    assert table.send_response(txn, make_response(txn.request, 200), 0.0)[-1] == Terminated()
    assert len(table) == 0
    assert table.find_server(vector("badbranch")) is None


# --------------------------------------------------------------------------- timers


def test_next_deadline_and_handle_timers_across_transactions() -> None:
    table = TransactionTable()
    assert table.next_deadline() is None
    a = InviteClientTransaction(req("INVITE", branch="z9hG4bK.a"), False, T, 0.0)
    b = NonInviteClientTransaction(req("OPTIONS", branch="z9hG4bK.b"), True, T, 10.0)
    table.start(a)
    table.start(b)
    assert table.next_deadline() == 0.5
    results = table.handle_timers(0.5)
    assert results == [(a, [Send(a.request, retransmission=True)])]
    assert table.next_deadline() == 1.5
    # A response moves a's deadline; the table follows after receive_response.
    table.receive_response(resp(180, branch="z9hG4bK.a"), 1.0)
    assert table.next_deadline() == 42.0  # b's timer F (10 + 32); a has no timer in PROCEEDING
    results = table.handle_timers(42.0)
    assert results == [(b, [Timeout(), Terminated()])]
    assert b not in table and a in table
    assert table.next_deadline() is None


def test_driving_a_transaction_directly_keeps_the_table_right() -> None:
    """The runtime may call the transaction's own methods: the table still follows its
    deadlines and drops it when it ends."""
    table = TransactionTable()
    txn = InviteServerTransaction(req("INVITE"), False, T, 0.0)
    table.add(txn)
    assert table.next_deadline() is None
    busy = make_response(txn.request, 486, to_tag="t")
    txn.send_response(busy, 1.0)
    assert table.next_deadline() == 1.5  # timer G, filed without any call on the table
    assert table.handle_timers(1.5) == [(txn, [Send(busy, retransmission=True)])]
    assert table.next_deadline() == 2.5
    assert txn.handle_timer(2.5) != []  # fired directly, not through the table
    assert table.next_deadline() == 4.5
    txn.on_transport_error(3.0)
    assert len(table) == 0 and table.next_deadline() is None
    assert table.handle_timers(100.0) == []


def test_a_transaction_belongs_to_one_table() -> None:
    first, second = TransactionTable(), TransactionTable()
    txn = NonInviteServerTransaction(req("MESSAGE"), False, T, 0.0)
    first.add(txn)
    with pytest.raises(TransactionError):
        second.add(txn)
    first.remove(txn)
    second.add(txn)
    assert txn in second and txn not in first


def test_remove_is_idempotent_and_drops_its_timers() -> None:
    table = TransactionTable()
    txn = InviteClientTransaction(req("INVITE"), False, T, 0.0)
    table.start(txn)
    table.remove(txn)
    table.remove(txn)
    assert len(table) == 0
    assert table.next_deadline() is None
    assert table.handle_timers(100.0) == []
    assert table.find_client(resp(200)) is None


def test_thousands_of_transactions_fire_in_deadline_order() -> None:
    rng = random.Random(5626)
    table = TransactionTable()
    txns = []
    for i in range(3000):
        start = rng.uniform(0.0, 100.0)
        txn = NonInviteClientTransaction(req("OPTIONS", branch=f"z9hG4bK.n{i}"), True, T, start)
        table.start(txn)
        txns.append(txn)
    # Some get answered (their F timer goes away, K = 0 ends them at once).
    answered = set(rng.sample(range(3000), 1000))
    for i in answered:
        table.receive_response(resp(200, branch=f"z9hG4bK.n{i}", method="OPTIONS"), 101.0)
    assert len(table) == 2000
    timeouts: list[float] = []
    while (deadline := table.next_deadline()) is not None:
        for fired, actions in table.handle_timers(deadline):
            assert actions == [Timeout(), Terminated()]
            timeouts.append(deadline)
            assert fired not in table
    assert len(timeouts) == 2000 and timeouts == sorted(timeouts)
    assert len(table) == 0
    assert table.next_deadline() is None


def test_churn_does_not_grow_the_timer_heap() -> None:
    """Transactions that end before their timers fire leave stale heap entries; the table
    compacts so memory follows the live transactions, not the history (white-box check)."""
    table = TransactionTable()
    keep = InviteClientTransaction(req("INVITE", branch="z9hG4bK.keep"), True, T, 0.0)
    table.start(keep)
    for i in range(3000):
        txn = NonInviteClientTransaction(req("OPTIONS", branch=f"z9hG4bK.c{i}"), True, T, 0.0)
        table.start(txn)
        table.receive_response(resp(200, branch=f"z9hG4bK.c{i}", method="OPTIONS"), 0.0)
    assert len(table) == 1
    assert len(table._heap) <= 2 * len(table) + 65
    assert table.next_deadline() == 32.0
