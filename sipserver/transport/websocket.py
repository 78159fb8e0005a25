"""SIP over WebSocket (RFC 7118): WS and WSS listeners.

- Handshake: the client must offer the ``sip`` subprotocol; the server then answers with exactly
  ``sip`` (WS-01). Without it the upgrade is refused with HTTP 400; a request for another path
  than the listener's is refused with 404, and a request that is no WebSocket upgrade with 400
  naming what was wrong.
- One SIP message per WebSocket message, text or binary (WS-02/03); fragments are reassembled.
  Text is handed on as its UTF-8 bytes. A message that is exactly CRLF CRLF is an RFC 5626 ping:
  it is answered with a CRLF message of the same frame type and never reaches the sink; any
  other message of only CR/LF is activity only (WS-07, OB-CS-08). The server never sends
  unsolicited CRLFs. WebSocket Ping frames are answered with Pong frames.
- Sending: one text message when the bytes are valid UTF-8, else one binary message (WS-03).
- Size: a message larger than ``max_message_size`` still goes to the sink (the parser answers
  513, the connection stays); only beyond four times that is the connection closed with 1009,
  which bounds memory (wsproto hands frame payloads on as they arrive and buffers at most a
  frame header or a control frame, 139 bytes, itself; empty fragments are not kept).
- Time: as on TCP, a frame or fragmented message that has started must be complete within
  ``partial_message_timeout`` seconds, else the connection is closed with 1008 ("partial message
  timeout"): a peer dripping a frame cannot hold the connection and its buffer forever. Control
  frames interleaved in a fragmented message do not restart the clock.

The WebSocket protocol itself is wsproto's (sans-IO; the engine under trio-websocket): its
H11Handshake for the upgrade, then its frame-level ``Connection``, fed by this module's reader
the way the TCP reader feeds the SIP framer. trio-websocket's own connection object runs a
reader task, a memory channel and several events per connection, about 25 KB a flow against
the 16 KiB target (docs/performance.md).

Invariants: every byte received on the connection (messages, Ping frames, control frames)
counts as activity for the idle reaper; the flow exists (opened/closed reports) only between a
successful handshake and the end of the connection.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

import trio
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sipserver.outbound.flow import CloseCause, Flow, Transport

from .connection import Connection, deliver, logger, recv_nowait
from .errors import FlowGone
from .sink import MessageSink
from .stream import (
    _MESSAGES_PER_YIELD,
    _READS_PER_YIELD,
    _RECV_SIZE,
    _addresses,
    _set_nodelay,
    cause_of,
)

if TYPE_CHECKING:
    from .flows import FlowTable

__all__ = ["WsConnection", "handle_accepted_websocket"]

_PING = b"\r\n\r\n"
_CRLF_ONLY = b"\r\n"
_CLOSE_TIMEOUT = 1.0
# Messages between 1x and this many times max_message_size go to the sink (which answers 513);
# beyond it the connection is closed with 1009 so one peer cannot make us buffer without bound.
_WS_HARD_LIMIT_FACTOR = 4
_GOING_AWAY = 1001
_POLICY_VIOLATION = 1008
_TOO_BIG = 1009


class WsConnection(Connection):
    """A WebSocket connection carrying SIP (Via transport WS or WSS, RFC 7118 §5.2)."""

    __slots__ = ("sock", "stream", "proto", "_raw")

    def __init__(
        self,
        flow: Flow,
        now: float,
        idle_limit: float | None,
        sock: trio.socket.SocketType,
        stream: trio.abc.Stream,
        proto: WsProtocol,
    ) -> None:
        super().__init__(flow, now, idle_limit)
        self.sock = sock
        self.stream = stream
        self.proto = proto
        # Plain WS reads the stdlib socket directly, as TCP does (see stream._read_loop).
        raw = getattr(sock, "_sock", None)
        self._raw = raw if isinstance(raw, socket.socket) and flow.transport is Transport.WS else None

    def frame(self, data: bytes, binary: bool | None) -> bytes:
        """``data`` as one WebSocket message: text when it is UTF-8 (unless ``binary``)."""
        event: Event
        if binary:
            event = BytesMessage(data=bytes(data))
        else:
            try:
                event = TextMessage(data=data.decode("utf-8"))
            except UnicodeDecodeError:
                if binary is not None:
                    raise
                event = BytesMessage(data=bytes(data))
        try:
            return self.proto.send(event)
        except LocalProtocolError as exc:  # a Close was sent or received: no more messages
            raise trio.ClosedResourceError("websocket closing") from exc

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        await self.write_frame(self.frame(data, binary))

    async def write_frame(self, frame: bytes) -> None:
        # A cancelled write may leave half a frame on the wire.
        self.write_broken = True
        await self.stream.send_all(frame)
        self.write_broken = False

    def abort(self) -> None:
        # Wake the reader and any writer (ClosedResourceError); the reader then sends a Close
        # frame if it can and the connection's task closes the socket.
        try:
            trio.lowlevel.notify_closing(self.sock)
        except (OSError, ValueError):  # already closed
            pass


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
        conn = await _set_up_accepted(table, sock, transport, ssl_context, path)
        if conn is not None:
            table.register(conn)
            cause = CloseCause.CLOSED_BY_PEER
            try:
                cause = await _read_loop(table, sink, conn)
            except trio.Cancelled:
                cause = CloseCause.SHUTDOWN
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                cause = conn.cause or cause_of(exc, transport)
            except Exception:
                logger.exception("reader of %s failed", conn.flow.id)
                cause = CloseCause.INTERNAL_ERROR
            finally:
                table.end(conn, cause)
                final = conn.cause or cause
                if final is CloseCause.SHUTDOWN:
                    code = _GOING_AWAY
                elif final is CloseCause.PARTIAL_MESSAGE_TIMEOUT:
                    code = _POLICY_VIOLATION
                else:
                    code = 1000
                await _send_close(conn, code)
    except Exception:
        # A bug or an unexpected library error: it ends this connection, never the listener.
        logger.exception("WebSocket connection from %s failed", ip)
    finally:
        sock.close()
        table.release(ip)


async def _set_up_accepted(
    table: FlowTable,
    sock: trio.socket.SocketType,
    transport: Transport,
    ssl_context: ssl.SSLContext | None,
    path: str,
) -> WsConnection | None:
    """TLS (for WSS) and the HTTP upgrade; the connection, or None when either failed."""
    _set_nodelay(sock)
    try:
        local, remote = _addresses(sock)
    except OSError:
        return None
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
                return None
        if scope.cancelled_caught:
            logger.debug("TLS handshake with %s timed out", remote)
            return None
        stream = tls
    proto: WsProtocol | None = None
    with trio.move_on_after(limits.handshake_timeout) as scope:
        try:
            proto = await _upgrade(stream, remote, path)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("WebSocket handshake with %s failed: %r", remote, exc)
            return None
    if scope.cancelled_caught:
        logger.debug("WebSocket handshake with %s timed out", remote)
    if proto is None:
        return None
    # The serial is taken only now, so it numbers real flows.
    flow = Flow(transport, local, remote, table.new_serial())
    return WsConnection(flow, trio.current_time(), limits.idle_flow_timeout, sock, stream, proto)


async def _upgrade(stream: trio.abc.Stream, remote: object, path: str) -> WsProtocol | None:
    """RFC 6455 §4.2 server handshake with the RFC 7118 §4 subprotocol rule (WS-01)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    request: Request | None = None
    while request is None:
        data = await stream.receive_some(_RECV_SIZE)
        if not data:
            return None
        try:
            handshake.receive_data(bytes(data))
            for event in handshake.events():
                if isinstance(event, Request):
                    request = event
        except RemoteProtocolError as exc:
            logger.debug("WebSocket handshake from %s refused: %s", remote, exc)
            await _refuse(stream, 400, f"Bad WebSocket handshake: {exc}\n")
            return None
    if "sip" not in request.subprotocols:
        logger.debug("WebSocket from %s refused: no 'sip' subprotocol", remote)
        await _refuse(stream, 400, "WebSocket subprotocol 'sip' required (RFC 7118)\n")
        return None
    if path and _path_of(request.target) != path:
        logger.debug("WebSocket from %s refused: path %r", remote, request.target)
        await _refuse(stream, 404, f"Not Found: the SIP WebSocket path here is {path}\n")
        return None
    await stream.send_all(handshake.send(AcceptConnection(subprotocol="sip")))
    return handshake.connection


async def _refuse(stream: trio.abc.Stream, status: int, text: str) -> None:
    reason = {400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    body = text.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _path_of(target: str) -> str:
    return target.split("?", 1)[0] or "/"


async def _send_close(conn: WsConnection, code: int) -> None:
    """Best-effort Close frame on the way out (RFC 6455 §5.5.1); never waits long."""
    if conn.write_broken or conn.senders or conn.proto.state not in (
        ConnectionState.OPEN,
        ConnectionState.REMOTE_CLOSING,
    ):
        return
    try:
        frame = conn.proto.send(CloseConnection(code=code))
    except LocalProtocolError:
        return
    raw = conn._raw
    if raw is not None:
        try:
            raw.send(frame)
        except OSError:
            pass
        return
    with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
        scope.shield = True
        try:
            await conn.stream.send_all(frame)
        except Exception:  # the peer or the TLS layer may already be gone: best effort
            pass


async def _send_control(table: FlowTable, conn: WsConnection, frame: bytes) -> bool:
    """A Pong or Close frame, serialised with the SIP writers; False if the flow is gone."""
    try:
        await table.send_on(conn, frame, frame=True)
    except FlowGone:
        return False
    return True


async def _read_loop(table: FlowTable, sink: MessageSink, conn: WsConnection) -> CloseCause:
    flow = conn.flow
    proto = conn.proto
    raw = conn._raw
    receive = conn.stream.receive_some if raw is None else None
    hard_limit = _WS_HARD_LIMIT_FACTOR * table.limits.max_message_size
    partial_timeout = table.limits.partial_message_timeout
    parts: list[str] | list[bytes] | None = None  # fragments of the message being received
    size = 0
    reads = 0
    handled = 0
    # When the incomplete frame or message at the end of what was read began (0: none).
    started = 0.0
    while True:
        if conn.cause is not None:
            return conn.cause
        data: bytes | None
        if raw is not None:
            reads += 1
            if reads >= _READS_PER_YIELD:
                reads = 0
                await trio.lowlevel.checkpoint()
            data = recv_nowait(raw, _RECV_SIZE)
            if data is None:
                if started:
                    with trio.move_on_at(started + partial_timeout) as scope:
                        await trio.lowlevel.wait_readable(raw)
                    if scope.cancelled_caught:
                        return CloseCause.PARTIAL_MESSAGE_TIMEOUT
                else:
                    await trio.lowlevel.wait_readable(raw)
                reads = 0
                continue
        elif started:
            assert receive is not None
            with trio.move_on_at(started + partial_timeout) as scope:
                data = bytes(await receive(_RECV_SIZE))
            if scope.cancelled_caught:
                return CloseCause.PARTIAL_MESSAGE_TIMEOUT
        else:
            assert receive is not None
            data = bytes(await receive(_RECV_SIZE))
        if not data:
            return CloseCause.CLOSED_BY_PEER
        now = conn.last_activity = trio.current_time()
        proto.receive_data(data)
        data = None  # an idle reader holds no copy of what it read
        # Whether the bytes read ended inside a frame: wsproto reports every complete frame
        # (and every piece of a data frame's payload) as an event, so a read that produced
        # none ended in a frame header or a control frame; a message is open while ``parts``
        # is. Trailing header bytes after a complete frame are seen on the next read.
        events = False
        completed = False
        for event in proto.events():
            events = True
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                assert isinstance(event, (TextMessage, BytesMessage))
                if parts is None:
                    parts = []
                    size = 0
                if event.data:  # empty fragments cost nothing to keep out of the list
                    parts.append(event.data)  # type: ignore[arg-type]
                    size += len(event.data)
                if size > hard_limit:
                    await _send_control(table, conn, proto.send(CloseConnection(code=_TOO_BIG)))
                    return CloseCause.MESSAGE_TOO_LARGE
                if not event.message_finished:
                    continue
                binary = kind is BytesMessage
                if binary:
                    payload = b"".join(parts)  # type: ignore[arg-type]
                else:
                    payload = "".join(parts).encode("utf-8")  # type: ignore[arg-type]
                parts = None
                completed = True
                if not payload.strip(_CRLF_ONLY):
                    # RFC 7118 + RFC 5626 §4.4.1 (WS-07, OB-CS-08): CRLF keep-alives never
                    # reach SIP.
                    if payload == _PING:
                        try:
                            await table.send_on(conn, _CRLF_ONLY, binary=binary)
                        except FlowGone:
                            assert conn.cause is not None  # send_on ended the flow first
                            return conn.cause
                        table.report_keepalive(flow)
                    continue
                await deliver(sink, flow, payload)
                handled += 1
                if handled >= _MESSAGES_PER_YIELD:
                    handled = 0
                    await trio.lowlevel.checkpoint()
                if conn.cause is not None:
                    return conn.cause
            elif kind is Ping:
                assert isinstance(event, Ping)
                await _send_control(table, conn, proto.send(event.response()))
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                if proto.state is ConnectionState.REMOTE_CLOSING:
                    # RFC 6455 §5.5.1: answer the peer's Close, then the connection ends.
                    await _send_control(table, conn, proto.send(event.response()))
                    return CloseCause.CLOSED_BY_PEER
                # wsproto could not parse what the peer sent (bad frame, invalid UTF-8 text):
                # close with the code it names (RFC 6455 §7.4.1).
                await _send_control(table, conn, proto.send(CloseConnection(code=event.code)))
                table.end(conn, CloseCause.WEBSOCKET_PROTOCOL_ERROR, f"close code {event.code}")
                return CloseCause.WEBSOCKET_PROTOCOL_ERROR
        if parts is not None or not events:
            if completed or not started:
                started = now
            elif now >= started + partial_timeout:  # bytes kept coming, the message never ended
                return CloseCause.PARTIAL_MESSAGE_TIMEOUT
        else:
            started = 0.0
