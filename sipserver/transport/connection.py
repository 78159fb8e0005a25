"""Per-flow state kept by the flow table: stream connections and UDP 5-tuples.

Invariants:
- ``cause`` is ``None`` while the flow is alive and is set exactly once, by the flow table, when
  the flow ends; the sink's ``on_flow_closed`` is reported at that moment and never again;
- ``abort()`` only tears the transport down (it never reports); the reader task notices and
  finishes, and the flow table has already recorded why;
- these objects use ``__slots__`` and create their send lock only while someone is sending, so an
  idle connection costs a few hundred bytes besides its socket and reader task.
"""

from __future__ import annotations

import logging
import socket
from abc import abstractmethod

import trio

from sipserver.mgmt.logbudget import LogBudget
from sipserver.outbound.flow import CloseCause, Flow

from .errors import TransportFailure
from .sink import MessageSink

__all__ = [
    "Connection",
    "Tracked",
    "UdpFlowState",
    "deliver",
    "logger",
    "recv_nowait",
    "warning_budget",
]

logger = logging.getLogger("sipserver.transport")


def warning_budget(what: str) -> LogBudget:
    """For a warning a peer can repeat with every packet (refused connections, oversized UDP
    sends, accept errors): at most one line every 10 s, then a count of the rest."""
    return LogBudget(logger, what, per_second=0.1, window=10.0)


class Tracked:
    """What the idle reaper needs to know about any flow, stream or datagram."""

    __slots__ = (
        "flow",
        "opened_at",
        "last_activity",
        "idle_limit",
        "explicit_limit",
        "heap_deadline",
        "cause",
    )

    def __init__(self, flow: Flow, now: float, idle_limit: float | None) -> None:
        self.flow = flow
        self.opened_at = now
        self.last_activity = now
        self.idle_limit = idle_limit
        # True once the runtime chose the limit (RFC 5626 §5.4 Flow-Timer + grace): the flow
        # then dies of "keepalive timeout" rather than "idle timeout".
        self.explicit_limit = False
        # Deadline of this flow's live entry in the reaper's heap (None: no live entry).
        self.heap_deadline: float | None = None
        self.cause: CloseCause | None = None


class UdpFlowState(Tracked):
    """A UDP 5-tuple that has sent us something (RFC 5626 §3: a UDP flow).

    ``bound``: the runtime tied a binding to it (``FlowTable.set_idle_limit``) or it was adopted
    from the store; a bound flow is never evicted to make room (``limits.max_udp_flows``)."""

    __slots__ = ("bound",)

    def __init__(self, flow: Flow, now: float, idle_limit: float | None) -> None:
        super().__init__(flow, now, idle_limit)
        self.bound = False


class Connection(Tracked):
    """A live stream connection (TCP, TLS, WS or WSS): one reader task, serialised writers."""

    __slots__ = ("lock", "senders", "write_broken")

    def __init__(self, flow: Flow, now: float, idle_limit: float | None) -> None:
        super().__init__(flow, now, idle_limit)
        self.lock: trio.StrictFIFOLock | None = None
        self.senders = 0
        # Set while a write that cannot be resumed is in progress: if that write is cancelled,
        # the peer has seen part of a message and the stream must be closed.
        self.write_broken = False

    def write_nowait(self, data: bytes) -> int | None:
        """Bytes written at once without waiting, or None: not supported on this transport."""
        return None

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        """Write one whole message (or keep-alive). ``binary`` only matters on WebSocket."""

    async def write_frame(self, frame: bytes) -> None:
        """Write bytes already framed for the wire (WebSocket control frames)."""
        raise NotImplementedError("only WebSocket connections send control frames")

    @abstractmethod
    def abort(self) -> None:
        """Tear the transport down now, without waiting; the reader task then finishes."""


def recv_nowait(raw: socket.socket, size: int) -> bytes | None:
    """What the socket holds now (b"" at end of stream), or None when it holds nothing.

    Readers of plain TCP and WS call this and wait with ``trio.lowlevel.wait_readable`` when it
    returns None: an idle connection then keeps only its reader's coroutine, not trio's socket
    wrapper's. Returning rather than raising lets the caller wait outside an exception handler,
    which would keep the exception and its traceback alive while the connection idles."""
    try:
        return raw.recv(size)
    except (BlockingIOError, InterruptedError):
        return None


async def deliver(sink: MessageSink, flow: Flow, data: bytes) -> None:
    """Hand one message to the sink inline; a failing sink never ends the connection."""
    try:
        await sink.on_message(flow, data)
    except TransportFailure as exc:
        logger.debug("sink could not answer on %s: %s", flow.id, exc)
    except Exception:
        logger.exception("sink.on_message failed for a message on %s", flow.id)

