"""The interface the runtime implements to receive what the transport layer reads.

Invariants: the transport awaits ``on_message``/``on_framing_error`` inline in the task that read
the bytes (one task per connection or UDP socket, no task per message), so a sink that waits
stalls its own connection, or a whole UDP socket: whatever must wait (a client transaction, DNS,
a store write) belongs in a task of the sink's own. The synchronous callbacks must not block. Exceptions raised by a sink are
logged by the transport and never end a connection or a listener.
"""

from __future__ import annotations

from typing import Protocol

from sipserver.outbound.flow import CloseCause, Flow
from sipserver.sip.framer import FramingError

__all__ = ["MessageSink"]


class MessageSink(Protocol):
    async def on_message(self, flow: Flow, data: bytes) -> None:
        """One SIP message's bytes: a UDP datagram, a framed stream message or a WS message."""

    async def on_framing_error(self, flow: Flow, error: FramingError) -> None:
        """Stream framing is lost (RFC 3261 §18.3); the connection is closed after this returns.

        The flow is still alive during the call, so a 400/513 built from ``error.head`` can be
        sent on it.
        """

    def on_flow_opened(self, flow: Flow) -> None:
        """A connection was accepted/opened, or a UDP 5-tuple sent its first datagram."""

    def on_flow_closed(self, flow: Flow, cause: CloseCause) -> None:
        """The flow ended; called exactly once per opened flow (RFC 5626 §5.3.1: flow failed).

        ``cause`` is the first cause recorded; a detail such as the OS error is logged by the
        transport (logger ``sipserver.transport``, debug level), not passed here."""

    def on_keepalive(self, flow: Flow) -> None:
        """A CRLF ping was answered (RFC 5626 §4.4.1) or a STUN Binding answered (§8)."""
