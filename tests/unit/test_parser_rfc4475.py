"""RFC 4475 torture messages through the parser (issue "SIP message core").

The messages are the byte-exact files in ``tests/vectors/rfc4475`` (see its README.md); the
manifest says which are valid and what a proxy/registrar should do. ``POLICY`` below is this
parser's answer for each one; a message the manifest lists but ``POLICY`` does not fails the
suite, so a new vector forces a decision.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipserver.sip import (
    AbsoluteURI,
    Message,
    ParseError,
    Request,
    Response,
    SipURI,
    make_response,
    parse_message,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FOLDER = VECTORS / "rfc4475"


def load(name: str) -> bytes:
    return (FOLDER / f"{name}.dat").read_bytes()


def parse(name: str) -> Message:
    return parse_message(load(name))


def manifest() -> dict[str, dict[str, str]]:
    with open(FOLDER / "manifest.tsv", newline="", encoding="utf-8") as f:
        return {row["name"]: row for row in csv.DictReader(f, delimiter="\t")}


# --------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Accept:
    """Parses, and every typed view works."""

    why: str = ""


@dataclass(frozen=True)
class Reject:
    """parse_message raises ParseError with this status."""

    status: int
    why: str = ""


@dataclass(frozen=True)
class RejectView:
    """Parses (the header is only read when needed), and reading ``view`` raises ParseError."""

    view: str
    status: int
    why: str = ""


POLICY: dict[str, Accept | Reject | RejectView] = {
    # §3.1.1 valid messages
    "wsinv": Accept(),
    "intmeth": Accept(),
    "esc01": Accept(),
    "escnull": Accept(),
    "esc02": Accept(),
    "lwsdisp": Accept("the RFC asks to accept the known grammar bug"),
    "longreq": Accept(),
    "dblreq": Accept("the trailing octets of the datagram are dropped"),
    "semiuri": Accept(),
    "transports": Accept(),
    "mpart01": Accept(),
    "unreason": Accept(),
    "noreason": Accept(),
    # §3.1.2 invalid messages
    "badinv01": Reject(400, "empty Via parameter"),
    "clerr": Reject(400, "Content-Length beyond the datagram"),
    "ncl": Reject(400, "negative Content-Length"),
    "scalar02": Reject(400, "CSeq above 2^32-1"),
    "scalarlg": Reject(400, "a response: the runtime drops it"),
    "quotbal": Reject(400, "unterminated quoted display name"),
    "ltgtruri": Reject(400, "Request-URI in <>"),
    "lwsruri": Reject(400, "space inside the Request-URI"),
    "lwsstart": Reject(400, "several spaces in the request line"),
    "trws": Reject(400, "trailing space after the version"),
    "escruri": Reject(400, "escaped headers in the Request-URI (RFC 3261 §19.1.5)"),
    "baddate": Accept(
        "tolerated: a proxy/registrar does not use Date, and RFC 4475 §3.1.2.12 says an element "
        "that does not use it should not reject the request for it"
    ),
    "regbadct": RejectView("contacts", 400, "addr-spec Contact with '?headers' (the registrar reads it)"),
    "badaspec": Reject(400, "spaces inside <> in To"),
    "baddn": Reject(400, "unquoted non-token display name"),
    "badvers": Reject(505, "SIP/7.0"),
    "mismatch01": Reject(400, "CSeq method differs from the request method"),
    "mismatch02": Reject(
        400, "CSeq mismatch; the RFC prefers 501 for an unknown method but allows 400"
    ),
    "bigcode": Reject(400, "status code above 699: a response, the runtime drops it"),
    # §3.2 transaction layer
    "badbranch": Accept(
        "tolerated: a branch that is only the magic cookie parses; matching it is the "
        "transaction layer's business (RFC 4475 §3.2.1)"
    ),
    # §3.3 application layer
    "insuf": Reject(400, "no Call-ID, From, To"),
    "unkscm": Accept("unknown Request-URI scheme parses as AbsoluteURI; 416 is the proxy's"),
    "novelsc": Accept("soap.beep Request-URI parses as AbsoluteURI"),
    "unksm2": Accept("To/From/Contact with other schemes parse as AbsoluteURI"),
    "bext01": Accept("Require/Proxy-Require tags are the proxy's business (420)"),
    "invut": Accept(),
    "regaut01": Accept(),
    "multi01": Reject(400, "single-valued headers repeated"),
    "mcl01": Reject(400, "two Content-Length headers"),
    "bcast": Accept("a response; forwarding is the proxy's decision"),
    "zeromf": Accept("Max-Forwards 0 is the proxy's business (483)"),
    "cparam01": Accept(),
    "cparam02": Accept(),
    "regescrt": Accept(),
    "sdp01": Accept(),
    "inv2543": Accept("RFC 2543 style over UDP: body is the rest of the datagram"),
}

VIEWS = (
    "vias", "cseq", "from_", "to", "contacts", "routes", "record_routes", "paths",
    "max_forwards", "expires", "supported", "require", "proxy_require", "call_id",
    "from_tag", "to_tag", "flow_timer",
)


def names() -> list[str]:
    return sorted(POLICY)


def read_views(msg: Message, skip: str = "") -> None:
    for view in VIEWS:
        if view != skip:
            getattr(msg, view)
    if isinstance(msg, Request) and skip != "uri":
        msg.uri  # noqa: B018
    for na in (msg.from_, msg.to, *msg.routes, *msg.record_routes, *msg.paths):
        na.uri  # noqa: B018
    if skip != "contacts":
        for c in msg.contacts:
            if not c.star:
                _ = (c.uri, c.expires, c.q, c.instance_id, c.reg_id)


def test_policy_covers_the_manifest() -> None:
    """Every vector has a decision here, and the manifest's valid ones are all accepted."""
    rows = manifest()
    assert set(rows) == set(POLICY)
    for name, row in rows.items():
        if row["valid_or_invalid"].startswith("valid"):
            assert isinstance(POLICY[name], Accept), name


@pytest.mark.parametrize("name", names())
def test_vector_outcome(name: str) -> None:
    data = load(name)
    policy = POLICY[name]
    if isinstance(policy, Reject):
        with pytest.raises(ParseError) as err:
            parse_message(data)
        assert err.value.status == policy.status, err.value
        assert err.value.reason
        return
    msg = parse_message(data)
    if isinstance(policy, RejectView):
        read_views(msg, skip=policy.view)
        with pytest.raises(ParseError) as err:
            getattr(msg, policy.view)
        assert err.value.status == policy.status
    else:
        read_views(msg)


@pytest.mark.parametrize("name", names())
def test_accepted_vectors_serialise_as_received(name: str) -> None:
    """Untouched, a message is written back byte for byte (the exceptions are the two whose
    datagram is not one exact message: dblreq's trailing octets, inv2543's missing
    Content-Length)."""
    if isinstance(POLICY[name], Reject):
        return
    data = load(name)
    msg = parse_message(data)
    out = msg.to_bytes()
    if name == "dblreq":
        assert out == data[: data.index(b"\r\n\r\n") + 4]
    elif name == "inv2543":
        head, _, body = data.partition(b"\r\n\r\n")
        assert out == head + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    else:
        assert out == data
    # Once the header list has been handed out, the message is written from it: same bytes.
    msg.headers  # noqa: B018
    assert msg.to_bytes() == out


def test_errors_after_the_start_line_carry_the_message() -> None:
    """The runtime answers 400 with the request's Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6)."""
    with pytest.raises(ParseError) as err:
        parse("mismatch01")
    msg = err.value.message
    assert isinstance(msg, Request)
    resp = make_response(msg, err.value.status, to_tag="t1")
    assert resp.header("call-id") == "mismatch01.dj0234sxdfl3"
    assert resp.status == 400 and resp.to_tag == "t1"


def test_bad_version_gets_505_with_a_message_to_answer() -> None:
    """RFC 4475 §3.1.2.16: answer 505; the placeholder request carries the headers."""
    data = load("badvers")
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == 505
    msg = err.value.message
    assert isinstance(msg, Request)
    resp = make_response(msg, 505)
    call_id_line = next(line for line in data.split(b"\r\n") if line.startswith(b"Call-ID:"))
    assert resp.header("call-id") == call_id_line.partition(b":")[2].strip().decode()
    via_line = next(line for line in data.split(b"\r\n") if line.startswith(b"Via:"))
    assert resp.header("via") == via_line.partition(b":")[2].strip().decode()  # copied as is


# --------------------------------------------------------------------------------- §3.1.1 values


def test_wsinv() -> None:
    """§3.1.1.1: folding, compact and odd-case names, 'TO :', leading zeros, empty Subject."""
    msg = parse("wsinv")
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert str(msg.uri) == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert isinstance(msg.uri, SipURI) and msg.uri.has_param("unknownparam")
    assert msg.to.tag == "1918181833n"
    assert str(msg.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert msg.from_.display == '"J Rosenberg \\\\\\""'
    assert msg.from_tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.header("subject") == "" and msg.header("s") == ""
    assert msg.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    route = msg.routes[0].sip_uri
    assert route.lr and route.param("unknownwith") == "value" and route.has_param("unknown-no-value")
    contact = msg.contacts[0]
    assert contact.display == '"Quoted string \\"\\""'
    assert contact.params == [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")]
    assert contact.q == 0.33
    assert msg.header("content-type") == "application/sdp"
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")


def test_intmeth() -> None:
    """§3.1.1.2: an odd extension method and Request-URI; control characters and UTF-8."""
    msg = parse("intmeth")
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    uri = msg.uri
    assert isinstance(uri, SipURI)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com" and uri.headers is None
    assert msg.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert msg.to.sip_uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.from_tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255
    assert msg.header("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_user_parts_decode_once() -> None:
    """§3.1.1.3: escapes in user parts and URI parameters; %25%34%31 -> %41."""
    msg = parse("esc01")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipURI)
    assert msg.uri.user == "sips%3Auser%40example.com"
    assert msg.uri.user_unescaped == "sips:user@example.com"
    assert msg.to.sip_uri.user_unescaped == "user"
    assert msg.from_.sip_uri.user_unescaped == "I have spaces"
    contact = msg.contacts[0].sip_uri
    assert contact.user_unescaped == "caller"
    assert contact.lr
    assert contact.param("name") == "value%41"


def test_escnull_keeps_nul() -> None:
    """§3.1.1.4: the AoR user is not cut at %00; the two Contacts differ."""
    msg = parse("escnull")
    assert msg.to.sip_uri.aor == "null-\x00-null@example.com"
    assert [c.sip_uri.user_unescaped for c in msg.contacts] == ["\x00", "\x00\x00"]
    assert msg.contacts[0].uri != msg.contacts[1].uri


def test_esc02_percent_is_not_an_escape_in_tokens() -> None:
    """§3.1.1.5: RE%47IST%45R is not REGISTER and C%6Fntact is not Contact."""
    msg = parse("esc02")
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R" != "REGISTER"
    assert [str(c.uri) for c in msg.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert msg.header("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.to.display == '"%Z%45"'
    assert msg.vias[0].branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp() -> None:
    """§3.1.1.6: no space between display name and '<'."""
    msg = parse("lwsdisp")
    assert msg.from_.display == "caller"
    assert str(msg.from_.uri) == "sip:caller@example.com"


def test_longreq() -> None:
    """§3.1.1.7: 34 Via values in every name spelling, long values kept whole."""
    data = load("longreq")
    msg = parse_message(data)
    vias = msg.vias
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[33].received == "192.0.2.5"
    branch = vias[33].branch
    assert branch is not None and len(branch) > 200 and data.count(branch.encode()) == 1
    assert msg.from_tag is not None and len(msg.from_tag) > 150
    assert msg.call_id.startswith("longreq.one") and msg.call_id.endswith("longcallid")
    assert msg.to.display is not None and msg.to.display.startswith('"I have a user name')
    assert msg.to.sip_uri.port == 6000
    assert len(msg.body) == 150


def test_dblreq_drops_trailing_octets() -> None:
    """§3.1.1.8: only the REGISTER counts; the INVITE-looking octets after it are noise."""
    msg = parse("dblreq")
    assert isinstance(msg, Request) and msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" not in msg.to_bytes()


def test_semiuri() -> None:
    """§3.1.1.9: the ';' belongs to the user part, it is not a URI parameter."""
    msg = parse("semiuri")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipURI)
    assert msg.uri.user_unescaped == "user;par=u@example.net"
    assert msg.uri.host == "example.com" and msg.uri.params == []
    assert msg.header_values("accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


def test_transports() -> None:
    """§3.1.1.10: SCTP, TLS and an unknown transport in Via."""
    msg = parse("transports")
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body() -> None:
    """§3.1.1.11: the body is framed by Content-Length and kept byte for byte."""
    data = load("mpart01")
    msg = parse_message(data)
    assert len(msg.body) == 553
    assert data.endswith(msg.body)
    assert b"\x00" in msg.body and b"\r" in msg.body.replace(b"\r\n", b"")
    assert msg.to_bytes() == data


def test_unreason_utf8_reason() -> None:
    """§3.1.1.12: the reason phrase is opaque UTF-8."""
    msg = parse("unreason")
    assert isinstance(msg, Response) and msg.status == 200
    assert msg.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(msg.body) == 154


def test_noreason_empty_reason() -> None:
    """§3.1.1.13: '100 ' then nothing."""
    msg = parse("noreason")
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")
    assert msg.to_bytes().startswith(b"SIP/2.0 100 \r\n")


# --------------------------------------------------------------------------------- §3.1.2 values


def test_scalar02_other_scalars_are_clamped() -> None:
    """§3.1.2.4: with a valid CSeq, the huge Expires and expires= clamp to 2^32-1 and
    Max-Forwards 300 is just a number (no wrap-around anywhere)."""
    data = load("scalar02").replace(b"CSeq: 36893488147419103232 REGISTER", b"CSeq: 36 REGISTER")
    msg = parse_message(data)
    assert msg.expires == 2**32 - 1
    assert msg.contacts[0].expires == 2**32 - 1
    assert msg.max_forwards == 300


def test_escruri_is_refused_not_turned_into_a_route() -> None:
    """§3.1.2.11: '?Route=...' in the Request-URI is a 400, never a Route header."""
    with pytest.raises(ParseError) as err:
        parse("escruri")
    assert err.value.status == 400
    assert isinstance(err.value.message, Request) and err.value.message.routes == []


def test_regbadct_contact_refused_when_read() -> None:
    """§3.1.2.13: an addr-spec Contact cannot carry '?headers'."""
    msg = parse("regbadct")
    with pytest.raises(ParseError) as err:
        msg.contacts  # noqa: B018
    assert "<>" in err.value.reason


def test_responses_out_of_range() -> None:
    """§3.1.2.5 scalarlg and §3.1.2.19 bigcode: no wrap-around, just ParseError (dropped)."""
    for name in ("scalarlg", "bigcode"):
        with pytest.raises(ParseError):
            parse(name)


# --------------------------------------------------------------------------------- §3.3, §3.4


def test_unknown_schemes_parse_as_absolute_uris() -> None:
    """§3.3.2-§3.3.4: the parser keeps them; 416/400 are the proxy's and registrar's calls."""
    unkscm = parse("unkscm")
    assert isinstance(unkscm, Request) and isinstance(unkscm.uri, AbsoluteURI)
    assert unkscm.uri.scheme == "nobodyknowsthisscheme"
    novelsc = parse("novelsc")
    assert isinstance(novelsc, Request) and isinstance(novelsc.uri, AbsoluteURI)
    assert novelsc.uri.scheme == "soap.beep"
    unksm2 = parse("unksm2")
    assert isinstance(unksm2.to.uri, AbsoluteURI) and str(unksm2.to.uri) == "isbn:2983792873"
    assert isinstance(unksm2.from_.uri, AbsoluteURI) and unksm2.from_tag == "3234233"
    assert [str(c.uri) for c in unksm2.contacts] == ["name:John_Smith"]
    with pytest.raises(ParseError) as err:
        unksm2.to.sip_uri  # noqa: B018
    assert err.value.status == 416


def test_bext01_option_tags() -> None:
    msg = parse("bext01")
    assert msg.require == {"nothingsupportsthis", "nothingsupportsthiseither"}
    assert msg.proxy_require == {"noproxiessupportthis", "nordoanyproxiessupportthis"}


def test_zeromf_and_bcast() -> None:
    assert parse("zeromf").max_forwards == 0
    bcast = parse("bcast")
    assert isinstance(bcast, Response) and bcast.vias[1].host == "255.255.255.255"


def test_cparam01_contact_param_versus_cparam02_uri_param() -> None:
    """§3.3.12/§3.3.13: ';unknownparam' after an addr-spec is a Contact parameter; inside <>
    it is a URI parameter."""
    c1 = parse("cparam01").contacts[0]
    assert str(c1.uri) == "sip:+19725552222@gw1.example.net"
    assert c1.sip_uri.params == [] and c1.params == [("unknownparam", None)]
    c2 = parse("cparam02").contacts[0]
    assert str(c2.uri) == "sip:+19725552222@gw1.example.net;unknownparam"
    assert c2.sip_uri.has_param("unknownparam") and c2.params == []


def test_regescrt_escaped_header_stays_in_the_contact_uri() -> None:
    """§3.3.14: '?Route=%3C...%3E' stays in the Contact URI and is no Route of the REGISTER."""
    msg = parse("regescrt")
    uri = msg.contacts[0].sip_uri
    assert uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert msg.routes == [] and not msg.has_header("route")


def test_regaut01_and_invut_and_sdp01() -> None:
    assert parse("regaut01").header("authorization") == "NoOneKnowsThisScheme opaque-data=here"
    invut = parse("invut")
    assert invut.header("content-type") == "application/unknownformat" and len(invut.body) == 40
    assert parse("sdp01").header("accept") == "text/nobodyKnowsThis"


def test_inv2543_rfc2543_style() -> None:
    """§3.4.1: no branch, no From tag, no Max-Forwards, body = rest of the datagram, and a
    Content-Length added when it is written out again."""
    data = load("inv2543")
    msg = parse_message(data)
    assert msg.vias[0].branch is None
    assert msg.from_tag is None and msg.max_forwards is None
    assert msg.body == data.partition(b"\r\n\r\n")[2] and len(msg.body) == 105
    assert b"\r\nContent-Length: 105\r\n\r\n" in msg.to_bytes()
    with pytest.raises(ParseError):  # over a stream the length cannot be guessed
        parse_message(data, stream=True)


def test_baddn_without_final_empty_line_is_still_judged() -> None:
    """§3.1.2.15: the archive copy ends without the empty line; over UDP the end of the
    datagram ends the headers, and the display names are refused."""
    data = load("baddn")
    assert b"\r\n\r\n" not in data
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert "display name" in err.value.reason
