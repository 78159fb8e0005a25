"""Messages the server originates: responses, ACK for non-2xx, CANCEL (RFC 3261 §8.2.6, §9.1,
§17.1.1.3), branches and tags (§8.1.1.7, §19.3). Issue "SIP message core"."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.sip import (
    Request,
    Response,
    make_ack_for_non2xx,
    make_cancel,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    reason_phrase,
)
from sipserver.sip.headers import is_token

VECTORS = Path(__file__).resolve().parents[1] / "vectors"

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bKp1, SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKua1;rport=5070;received=192.0.2.9\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.200\r\n"
    b" ;branch=z9hG4bKfolded\r\n"
    b"Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=a1\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@192.0.2.1:5070;transport=tcp>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def invite() -> Request:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    return req


def lines_of(data: bytes, name: str) -> list[bytes]:
    """The raw lines (continuations included) of header ``name``, in order."""
    out: list[bytes] = []
    keep = False
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            if keep:
                out[-1] += b"\r\n" + line
            continue
        keep = line.split(b":")[0].strip().lower() == name.lower().encode()
        if keep:
            out.append(line)
    return out


# ----------------------------------------------------------------------------- responses


def test_response_copies_the_five_headers_exactly() -> None:
    """RFC 3261 §8.2.6.2: Via (all, in order), From, To, Call-ID, CSeq as received."""
    resp = make_response(invite(), 486)
    assert (resp.status, resp.reason) == (486, "Busy Here")
    out = resp.to_bytes()
    assert out.startswith(b"SIP/2.0 486 Busy Here\r\n")
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert lines_of(out, name) == lines_of(INVITE, name), name
    assert len(lines_of(out, "Via")) == 2  # the folded line is kept folded
    assert [v.branch for v in resp.vias] == ["z9hG4bKp1", "z9hG4bKua1", "z9hG4bKfolded"]
    assert not resp.has_header("route") and not resp.has_header("contact")
    assert not resp.has_header("timestamp")
    assert b"Content-Length: 0\r\n\r\n" in out


def test_response_adds_to_tag_when_asked_and_missing() -> None:
    resp = make_response(invite(), 200, to_tag="b7")
    assert resp.to_tag == "b7"
    assert resp.header("to") == "Bob <sip:bob@example.com>;tag=b7"
    assert resp.from_tag == "a1"


def test_response_never_adds_a_second_tag() -> None:
    req = invite()
    req.set_header("To", "Bob <sip:bob@example.com>;tag=existing")
    resp = make_response(req, 200, to_tag="new")
    assert resp.header("to") == "Bob <sip:bob@example.com>;tag=existing"
    # Spacing and case as RFC 4475 wsinv writes it.
    req.set_header("To", "sip:vivekg@chair-dnrc.example.com ;   TAG    = 1918181833n")
    resp = make_response(req, 486, to_tag="new")
    assert resp.to_tag == "1918181833n"
    assert resp.header("to") == "sip:vivekg@chair-dnrc.example.com ;   TAG    = 1918181833n"


def test_tag_inside_the_uri_is_not_a_to_tag() -> None:
    req = invite()
    req.set_header("To", "<sip:bob@example.com;tag=uriparam>")
    resp = make_response(req, 480, to_tag="t9")
    assert resp.to_tag == "t9"


def test_no_tag_on_100_and_timestamp_copied() -> None:
    """RFC 3261 §8.2.6.1: a 100 Trying copies Timestamp and carries no To tag."""
    resp = make_response(invite(), 100, to_tag="x")
    assert resp.to_tag is None
    assert resp.header("timestamp") == "54"
    assert resp.reason == "Trying"


def test_response_extra_headers_body_and_reason() -> None:
    resp = make_response(
        invite(), 401, "Authentication Needed",
        headers=[("WWW-Authenticate", 'Digest realm="example.com", nonce="n"'), ("Require", "outbound")],
        body=b"x",
    )
    assert resp.reason == "Authentication Needed"
    assert resp.header("www-authenticate") == 'Digest realm="example.com", nonce="n"'
    assert resp.require == {"outbound"}
    out = resp.to_bytes()
    assert out.endswith(b"Content-Length: 1\r\n\r\nx")
    again = parse_message(out)
    assert isinstance(again, Response) and again.status == 401 and again.body == b"x"


def test_response_to_every_rfc_example_request_parses_back() -> None:
    paths = sorted((VECTORS / "rfc-examples").glob("*.txt"))
    assert paths, "no RFC example messages in tests/vectors/rfc-examples"
    for path in paths:
        if "websocket-handshake" in path.name:
            continue
        req = parse_message(path.read_bytes())
        if not isinstance(req, Request):
            continue
        resp = parse_message(make_response(req, 200, to_tag="zz").to_bytes())
        assert isinstance(resp, Response)
        assert [v.raw for v in resp.vias] == [v.raw for v in req.vias]
        assert resp.call_id == req.call_id and resp.cseq.seq == req.cseq.seq
        assert resp.to_tag == (req.to_tag or "zz")


# ----------------------------------------------------------------------------- ACK, CANCEL


def test_ack_for_non2xx() -> None:
    """RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From, CSeq number and top Via as the
    INVITE; To from the response; the INVITE's Route set; method ACK."""
    req = invite()
    resp = make_response(req, 486, to_tag="callee1")
    ack = make_ack_for_non2xx(req, resp)
    assert ack.method == "ACK" and ack.uri_text == req.uri_text
    assert [v.raw for v in ack.vias] == [req.vias[0].raw]
    assert ack.call_id == req.call_id
    assert ack.header("from") == req.header("from")
    assert ack.to_tag == "callee1" and ack.header("to") == resp.header("to")
    assert (ack.cseq.seq, ack.cseq.method) == (314159, "ACK")
    assert [str(r.uri) for r in ack.routes] == [str(r.uri) for r in req.routes]
    assert ack.max_forwards == 70
    again = parse_message(ack.to_bytes())
    assert isinstance(again, Request) and again.method == "ACK" and again.body == b""


def test_cancel() -> None:
    """RFC 3261 §9.1: same Request-URI, Call-ID, To, From, CSeq number and top Via (so the
    branch matches the INVITE's), the INVITE's Route set; method CANCEL."""
    req = invite()
    cancel = make_cancel(req)
    assert cancel.method == "CANCEL" and cancel.uri_text == req.uri_text
    assert cancel.vias[0].branch == req.vias[0].branch and len(cancel.vias) == 1
    assert cancel.header("to") == req.header("to") and cancel.header("from") == req.header("from")
    assert cancel.call_id == req.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.header_lines("route") == req.header_lines("route")
    parse_message(cancel.to_bytes())


# ----------------------------------------------------------------------------- identifiers


def test_new_branch_has_magic_cookie_and_is_unique() -> None:
    """RFC 3261 §8.1.1.7: branches start with z9hG4bK and are unique."""
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith("z9hG4bK") and len(b) > len("z9hG4bK") + 8 for b in branches)


def test_new_tag_is_unique_token() -> None:
    """RFC 3261 §19.3: tags are random tokens."""
    tags = {new_tag() for _ in range(1000)}
    assert len(tags) == 1000
    assert all(is_token(t) and len(t) >= 8 for t in tags)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(100, "Trying"), (200, "OK"), (430, "Flow Failed"), (439, "First Hop Lacks Outbound Support"),
     (505, "Version Not Supported"), (499, "Bad Request"), (299, "OK"), (799, "Unknown")],
)
def test_reason_phrase(status: int, reason: str) -> None:
    assert reason_phrase(status) == reason


def test_make_request() -> None:
    req = make_request(
        "OPTIONS", "sip:example.com",
        [("Via", f"SIP/2.0/UDP 192.0.2.1;branch={new_branch()}"), ("f", "<sip:a@example.com>;tag=1"),
         ("t", "<sip:example.com>"), ("i", "x1"), ("CSeq", "1 OPTIONS")],
        b"hi",
    )
    out = req.to_bytes()
    assert out.startswith(b"OPTIONS sip:example.com SIP/2.0\r\n")
    assert out.endswith(b"\r\nContent-Length: 2\r\n\r\nhi")
    again = parse_message(out)
    assert isinstance(again, Request) and again.from_tag == "1" and again.call_id == "x1"
