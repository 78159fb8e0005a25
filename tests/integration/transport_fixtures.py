"""Helpers for the transport integration tests: a recording sink and a running transport.

The sink records every callback and can echo: with ``echo=True`` each message is sent back on
its flow prefixed with ``ECHO `` (as a SIP-looking message with a Content-Length, so stream
clients can frame it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import attrs
import trio

from sipserver.config import ListenSpec
from sipserver.outbound.flow import Flow, Transport
from sipserver.sip.framer import FramingError
from sipserver.transport import (
    BoundListener,
    FlowLimits,
    FlowTable,
    serve,
)

__all__ = [
    "RecordingSink",
    "Server",
    "echo_of",
    "ipv6_available",
    "sip_message",
    "start_server",
]


def sip_message(body: bytes = b"", method: str = "OPTIONS", call_id: str = "c1") -> bytes:
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.invalid;branch=z9hG4bK-test\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def echo_of(data: bytes) -> bytes:
    body = b"ECHO " + data
    return b"SIP/2.0 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class RecordingSink:
    """Records callbacks; ``wait_for`` blocks until a condition on the records holds."""

    def __init__(self, table: FlowTable, *, echo: bool = False) -> None:
        self.table = table
        self.echo = echo
        self.messages: list[tuple[Flow, bytes]] = []
        self.framing_errors: list[tuple[Flow, FramingError]] = []
        self.opened: list[Flow] = []
        self.closed: list[tuple[Flow, str]] = []
        self.keepalives: list[Flow] = []
        self.fail_next = False
        self.framing_reply: bytes | None = None
        self._changed = trio.Event()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], object], timeout: float = 2.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    def closed_cause(self, flow: Flow) -> str | None:
        causes = [cause for f, cause in self.closed if f == flow]
        assert len(causes) <= 1, f"on_flow_closed reported {len(causes)} times for {flow.id}"
        return causes[0] if causes else None

    async def on_message(self, flow: Flow, data: bytes) -> None:
        self.messages.append((flow, data))
        self._poke()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("sink failure injected by the test")
        if self.echo:
            await self.table.send(flow, echo_of(data))

    async def on_framing_error(self, flow: Flow, error: FramingError) -> None:
        self.framing_errors.append((flow, error))
        self._poke()
        if self.framing_reply is not None:
            await self.table.send(flow, self.framing_reply)

    def on_flow_opened(self, flow: Flow) -> None:
        self.opened.append(flow)
        self._poke()

    def on_flow_closed(self, flow: Flow, cause: str) -> None:
        self.closed.append((flow, cause))
        self._poke()

    def on_keepalive(self, flow: Flow) -> None:
        self.keepalives.append(flow)
        self._poke()


@attrs.define
class Server:
    table: FlowTable
    sink: RecordingSink
    bound: list[BoundListener]
    scope: trio.CancelScope

    def addr(self, transport: Transport, family_v6: bool = False) -> tuple[str, int]:
        for b in self.bound:
            if b.flow_transport is transport and (":" in b.host) == family_v6:
                return (b.host, b.port)
        raise LookupError(transport)


async def start_server(
    nursery: trio.Nursery,
    specs: Sequence[ListenSpec],
    *,
    limits: FlowLimits | None = None,
    ssl_context: object = None,
    echo: bool = False,
) -> Server:
    table = FlowTable(1000, limits or FlowLimits())
    sink = RecordingSink(table, echo=echo)
    scope = trio.CancelScope()

    async def run(
        task_status: trio.TaskStatus[list[BoundListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await serve(specs, table, sink, ssl_context, task_status=task_status)  # type: ignore[arg-type]

    bound = await nursery.start(run)
    return Server(table, sink, bound, scope)
