"""The registrar's fast 200 OK is ``make_response``'s 200 OK (issue 15).

``Registrar.handle`` builds its 200 OK in one pass (``registrar._ok_response``) instead of
calling ``sipserver.sip.make_response``. These tests hold the two to the same message, byte for
byte, for every REGISTER among the RFC examples in ``tests/vectors/rfc-examples/`` and for
variants of them that stress the copy rules of RFC 3261 §8.2.6.2: Via, From, To, Call-ID and
CSeq copied as received (every Via line, in order, compact forms kept), a To tag added only when
To has none.

The headers the registrar adds (RFC 3261 §10.3 step 8 Contact and Date, RFC 5626 §6 Require and
Flow-Timer, RFC 3327 §5 Path, Supported) are checked by name against the rules here and then
handed to ``make_response`` as they are; their values are the business of test_registrar.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.registrar import LocationStore, Registrar, RegistrarSettings
from sipserver.sip import Request, Response, parse_message, parse_sip_uri
from sipserver.sip.build import RESPONSE_COPIED, make_response
from sipserver.sip.headers import header_key

FOLDER = Path(__file__).resolve().parents[1] / "vectors" / "rfc-examples"
SERVER = "203.0.113.5"
NOW = 1_700_000_000.25
LOCAL = {
    Transport.UDP: parse_sip_uri(f"sip:{SERVER}:5060"),
    Transport.TCP: parse_sip_uri(f"sip:{SERVER}:5060;transport=tcp"),
    Transport.WSS: parse_sip_uri(f"sip:{SERVER}:443;transport=ws"),
}


def _flow(transport: Transport, port: int) -> Flow:
    return Flow(transport, (SERVER, LOCAL[transport].port or 5060), ("192.0.2.2", port), 7)


# Each example REGISTER (NOTES.md there: hosts and addresses are placeholders), the flow it
# arrives on here, and the headers the 200 OK adds, in order.
OB = ["Require", "Flow-Timer", "Contact", "Path", "Supported", "Date"]  # RFC 5626 §6 + §5.1
EXAMPLES: dict[str, tuple[Flow, list[str]]] = {
    # Bob straight to us (we are the edge proxy and the registrar): outbound, our own ob Path.
    "rfc5626-9.2-msg09-REGISTER-bob-to-ep1.txt": (_flow(Transport.TCP, 49152), OB),
    "rfc5626-9.2-msg13-REGISTER-bob-to-ep2-reg-id-2.txt": (_flow(Transport.TCP, 49153), OB),
    # Relayed by an edge proxy whose Path carries ob: outbound, the received Path echoed.
    "rfc5626-9.2-msg10-REGISTER-ep1-to-registrar.txt": (_flow(Transport.TCP, 40001), OB),
    "rfc5626-9.2-msg14-REGISTER-ep2-to-registrar.txt": (_flow(Transport.TCP, 40002), OB),
    # RFC 3327 §5: a plain UA over UDP (no Path at all), then the Path of one and two proxies.
    "rfc3327-5-F1-REGISTER-UA1-to-P1.txt": (
        _flow(Transport.UDP, 5060),
        ["Contact", "Supported", "Date"],
    ),
    "rfc3327-5-F2-REGISTER-P1-to-P3.txt": (
        _flow(Transport.UDP, 5060),
        ["Contact", "Path", "Supported", "Date"],
    ),
    "rfc3327-5-F3-REGISTER-P3-to-registrar.txt": (
        _flow(Transport.UDP, 5060),
        ["Contact", "Path", "Supported", "Date"],
    ),
    # RFC 7118 §8.1: a WebSocket UA with outbound and GRUU.
    "rfc7118-8.1-F3-REGISTER.txt": (_flow(Transport.WSS, 50000), OB),
}


def register_files() -> list[str]:
    """Every REGISTER among the examples, found by its request line (so a new one is noticed)."""
    return sorted(p.name for p in FOLDER.glob("*.txt") if p.read_bytes().startswith(b"REGISTER "))


def registrar() -> Registrar:
    return Registrar(
        RegistrarSettings(),
        LocationStore(),
        FlowTokenCodec(bytes(range(32))),
        is_local_domain=lambda host: host in ("example.com", "examplehome.com"),
    )


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def fast_and_reference(data: bytes, flow: Flow) -> tuple[Response, Response, list[str]]:
    """The registrar's 200 OK for ``data`` and what ``make_response`` builds for the same
    request (parsed afresh, so no view the registrar made can help it) with the same To tag and
    the same added headers. Also the names of the added headers."""
    req = parse_request(data)
    fast = registrar().handle(req, flow, now=NOW, local_uri=LOCAL[flow.transport]).response
    assert fast.status == 200, fast.reason

    fresh = parse_request(data)
    copied = sum(1 for h in fresh.headers if h.key in RESPONSE_COPIED)
    added = fast.headers[copied:]
    tag = fast.to.param("tag")
    assert tag is not None
    reference = make_response(fresh, 200, to_tag=tag, headers=[(h.name, h.value) for h in added])
    return fast, reference, [h.name for h in added]


def assert_same(fast: Response, reference: Response) -> None:
    assert [(h.name, h.key, h.value) for h in fast.headers] == [
        (h.name, h.key, h.value) for h in reference.headers
    ]
    assert (fast.status, fast.reason, fast.body) == (reference.status, reference.reason, b"")
    assert fast.to_bytes() == reference.to_bytes()


def test_every_example_register_is_covered() -> None:
    assert register_files() == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rfc3261_8_2_6_2_fast_200_equals_make_response(name: str) -> None:
    """RFC 3261 §8.2.6.2 (and §10.3 step 8): the fast 200 OK is byte for byte the message
    ``make_response`` builds, with a new To tag (the examples' To has none)."""
    data = (FOLDER / name).read_bytes()
    flow, added_names = EXAMPLES[name]
    fast, reference, added = fast_and_reference(data, flow)
    assert_same(fast, reference)
    assert added == added_names
    assert re.fullmatch(r"[0-9a-f]{12}", fast.to.param("tag") or "")
    # What a UA reads off the wire: the copied headers exactly as it sent them.
    wire = parse_message(fast.to_bytes())
    req = parse_request(data)
    for key in ("via", "from", "call-id", "cseq"):
        assert wire.header_values(key) == req.header_values(key)


# Variants of the examples that take the copy rules off the beaten path.


def _compact(text: str) -> str:
    """RFC 3261 §7.3.3 compact forms for the copied headers (and a few others)."""
    for long, short in (
        ("Via", "v"),
        ("From", "f"),
        ("To", "t"),
        ("Call-ID", "i"),
        ("Contact", "m"),
        ("Supported", "k"),
        ("Content-Length", "l"),
    ):
        text = re.sub(rf"(?m)^{long}:", f"{short}:", text)
    return text


def _tagged_to(text: str) -> str:
    return re.sub(r"(?m)^(To:[^\r]*)", r"\1;tag=uas-chose-this", text)


def _tag_in_to_uri(text: str) -> str:
    """A ``tag`` inside <...> is a URI parameter, not the To tag: a tag is still added."""

    def bracket(m: re.Match[str]) -> str:
        display, uri = m.group(1) or "", m.group(2)
        return f"To: {display}<{uri};tag=in-uri>"

    return re.sub(r"(?m)^To: (?:([^<\r]*)<)?(sip:[^>\r]*)>?", bracket, text)


def _vias_in_one_line(text: str) -> str:
    """Several Via values on one comma-separated line (RFC 3261 §7.3.1): kept as one line."""
    lines = text.split("\r\n")
    vias = [line[len("Via: ") :] for line in lines if line.startswith("Via: ")]
    if len(vias) < 2:
        return text
    first = next(i for i, line in enumerate(lines) if line.startswith("Via: "))
    rest = [line for line in lines if not line.startswith("Via: ")]
    rest.insert(first, "Via: " + ",\r\n  ".join(vias))
    return "\r\n".join(rest)


def _odd_spacing(text: str) -> str:
    """Header names in odd case with space before the colon, a folded From (RFC 3261 §7.3.1)."""
    text = re.sub(r"(?m)^Via: ", "VIA  :  ", text)
    text = re.sub(r"(?m)^CSeq: ", "cseq:", text)
    return re.sub(r"(?m)^From: (.*?)(;tag=)", r"From: \1\r\n   \2", text)


VARIANTS = {
    "compact": _compact,
    "tagged-to": _tagged_to,
    "tag-in-to-uri": _tag_in_to_uri,
    "vias-in-one-line": _vias_in_one_line,
    "odd-spacing": _odd_spacing,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rfc3261_8_2_6_2_fast_200_equals_make_response_for_variants(
    name: str, variant: str
) -> None:
    """RFC 3261 §8.2.6.2 on reworded copies of the examples: compact header names, a To that
    already has a tag (kept, none added), a ``tag`` URI parameter inside To's <> (a tag still
    added, §19.1.1 / §20.39), Via values on one line, odd spacing and a folded From."""
    text = VARIANTS[variant]((FOLDER / name).read_bytes().decode())
    data = text.encode()
    assert data != (FOLDER / name).read_bytes() or variant == "vias-in-one-line"
    flow, added_names = EXAMPLES[name]
    fast, reference, added = fast_and_reference(data, flow)
    assert_same(fast, reference)
    assert [header_key(n) for n in added] == [header_key(n) for n in added_names]
    to_tag = fast.to.param("tag")
    if variant == "tagged-to":
        assert to_tag == "uas-chose-this"
        assert fast.header_values("to") == parse_request(data).header_values("to")
    else:
        assert to_tag is not None and re.fullmatch(r"[0-9a-f]{12}", to_tag)
