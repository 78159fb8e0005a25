"""StreamFramer: Content-Length framing and CRLF keep-alives on streams.

RFC 3261 §18.3 (Content-Length is mandatory on streams, framing by it), RFC 5626 §3.5.1 / §4.4.1
(CRLF CRLF ping, CRLF pong; OB-EP-14, OB-KA-01), RFC 4475 torture messages for the framing cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip.framer import (
    FramedMessage,
    FramerEvent,
    FramingError,
    KeepalivePing,
    KeepalivePong,
    StreamFramer,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc4475"


def vector(name: str) -> bytes:
    return (VECTORS / f"{name}.dat").read_bytes()


def message(body: bytes = b"", *, cl: str | None = None, name: str = "Content-Length") -> bytes:
    length = str(len(body)) if cl is None else cl
    return (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK-1\r\n"
        b"Call-ID: abc@client\r\n"
        b"CSeq: 1 OPTIONS\r\n" + name.encode() + b": " + length.encode() + b"\r\n\r\n" + body
    )


def events(framer: StreamFramer) -> list[FramerEvent]:
    out: list[FramerEvent] = []
    while (event := framer.next_event()) is not None:
        out.append(event)
    return out


def frame_all(chunks: list[bytes], max_message_size: int = 65535) -> list[FramerEvent]:
    framer = StreamFramer(max_message_size)
    out: list[FramerEvent] = []
    for chunk in chunks:
        framer.feed(chunk)
        out.extend(events(framer))
    return out


def test_single_message_in_one_read() -> None:
    msg = message(b"hello")
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_message_fed_byte_by_byte() -> None:
    msg = message(b"v=0\r\n")
    framer = StreamFramer()
    seen: list[FramerEvent] = []
    for i in range(len(msg)):
        framer.feed(msg[i : i + 1])
        got = events(framer)
        if i < len(msg) - 1:
            assert got == [], f"event before the last byte (at {i})"
        seen.extend(got)
    assert seen == [FramedMessage(msg)]
    assert framer.buffered == 0


def test_several_messages_and_pings_in_one_chunk() -> None:
    """OB-KA-01: CRLFs between messages do not break framing."""
    a, b = message(b"first"), message(b"")
    stream = b"\r\n\r\n" + a + b"\r\n\r\n" + b + b"\r\n" + a
    assert frame_all([stream]) == [
        KeepalivePing(),
        FramedMessage(a),
        KeepalivePing(),
        FramedMessage(b),
        KeepalivePong(),
        FramedMessage(a),
    ]


def test_ping_then_options_in_one_write_ob_ka_01() -> None:
    """OB-KA-01: CRLFCRLF + a full OPTIONS in one TCP write -> one ping, then the message."""
    msg = message()
    assert frame_all([b"\r\n\r\n" + msg]) == [KeepalivePing(), FramedMessage(msg)]


def test_ping_alone_ob_ep_14() -> None:
    assert frame_all([b"\r\n\r\n"]) == [KeepalivePing()]


def test_split_ping_yields_one_ping_ob_ka_01() -> None:
    """A ping split as CRLF + CRLF over two reads is one ping (documented choice), not two pongs."""
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert events(framer) == []
    framer.feed(b"\r\n")
    assert events(framer) == [KeepalivePing()]
    framer.feed(b"\r\n\r")
    assert events(framer) == []
    framer.feed(b"\n")
    assert events(framer) == [KeepalivePing()]


def test_lone_pong_waits_then_is_reported_when_a_message_follows() -> None:
    """A single CRLF is a pong; it is never answered, and it does not disturb the next message."""
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert events(framer) == []
    assert not framer.pending  # not a partial message: no incomplete-message deadline for it
    msg = message()
    framer.feed(msg)
    assert events(framer) == [KeepalivePong(), FramedMessage(msg)]


def test_pending_reports_partial_messages_only() -> None:
    framer = StreamFramer()
    assert not framer.pending
    framer.feed(b"\r\n\r")
    assert not framer.pending
    framer.feed(b"\n")
    assert events(framer) == [KeepalivePing()]
    msg = message(b"12345")
    framer.feed(msg[:-2])
    assert events(framer) == []
    assert framer.pending
    framer.feed(msg[-2:])
    assert events(framer) == [FramedMessage(msg)]
    assert not framer.pending
    assert framer.buffered == 0


def test_body_with_nul_and_crlf_framed_by_content_length_mpart01() -> None:
    """RFC 4475 §3.1.1.11 (mpart01): binary body with NUL, bare CR/LF; framed strictly by CL."""
    data = vector("mpart01")
    assert b"\x00" in data
    stream = data + b"\r\n\r\n" + data
    assert frame_all([stream]) == [FramedMessage(data), KeepalivePing(), FramedMessage(data)]
    # Byte by byte gives the same.
    assert frame_all([stream[i : i + 1] for i in range(len(stream))]) == [
        FramedMessage(data),
        KeepalivePing(),
        FramedMessage(data),
    ]


def test_body_containing_double_crlf_is_not_a_ping() -> None:
    body = b"\r\n\r\n\r\n\r\n"
    msg = message(body)
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_content_length_too_large_waits_clerr() -> None:
    """RFC 4475 §3.1.2.2 (clerr): CL 9999 > bytes sent: on a stream, wait (no event, no error)."""
    data = vector("clerr")
    framer = StreamFramer()
    framer.feed(data)
    assert events(framer) == []
    assert framer.pending


def test_negative_content_length_ncl() -> None:
    """RFC 4475 §3.1.2.3 (ncl): negative CL makes the stream unusable -> 400."""
    data = vector("ncl")
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 400
    assert "negative" in info.value.reason.lower()
    assert info.value.head is not None
    assert b"Call-ID: ncl.0ha0isndaksdj2193423r542w35" in info.value.head
    assert info.value.head.endswith(b"\r\n\r\n")
    # The framer stays broken: framing of the rest of the stream is lost.
    framer.feed(message())
    with pytest.raises(FramingError):
        framer.next_event()


def test_two_different_content_lengths_mcl01() -> None:
    """RFC 4475 §3.3.9 (mcl01): two Content-Length values on a stream -> 400, close."""
    framer = StreamFramer()
    framer.feed(vector("mcl01"))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 400
    assert "content-length" in info.value.reason.lower()


def test_repeated_identical_content_length_is_accepted() -> None:
    msg = message(b"abc").replace(b"Content-Length: 3\r\n", b"Content-Length: 3\r\nl: 3\r\n")
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_missing_content_length_is_400() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n"
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert (info.value.status, info.value.reason) == (
        400,
        "Content-Length required on stream transports",
    )
    assert info.value.head == data


@pytest.mark.parametrize("value", ["abc", "12a", "1 2", "0x10", "+5", "", "5,5"])
def test_non_numeric_content_length_is_400(value: str) -> None:
    framer = StreamFramer()
    framer.feed(message(b"12345", cl=value))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 400


@pytest.mark.parametrize("name", ["content-length", "CONTENT-LENGTH", "l", "L", "Content-Length "])
def test_content_length_name_case_and_compact_form(name: str) -> None:
    msg = message(b"xyz", name=name)
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_folded_content_length_value_and_folded_lines_do_not_confuse_the_scan() -> None:
    # A continuation line that looks like "l: 99" must not be read as a Content-Length header.
    msg = (
        b"OPTIONS sip:a@b SIP/2.0\r\n"
        b"Subject: first line\r\n"
        b" l: 99\r\n"
        b"Content-Length:\r\n"
        b"\t 4\r\n"
        b"\r\n"
        b"body"
    )
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_leading_zeros_in_content_length() -> None:
    msg = message(b"ab", cl="0000000000000000000000000002")
    assert frame_all([msg]) == [FramedMessage(msg)]


def test_oversized_content_length_is_513() -> None:
    framer = StreamFramer(max_message_size=1000)
    framer.feed(message(cl="2000"))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 513
    assert info.value.head is not None and info.value.head.startswith(b"OPTIONS ")


def test_huge_content_length_digits_are_513_not_a_crash() -> None:
    framer = StreamFramer()
    framer.feed(message(cl="9" * 5000))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 513


def test_unterminated_header_block_is_513() -> None:
    framer = StreamFramer(max_message_size=1000)
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    for _ in range(200):
        framer.feed(b"X-Filler: 0123456789\r\n")
        try:
            assert framer.next_event() is None
        except FramingError as exc:
            assert exc.status == 513
            assert framer.buffered == 0  # memory released
            return
    pytest.fail("no 513 for a header block longer than max_message_size")


def test_message_exactly_max_size_is_accepted() -> None:
    msg = message(b"x" * 100)
    assert frame_all([msg], max_message_size=len(msg)) == [FramedMessage(msg)]
    with pytest.raises(FramingError):
        frame_all([msg], max_message_size=len(msg) - 1)


def test_header_terminator_split_across_reads() -> None:
    msg = message(b"body")
    cut = msg.index(b"\r\n\r\n") + 2
    assert frame_all([msg[:cut], msg[cut : cut + 1], msg[cut + 1 :]]) == [FramedMessage(msg)]


def test_scan_is_linear_with_many_small_reads() -> None:
    """The end-of-headers search resumes where it stopped (no quadratic rescans)."""
    head = b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X-A: b\r\n" * 6000 + b"l: 0\r\n\r\n"
    framer = StreamFramer(max_message_size=len(head))
    for i in range(0, len(head), 7):
        framer.feed(head[i : i + 7])
        if i + 7 < len(head):
            assert framer.next_event() is None
    assert events(framer) == [FramedMessage(head)]


# -- Hypothesis ------------------------------------------------------------------------------

_pieces = st.one_of(
    st.just(b"\r\n\r\n"),
    st.binary(max_size=40).map(lambda body: message(body)),
    st.binary(max_size=40).map(lambda body: message(body, name="l")),
)


def _expected(piece: bytes) -> FramerEvent:
    return KeepalivePing() if piece == b"\r\n\r\n" else FramedMessage(piece)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(_pieces, max_size=8), data=st.data())
def test_random_chunking_gives_the_same_events(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = frame_all([stream])
    assert whole == [_expected(p) for p in pieces]
    assert frame_all(chunks) == whole


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [b"\r\n", b"\r\n\r\n", b"Content-Length: 5\r\n", b"l: -1\r\n", b"\r\n\r\n12345"]
            ),
        ),
        max_size=12,
    )
)
def test_random_bytes_only_raise_framing_error(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_message_size=256)
    for chunk in chunks:
        framer.feed(chunk)
        try:
            while (event := framer.next_event()) is not None:
                assert isinstance(event, FramedMessage | KeepalivePing | KeepalivePong)
                if isinstance(event, FramedMessage):
                    assert 0 < len(event.data) <= 256
        except FramingError as exc:
            assert exc.status in (400, 513)
            return


def _run_until_error(chunks: list[bytes], max_message_size: int) -> list[object]:
    framer = StreamFramer(max_message_size)
    out: list[object] = []
    for chunk in chunks:
        framer.feed(chunk)
        try:
            while (event := framer.next_event()) is not None:
                out.append(event)
        except FramingError as exc:
            out.append(("error", exc.status))
            return out
    return out


_tokens = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"l", b"L: ", b"Content-Length", b":", b" ", b"5"]
    + [b"0", b"-", b"x", b"12", b"OPTIONS a SIP/2.0\r\n", b"\x00"]
)


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(_tokens, max_size=40),
    data=st.data(),
    max_message_size=st.sampled_from([16, 64, 300]),
)
def test_chunking_never_changes_events_or_errors(
    tokens: list[bytes], data: st.DataObject, max_message_size: int
) -> None:
    """Whatever the bytes, how they are split across reads changes neither the events nor the
    error status (split pings included)."""
    stream = b"".join(tokens)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _run_until_error(chunks, max_message_size) == _run_until_error(
        [stream], max_message_size
    )
