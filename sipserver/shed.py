"""Cheap shedding (issue 19): while the server is overloaded, answer a new out-of-dialog request
503 + Retry-After from a byte-level scan of its header lines, before the parser, the
transaction layer or the registrar see it (RFC 3261 §21.5.4, §8.2.6: a stateless response).

Sans-IO: ``early_503`` takes the raw message and returns the response bytes, or None when the
message must take the full path. It returns None for anything it is not sure about, so the full
path (which sheds too, with a parsed message) stays the reference:
- responses, ACK and CANCEL (they end or acknowledge work already done);
- in-dialog requests (a To tag: a BYE ends a call, shedding it keeps resources busy), except
  those carrying the To tag of a byte-level 503, which ``in_shed_dialog`` answers 481;
- a retransmission of a request the server already accepted (``known`` finds its
  transaction: it gets the transaction's answer, not a 503);
- folded headers, compact-form doubts, a Via that does not look like ``SIP/2.0/X host[:port]``.

Invariants: linear in the message's header size; never raises on any input.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SHED_TAG", "early_503", "acks_shed_503", "in_shed_dialog"]

#: The To tag of every byte-level 503 starts with this: its ACK is recognised and dropped.
SHED_TAG = b"503shed"

# RFC 3261 §7.3.3 compact forms: v Via, f From, t To, i Call-ID.
_WANTED = {
    b"via": b"Via", b"v": b"Via",
    b"from": b"From", b"f": b"From",
    b"to": b"To", b"t": b"To",
    b"call-id": b"Call-ID", b"i": b"Call-ID",
    b"cseq": b"CSeq",
}
_PASS_METHODS = (b"ACK", b"CANCEL")

#: (branch, sent-by host lower-cased, port or None, method): the server transaction key.
TxnKey = tuple[str, str, "int | None", str]


def _sent_by(via: bytes) -> tuple[str, int | None] | None:
    """Host and port of a Via value ``SIP/2.0/X host[:port][;params]``; None when unsure."""
    parts = via.split(None, 1)
    if len(parts) != 2 or not parts[0].upper().startswith(b"SIP/2.0/"):
        return None
    hostport = parts[1].split(b";", 1)[0].strip()
    if not hostport or hostport.startswith(b"["):
        return None  # IPv6 reference: left to the parser
    host, sep, port = hostport.partition(b":")
    if sep:
        if not port.isdigit():
            return None
        return host.decode("ascii", "replace").lower(), int(port)
    return host.decode("ascii", "replace").lower(), None


def _param(value: bytes, name: bytes) -> bytes | None:
    for p in value.split(b";")[1:]:
        k, _, v = p.partition(b"=")
        if k.strip().lower() == name:
            return v.strip()
    return None


def _scan(data: bytes) -> tuple[bytes, list[bytes], dict[bytes, bytes]] | None:
    """Method, Via values and the From/To/Call-ID/CSeq values of a request whose header lines
    are simple enough to answer from bytes; None for a response or anything unsure."""
    if data.startswith(b"SIP/"):
        return None
    sp = data.find(b" ")
    if sp <= 0:
        return None
    method = data[:sp]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    vias: list[bytes] = []
    found: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            return None  # folded header: the parser's job
        colon = line.find(b":")
        if colon <= 0:
            return None
        name = _WANTED.get(line[:colon].strip().lower())
        if name is None:
            continue
        value = line[colon + 1 :].strip()
        if name == b"Via":
            vias.extend(v.strip() for v in value.split(b","))
        elif name in found:
            return None
        else:
            found[name] = value
    if not vias or len(found) != 4:
        return None
    cseq = found[b"CSeq"].split()
    if len(cseq) != 2 or cseq[1] != method:
        return None
    return method, vias, found


def _response(
    status: bytes, vias: list[bytes], found: dict[bytes, bytes], to: bytes, source: tuple[str, int],
    extra: list[bytes],
) -> bytes:
    """A stateless response (RFC 3261 §8.2.6): the request's Vias, the top one with
    ``received`` and a filled ``rport`` (RFC 3581) as the full path's would have."""
    top = vias[0]
    rport = _param(top, b"rport")
    if rport is not None and rport == b"":
        top = top.replace(b";rport", b";rport=%d" % source[1], 1)
    top += b";received=" + source[0].encode("ascii")
    out = [b"SIP/2.0 " + status, b"Via: " + top]
    out.extend(b"Via: " + v for v in vias[1:])
    out.append(b"From: " + found[b"From"])
    out.append(b"To: " + to)
    out.append(b"Call-ID: " + found[b"Call-ID"])
    out.append(b"CSeq: " + found[b"CSeq"])
    out.extend(extra)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def early_503(
    data: bytes,
    source: tuple[str, int],
    retry_after: int,
    known: Callable[[TxnKey], bool],
    server: bytes = b"",
) -> bytes | None:
    """The 503 to send instead of handling ``data``, or None to give it to the full path.

    ``source`` is the address the request came from (for ``received``/``rport``)."""
    scanned = _scan(data)
    if scanned is None:
        return None
    method, vias, found = scanned
    if method in _PASS_METHODS:
        return None
    if _param(found[b"To"], b"tag") is not None:
        return None  # in-dialog: never shed
    top = vias[0]
    sent_by = _sent_by(top)
    branch = _param(top, b"branch")
    if sent_by is None or branch is None or not branch.startswith(b"z9hG4bK"):
        return None  # no RFC 3261 branch: RFC 2543 transaction matching is the full path's
    if known((branch.decode("ascii", "replace"), sent_by[0], sent_by[1], method.decode("ascii", "replace"))):
        return None  # a retransmission of accepted work: its transaction answers
    to = found[b"To"] + b";tag=" + SHED_TAG + str(abs(hash(found[b"Call-ID"])) % 10**8).encode()
    extra = [b"Retry-After: %d" % retry_after]
    if server:
        extra.append(b"Server: " + server)
    return _response(b"503 Service Unavailable (overload)", vias, found, to, source, extra)


def in_shed_dialog(data: bytes, source: tuple[str, int], server: bytes = b"") -> bytes | None:
    """The 481 for a request inside the "dialog" of a byte-level 503, or None for any other
    message (checked on every message: a substring search unless the tag is there).

    A 503 is final: it makes no dialog (RFC 3261 §12.1), so a request carrying its To tag
    belongs to none, and §12.2.2 answers such a request 481. Clients send them: sipp, for one,
    ends every failed call with a BYE carrying the 503's tag. The full path would look the
    Request-URI up and forward the BYE to the callee, who answers 481 after a whole proxied
    transaction: under overload that made each shed INVITE cost two served requests. ACK and
    CANCEL are not answered here (``acks_shed_503`` drops the ACK; a CANCEL has no To tag)."""
    if b";tag=" + SHED_TAG not in data:
        return None
    scanned = _scan(data)
    if scanned is None:
        return None
    method, vias, found = scanned
    tag = _param(found[b"To"], b"tag")
    if method in _PASS_METHODS or tag is None or not tag.startswith(SHED_TAG):
        return None
    extra = [b"Server: " + server] if server else []
    return _response(b"481 Call/Transaction Does Not Exist", vias, found, found[b"To"], source, extra)


def acks_shed_503(data: bytes) -> bool:
    """An ACK of a byte-level 503 (RFC 3261 §17.1.1.3: hop by hop, it ends with us): nothing to
    forward or match, so it is dropped unparsed."""
    return data.startswith(b"ACK ") and b";tag=" + SHED_TAG in data
