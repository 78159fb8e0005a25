"""The one exception type of the SIP layer.

A ``ParseError`` carries the status a server should answer with (RFC 3261 §21): 400 with a reason
naming the problem, 505 for an unknown SIP version, 513 for an oversized message, 416 for a URI
scheme that cannot be handled. Nothing in ``sipserver.sip`` raises any other exception on bad input.
"""

from __future__ import annotations


class ParseError(Exception):
    """Bad input. ``status`` is the response code to answer with, ``reason`` says what was wrong."""

    def __init__(self, reason: str, status: int = 400, message: object | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        # The message as far as it could be parsed (a Request/Response whose header list is
        # intact), so the caller can still form a response with the right Via, tags and CSeq.
        self.message = message

    def __repr__(self) -> str:
        return f"ParseError({self.status}, {self.reason!r})"
