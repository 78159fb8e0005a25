"""Batched sends (issue 19, ``FlowTable.cork``): what one task writes to a TCP/TLS connection
while corked leaves in one write per connection, in order; WebSocket messages, other tasks'
writes and other connections (with ``only``) are never held; a write that fails at ``uncork``
ends the flow as any failed write does."""

from __future__ import annotations

import pytest
import trio

from sipserver.outbound.flow import CloseCause, Flow, Transport
from sipserver.transport import FlowGone, FlowLimits, FlowTable
from sipserver.transport.connection import Connection

pytestmark = pytest.mark.trio


class FakeConn(Connection):
    """Records every write the table makes; ``fail`` makes the next one raise."""

    __slots__ = ("writes", "fail", "aborted")

    def __init__(self, transport: Transport, port: int) -> None:
        flow = Flow(transport, ("127.0.0.1", 5060), ("127.0.0.1", port), port)
        super().__init__(flow, 0.0, None)
        self.writes: list[bytes] = []
        self.fail = False
        self.aborted = False

    def write_nowait(self, data: bytes) -> int | None:
        if self.fail:
            raise ConnectionResetError("reset by peer")
        self.writes.append(data)
        return len(data)

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True


def table() -> FlowTable:
    return FlowTable(serial_base=1, limits=FlowLimits())


async def test_one_write_per_connection_in_order() -> None:
    t = table()
    a, b = FakeConn(Transport.TCP, 1), FakeConn(Transport.TLS, 2)
    assert t.cork()
    for i in range(3):
        await t.send_on(a, b"a%d;" % i)
        await t.send_on(b, b"b%d;" % i)
    assert a.writes == [] and b.writes == []  # held
    assert not t.cork()  # one cork at a time: a second one does nothing
    await t.uncork()
    assert a.writes == [b"a0;a1;a2;"] and b.writes == [b"b0;b1;b2;"]
    await t.send_on(a, b"after")  # uncorked: written at once
    assert a.writes[-1] == b"after"


async def test_websocket_other_tasks_and_other_connections_are_never_held() -> None:
    t = table()
    mine, other, ws = FakeConn(Transport.TCP, 1), FakeConn(Transport.TCP, 2), FakeConn(Transport.WS, 3)
    assert t.cork(only=mine)
    await t.send_on(mine, b"held")
    await t.send_on(other, b"not mine")
    await t.send_on(ws, b"one SIP message per WebSocket message")
    assert other.writes == [b"not mine"] and ws.writes == [b"one SIP message per WebSocket message"]

    async def another_task() -> None:
        await t.send_on(mine, b"from another task")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(another_task)
    assert mine.writes == [b"from another task"]
    await t.uncork()
    assert mine.writes == [b"from another task", b"held"]


async def test_a_failed_write_at_uncork_ends_the_flow() -> None:
    t = table()
    conn = FakeConn(Transport.TCP, 1)
    assert t.cork()
    await t.send_on(conn, b"x")
    conn.fail = True
    await t.uncork()  # no exception for the corked senders: the flow is ended instead
    assert conn.aborted and conn.cause is not None
    with pytest.raises(FlowGone):
        await t.send_on(conn, b"y")
    assert conn.cause is not CloseCause.SEND_TIMEOUT
