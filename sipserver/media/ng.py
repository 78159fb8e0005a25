"""rtpengine's ng control protocol: commands, framing and replies. Sans-IO.

An ng message is ``COOKIE SPACE BENCODED-DICTIONARY`` in one UDP datagram
(rtpengine docs/ng_control_protocol.md). The reply carries the request's cookie; a retransmitted
request carries the *same* cookie, which is how rtpengine recognises it and replays its cached
reply instead of running the command twice. So a command is framed once (``NgRequest``) and the
very same bytes are sent on every try.

Invariants:
- ``NgCommand`` is a value: the command name and its parameters as ng dictionary keys
  (``call-id``, ``from-tag``, ``to-tag``, ``via-branch``, ``sdp``, ``flags``, ``replace``,
  ``transport-protocol``, ``ICE``, ``DTLS``, ``SDES``, ``rtcp-mux``, ``received-from``...). The
  builders (``ping``, ``offer``, ``answer``, ``delete``, ``query``) are the only way the rest of
  sipserver makes one.
- Replies come back typed: ``NgOk`` (``result`` "ok" or "pong", maybe a ``warning`` and an
  ``sdp``) or ``NgError`` (``result`` "error" or "load limit", with the ``error-reason``);
  a datagram that is not a well-formed ng reply raises ``NgProtocolError`` instead.
- Cookies come from ``sipserver.sip.randomness`` (``os.urandom``); nothing here reads a clock,
  a socket or trio.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs

from ..sip.randomness import random_hex
from .bencode import BencodeError, Value, decode, encode

__all__ = [
    "MAX_DATAGRAM",
    "CallStats",
    "MediaStats",
    "NgAddress",
    "NgCommand",
    "NgError",
    "NgFlags",
    "NgOk",
    "NgProtocolError",
    "NgReply",
    "NgResult",
    "NgUnavailable",
    "NgRequest",
    "PacketStats",
    "StreamStats",
    "TagStats",
    "answer",
    "decode_reply",
    "delete",
    "describe",
    "frame",
    "new_cookie",
    "offer",
    "parse_ng_address",
    "parse_query",
    "ping",
    "query",
    "split_message",
]

# rtpengine replies to query/delete with call statistics; one datagram holds at most this.
MAX_DATAGRAM = 65535
# Cookies are short printable tokens; a reply whose cookie is longer than this is not ours.
MAX_COOKIE = 64


class NgProtocolError(ValueError):
    """A datagram that is not a well-formed ng message (no cookie, bad bencode, no result)."""


# ------------------------------------------------------------------------------ addresses


@attrs.frozen(slots=True)
class NgAddress:
    """Where an rtpengine listens for ng: ``udp:HOST:PORT`` (the form Kamailio uses too)."""

    host: str  # an IP literal or a name; IPv6 without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}"


def parse_ng_address(text: str) -> NgAddress:
    """``udp:HOST:PORT`` (``udp:[v6]:PORT`` for IPv6) -> NgAddress; ValueError(why) otherwise."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() != "udp":
        raise ValueError("must be udp:HOST:PORT (rtpengine's ng protocol over UDP)")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise ValueError("must be udp:[IPv6]:PORT")
        port_text = tail[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or not host or ":" in host:
            raise ValueError("must be udp:HOST:PORT (IPv6 in brackets)")
        if not all(c.isalnum() or c in "-." for c in host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} must be 1..65535")
    return NgAddress(host.lower(), int(port_text))


# ------------------------------------------------------------------------------ commands


@attrs.frozen
class NgFlags:
    """The per-leg options of an offer or answer, as ng keys (docs/ng_control_protocol.md).

    They describe the side the rewritten SDP goes *to* (``transport-protocol``, ``ICE``,
    ``DTLS``, ``SDES``, ``rtcp-mux``), except ``received_from`` and the ``SIP-source-address``
    flag, which describe the side that *sent* the message."""

    transport_protocol: str | None = None  # RTP/AVP, UDP/TLS/RTP/SAVPF...
    ice: str | None = None  # force | remove | default
    dtls: str | None = None  # passive | active | off
    sdes: tuple[str, ...] = ()  # ("off",)
    rtcp_mux: tuple[str, ...] = ()  # offer, require, demux, accept, reject
    flags: tuple[str, ...] = ()  # SIP-source-address, generate-mid, ...
    replace: tuple[str, ...] = ()  # origin, session-connection
    received_from: tuple[str, str] | None = None  # ("IP4", "192.0.2.1")

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.transport_protocol:
            out["transport-protocol"] = self.transport_protocol
        if self.ice:
            out["ICE"] = self.ice
        if self.dtls:
            out["DTLS"] = self.dtls
        if self.sdes:
            out["SDES"] = list(self.sdes)
        if self.rtcp_mux:
            out["rtcp-mux"] = list(self.rtcp_mux)
        if self.flags:
            out["flags"] = list(self.flags)
        if self.replace:
            out["replace"] = list(self.replace)
        if self.received_from is not None:
            out["received-from"] = list(self.received_from)
        return out


@attrs.frozen
class NgCommand:
    """One ng request before framing: ``name`` and its dictionary (without ``command``).

    ``server`` names the rtpengine that must get it first (the one that holds the call), or
    None for the configured order."""

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    server: NgAddress | None = None

    def dictionary(self) -> dict[str, Any]:
        return {"command": self.name, **self.params}

    @property
    def call_id(self) -> str | None:
        value = self.params.get("call-id")
        return value if isinstance(value, str) else None

    def routed(self, server: NgAddress | None) -> NgCommand:
        return attrs.evolve(self, server=server)


def ping() -> NgCommand:
    return NgCommand("ping")


def _tags(
    call_id: str, from_tag: str | None, to_tag: str | None, via_branch: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"call-id": call_id}
    if from_tag:
        out["from-tag"] = from_tag
    if to_tag:
        out["to-tag"] = to_tag
    if via_branch:
        out["via-branch"] = via_branch
    return out


def offer(
    call_id: str,
    from_tag: str,
    sdp: bytes,
    flags: NgFlags,
    *,
    to_tag: str | None = None,
    via_branch: str | None = None,
) -> NgCommand:
    """An SDP offer from the party tagged ``from_tag`` (ng: the offerer's tag, whichever SIP
    header it sits in)."""
    return NgCommand("offer", {**_tags(call_id, from_tag, to_tag, via_branch), "sdp": sdp, **flags.params()})


def answer(
    call_id: str,
    from_tag: str,
    to_tag: str,
    sdp: bytes,
    flags: NgFlags,
    *,
    via_branch: str | None = None,
) -> NgCommand:
    """The SDP answer to the offer of ``from_tag``, sent by the party tagged ``to_tag``."""
    return NgCommand("answer", {**_tags(call_id, from_tag, to_tag, via_branch), "sdp": sdp, **flags.params()})


def delete(
    call_id: str,
    from_tag: str | None = None,
    to_tag: str | None = None,
    via_branch: str | None = None,
) -> NgCommand:
    """Delete a call; with only ``call_id`` the whole call, all branches."""
    return NgCommand("delete", _tags(call_id, from_tag, to_tag, via_branch))


def query(call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> NgCommand:
    return NgCommand("query", _tags(call_id, from_tag, to_tag, None))


# ------------------------------------------------------------------------------ framing


def new_cookie() -> str:
    """A fresh cookie: 16 hex digits from ``os.urandom`` (rtpengine keys its reply cache by it)."""
    return random_hex(8)


def frame(cookie: str, command: NgCommand) -> bytes:
    """``COOKIE d...e``: the datagram for ``command``."""
    if not cookie or len(cookie) > MAX_COOKIE or not cookie.isascii() or not cookie.isprintable() or " " in cookie:
        raise ValueError(f"bad ng cookie {cookie!r}")
    return cookie.encode("ascii") + b" " + encode(command.dictionary())


@attrs.frozen
class NgRequest:
    """A framed command: the bytes every try sends, and the cookie its reply must carry."""

    cookie: str
    command: NgCommand
    data: bytes

    @classmethod
    def build(cls, command: NgCommand, cookie: str | None = None) -> NgRequest:
        cookie = cookie if cookie is not None else new_cookie()
        return cls(cookie, command, frame(cookie, command))


def split_message(data: bytes) -> tuple[str, dict[bytes, Value]]:
    """(cookie, dictionary) of an ng datagram; ``NgProtocolError`` if it is not one."""
    cookie, space, body = data.partition(b" ")
    if not space or not cookie or len(cookie) > MAX_COOKIE:
        raise NgProtocolError("no cookie: an ng message is 'COOKIE d...e'")
    try:
        text = cookie.decode("ascii")
    except UnicodeDecodeError:
        raise NgProtocolError("cookie is not ASCII") from None
    if not text.isprintable():
        raise NgProtocolError("cookie is not printable")
    try:
        value = decode(body)
    except BencodeError as exc:
        raise NgProtocolError(f"bad bencode: {exc}") from None
    if not isinstance(value, dict):
        raise NgProtocolError("the message body is not a dictionary")
    return text, value


# ------------------------------------------------------------------------------ replies


@attrs.frozen
class NgOk:
    """``result`` "ok" (or "pong"). ``sdp`` is the rewritten body when there is one;
    ``server`` the rtpengine that answered (set by the client); ``raw`` the whole reply."""

    result: str
    sdp: bytes | None = None
    warning: str | None = None
    raw: Mapping[bytes, Value] = attrs.field(factory=dict, eq=False, repr=False)
    server: NgAddress | None = None


@attrs.frozen
class NgError:
    """``result`` "error" (or "load limit"): rtpengine refused the command, with its reason."""

    result: str
    reason: str
    server: NgAddress | None = None


@attrs.frozen
class NgUnavailable:
    """No rtpengine answered: every try of every server timed out or was refused."""

    reason: str


NgReply = NgOk | NgError
# What the client hands back for a command, never an exception.
NgResult = NgOk | NgError | NgUnavailable


def _text(value: Value | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def decode_reply(body: Mapping[bytes, Value]) -> NgReply:
    """A reply dictionary as a typed result; ``NgProtocolError`` when it has no usable result."""
    result = _text(body.get(b"result"))
    if result is None:
        raise NgProtocolError("reply has no 'result' string")
    if result in ("ok", "pong"):
        sdp = body.get(b"sdp")
        if sdp is not None and not isinstance(sdp, bytes):
            raise NgProtocolError("reply 'sdp' is not a string")
        return NgOk(result, sdp, _text(body.get(b"warning")), body)
    if result in ("error", "load limit"):
        reason = _text(body.get(b"error-reason")) or _text(body.get(b"message")) or result
        return NgError(result, reason)
    raise NgProtocolError(f"unknown result {result[:40]!r}")


# ------------------------------------------------------------------------------ query


@attrs.frozen
class PacketStats:
    packets: int = 0
    bytes: int = 0
    errors: int = 0


@attrs.frozen
class StreamStats:
    local_port: int | None
    endpoint: tuple[str, int] | None
    advertised_endpoint: tuple[str, int] | None
    crypto_suite: str | None
    flags: tuple[str, ...]
    stats: PacketStats


@attrs.frozen
class MediaStats:
    index: int
    type: str
    protocol: str | None
    flags: tuple[str, ...]
    streams: tuple[StreamStats, ...]


@attrs.frozen
class TagStats:
    tag: str
    label: str | None
    in_dialogue_with: str | None
    via_branch: str | None
    medias: tuple[MediaStats, ...]


@attrs.frozen
class CallStats:
    """A ``query`` reply (docs/ng_control_protocol.md, "query Message"): the tags rtpengine knows
    for the call (one may be "" for a side that has not signalled its tag) and the totals."""

    created: int | None
    last_signal: int | None
    tags: Mapping[str, TagStats]
    rtp: PacketStats
    rtcp: PacketStats


def _dict(value: Value | None) -> dict[bytes, Value]:
    return value if isinstance(value, dict) else {}


def _list(value: Value | None) -> list[Value]:
    return value if isinstance(value, list) else []


def _int(value: Value | None) -> int | None:
    return value if isinstance(value, int) else None


def _strings(value: Value | None) -> tuple[str, ...]:
    return tuple(t for t in (_text(v) for v in _list(value)) if t is not None)


def _packets(value: Value | None) -> PacketStats:
    d = _dict(value)
    return PacketStats(_int(d.get(b"packets")) or 0, _int(d.get(b"bytes")) or 0, _int(d.get(b"errors")) or 0)


def _endpoint(value: Value | None) -> tuple[str, int] | None:
    d = _dict(value)
    address, port = _text(d.get(b"address")), _int(d.get(b"port"))
    return (address, port) if address is not None and port is not None else None


def parse_query(reply: NgOk) -> CallStats:
    """The statistics of a ``query`` (or ``delete``) reply. Missing keys read as absent or zero:
    the layout grows between rtpengine versions ("last signal" is "last_signal" in old ones)."""
    raw = reply.raw
    tags: dict[str, TagStats] = {}
    for key, value in _dict(raw.get(b"tags")).items():
        t = _dict(value)
        medias = []
        for m in _list(t.get(b"medias")):
            md = _dict(m)
            streams = tuple(
                StreamStats(
                    _int(sd.get(b"local port")),
                    _endpoint(sd.get(b"endpoint")),
                    _endpoint(sd.get(b"advertised endpoint")),
                    _text(sd.get(b"crypto suite")),
                    _strings(sd.get(b"flags")),
                    _packets(sd.get(b"stats")),
                )
                for sd in (_dict(s) for s in _list(md.get(b"streams")))
            )
            medias.append(
                MediaStats(
                    _int(md.get(b"index")) or 0,
                    _text(md.get(b"type")) or "",
                    _text(md.get(b"protocol")),
                    _strings(md.get(b"flags")),
                    streams,
                )
            )
        tag = key.decode("utf-8", "replace")
        peer = _text(t.get(b"in dialogue with"))
        if peer is None:  # newer rtpengines list offer/answer subscriptions instead
            for sub in _list(t.get(b"subscriptions")):
                if _text(_dict(sub).get(b"type")) == "offer/answer":
                    peer = _text(_dict(sub).get(b"tag"))
                    break
        tags[tag] = TagStats(
            tag,
            _text(t.get(b"label")),
            peer,
            _text(t.get(b"via-branch")),
            tuple(medias),
        )
    totals = _dict(raw.get(b"totals"))
    last = raw.get(b"last signal", raw.get(b"last_signal"))
    return CallStats(
        _int(raw.get(b"created")), _int(last), tags, _packets(totals.get(b"RTP")), _packets(totals.get(b"RTCP"))
    )


def describe(command: NgCommand) -> str:
    """``offer call-id=... from-tag=...`` for log lines (no SDP)."""
    keys = ("call-id", "from-tag", "to-tag", "via-branch")
    parts = [f"{k}={command.params[k]}" for k in keys if k in command.params]
    return " ".join([command.name, *parts])
