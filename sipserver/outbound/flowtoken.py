"""Flow tokens: the Path / Record-Route user part that names a flow (RFC 5626 §5.2).

A token is ``base64url(MAC || S)`` without padding, where S is the binary flow::

    octet 0      version (high nibble, currently 1) | transport code (low nibble)
    octet 1      address family: 4 or 6
    local IP     4 or 16 octets
    local port   2 octets, big endian
    remote IP    4 or 16 octets (same family as local)
    remote port  2 octets
    serial       8 octets, unsigned big endian

and MAC is HMAC-SHA256(key, S) truncated to 96 bits. A token minted by a node of a cluster
(issue 20, ``[cluster] node_id``) has version 2 and the node's name (1..32 ASCII octets) after
the serial, inside the MAC: the token says which node holds the flow, and a node that is not the
one named never takes it for a flow of its own (with ``--workers`` every node has the same
addresses, and serials of different processes collide). RFC 5626 §5.2 gives HMAC-SHA1-80 over a
similar S only as an example; any scheme that is unique per flow and makes tampering detectable
will do (OB-EP-02, OB-EP-06).

Invariants:
- the same Flow always gives the same token under one key; distinct Flows give distinct tokens
  (S is an injective encoding of the Flow);
- a token decodes only if its MAC verifies under the current key or one of the previous keys,
  compared in constant time; everything else raises ``InvalidToken`` and nothing else;
- tokens use only ``A-Z a-z 0-9 - _`` (RFC 3261 ``unreserved``), so one can be the user part of
  ``sip:TOKEN@host;lr;ob`` without escaping, and the encoding is canonical: exactly one string
  decodes to a given S, so flipping any character of a valid token invalidates it;
- decoded hosts are canonical ``ipaddress`` strings (``ip_address(h).compressed``), so Flows built
  by the transport should use the same form for a decoded Flow to compare equal.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac as _stdlib_hmac
import ipaddress
import re
import struct
from collections.abc import Callable, Sequence

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from sipserver.outbound.flow import Flow, Transport

__all__ = ["FlowTokenCodec", "ForeignToken", "InvalidToken", "token_node", "valid_node"]

MIN_KEY_BYTES = 16
MAC_BYTES = 12
VERSION = 1
NODE_VERSION = 2
MAX_NODE_BYTES = 32
_NODE_RE = re.compile(rb"[a-z0-9][a-z0-9_-]{0,31}")

# Wire codes are fixed here rather than derived from the enum order so that reordering or
# extending ``Transport`` never changes the meaning of tokens already handed out.
_TRANSPORT_CODES: dict[Transport, int] = {
    Transport.UDP: 1,
    Transport.TCP: 2,
    Transport.TLS: 3,
    Transport.WS: 4,
    Transport.WSS: 5,
}
_CODE_TRANSPORTS: dict[int, Transport] = {code: t for t, code in _TRANSPORT_CODES.items()}

# S per address family: header octets, local IP, local port, remote IP, remote port, serial.
_LAYOUT = {4: struct.Struct("!BB4sH4sHQ"), 6: struct.Struct("!BB16sH16sHQ")}
_BODY_LEN = {family: layout.size for family, layout in _LAYOUT.items()}
_TOKEN_BYTES = {family: MAC_BYTES + size for family, size in _BODY_LEN.items()}
_MAX_SERIAL = 2**64 - 1


def _b64_len(n: int) -> int:
    """Unpadded base64 length of n octets."""
    return (4 * n + 2) // 3


_TOKEN_CHARS = {_b64_len(n): n for n in _TOKEN_BYTES.values()}
# Version 2 adds 1..MAX_NODE_BYTES octets of node name.
for _n in _TOKEN_BYTES.values():
    for _extra in range(1, MAX_NODE_BYTES + 1):
        _TOKEN_CHARS[_b64_len(_n + _extra)] = _n + _extra
_BODY_SIZES = set(_BODY_LEN.values())
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")

_ENCODE_CACHE_SIZE = 4096
_DECODE_CACHE_SIZE = 4096


class InvalidToken(Exception):
    """A flow token that does not decode or verify. RFC 5626 §5.3.1: answer 403 (OB-EP-07)."""


class ForeignToken(InvalidToken):
    """A genuine token (its MAC verifies) naming a flow another node of the cluster holds: not a
    flow of ours. Callers that know the cluster send the request to ``node``; the others treat it
    as any token that is not ours (403)."""

    def __init__(self, node: str, flow: Flow) -> None:
        super().__init__(f"flow token names a flow of cluster node {node!r}")
        self.node = node
        self.flow = flow


def _pack_ipv4_fast(host: str) -> bytes | None:
    """Strict dotted quad without ``ipaddress`` (about 3x cheaper); None means "ask ipaddress".

    Accepts only what ``ipaddress`` accepts *and* already prints canonically (ASCII digits, no
    leading zeros), so the fast path never changes which strings are valid.
    """
    parts = host.split(".")
    if len(parts) != 4:
        return None
    octets = []
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()):
            return None
        if len(part) > 1 and part[0] == "0":
            return None
        value = int(part)
        if value > 255:
            return None
        octets.append(value)
    return bytes(octets)


@functools.lru_cache(maxsize=1024)
def _pack_host(host: str) -> tuple[int, bytes]:
    """(IP version, packed address); ValueError if ``host`` is not an IP address string.

    Cached: a server has a handful of local addresses and its peers send many requests each.
    """
    if not isinstance(host, str):
        raise ValueError(f"host {host!r} is not a string")
    packed = _pack_ipv4_fast(host)
    if packed is not None:
        return 4, packed
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        # A scope id would be lost on the wire, so the decoded Flow would not match.
        raise ValueError(f"host {host!r} has a scope id, which a flow token cannot carry")
    return addr.version, addr.packed


def _check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port!r} is not in 0..65535")
    return port


def _flow_body(flow: Flow, node: bytes = b"") -> bytes:
    """The binary S for a flow (version 2 with ``node`` appended when one is given); ValueError
    if the Flow cannot be represented."""
    code = _TRANSPORT_CODES.get(flow.transport)
    if code is None:
        raise ValueError(f"unsupported transport {flow.transport!r}")
    try:
        (lhost, lport), (rhost, rport) = flow.local, flow.remote
    except (TypeError, ValueError):
        raise ValueError("flow addresses must be (host, port) pairs") from None
    lfam, lip = _pack_host(lhost)
    rfam, rip = _pack_host(rhost)
    if lfam != rfam:
        raise ValueError("local and remote addresses are of different IP families")
    serial = flow.serial
    if not isinstance(serial, int) or not 0 <= serial <= _MAX_SERIAL:
        raise ValueError(f"serial {serial!r} does not fit in 64 unsigned bits")
    version = NODE_VERSION if node else VERSION
    return _LAYOUT[lfam].pack(
        (version << 4) | code, lfam, lip, _check_port(lport), rip, _check_port(rport), serial
    ) + node


@functools.lru_cache(maxsize=4096)
def _unpack_host(packed: bytes) -> str:
    """Canonical text of a packed address (``ipaddress`` ``compressed`` form), cached."""
    if len(packed) == 4:
        # The dotted quad of the octets is already the canonical form, and much cheaper.
        return ".".join(map(str, packed))
    return ipaddress.IPv6Address(packed).compressed


def _parse_body(body: bytes) -> tuple[Flow, str]:
    """Fields of an authenticated S and the node it names ("" for version 1); InvalidToken if
    its header disagrees with its layout."""
    version, code = body[0] >> 4, body[0] & 0x0F
    if version not in (VERSION, NODE_VERSION):
        raise InvalidToken(f"unsupported flow token version {version}")
    transport = _CODE_TRANSPORTS.get(code)
    if transport is None:
        raise InvalidToken(f"unknown transport code {code} in flow token")
    layout = _LAYOUT.get(body[1])
    expected = len(body) == layout.size if layout is not None and version == VERSION else (
        layout is not None and len(body) > layout.size
    )
    if layout is None or not expected:
        raise InvalidToken("flow token address family does not match its length")
    node = body[layout.size:]
    if version == NODE_VERSION and _NODE_RE.fullmatch(node) is None:
        raise InvalidToken("flow token names no valid node")
    _, _, lip, lport, rip, rport, serial = layout.unpack(body[: layout.size])
    return Flow(
        transport=transport,
        local=(_unpack_host(lip), lport),
        remote=(_unpack_host(rip), rport),
        serial=serial,
    ), node.decode("ascii")


def valid_node(name: str) -> bool:
    """Whether ``name`` may name a cluster node (lower-case letters, digits, ``_``, ``-``)."""
    return _NODE_RE.fullmatch(name.encode("ascii", "replace")) is not None


def token_node(token: str) -> str:
    """The node a token names, read WITHOUT checking its MAC: for counting and display only
    (``ctl cluster``), never for a routing or trust decision. "" when it names none."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return ""
    body = raw[MAC_BYTES:]
    if len(body) < 2 or body[0] >> 4 != NODE_VERSION or body[1] not in _LAYOUT:
        return ""
    return body[_LAYOUT[body[1]].size:].decode("ascii", "replace")


def _keyed_context(key: bytes) -> crypto_hmac.HMAC:
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"flow token keys must be at least {MIN_KEY_BYTES} bytes")
    return crypto_hmac.HMAC(bytes(key), hashes.SHA256())


def _to_key_tuple(keys: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(keys)


@attrs.frozen(slots=True, eq=False)
class FlowTokenCodec:
    """Mints and verifies flow tokens with ``key``; tokens from ``previous_keys`` still verify.

    Key rotation: start with the new key as ``key`` and the old one in ``previous_keys`` for as
    long as old Paths may live (the longest registration), so existing bindings keep routing.
    A key that is in neither is refused, which is what a restart with a fresh key must do
    (OB-EP-06). The keys never appear in repr or error messages.
    """

    key: bytes = attrs.field(repr=False)
    previous_keys: tuple[bytes, ...] = attrs.field(default=(), converter=_to_key_tuple, repr=False)
    #: This node's name in a cluster (issue 20); "" for a server on its own. Tokens minted here
    #: name it; tokens naming another node decode to ``ForeignToken``.
    node: str = ""
    # HMAC contexts already keyed: copying one skips the per-call key schedule (~3x faster).
    _contexts: tuple[crypto_hmac.HMAC, ...] = attrs.field(init=False, repr=False)
    _encode_cached: Callable[[Flow], str] = attrs.field(init=False, repr=False)
    _decode_cached: Callable[[str], tuple[Flow, str]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Frozen: the contexts and caches below are only right for the keys given at creation.
        init = object.__setattr__
        if self.node and _NODE_RE.fullmatch(self.node.encode("ascii", "replace")) is None:
            raise ValueError(f"node name {self.node!r} is not 1..32 of a-z 0-9 _ -")
        init(self, "_contexts", tuple(_keyed_context(k) for k in (self.key, *self.previous_keys)))
        # Per instance caches (a module-level cache would mix keys). Only successful results are
        # cached, so forged tokens cannot evict good entries faster than real traffic does.
        init(self, "_encode_cached", functools.lru_cache(maxsize=_ENCODE_CACHE_SIZE)(self._encode))
        init(self, "_decode_cached", functools.lru_cache(maxsize=_DECODE_CACHE_SIZE)(self._decode))

    def _mac(self, index: int, body: bytes) -> bytes:
        ctx = self._contexts[index].copy()
        ctx.update(body)
        return ctx.finalize()[:MAC_BYTES]

    def encode(self, flow: Flow) -> str:
        """The token for ``flow`` (OB-EP-02: unique per flow, stable for the same flow).

        ValueError if the flow cannot be encoded: hosts that are not IP addresses, mixed IP
        families, IPv6 scope ids, ports outside 0..65535, serials outside 64 unsigned bits.
        """
        return self._encode_cached(flow)

    def _encode(self, flow: Flow) -> str:
        body = _flow_body(flow, self.node.encode("ascii"))
        raw = self._mac(0, body) + body
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def mac_text(self, body: bytes) -> str:
        """A MAC of ``body`` under the current key, as base64url (for proofs other than tokens:
        the cluster hop proof, issue 20)."""
        return base64.urlsafe_b64encode(self._mac(0, body)).rstrip(b"=").decode("ascii")

    def verify_mac_text(self, body: bytes, mac: str) -> bool:
        """True when ``mac`` is ``mac_text(body)`` under one of our keys (constant time)."""
        for index in range(len(self._contexts)):
            mine = base64.urlsafe_b64encode(self._mac(index, body)).rstrip(b"=").decode("ascii")
            if _stdlib_hmac.compare_digest(mine, mac):
                return True
        return False

    def dialog_proof(self, token: str, call_id: str, tag: str) -> str:
        """A MAC binding a flow token to one dialog: its Call-ID and the caller's From tag
        (both known when the server record-routes the dialog-creating request). It rides as the
        ``dlg`` parameter of our Record-Route URI, so a Route carrying it proves the request
        belongs to a dialog this server record-routed (DESIGN.md, trust model)."""
        body = b"dialog\x00" + "\x00".join((token, call_id, tag)).encode("utf-8", "surrogateescape")
        return base64.urlsafe_b64encode(self._mac(0, body)).rstrip(b"=").decode("ascii")

    def verify_dialog_proof(self, proof: str, token: str, call_id: str, tags: Sequence[str]) -> bool:
        """True when ``proof`` is ``dialog_proof(token, call_id, tag)`` under one of our keys for
        one of ``tags`` (a request from the caller carries the caller's tag in From, one from
        the callee in To)."""
        body0 = b"dialog\x00" + "\x00".join((token, call_id, "")).encode("utf-8", "surrogateescape")
        for tag in tags:
            body = body0 + tag.encode("utf-8", "surrogateescape")
            for index in range(len(self._contexts)):
                mine = base64.urlsafe_b64encode(self._mac(index, body)).rstrip(b"=").decode("ascii")
                if _stdlib_hmac.compare_digest(mine, proof):
                    return True
        return False

    def decode(self, token: str) -> Flow:
        """The Flow a token names, if it verifies under any of our keys (OB-EP-06, OB-EP-07).

        Raises InvalidToken, and only InvalidToken, for anything else.
        """
        flow, node = self.decode_node(token)
        if node and node != self.node:
            raise ForeignToken(node, flow)
        return flow

    def decode_node(self, token: str) -> tuple[Flow, str]:
        """The Flow a genuine token names and the cluster node holding it ("" for a token minted
        by a server outside any cluster, which every node takes as its own). InvalidToken for
        anything that does not verify."""
        if not isinstance(token, str):
            raise InvalidToken("flow token is not a string")
        return self._decode_cached(token)

    def _decode(self, token: str) -> tuple[Flow, str]:
        raw_len = _TOKEN_CHARS.get(len(token))
        if raw_len is None:
            raise InvalidToken(f"flow token has the wrong length ({len(token)} characters)")
        if _TOKEN_RE.fullmatch(token) is None:
            raise InvalidToken("flow token contains characters outside base64url")
        padded = token + "=" * (-len(token) % 4)
        try:
            raw = base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            raise InvalidToken("flow token is not valid base64url") from None
        # Base64 leaves unused low bits in the last character; insist they are zero so that a
        # token has exactly one spelling (otherwise a flipped character could still verify).
        if len(raw) != raw_len or base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode():
            raise InvalidToken("flow token is not canonical base64url")
        mac, body = raw[:MAC_BYTES], raw[MAC_BYTES:]
        for index in range(len(self._contexts)):
            if _stdlib_hmac.compare_digest(self._mac(index, body), mac):
                return _parse_body(body)
        raise InvalidToken("flow token MAC does not verify (forged, corrupted, or old key)")
