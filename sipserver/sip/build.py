"""Building messages the server originates: responses, ACK for non-2xx, CANCEL (RFC 3261 §8.2.6,
§9.1, §17.1.1.3), and the random identifiers they need (branch, tag).

Invariants: copied headers are copied as the exact text received (so Via received/rport edits made
on the request show up in the response); nothing here reads the clock or the network.
"""

from __future__ import annotations

from .errors import ParseError
from .headers import NameAddr, header_key
from .message import Header, Message, Request, Response
from .randomness import random_hex

MAGIC_COOKIE = "z9hG4bK"

REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    430: "Flow Failed",
    439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status: int) -> str:
    return REASONS.get(status) or REASONS.get(status // 100 * 100, "Unknown")


def phrase_with_detail(status: int, detail: str | None = None) -> str:
    """The standard reason phrase with the detail in parentheses, so a client (and its user)
    sees what was wrong. RFC 3261 §25.1: a Reason-Phrase is text without CR/LF; here printable
    ASCII only (a detail may quote attacker bytes), at most 200 characters of detail."""
    base = reason_phrase(status)
    if not detail:
        return base
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in detail)[:200]
    return f"{base} ({clean})"


def new_branch() -> str:
    """An RFC 3261 §8.1.1.7 branch: magic cookie plus a random part unique in space and time."""
    return MAGIC_COOKIE + random_hex(8)


def new_tag() -> str:
    return random_hex(6)


def _copy(src: Message, key: str) -> list[Header]:
    return src.copy_header_lines((key,))


#: The request headers a response copies (RFC 3261 §8.2.6.2); a 100 also copies Timestamp.
RESPONSE_COPIED = ("via", "from", "to", "call-id", "cseq")
_TRYING_COPIED = (*RESPONSE_COPIED, "timestamp")


def _has_tag(to_value: str) -> bool:
    """Whether a To value carries a tag header parameter (a ``;tag=`` inside ``<...>`` is a URI
    parameter and does not count). A To value too broken to parse counts as tagged when it
    shows ``;tag`` anywhere, so a second tag is never added."""
    try:
        return NameAddr.parse(to_value, "To").has_param("tag")
    except ParseError:
        return ";tag" in "".join(to_value.split()).lower()


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied;
    ``to_tag`` is added to To when To has none and the status is above 100.

    Works on a partially valid request too (the ParseError path), copying what is there."""
    hdrs = request.copy_header_lines(_TRYING_COPIED if status == 100 else RESPONSE_COPIED)
    if to_tag is not None and status > 100:
        for i, h in enumerate(hdrs):
            if h.key == "to":
                if not _has_tag(h.value):
                    hdrs[i] = Header(h.name, h.key, f"{h.value};tag={to_tag}")
                break
    for name, value in headers or ():
        key = header_key(name)
        hdrs.append(Header(name, key, value))
    return Response(status, reason if reason is not None else reason_phrase(status), hdrs, body)


def make_ack_for_non2xx(invite: Request, response: Response) -> Request:
    """The ACK the INVITE client transaction sends for a 3xx-6xx (RFC 3261 §17.1.1.3): same
    Request-URI, Call-ID, From, CSeq number and top Via as the INVITE, To from the response,
    the INVITE's Route set."""
    return _same_hop_request(invite, "ACK", to_from=response)


def make_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, To, From, CSeq
    number and top Via (so it matches the INVITE's branch), and the INVITE's Route set."""
    return _same_hop_request(invite, "CANCEL", to_from=invite)


def _same_hop_request(invite: Request, method: str, *, to_from: Message) -> Request:
    """A request that belongs to the INVITE's transaction hop: its top Via, Route set, From,
    Call-ID and CSeq number, with To taken from ``to_from``."""
    hdrs: list[Header] = [Header("Via", "via", invite.header_values("via")[0])]
    hdrs.extend(_copy(invite, "route"))
    hdrs.append(Header("Max-Forwards", "max-forwards", "70"))
    hdrs.extend(_copy(invite, "from"))
    hdrs.extend(_copy(to_from, "to"))
    hdrs.extend(_copy(invite, "call-id"))
    hdrs.append(Header("CSeq", "cseq", f"{invite.cseq.seq} {method}"))
    hdrs.append(Header("Content-Length", "content-length", "0"))
    return Request(method, invite.uri_text, hdrs)


def make_request(
    method: str,
    uri: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> Request:
    """A request from (name, value) pairs, for tests and server-originated requests."""
    hdrs = [Header(name, header_key(name), value) for name, value in headers]
    return Request(method, uri, hdrs, body)
