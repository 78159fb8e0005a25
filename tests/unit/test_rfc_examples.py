"""Example messages of RFC 3327 §5, RFC 5626 §9 and RFC 7118 §8 through the parser
(issue "SIP message core"; OB-REG-*, OB-EP-15 Flow-Timer, RFC 5627 GRUU parameters).

The messages are ``tests/vectors/rfc-examples/*.txt`` (see NOTES.md there: CRLF line ends,
RFC line folding kept on purpose, placeholders).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.sip import (
    Message,
    ParseError,
    Request,
    Response,
    SipURI,
    parse_message,
    parse_sip_uri,
)
from sipserver.sip.headers import unquote_value

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FOLDER = VECTORS / "rfc-examples"

# RFC 7118 §8.1 F1/F2 are the HTTP WebSocket handshake, not SIP: the parser must refuse them.
HTTP_HANDSHAKE = {"rfc7118-8.1-F1-websocket-handshake-GET.txt", "rfc7118-8.1-F2-websocket-handshake-101.txt"}


def sip_files() -> list[str]:
    names = sorted(p.name for p in FOLDER.glob("*.txt") if p.name not in HTTP_HANDSHAKE)
    assert names, f"no RFC example messages in {FOLDER}"  # an empty parametrize would only skip
    return names


def load(name: str) -> bytes:
    return (FOLDER / name).read_bytes()


def find(prefix: str) -> Message:
    """The parsed example whose file name starts with ``prefix``."""
    (path,) = FOLDER.glob(f"{prefix}*.txt")
    return parse_message(path.read_bytes())


# --------------------------------------------------------------------------------- all files


def test_folder_holds_the_examples() -> None:
    files = sip_files()
    assert len(files) >= 30
    for group in ("rfc3327-5-", "rfc5626-9.", "rfc7118-8."):
        assert any(f.startswith(group) for f in files), group


@pytest.mark.parametrize("name", sip_files())
def test_every_example_parses_and_every_view_reads(name: str) -> None:
    msg = parse_message(load(name))
    _ = (msg.vias, msg.cseq, msg.from_, msg.to, msg.call_id, msg.max_forwards, msg.expires,
         msg.supported, msg.require, msg.flow_timer)
    for na in (msg.from_, msg.to, *msg.routes, *msg.record_routes, *msg.paths):
        assert isinstance(na.uri, SipURI)
    for c in msg.contacts:
        assert isinstance(c.uri, SipURI)
        _ = (c.expires, c.q, c.instance_id, c.reg_id)
    if isinstance(msg, Request):
        assert isinstance(msg.uri, SipURI)
        assert msg.cseq.method == msg.method


@pytest.mark.parametrize("name", sip_files())
def test_every_example_round_trips(name: str) -> None:
    """Byte for byte. The RFC 7118 examples elide Content-Length (WebSocket frames delimit
    them); writing one out adds ``Content-Length: 0`` as its last header and changes nothing
    else."""
    data = load(name)
    msg = parse_message(data)
    expected = data
    if not msg.has_header("content-length"):
        assert data.endswith(b"\r\n\r\n")
        expected = data[:-2] + b"Content-Length: 0\r\n\r\n"
    assert msg.to_bytes() == expected
    msg.headers  # noqa: B018 - from the header list now
    assert msg.to_bytes() == expected
    assert parse_message(expected).to_bytes() == expected


@pytest.mark.parametrize("name", sorted(HTTP_HANDSHAKE))
def test_websocket_handshake_is_not_sip(name: str) -> None:
    with pytest.raises(ParseError):
        parse_message(load(name))


def test_keepalives_are_not_messages() -> None:
    """RFC 5626 §3.5.1: CRLF keep-alives are the framer's business; alone they are no message."""
    for name in ("rfc5626-3.5.1-crlf-ping.bin", "rfc5626-3.5.1-crlf-pong.bin"):
        with pytest.raises(ParseError):
            parse_message(load(name))


# --------------------------------------------------------------------------------- RFC 3327


def test_rfc3327_path_lists() -> None:
    """RFC 3327 §5: each proxy adds its Path on top; the registrar echoes the list."""
    assert find("rfc3327-5-F1").paths == []
    f2 = find("rfc3327-5-F2")
    assert [str(p.uri) for p in f2.paths] == ["sip:P1.EXAMPLEVISITED.COM;lr"]
    f3 = find("rfc3327-5-F3")
    assert [str(p.uri) for p in f3.paths] == ["sip:P3.EXAMPLEHOME.COM;lr", "sip:P1.EXAMPLEVISITED.COM;lr"]
    assert all(p.sip_uri.lr for p in f3.paths)
    assert len(f3.vias) == 3 and f3.max_forwards == 68
    f4 = find("rfc3327-5-F4")
    assert isinstance(f4, Response) and f4.status == 200
    assert [str(p.uri) for p in f4.paths] == [str(p.uri) for p in f3.paths]
    assert f4.supported == {"path"}
    assert f4.contacts[0].expires == 3600


def test_rfc3327_invite_routed_by_path() -> None:
    f5 = find("rfc3327-5-F5")
    assert [str(r.uri) for r in f5.routes] == ["sip:P3.EXAMPLEHOME.COM;lr", "sip:P1.EXAMPLEVISITED.COM;lr"]
    assert [str(r.uri) for r in f5.record_routes] == ["sip:203.0.113.20;lr"]


# --------------------------------------------------------------------------------- RFC 5626


def test_rfc5626_register_instance_and_reg_id() -> None:
    """RFC 5626 §4.1/§4.2: +sip.instance kept as sent, reg-id, Supported: outbound."""
    msg09 = find("rfc5626-9.2-msg09")
    assert msg09.supported == {"path", "outbound"}
    c = msg09.contacts[0]
    assert c.instance == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert c.instance_id == "urn:uuid:00000000-0000-1000-8000-aabbccddeeff"
    assert c.reg_id == 1
    assert c.sip_uri.transport == "tcp"
    assert [str(r.uri) for r in msg09.routes] == ["sip:ep1.example.com;lr"]
    msg13 = find("rfc5626-9.2-msg13")
    assert msg13.contacts[0].reg_id == 2
    assert msg13.contacts[0].instance_id == c.instance_id


def test_rfc5626_edge_proxy_adds_path_with_flow_token() -> None:
    """RFC 5626 §5.1: the edge proxy's Path carries the flow token as user part and ';ob'."""
    msg10 = find("rfc5626-9.2-msg10")
    assert len(msg10.vias) == 2 and msg10.max_forwards == 69
    (path,) = msg10.paths
    assert path.sip_uri.has_param("ob") and path.sip_uri.lr
    assert path.sip_uri.user == "VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib"
    msg14 = find("rfc5626-9.2-msg14")
    assert msg14.paths[0].sip_uri.user == "wazHDLdIMtUg6r0I/oRZ15zx3zHE1w1Z"
    assert msg14.contacts[0].reg_id == 2


def test_rfc5626_registrar_ok_and_flow_timer() -> None:
    """RFC 5626 §6 and §4.4.1 (OB-EP-15): Require: outbound, Flow-Timer."""
    msg11 = find("rfc5626-9.2-msg11")
    assert isinstance(msg11, Response)
    assert msg11.require == {"outbound"}
    assert msg11.flow_timer is None
    assert msg11.contacts[0].expires == 3600 and msg11.contacts[0].reg_id == 1
    msg12 = find("rfc5626-9.2-msg12")
    assert msg12.flow_timer == 150
    assert msg12.require == {"outbound"} and msg12.supported == {"path", "outbound"}
    assert len(msg12.vias) == 1


def test_rfc5626_430_flow_failed() -> None:
    msg = find("rfc5626-9.3-430")
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (430, "Flow Failed")
    assert msg.to_tag == "aa1e45" and msg.cseq.method == "INVITE"


def test_rfc5626_incoming_invite_double_record_route() -> None:
    """RFC 5626 §9.3: the INVITE to the UA carries the edge proxy's Record-Route (flow token)
    above the authoritative proxy's."""
    to_ep1 = find("rfc5626-9.3-INVITE-proxy-to-ep1")
    (route,) = to_ep1.routes
    assert route.sip_uri.user == "VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib" and route.sip_uri.has_param("ob")
    at_bob = find("rfc5626-9.3-INVITE-ep1-to-bob")
    assert [r.sip_uri.user for r in at_bob.record_routes] == ["VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib", None]
    assert len(at_bob.vias) == 3
    retry = find("rfc5626-9.3-INVITE-proxy-to-ep2-retry")
    assert retry.routes[0].sip_uri.user == "wazHDLdIMtUg6r0I/oRZ15zx3zHE1w1Z"
    assert retry.vias[0].branch != to_ep1.vias[0].branch


def test_rfc5626_outgoing_invite_contact_ob() -> None:
    """RFC 5626 §5.3 / §9.5: a Contact with ';ob' marks an outbound flow."""
    out = find("rfc5626-9.5-INVITE-bob-to-ep2")
    assert out.contacts[0].sip_uri.has_param("ob")
    assert out.supported == {"outbound"}
    proxied = find("rfc5626-9.5-INVITE-ep2-to-proxy")
    assert proxied.record_routes[0].sip_uri.user == "3yJEbr1GYZK9cPYk5Snocez6DzO7w+AX"


# --------------------------------------------------------------------------------- RFC 7118


def test_rfc7118_register_over_websocket() -> None:
    """RFC 7118 §8.1: WSS Via with a .invalid host, a folded Contact with reg-id/instance."""
    reg = find("rfc7118-8.1-F3")
    assert isinstance(reg, Request)
    via = reg.vias[0]
    assert (via.transport, via.host, via.port) == ("WSS", "df7jal23ls0d.invalid", None)
    assert reg.supported == {"path", "outbound", "gruu"}
    c = reg.contacts[0]
    assert c.sip_uri.transport == "ws"
    assert c.reg_id == 1
    assert c.instance == '"<urn:uuid:f81-7dec-14a06cf1>"'
    assert c.instance_id == "urn:uuid:f81-7dec-14a06cf1"  # opaque URN, not a valid UUID


def test_rfc7118_gruu_params() -> None:
    """RFC 5627 §5: the 200 OK Contact carries pub-gruu and temp-gruu."""
    ok = find("rfc7118-8.1-F4")
    c = ok.contacts[0]
    assert unquote_value(c.param("pub-gruu") or "") == "sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1"
    temp = unquote_value(c.param("temp-gruu") or "")
    assert temp == "sip:87ash54=3dd.98a@example.com;gr"
    assert c.expires == 3600
    pub = c.param("pub-gruu")
    assert pub is not None
    assert parse_sip_uri(unquote_value(pub)).param("gr") == "urn:uuid:f81-7dec-14a06cf1"
    assert parse_sip_uri(temp).has_param("gr") and parse_sip_uri(temp).param("gr") == ""


def test_rfc7118_contact_folded_inside_brackets() -> None:
    """RFC 7118 §8.2 F1 prints the Contact URI folded before ';gr'. Unfolding leaves a blank
    before the ';' inside <>, which the parser tolerates (blanks next to ';' are dropped)."""
    inv = find("rfc7118-8.2-F1-")
    uri = inv.contacts[0].sip_uri
    assert str(uri) == "sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1;ob"
    assert uri.param("gr") == "urn:uuid:f81-7dec-14a06cf1" and uri.has_param("ob")


def test_rfc7118_folded_record_route_and_via() -> None:
    f3 = find("rfc7118-8.2-F3")
    assert [r.sip_uri.transport for r in f3.record_routes] == ["udp", "ws"]
    assert f3.record_routes[1].sip_uri.user == "h7kjh12s"
    f4 = find("rfc7118-8.2-F4")
    assert f4.vias[0].received == "192.0.2.10"
    assert f4.vias[0].branch == "z9hG4bKhjhjqw32c"


def test_rfc7118_route_with_trailing_comma() -> None:
    """RFC 7118 §8.2 F6 has a trailing comma after the last Route value (an RFC typo). The
    parser is tolerant: an empty list element is skipped."""
    ack = find("rfc7118-8.2-F6")
    assert [str(r.uri) for r in ack.routes] == [
        "sip:h7kjh12s@proxy.example.com:443;transport=ws;lr",
        "sip:proxy.example.com;transport=udp;lr",
    ]
    assert ack.cseq.method == "ACK"


def test_rfc7118_100_trying() -> None:
    trying = find("rfc7118-8.2-F2")
    assert isinstance(trying, Response) and (trying.status, trying.reason) == (100, "Trying")
    assert trying.to_tag is None
