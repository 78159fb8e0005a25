"""Sans-IO message framing for stream transports (RFC 3261 §18.3, RFC 5626 §3.5.1 / §4.4.1).

On TCP and TLS the bytes of several SIP messages and RFC 5626 CRLF keep-alives arrive as one
stream. ``StreamFramer`` cuts that stream into events: a complete message (header block plus
exactly Content-Length body octets), a keep-alive ping (CRLF CRLF) or a pong (a single CRLF).
It knows nothing about SIP beyond finding the end of the header block and the Content-Length.

Invariants:
- buffering is bounded and linear: the search for the end of the header block resumes where the
  previous search stopped, never rescanning bytes already searched; a message (header block plus
  body) larger than ``max_message_size`` is refused before its body is buffered;
- keep-alives are recognised only at a message boundary; CRLFs inside a message are message bytes;
- a lone CRLF at the end of the buffer is held until the next byte arrives, because it may be the
  first half of a ping split across two reads: ``\\r\\n`` then ``\\r\\n`` gives one ping, not two
  pongs (OB-KA-01). A peer that sends a lone pong and then stays silent gets no event for it;
  the transport still counts the received bytes as activity;
- any problem raises ``FramingError`` carrying the status to answer with; after that the framer
  keeps raising the same error, since a stream whose framing is lost cannot be resynchronised
  (RFC 3261 §18.3: the connection has to be closed).
"""

from __future__ import annotations

import re
from typing import NoReturn

import attrs

__all__ = [
    "FramedMessage",
    "FramerEvent",
    "FramingError",
    "KeepalivePing",
    "KeepalivePong",
    "StreamFramer",
]

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"
_END_OF_HEAD = b"\r\n\r\n"

# A Content-Length header line (long name or compact form ``l``, any case, RFC 3261 §7.3.3 and
# §20.14). Each header line follows a CRLF, while folded continuation lines start with SP/HTAB
# after their CRLF, so a continuation line can never be taken for a header name. The value runs
# until a CRLF that is not followed by SP/HTAB; bare CR or LF stay inside it (and so make it
# invalid). No alternative can overlap with another, so matching is linear.
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:((?:[^\r]|\r(?!\n)|\r\n[ \t])*)",
    re.IGNORECASE,
)
_FOLD = re.compile(rb"\r\n([ \t])")
_LWS = b" \t"


@attrs.frozen(slots=True)
class FramedMessage:
    """One complete SIP message: the header block and exactly Content-Length body octets."""

    data: bytes


@attrs.frozen(slots=True)
class KeepalivePing:
    """A CRLF CRLF at a message boundary: answer at once with one CRLF (RFC 5626 §4.4.1)."""


@attrs.frozen(slots=True)
class KeepalivePong:
    """A single CRLF at a message boundary: activity only, never answered (RFC 5626 §4.4.1)."""


FramerEvent = FramedMessage | KeepalivePing | KeepalivePong


class FramingError(Exception):
    """The stream cannot be framed any more; the connection must be closed (RFC 3261 §18.3).

    ``status``/``reason`` are what to answer with if a response can still be built, and ``head``
    is the message's header block (ending with the empty line) when it was received whole, so the
    caller can copy Via, From, To, Call-ID and CSeq into that response.
    """

    def __init__(self, status: int, reason: str, head: bytes | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.head = head

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages and CRLF keep-alives.

    Feed received bytes with ``feed`` and then call ``next_event`` until it returns ``None``
    (more bytes needed).
    """

    __slots__ = ("_buf", "_max", "_scan_from", "_total", "_error")

    def __init__(self, max_message_size: int = 65535) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self._max = max_message_size
        # Received bytes not yet returned as events. Usually the whole chunk of one read is held
        # as the immutable ``bytes`` it arrived as (so a chunk that is exactly one message is
        # returned without a copy); it becomes a bytearray when more has to be appended or
        # when events are cut off its front.
        self._buf: bytes | bytearray = b""
        # Where the next search for the end of the header block starts.
        self._scan_from = 0
        # Length of the current message once its header block is known, else 0.
        self._total = 0
        self._error: FramingError | None = None

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as events."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """True while part of a message is buffered (not just a possible keep-alive's start).

        The transport uses this to run its incomplete-message deadline.
        """
        buf = self._buf
        if not buf:
            return False
        return not _PING.startswith(bytes(buf[:4]))

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Feeding ``b""`` does nothing (end of stream is the caller's)."""
        if not data:
            return
        if not self._buf:
            self._buf = data if isinstance(data, bytes) else bytes(data)
        elif isinstance(self._buf, bytearray):
            self._buf += data
        else:
            grown = bytearray(self._buf)
            grown += data
            self._buf = grown

    def next_event(self) -> FramerEvent | None:
        """Return the next complete event, or ``None`` when more bytes are needed.

        Raises ``FramingError`` when the stream cannot be framed (and keeps raising it).
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if not buf:
            return None
        if self._total == 0:
            if buf[0] == 0x0D and self._scan_from == 0:
                # At a message boundary: keep-alives (RFC 5626 §4.4.1, RFC 3261 §7.5).
                if buf.startswith(_PING):
                    self._take(4)
                    return KeepalivePing()
                if buf.startswith(_CRLF):
                    if len(buf) == 2 or (len(buf) == 3 and buf[2] == 0x0D):
                        return None  # maybe the first half of a ping split across reads
                    self._take(2)
                    return KeepalivePong()
                if len(buf) == 1:
                    return None  # a lone CR: wait for what follows it
            if not self._find_head(buf):
                return None
        if len(buf) < self._total:
            return None
        return FramedMessage(self._take(self._total))

    def _find_head(self, buf: bytes | bytearray) -> bool:
        """Locate the header block end and validate Content-Length; True when the size is known."""
        end = buf.find(_END_OF_HEAD, self._scan_from)
        if end < 0:
            if len(buf) >= self._max:
                self._fail(513, "Message too large", None)
            # The terminator may straddle this read and the next one.
            self._scan_from = max(0, len(buf) - 3)
            return False
        head_len = end + 4
        if head_len > self._max:
            self._fail(513, "Message too large", bytes(buf[:head_len]))
        length = self._content_length(buf, end + 2, head_len)
        total = head_len + length
        if total > self._max:
            self._fail(513, "Message too large", bytes(buf[:head_len]))
        self._total = total
        return True

    def _content_length(self, buf: bytes | bytearray, stop: int, head_len: int) -> int:
        """The single Content-Length value of the header block ``buf[:stop]`` (RFC 3261 §18.3)."""
        value: bytes | None = None
        for match in _CONTENT_LENGTH.finditer(buf, 0, stop):
            raw = _FOLD.sub(rb"\1", match.group(1)).strip(_LWS)
            if value is None:
                value = raw
            elif raw != value:
                self._fail(400, "Conflicting Content-Length values", bytes(buf[:head_len]))
        if value is None:
            self._fail(400, "Content-Length required on stream transports", bytes(buf[:head_len]))
        if not value.isdigit():
            if value[:1] == b"-" and value[1:].isdigit():
                self._fail(400, "Negative Content-Length", bytes(buf[:head_len]))
            self._fail(400, "Content-Length is not a number", bytes(buf[:head_len]))
        digits = value.lstrip(b"0") or b"0"
        if len(digits) > len(str(self._max)):
            self._fail(513, "Message too large", bytes(buf[:head_len]))
        return int(digits)

    def _take(self, count: int) -> bytes:
        """Remove and return the first ``count`` buffered bytes; resets the per-message state."""
        buf = self._buf
        if count == len(buf):
            out = buf if isinstance(buf, bytes) else bytes(buf)
            # Drop the (possibly large) buffer so an idle connection holds no memory.
            self._buf = b""
        elif isinstance(buf, bytearray):
            out = bytes(buf[:count])
            # CPython removes a bytearray prefix by moving its start, not by copying the rest.
            del buf[:count]
        else:
            out = buf[:count]
            self._buf = bytearray(buf[count:])
        self._scan_from = 0
        self._total = 0
        return out

    def _fail(self, status: int, reason: str, head: bytes | None) -> NoReturn:
        self._error = FramingError(status, reason, head)
        self._buf = b""
        raise self._error
