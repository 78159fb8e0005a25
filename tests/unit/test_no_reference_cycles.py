"""The REGISTER path leaves no reference cycles behind.

The runtime lets CPython's collector run full collections only rarely (``GcPacer`` in
``sipserver/gcpace.py``): one full collection walks every binding and costs hundreds of
milliseconds at 100,000 bindings. That is only safe while the steady-state work frees what it
drops by reference counting. These tests parse, answer and retire REGISTERs (new, refreshed,
replaced over a new flow, removed) with the collector off and check that a collection then
finds nothing (OB-REG-08 re-registration, REG3261 removal paths)."""

from __future__ import annotations

import gc

from test_registrar import TCP1, Harness, ob_contact, register

from sipserver.outbound.flow import Flow, Transport
from sipserver.transaction import NonInviteServerTransaction, TimerConfig

T = TimerConfig()
NOW = 1_700_000_000.0


def _one(h: Harness, flow: Flow, i: int, cseq: int, expires: int | None = None) -> None:
    req = register(
        ob_contact(1),
        call_id=f"call-{i}",
        cseq=cseq,
        to=f"sip:u{i}@example.com",
        expires=expires,
    )
    txn = NonInviteServerTransaction(req, False, T, NOW)
    result = h.send(req, flow, NOW)
    sent = txn.send_response(result.response, NOW)
    assert sent and result.response.status == 200
    assert txn.on_request(req, NOW + 1)  # a retransmission is answered from the kept response
    txn.handle_timer(NOW + 64 * T.t1)  # timer J: the transaction ends
    assert txn.terminated


def test_register_refresh_replace_remove_create_no_cycles() -> None:
    h = Harness()
    other = Flow(Transport.TCP, TCP1.local, ("192.0.2.99", 40111), TCP1.serial + 1)
    gc.collect()
    gc.disable()
    try:
        for i in range(100):
            _one(h, TCP1, i, 1)  # new binding
            _one(h, TCP1, i, 2)  # refresh
            _one(h, other, i, 3)  # same instance and reg-id over a new flow: replaced
        for i in range(50):
            _one(h, other, i, 4, expires=0)  # removed
        assert h.store.count() == 50
        token = h.store.lookup("u60@example.com", NOW)[0].flow_token
        assert token is not None
        h.store.remove_flow(token)  # the flow dies: its 50 bindings go (OB-REG-16)
        assert h.store.count() == 0
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0, f"{found} objects were only reclaimable by the cycle collector"
