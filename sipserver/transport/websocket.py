"""SIP over WebSocket (RFC 7118) on trio-websocket: WS and WSS listeners.

- Handshake: the client must offer the ``sip`` subprotocol; the server then answers with exactly
  ``sip`` (WS-01). Without it the upgrade is refused with HTTP 400; a request for another path
  than the listener's is refused with 404.
- One SIP message per WebSocket message, text or binary (WS-02/03). Text arrives as ``str`` and
  is handed on as its UTF-8 bytes. A message that is exactly CRLF CRLF is an RFC 5626 ping: it is
  answered with a CRLF message of the same frame type and never reaches the sink; any other
  message of only CR/LF is activity only (WS-07, OB-CS-08). The server never sends unsolicited
  CRLFs. WebSocket Ping frames are answered with Pong frames by wsproto/trio-websocket.
- Sending: one text message when the bytes are valid UTF-8, else one binary message (WS-03).
- Size: a message larger than ``max_message_size`` still goes to the sink (the parser answers
  513, the connection stays); only beyond four times that does trio-websocket close the
  connection with 1009, which bounds memory.

Invariants: every byte received on the connection (messages, Ping frames, control frames)
counts as activity for the idle reaper; the flow exists (opened/closed reports) only between a
successful handshake and the end of the connection.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from sipserver.outbound.flow import Flow, Transport

from .connection import Connection, deliver, logger
from .errors import FlowGone
from .sink import MessageSink
from .stream import _addresses, _set_nodelay

if TYPE_CHECKING:
    from .flows import FlowTable

__all__ = ["WsConnection", "handle_accepted_websocket"]

_PING = b"\r\n\r\n"
_CRLF_ONLY = b"\r\n"
_CLOSE_TIMEOUT = 1.0
# trio-websocket buffers one message at a time; it closes with 1009 beyond this many times
# max_message_size (messages between 1x and this go to the sink, which answers 513).
_WS_HARD_LIMIT_FACTOR = 4


class WsConnection(Connection):
    """A WebSocket connection carrying SIP (Via transport WS or WSS, RFC 7118 §5.2)."""

    __slots__ = ("sock", "ws", "scope")

    def __init__(
        self, flow: Flow, now: float, idle_limit: float | None, sock: trio.socket.SocketType
    ) -> None:
        super().__init__(flow, now, idle_limit)
        self.sock = sock
        self.ws: WebSocketConnection | None = None
        self.scope = trio.CancelScope()

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        assert self.ws is not None
        message: str | bytes
        if binary is None:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                message = bytes(data)
        elif binary:
            message = bytes(data)
        else:
            message = data.decode("utf-8")
        # A cancelled write may leave half a frame on the wire.
        self.write_broken = True
        try:
            await self.ws.send_message(message)
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError("websocket closed") from exc
        self.write_broken = False

    def abort(self) -> None:
        # The session task closes the WebSocket (close frame, then the socket) on its way out.
        self.scope.cancel()


class _ActivityStream(trio.abc.Stream):
    """Wraps the connection's byte stream to count every received byte as flow activity."""

    __slots__ = ("_inner", "_conn")

    def __init__(self, inner: trio.abc.Stream, conn: Connection) -> None:
        self._inner = inner
        self._conn = conn

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._inner.receive_some(max_bytes)
        if data:
            self._conn.last_activity = trio.current_time()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def handle_accepted_websocket(
    table: FlowTable,
    sink: MessageSink,
    sock: trio.socket.SocketType,
    ip: str,
    transport: Transport,
    ssl_context: ssl.SSLContext | None,
    path: str,
) -> None:
    """Task body for one accepted WS/WSS connection (already counted by the flow table)."""
    try:
        await _serve_accepted(table, sink, sock, transport, ssl_context, path)
    except Exception:
        # A bug or an unexpected library error: it ends this connection, never the listener.
        logger.exception("WebSocket connection from %s failed", ip)
    finally:
        sock.close()
        table._release(ip)


async def _serve_accepted(
    table: FlowTable,
    sink: MessageSink,
    sock: trio.socket.SocketType,
    transport: Transport,
    ssl_context: ssl.SSLContext | None,
    path: str,
) -> None:
    _set_nodelay(sock)
    try:
        local, remote = _addresses(sock)
    except OSError:
        return
    limits = table.limits
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if transport is Transport.WSS:
        assert ssl_context is not None
        tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
        with trio.move_on_after(limits.handshake_timeout) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("TLS handshake with %s failed: %r", remote, exc.__cause__ or exc)
                return
        if scope.cancelled_caught:
            logger.debug("TLS handshake with %s timed out", remote)
            return
        stream = tls
    conn = WsConnection(
        Flow(transport, local, remote, 0), trio.current_time(), limits.idle_flow_timeout, sock
    )
    async with trio.open_nursery() as nursery:
        try:
            await _session(table, sink, conn, nursery, _ActivityStream(stream, conn), path)
        finally:
            nursery.cancel_scope.cancel()


async def _session(
    table: FlowTable,
    sink: MessageSink,
    conn: WsConnection,
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    path: str,
) -> None:
    limits = table.limits
    remote = conn.flow.remote
    ws: WebSocketConnection | None = None
    with trio.move_on_after(limits.handshake_timeout):
        request = await wrap_server_stream(
            nursery,
            stream,
            message_queue_size=1,
            max_message_size=_WS_HARD_LIMIT_FACTOR * limits.max_message_size,
        )
        if "sip" not in request.proposed_subprotocols:
            # RFC 7118 §4 (WS-01): no SIP WebSocket session without the sip subprotocol.
            logger.debug("WebSocket from %s refused: no 'sip' subprotocol", remote)
            await request.reject(400, body=b"WebSocket subprotocol 'sip' required (RFC 7118)\n")
            return
        if path and _path_of(request.path) != path:
            logger.debug("WebSocket from %s refused: path %r", remote, request.path)
            await request.reject(404, body=b"Not Found\n")
            return
        ws = await request.accept(subprotocol="sip")
    if ws is None:
        logger.debug("WebSocket handshake with %s timed out", remote)
        return
    conn.ws = ws
    # The serial is taken only now, so it numbers real flows.
    conn.flow = Flow(conn.flow.transport, conn.flow.local, remote, table._new_serial())
    conn.opened_at = conn.last_activity = trio.current_time()
    table._register(conn)
    cause = "closed by peer"
    try:
        with conn.scope:
            cause = await _read_loop(table, sink, conn, ws)
    except trio.Cancelled:
        cause = "shutdown"
        raise
    except Exception:
        logger.exception("reader of %s failed", conn.flow.id)
        cause = "internal error"
    finally:
        table._end(conn, cause)
        final = conn.cause or cause
        with trio.move_on_after(_CLOSE_TIMEOUT) as closing:
            closing.shield = True
            code = 1001 if final == "shutdown" else 1000
            try:
                await ws.aclose(code)
            except Exception:  # the peer may already be gone: closing is best effort
                pass


def _path_of(target: str) -> str:
    return target.split("?", 1)[0] or "/"


async def _read_loop(
    table: FlowTable, sink: MessageSink, conn: WsConnection, ws: WebSocketConnection
) -> str:
    flow = conn.flow
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as exc:
            if conn.cause is not None:
                return conn.cause
            reason = exc.reason
            if reason is not None and reason.code == 1009:
                return "message too large"
            return "closed by peer"
        binary = not isinstance(message, str)
        data = message if isinstance(message, bytes) else message.encode("utf-8")
        if not data.strip(_CRLF_ONLY):
            # RFC 7118 + RFC 5626 §4.4.1 (WS-07, OB-CS-08): CRLF keep-alives never reach SIP.
            if data == _PING:
                try:
                    await table._send_conn(conn, _CRLF_ONLY, binary=binary)
                except FlowGone as gone:
                    return gone.cause
                table._report_keepalive(flow)
            continue
        await deliver(sink, flow, data)
        if conn.cause is not None:
            return conn.cause
