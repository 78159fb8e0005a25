"""Property tests of the parser (issue "SIP message core"): valid requests built from parts
round-trip, and no mutation of a valid message makes the parser, a typed view or the
serialiser raise anything but ``ParseError``.

The fuzz runs 20,000+ examples in all (byte flips, insertions of SIP-significant bytes,
deletions, truncations, duplicated lines, spliced lines) over the valid RFC 4475 messages and
messages of our own. It keeps no example database, so it leaves no files behind.
"""

from __future__ import annotations

import csv
import random
import string
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from sipserver.sip import Message, ParseError, Request, Response, SipURI, parse_message

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FOLDER = VECTORS / "rfc4475"

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OWN_MESSAGES = [
    (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.101:54321;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: Bob <sip:bob@example.com>\r\n"
        b"From: \"Alice A.\" <sip:alice@example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr;ob>\r\n"
        b"Record-Route: <sip:rr.example.com;lr>\r\n"
        b"Contact: <sip:alice@192.0.2.101:54321;transport=tcp;ob>;expires=60;q=0.5\r\n"
        b"Supported: outbound, path, gruu\r\n"
        b"Require: outbound\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 4\r\n\r\nv=0\n"
    ),
    (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKnashds7;received=2001:db8::10;rport=5060\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: <sip:alice@example.com>\r\n"
        b"From: <sip:alice@example.com>;tag=a73kszlfl\r\n"
        b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.101\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:alice@[2001:db8::9]:5060;ob>;reg-id=1\r\n"
        b' ;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>", *\r\n'
        b"Path: <sip:VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib@ep1.example.com;lr;ob>\r\n"
        b"Expires: 3600\r\n"
        b"Flow-Timer: 150\r\n"
        b"l: 0\r\n\r\n"
    ),
    (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKasudf, SIP/2.0/TLS a.example;branch=z9hG4bKb\r\n"
        b"f: sip:alice@example.com;tag=65bnmj.34asd\r\n"
        b"t: sip:alice@example.com;tag=12isjljn8\r\n"
        b"i: aiuy7k9njasd\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"m: <sip:alice@df7jal23ls0d.invalid;transport=ws>;expires=3600\r\n"
        b"  ;pub-gruu=\"sip:alice@example.com;gr=urn:uuid:f81-7dec-14a06cf1\"\r\n"
        b"Content-Length: 0\r\n\r\n"
    ),
    (
        b"\r\nOPTIONS sips:%61lice@example.com:5061;maddr=192.0.2.1 SIP/2.0\r\n"
        b"Via: SIP  /  2.0 / TCP host ;branch=z9hG4bKws ; ttl = 5\r\n"
        b"From: caller<sip:caller@example.com>;tag=323\r\n"
        b"To: tel:+1-201-555-0123\r\n"
        b"Call-ID: x\r\n"
        b"CSeq: 0009\r\n  OPTIONS\r\n"
        b"X-Folded: a\r\n\tb\r\n\r\n"
    ),
]


def valid_rfc4475() -> list[bytes]:
    """The RFC 4475 messages the manifest calls valid (dblreq's datagram included)."""
    with open(FOLDER / "manifest.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(FOLDER / f"{r['name']}.dat").read_bytes() for r in rows if r["valid_or_invalid"].startswith("valid")]


RFC4475 = valid_rfc4475()

VIEWS = (
    "vias", "top_via", "cseq", "call_id", "from_", "to", "from_tag", "to_tag", "contacts", "routes",
    "record_routes", "paths", "max_forwards", "expires", "flow_timer", "supported", "require",
    "proxy_require",
)


def view(read: object) -> None:
    """Call ``read`` (a zero-argument callable); a ParseError is a fine answer."""
    try:
        read()  # type: ignore[operator]
    except ParseError:
        pass


def exercise(data: bytes) -> None:
    """Parse, read every view and serialise. Anything but ParseError propagates."""
    for stream in (False, True):
        try:
            msg = parse_message(data, stream=stream)
        except ParseError as err:
            assert isinstance(err.status, int) and 400 <= err.status <= 599
            assert err.message is None or isinstance(err.message, Message)
            continue
        read_everything(msg)
        out = msg.to_bytes()
        # What was accepted serialises to something that parses to the same bytes again,
        # and the header-list path writes the same bytes as the received-bytes path.
        assert parse_message(out, stream=True).to_bytes() == out
        msg.headers  # noqa: B018
        assert msg.to_bytes() == out


def read_everything(msg: Message) -> None:
    for name in VIEWS:
        view(lambda name=name: getattr(msg, name))
    if isinstance(msg, Request):
        view(lambda: msg.uri)
        view(lambda: msg.uri == msg.uri and hash(msg.uri))
    assert isinstance(msg, (Request, Response))
    try:
        vias = msg.vias
    except ParseError:
        vias = []
    for v in vias:
        _ = (v.branch, v.received, v.maddr, v.ttl, v.rport, v.wants_rport, v.sent_by)
        view(lambda v=v: v.with_params(received="192.0.2.1", rport="1").raw)
    for getter in ("from_", "to", "routes", "record_routes", "paths", "contacts"):
        try:
            values = getattr(msg, getter)
        except ParseError:
            continue
        for na in values if isinstance(values, list) else [values]:
            view(lambda na=na: na.uri)
            view(lambda na=na: na.sip_uri.aor)
            view(lambda na=na: [na.sip_uri.param(k) for k, _ in na.sip_uri.params])
            for attr in ("expires", "q", "instance_id", "reg_id"):
                view(lambda na=na, attr=attr: getattr(na, attr, None))


_INTERESTING = [
    b"\r\n", b"\r\n ", b"\r\n\r\n", b" ", b"\t", b";", b",", b'"', b"\\", b"<", b">", b":", b"=",
    b"%", b"%0", b"%00", b"@", b"?", b"[", b"]", b"\x00", b"\xff", b"\xc3", "²".encode(),
    "١".encode(), b"9" * 25, b"0" * 30, b"-1", b"SIP/2.0", b"sip:", b"tag=", b"branch=",
    b";lr", b"*", b"Via: ", b"Content-Length: 5\r\n", b"l: 99999999999999999999999\r\n",
]


def mutate(base: bytes, seed: int) -> bytes:
    """1-4 random mutations of ``base``. Driven by a seed rather than by one Hypothesis draw per
    choice: ten times the examples per second, and a failure still names its seed."""
    rnd = random.Random(seed)
    data = bytearray(base)
    for _ in range(rnd.randint(1, 4)):
        n = len(data)
        if n == 0:
            break
        kind = rnd.choice(("flip", "insert", "insert", "delete", "truncate", "dup_line", "splice"))
        at = rnd.randrange(n)
        if kind == "flip":
            data[at] = rnd.randrange(256)
        elif kind == "insert":
            if rnd.random() < 0.7:
                data[at:at] = rnd.choice(_INTERESTING)
            else:
                data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        elif kind == "delete":
            del data[at : at + rnd.randint(1, 8)]
        elif kind == "truncate":
            del data[at:]
        else:
            lines = bytes(data).split(b"\r\n")
            i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
            if kind == "dup_line":
                lines.insert(i, lines[i])
            else:
                lines.insert(j, lines[i][: rnd.randint(0, len(lines[i]))] + lines[j])
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


_seed = st.integers(0, 2**64 - 1)


@settings(FUZZ, max_examples=12000)
@given(st.integers(0, 10**6), _seed)
def test_fuzz_rfc4475_mutations(pick: int, seed: int) -> None:
    data = mutate(RFC4475[pick % len(RFC4475)], seed)
    note(repr(data))
    exercise(data)


@settings(FUZZ, max_examples=8000)
@given(st.sampled_from(OWN_MESSAGES), _seed)
def test_fuzz_own_message_mutations(base: bytes, seed: int) -> None:
    data = mutate(base, seed)
    note(repr(data))
    exercise(data)


@settings(FUZZ, max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    exercise(data)


def test_unmutated_bases_parse() -> None:
    """Control: every fuzz base is a valid message, so the mutations start from sense."""
    for data in OWN_MESSAGES + RFC4475:
        msg = parse_message(data)
        read_everything(msg)


# ------------------------------------------------------------------------- round trip

_TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
_token = st.text(_TOKEN, min_size=1, max_size=10)
_host = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,2}", fullmatch=True),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("[2001:db8::5]"),
)
_user = st.text(string.ascii_letters + string.digits + "-_.!~*'()&=+$,", min_size=1, max_size=10)
_sip_uri = st.builds(
    lambda scheme, user, host, port, params: f"{scheme}:{user + '@' if user else ''}{host}"
    f"{'' if port is None else f':{port}'}{''.join(params)}",
    st.sampled_from(["sip", "sips"]),
    st.none() | _user,
    _host,
    st.none() | st.integers(1, 65535),
    st.lists(st.sampled_from([";lr", ";ob", ";transport=tcp", ";transport=ws", ";maddr=192.0.2.1"]), max_size=3, unique=True),
)
_display = st.none() | _token | st.text(string.ascii_letters + " ,;:", max_size=10).map(lambda s: f'"{s}"')
_value = st.text(string.ascii_letters + string.digits + " ;=<>/:@.-\"", max_size=30).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    method = draw(_token)
    uri = draw(_sip_uri)
    branch = "z9hG4bK" + draw(_token)
    via = f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS', 'WS', 'WSS']))} {draw(_host)}"
    via += "" if draw(st.booleans()) else f":{draw(st.integers(1, 65535))}"
    via += f";branch={branch}" + draw(st.sampled_from(["", ";rport", ";rport=5060"]))
    from_tag = draw(_token)
    display = draw(_display)
    from_ = f"{display + ' ' if display else ''}<{draw(_sip_uri)}>;tag={from_tag}"
    to_uri = draw(_sip_uri)
    to = f"<{to_uri}>"
    call_id = draw(_token) + "@" + draw(_host)
    seq = draw(st.integers(0, 2**32 - 1))
    contacts = draw(st.lists(_sip_uri, max_size=3))
    extra = draw(st.lists(st.tuples(_token.map(lambda t: "X-" + t), _value), max_size=4))
    body = draw(st.binary(max_size=40))
    mf = draw(st.integers(0, 255))
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", f"Max-Forwards: {mf}", f"From: {from_}",
             f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {seq} {method}"]
    if contacts:
        lines.append("Contact: " + ", ".join(f"<{c}>" for c in contacts))
    lines += [f"{name}: {value}" for name, value in extra]
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    facts = {"method": method, "uri": uri, "branch": branch, "from_tag": from_tag, "to_uri": to_uri,
             "call_id": call_id, "seq": seq, "contacts": contacts, "extra": extra, "body": body,
             "mf": mf, "display": display}
    return data, facts


@settings(max_examples=400, deadline=None, database=None)
@given(requests())
def test_request_round_trip(case: tuple[bytes, dict[str, object]]) -> None:
    data, facts = case
    msg = parse_message(data, stream=True)
    assert isinstance(msg, Request)
    assert msg.method == facts["method"]
    assert msg.uri_text == facts["uri"] and str(msg.uri) == facts["uri"]
    assert isinstance(msg.uri, SipURI)
    assert msg.top_via.branch == facts["branch"]
    assert msg.from_tag == facts["from_tag"] and msg.from_.display == facts["display"]
    assert str(msg.to.uri) == facts["to_uri"] and msg.to_tag is None
    assert msg.call_id == facts["call_id"]
    assert (msg.cseq.seq, msg.cseq.method) == (facts["seq"], facts["method"])
    assert msg.max_forwards == facts["mf"]
    assert [str(c.uri) for c in msg.contacts] == facts["contacts"]
    extra = facts["extra"]
    assert isinstance(extra, list)
    for name, value in extra:
        assert value in msg.header_lines(name)
    assert msg.body == facts["body"]
    assert msg.to_bytes() == data
    again = parse_message(msg.to_bytes())
    assert again.to_bytes() == data and str(again.top_via) == str(msg.top_via)
