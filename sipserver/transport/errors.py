"""Transport-layer errors: the one exception family of ``sipserver.transport``.

Invariant: every failure to deliver bytes on a flow surfaces as ``FlowGone`` (the flow is dead and
has been, or is being, reported closed), and every failure to open an outgoing connection as
``ConnectFailed``. RFC 5626 §5.3.1 / RFC 3261 §18.4: the layers above turn these into 430/503.
"""

from __future__ import annotations

from sipserver.outbound.flow import Address, Flow, Transport

__all__ = ["ConnectFailed", "FlowGone", "TransportFailure"]


class TransportFailure(Exception):
    """Base class of the transport layer's errors (not to be confused with the transaction
    event ``sipserver.transaction.TransportError``, RFC 3261 §17.1.4, which one of these may
    cause)."""


class FlowGone(TransportFailure):
    """The flow is not alive (never was, closed, or died while writing): nothing was sent."""

    def __init__(self, flow: Flow, cause: str, detail: str | None = None) -> None:
        super().__init__(flow, cause)
        self.flow = flow
        # The ``CloseCause`` of a flow that died; a short text when there was no flow.
        self.cause = cause
        self.detail = detail  # e.g. the OS error of a failed UDP send

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"flow {self.flow.id} gone: {self.cause}{detail}"


class ConnectFailed(TransportFailure):
    """An outgoing TCP/TLS connection could not be opened (RFC 3261 §18.4 transport error)."""

    def __init__(self, transport: Transport, remote: Address, cause: str) -> None:
        super().__init__(transport, remote, cause)
        self.transport = transport
        self.remote = remote
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot connect {self.transport.value} to {self.remote[0]}:{self.remote[1]}: {self.cause}"
