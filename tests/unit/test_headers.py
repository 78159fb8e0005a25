"""Header names and typed header views (RFC 3261 §7.3, §20; RFC 3581; RFC 5626 §4.1, §11.2).

Issue "SIP message core". The fast-path tests pin the invariant stated in
``sipserver/sip/headers.py``: the common-shape regexes give what the careful parsers give.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip import Contact, CSeq, NameAddr, ParseError, SipURI, Via
from sipserver.sip import headers as H
from sipserver.sip.headers import (
    canonical_name,
    clamped_int,
    header_key,
    is_digits,
    parse_option_tags,
    split_commas,
    split_params,
    unquote_value,
)

# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Via", "via"),
        ("v", "via"),
        ("V", "via"),
        ("MaX-fOrWaRdS", "max-forwards"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("k", "supported"),
        ("f", "from"),
        ("t", "to"),
        ("X-Custom", "x-custom"),
    ],
)
def test_header_key_expands_compact_forms(name: str, key: str) -> None:
    """RFC 3261 §7.3.3 compact forms; names are case-insensitive (§7.3.1)."""
    assert header_key(name) == key


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("record-route", "Record-Route"),
        ("flow-timer", "Flow-Timer"),
        ("x-custom-thing", "X-Custom-Thing"),
    ],
)
def test_canonical_name(key: str, name: str) -> None:
    assert canonical_name(key) == name


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "cap", "expected"),
    [
        ("0", 100, 0),
        ("0068", 2**32 - 1, 68),
        ("4294967295", 2**32 - 1, 4294967295),
        ("4294967296", 2**32 - 1, 4294967295),
        ("1" + "0" * 100, 2**32 - 1, 2**32 - 1),  # RFC 4475 scalar02 Expires
        ("0" * 5000 + "7", 100, 7),  # leading zeros cost nothing
        ("9" * 5000, 2**32 - 1, 2**32 - 1),  # beyond int()'s 4300-digit limit
        ("", 10, None),
        ("-1", 10, None),
        ("+1", 10, None),
        ("1_000", 10**6, None),
        (" 1", 10, None),
        ("²", 10, None),  # str.isdigit() says yes, int() says no
        ("١٢", 100, None),  # other scripts' digits are not DIGIT
    ],
)
def test_clamped_int(text: str, cap: int, expected: int | None) -> None:
    assert clamped_int(text, cap) == expected


def test_is_digits_is_ascii_only() -> None:
    assert is_digits("0123456789")
    assert not is_digits("²") and not is_digits("１") and not is_digits("")


# ----------------------------------------------------------------------------- split_commas


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("INVITE, ACK ,BYE", ["INVITE", "ACK", "BYE"]),
        ("", []),
        (" , ,", []),
        ("<sip:a@b;x=1,2>, <sip:c@d>", ["<sip:a@b;x=1,2>", "<sip:c@d>"]),
        ('"Doe, John" <sip:j@d>, <sip:k@d>', ['"Doe, John" <sip:j@d>', "<sip:k@d>"]),
        ('"a \\" , b" <sip:x@y>,<sip:z@y>', ['"a \\" , b" <sip:x@y>', "<sip:z@y>"]),
        ("<sip:a@b>,", ["<sip:a@b>"]),  # the RFC 7118 F6 trailing comma
        ('<sip:a@b>;p="x,y",<sip:c@d>', ['<sip:a@b>;p="x,y"', "<sip:c@d>"]),
        # No quoted string (the regular-expression path): Route / Record-Route / Path lists.
        ("<sip:p1;lr>,<sip:p2;lr;ftok=a,b>, <sip:p3>", ["<sip:p1;lr>", "<sip:p2;lr;ftok=a,b>", "<sip:p3>"]),
        ("<sip:a@b>;q=0.5 , x, <sip:c>>,d", ["<sip:a@b>;q=0.5", "x", "<sip:c>>", "d"]),
        ("<sip:open,ended", ["<sip:open,ended"]),  # an unclosed < shields the rest
        ("a<b,c>d,e", ["a<b,c>d", "e"]),
    ],
)
def test_split_commas(value: str, parts: list[str]) -> None:
    assert split_commas(value) == parts


def _split_reference(value: str) -> list[str]:
    """Character by character, as RFC 3261 §7.3.1 reads a list: commas inside <...> belong
    to the element (quoted strings are not generated below)."""
    parts, start, angle = [], 0, False
    for i, ch in enumerate(value):
        if angle:
            angle = ch != ">"
        elif ch == "<":
            angle = True
        elif ch == ",":
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@settings(max_examples=2000)
@given(st.text(alphabet="ab,<> ;=", max_size=24))
def test_split_commas_without_quotes_matches_the_character_reading(value: str) -> None:
    assert split_commas(value) == _split_reference(value)


def test_split_commas_unterminated_quote() -> None:
    with pytest.raises(ParseError):
        split_commas('"abc, <sip:a@b>')


def test_split_params_and_unquote() -> None:
    assert split_params('a=1; B ; c = "x;y" ', "X") == [("a", "1"), ("B", None), ("c", '"x;y"')]
    assert unquote_value('"a\\"b"') == 'a"b'
    assert unquote_value("plain") == "plain"
    for bad in ("", "a;;b", "a=", "=1", 'a="x'):
        with pytest.raises(ParseError):
            split_params(bad, "X")


# ----------------------------------------------------------------------------- Via


def test_via_basic() -> None:
    v = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;received=192.0.2.9;rport")
    assert (v.transport, v.host, v.port) == ("UDP", "192.0.2.1", 5060)
    assert v.branch == "z9hG4bK776asdhds"
    assert v.received == "192.0.2.9"
    assert v.sent_by == "192.0.2.1:5060"
    assert str(v) == v.raw


def test_via_rport_empty_versus_value() -> None:
    """RFC 3581: a bare rport asks for the port; rport=N is the filled-in answer."""
    bare = Via.parse("SIP/2.0/UDP h;branch=z9hG4bKa;rport")
    assert bare.wants_rport and bare.rport is None
    filled = Via.parse("SIP/2.0/UDP h;branch=z9hG4bKa;rport=5062")
    assert filled.wants_rport and filled.rport == 5062
    absent = Via.parse("SIP/2.0/UDP h;branch=z9hG4bKa")
    assert not absent.wants_rport and absent.rport is None
    assert Via.parse("SIP/2.0/UDP h;rport=99999").rport is None
    assert Via.parse("SIP/2.0/UDP h;rport=x").rport is None


def test_via_maddr_ttl_and_case() -> None:
    v = Via.parse("SIP/2.0/udp h.example;MADDR=239.255.255.1;TTL=16;Branch=z9hG4bKx")
    assert v.transport == "UDP"
    assert v.maddr == "239.255.255.1"
    assert v.ttl == 16
    assert v.branch == "z9hG4bKx"
    assert v.param("BRANCH") == "z9hG4bKx" and v.has_param("ttl")
    assert Via.parse("SIP/2.0/UDP h;ttl=abc").ttl is None


def test_via_ipv6_sent_by() -> None:
    v = Via.parse("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKq;received=2001:db8::10")
    assert v.host == "2001:db8::9" and v.port == 5061
    assert v.sent_by == "[2001:db8::9]:5061"
    assert v.received == "2001:db8::10"
    assert Via.parse("SIP/2.0/TCP [::1];branch=z9hG4bKq").sent_by == "[::1]"


def test_via_lws_everywhere() -> None:
    """RFC 4475 §3.1.1.1 (wsinv): LWS around '/', ':' and ';' and '='."""
    v = Via.parse("SIP  /   2.0 /UDP    192.0.2.2 : 5060 ;  branch  =   390skdjuw")
    assert (v.transport, v.host, v.port, v.branch) == ("UDP", "192.0.2.2", 5060, "390skdjuw")


def test_via_transports() -> None:
    """RFC 4475 §3.1.1.10: SCTP, TLS and unknown transports are just tokens."""
    for t in ("UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "UNKNOWN"):
        assert Via.parse(f"SIP/2.0/{t} h;branch=z9hG4bKx").transport == t


def test_via_with_params() -> None:
    v = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport")
    w = v.with_params(received="198.51.100.7", rport="40000")
    assert w.raw == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport=40000;received=198.51.100.7"
    assert w.rport == 40000 and w.received == "198.51.100.7"
    assert v.rport is None  # the original is untouched
    ipv6 = Via.parse("SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx").with_params(rport=None)
    assert ipv6.raw == "SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx;rport"
    assert Via.parse(ipv6.raw).wants_rport


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host;",  # RFC 4475 badinv01: empty parameter
        "SIP/2.0/UDP host;;branch=x",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host:" + "1" * 5000,
        "SIP/2.0/UDP host junk",
        'SIP/2.0/UDP host;x="unterminated',
        "SIP/2.0/UDP [::1",
    ],
)
def test_bad_via(raw: str) -> None:
    with pytest.raises(ParseError):
        Via.parse(raw)


# ----------------------------------------------------------------------------- name-addr


@pytest.mark.parametrize(
    ("raw", "display", "uri", "params", "bracketed"),
    [
        ("<sip:a@b>", None, "sip:a@b", [], True),
        ("Alice <sip:a@b>;tag=x", "Alice", "sip:a@b", [("tag", "x")], True),
        ('"Alice A." <sip:a@b>;tag=x', '"Alice A."', "sip:a@b", [("tag", "x")], True),
        ('"A \\"q\\"" <sip:a@b>', '"A \\"q\\""', "sip:a@b", [], True),
        ("caller<sip:caller@example.com>;tag=323", "caller", "sip:caller@example.com", [("tag", "323")], True),
        ("sip:a@b;tag=x", None, "sip:a@b", [("tag", "x")], False),
        ("sip:+19725552222@gw1.example.net;unknownparam", None, "sip:+19725552222@gw1.example.net", [("unknownparam", None)], False),
        ("<sip:+19725552222@gw1.example.net;unknownparam>", None, "sip:+19725552222@gw1.example.net;unknownparam", [], True),
        ("J Rosenberg <sip:j@example.com> ; tag = 98", "J Rosenberg", "sip:j@example.com", [("tag", "98")], True),
        ("<urn:service:sos>", None, "urn:service:sos", [], True),
        ("<sip:a@b ;gr=x ; ob>", None, "sip:a@b;gr=x;ob", [], True),  # folded before ';'
    ],
)
def test_name_addr_shapes(
    raw: str, display: str | None, uri: str, params: list[tuple[str, str | None]], bracketed: bool
) -> None:
    """RFC 3261 §20.10, §25.1: name-addr and addr-spec; RFC 4475 §3.3.12/§3.3.13 cparam01/02
    (a ';param' after an addr-spec is a header parameter, inside <> a URI parameter)."""
    na = NameAddr.parse(raw)
    assert (na.display, na.uri_text, na.params, na.bracketed) == (display, uri, params, bracketed)
    assert str(na) == raw


def test_name_addr_tag_and_uri() -> None:
    na = NameAddr.parse("Bob <sip:bob@example.com;transport=tcp>;TAG=a73k")
    assert na.tag == "a73k"
    assert na.has_param("tag") and not na.has_param("expires")
    assert isinstance(na.uri, SipURI) and na.sip_uri.transport == "tcp"
    assert na.render() == "Bob <sip:bob@example.com;transport=tcp>;TAG=a73k"
    tagged = NameAddr.parse("<sip:bob@example.com>").with_param("tag", "1")
    assert tagged.raw == "<sip:bob@example.com>;tag=1" and tagged.tag == "1"


def test_name_addr_tag_inside_brackets_is_not_a_tag() -> None:
    na = NameAddr.parse("<sip:bob@example.com;tag=uriparam>")
    assert na.tag is None
    assert na.sip_uri.param("tag") == "uriparam"


def test_name_addr_other_scheme() -> None:
    """RFC 4475 §3.3.4 (unksm2): To/From/Contact may hold any absolute URI."""
    na = NameAddr.parse("<http://www.example.com>;tag=3234233")
    assert str(na.uri) == "http://www.example.com"
    with pytest.raises(ParseError) as err:
        na.sip_uri  # noqa: B018
    assert err.value.status == 416


@pytest.mark.parametrize(
    "raw",
    [
        '"unterminated <sip:a@b>',  # RFC 4475 quotbal
        '"Alice" sip:a@b',
        "< sip:a@b >",  # RFC 4475 badaspec
        "<>",
        "<sip:a@b",
        "Bell, Alexander <sip:a@b>",  # RFC 4475 baddn: not a token
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
        "sip:a@b c",
        "<sip:a@b> junk",
        "<sip:a@b>;",
        "<sip:a@b>;tag=",
    ],
)
def test_bad_name_addr(raw: str) -> None:
    with pytest.raises(ParseError):
        NameAddr.parse(raw, "To")


def test_bad_uri_inside_brackets_fails_on_use() -> None:
    na = NameAddr.parse("<sip:a@b c>")  # the URI is only parsed when asked for
    with pytest.raises(ParseError):
        na.uri  # noqa: B018


# ----------------------------------------------------------------------------- Contact


def test_contact_star() -> None:
    """RFC 3261 §10.2.2: '*' removes every binding."""
    c = Contact.parse("*")
    assert c.star
    assert Contact.parse(" * ").star
    assert not Contact.parse("<sip:a@b>").star


def test_contact_expires_clamp() -> None:
    """RFC 4475 §3.1.2.4 (scalar02): a huge expires is clamped, not wrapped."""
    assert Contact.parse("<sip:a@b>;expires=3600").expires == 3600
    assert Contact.parse("<sip:a@b>;expires=280297596632815").expires == 2**32 - 1
    assert Contact.parse('<sip:a@b>;expires="60"').expires == 60
    assert Contact.parse("<sip:a@b>").expires is None
    for bad in ("-1", "x", "²"):
        with pytest.raises(ParseError):
            Contact.parse(f"<sip:a@b>;expires={bad}").expires  # noqa: B018


@pytest.mark.parametrize(("text", "q"), [("0", 0.0), ("0.5", 0.5), ("1", 1.0), ("1.000", 1.0), ("0.33", 0.33)])
def test_contact_q(text: str, q: float) -> None:
    assert Contact.parse(f"<sip:a@b>;q={text}").q == q


def test_contact_q_default_and_range() -> None:
    """RFC 3261 §20.10: qvalue is 0..1; 1.0 when absent."""
    assert Contact.parse("<sip:a@b>").q == 1.0
    for bad in ("1.5", "2", "-0.1", "nan", "inf", "abc", "1e-1", "0x1"):
        with pytest.raises(ParseError):
            Contact.parse(f"<sip:a@b>;q={bad}").q  # noqa: B018


def test_contact_instance_raw_and_normalised() -> None:
    """RFC 5626 §4.1: +sip.instance kept as sent; the id compares case-insensitively."""
    c = Contact.parse(
        '<sip:bob@192.0.2.2;transport=tcp>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    )
    assert c.instance == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert c.instance_id == "urn:uuid:00000000-0000-1000-8000-aabbccddeeff"
    assert Contact.parse("<sip:a@b>").instance is None and Contact.parse("<sip:a@b>").instance_id is None
    assert Contact.parse('<sip:a@b>;+sip.instance="<>"').instance_id is None


@pytest.mark.parametrize(
    ("text", "reg_id"),
    [("1", 1), ("2", 2), ("2147483647", 2**31 - 1), ("0", None), ("2147483648", None),
     ("9" * 5000, None), ("x", None), ("-1", None), ("²", None), ("", None)],
)
def test_contact_reg_id(text: str, reg_id: int | None) -> None:
    """RFC 5626 §11.2 / OB-REG-17: reg-id is 1..2^31-1; anything else is no reg-id."""
    raw = f"<sip:a@b>;reg-id={text}" if text else "<sip:a@b>;reg-id"
    c = Contact.parse(raw)
    assert c.reg_id == reg_id
    assert c.reg_id_text == (text if text else None)


def test_contact_gruu_params() -> None:
    """RFC 5627: pub-gruu/temp-gruu are quoted header parameters of a Contact."""
    c = Contact.parse(
        '<sip:alice@example.com;transport=ws>;pub-gruu="sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1"'
        ';temp-gruu="sip:87ash54=3dd.98a@example.com;gr";expires=3600'
    )
    assert unquote_value(c.param("pub-gruu") or "") == "sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1"
    assert unquote_value(c.param("temp-gruu") or "") == "sip:87ash54=3dd.98a@example.com;gr"
    assert c.expires == 3600


# ----------------------------------------------------------------------------- CSeq


@pytest.mark.parametrize(
    ("raw", "seq", "method"),
    [("1 INVITE", 1, "INVITE"), ("0009\r\n  INVITE".replace("\r\n", ""), 9, "INVITE"),
     ("4294967295 REGISTER", 2**32 - 1, "REGISTER"), ("  8   OPTIONS ", 8, "OPTIONS"),
     ("5 RE%47IST%45R", 5, "RE%47IST%45R")],
)
def test_cseq(raw: str, seq: int, method: str) -> None:
    c = CSeq.parse(raw)
    assert (c.seq, c.method) == (seq, method)
    assert str(c) == f"{seq} {method}"


@pytest.mark.parametrize(
    "raw",
    ["", "INVITE", "1", "1 INVITE extra", "x INVITE", "-1 INVITE", "4294967296 INVITE",
     "36893488147419103232 REGISTER", "9" * 5000 + " INVITE", "² INVITE", "1 INV<ITE"],
)
def test_bad_cseq(raw: str) -> None:
    """RFC 3261 §20.16: the number is below 2^32 (RFC 4475 scalar02/scalarlg)."""
    with pytest.raises(ParseError):
        CSeq.parse(raw)


def test_option_tags() -> None:
    assert parse_option_tags(["path, Outbound", "gruu,,", ""]) == frozenset({"path", "outbound", "gruu"})


# ----------------------------------------------------------------------------- fast == careful

_TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
_token = st.text(_TOKEN, min_size=1, max_size=8)
_pvalue = st.one_of(
    _token,
    st.text(_TOKEN + ":[]/@", min_size=1, max_size=10),
    st.text(string.ascii_letters + ";=, <>:", max_size=8).map(lambda s: f'"{s}"'),
)
_params = st.lists(st.tuples(_token, st.none() | _pvalue), max_size=4).map(
    lambda ps: "".join(f";{k}" if v is None else f";{k}={v}" for k, v in ps)
)
_host = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?", fullmatch=True),
    st.just("[2001:db8::1]"),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["UDP", "tcp", "TLS", "WS", "SCTP"]), _host, st.none() | st.integers(0, 65535), _params)
def test_via_fast_path_agrees_with_careful_path(transport: str, host: str, port: int | None, params: str) -> None:
    raw = f"SIP/2.0/{transport} {host}{'' if port is None else f':{port}'}{params}"
    fast = Via.parse(raw)
    careful = Via._parse_careful(raw)
    assert (fast.transport, fast.host, fast.port, fast.params) == (
        careful.transport, careful.host, careful.port, careful.params)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), _token, st.lists(_token, min_size=2, max_size=3).map(" ".join),
              st.text(string.ascii_letters + ' ,\\"<', max_size=8).map(
                  lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')),
    st.booleans(),
    st.sampled_from(["sip:a@b.example", "sips:x@[::1]:5061", "tel:+123", "sip:b;lr"]),
    _params,
)
def test_name_addr_fast_path_agrees_with_careful_path(
    display: str | None, bracket: bool, uri: str, params: str
) -> None:
    if bracket or display is not None:
        raw = f"{display + ' ' if display else ''}<{uri}>{params}"
    else:
        raw = f"{uri.partition(';')[0]}{params}"
    fast = NameAddr.parse(raw)
    careful = H._parse_name_addr(raw, "X")
    assert (fast.display, fast.uri_text, fast.params, fast.bracketed) == careful
