"""Issue 16, written as an attacker would try it: a WebSocket peer that starts a frame or a
fragmented message and never finishes it must not hold the connection (and its buffer)
forever. As on TCP, ``limits.partial_message_timeout`` after the incomplete message began the
connection is closed (Close 1008, cause "partial message timeout"), whatever trickle of bytes
or interleaved Ping frames keeps it busy; meanwhile other clients are served normally. A
peer that is merely idle between complete messages is left alone.

Real time (the transport reads its sockets directly): the timeout is 1 s here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as wse
from certs import client_context, make_self_signed
from transport_fixtures import Server, echo_of, sip_message, start_server
from trio_websocket import open_websocket

from sipserver.config import ListenSpec
from sipserver.outbound.flow import CloseCause, Transport
from sipserver.transport import FlowLimits, make_server_context

TIMEOUT = 1.0
LIMITS = FlowLimits(partial_message_timeout=TIMEOUT, max_message_size=2000)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("ws-partial-certs"))


async def ws_server(
    nursery: trio.Nursery, transport: Transport, tls_files: tuple[Path, Path]
) -> Server:
    ctx = make_server_context(*tls_files) if transport is Transport.WSS else None
    return await start_server(
        nursery,
        [ListenSpec(transport, "127.0.0.1", 0, "/")],
        limits=LIMITS,
        ssl_context=ctx,
        echo=True,
    )


async def raw_client(
    server: Server, transport: Transport, tls_files: tuple[Path, Path]
) -> tuple[trio.abc.Stream, wsproto.WSConnection]:
    """A hand-driven WebSocket client: the handshake through wsproto, then raw bytes."""
    host, port = server.addr(transport)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if transport is Transport.WSS:
        tls = trio.SSLStream(stream, client_context(tls_files[0]), server_hostname="localhost")
        await tls.do_handshake()
        stream = tls
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(
        client.send(wse.Request(host="localhost", target="/", subprotocols=["sip"]))
    )
    with trio.fail_after(2):
        while True:
            client.receive_data(bytes(await stream.receive_some()))
            events = list(client.events())
            if events:
                break
    assert isinstance(events[0], wse.AcceptConnection)
    return stream, client


def masked_frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A client frame header (RFC 6455 §5.2) with a zero mask key: the payload goes as is."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\0\0\0\0"


async def drip(stream: trio.abc.Stream, data: bytes, interval: float) -> None:
    """Send ``data`` one byte at a time; stop quietly when the server has closed."""
    for i in range(len(data)):
        try:
            await stream.send_all(data[i : i + 1])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(interval)


async def close_code(
    stream: trio.abc.Stream, client: wsproto.WSConnection, timeout: float
) -> int | None:
    """Read until the server's Close frame (its code) or the end of the stream (None)."""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            client.receive_data(bytes(data))
            for event in client.events():
                if isinstance(event, wse.CloseConnection):
                    return event.code


TRANSPORTS = [pytest.param(Transport.WS, id="ws"), pytest.param(Transport.WSS, id="wss")]


async def honest_exchange(
    server: Server, transport: Transport, tls_files: tuple[Path, Path], call_id: str
) -> None:
    host, port = server.addr(transport)
    ssl = client_context(tls_files[0]) if transport is Transport.WSS else False
    async with open_websocket(
        "localhost" if ssl else host, port, "/", use_ssl=ssl, subprotocols=["sip"]
    ) as ws:
        msg = sip_message(b"honest", call_id=call_id)
        await ws.send_message(msg.decode())
        with trio.fail_after(2):
            assert await ws.get_message() == echo_of(msg).decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_dripped_byte_by_byte_is_cut_off_at_the_timeout(
    nursery: trio.Nursery, transport: Transport, tls_files: tuple[Path, Path]
) -> None:
    """The slow-loris attack on WebSocket: a text frame announcing 1,000 bytes, sent one byte
    at a time (four a second: every byte is activity, so an idle timeout never fires). The
    server closes with 1008 about ``partial_message_timeout`` after the frame began, while a
    second client is served normally during and after the attack."""
    server = await ws_server(nursery, transport, tls_files)
    stream, client = await raw_client(server, transport, tls_files)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    frame = masked_frame_header(0x1, 1000) + b"x" * 1000
    began = trio.current_time()
    nursery.start_soon(drip, stream, frame, 0.25)
    await honest_exchange(server, transport, tls_files, "during")
    assert await close_code(stream, client, timeout=TIMEOUT + 2) == 1008
    elapsed = trio.current_time() - began
    assert TIMEOUT - 0.05 <= elapsed < TIMEOUT + 1.0, elapsed
    await server.sink.wait_for(lambda: server.sink.closed_cause(flow) is not None)
    assert server.sink.closed_cause(flow) is CloseCause.PARTIAL_MESSAGE_TIMEOUT
    assert [d for f, d in server.sink.messages if f == flow] == []
    await honest_exchange(server, transport, tls_files, "after")


async def test_dripped_frame_header_is_cut_off(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    """Bytes that never even complete a frame header (wsproto reports nothing for them) count
    as an incomplete message too."""
    server = await ws_server(nursery, Transport.WS, tls_files)
    stream, client = await raw_client(server, Transport.WS, tls_files)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    header = masked_frame_header(0x1, 1 << 20)  # 14 bytes: 2 + 8 length + 4 mask
    nursery.start_soon(drip, stream, header, 0.2)
    assert await close_code(stream, client, timeout=TIMEOUT + 2) == 1008
    assert server.sink.closed_cause(flow) is CloseCause.PARTIAL_MESSAGE_TIMEOUT


async def test_fragmented_message_kept_open_with_pings_is_cut_off(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    """A first fragment (FIN clear), then only Ping frames and empty continuation fragments,
    each complete in itself: the message never ends, so the connection is closed at the
    timeout. Pings are answered until then, and no empty fragment is buffered."""
    server = await ws_server(nursery, Transport.WS, tls_files)
    stream, client = await raw_client(server, Transport.WS, tls_files)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    await stream.send_all(client.send(wse.TextMessage(data="INVITE sip:", message_finished=False)))
    empty_continuation = masked_frame_header(0x0, 0, fin=False)
    began = trio.current_time()
    with trio.move_on_after(TIMEOUT + 2):
        while server.sink.closed_cause(flow) is None:
            try:
                await stream.send_all(client.send(wse.Ping(payload=b"still here")))
                await stream.send_all(empty_continuation * 50)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            await trio.sleep(0.1)
    await server.sink.wait_for(lambda: server.sink.closed_cause(flow) is not None)
    assert trio.current_time() - began < TIMEOUT + 1.0
    assert server.sink.closed_cause(flow) is CloseCause.PARTIAL_MESSAGE_TIMEOUT
    assert server.sink.messages == []


async def test_idle_between_messages_and_a_slow_but_timely_message_are_fine(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    """No false alarm: silence between complete messages is idleness (the idle timeout's
    business), and a message in two fragments 0.5 s apart completes within the timeout."""
    server = await ws_server(nursery, Transport.WS, tls_files)
    stream, client = await raw_client(server, Transport.WS, tls_files)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    first = sip_message(b"one", call_id="one").decode()
    await stream.send_all(client.send(wse.TextMessage(data=first)))
    await server.sink.wait_for(lambda: len(server.sink.messages) == 1)
    await trio.sleep(TIMEOUT + 0.5)
    second = sip_message(b"two", call_id="two").decode()
    await stream.send_all(client.send(wse.TextMessage(data=second[:30], message_finished=False)))
    await trio.sleep(TIMEOUT / 2)
    await stream.send_all(client.send(wse.TextMessage(data=second[30:], message_finished=True)))
    await server.sink.wait_for(lambda: len(server.sink.messages) == 2)
    assert [d for _, d in server.sink.messages] == [first.encode(), second.encode()]
    await trio.sleep(TIMEOUT + 0.5)
    assert server.sink.closed_cause(flow) is None
    await stream.aclose()


async def test_fragments_beyond_four_times_the_limit_close_with_1009(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    """Memory: a message sent as many fragments, each small, is still bounded by 4 x
    max_message_size in total (closed with 1009 well before the timeout)."""
    server = await ws_server(nursery, Transport.WS, tls_files)
    stream, client = await raw_client(server, Transport.WS, tls_files)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    data = b"".join(
        client.send(wse.BytesMessage(data=b"y" * 500, message_finished=False)) for _ in range(20)
    )
    await stream.send_all(data)
    assert await close_code(stream, client, timeout=TIMEOUT / 2) == 1009
    await server.sink.wait_for(lambda: server.sink.closed_cause(flow) is not None)
    assert server.sink.closed_cause(flow) is CloseCause.MESSAGE_TOO_LARGE
