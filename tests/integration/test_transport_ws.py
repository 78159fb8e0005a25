"""SIP over WebSocket (RFC 7118): handshake, framing, keep-alives, WSS.

WS-01 (subprotocol ``sip``), WS-02 (one SIP message per WebSocket message, fragments
reassembled), WS-03 (text and binary), WS-07 / OB-CS-08 (CRLF keep-alives answered, never handed
to the SIP layer; Ping frames answered with Pong frames).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as wse
from certs import client_context, make_self_signed
from transport_fixtures import Server, echo_of, sip_message, start_server
from trio_websocket import ConnectionRejected, WebSocketConnection, open_websocket

from sipserver.config import ListenSpec
from sipserver.outbound.flow import CloseCause, Transport
from sipserver.transport import FlowGone, make_server_context

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc4475"


async def ws_server(nursery: trio.Nursery, path: str = "/", **kw: object) -> Server:
    return await start_server(nursery, [ListenSpec(Transport.WS, "127.0.0.1", 0, path)], **kw)  # type: ignore[arg-type]


async def receive(ws: WebSocketConnection, timeout: float = 2.0) -> str | bytes:
    with trio.fail_after(timeout):
        return await ws.get_message()


async def assert_no_message(ws: WebSocketConnection, seconds: float = 0.2) -> None:
    with trio.move_on_after(seconds):
        message = await ws.get_message()
        pytest.fail(f"unexpected message {message!r}")


async def test_handshake_with_sip_accepted_ws_01(nursery: trio.Nursery) -> None:
    server = await ws_server(nursery, echo=True)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        assert ws.subprotocol == "sip"
        msg = sip_message(b"text body")
        await ws.send_message(msg.decode())
        reply = await receive(ws)
        assert reply == echo_of(msg).decode()  # valid UTF-8 goes out as a text message
        flow, data = server.sink.messages[0]
        assert data == msg
        assert flow.transport is Transport.WS
        assert flow.serial > 1000
        assert server.sink.opened == [flow]
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) == "closed by peer"


async def test_handshake_with_chat_and_sip_selects_sip_ws_01(nursery: trio.Nursery) -> None:
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["chat", "sip"]) as ws:
        assert ws.subprotocol == "sip"


@pytest.mark.parametrize("offered", [[], ["chat"]])
async def test_handshake_without_sip_refused_ws_01(
    nursery: trio.Nursery, offered: list[str]
) -> None:
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(host, port, "/", use_ssl=False, subprotocols=offered):
            pass
    assert info.value.status_code == 400
    assert server.sink.opened == []


async def test_wrong_path_refused(nursery: trio.Nursery) -> None:
    server = await ws_server(nursery, path="/sip")
    host, port = server.addr(Transport.WS)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket(host, port, "/other", use_ssl=False, subprotocols=["sip"]):
            pass
    assert info.value.status_code == 404
    async with open_websocket(host, port, "/sip?x=1", use_ssl=False, subprotocols=["sip"]) as ws:
        assert ws.subprotocol == "sip"


@pytest.mark.parametrize("kind", [str, bytes])
async def test_crlf_ping_answered_in_same_frame_type_ws_07(
    nursery: trio.Nursery, kind: type
) -> None:
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        await ws.send_message(kind("\r\n\r\n") if kind is str else b"\r\n\r\n")
        pong = await receive(ws)
        assert pong == (kind("\r\n") if kind is str else b"\r\n")
        assert type(pong) is kind
        await ws.send_message("\r\n")  # a pong: activity only
        await assert_no_message(ws)
        await server.sink.wait_for(lambda: len(server.sink.keepalives) == 1)
        assert server.sink.messages == []  # OB-CS-08: never handed to the SIP layer


async def test_websocket_ping_frame_gets_pong_ws_07(nursery: trio.Nursery) -> None:
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        await server.sink.wait_for(lambda: server.sink.opened)
        flow = server.sink.opened[0]
        before = server.table.last_activity(flow)
        with trio.fail_after(2):
            await ws.ping(b"payload-1")  # returns only when the matching Pong arrived
        after = server.table.last_activity(flow)
        assert before is not None and after is not None and after >= before
        assert server.sink.messages == []


async def test_binary_message_with_nuls_byte_exact_ws_03(nursery: trio.Nursery) -> None:
    data = (VECTORS / "mpart01.dat").read_bytes()
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        await ws.send_message(data)
        await server.sink.wait_for(lambda: server.sink.messages)
        flow, got = server.sink.messages[0]
        assert got == data
        # Non-UTF-8 bytes must go out as a binary message (WS-03); UTF-8 as text.
        await server.table.send(flow, b"\xff\x00 not utf-8")
        assert await receive(ws) == b"\xff\x00 not utf-8"
        await server.table.send(flow, "caf\u00e9".encode())
        assert await receive(ws) == "caf\u00e9"


async def test_fragmented_message_reassembled_ws_02(nursery: trio.Nursery) -> None:
    """A SIP message split over several continuation frames is one message to the sink."""
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    stream, client = await _raw_client(host, port)  # asserts the upgrade selected "sip"
    msg = sip_message(b"three frames").decode()
    parts = [msg[:20], msg[20:50], msg[50:]]
    for i, part in enumerate(parts):
        frame = client.send(wse.TextMessage(data=part, message_finished=i == len(parts) - 1))
        await stream.send_all(frame)
        await trio.sleep(0.01)
    await server.sink.wait_for(lambda: server.sink.messages)
    assert [d for _, d in server.sink.messages] == [msg.encode()]
    await stream.aclose()


async def test_oversized_ws_message_goes_to_sink_without_closing(nursery: trio.Nursery) -> None:
    from sipserver.transport import FlowLimits

    server = await ws_server(nursery, limits=FlowLimits(max_message_size=1000))
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        big = sip_message(b"z" * 2000)
        await ws.send_message(big)
        await server.sink.wait_for(lambda: server.sink.messages)
        assert server.sink.messages[0][1] == big
        assert server.sink.closed == []


async def test_close_by_server_and_send_after(nursery: trio.Nursery) -> None:
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        await server.sink.wait_for(lambda: server.sink.opened)
        flow = server.sink.opened[0]
        server.table.close(flow)
        assert server.sink.closed_cause(flow) == "closed by server"
        with pytest.raises(FlowGone):
            await server.table.send(flow, b"x")
        with trio.fail_after(2):
            while ws.closed is None:
                try:
                    await ws.get_message()
                except Exception:
                    break
        assert ws.closed is not None


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("wss-certs"))


async def test_wss_works(nursery: trio.Nursery, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server = await start_server(
        nursery,
        [ListenSpec(Transport.WSS, "127.0.0.1", 0, "/ws")],
        ssl_context=make_server_context(cert, key),
        echo=True,
    )
    assert server.bound[0].path == "/ws"
    host, port = server.addr(Transport.WSS)
    async with open_websocket(
        "localhost", port, "/ws", use_ssl=client_context(cert), subprotocols=["sip"]
    ) as ws:
        assert ws.subprotocol == "sip"
        await ws.send_message("\r\n\r\n")
        assert await receive(ws) == "\r\n"
        msg = sip_message(b"over wss")
        await ws.send_message(msg)
        assert await receive(ws) == echo_of(msg).decode()
        assert server.sink.messages[0][0].transport is Transport.WSS


async def _raw_client(host: str, port: int) -> tuple[trio.SocketStream, wsproto.WSConnection]:
    stream = await trio.open_tcp_stream(host, port)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(
        client.send(wse.Request(host="localhost", target="/", subprotocols=["sip"]))
    )
    with trio.fail_after(2):
        while True:
            client.receive_data(await stream.receive_some())
            events = list(client.events())
            if events:
                break
    assert isinstance(events[0], wse.AcceptConnection)
    assert events[0].subprotocol == "sip"
    return stream, client


async def _close_code(stream: trio.SocketStream, client: wsproto.WSConnection) -> int | None:
    """Read until the server's Close frame (its code) or the end of the connection (None)."""
    with trio.fail_after(2):
        while True:
            data = await stream.receive_some()
            if not data:
                return None
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, wse.CloseConnection):
                    return event.code


async def test_plain_http_request_gets_400_naming_the_problem(nursery: trio.Nursery) -> None:
    """A request that is no WebSocket upgrade (a browser or a scanner on the WS port) is answered
    with HTTP 400 saying what was missing; nothing reaches SIP and the listener lives on."""
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    reply = b""
    with trio.fail_after(2):
        while chunk := await stream.receive_some():
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"upgrade" in body.lower()
    assert server.sink.opened == [] and server.sink.messages == []
    async with open_websocket(host, port, "/", use_ssl=False, subprotocols=["sip"]) as ws:
        assert ws.subprotocol == "sip"


async def test_message_beyond_four_times_the_limit_closes_with_1009(nursery: trio.Nursery) -> None:
    """Memory stays bounded: past 4x max_message_size the server stops buffering and closes
    with 1009 (RFC 6455 §7.4.1, message too big)."""
    from sipserver.transport import FlowLimits

    server = await ws_server(nursery, limits=FlowLimits(max_message_size=1000))
    host, port = server.addr(Transport.WS)
    stream, client = await _raw_client(host, port)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    await stream.send_all(client.send(wse.BytesMessage(data=b"x" * 5000)))
    assert await _close_code(stream, client) == 1009
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) == "message too large"
    assert server.sink.messages == []


async def test_invalid_utf8_text_frame_closes_with_1007(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A text frame that is not UTF-8 is a protocol error (RFC 6455 §8.1): Close 1007, and the
    flow's cause says so (the close code in the transport's debug line)."""
    caplog.set_level(logging.DEBUG, logger="sipserver.transport")
    server = await ws_server(nursery)
    host, port = server.addr(Transport.WS)
    stream, _ = await _raw_client(host, port)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    # FIN + text opcode, masked, 2-byte payload 0xff 0xfe (mask key 0: payload unchanged)
    await stream.send_all(bytes([0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE]))
    data = b""
    with trio.fail_after(2):
        while len(data) < 4:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    assert data[0] == 0x88  # FIN + Close
    assert int.from_bytes(data[2:4], "big") == 1007
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) is CloseCause.WEBSOCKET_PROTOCOL_ERROR
    assert f"flow {flow.id} closed: websocket protocol error (close code 1007)" in caplog.messages
    assert server.sink.messages == []
