"""STUN Binding keep-alives on the SIP UDP port (RFC 5626 §8, RFC 5389).

RFC 5626 §8 has UAs send STUN Binding requests on their UDP flow to keep NAT bindings open and
to learn their public address; the edge proxy answers them on the same port it uses for SIP
(OB-EP-13). ``is_stun`` is the demultiplexer run on every datagram; ``binding_response`` builds
the answer.

Invariants:
- ``is_stun`` and ``binding_response`` never raise on received bytes; anything we do not answer
  gives ``None`` and is dropped silently, never handed to the SIP parser (OB-STUN-03);
- only a well-formed Binding *request* is answered, so we never reply to a response or an
  indication (no reflection loops between two servers);
- no STUN authentication is performed: keep-alives carry none (OB-STUN-03).
"""

from __future__ import annotations

import binascii
import ipaddress
import secrets
import struct

__all__ = [
    "STUN_MAGIC_COOKIE",
    "StunError",
    "binding_request",
    "binding_response",
    "is_stun",
    "parse_xor_mapped_address",
]

STUN_MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = STUN_MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LEN = 20
TRANSACTION_ID_LEN = 12

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101

ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02

# Comprehension-required attributes (type < 0x8000) that a Binding request may carry and that we
# understand well enough to ignore: the credential attributes of RFC 5389 §15 (and RFC 8489's
# SHA-256 variants). We do not authenticate keep-alives (RFC 5626 §8, OB-STUN-03), so a request
# carrying them is answered without MESSAGE-INTEGRITY, as for any server that uses no credential
# mechanism.
_IGNORED_REQUIRED_ATTRS = frozenset(
    {
        0x0006,  # USERNAME
        0x0008,  # MESSAGE-INTEGRITY
        0x0014,  # REALM
        0x0015,  # NONCE
        0x001C,  # MESSAGE-INTEGRITY-SHA256 (RFC 8489)
        0x001D,  # PASSWORD-ALGORITHM (RFC 8489)
        0x001E,  # USERHASH (RFC 8489)
    }
)

_INTEGRITY_ATTRS = frozenset({0x0008, 0x001C})

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_FINGERPRINT_ATTR_LEN = 8


class StunError(ValueError):
    """A STUN message that ``parse_xor_mapped_address`` cannot read."""


def is_stun(data: bytes) -> bool:
    """RFC 5389 §6 / RFC 5626 §8 demultiplexing: 20+ octets, top two bits zero, magic cookie.

    SIP messages start with a letter (or CRLF keep-alives), so they are never taken for STUN
    (OB-STUN-01).
    """
    return len(data) >= HEADER_LEN and data[0] < 0x40 and data[4:8] == _COOKIE_BYTES


def _fingerprint(data: bytes) -> int:
    """RFC 5389 §15.5: CRC-32 of the message up to the FINGERPRINT attribute, XOR 0x5354554e."""
    return (binascii.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _attributes(data: bytes) -> list[tuple[int, int, int]] | None:
    """(type, value offset, value length) for each attribute; None if the TLVs do not tile.

    RFC 5389 §15: each value is padded to a multiple of 4 octets and the attributes exactly
    fill the length given in the header.
    """
    attrs: list[tuple[int, int, int]] = []
    pos, end = HEADER_LEN, len(data)
    while pos < end:
        if end - pos < 4:
            return None
        attr_type, length = _ATTR_HEADER.unpack_from(data, pos)
        value = pos + 4
        pos = value + ((length + 3) & ~3)
        if pos > end:
            return None
        attrs.append((attr_type, value, length))
    return attrs


def _header_ok(data: bytes) -> bool:
    """Cookie, top bits and a length field that matches the datagram (RFC 5389 §6)."""
    if not is_stun(data):
        return False
    length = (data[2] << 8) | data[3]
    return length % 4 == 0 and length == len(data) - HEADER_LEN


def _xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 5389 §15.2)."""
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the client sent over IPv4
        # and expects its IPv4 address back.
        addr = addr.ipv4_mapped
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in 0..65535")
    if addr.version == 4:
        family, mask = _FAMILY_IPV4, _COOKIE_BYTES
    else:
        family, mask = _FAMILY_IPV6, _COOKIE_BYTES + transaction_id
    xaddr = bytes(a ^ m for a, m in zip(addr.packed, mask, strict=True))
    return struct.pack("!BBH", 0, family, port ^ (STUN_MAGIC_COOKIE >> 16)) + xaddr


def _message(
    msg_type: int, transaction_id: bytes, attrs: list[tuple[int, bytes]], *, fingerprint: bool
) -> bytes:
    body = b"".join(_ATTR_HEADER.pack(t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    length = len(body) + (_FINGERPRINT_ATTR_LEN if fingerprint else 0)
    out = _HEADER.pack(msg_type, length, STUN_MAGIC_COOKIE, transaction_id) + body
    if fingerprint:
        # The CRC covers the header with its length already counting the FINGERPRINT itself.
        out += _ATTR_HEADER.pack(ATTR_FINGERPRINT, 4) + struct.pack("!I", _fingerprint(out))
    return out


def binding_response(data: bytes, source: tuple[str, int]) -> bytes | None:
    """The Binding success response to send back to ``source``, or None to drop ``data``.

    Answered: a Binding request (0x0001) whose length field matches the datagram and whose
    attributes are well-formed TLVs; the answer (0x0101, same transaction id) carries
    XOR-MAPPED-ADDRESS for ``source`` (OB-STUN-01, OB-STUN-02), and FINGERPRINT when the
    request carried one.

    Dropped (None): anything else, including a FINGERPRINT that is wrong or not the last
    attribute, and any comprehension-required attribute we do not know. RFC 5389 §7.3.1 says
    the latter deserves a 420 (Unknown Attribute) error; we drop instead, because a keep-alive
    client never sends such attributes, and an unanswered request is something every STUN
    client already handles (it retransmits, then treats the flow as failed).

    ``source`` comes from our own socket, so a malformed one is a bug: ValueError.
    """
    if not _header_ok(data):
        return None
    msg_type, _, _, transaction_id = _HEADER.unpack_from(data)
    if msg_type != BINDING_REQUEST:
        return None
    attrs = _attributes(data)
    if attrs is None:
        return None
    with_fingerprint = after_integrity = False
    for index, (attr_type, value, length) in enumerate(attrs):
        if attr_type == ATTR_FINGERPRINT:
            if index != len(attrs) - 1 or length != 4:
                return None
            start = value - 4
            (received,) = struct.unpack_from("!I", data, value)
            if received != _fingerprint(data[:start]):
                return None
            with_fingerprint = True
        elif after_integrity:
            continue  # RFC 5389 §15.4: only FINGERPRINT counts after MESSAGE-INTEGRITY.
        elif attr_type in _INTEGRITY_ATTRS:
            after_integrity = True
        elif attr_type < 0x8000 and attr_type not in _IGNORED_REQUIRED_ATTRS:
            return None
    host, port = source
    xma = _xor_address(host, port, transaction_id)
    return _message(
        BINDING_SUCCESS,
        transaction_id,
        [(ATTR_XOR_MAPPED_ADDRESS, xma)],
        fingerprint=with_fingerprint,
    )


def binding_request(transaction_id: bytes | None = None, *, fingerprint: bool = False) -> bytes:
    """A Binding request as a UA sends it for a keep-alive (RFC 5626 §4.4.2); for tests/bench.

    ``transaction_id`` defaults to 12 random octets (RFC 5389 §6).
    """
    if transaction_id is None:
        transaction_id = secrets.token_bytes(TRANSACTION_ID_LEN)
    if len(transaction_id) != TRANSACTION_ID_LEN:
        raise ValueError(f"a STUN transaction id is {TRANSACTION_ID_LEN} octets")
    return _message(BINDING_REQUEST, bytes(transaction_id), [], fingerprint=fingerprint)


def parse_xor_mapped_address(response: bytes) -> tuple[str, int]:
    """(host, port) from the XOR-MAPPED-ADDRESS of a Binding success response (RFC 5389 §15.2).

    StunError if ``response`` is not a well-formed success response carrying one.
    """
    if not _header_ok(response):
        raise StunError("not a well-formed STUN message")
    msg_type, _, _, transaction_id = _HEADER.unpack_from(response)
    if msg_type != BINDING_SUCCESS:
        raise StunError(f"not a Binding success response (type 0x{msg_type:04x})")
    attrs = _attributes(response)
    if attrs is None:
        raise StunError("malformed STUN attributes")
    for attr_type, value, length in attrs:
        if attr_type != ATTR_XOR_MAPPED_ADDRESS:
            continue
        if length < 4:
            break
        _, family, xport = struct.unpack_from("!BBH", response, value)
        if family == _FAMILY_IPV4 and length == 8:
            mask = _COOKIE_BYTES
        elif family == _FAMILY_IPV6 and length == 20:
            mask = _COOKIE_BYTES + transaction_id
        else:
            break
        xaddr = response[value + 4 : value + length]
        packed = bytes(a ^ m for a, m in zip(xaddr, mask, strict=True))
        return ipaddress.ip_address(packed).compressed, xport ^ (STUN_MAGIC_COOKIE >> 16)
    raise StunError("no well-formed XOR-MAPPED-ADDRESS attribute")
