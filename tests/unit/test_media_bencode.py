"""Bencode for rtpengine's ng protocol (sipserver/media/bencode.py): canonical encoding, strict
decoding with the one leniency ng needs (rtpengine does not sort dictionary keys)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipserver.media.bencode import MAX_DEPTH, MAX_INT_DIGITS, BencodeError, decode, encode


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (0, b"i0e"),
        (42, b"i42e"),
        (-7, b"i-7e"),
        (2**64, b"i18446744073709551616e"),
        (-(2**100), b"i-1267650600228229401496703205376e"),
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ("caf\u00e9", b"5:caf\xc3\xa9"),  # str goes out as UTF-8
        ([], b"le"),
        ([1, b"a", [b"b"]], b"li1e1:al1:bee"),
        ({}, b"de"),
        # ng's own example (docs/ng_control_protocol.md): the ping command
        ({"command": "ping"}, b"d7:command4:pinge"),
        # keys sorted as raw bytes, whatever order the mapping has
        ({"b": 1, "a": 2, "B": 3}, b"d1:Bi3e1:ai2e1:bi1ee"),
        ((b"x", (1,)), b"l1:xli1eee"),
    ],
)
def test_encoding_vectors(value: object, data: bytes) -> None:
    assert encode(value) == data


def test_binary_strings_round_trip() -> None:
    every_byte = bytes(range(256))
    assert decode(encode(every_byte)) == every_byte
    assert decode(encode({every_byte: [every_byte, b"\x00"]})) == {every_byte: [every_byte, b"\x00"]}
    # a string may contain the bencode syntax characters themselves
    tricky = b"d1:ae:li1ee 0: "
    assert decode(encode([tricky])) == [tricky]


def test_large_integers() -> None:
    for n in (10**300, -(10**300), 2**1000):
        assert decode(encode(n)) == n
    assert decode(b"i" + b"9" * MAX_INT_DIGITS + b"e") == int("9" * MAX_INT_DIGITS)
    with pytest.raises(BencodeError, match="longer than"):
        decode(b"i" + b"9" * (MAX_INT_DIGITS + 1) + b"e")


def test_nesting() -> None:
    value = {"tags": {"A": {"medias": [{"streams": [{"stats": {"packets": 3}}]}]}}}
    assert decode(encode(value)) == {b"tags": {b"A": {b"medias": [{b"streams": [{b"stats": {b"packets": 3}}]}]}}}
    deep: object = b"x"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert decode(encode(deep)) == deep
    with pytest.raises(BencodeError, match="nesting"):
        encode([deep])
    with pytest.raises(BencodeError, match="nesting"):
        decode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))


def test_unsorted_keys_are_accepted_duplicates_are_not() -> None:
    """rtpengine writes e.g. ``created``, ``last signal``, ``SSRC`` in that order (the ng doc: the
    sorted-key rule "is currently not honored"), so decoding takes any order."""
    assert decode(b"d1:bi1e1:ai2ee") == {b"b": 1, b"a": 2}
    with pytest.raises(BencodeError, match="duplicate"):
        decode(b"d1:ai1e1:ai2ee")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"i", "truncated"),
        (b"i12", "truncated"),
        (b"ie", "malformed integer"),
        (b"i-e", "malformed integer"),
        (b"i--1e", "malformed integer"),
        (b"i1.5e", "malformed integer"),
        (b"i 1e", "malformed integer"),
        (b"i+1e", "malformed integer"),
        (b"i03e", "non-canonical"),
        (b"i-0e", "non-canonical"),
        (b"i-03e", "non-canonical"),
        (b"3:ab", "truncated"),
        (b"5", "truncated"),
        (b"03:abc", "non-canonical"),
        (b"-1:a", "unexpected byte"),
        (b"1a:x", "malformed string length"),
        (b"99999999999999999999999:", "too long"),
        (b"l", "truncated"),
        (b"li1e", "truncated"),
        (b"d", "truncated"),
        (b"d1:a", "truncated"),
        (b"d1:ai1e", "truncated"),
        (b"di1ei2ee", "key must be a byte string"),
        (b"dli1ee1:ae", "key must be a byte string"),
        (b"x", "unexpected byte"),
        (b"i1ei2e", "trailing data"),
        (b"1:ab", "trailing data"),
        (b"de ", "trailing data"),
    ],
)
def test_malformed_input_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(BencodeError, match=why):
        decode(data)


def test_errors_name_the_offset() -> None:
    with pytest.raises(BencodeError) as info:
        decode(b"li1ei03ee")
    assert info.value.offset == 4
    assert "offset 4" in str(info.value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (True, "bool"),
        (1.5, "float"),
        (None, "NoneType"),
        ({1: b"x"}, "key must be str or bytes"),
        ({"a": 1, b"a": 2}, "duplicate"),
        ({b"k": {1, 2}}, "set"),
    ],
)
def test_what_bencode_cannot_carry_is_refused(value: object, why: str) -> None:
    with pytest.raises(BencodeError, match=why):
        encode(value)


values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.binary(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: object) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data  # canonical: one encoding per value


@given(st.binary(max_size=200))
def test_decode_never_fails_otherwise(data: bytes) -> None:
    """Any bytes either decode or raise BencodeError; nothing else escapes."""
    try:
        value = decode(data)
    except BencodeError:
        return
    assert isinstance(value, int | bytes | list | dict)


@given(values, st.integers(min_value=0, max_value=200))
def test_truncation_is_always_detected(value: object, cut: int) -> None:
    data = encode(value)
    if cut >= len(data):
        return
    with pytest.raises(BencodeError):
        decode(data[:cut])
