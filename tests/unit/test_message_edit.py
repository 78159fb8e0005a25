"""Edit-preserving serialisation (issue "SIP message core"; RFC 3261 §16.6 proxy edits).

A proxy adds a Via, pops the top Route, adds a Record-Route and decrements Max-Forwards. Every
other byte of the message must stay as received: the expected output here is built from the
input text with exactly those lines changed, independently of the message model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipserver.sip import (
    Header,
    ParseError,
    Request,
    Response,
    make_request,
    parse_message,
    parse_sip_uri,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"

NEW_VIA = "SIP/2.0/TCP edge.example.net:5060;branch=z9hG4bKedgetest1"
NEW_RR = "<sip:VskztcQ@edge.example.net;lr;ob>"
COMPACT = {"v": "via", "m": "contact", "l": "content-length", "f": "from", "t": "to", "i": "call-id"}


def vector(sub: str, name: str) -> bytes:
    return (VECTORS / sub / name).read_bytes()


def example_names() -> list[str]:
    folder = VECTORS / "rfc-examples"
    names = sorted(p.name for p in folder.glob("*.txt") if "websocket-handshake" not in p.name)
    assert names, f"no RFC example messages in {folder}"
    return names


# ------------------------------------------------------------------ the text-level model


def split_message(data: bytes) -> tuple[str, list[str], bytes]:
    """(start line, header lines with their continuation lines, body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    start, *rest = head.decode("utf-8", "surrogateescape").split("\r\n")
    lines: list[str] = []
    for line in rest:
        if line[:1] in (" ", "\t"):
            lines[-1] += "\r\n" + line
        else:
            lines.append(line)
    return start, lines, body


def name_of(line: str) -> str:
    name = line.partition(":")[0].strip().lower()
    return COMPACT.get(name, name)


def written_name(line: str) -> str:
    return line.partition(":")[0].rstrip(" \t")


def unfolded_value(line: str) -> str:
    return " ".join(p.strip() for p in line.partition(":")[2].split("\r\n")).strip()


def join(start: str, lines: list[str], body: bytes) -> bytes:
    if not any(name_of(line) == "content-length" for line in lines):
        lines = [*lines, f"Content-Length: {len(body)}"]
    return "\r\n".join([start, *lines, "", ""]).encode("utf-8", "surrogateescape") + body


def first(lines: list[str], key: str) -> int | None:
    return next((i for i, line in enumerate(lines) if name_of(line) == key), None)


def expected_proxy_edit(data: bytes) -> tuple[bytes, str | None]:
    """The input with a Via added on top, the top Route value popped, a Record-Route added on
    top and Max-Forwards decremented."""
    start, lines, body = split_message(data)
    lines = list(lines)
    i = first(lines, "via")
    assert i is not None
    lines.insert(i, f"Via: {NEW_VIA}")
    popped = None
    i = first(lines, "route")
    if i is not None:
        values = [v.strip() for v in re.findall(r"<[^>]*>[^,]*", unfolded_value(lines[i]))]
        popped = values[0]
        if len(values) == 1:
            del lines[i]
        else:
            lines[i] = f"{written_name(lines[i])}: {', '.join(values[1:])}"
    i = first(lines, "record-route")
    if i is None:
        lines.append(f"Record-Route: {NEW_RR}")
    else:
        lines.insert(i, f"Record-Route: {NEW_RR}")
    i = first(lines, "max-forwards")
    assert i is not None
    lines[i] = f"{written_name(lines[i])}: {int(unfolded_value(lines[i])) - 1}"
    return join(start, lines, body), popped


def proxy_edit(req: Request) -> str | None:
    req.add_header("Via", NEW_VIA, top=True)
    popped = req.pop_first_value("Route")
    req.add_header("Record-Route", NEW_RR, top=True)
    mf = req.max_forwards
    assert mf is not None
    req.set_header("Max-Forwards", str(mf - 1))
    return popped


def check_proxy_edit(data: bytes) -> None:
    req = parse_message(data)
    assert isinstance(req, Request)
    original = req.to_bytes()
    copy = req.copy()
    popped = proxy_edit(copy)
    expected, expected_popped = expected_proxy_edit(data)
    assert copy.to_bytes() == expected
    assert popped == expected_popped
    assert req.to_bytes() == original  # the copy's edits do not leak into the original
    # The edited message reads back as a proxy would expect.
    again = parse_message(copy.to_bytes())
    assert again.vias[0].raw == NEW_VIA
    assert again.record_routes[0].raw == NEW_RR
    assert again.max_forwards == (req.max_forwards or 0) - 1
    assert len(again.routes) == max(len(req.routes) - 1, 0)


# ------------------------------------------------------------------ proxy edits on vectors


@pytest.mark.parametrize("name", ["wsinv", "longreq", "esc01", "intmeth", "mpart01", "escnull"])
def test_proxy_edit_on_rfc4475_messages(name: str) -> None:
    check_proxy_edit(vector("rfc4475", f"{name}.dat"))


@pytest.mark.parametrize("name", example_names())
def test_proxy_edit_on_rfc_examples(name: str) -> None:
    data = vector("rfc-examples", name)
    msg = parse_message(data)
    if isinstance(msg, Request):
        check_proxy_edit(data)
        return
    # A response on its way back: the proxy removes its own (top) Via value.
    assert isinstance(msg, Response)
    start, lines, body = split_message(data)
    i = first(lines, "via")
    assert i is not None
    values = [v.strip() for v in unfolded_value(lines[i]).split(",") if v.strip()]
    if len(values) == 1:
        del lines[i]
    else:
        lines[i] = f"{written_name(lines[i])}: {', '.join(values[1:])}"
    assert msg.pop_first_value("via") == values[0]
    assert msg.to_bytes() == join(start, lines, body)


def test_top_via_received_rport_edit_touches_one_line() -> None:
    """RFC 3581 §4: the server fills in received/rport on the top Via only."""
    data = vector("rfc4475", "wsinv.dat")
    req = parse_message(data)
    via = req.top_via
    req.replace_first_value("via", via.with_params(received="198.51.100.7", rport="5070").raw)
    start, lines, body = split_message(data)
    i = first(lines, "via")
    assert i is not None
    lines[i] = f"{written_name(lines[i])}: SIP/2.0/UDP 192.0.2.2;branch=390skdjuw;received=198.51.100.7;rport=5070"
    assert req.to_bytes() == join(start, lines, body)
    assert req.top_via.received == "198.51.100.7" and req.top_via.rport == 5070


def test_folded_multi_value_via_line_pop() -> None:
    """wsinv's second Via line holds two values folded over lines: popping the first keeps
    the second and nothing else changes."""
    data = vector("rfc4475", "wsinv.dat")
    req = parse_message(data)
    first_via, second_via, third_via = (v.raw for v in req.vias)
    assert req.pop_first_value("via") == first_via  # the single-value first line
    assert req.pop_first_value("v") == second_via
    assert [v.raw for v in req.vias] == [third_via]
    second = third_via
    start, lines, body = split_message(data)
    lines = [line for line in lines if name_of(line) != "via"]
    # The folded 'v:' line is rewritten holding only its second value, where it was.
    original_lines = split_message(data)[1]
    v_line = next(line for line in original_lines if line.startswith("v:"))
    lines.insert(original_lines.index(v_line) - 1, f"v: {second}")
    assert req.to_bytes() == join(start, lines, body)


# ------------------------------------------------------------------ the edit methods


def base() -> Request:
    return make_request(
        "OPTIONS",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP a.example;branch=z9hG4bK1"),
            ("Route", "<sip:p1.example;lr>, <sip:p2.example;lr>"),
            ("Route", "<sip:p3.example;lr>"),
            ("From", "<sip:alice@example.com>;tag=1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    )


def test_pop_first_value_walks_lines_and_values() -> None:
    req = base()
    assert [str(r.uri) for r in req.routes] == ["sip:p1.example;lr", "sip:p2.example;lr", "sip:p3.example;lr"]
    assert req.pop_first_value("route") == "<sip:p1.example;lr>"
    assert req.header_lines("route") == ["<sip:p2.example;lr>", "<sip:p3.example;lr>"]
    assert req.pop_first_value("Route") == "<sip:p2.example;lr>"
    assert req.pop_first_value("Route") == "<sip:p3.example;lr>"
    assert req.pop_first_value("Route") is None
    assert not req.has_header("route") and req.routes == []


def test_pop_first_value_skips_empty_lines() -> None:
    req = base()
    req.headers.insert(1, Header("Route", "route", ""))
    req.headers.insert(2, Header("Route", "route", " , "))
    req._changed()
    assert req.pop_first_value("Route") == "<sip:p1.example;lr>"
    assert req.header_lines("route") == ["<sip:p2.example;lr>", "<sip:p3.example;lr>"]


def test_add_set_remove() -> None:
    req = base()
    req.add_header("Record-Route", "<sip:rr1;lr>")  # none yet: at the end
    req.add_header("Record-Route", "<sip:rr0;lr>", top=True)
    req.add_header("Record-Route", "<sip:rr2;lr>")  # after the last one
    assert req.header_lines("record-route") == ["<sip:rr0;lr>", "<sip:rr1;lr>", "<sip:rr2;lr>"]
    req.set_header("Max-Forwards", "69")
    assert req.max_forwards == 69
    req.add_header("Max-Forwards", "1")
    req.set_header("max-forwards", "5")  # every line replaced by one
    assert req.header_lines("Max-Forwards") == ["5"]
    req.set_header("Expires", "60")  # absent: added
    assert req.expires == 60
    req.remove_header("Route")
    assert req.routes == [] and not req.has_header("route")
    req.add_header("v", "SIP/2.0/TCP b.example;branch=z9hG4bK2", top=True)
    assert [v.host for v in req.vias] == ["b.example", "a.example"]
    assert req.headers[0].name == "v"  # the name as the caller wrote it
    req.replace_first_value("Via", "SIP/2.0/TCP c.example;branch=z9hG4bK3")
    assert [v.host for v in req.vias] == ["c.example", "a.example"]
    with pytest.raises(KeyError):
        req.replace_first_value("Contact", "<sip:x@y>")


def test_canonical_names_for_new_headers() -> None:
    req = base()
    req.add_header("call-id", "c2")
    req.add_header("flow-timer", "150")
    req.add_header("x-Custom", "1")
    added = {h.value: h.name for h in req.headers}
    assert (added["c2"], added["150"], added["1"]) == ("Call-ID", "Flow-Timer", "X-Custom")
    assert req.header_lines("call-id") == ["c1", "c2"]  # after the existing line
    assert req.flow_timer == 150


def test_uri_setter_rewrites_the_request_line() -> None:
    data = vector("rfc4475", "wsinv.dat")
    req = parse_message(data)
    assert isinstance(req, Request)
    req.uri = parse_sip_uri("sip:vivekg@192.0.2.44:5060;transport=udp")
    out = req.to_bytes()
    assert out.startswith(b"INVITE sip:vivekg@192.0.2.44:5060;transport=udp SIP/2.0\r\n")
    assert out.split(b"\r\n", 1)[1] == data.split(b"\r\n", 1)[1]


def test_views_follow_edits() -> None:
    req = parse_message(vector("rfc4475", "longreq.dat"))
    assert len(req.vias) == 34
    req.pop_first_value("via")
    assert len(req.vias) == 33
    req.set_header("From", "<sip:new@example.com>;tag=9")
    assert req.from_tag == "9"
    req.set_header("CSeq", "7 INVITE")
    assert req.cseq.seq == 7


def test_body_replacement_is_written() -> None:
    req = parse_message(vector("rfc4475", "mpart01.dat"))
    req.body = b"hello"
    out = req.to_bytes()
    assert out.endswith(b"\r\n\r\nhello")
    # Content-Length is the caller's to keep right (RFC 3261 §20.14); it is not rewritten.
    assert b"Content-Length: 553" in out


def test_headers_list_edited_in_place_is_written() -> None:
    req = parse_message(vector("rfc4475", "wsinv.dat"))
    req.headers.append(Header("X-Added", "x-added", "1"))
    assert req.to_bytes().endswith(b"X-Added: 1\r\n\r\n" + req.body)


def test_malformed_edit_shows_through_views_only() -> None:
    req = base()
    req.set_header("CSeq", "not a cseq")
    with pytest.raises(ParseError):
        req.cseq  # noqa: B018
    assert b"CSeq: not a cseq\r\n" in req.to_bytes()


@pytest.mark.parametrize("materialised", [False, True])
def test_replace_top_via_touches_one_line(materialised: bool) -> None:
    """RFC 3581 §4 on the hot path: ``replace_top_via`` edits the raw lines of a message whose
    Header objects were never made; the output is the same as with a materialised header list,
    and later reads and edits see the new value."""
    data = vector("rfc4475", "wsinv.dat")
    req = parse_message(data)
    if materialised:
        assert req.headers  # makes the Header objects
    old_vias = [v.raw for v in req.vias]
    via = req.top_via.with_params(received="198.51.100.7", rport="5070")
    req.replace_top_via(via)
    start, lines, body = split_message(data)
    i = first(lines, "via")
    assert i is not None
    new_line = f"{written_name(lines[i])}: SIP/2.0/UDP 192.0.2.2;branch=390skdjuw;received=198.51.100.7;rport=5070"
    lines[i] = new_line
    assert req.to_bytes() == join(start, lines, body)
    assert req.top_via is via and req.top_via.rport == 5070
    assert [v.raw for v in req.vias][1:] == old_vias[1:]
    assert req.header_values("via")[0] == via.raw
    assert req.header("call-id") is not None and req.cseq.method == "INVITE"
    # the parse of the serialised message agrees
    again = parse_message(req.to_bytes())
    assert again.top_via.received == "198.51.100.7" and len(again.vias) == len(old_vias)
    # later edits start from the edited lines
    assert req.pop_first_value("via") == via.raw
    assert [v.raw for v in req.vias] == old_vias[1:]


def test_replace_top_via_leaves_copies_alone() -> None:
    data = vector("rfc4475", "wsinv.dat")
    req = parse_message(data)
    twin = req.copy()
    req.replace_top_via(req.top_via.with_params(received="198.51.100.7"))
    assert twin.to_bytes() == parse_message(data).to_bytes()
    assert twin.top_via.received is None and req.top_via.received == "198.51.100.7"


@pytest.mark.parametrize("name", example_names())
def test_copy_header_lines_matches_the_header_list(name: str) -> None:
    """The lines a response copies (RFC 3261 §8.2.6.2), taken from the raw lines, are the same
    Header values as those of the materialised list, grouped in the asked order."""
    data = vector("rfc-examples", name)
    msg = parse_message(data)
    keys = ("via", "from", "to", "call-id", "cseq")
    got = [(h.name, h.key, h.value, h.raw) for h in msg.copy_header_lines(keys)]
    twin = parse_message(data)
    want = [(h.name, h.key, h.value, h.raw) for k in keys for h in twin.headers if h.key == k]
    assert got == want
    assert msg.to_bytes() == twin.to_bytes()  # nothing was materialised or changed


@pytest.mark.parametrize("name", example_names())
def test_frozen_message_sends_the_same_bytes_and_reads_the_same(name: str) -> None:
    """A server transaction keeps its request and final response frozen (bytes only) for the
    32 s of timer J (RFC 3261 §17.2.2): a retransmission must get exactly the bytes of the first
    send, and anything that reads the message later (ACK matching, management) must see what
    it would have seen before freezing."""
    data = vector("rfc-examples", name)
    if name in ("rfc7118-8.1-F1-websocket-handshake-GET.txt", "rfc7118-8.1-F2-websocket-handshake-101.txt"):
        return  # HTTP, not SIP
    msg = parse_message(data)
    twin = parse_message(data)
    if isinstance(msg, Request):
        via = msg.top_via.with_params(received="198.51.100.7")
        msg.replace_top_via(via)  # an edited message freezes its edited form
        twin.replace_top_via(via)
    sent = msg.to_bytes()
    msg.freeze()
    assert msg._lines is None and msg._headers is None and msg._first is None
    assert msg.to_bytes() == sent  # the retransmission: no parsing, the same bytes
    # it reads as what went on the wire (where Content-Length was added when missing)
    assert msg.header_count() == parse_message(sent).header_count()
    assert msg.call_id == twin.call_id
    assert (msg.cseq.seq, msg.cseq.method) == (twin.cseq.seq, twin.cseq.method)
    assert [v.raw for v in msg.vias] == [v.raw for v in twin.vias]
    assert msg.to_tag == twin.to_tag and msg.supported == twin.supported
    assert [str(r) for r in msg.record_routes] == [str(r) for r in twin.record_routes]
    assert msg.to_bytes() == sent
    copy = msg.copy()
    copy.add_header("X-Test", "1")
    assert msg.to_bytes() == sent  # the copy's edit does not show through
    from sipserver.sip.message import _NO_CACHE

    assert _NO_CACHE == {}  # the shared empty cache of frozen messages stays empty
