"""Bytes -> Request/Response (RFC 3261 §7, §25).

Invariants: one pass over the header section splits the header lines and indexes their values by
name; ``Header`` objects are made only if someone asks for ``Message.headers``. Only the start
line, the Via values, CSeq, From/To, Call-ID, Max-Forwards and Content-Length are checked here
(every request needs them); other headers, and the Request-URI, are parsed when a view asks (a
sip/sips Request-URI holding '?' is parsed here, to refuse escaped headers in it, RFC 3261
§19.1.5). Any problem raises ``ParseError`` with the status to answer; where the header lines
could be read, ``ParseError.message`` carries a message holding them (a placeholder Request when
the request line itself was bad) so the caller can still form the response. Work is linear in
the input; no input can make it loop.

Speed: start lines of the common shape are matched by one regex each, header names are looked
up in a cache of names already seen, and the typed views use their own fast paths (see
``headers`` and ``uri``).
"""

from __future__ import annotations

import re

from .errors import ParseError
from .headers import (
    SINGLE_VALUED,
    canonical_name,
    clamped_int,
    header_name_key,
    is_digits,
    is_token,
    raw_key_cache,
    unfold,
)
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
    try:
        msg = _start_line(lines[0])
    except ParseError as err:
        err.message = _placeholder(lines, head)
        raise
    _headers(msg, lines, head)
    try:
        _check_and_set_body(msg, data[body_start:], stream)
        _check(msg)
    except ParseError as err:
        err.message = msg
        raise
    if len(data) > max_size:
        raise ParseError(f"message of {len(data)} bytes exceeds the limit of {max_size}", 513, msg)
    return msg


def _placeholder(lines: list[str], head: bytes) -> Message | None:
    """For a request whose request line is bad (unknown version: 505, RFC 4475 badvers; odd
    spacing or URI: 400), a Request carrying the header lines, so the caller can still copy
    Via, From, To, Call-ID and CSeq into its answer. Its method is the first word of the line
    and its Request-URI is empty. None for a bad status line (responses are never answered)
    or when the header lines are unusable too."""
    line = lines[0]
    if line.startswith("SIP/"):
        return None
    req = Request._parsed(line.split(" ", 1)[0], "", line)
    try:
        _headers(req, lines, head)
    except ParseError:
        return None
    return req


def _start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        m = _RESPONSE_FAST_RE.match(line)
        if m is not None:
            code, reason = m.groups()
            return Response._parsed(int(code), reason or "", line)
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("malformed status line")
        version, code = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            raise ParseError(f"unsupported SIP version {version[:20]!r}", 505)
        if not _STATUS_RE.match(code):
            raise ParseError(f"status code {code[:12]!r} is not in 100..699")
        reason = parts[2] if len(parts) > 2 else ""
        return Response._parsed(int(code), reason, line)
    m = _REQUEST_FAST_RE.match(line)
    if m is not None:
        method, uri = m.groups()
        return Request._parsed(method, uri, line)
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
    return Request._parsed(method, uri, line)


def _headers(msg: Message, lines: list[str], head: bytes) -> None:
    """Header lines -> the message's index (key -> first value, and key -> all values for the
    keys on several lines); the lines are kept as they are and ``Header`` objects are made
    later, only if someone asks for ``headers``."""
    raw_lines = lines[1:]
    index = _index(raw_lines, False)
    if index is None:
        # A continuation line (RFC 3261 §7.3.1 folding): index the unfolded lines instead.
        raw_lines = _join_continuations(raw_lines)
        index = _index([unfold(raw) if "\r\n" in raw else raw for raw in raw_lines], True)
        assert index is not None
    msg._lines = raw_lines
    msg._first, msg._more, msg._keys = index
    msg._head = head


def _index(
    lines: list[str], unfolded: bool
) -> tuple[dict[str, str], dict[str, list[str]] | None, list[str]] | None:
    """(key -> first value, key -> all values of keys on several lines or None, the key of
    each line) of header ``lines``; None if a line starts with SP/HTAB and the lines are not
    ``unfolded`` yet. Such a line never hits the name cache (only token names get in), so
    noticing folding costs nothing on the common path."""
    first: dict[str, str] = {}
    more: dict[str, list[str]] | None = None
    key_get = raw_key_cache.get
    keys: list[str] = []
    keys_append = keys.append
    for line in lines:
        # Most lines read "Name: value": cutting at ": " saves stripping (and copying) the
        # value. A name is never cached with a ':' in it, so when the cut is elsewhere (no
        # space after the colon, or ": " inside the value after a bare ':') the lookup misses
        # and the line is cut at its first ':' instead.
        name, _, value = line.partition(": ")
        key = key_get(name)
        if key is None:
            if not unfolded and line[:1] in (" ", "\t"):
                return None
            name, _, value = line.partition(":")
            key = key_get(name) or header_name_key(name, line)[1]
        keys_append(key)
        if key in first:
            if more is None:
                more = {}
            lst = more.get(key)
            if lst is None:
                more[key] = [first[key], value.strip()]
            else:
                lst.append(value.strip())
        else:
            first[key] = value.strip()
    return first, more, keys


def _join_continuations(lines: list[str]) -> list[str]:
    """Lines starting with SP/HTAB continue the line before (RFC 3261 §7.3.1): join each group
    back into one raw text, CRLFs kept. Linear however many continuation lines there are."""
    out: list[str] = []
    group: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:
            if not group:
                group.append(out[-1])
            group.append(line)
        else:
            if group:
                out[-1] = "\r\n".join(group)
                group = []
            out.append(line)
    if group:
        out[-1] = "\r\n".join(group)
    return out


def _check_and_set_body(msg: Message, body: bytes, stream: bool) -> None:
    first = msg._first
    assert first is not None  # set by _headers
    text = first.get("content-length")
    if text is not None:
        more = msg._more
        if more is not None and "content-length" in more:
            raise ParseError("more than one Content-Length header")
        if len(text) < 10 and text.isdigit() and text.isascii():
            length: int | None = int(text)
        else:
            length = clamped_int(text, 2**63)
        if length is None:
            raise ParseError(f"Content-Length is not a non-negative number: {text[:20]!r}")
        if length != len(body):
            if length > len(body):
                raise ParseError(
                    f"Content-Length {text[:20]} is larger than the {len(body)} body bytes received"
                )
            # Extra octets after the body in a datagram are dropped (RFC 3261 §18.3, RFC 4475
            # dblreq).
            body = body[:length]
    elif stream and body:
        raise ParseError("Content-Length is required on stream transports")
    msg.body = body


def _check(msg: Message) -> None:
    """RFC 3261 §8.1.1 / §20: the headers every message needs, once each where only one is
    allowed; builds (and so validates) the Via, CSeq, From and To views. For a request: the
    CSeq method is the request's method, Max-Forwards is a number, and a sip/sips
    Request-URI carries no headers (RFC 3261 §19.1.5)."""
    first = msg._first
    assert first is not None  # set by _headers
    more = msg._more
    if more is not None:  # some header appears on several lines
        for key in SINGLE_VALUED:
            if key in more:
                raise ParseError(f"header {canonical_name(key)} appears more than once")
    if not _REQUIRED_SET.issubset(first):
        for key in _REQUIRED:
            if key not in first:
                raise ParseError(f"missing required header {canonical_name(key)}")
    call_id = first["call-id"]
    if not call_id:
        raise ParseError("empty Call-ID")
    if "," in call_id or "," in first["cseq"]:
        raise ParseError("Call-ID or CSeq has more than one value")
    if not msg.vias:
        raise ParseError("Via header without a value")
    cseq = msg.cseq
    msg.from_  # noqa: B018 - builds and so validates the view
    msg.to  # noqa: B018
    if isinstance(msg, Request):
        if cseq.method != msg.method:
            raise ParseError(
                f"CSeq method {cseq.method!r} does not match request method {msg.method!r}"
            )
        uri_text = msg.uri_text
        if "?" in uri_text and uri_text[:4].lower() in ("sip:", "sips"):
            uri = msg.uri
            if getattr(uri, "headers", None) is not None:
                raise ParseError("Request-URI must not carry headers ('?...'), RFC 3261 §19.1.5")
        mf = first.get("max-forwards")
        if mf is not None and not is_digits(mf):
            raise ParseError(f"Max-Forwards is not a number: {mf[:20]!r}")
