"""Registrar rules: RFC 3261 §10.3 (REG3261-*), RFC 5626 §6 (OB-REG-*, OB-CS-*),
RFC 3327 (PATH-*), RFC 5627 (GRUU-*), and the RFC 4475 / RFC 5626 §9.2 / RFC 7118 §8.1 / RFC 3327 §5 messages.

Every test builds REGISTER text, parses it with the real parser, calls ``Registrar.handle`` and
looks at what a UA would see (the 200 OK re-parsed from its bytes) and at the location store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.registrar import (
    BindingAdded,
    BindingKey,
    BindingRefreshed,
    BindingRemoved,
    BindingReplaced,
    Delete,
    LocationStore,
    Put,
    RegisterResult,
    Registrar,
    RegistrarSettings,
    RemovalCause,
)
from sipserver.sip import ParseError, Request, Response, parse_message, parse_sip_uri

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
RFC_EXAMPLES = VECTORS / "rfc-examples"
RFC4475 = VECTORS / "rfc4475"

KEY = bytes(range(32))
SERVER = "203.0.113.5"
DOMAIN = "example.com"
AOR = "alice@example.com"
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
INSTANCE_ID = "urn:uuid:00000000-0000-1000-8000-aabbccddeeff"
NOW = 1_700_000_000.0

TCP1 = Flow(Transport.TCP, (SERVER, 5060), ("192.0.2.10", 40001), 1)
TCP2 = Flow(Transport.TCP, (SERVER, 5060), ("192.0.2.10", 40002), 2)
UDP = Flow(Transport.UDP, (SERVER, 5060), ("192.0.2.10", 5060), 0)
WSS = Flow(Transport.WSS, (SERVER, 443), ("192.0.2.20", 50000), 3)
PROXY = Flow(Transport.UDP, (SERVER, 5060), ("198.51.100.4", 5060), 0)

LOCAL = {
    Transport.TCP: parse_sip_uri(f"sip:{SERVER}:5060;transport=tcp"),
    Transport.UDP: parse_sip_uri(f"sip:{SERVER}:5060"),
    Transport.WSS: parse_sip_uri(f"sip:{SERVER}:443;transport=ws"),
}


def register(
    *contacts: str,
    vias: int = 1,
    via_transport: str = "TCP",
    call_id: str = "call-1",
    cseq: int = 1,
    to: str = f"sip:{AOR}",
    ruri: str = f"sip:{DOMAIN}",
    supported: str | None = "path, outbound",
    require: str | None = None,
    expires: int | str | None = None,
    path: str | None = None,
    extra: tuple[str, ...] = (),
) -> Request:
    """A REGISTER as text, parsed by the real parser. ``vias`` > 1 adds proxies above the UA."""
    lines = [f"REGISTER {ruri} SIP/2.0"]
    for i in range(vias - 1, 0, -1):
        lines.append(f"Via: SIP/2.0/UDP 198.51.100.{i}:5060;branch=z9hG4bKproxy{i}")
    lines.append(f"Via: SIP/2.0/{via_transport} 192.0.2.10:40001;branch=z9hG4bKua{cseq}")
    lines += [
        "Max-Forwards: 70",
        f"From: <{to}>;tag=ftag",
        f"To: <{to}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if supported is not None:
        lines.append(f"Supported: {supported}")
    if require is not None:
        lines.append(f"Require: {require}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if path is not None:
        lines.append(f"Path: {path}")
    lines += [f"Contact: {c}" for c in contacts]
    lines += list(extra)
    lines.append("Content-Length: 0")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def ob_contact(reg_id: int | str = 1, uri: str = "sip:alice@192.0.2.10:40001;transport=tcp") -> str:
    return f"<{uri}>;reg-id={reg_id};+sip.instance={INSTANCE}"


class Harness:
    """A registrar over a fresh store, with predictable temp-GRUU users."""

    def __init__(self, **overrides: object) -> None:
        self.store = LocationStore()
        self.codec = FlowTokenCodec(KEY)
        self._n = 0
        self.registrar = Registrar(
            RegistrarSettings(**overrides),  # type: ignore[arg-type]
            self.store,
            self.codec,
            is_local_domain=lambda host: host in (DOMAIN, "examplehome.com", SERVER),
            random_token=self._token,
        )

    def _token(self, nbytes: int) -> str:
        self._n += 1
        return f"tmp{self._n:04d}x{nbytes}"

    def send(self, req: Request, flow: Flow = TCP1, now: float = NOW) -> RegisterResult:
        result = self.registrar.handle(req, flow, now=now, local_uri=LOCAL[flow.transport])
        assert isinstance(result.response, Response)
        return result

    def ok(self, req: Request, flow: Flow = TCP1, now: float = NOW) -> Response:
        result = self.send(req, flow, now)
        assert result.response.status == 200, result.response.reason
        return wire(result.response)


def wire(resp: Response) -> Response:
    """The response as the UA parses it off the wire."""
    msg = parse_message(resp.to_bytes())
    assert isinstance(msg, Response)
    return msg


def contact_uris(resp: Response) -> list[str]:
    return [c.uri_text for c in resp.contacts]


@pytest.fixture
def h() -> Harness:
    return Harness()


# ----------------------------------------------------------------------- RFC 3261 §10.3


def test_reg3261_01_foreign_request_uri_domain_is_refused(h: Harness) -> None:
    res = h.send(register("<sip:alice@192.0.2.10>", ruri="sip:other.example.net"))
    assert res.response.status == 403
    assert "domain" in res.response.reason
    assert res.changes == [] and h.store.count() == 0


def test_reg3261_01_foreign_to_domain_is_refused(h: Harness) -> None:
    res = h.send(register("<sip:alice@192.0.2.10>", to="sip:alice@other.example.net"))
    assert res.response.status == 403
    assert h.store.count() == 0


def test_reg3261_02_unknown_require_gets_420_with_unsupported(h: Harness) -> None:
    res = h.send(register("<sip:alice@192.0.2.10>", require="path, foo, Bar"))
    assert res.response.status == 420
    assert res.response.header("Unsupported") == "bar, foo"
    assert h.store.count() == 0


def test_reg3261_02_path_outbound_gruu_in_require_are_fine(h: Harness) -> None:
    """PATH-03 positive case: Require: path is supported."""
    h.ok(register("<sip:alice@192.0.2.10>", require="path, outbound, gruu"))
    assert h.store.count() == 1


def test_reg3261_05_wildcard_with_expires_0_removes_every_binding(h: Harness) -> None:
    h.ok(register("<sip:alice@192.0.2.10>", "<sip:alice@192.0.2.11>", call_id="a"))
    h.ok(register(ob_contact(1), call_id="b"))
    assert len(h.store.lookup(AOR, NOW)) == 3
    res = h.send(register("*", expires=0, call_id="c"))
    assert res.response.status == 200
    assert wire(res.response).contacts == []
    assert h.store.lookup(AOR, NOW) == []
    assert all(isinstance(c, Delete) for c in res.changes) and len(res.changes) == 3
    assert {type(e) for e in res.events} == {BindingRemoved}


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (("*",), 3600),  # wildcard needs Expires: 0
        (("*",), None),  # ... and an Expires header at all
        (("*", "<sip:alice@192.0.2.10>"), 0),  # and must be alone
    ],
)
def test_reg3261_05_wildcard_misuse_is_400(
    h: Harness, contacts: tuple[str, ...], expires: int | None
) -> None:
    h.ok(register("<sip:alice@192.0.2.10>", call_id="a"))
    res = h.send(register(*contacts, expires=expires, call_id="b"))
    assert res.response.status == 400
    assert len(h.store.lookup(AOR, NOW)) == 1


def test_reg3261_05_wildcard_with_stale_cseq_of_same_call_id_is_500(h: Harness) -> None:
    h.ok(register("<sip:alice@192.0.2.10>", call_id="a", cseq=5))
    res = h.send(register("*", expires=0, call_id="a", cseq=5))
    assert res.response.status == 500
    assert len(h.store.lookup(AOR, NOW)) == 1


def test_reg3261_06_expiry_precedence_and_cap(h: Harness) -> None:
    """Contact expires param beats the Expires header, which beats the default; the
    registrar shortens to max_expires (7200) and never lengthens."""
    resp = h.ok(
        register(
            "<sip:a@192.0.2.1>;expires=300",
            "<sip:b@192.0.2.2>",
            "<sip:c@192.0.2.3>;expires=99999",
            expires=600,
        )
    )
    got = {c.uri_text: c.expires for c in resp.contacts}
    assert got == {"sip:a@192.0.2.1": 300, "sip:b@192.0.2.2": 600, "sip:c@192.0.2.3": 7200}
    resp = h.ok(register("<sip:d@192.0.2.4>", call_id="x"))
    assert {c.uri_text: c.expires for c in resp.contacts}["sip:d@192.0.2.4"] == 3600


def test_reg3261_06_expiry_beyond_32_bits_is_clamped_not_wrapped(h: Harness) -> None:
    """REG3261-10 / RFC 4475 scalar02: a huge Expires is clamped (then capped), not wrapped."""
    resp = h.ok(register("<sip:a@192.0.2.1>", expires="1" + "0" * 40))
    assert resp.contacts[0].expires == 7200


def test_reg3261_06_expires_0_removes_one_binding(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>", cseq=1))
    res = h.send(register("<sip:a@192.0.2.1>;expires=0", cseq=2))
    resp = wire(res.response)
    assert contact_uris(resp) == ["sip:b@192.0.2.2"]
    assert [type(e) for e in res.events] == [BindingRemoved]
    assert res.events[0].cause is RemovalCause.UNREGISTERED  # type: ignore[union-attr]


def test_reg3261_07_too_brief_gets_423_with_min_expires(h: Harness) -> None:
    res = h.send(register("<sip:a@192.0.2.1>;expires=5"))
    assert res.response.status == 423
    assert res.response.header("Min-Expires") == "60"
    assert h.store.count() == 0


def test_reg3261_07_one_brief_contact_rejects_the_whole_request(h: Harness) -> None:
    res = h.send(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>", expires=30))
    assert res.response.status == 423
    assert h.store.count() == 0


def test_reg3261_07_expires_0_never_triggers_423(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>", cseq=1))
    resp = h.ok(register("<sip:a@192.0.2.1>", expires=0, cseq=2))
    assert resp.contacts == []


def test_reg3261_08_same_call_id_needs_higher_cseq(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>", call_id="a", cseq=10))
    for stale in (10, 9):
        res = h.send(register("<sip:a@192.0.2.1>;expires=120", call_id="a", cseq=stale))
        assert res.response.status == 500
        assert "out of order" in res.response.reason.lower()
        assert res.changes == []
    assert h.store.lookup(AOR, NOW)[0].expires_at == NOW + 3600
    h.ok(register("<sip:a@192.0.2.1>;expires=120", call_id="a", cseq=11))
    assert h.store.lookup(AOR, NOW)[0].expires_at == NOW + 120


def test_reg3261_08_different_call_id_updates_regardless_of_cseq(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>", call_id="a", cseq=10))
    res = h.send(register("<sip:a@192.0.2.1>;expires=120", call_id="b", cseq=1))
    assert res.response.status == 200
    (b,) = h.store.lookup(AOR, NOW)
    assert (b.call_id, b.cseq, b.expires_at) == ("b", 1, NOW + 120)
    assert [type(e) for e in res.events] == [BindingReplaced]


def test_reg3261_09_200_lists_all_bindings_with_remaining_expiry(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>", call_id="a"), now=NOW)
    resp = h.ok(register("<sip:b@192.0.2.2>;expires=600", call_id="b"), now=NOW + 100)
    got = {c.uri_text: c.expires for c in resp.contacts}
    assert got == {"sip:a@192.0.2.1": 3500, "sip:b@192.0.2.2": 600}


def test_reg3261_09_register_without_contact_is_a_query(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>;q=0.5", "<sip:b@192.0.2.2>;q=0.9", call_id="a"))
    res = h.send(register(call_id="q", cseq=7), now=NOW + 60)
    assert res.changes == [] and res.events == []
    resp = wire(res.response)
    assert resp.status == 200
    # Ordered by q, highest first; q echoed as registered; remaining time shown.
    assert contact_uris(resp) == ["sip:b@192.0.2.2", "sip:a@192.0.2.1"]
    assert [c.q for c in resp.contacts] == [0.9, 0.5]
    assert [c.expires for c in resp.contacts] == [3540, 3540]


def test_reg3261_09_expired_bindings_are_not_listed(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.1>;expires=60", call_id="a"))
    resp = h.ok(register(call_id="q"), now=NOW + 61)
    assert resp.contacts == []


def test_200_ok_has_to_tag_date_and_no_require_for_plain_registration(h: Harness) -> None:
    resp = h.ok(register("<sip:a@192.0.2.1>"))
    assert resp.to.tag
    assert (resp.header("Date") or "").endswith("GMT")
    assert resp.header("Require") is None and resp.header("Flow-Timer") is None


def test_to_must_be_a_sip_uri(h: Harness) -> None:
    res = h.send(register("<sip:a@192.0.2.1>", to="tel:+15555550100"))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_non_sip_contact_uri_is_400(h: Harness) -> None:
    res = h.send(register("<mailto:alice@example.com>"))
    assert res.response.status == 400
    assert h.store.count() == 0


@pytest.mark.parametrize(
    "contact",
    ["<sip:a@192.0.2.1>;expires=soon", "<sip:a@192.0.2.1>;q=2", "<sip:a@192.0.2.1", "<>"],
)
def test_malformed_contact_is_400_not_an_exception(h: Harness, contact: str) -> None:
    res = h.send(register(contact))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_non_register_gets_405(h: Harness) -> None:
    req = register("<sip:a@192.0.2.1>")
    req.method = "OPTIONS"
    res = h.send(req)
    assert res.response.status == 405
    assert res.response.header("Allow") == "REGISTER"


def test_q_values_order_the_200_and_lookup(h: Harness) -> None:
    h.ok(register("<sip:low@192.0.2.1>;q=0.1", "<sip:none@192.0.2.2>", "<sip:mid@192.0.2.3>;q=0.5"))
    assert [b.contact_uri for b in h.store.lookup(AOR, NOW)] == [
        "sip:none@192.0.2.2",
        "sip:mid@192.0.2.3",
        "sip:low@192.0.2.1",
    ]


def test_contact_uri_comparison_follows_rfc3261_19_1_4(h: Harness) -> None:
    """Escaped user and host case do not make a new binding; a transport param does."""
    h.ok(register("<sip:alice@Host.Example.com>", call_id="a", cseq=1))
    h.ok(register("<sip:%61lice@host.example.COM>;expires=100", call_id="a", cseq=2))
    (b,) = h.store.lookup(AOR, NOW)
    assert b.expires_at == NOW + 100
    assert b.contact_uri == "sip:%61lice@host.example.COM"  # newest text kept
    h.ok(register("<sip:alice@host.example.com;transport=tcp>", call_id="a", cseq=3))
    assert len(h.store.lookup(AOR, NOW)) == 2


def test_require_instance_policy_refuses_plain_contacts() -> None:
    """OB-REG-05 (local policy): with require_instance, Contacts without +sip.instance get 403;
    removals and queries still work."""
    h = Harness(require_instance=True)
    res = h.send(register("<sip:a@192.0.2.1>"))
    assert res.response.status == 403
    h.ok(register(ob_contact(1)))
    h.ok(register(call_id="q"))


def test_bindings_per_aor_are_bounded() -> None:
    h = Harness(max_bindings_per_aor=2)
    h.ok(register("<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>", call_id="a"))
    res = h.send(register("<sip:c@192.0.2.3>", call_id="b"))
    assert res.response.status == 403
    assert len(h.store.lookup(AOR, NOW)) == 2
    # Refreshing within the limit is still fine.
    h.ok(register("<sip:a@192.0.2.1>", call_id="a", cseq=2))


def test_settings_reject_inconsistent_expiry_bounds() -> None:
    with pytest.raises(ValueError):
        RegistrarSettings(min_expires=600, default_expires=300)
    with pytest.raises(ValueError):
        RegistrarSettings(flow_timer=0)


# ---------------------------------------------------------------- RFC 5626 §6 (outbound)


def test_ob_cs_01_first_hop_outbound_binds_the_arrival_flow(h: Harness) -> None:
    """OB-CS-01, OB-REG-09, OB-REG-10: one Via + Supported: outbound + reg-id + instance."""
    res = h.send(register(ob_contact(1)), TCP1)
    resp = wire(res.response)
    assert resp.status == 200
    assert resp.header("Require") == "outbound"
    assert resp.header("Flow-Timer") == "120"
    assert res.outbound_flow is True
    (b,) = h.store.lookup(AOR, NOW)
    assert b.key == (AOR, "instance", INSTANCE_ID, 1)
    assert b.outbound and b.reg_id == 1 and b.transport == "tcp" and b.source == "192.0.2.10:40001"
    # The stored route set starts with our own Path URI whose user part names the flow.
    assert b.flow_token is not None and res.flow_token == b.flow_token
    assert h.codec.decode(b.flow_token) == TCP1
    own = parse_sip_uri(b.path[0][1:-1])
    assert own.user == b.flow_token and own.host == SERVER and own.port == 5060
    assert own.lr and own.has_param("ob") and own.transport == "tcp"
    assert [type(e) for e in res.events] == [BindingAdded]
    assert res.changes == [Put(b)]


def test_ob_cs_01_outbound_over_udp_first_hop(h: Harness) -> None:
    res = h.send(register(ob_contact(1, "sip:alice@192.0.2.10:5060"), via_transport="UDP"), UDP)
    assert res.response.status == 200 and res.response.header("Require") == "outbound"
    (b,) = h.store.lookup(AOR, NOW)
    assert b.flow_token is not None and h.codec.decode(b.flow_token) == UDP
    assert parse_sip_uri(b.path[0][1:-1]).has_param("ob")


def test_ob_reg_15_outbound_contact_echoed_with_instance_byte_exact(h: Harness) -> None:
    odd = '"<URN:UUID:00000000-0000-1000-8000-AaBbCcDdEeFf>"'
    res = h.send(register(f"<sip:alice@192.0.2.10;transport=tcp>;+sip.instance={odd};reg-id=7"))
    text = res.response.to_bytes().decode()
    contact_line = next(line for line in text.split("\r\n") if line.startswith("Contact:"))
    assert f";+sip.instance={odd}" in contact_line
    (c,) = wire(res.response).contacts
    assert c.reg_id == 7 and c.expires == 3600 and c.instance == odd


def test_ob_reg_08_two_reg_ids_are_two_bindings(h: Harness) -> None:
    h.ok(register(ob_contact(1), call_id="flow1"), TCP1)
    resp = h.ok(register(ob_contact(2), call_id="flow2"), TCP2)
    assert sorted(c.reg_id or 0 for c in resp.contacts) == [1, 2]
    by_reg = {b.reg_id: b for b in h.store.lookup(AOR, NOW)}
    assert by_reg[1].flow_token == h.codec.encode(TCP1)
    assert by_reg[2].flow_token == h.codec.encode(TCP2)
    assert [b.reg_id for b in h.store.lookup_instance(AOR, INSTANCE_ID, NOW)] == [1, 2]


def test_ob_reg_07_reregistering_over_a_new_flow_replaces_the_binding(h: Harness) -> None:
    """UA rebooted: new Call-ID, new Contact URI, new connection, same instance and reg-id."""
    h.ok(register(ob_contact(1, "sip:alice@192.0.2.10:40001;transport=tcp"), call_id="A"), TCP1)
    res = h.send(
        register(ob_contact(1, "sip:alice@192.0.2.99:40002;transport=tcp"), call_id="B"), TCP2
    )
    resp = wire(res.response)
    assert contact_uris(resp) == ["sip:alice@192.0.2.99:40002;transport=tcp"]
    (b,) = h.store.lookup(AOR, NOW)
    assert b.flow_token == h.codec.encode(TCP2) and b.call_id == "B"
    assert isinstance(res.events[0], BindingReplaced)
    # The old flow no longer carries anything: its death removes nothing.
    assert h.store.remove_flow(h.codec.encode(TCP1)) == []
    assert len(h.store.lookup(AOR, NOW)) == 1


def test_ob_reg_07_same_call_id_over_new_flow_replaces_flow(h: Harness) -> None:
    """Flow recovery (RFC 5626 §4.4.1): same Call-ID, higher CSeq, new connection."""
    h.ok(register(ob_contact(1), call_id="A", cseq=1), TCP1)
    res = h.send(register(ob_contact(1), call_id="A", cseq=2), TCP2)
    assert res.response.status == 200
    (b,) = h.store.lookup(AOR, NOW)
    assert b.flow_token == h.codec.encode(TCP2)
    assert isinstance(res.events[0], BindingReplaced)


def test_ob_reg_07_call_id_change_on_same_flow_replaces(h: Harness) -> None:
    h.ok(register(ob_contact(1), call_id="A", cseq=50), TCP1)
    res = h.send(register(ob_contact(1), call_id="B", cseq=1), TCP1)
    assert res.response.status == 200
    (b,) = h.store.lookup(AOR, NOW)
    assert (b.call_id, b.cseq) == ("B", 1)


def test_ob_reg_07_refresh_is_reported_as_refresh(h: Harness) -> None:
    h.ok(register(ob_contact(1), call_id="A", cseq=1), TCP1)
    res = h.send(register(ob_contact(1), call_id="A", cseq=2), TCP1, now=NOW + 100)
    assert [type(e) for e in res.events] == [BindingRefreshed]
    (b,) = h.store.lookup(AOR, NOW + 100)
    assert b.registered_at == NOW and b.expires_at == NOW + 3700


def test_ob_reg_14_unregister_one_flow_by_instance_and_reg_id(h: Harness) -> None:
    h.ok(register(ob_contact(1), call_id="f1"), TCP1)
    h.ok(register(ob_contact(2), call_id="f2"), TCP2)
    # Contact URI differs from the registered one; instance + reg-id identify the binding.
    res = h.send(
        register(ob_contact(1, "sip:alice@192.0.2.55") + ";expires=0", call_id="f1", cseq=2), TCP1
    )
    resp = wire(res.response)
    assert [c.reg_id for c in resp.contacts] == [2]
    assert [b.reg_id for b in h.store.lookup(AOR, NOW)] == [2]


def test_ob_reg_03_not_first_hop_without_ob_path_is_439(h: Harness) -> None:
    res = h.send(register(ob_contact(1), vias=2, supported="path, outbound"), PROXY)
    assert res.response.status == 439
    assert h.store.count() == 0
    res = h.send(
        register(ob_contact(1), vias=2, path="<sip:edge.example.net;lr>", call_id="x"), PROXY
    )
    assert res.response.status == 439
    assert h.store.count() == 0


def test_ob_reg_03_policy_accepts_without_ob_when_configured() -> None:
    h = Harness(outbound_without_first_hop=True)
    res = h.send(register(ob_contact(1), vias=2, path="<sip:edge.example.net;lr>"), PROXY)
    assert res.response.status == 200 and res.response.header("Require") == "outbound"
    (b,) = h.store.lookup(AOR, NOW)
    assert b.outbound and b.path == ("<sip:edge.example.net;lr>",) and b.flow_token is None
    assert res.outbound_flow is False


def test_ob_reg_02_11_reg_id_ignored_without_supported_outbound(h: Harness) -> None:
    """OB-REG-02/11: 2 Vias, no Path, reg-id + instance, Supported: path only -> plain binding."""
    res = h.send(register(ob_contact(1), vias=2, supported="path"), PROXY)
    resp = wire(res.response)
    assert resp.status == 200 and resp.header("Require") is None
    (b,) = h.store.lookup(AOR, NOW)
    assert b.key.kind == "contact" and not b.outbound and b.reg_id is None
    assert b.instance_id == INSTANCE_ID  # still known for GRUU


def test_ob_reg_11_first_hop_without_supported_outbound_is_plain(h: Harness) -> None:
    res = h.send(register(ob_contact(1), supported=None), TCP1)
    assert res.response.status == 200 and res.response.header("Require") is None
    assert res.outbound_flow is False
    (b,) = h.store.lookup(AOR, NOW)
    assert not b.outbound


def test_ob_reg_09_relayed_register_with_ob_path_stores_the_path(h: Harness) -> None:
    """OB-CS-02: >1 Via, top Path has ob: outbound applies, the route is the received Path."""
    edge = "<sip:VskztcQ@edge.example.net;lr;ob>"
    res = h.send(register(ob_contact(1), vias=2, path=edge), PROXY)
    resp = wire(res.response)
    assert resp.header("Require") == "outbound"
    assert resp.header("Path") == edge
    (b,) = h.store.lookup(AOR, NOW)
    assert b.outbound and b.path == (edge,) and b.flow_token is None
    assert res.outbound_flow is False


def test_ob_reg_10_no_require_without_reg_id(h: Harness) -> None:
    resp = h.ok(register(f"<sip:alice@192.0.2.10;transport=tcp>;+sip.instance={INSTANCE}"))
    assert resp.header("Require") is None and resp.header("Flow-Timer") is None


def test_ob_reg_12_more_than_one_reg_id_contact_is_400(h: Harness) -> None:
    res = h.send(register(ob_contact(1, "sip:a@192.0.2.1"), ob_contact(2, "sip:a@192.0.2.2")))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_ob_reg_12_two_plain_contacts_are_fine(h: Harness) -> None:
    resp = h.ok(register("<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"))
    assert len(resp.contacts) == 2


def test_ob_reg_13_reg_id_without_instance_is_a_plain_binding(h: Harness) -> None:
    res = h.send(register("<sip:a@192.0.2.1;transport=tcp>;reg-id=1"))
    assert res.response.status == 200 and res.response.header("Require") is None
    (b,) = h.store.lookup(AOR, NOW)
    assert b.key.kind == "contact" and not b.outbound


@pytest.mark.parametrize("bad", ["0", "2147483648", "abc", "-1"])
def test_ob_reg_17_invalid_reg_id_is_400(h: Harness, bad: str) -> None:
    res = h.send(register(ob_contact(bad)))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_ob_reg_17_largest_reg_id_is_valid(h: Harness) -> None:
    resp = h.ok(register(ob_contact(2**31 - 1)))
    assert resp.contacts[0].reg_id == 2**31 - 1


def test_ob_reg_04_plain_and_outbound_bindings_coexist(h: Harness) -> None:
    h.ok(register("<sip:desk@192.0.2.7>", via_transport="UDP", call_id="desk"), UDP)
    resp = h.ok(register(ob_contact(1), call_id="mobile"), TCP1)
    assert len(resp.contacts) == 2
    kinds = sorted(b.key.kind for b in h.store.lookup(AOR, NOW))
    assert kinds == ["contact", "instance"]


def test_ws_08_direct_stream_registration_without_outbound_keeps_the_connection(
    h: Harness,
) -> None:
    """A plain REGISTER over TCP/WS still records our Path (without ob) and the flow token, so
    requests reach a NATed or WebSocket UA over its connection and die with it."""
    res = h.send(register("<sip:bob@df7jal23ls0d.invalid;transport=ws>", via_transport="WSS"), WSS)
    resp = wire(res.response)
    assert resp.header("Require") is None
    (b,) = h.store.lookup(AOR, NOW)
    assert b.flow_token == h.codec.encode(WSS) and not b.outbound
    own = parse_sip_uri(b.path[0][1:-1])
    assert own.user == b.flow_token and own.lr and not own.has_param("ob")
    # OB-CS-03: a non-ob Path of ours is not echoed to the UA.
    assert resp.header("Path") is None
    assert res.outbound_flow is False and res.flow_token == b.flow_token


def test_direct_udp_without_outbound_binds_an_implicit_flow(h: Harness) -> None:
    """Issue 17 (implicit flows): a phone without outbound that REGISTERs directly over UDP is
    reached through the mapping its REGISTER opened: the stored Path names the arrival flow
    (token, ``lr``, no ``ob``); the Contact is stored untouched and the Path is not echoed."""
    res = h.send(register("<sip:alice@192.0.2.10:5060>", via_transport="UDP"), UDP)
    assert res.response.status == 200
    (b,) = h.store.lookup(AOR, NOW)
    assert b.contact_uri == "sip:alice@192.0.2.10:5060" and not b.outbound
    assert b.flow_token == h.codec.encode(UDP) and res.flow_token == b.flow_token
    own = parse_sip_uri(b.path[0][1:-1])
    assert own.user == b.flow_token and own.lr and not own.has_param("ob")
    assert res.outbound_flow is False and wire(res.response).header("Path") is None


def test_register_behind_another_proxy_stores_only_its_path(h: Harness) -> None:
    """RFC 3327: a REGISTER that came through another proxy (two Vias) is not bound to our
    flow with that proxy: its own Path (if any) is the route set."""
    req = register("<sip:alice@192.0.2.10:5060>", via_transport="UDP")
    req.add_header("Via", "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKp1")
    res = h.send(req, UDP)
    assert res.response.status == 200
    (b,) = h.store.lookup(AOR, NOW)
    assert b.path == () and b.flow_token is None and res.flow_token is None


def test_ob_reg_16_flow_death_removes_only_that_flows_bindings(h: Harness) -> None:
    h.ok(register(ob_contact(1), call_id="f1"), TCP1)
    h.ok(register(ob_contact(2), call_id="f2"), TCP2)
    h.ok(register("<sip:desk@192.0.2.7>", via_transport="UDP", call_id="d"), UDP)
    gone = h.store.remove_flow(h.codec.encode(TCP1))
    assert gone == [Delete(BindingKey.for_instance(AOR, INSTANCE_ID, 1), RemovalCause.FLOW_FAILED)]
    # OB-CS-09: a fetch afterwards does not list it.
    resp = h.ok(register(call_id="q"))
    assert sorted(c.reg_id or 0 for c in resp.contacts) == [0, 2]


def test_flow_token_key_appears_nowhere(h: Harness) -> None:
    res = h.send(register(ob_contact(1)))
    shown = res.response.to_bytes().decode("latin-1") + repr(res) + repr(h.store.all())
    for form in (KEY.hex(), repr(KEY), KEY.decode("latin-1")):
        assert form not in shown


# ------------------------------------------------------------------------ RFC 3327 Path


def test_path_04_stored_in_order_and_echoed_with_supported_path(h: Harness) -> None:
    path = "<sip:p3.examplehome.com;lr>, <sip:p1.examplevisited.com;lr>"
    resp = h.ok(register("<sip:alice@192.0.2.4>", vias=3, path=path, supported="path"), PROXY)
    assert resp.header("Path") == path
    assert [p.uri_text for p in resp.paths] == [
        "sip:p3.examplehome.com;lr",
        "sip:p1.examplevisited.com;lr",
    ]
    (b,) = h.store.lookup(AOR, NOW)
    assert b.path == ("<sip:p3.examplehome.com;lr>", "<sip:p1.examplevisited.com;lr>")


def test_path_03_not_echoed_without_supported_path(h: Harness) -> None:
    resp = h.ok(
        register("<sip:alice@192.0.2.4>", vias=2, path="<sip:p1.example.net;lr>", supported=None),
        PROXY,
    )
    assert resp.header("Path") is None
    (b,) = h.store.lookup(AOR, NOW)
    assert b.path == ("<sip:p1.example.net;lr>",)


def test_path_05_refresh_replaces_and_clears_the_path(h: Harness) -> None:
    h.ok(register("<sip:a@192.0.2.4>", vias=2, path="<sip:p1.example.net;lr>", cseq=1), PROXY)
    h.ok(register("<sip:a@192.0.2.4>", vias=2, path="<sip:p2.example.net;lr>", cseq=2), PROXY)
    assert h.store.lookup(AOR, NOW)[0].path == ("<sip:p2.example.net;lr>",)
    h.ok(register("<sip:a@192.0.2.4>", vias=2, cseq=3), PROXY)
    assert h.store.lookup(AOR, NOW)[0].path == ()


def test_path_multiple_header_lines_equal_a_comma_list(h: Harness) -> None:
    """PATH-01: two Path lines are the same as one comma-separated line."""
    req = register(
        "<sip:a@192.0.2.4>",
        vias=3,
        extra=("Path: <sip:p3.example.net;lr>", "Path: <sip:p1.example.net;lr>"),
    )
    h.ok(req, PROXY)
    assert h.store.lookup(AOR, NOW)[0].path == (
        "<sip:p3.example.net;lr>",
        "<sip:p1.example.net;lr>",
    )


def test_first_hop_outbound_echoes_our_own_ob_path(h: Harness) -> None:
    """OB-CS-03: the Path we echo carries lr, ob and a token that verifies."""
    resp = h.ok(register(ob_contact(1)))
    (p,) = resp.paths
    uri = p.sip_uri
    assert uri.lr and uri.has_param("ob")
    assert uri.user is not None and h.codec.decode(uri.user) == TCP1


# --------------------------------------------------------------------------- RFC 5627 GRUU


def gruu_register(cseq: int = 1, call_id: str = "g1", **kw: object) -> Request:
    return register(
        ob_contact(1), supported="path, outbound, gruu", cseq=cseq, call_id=call_id, **kw
    )  # type: ignore[arg-type]


def test_gruu_01_pub_and_temp_gruu_with_supported_gruu(h: Harness) -> None:
    resp = h.ok(gruu_register())
    (c,) = resp.contacts
    pub, temp = c.param("pub-gruu"), c.param("temp-gruu")
    assert pub is not None and pub.startswith('"') and pub.endswith('"')
    assert temp is not None and temp.startswith('"') and temp.endswith('"')
    pub_uri = parse_sip_uri(pub[1:-1])
    assert pub_uri.aor == AOR and pub_uri.param("gr") == INSTANCE_ID  # GRUU-02
    temp_uri = parse_sip_uri(temp[1:-1])
    assert temp_uri.host == DOMAIN and temp_uri.param("gr") == ""  # GRUU-03 shape
    assert "alice" not in (temp_uri.user or "")  # reveals nothing about the AoR


def test_gruu_01_neither_without_supported_gruu_or_instance(h: Harness) -> None:
    resp = h.ok(register(ob_contact(1)))
    assert (
        resp.contacts[0].param("pub-gruu") is None and resp.contacts[0].param("temp-gruu") is None
    )
    resp = h.ok(register("<sip:b@192.0.2.2>", supported="gruu", call_id="x"))
    for c in resp.contacts:
        if c.uri_text == "sip:b@192.0.2.2":
            assert c.param("pub-gruu") is None and c.param("temp-gruu") is None


def test_gruu_01_disabled_by_setting() -> None:
    h = Harness(gruu=False)
    resp = h.ok(gruu_register())
    assert resp.contacts[0].param("pub-gruu") is None


def test_gruu_02_pub_gruu_stable_and_temp_gruu_new_on_each_refresh(h: Harness) -> None:
    first = h.ok(gruu_register(cseq=1)).contacts[0]
    second = h.ok(gruu_register(cseq=2)).contacts[0]
    assert first.param("pub-gruu") == second.param("pub-gruu")
    assert first.param("temp-gruu") != second.param("temp-gruu")
    # GRUU-03: both temporary GRUUs route to the instance while it stays registered.
    for c in (first, second):
        uri = parse_sip_uri((c.param("temp-gruu") or "")[1:-1])
        match = h.store.find_gruu(uri, NOW)
        assert match is not None and match.registered and match.temporary
        assert (match.aor, match.instance_id) == (AOR, INSTANCE_ID)
    pub = parse_sip_uri((first.param("pub-gruu") or "")[1:-1])
    match = h.store.find_gruu(pub, NOW)
    assert match is not None and match.registered and not match.temporary


def test_gruu_03_new_call_id_invalidates_earlier_temp_gruus(h: Harness) -> None:
    old = h.ok(gruu_register(call_id="A")).contacts[0].param("temp-gruu") or ""
    h.ok(gruu_register(call_id="B"))
    assert h.store.find_gruu(parse_sip_uri(old[1:-1]), NOW) is None


def test_gruu_05_after_unregistering_temp_is_unknown_and_pub_unregistered(h: Harness) -> None:
    c = h.ok(gruu_register(cseq=1)).contacts[0]
    h.ok(
        register(
            ob_contact(1) + ";expires=0", supported="path, outbound, gruu", cseq=2, call_id="g1"
        )
    )
    temp = parse_sip_uri((c.param("temp-gruu") or "")[1:-1])
    pub = parse_sip_uri((c.param("pub-gruu") or "")[1:-1])
    assert h.store.find_gruu(temp, NOW) is None  # 404
    match = h.store.find_gruu(pub, NOW)
    assert match is not None and not match.registered  # 480


def test_gruu_temp_gruus_are_capped(h: Harness) -> None:
    for cseq in range(1, 13):
        h.ok(gruu_register(cseq=cseq))
    (b,) = h.store.lookup(AOR, NOW)
    assert len(b.temp_gruus) == 8
    assert b.temp_gruus[-1] == "tmp0012x16"


def test_gruu_on_rfc7118_instance_without_uuid_syntax(h: Harness) -> None:
    """The instance is an opaque URN (RFC 7118 `urn:uuid:f81-7dec-14a06cf1`)."""
    req = register(
        "<sip:alice@df7jal23ls0d.invalid;transport=ws>;reg-id=1"
        ';+sip.instance="<urn:uuid:f81-7dec-14a06cf1>"',
        supported="path, outbound, gruu",
        via_transport="WSS",
    )
    c = h.ok(req, WSS).contacts[0]
    assert c.param("pub-gruu") == '"sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1"'


# ------------------------------------------------------------------------------- RFC 4475


def torture(name: str) -> Request:
    msg = parse_message((RFC4475 / f"{name}.dat").read_bytes())
    assert isinstance(msg, Request)
    return msg


def udp_from(host: str) -> Flow:
    return Flow(Transport.UDP, (SERVER, 5060), (host, 5060), 0)


def test_rfc4475_cparam01_unknownparam_is_a_contact_param(h: Harness) -> None:
    h.ok(torture("cparam01"), udp_from("192.0.2.30"))
    (b,) = h.store.lookup("watson@example.com", NOW)
    assert b.contact_uri == "sip:+19725552222@gw1.example.net"
    assert b.contact_params == (("unknownparam", None),)
    resp = h.ok(register(to="sip:watson@example.com", call_id="fetch", supported=None), UDP)
    (c,) = resp.contacts
    assert c.uri_text == "sip:+19725552222@gw1.example.net"
    assert c.has_param("unknownparam") and c.sip_uri.param("unknownparam") is None


def test_rfc4475_cparam02_unknownparam_stays_in_the_uri(h: Harness) -> None:
    h.ok(torture("cparam02"), udp_from("192.0.2.30"))
    resp = h.ok(register(to="sip:watson@example.com", call_id="fetch", supported=None), UDP)
    (c,) = resp.contacts
    assert c.uri_text == "sip:+19725552222@gw1.example.net;unknownparam"
    assert not c.has_param("unknownparam")


def test_rfc4475_regescrt_escaped_route_stays_inside_the_contact_uri(h: Harness) -> None:
    res = h.send(torture("regescrt"), udp_from("192.0.2.31"))
    assert res.response.status == 200
    (b,) = h.store.lookup("user@example.com", NOW)
    assert b.contact_uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert len(b.path) == 1 and "sip.example.com" not in b.path[0]  # only our implicit-flow Path
    (c,) = wire(res.response).contacts
    assert c.uri_text == b.contact_uri
    assert res.response.header("Route") is None


def test_rfc4475_escnull_aor_keeps_nul_and_binds_two_contacts(h: Harness) -> None:
    res = h.send(torture("escnull"), udp_from("192.0.2.32"))
    assert res.response.status == 200
    bindings = h.store.lookup("null-\x00-null@example.com", NOW)
    assert sorted(b.contact_uri for b in bindings) == [
        "sip:%00%00@host5.example.com",
        "sip:%00@host5.example.com",
    ]
    assert h.store.lookup("null-@example.com", NOW) == []


def test_rfc4475_unksm2_non_sip_to_is_400(h: Harness) -> None:
    res = h.send(torture("unksm2"), udp_from("192.0.2.21"))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_rfc4475_regbadct_headers_outside_brackets_is_400(h: Harness) -> None:
    res = h.send(torture("regbadct"), udp_from("192.0.2.33"))
    assert res.response.status == 400
    assert h.store.count() == 0


def test_rfc4475_regaut01_unknown_scheme_is_ignored_by_a_non_authenticating_registrar(
    h: Harness,
) -> None:
    """REG3261-03: the registrar itself does no auth; the REGISTER (a query) succeeds."""
    tcp = Flow(Transport.TCP, (SERVER, 5060), ("192.0.2.253", 40000), 9)
    res = h.send(torture("regaut01"), tcp)
    assert res.response.status == 200 and res.changes == []


# -------------------------------------------------- RFC 5626 §9.2, RFC 7118 §8.1, RFC 3327 §5


def example(name: str) -> Request:
    msg = parse_message((RFC_EXAMPLES / name).read_bytes())
    assert isinstance(msg, Request)
    return msg


def test_rfc5626_9_2_bob_registers_directly_over_tcp(h: Harness) -> None:
    """msg09 sent straight to us (we are EP1 and the registrar): OB-CS-01."""
    bob_flow = Flow(Transport.TCP, (SERVER, 5060), ("192.0.2.2", 49152), 11)
    res = h.send(example("rfc5626-9.2-msg09-REGISTER-bob-to-ep1.txt"), bob_flow)
    resp = wire(res.response)
    assert resp.status == 200
    assert resp.header("Require") == "outbound" and resp.header("Flow-Timer") == "120"
    (c,) = resp.contacts
    assert c.uri_text == "sip:bob@192.0.2.2;transport=tcp"
    assert c.reg_id == 1 and c.expires == 3600
    assert c.instance == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    (p,) = resp.paths
    assert p.sip_uri.has_param("ob") and h.codec.decode(p.sip_uri.user or "") == bob_flow


def test_rfc5626_9_2_registrar_behind_two_edge_proxies(h: Harness) -> None:
    """msg10 and msg14: relayed by EP1 and EP2 with ob Paths; reg-id 1 and 2 side by side."""
    ep1 = Flow(Transport.TCP, (SERVER, 5060), ("198.51.100.1", 40000), 21)
    ep2 = Flow(Transport.TCP, (SERVER, 5060), ("198.51.100.2", 40000), 22)
    r1 = h.send(example("rfc5626-9.2-msg10-REGISTER-ep1-to-registrar.txt"), ep1)
    resp1 = wire(r1.response)
    assert resp1.status == 200 and resp1.header("Require") == "outbound"
    assert resp1.header("Path") == "<sip:VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib@ep1.example.com;lr;ob>"
    r2 = h.send(example("rfc5626-9.2-msg14-REGISTER-ep2-to-registrar.txt"), ep2)
    resp2 = wire(r2.response)
    assert sorted(c.reg_id or 0 for c in resp2.contacts) == [1, 2]
    paths = {b.reg_id: b.path for b in h.store.lookup("bob@example.com", NOW)}
    assert paths == {
        1: ("<sip:VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib@ep1.example.com;lr;ob>",),
        2: ("<sip:wazHDLdIMtUg6r0I/oRZ15zx3zHE1w1Z@ep2.example.com;lr;ob>",),
    }
    assert all(b.flow_token is None for b in h.store.lookup("bob@example.com", NOW))


def test_rfc7118_8_1_websocket_register_gets_outbound_and_gruus(h: Harness) -> None:
    res = h.send(example("rfc7118-8.1-F3-REGISTER.txt"), WSS)
    resp = wire(res.response)
    assert resp.status == 200
    assert resp.header("Require") == "outbound"
    (c,) = resp.contacts
    assert c.uri_text == "sip:alice@df7jal23ls0d.invalid;transport=ws"
    assert c.reg_id == 1 and c.expires == 3600
    assert c.instance == '"<urn:uuid:f81-7dec-14a06cf1>"'
    assert c.param("pub-gruu") == '"sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1"'
    temp = parse_sip_uri((c.param("temp-gruu") or "")[1:-1])
    assert temp.host == "example.com" and temp.param("gr") == ""
    (b,) = h.store.lookup("alice@example.com", NOW)
    assert b.transport == "wss" and b.flow_token == h.codec.encode(WSS)
    assert parse_sip_uri(b.path[0][1:-1]).transport == "ws"


def test_rfc3327_5_registrar_stores_and_returns_the_path(h: Harness) -> None:
    p3 = Flow(Transport.UDP, (SERVER, 5060), ("203.0.113.15", 5060), 0)
    res = h.send(example("rfc3327-5-F3-REGISTER-P3-to-registrar.txt"), p3)
    resp = wire(res.response)
    assert resp.status == 200
    assert resp.header("Path") == "<sip:P3.EXAMPLEHOME.COM;lr>, <sip:P1.EXAMPLEVISITED.COM;lr>"
    assert [(c.uri_text, c.expires) for c in resp.contacts] == [("sip:UA1@192.0.2.4", 3600)]
    (b,) = h.store.lookup("UA1@examplehome.com", NOW)
    assert b.path == ("<sip:P3.EXAMPLEHOME.COM;lr>", "<sip:P1.EXAMPLEVISITED.COM;lr>")


# ------------------------------------------------------------------------- robustness


_header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=60
)
_contact_params = st.lists(
    st.sampled_from(
        [
            ";reg-id=1",
            ";reg-id=2",
            ";reg-id=0",
            ";reg-id=x",
            ";expires=0",
            ";expires=30",
            ";expires=99999999999",
            f";+sip.instance={INSTANCE}",
            ';+sip.instance="<urn:uuid:other>"',
            ";q=0.3",
            ";q=7",
            ';pub-gruu="sip:forged@example.com;gr=x"',
            ";ob",
        ]
    ),
    max_size=4,
).map("".join)
_contacts = st.lists(
    st.builds(
        "{}{}".format,
        st.sampled_from(
            [
                "<sip:a@192.0.2.1>",
                "<sip:a@192.0.2.1;transport=tcp>",
                "<sips:b@[2001:db8::1]:5061>",
                "<tel:+1555>",
                "*",
                "sip:c@192.0.2.3",
            ]
        ),
        _contact_params,
    ),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(
    contacts=_contacts,
    expires=st.one_of(st.none(), st.integers(0, 2**40).map(str), _header_text),
    supported=st.sampled_from([None, "path", "outbound", "path, outbound, gruu", "gruu"]),
    vias=st.integers(1, 3),
    path=st.sampled_from(
        [None, "<sip:e.example.net;lr;ob>", "<sip:e.example.net;lr>", "<tel:1>", "junk"]
    ),
    require=st.sampled_from([None, "path", "outbound, gruu", "nonsense"]),
    cseq=st.integers(1, 3),
)
def test_handle_never_raises_and_failures_change_nothing(
    contacts: list[str],
    expires: str | None,
    supported: str | None,
    vias: int,
    path: str | None,
    require: str | None,
    cseq: int,
) -> None:
    """Bad or odd input gives a response, never an exception; an error response leaves the
    store as it was; a 200 lists exactly the live bindings and says Require: outbound only
    when an outbound binding was touched (OB-REG-10)."""
    h = Harness()
    h.ok(register("<sip:seed@192.0.2.200>", call_id="seed", cseq=2))
    before = h.store.all()
    try:
        req = register(
            *contacts,
            expires=expires,
            supported=supported,
            vias=vias,
            path=path,
            require=require,
            call_id="seed" if cseq == 1 else "fuzz",
            cseq=cseq,
        )
    except ParseError:
        return  # the parser refused the message itself
    res = h.send(req, TCP1 if vias == 1 else PROXY)
    resp = wire(res.response)
    if resp.status != 200:
        assert res.changes == [] and h.store.all() == before
        return
    listed = sorted(c.uri_text for c in resp.contacts)
    assert listed == sorted(b.contact_uri for b in h.store.lookup(AOR, NOW))
    touched_outbound = any(isinstance(c, Put) and c.binding.outbound for c in res.changes) or any(
        isinstance(c, Delete) and c.key.kind == "instance" for c in res.changes
    )
    if touched_outbound:
        assert resp.header("Require") == "outbound"
    if resp.header("Require") is not None:
        assert "outbound" in (supported or "")


@settings(max_examples=200, deadline=None)
@given(contact=_header_text, expires=_header_text, path=_header_text, supported=_header_text)
def test_handle_never_raises_on_arbitrary_header_text(
    contact: str, expires: str, path: str, supported: str
) -> None:
    h = Harness()
    try:
        req = register(
            contact or "<sip:a@192.0.2.1>",
            expires=expires or None,
            path=path or None,
            supported=supported or None,
            vias=2 if path else 1,
        )
    except ParseError:
        return
    res = h.send(req)
    if res.response.status != 200:
        assert res.changes == [] and h.store.count() == 0
    wire(res.response)
