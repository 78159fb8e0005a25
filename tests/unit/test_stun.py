"""STUN Binding keep-alives on the SIP UDP port: RFC 5626 §8, RFC 5389 (OB-STUN-01..04)."""

from __future__ import annotations

import binascii
import ipaddress
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.outbound.stun import (
    STUN_MAGIC_COOKIE,
    StunError,
    binding_request,
    binding_response,
    is_stun,
    parse_xor_mapped_address,
)

# The RFC example payloads in tests/vectors/rfc-examples (exact by construction, see NOTES.md
# there), and the bytes they must hold: a changed file fails here rather than passing quietly.
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc-examples"
EXPECTED = {
    "rfc5389-stun-binding-request.bin": bytes.fromhex("000100002112a442") + bytes(range(1, 13)),
    "rfc5626-3.5.1-crlf-ping.bin": b"\r\n\r\n",
    "rfc5626-3.5.1-crlf-pong.bin": b"\r\n",
}


def vector(name: str) -> bytes:
    data = (VECTORS / name).read_bytes()
    assert data == EXPECTED[name], f"{name} differs from the RFC bytes in EXPECTED"
    return data


SOURCES = [
    ("192.0.2.1", 32853),
    ("203.0.113.250", 1),
    ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
    ("::1", 65535),
]

# RFC 5769 §2.1-2.3 sample messages (transaction id b7e7a701bc34d686fa87dfae).
RFC5769_TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# §2.1: an ICE connectivity check: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
# MESSAGE-INTEGRITY, FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010"
    "5354554e207465737420636c69656e74"  # SOFTWARE "STUN test client"
    "00240004"
    "6e0001ff"  # PRIORITY
    "80290008"
    "932ff9b151263b36"  # ICE-CONTROLLED
    "00060009"
    "6576746a3a68367659202020"  # USERNAME "evtj:h6vY" + padding
    "00080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004"
    "e57a3bcf"  # FINGERPRINT
)
# §2.2: IPv4 response for 192.0.2.1:32853.
RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# §2.3: IPv6 response for [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def header(msg: bytes) -> tuple[int, int, int, bytes]:
    msg_type, length, cookie = struct.unpack_from("!HHI", msg)
    return msg_type, length, cookie, msg[8:20]


def attributes(msg: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 20
    while pos < len(msg):
        t, n = struct.unpack_from("!HH", msg, pos)
        out.append((t, msg[pos + 4 : pos + 4 + n]))
        pos += 4 + n + (-n % 4)
    assert pos == len(msg)
    return out


def with_fingerprint(msg_without: bytes) -> bytes:
    """Append a FINGERPRINT (RFC 5389 §15.5), fixing the header length first."""
    body_len = len(msg_without) - 20 + 8
    msg = msg_without[:2] + struct.pack("!H", body_len) + msg_without[4:]
    crc = (binascii.crc32(msg) ^ 0x5354554E) & 0xFFFFFFFF
    return msg + struct.pack("!HHI", 0x8028, 4, crc)


def request_with_attrs(attrs: list[tuple[int, bytes]], tid: bytes = b"\x11" * 12) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    return struct.pack("!HHI", 0x0001, len(body), STUN_MAGIC_COOKIE) + tid + body


# --- OB-STUN-01: demultiplexing --------------------------------------------------------------


def test_ob_stun_01_vector_is_stun() -> None:
    assert is_stun(vector("rfc5389-stun-binding-request.bin"))


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS sip:proxy.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"",
        b"\r\n\r\n",
        b"\r\n",
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 11,  # 19 bytes: too short
        b"\x00\x01\x00\x00\x21\x12\xa4\x43" + b"\x00" * 12,  # wrong cookie
        b"\x40\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,  # top bits not zero
        b"\x80\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,
    ],
)
def test_ob_stun_01_not_stun(data: bytes) -> None:
    assert not is_stun(data)
    assert binding_response(data, ("192.0.2.1", 5060)) is None


@pytest.mark.parametrize("name", ["rfc5626-3.5.1-crlf-ping.bin", "rfc5626-3.5.1-crlf-pong.bin"])
def test_ob_ka_crlf_keepalives_are_not_stun(name: str) -> None:
    data = vector(name)
    assert not is_stun(data)
    assert binding_response(data, ("192.0.2.1", 5060)) is None


# --- OB-STUN-01/02: answering ---------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_ob_stun_02_vector_answered_with_xor_mapped_address(source: tuple[str, int]) -> None:
    request = vector("rfc5389-stun-binding-request.bin")
    response = binding_response(request, source)
    assert response is not None
    msg_type, length, cookie, tid = header(response)
    assert msg_type == 0x0101
    assert cookie == STUN_MAGIC_COOKIE
    assert tid == request[8:20]
    assert length == len(response) - 20
    assert is_stun(response)
    assert [t for t, _ in attributes(response)] == [0x0020]
    assert parse_xor_mapped_address(response) == source


def test_ob_stun_02_xor_encoding_matches_rfc5769() -> None:
    """Byte-exact XOR-MAPPED-ADDRESS values from the RFC 5769 §2.2 / §2.3 responses."""
    request = binding_request(RFC5769_TID)
    v4 = binding_response(request, ("192.0.2.1", 32853))
    v6 = binding_response(request, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
    assert v4 is not None and v6 is not None
    assert dict(attributes(v4))[0x0020] == dict(attributes(RFC5769_RESPONSE_V4))[0x0020]
    assert dict(attributes(v6))[0x0020] == dict(attributes(RFC5769_RESPONSE_V6))[0x0020]


def test_parse_xor_mapped_address_reads_rfc5769_responses() -> None:
    assert parse_xor_mapped_address(RFC5769_RESPONSE_V4) == ("192.0.2.1", 32853)
    assert parse_xor_mapped_address(RFC5769_RESPONSE_V6) == (
        "2001:db8:1234:5678:11:2233:4455:6677",
        32853,
    )


def test_ob_stun_02_ipv4_mapped_source_is_reported_as_ipv4() -> None:
    """A dual-stack socket names IPv4 peers ::ffff:a.b.c.d; the client used IPv4."""
    response = binding_response(binding_request(), ("::ffff:198.51.100.9", 4000))
    assert response is not None
    assert parse_xor_mapped_address(response) == ("198.51.100.9", 4000)


@settings(max_examples=300)
@given(
    host=st.ip_addresses().map(str),
    port=st.integers(0, 65535),
    tid=st.binary(min_size=12, max_size=12),
)
def test_ob_stun_02_any_source_round_trips(host: str, port: int, tid: bytes) -> None:
    response = binding_response(binding_request(tid), (host, port))
    assert response is not None
    assert header(response)[3] == tid
    got_host, got_port = parse_xor_mapped_address(response)
    assert got_port == port
    expected = ipaddress.ip_address(host)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    assert ipaddress.ip_address(got_host) == expected


# --- OB-STUN-03: FINGERPRINT, credentials, malformed ----------------------------------------


def test_ob_stun_03_request_with_fingerprint_is_answered_with_fingerprint() -> None:
    request = binding_request(b"\x22" * 12, fingerprint=True)
    assert [t for t, _ in attributes(request)] == [0x8028]
    response = binding_response(request, ("192.0.2.1", 5060))
    assert response is not None
    assert header(response)[0] == 0x0101
    attrs = attributes(response)
    assert [t for t, _ in attrs] == [0x0020, 0x8028]
    # The fingerprint we send verifies the way a client checks it.
    assert with_fingerprint(response[:-8]) == response
    assert parse_xor_mapped_address(response) == ("192.0.2.1", 5060)


def test_ob_stun_03_independently_built_fingerprint_is_accepted() -> None:
    request = with_fingerprint(vector("rfc5389-stun-binding-request.bin"))
    assert binding_response(request, ("192.0.2.1", 5060)) is not None


def test_ob_stun_03_wrong_fingerprint_is_dropped() -> None:
    request = bytearray(binding_request(b"\x22" * 12, fingerprint=True))
    request[-1] ^= 0x01
    assert binding_response(bytes(request), ("192.0.2.1", 5060)) is None


def test_ob_stun_03_fingerprint_not_last_is_dropped() -> None:
    """RFC 5389 §15.5: FINGERPRINT is the last attribute; one followed by more is malformed."""
    head = struct.pack("!HHI", 0x0001, 16, STUN_MAGIC_COOKIE) + b"\x33" * 12
    crc = (binascii.crc32(head) ^ 0x5354554E) & 0xFFFFFFFF  # a CRC that would otherwise match
    request = head + struct.pack("!HHI", 0x8028, 4, crc) + struct.pack("!HH", 0x8022, 4) + b"test"
    assert binding_response(request, ("192.0.2.1", 5060)) is None
    # The same fingerprint as the last attribute is accepted.
    last = _set_length(head, 8) + struct.pack(
        "!HHI", 0x8028, 4, (binascii.crc32(_set_length(head, 8)) ^ 0x5354554E) & 0xFFFFFFFF
    )
    assert binding_response(last, ("192.0.2.1", 5060)) is not None


def test_ob_stun_03_no_authentication_required() -> None:
    """USERNAME + MESSAGE-INTEGRITY are tolerated: keep-alives are not authenticated."""
    request = request_with_attrs([(0x0006, b"alice"), (0x0008, b"\x00" * 20)])
    response = binding_response(with_fingerprint(request), ("192.0.2.1", 5060))
    assert response is not None
    assert parse_xor_mapped_address(response) == ("192.0.2.1", 5060)
    assert 0x0008 not in [t for t, _ in attributes(response)]


def test_ob_stun_03_comprehension_optional_attribute_is_ignored() -> None:
    request = request_with_attrs([(0x8022, b"keepalive client"), (0xC001, b"xyz")])
    assert binding_response(request, ("192.0.2.1", 5060)) is not None


def test_rfc5769_request_fingerprint_matches_our_helper() -> None:
    """Guards the test helper (and so the fingerprint tests) against the RFC 5769 sample."""
    assert with_fingerprint(RFC5769_REQUEST[:-8]) == RFC5769_REQUEST
    assert with_fingerprint(RFC5769_RESPONSE_V4[:-8]) == RFC5769_RESPONSE_V4


def test_ob_stun_03_unknown_comprehension_required_attribute_is_dropped() -> None:
    """Documented choice: dropped instead of a 420 (see binding_response's docstring)."""
    request = request_with_attrs([(0x0003, b"\x00\x00\x00\x06")])  # CHANGE-REQUEST (RFC 5780)
    assert binding_response(request, ("192.0.2.1", 5060)) is None
    # The RFC 5769 §2.1 ICE check carries PRIORITY (0x0024): dropped for the same reason.
    assert is_stun(RFC5769_REQUEST)
    assert binding_response(RFC5769_REQUEST, ("192.0.2.1", 5060)) is None


def test_ob_stun_03_attributes_after_message_integrity_are_ignored() -> None:
    """RFC 5389 §15.4: only FINGERPRINT may follow MESSAGE-INTEGRITY; others are ignored."""
    request = request_with_attrs([(0x0008, b"\x00" * 20), (0x0003, b"\x00" * 4)])
    assert binding_response(request, ("192.0.2.1", 5060)) is not None


@pytest.mark.parametrize(
    "msg_type",
    [
        0x0101,  # Binding success response: never answer a response (no reflection loops)
        0x0111,  # Binding error response
        0x0011,  # Binding indication
        0x0002,  # another method
        0x0003,  # Allocate (TURN)
    ],
)
def test_ob_stun_03_other_types_are_dropped(msg_type: int) -> None:
    request = struct.pack("!H", msg_type) + vector("rfc5389-stun-binding-request.bin")[2:]
    assert is_stun(request)
    assert binding_response(request, ("192.0.2.1", 5060)) is None


def _set_length(msg: bytes, length: int) -> bytes:
    return msg[:2] + struct.pack("!H", length) + msg[4:]


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r[:-1],  # truncated header
        lambda r: r + b"\x00",  # trailing byte, length 0
        lambda r: r + b"\x00" * 4,  # length field says 0, datagram says 4
        lambda r: _set_length(r, 4),  # length says 4, nothing follows
        lambda r: _set_length(r + b"\x00\x00", 2),  # length not a multiple of 4
        lambda r: _set_length(r + b"\x80\x22\x00\x08abcd", 8),  # attribute overruns
        lambda r: _set_length(r + b"\x80\x22\x00\x05abcd", 8),  # padding missing
        lambda r: _set_length(r + b"\x80\x22", 2),  # attribute header cut
        lambda r: r[:4] + b"\x21\x12\xa4\x43" + r[8:],  # wrong cookie
        lambda r: _set_length(r + b"\x80\x28\x00\x00", 4),  # FINGERPRINT of length 0
    ],
)
def test_ob_stun_03_malformed_is_dropped(make: Callable[[bytes], bytes]) -> None:
    request = make(vector("rfc5389-stun-binding-request.bin"))
    assert binding_response(request, ("192.0.2.1", 5060)) is None


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_ob_stun_03_random_bytes_never_raise(data: bytes) -> None:
    is_stun(data)
    response = binding_response(data, ("192.0.2.1", 5060))
    if response is not None:
        assert is_stun(data) and data[:2] == b"\x00\x01"
        assert parse_xor_mapped_address(response) == ("192.0.2.1", 5060)


@settings(max_examples=2000)
@given(
    attrs=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=5),
    mutations=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=3),
    fingerprint=st.booleans(),
)
def test_ob_stun_03_mutated_requests_never_raise(
    attrs: list[tuple[int, bytes]], mutations: list[tuple[int, int]], fingerprint: bool
) -> None:
    data = request_with_attrs(attrs)
    if fingerprint:
        data = with_fingerprint(data)
    raw = bytearray(data)
    for pos, value in mutations:
        raw[pos % len(raw)] = value
    response = binding_response(bytes(raw), ("2001:db8::5", 5060))
    if response is not None:
        assert parse_xor_mapped_address(response) == ("2001:db8::5", 5060)
        assert response[8:20] == raw[8:20]


# --- helpers --------------------------------------------------------------------------------


def test_binding_request_shape() -> None:
    request = binding_request(bytes(range(1, 13)))
    assert request == vector("rfc5389-stun-binding-request.bin")
    a, b = binding_request(), binding_request()
    assert a[8:20] != b[8:20]  # random transaction ids
    with pytest.raises(ValueError):
        binding_request(b"short")


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"SIP/2.0 200 OK\r\n\r\n",
        binding_request(b"\x01" * 12),  # a request, not a response
        bytes.fromhex("010100002112a442") + b"\x01" * 12,  # success without attributes
        bytes.fromhex("010100082112a442") + b"\x01" * 12 + bytes.fromhex("0020000400010000"),
    ],
)
def test_parse_xor_mapped_address_errors(bad: bytes) -> None:
    with pytest.raises(StunError):
        parse_xor_mapped_address(bad)


def test_bad_source_is_a_value_error() -> None:
    request = binding_request()
    with pytest.raises(ValueError):
        binding_response(request, ("not-an-ip", 5060))
    with pytest.raises(ValueError):
        binding_response(request, ("192.0.2.1", 70000))
