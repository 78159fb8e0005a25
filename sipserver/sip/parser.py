"""Bytes -> Request/Response (RFC 3261 §7, §25).

Invariants: one pass over the header section builds the header list; only the start line, the
Via values, CSeq, From/To and Content-Length are checked here (every request needs them); other
headers are parsed when a typed view asks. Any problem raises ``ParseError`` with the status to
answer; where the header list was already built, ``ParseError.message`` carries it so the caller
can still form the response. Work is linear in the input; no input can make it loop.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .headers import SINGLE_VALUED, canonical_name, header_key, is_token
from .message import ENC, ERRORS, Header, Message, Request, Response

_VERSION_RE = re.compile(r"SIP/\d+\.\d+\Z", re.I)
_STATUS_RE = re.compile(r"[1-6]\d\d\Z")

DEFAULT_MAX_SIZE = 65535
_REQUIRED = ("via", "from", "to", "call-id", "cseq")


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
    head = data[start:end].decode(ENC, ERRORS)
    lines = head.split("\r\n")
    first = lines[0]
    msg = _start_line(first)
    _headers(msg, lines, head)
    body = data[body_start:]
    try:
        _check_and_set_body(msg, body, stream)
        if isinstance(msg, Request):
            _check_request(msg)
        else:
            _check_response(msg)
    except ParseError as err:
        err.message = msg
        raise
    if len(data) > max_size:
        raise ParseError(f"message of {len(data)} bytes exceeds the limit of {max_size}", 513, msg)
    return msg


def _start_line(line: str) -> Message:
    if line.startswith("SIP/"):
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


def _header_name(raw_name: str) -> tuple[str, str]:
    """(name, key) for the text before a colon; cached because names repeat across messages."""
    hit = _name_cache.get(raw_name)
    if hit is not None:
        return hit
    name = raw_name.rstrip()
    if not is_token(name):
        raise ParseError(f"malformed header name {name[:40]!r}")
    hit = (name, header_key(name))
    if len(_name_cache) < 4096:
        _name_cache[raw_name] = hit
    return hit


def _headers(msg: Message, lines: list[str], head: str) -> None:
    headers: list[Header] = []
    index: dict[str, list[Header]] = {}
    if "\r\n " in head or "\r\n\t" in head:
        items = _unfold(lines)
    else:
        items = [(line, line) for line in lines]
    cache_get = _name_cache.get
    index_get = index.get
    append = headers.append
    for raw, line in items[1:]:
        name, sep, value = line.partition(":")
        hit = cache_get(name)
        if hit is None:
            if not sep or not name:
                if not line.strip():
                    raise ParseError("empty line inside the header section")
                raise ParseError(f"header line without a colon: {line[:60]!r}")
            hit = _header_name(name)
        hdr = Header(hit[0], hit[1], value.strip(), raw)
        append(hdr)
        lst = index_get(hit[1])
        if lst is None:
            index[hit[1]] = [hdr]
        else:
            lst.append(hdr)
    msg.headers = headers
    msg._index = index


def _unfold(lines: list[str]) -> list[tuple[str, str]]:
    """Join continuation lines (RFC 3261 §7.3.1): items are (raw text, unfolded line)."""
    out: list[tuple[str, str]] = [(lines[0], lines[0])]
    i = 1
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
    cls = msg.header_lines("content-length")
    if len(cls) > 1:
        raise ParseError("more than one Content-Length header")
    if cls:
        text = cls[0]
        if not text.isdigit():
            raise ParseError(f"Content-Length is not a non-negative number: {text[:20]!r}")
        length = int(text)
        if length > len(body):
            raise ParseError(
                f"Content-Length {length} is larger than the {len(body)} body bytes received"
            )
        # Extra octets after the body in a datagram are dropped (RFC 3261 §18.3, RFC 4475 dblreq).
        msg.body = body[:length] if length < len(body) else body
    else:
        if stream and body:
            raise ParseError("Content-Length is required on stream transports")
        msg.body = body


def _check_common(msg: Message) -> None:
    index = msg._idx()
    if len(index) != len(msg.headers):  # some header appears on several lines
        for key in SINGLE_VALUED:
            lst = index.get(key)
            if lst is not None and len(lst) > 1:
                raise ParseError(f"header {lst[0].name} appears more than once")
    for key in _REQUIRED:
        if key not in index:
            raise ParseError(f"missing required header {canonical_name(key)}")
    for key in ("call-id", "cseq", "max-forwards"):
        lst = index.get(key)
        if lst is not None and "," in lst[0].value:
            raise ParseError(f"header {lst[0].name} has more than one value")
    msg.vias  # noqa: B018 - validates every Via value
    msg.cseq  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    if not msg.call_id:
        raise ParseError("empty Call-ID")


def _check_request(req: Request) -> None:
    _check_common(req)
    if req.cseq.method != req.method:
        raise ParseError(f"CSeq method {req.cseq.method!r} does not match request method {req.method!r}")
    if req.uri_text[:4].lower() in ("sip:", "sips"):
        uri = req.uri
        if getattr(uri, "headers", None) is not None:
            raise ParseError("Request-URI must not carry headers ('?...'), RFC 3261 §19.1.5")
    mf = req.header("max-forwards")
    if mf is not None and not mf.strip().isdigit():
        raise ParseError(f"Max-Forwards is not a number: {mf[:20]!r}")


def _check_response(resp: Response) -> None:
    _check_common(resp)
