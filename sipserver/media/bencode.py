"""Bencode, the dictionary format of rtpengine's ng control protocol. Sans-IO.

Four types: integers ``i42e``, byte strings ``4:spam``, lists ``l...e`` and dictionaries
``d...e`` whose keys are byte strings. ``encode`` takes ``int``, ``bytes``, ``str`` (UTF-8),
lists, tuples and mappings with ``str``/``bytes`` keys; ``decode`` returns ``int``, ``bytes``,
``list`` and ``dict[bytes, ...]``.

Hand-written rather than a dependency, on purpose: the format is some eighty lines, and the
libraries on PyPI are strict or lax in the wrong places for ng. rtpengine's own documentation
says its dictionaries do not honour bencode's sorted-key rule, so a canonical decoder (one that
rejects unsorted keys) refuses its replies, while the lenient ones also take leading zeros,
``i-0e``, truncated strings or trailing bytes. Here the rules are exactly the ones ng needs.

Invariants:
- ``encode`` writes canonical bencode: dictionary keys sorted as raw bytes, no duplicates (``"a"``
  and ``b"a"`` in one mapping is an error), ``bool`` refused (it is not an ng integer).
- ``decode`` is strict on syntax and accepts exactly one value: every malformed, truncated or
  over-deep input and any trailing byte raises ``BencodeError`` with the offset. The one leniency
  is the key order of dictionaries (rtpengine does not sort); duplicate keys are still refused.
- Linear time in the input; nesting is bounded by ``MAX_DEPTH`` and integer literals by
  ``MAX_INT_DIGITS``, so hostile input cannot exhaust the stack or the int parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "BencodeError", "Value", "decode", "encode"]

# A decoded value.
Value: TypeAlias = int | bytes | list["Value"] | dict[bytes, "Value"]

MAX_DEPTH = 64  # ng replies nest four or five levels (query: tags > medias > streams > stats)
MAX_INT_DIGITS = 1000  # far beyond any ng counter, well inside CPython's int-string limit


class BencodeError(ValueError):
    """Malformed bencode; ``offset`` is where decoding stopped (-1 for encoding errors)."""

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(message if offset < 0 else f"{message} at offset {offset}")
        self.offset = offset


# ------------------------------------------------------------------------------ encoding


def encode(value: object) -> bytes:
    """The bencoding of ``value``; ``BencodeError`` for anything bencode cannot carry."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _key(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise BencodeError(f"dictionary key must be str or bytes, not {type(key).__name__}")


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, bool):  # before int: True is an int to Python, not to ng
        raise BencodeError("bool is not a bencode type")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, Mapping):
        items = sorted((_key(k), v) for k, v in value.items())
        for (a, _), (b, _) in zip(items, items[1:], strict=False):
            if a == b:
                raise BencodeError(f"duplicate dictionary key {a!r}")
        out.append(b"d")
        for k, v in items:
            out.append(b"%d:" % len(k))
            out.append(k)
            _encode(v, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"{type(value).__name__} is not a bencode type")


# ------------------------------------------------------------------------------ decoding


def decode(data: bytes) -> Value:
    """The one value ``data`` holds; ``BencodeError`` if it is malformed or has trailing bytes."""
    value, end = _decode(bytes(data), 0, 0)
    if end != len(data):
        raise BencodeError("trailing data after the value", end)
    return value


_DIGITS = frozenset(b"0123456789")


def _decode(data: bytes, pos: int, depth: int) -> tuple[Value, int]:
    if pos >= len(data):
        raise BencodeError("truncated: a value was expected", pos)
    lead = data[pos]
    if lead == 0x69:  # i
        return _int(data, pos)
    if lead in _DIGITS:
        return _bytes(data, pos)
    if depth >= MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH}", pos)
    if lead == 0x6C:  # l
        items: list[Value] = []
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("truncated: list not terminated", pos)
            if data[pos] == 0x65:  # e
                return items, pos + 1
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
    if lead == 0x64:  # d
        result: dict[bytes, Value] = {}
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("truncated: dictionary not terminated", pos)
            if data[pos] == 0x65:
                return result, pos + 1
            if data[pos] not in _DIGITS:
                raise BencodeError("dictionary key must be a byte string", pos)
            key, next_pos = _bytes(data, pos)
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key!r}", pos)
            result[key], pos = _decode(data, next_pos, depth + 1)
    raise BencodeError(f"unexpected byte {bytes([lead])!r}", pos)


def _int(data: bytes, pos: int) -> tuple[int, int]:
    end = data.find(b"e", pos + 1, pos + 2 + MAX_INT_DIGITS + 1)
    if end < 0:
        if len(data) - pos > MAX_INT_DIGITS + 2:
            raise BencodeError(f"integer longer than {MAX_INT_DIGITS} digits", pos)
        raise BencodeError("truncated: integer not terminated", pos)
    text = data[pos + 1 : end]
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or not all(c in _DIGITS for c in digits):
        raise BencodeError(f"malformed integer {text[:40]!r}", pos)
    if len(digits) > MAX_INT_DIGITS:
        raise BencodeError(f"integer longer than {MAX_INT_DIGITS} digits", pos)
    if digits[0] == 0x30 and (len(digits) > 1 or text[:1] == b"-"):  # 03, -0, -03
        raise BencodeError(f"non-canonical integer {text[:40]!r}", pos)
    return int(text), end + 1


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos, pos + 21)
    if colon < 0:
        if len(data) - pos > 20:
            raise BencodeError("string length too long", pos)
        raise BencodeError("truncated: string length not terminated", pos)
    text = data[pos:colon]
    if not all(c in _DIGITS for c in text):
        raise BencodeError(f"malformed string length {text!r}", pos)
    if text[0] == 0x30 and len(text) > 1:
        raise BencodeError(f"non-canonical string length {text!r}", pos)
    length = int(text)
    start = colon + 1
    if start + length > len(data):
        raise BencodeError(
            f"truncated: string of {length} bytes, {len(data) - start} left", pos
        )
    return data[start : start + length], start + length
