"""Bytes -> Request/Response (RFC 3261 §7, §25).

Invariants: one pass over the header section builds the header list; only the start line, the
Via values, CSeq, From/To, Call-ID, Max-Forwards and Content-Length are checked here (every
request needs them); other headers, and the Request-URI, are parsed when a view asks (a
sip/sips Request-URI holding '?' is parsed here, to refuse escaped headers in it, RFC 3261
§19.1.5). Any problem raises ``ParseError`` with the status to answer; where the header list was
already built, ``ParseError.message`` carries it so the caller can still form the response. Work
is linear in the input; no input can make it loop.

Speed: start lines of the common shape are matched by one regex each, header names are looked
up in a cache of names already seen, and the typed views use their own fast paths (see
``headers`` and ``uri``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ParseError
from .headers import SINGLE_VALUED, canonical_name, clamped_int, header_key, is_digits, is_token
from .message import ENC, ERRORS, Message, Request, Response

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.I)
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]\Z")
_REQUEST_FAST_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]++) ([^ <>]++) SIP/2\.0\Z")
_RESPONSE_FAST_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?\Z", re.S)

DEFAULT_MAX_SIZE = 65535
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_REQUIRED_SET = frozenset(_REQUIRED)


def parse_message(data: bytes, *, stream: bool = False, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """Parse one message. ``stream``: the bytes were framed by Content-Length on TCP/TLS/WS
    (a missing Content-Length is then not a UDP "rest of datagram" body)."""
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        if data.endswith(b"\r\n") and len(data) > start:
            # A datagram whose header section runs to its end (RFC 4475 baddn archive quirk).
            end = len(data) - 2
            body_start = len(data)
        elif len(data) - start == 0:
            raise ParseError("empty message")
        else:
            raise ParseError("header section is not terminated by an empty line")
    else:
        body_start = end + 4
    head = data[start:end]
    lines = head.decode(ENC, ERRORS).split("\r\n")
    msg = _start_line(lines[0])
    _headers(msg, lines, head)
    try:
        _check_and_set_body(msg, data[body_start:], stream)
        if isinstance(msg, Request):
            _check_request(msg)
        elif isinstance(msg, Response):
            _check_common(msg)
    except ParseError as err:
        err.message = msg
        raise
    if len(data) > max_size:
        raise ParseError(f"message of {len(data)} bytes exceeds the limit of {max_size}", 513, msg)
    return msg


def _start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        m = _RESPONSE_FAST_RE.match(line)
        if m is not None:
            code, reason = m.groups()
            return Response(int(code), reason or "", [], start=line)
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("malformed status line")
        version, code = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            raise ParseError(f"unsupported SIP version {version[:20]!r}", 505)
        if not _STATUS_RE.match(code):
            raise ParseError(f"status code {code[:12]!r} is not in 100..699")
        reason = parts[2] if len(parts) > 2 else ""
        return Response(int(code), reason, [], start=line)
    m = _REQUEST_FAST_RE.match(line)
    if m is not None:
        return Request(m.group(1), m.group(2), [], start=line)
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError(
            "malformed request line: expected 'METHOD SP Request-URI SP SIP/2.0' with single spaces"
        )
    method, uri, version = parts
    if not is_token(method):
        raise ParseError(f"malformed method {method[:30]!r}")
    if version.upper() != "SIP/2.0":
        if _VERSION_RE.match(version):
            raise ParseError(f"unsupported SIP version {version[:20]!r}", 505)
        raise ParseError(f"malformed SIP version {version[:20]!r}")
    if not uri or "<" in uri or ">" in uri:
        raise ParseError("malformed Request-URI")
    return Request(method, uri, [], start=line)


_name_cache: dict[str, tuple[str, str]] = {}


def _header_name(raw_name: str, sep: str, line: str) -> tuple[str, str]:
    """(name, key) for the text before a colon; cached because names repeat across messages."""
    if not sep or not raw_name:
        if not line.strip():
            raise ParseError("empty line inside the header section")
        raise ParseError(f"header line without a colon: {line[:60]!r}")
    name = raw_name.rstrip()
    if not is_token(name):
        raise ParseError(f"malformed header name {name[:40]!r}")
    hit = (name, header_key(name))
    if len(_name_cache) < 4096:
        _name_cache[raw_name] = hit
    return hit


def _headers(msg: Message, lines: list[str], head: bytes) -> None:
    """Header lines -> the message's rows and name -> values index (``Header`` objects are
    made later, only if someone asks for ``headers``)."""
    rows: list[tuple[tuple[str, str], str, str]] = []
    vindex: dict[str, list[str]] = {}
    body_lines = lines[1:]
    items: Iterable[tuple[str, str]]
    if b"\r\n " in head or b"\r\n\t" in head:
        items = _unfold(body_lines)
    else:
        items = zip(body_lines, body_lines)  # noqa: B905 - same list twice
    cache_get = _name_cache.get
    vindex_get = vindex.get
    append = rows.append
    for raw, line in items:
        name, sep, value = line.partition(":")
        hit = cache_get(name)
        if hit is None:
            hit = _header_name(name, sep, line)
        value = value.strip()
        append((hit, value, raw))
        lst = vindex_get(hit[1])
        if lst is None:
            vindex[hit[1]] = [value]
        else:
            lst.append(value)
    msg._headers = None
    msg._rows = rows
    msg._vindex = vindex
    msg._head = head


def _unfold(lines: list[str]) -> list[tuple[str, str]]:
    """Join continuation lines (RFC 3261 §7.3.1): items are (raw text, unfolded line)."""
    out: list[tuple[str, str]] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        i += 1
        if i < n and lines[i][:1] in (" ", "\t"):
            parts = [line]
            while i < n and lines[i][:1] in (" ", "\t"):
                parts.append(lines[i])
                i += 1
            out.append(("\r\n".join(parts), " ".join(p.strip() for p in parts)))
        else:
            out.append((line, line))
    return out


def _check_and_set_body(msg: Message, body: bytes, stream: bool) -> None:
    cls = msg._vidx().get("content-length")
    if cls:
        if len(cls) > 1:
            raise ParseError("more than one Content-Length header")
        text = cls[0]
        length = clamped_int(text, 2**63)
        if length is None:
            raise ParseError(f"Content-Length is not a non-negative number: {text[:20]!r}")
        if length > len(body):
            raise ParseError(
                f"Content-Length {text[:20]} is larger than the {len(body)} body bytes received"
            )
        # Extra octets after the body in a datagram are dropped (RFC 3261 §18.3, RFC 4475 dblreq).
        msg.body = body[:length] if length < len(body) else body
    else:
        if stream and body:
            raise ParseError("Content-Length is required on stream transports")
        msg.body = body


def _check_common(msg: Message) -> None:
    index = msg._vidx()
    if len(index) != len(msg._rows or ()):  # some header appears on several lines
        for key in SINGLE_VALUED:
            lst = index.get(key)
            if lst is not None and len(lst) > 1:
                raise ParseError(f"header {canonical_name(key)} appears more than once")
    if not _REQUIRED_SET.issubset(index):
        for key in _REQUIRED:
            if key not in index:
                raise ParseError(f"missing required header {canonical_name(key)}")
    for key in ("call-id", "cseq", "max-forwards"):
        lst = index.get(key)
        if lst is not None and "," in lst[0]:
            raise ParseError(f"header {canonical_name(key)} has more than one value")
    if not msg.vias:
        raise ParseError("Via header without a value")
    msg.cseq  # noqa: B018 - validates CSeq
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    if not msg.call_id:
        raise ParseError("empty Call-ID")


def _check_request(req: Request) -> None:
    _check_common(req)
    if req.cseq.method != req.method:
        raise ParseError(f"CSeq method {req.cseq.method!r} does not match request method {req.method!r}")
    uri_text = req.uri_text
    if "?" in uri_text and uri_text[:4].lower() in ("sip:", "sips"):
        uri = req.uri
        if getattr(uri, "headers", None) is not None:
            raise ParseError("Request-URI must not carry headers ('?...'), RFC 3261 §19.1.5")
    mf = req._vidx().get("max-forwards")
    if mf is not None and not is_digits(mf[0]):
        raise ParseError(f"Max-Forwards is not a number: {mf[0][:20]!r}")
