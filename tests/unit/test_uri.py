"""SIP/SIPS and other URIs: parsing, rendering, escaping, equality (RFC 3261 §19.1, §25.1).

Issue "SIP message core". The fast-path/careful-path equivalence tests pin the invariant stated in
``sipserver/sip/uri.py``: the precompiled regex for the common shape gives exactly what the
careful parser gives.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip import AbsoluteURI, ParseError, SipURI, parse_sip_uri, parse_uri
from sipserver.sip import uri as uri_module


def fields(u: SipURI) -> tuple[object, ...]:
    return (u.scheme, u.user, u.password, u.host, u.port, list(u.params), u.headers)


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@example.com", ("sip", "alice", None, "example.com", None, [], None)),
        ("sips:bob@example.com:5061", ("sips", "bob", None, "example.com", 5061, [], None)),
        ("sip:example.com", ("sip", None, None, "example.com", None, [], None)),
        ("sip:192.0.2.1:5060;lr", ("sip", None, None, "192.0.2.1", 5060, [("lr", None)], None)),
        (
            "sip:alice:secret@host.example;transport=tcp;ob",
            ("sip", "alice", "secret", "host.example", None, [("transport", "tcp"), ("ob", None)], None),
        ),
        (
            "sip:carol@chicago.com?Subject=next%20meeting&priority=urgent",
            ("sip", "carol", None, "chicago.com", None, [], "Subject=next%20meeting&priority=urgent"),
        ),
        ("SIP:Alice@Example.COM", ("sip", "Alice", None, "Example.COM", None, [], None)),
        ("sip:a@b;x=", ("sip", "a", None, "b", None, [("x", "")], None)),
        ("sip:a@b;p=a=b", ("sip", "a", None, "b", None, [("p", "a=b")], None)),
        ("sip:a@host.;lr", ("sip", "a", None, "host.", None, [("lr", None)], None)),
    ],
)
def test_parse_fields(text: str, expected: tuple[object, ...]) -> None:
    u = parse_sip_uri(text)
    assert fields(u) == expected
    assert str(u) == text  # the exact text is kept


@pytest.mark.parametrize(
    ("text", "host", "port", "hostport"),
    [
        ("sip:[2001:db8::1]", "2001:db8::1", None, "[2001:db8::1]"),
        ("sip:alice@[2001:db8::1]:5070;transport=tcp", "2001:db8::1", 5070, "[2001:db8::1]:5070"),
        ("sips:[::1]:5061", "::1", 5061, "[::1]:5061"),
        ("sip:[::ffff:192.0.2.1]", "::ffff:192.0.2.1", None, "[::ffff:192.0.2.1]"),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None, hostport: str) -> None:
    u = parse_sip_uri(text)
    assert u.host == host  # stored without brackets
    assert u.port == port
    assert u.host_text == f"[{host}]"
    assert u.hostport == hostport
    # Rendering a copy puts the brackets back.
    assert str(u.replace()) == text


def test_params_are_case_insensitive_and_keep_their_spelling() -> None:
    u = parse_sip_uri("sip:alice@example.com;Transport=TCP;LR;MAddr=192.0.2.9")
    assert u.param("transport") == "TCP"
    assert u.transport == "tcp"
    assert u.lr
    assert u.has_param("maddr") and u.param("MADDR") == "192.0.2.9"
    assert u.param("ttl") is None and not u.has_param("ttl")
    assert u.params[0] == ("Transport", "TCP")  # spelling as written


def test_valueless_param_reads_as_empty_string() -> None:
    u = parse_sip_uri("sip:proxy.example.com;lr;ob")
    assert u.param("lr") == "" and u.param("ob") == ""


def test_secure_and_is_sip() -> None:
    assert parse_sip_uri("sips:a@b").secure
    assert not parse_sip_uri("sip:a@b").secure
    assert parse_uri("sip:a@b").is_sip
    assert not parse_uri("tel:+1-201-555-0123").is_sip


# ----------------------------------------------------------------------------- escaping


def test_user_decodes_escapes_exactly_once() -> None:
    """RFC 4475 §3.1.1.3 (esc01): %25%34%31 decodes to %41, never to A."""
    u = parse_sip_uri("sip:value%25%34%31@example.com")
    assert u.user == "value%25%34%31"
    assert u.user_unescaped == "value%41"


def test_escaped_param_names_and_values_are_decoded_for_lookup() -> None:
    """RFC 3261 §19.1.4: an unreserved character and its %XX form are the same."""
    u = parse_sip_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert u.user_unescaped == "caller"
    assert u.has_param("lr") and u.lr
    assert u.param("name") == "value%41"


def test_escaped_nul_is_kept() -> None:
    """RFC 4475 §3.1.1.4 (escnull): %00 is a character like any other."""
    u = parse_sip_uri("sip:null-%00-null@example.com")
    assert u.user_unescaped == "null-\x00-null"
    assert u.aor == "null-\x00-null@example.com"


def test_invalid_escape_is_left_alone() -> None:
    """RFC 4475 §3.1.1.5 (esc02): a % not followed by two hex digits is not an escape."""
    u = parse_sip_uri("sip:%Z%45@example.com")
    assert u.user_unescaped == "%ZE"


def test_semicolon_in_user_part() -> None:
    """RFC 4475 §3.1.1.9 (semiuri): everything before the '@' is the user part."""
    u = parse_sip_uri("sip:user;par=u%40example.net@example.com")
    assert u.user == "user;par=u%40example.net"
    assert u.user_unescaped == "user;par=u@example.net"
    assert u.host == "example.com"
    assert u.params == []


# ----------------------------------------------------------------------------- aor


@pytest.mark.parametrize(
    ("text", "aor"),
    [
        ("sip:Alice@Example.COM:5070;transport=tcp", "Alice@example.com"),
        ("sips:%61lice@atlanta.com", "alice@atlanta.com"),
        ("sip:example.com", "example.com"),
        ("sip:bob@[2001:DB8::1]", "bob@2001:db8::1"),
    ],
)
def test_aor(text: str, aor: str) -> None:
    """RFC 3261 §10.3 step 5: the address-of-record key (user case kept, host lower-cased)."""
    assert parse_sip_uri(text).aor == aor


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The equal pairs listed in RFC 3261 §19.1.4.
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    ],
)
def test_rfc3261_equal_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua == ub and ub == ua
    assert hash(ua) == hash(ub)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The unequal pairs listed in RFC 3261 §19.1.4.
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        # And the other §19.1.4 rules.
        ("sip:a@b", "sips:a@b"),  # scheme
        ("sip:a@b", "sip:b"),  # a URI with a user never equals one without
        ("sip:a:pw@b", "sip:a@b"),  # same for the password
        ("sip:a:pw@b", "sip:a:PW@b"),  # userinfo is case-sensitive
        ("sip:a@b;maddr=192.0.2.1", "sip:a@b"),  # maddr in only one
        ("sip:a@b;ttl=1", "sip:a@b"),
        ("sip:a@b;method=INVITE", "sip:a@b"),
        ("sip:a@b;user=phone", "sip:a@b"),
        ("sip:a@b;foo=1", "sip:a@b;foo=2"),  # a parameter in both must match
    ],
)
def test_rfc3261_unequal_uris(a: str, b: str) -> None:
    assert parse_uri(a) != parse_uri(b)
    assert parse_uri(b) != parse_uri(a)


def test_equality_with_other_types() -> None:
    assert parse_uri("sip:a@b") != "sip:a@b"
    assert parse_uri("tel:+1-201-555-0123") == parse_uri("tel:+1-201-555-0123")
    assert parse_uri("tel:+1-201-555-0123") != parse_uri("sip:+1-201-555-0123@b")
    assert len({parse_uri("sip:A@EXAMPLE.com"), parse_uri("sip:A@example.COM")}) == 1


# ----------------------------------------------------------------------------- editing


def test_with_param_replaces_any_spelling_and_renders() -> None:
    u = parse_sip_uri("sip:alice@example.com;Transport=UDP;lr")
    v = u.with_param("transport", "tcp")
    assert str(v) == "sip:alice@example.com;lr;transport=tcp"
    assert v.transport == "tcp"
    assert str(u) == "sip:alice@example.com;Transport=UDP;lr"  # the original is untouched
    assert str(u.with_param("ob")) == "sip:alice@example.com;Transport=UDP;lr;ob"


def test_with_param_matches_escaped_names() -> None:
    u = parse_sip_uri("sip:a@b;%6C%72")
    assert str(u.with_param("lr")) == "sip:a@b;lr"


def test_without_param() -> None:
    u = parse_sip_uri("sip:alice@example.com:5060;transport=tcp;LR;ob?x=y")
    assert str(u.without_param("lr", "OB")) == "sip:alice@example.com:5060;transport=tcp?x=y"
    assert str(u.without_param("nothere")) == "sip:alice@example.com:5060;transport=tcp;LR;ob?x=y"


def test_replace_renders_every_part() -> None:
    u = parse_sip_uri("sip:alice:pw@[2001:db8::1]:5070;lr?h=v")
    assert str(u.replace(host="example.com", port=None)) == "sip:alice:pw@example.com;lr?h=v"
    assert str(u.replace(user=None, password=None)) == "sip:[2001:db8::1]:5070;lr?h=v"
    built = SipURI("sips", "bob", None, "example.com", 5061, [("transport", "tls")], None)
    assert str(built) == "sips:bob@example.com:5061;transport=tls"


# ----------------------------------------------------------------------------- other schemes


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("tel:+1-201-555-0123", "tel"),
        ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "urn"),
        ("soap.beep://192.0.2.103:3002", "soap.beep"),
        ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme"),
    ],
)
def test_other_schemes_parse_as_absolute_uri(text: str, scheme: str) -> None:
    """RFC 4475 §3.3.2/§3.3.3: an unknown scheme is well-formed; refusing it (416) is the
    proxy's decision, not the parser's."""
    u = parse_uri(text)
    assert isinstance(u, AbsoluteURI)
    assert u.scheme == scheme
    assert str(u) == text
    with pytest.raises(ParseError) as err:
        parse_sip_uri(text)
    assert err.value.status == 416


# ----------------------------------------------------------------------------- bad URIs


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        ":alice@example.com",
        "1sip:alice@example.com",
        "s p:alice@example.com",
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@exa mple.com",
        "sip:alice@example.com;",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;=x",
        "sip:alice@example.com:",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:123456",
        "sip:alice@example.com:5o60",
        "sip:alice@example.com:²",
        "sip:alice@example.com:" + "9" * 5000,
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]x",
        "sip:alice@[2001:db8::1]:x",
        "sip:alice@[zz::1]",
        "sip:alice@-example.com",
        "sip:alice@example-",
        "sip:alice@exa_mple.com",
        "sip:<alice@example.com>",
        'sip:"alice"@example.com',
        "sip:alice@example.com\r\n",
        "tel:",
        "tel:+1 555",
    ],
)
def test_bad_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_uri(text)
    assert err.value.status == 400


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "\x00\x80é€", max_size=60))
def test_any_text_gives_a_uri_or_parse_error(text: str) -> None:
    """Bad input never raises anything but ParseError."""
    try:
        u = parse_uri(text)
    except ParseError:
        return
    assert str(u) == text
    if isinstance(u, SipURI):
        _ = (u.params, u.user_unescaped, u.aor, u.transport, u.lr, u.hostport, hash(u))
        for name, _value in u.params:
            u.param(name)
        assert u == u


# ----------------------------------------------------------------------------- round trips

_UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
_USER_CHARS = _UNRESERVED + "&=+$,;?/"
_PASSWORD_CHARS = _UNRESERVED + "&=+$,"
_PARAM_CHARS = _UNRESERVED + "[]/:&+$"
_HEADER_CHARS = _UNRESERVED + "[]/?:+$"

_escaped = st.integers(0, 255).map(lambda n: f"%{n:02X}")


def _escapable(chars: str, min_size: int = 1) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(chars), _escaped), min_size=min_size, max_size=12).map(
        "".join
    )


_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_hostname = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_ipv6 = st.lists(st.integers(0, 0xFFFF).map(lambda n: f"{n:x}"), min_size=8, max_size=8).map(
    lambda g: f"[{':'.join(g)}]"
)
_param = st.tuples(_escapable(_PARAM_CHARS), st.none() | _escapable(_PARAM_CHARS, 0))
_header = st.tuples(_escapable(_HEADER_CHARS), _escapable(_HEADER_CHARS, 0)).map("=".join)


@st.composite
def sip_uri_texts(draw: st.DrawFn) -> str:
    """Valid sip/sips URIs per the RFC 3261 §25.1 grammar (a generous subset)."""
    out = [draw(st.sampled_from(["sip", "sips", "SIP", "Sips"])), ":"]
    if draw(st.booleans()):
        out.append(draw(_escapable(_USER_CHARS)))
        if draw(st.booleans()):
            out += [":", draw(_escapable(_PASSWORD_CHARS, 0))]
        out.append("@")
    out.append(draw(st.one_of(_hostname, _ipv4, _ipv6)))
    if draw(st.booleans()):
        out.append(f":{draw(st.integers(0, 65535))}")
    for name, value in draw(st.lists(_param, max_size=4)):
        out.append(f";{name}" if value is None else f";{name}={value}")
    if draw(st.booleans()):
        out.append("?" + "&".join(draw(st.lists(_header, min_size=1, max_size=3))))
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(sip_uri_texts())
def test_sip_uri_round_trip(text: str) -> None:
    u = parse_sip_uri(text)
    assert str(u) == text
    again = parse_sip_uri(str(u))
    assert again == u and fields(again) == fields(u)
    # Rendered from its parts (not from the kept text) it still parses to the same URI.
    rendered = u.replace()
    assert parse_sip_uri(str(rendered)) == u
    assert fields(parse_sip_uri(str(rendered)))[1:] == fields(u)[1:]


@settings(max_examples=400, deadline=None)
@given(sip_uri_texts())
def test_fast_path_agrees_with_careful_path(text: str) -> None:
    """The invariant of uri.py: the common-shape regex and the careful parser agree."""
    fast = parse_sip_uri(text)
    scheme, _, rest = text.partition(":")
    careful = uri_module._parse_sip(scheme.lower(), text, rest)
    assert fields(fast) == fields(careful)
