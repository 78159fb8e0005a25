"""TCP and TLS connections: one reader task each, framing with ``StreamFramer``.

RFC 3261 §18.3 (Content-Length framing; a framing error ends the connection), RFC 5626 §3.5.1 /
§5.4 (a CRLF CRLF ping is answered at once with one CRLF; a pong is never answered, OB-EP-14).

Invariants:
- the reader task is the only task that reads a connection; it awaits the sink inline, so one
  message is handled at a time per connection and a slow sink slows only its own connection;
- a message that has started must complete within ``partial_message_timeout`` seconds, else
  the connection is closed ("partial message timeout"): a slow or stalled sender cannot hold a
  buffer forever;
- every way a reader ends reports the flow closed exactly once (through the flow table), with
  the first cause recorded winning (a close by the server is not re-reported as "reset").
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from sipserver.outbound.flow import Address, CloseCause, Flow, Transport
from sipserver.sip.framer import (
    FramedMessage,
    FramingError,
    KeepalivePing,
    StreamFramer,
)

from .connection import Connection, deliver, logger, recv_nowait
from .errors import FlowGone, TransportFailure
from .sink import MessageSink
from .udp import _ANC_SIZE, _SO_TIMESTAMPNS, _TIMESPEC

if TYPE_CHECKING:
    from .flows import FlowTable

__all__ = [
    "TcpConnection",
    "TlsConnection",
    "cause_of",
    "handle_accepted_stream",
    "open_stream_connection",
    "run_stream_connection",
]

# Read size: big enough for a full-size SIP message in one read; the buffer is per read, not
# per connection (an idle connection holds no receive buffer).
_RECV_SIZE = 65536
# Reads straight from a TCP or WS socket in a row before the reader yields to other tasks.
_READS_PER_YIELD = 16
# Messages handled in a row before the reader yields (however many reads brought them).
_MESSAGES_PER_YIELD = 32
# A read at least this long holds several messages (a busy connection): their writes to it
# are gathered into one (FlowTable.cork). A phone's single message never waits for that.
_CORK_READ = 4096
_PONG = b"\r\n"
# After a framing error: how long to drain the peer's input before closing (see _linger).
_LINGER = 1.0


class TcpConnection(Connection):
    """A plain TCP connection, read and written on the trio socket directly."""

    __slots__ = ("sock", "framer", "_raw")

    def __init__(
        self,
        flow: Flow,
        now: float,
        idle_limit: float | None,
        sock: trio.socket.SocketType,
        framer: StreamFramer,
    ) -> None:
        super().__init__(flow, now, idle_limit)
        self.sock = sock
        self.framer = framer
        # The stdlib socket under trio's, for reads and writes that need no wait (see
        # ``_read_loop`` and ``write_nowait``); None if trio ever stops exposing it.
        raw = getattr(sock, "_sock", None)
        self._raw: socket.socket | None = raw if isinstance(raw, socket.socket) else None

    def receiver(self) -> Callable[[int], Awaitable[bytes]]:
        # The read loop reads ``_raw`` itself (see ``_read_loop``); this is for the rest
        # (draining after a framing error) and for a socket trio stops exposing.
        recv: Callable[[int], Awaitable[bytes]] = self.sock.recv
        return recv

    def write_nowait(self, data: bytes) -> int | None:
        """Write what the socket buffer takes without waiting: the number of bytes written
        (possibly 0), or None when this connection cannot do it (the caller then awaits
        ``write``). Errors are raised as OSError, as ``write`` raises them."""
        raw = self._raw
        if raw is None:
            return None
        try:
            return raw.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        sock = self.sock
        total = len(data)
        sent = await sock.send(data)
        if sent == total:
            return
        # Socket buffer full: the rest must follow, and a cancellation now would leave half a
        # message on the wire.
        self.write_broken = True
        with memoryview(data) as view:
            while sent < total:
                sent += await sock.send(view[sent:])
        self.write_broken = False

    def abort(self) -> None:
        self.sock.close()


class TlsConnection(Connection):
    """A TLS connection (RFC 3261 §26.2.1, Via transport TLS)."""

    __slots__ = ("sock", "stream", "framer")

    def __init__(
        self,
        flow: Flow,
        now: float,
        idle_limit: float | None,
        sock: trio.socket.SocketType,
        stream: trio.SSLStream[trio.SocketStream],
        framer: StreamFramer,
    ) -> None:
        super().__init__(flow, now, idle_limit)
        self.sock = sock
        self.stream = stream
        self.framer = framer

    def receiver(self) -> Callable[[int], Awaitable[bytes]]:
        recv = self.stream.receive_some
        return recv  # type: ignore[return-value]  # trio returns bytes or bytearray

    async def write(self, data: bytes, binary: bool | None = None) -> None:
        # trio: a cancelled SSLStream.send_all leaves the stream unusable.
        self.write_broken = True
        await self.stream.send_all(data)
        self.write_broken = False

    def abort(self) -> None:
        # Closing the socket under the SSLStream wakes the reader and any writer at once.
        self.sock.close()


def cause_of(exc: BaseException, transport: Transport) -> CloseCause:
    """The cause for ``on_flow_closed`` of a read/write exception."""
    if isinstance(exc, trio.ClosedResourceError):
        return CloseCause.CLOSED_BY_SERVER
    if isinstance(exc, trio.BrokenResourceError):
        inner = exc.__cause__
        if isinstance(inner, ssl.SSLError | ssl.CertificateError):
            return CloseCause.TLS_ERROR
        if inner is not None:
            return cause_of(inner, transport)
        return CloseCause.RESET
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return CloseCause.RESET
    if isinstance(exc, OSError):
        if exc.errno == errno.EBADF:
            return CloseCause.CLOSED_BY_SERVER
        if exc.errno == errno.ETIMEDOUT:
            return CloseCause.TIMEOUT
        return CloseCause.SOCKET_ERROR
    return CloseCause.SOCKET_ERROR  # anything else under a BrokenResourceError


def _addresses(sock: trio.socket.SocketType) -> tuple[Address, Address]:
    local = sock.getsockname()
    remote = sock.getpeername()
    return (local[0], local[1]), (remote[0], remote[1])


def _set_nodelay(sock: trio.socket.SocketType) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    if _SO_TIMESTAMPNS is not None and _ANC_SIZE:
        try:  # Linux: reads carry the kernel receive time of their last segment (issue 19)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            pass


def _recv_stamped(raw: socket.socket, table: FlowTable) -> bytes | None:
    """``recv_nowait`` that also sets ``table.stream_queue_delay``: how long the last segment
    of what was read waited in the kernel (the TCP overload signal; a busy event loop leaves its
    backlog in the connection's socket buffer, where nothing else sees it)."""
    try:
        data, ancillary, _flags, _addr = raw.recvmsg(_RECV_SIZE, _ANC_SIZE)
    except (BlockingIOError, InterruptedError):
        table.stream_queue_delay = 0.0
        return None
    if ancillary and data:
        sec, nsec = _TIMESPEC.unpack(ancillary[0][2][: _TIMESPEC.size])
        table.stream_queue_delay = max(0.0, time.time() - sec - nsec * 1e-9)
    return data


async def handle_accepted_stream(
    table: FlowTable,
    sink: MessageSink,
    sock: trio.socket.SocketType,
    ip: str,
    transport: Transport,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """Task body for one accepted TCP/TLS connection (already counted by the flow table)."""
    try:
        # The set-up coroutine returns before the reader starts, and the reader is awaited from
        # here rather than through ``run_stream_connection``: an idle connection keeps only this
        # frame and the reader's alive.
        conn = await _set_up_accepted(table, sock, transport, ssl_context)
        if conn is not None:
            table.register(conn)
            cause = CloseCause.CLOSED_BY_PEER
            try:
                cause = await _read_loop(table, sink, conn)
            except BaseException as exc:
                cause = _reader_failed(exc, conn)
                if not isinstance(exc, Exception):  # cancellation: shutdown goes on
                    raise
            finally:
                table.end(conn, cause)
                conn.abort()
    except Exception:
        # A bug or an unexpected library error: it ends this connection, never the listener.
        logger.exception("connection from %s failed", ip)
    finally:
        sock.close()
        table.release(ip)


async def _set_up_accepted(
    table: FlowTable,
    sock: trio.socket.SocketType,
    transport: Transport,
    ssl_context: ssl.SSLContext | None,
) -> TcpConnection | TlsConnection | None:
    """The flow of an accepted connection, after its TLS handshake; None if it failed."""
    _set_nodelay(sock)
    try:
        local, remote = _addresses(sock)
    except OSError:
        return None  # the peer is already gone
    limits = table.limits
    framer = StreamFramer(limits.max_message_size)
    if transport is Transport.TLS:
        assert ssl_context is not None
        stream = trio.SSLStream(
            trio.SocketStream(sock), ssl_context, server_side=True, https_compatible=True
        )
        with trio.move_on_after(limits.handshake_timeout) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.debug("TLS handshake with %s failed: %r", remote, exc.__cause__ or exc)
                return None
        if scope.cancelled_caught:
            logger.debug("TLS handshake with %s timed out", remote)
            return None
        flow = Flow(transport, local, remote, table.new_serial())
        return TlsConnection(
            flow, trio.current_time(), limits.idle_flow_timeout, sock, stream, framer
        )
    flow = Flow(transport, local, remote, table.new_serial())
    return TcpConnection(flow, trio.current_time(), limits.idle_flow_timeout, sock, framer)


async def open_stream_connection(
    table: FlowTable,
    transport: Transport,
    remote: Address,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> Connection:
    """Connect to ``remote`` over TCP or TLS; raises OSError, TooSlowError or BrokenResourceError.

    The caller registers the returned connection and runs its reader.
    """
    limits = table.limits
    family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        with trio.fail_after(limits.connect_timeout):
            await sock.connect(remote)
            _set_nodelay(sock)
            local, peer = _addresses(sock)
            framer = StreamFramer(limits.max_message_size)
            if transport is Transport.TLS:
                assert ssl_context is not None
                stream = trio.SSLStream(
                    trio.SocketStream(sock),
                    ssl_context,
                    server_hostname=server_hostname or remote[0],
                    https_compatible=True,
                )
                await stream.do_handshake()
                flow = Flow(transport, local, peer, table.new_serial())
                return TlsConnection(
                    flow, trio.current_time(), limits.idle_flow_timeout, sock, stream, framer
                )
            flow = Flow(transport, local, peer, table.new_serial())
            return TcpConnection(flow, trio.current_time(), limits.idle_flow_timeout, sock, framer)
    except BaseException:
        sock.close()
        raise


async def run_stream_connection(
    table: FlowTable, sink: MessageSink, conn: TcpConnection | TlsConnection
) -> None:
    """The reader loop of a registered TCP/TLS connection; reports the flow closed when done."""
    cause = CloseCause.CLOSED_BY_PEER
    try:
        cause = await _read_loop(table, sink, conn)
    except BaseException as exc:
        cause = _reader_failed(exc, conn)
        if not isinstance(exc, Exception):  # cancellation: shutdown goes on
            raise
    finally:
        table.end(conn, cause)
        conn.abort()


def _reader_failed(exc: BaseException, conn: Connection) -> CloseCause:
    """The flow's closing cause for an exception out of a reader (logged when it is a bug)."""
    if isinstance(exc, trio.Cancelled):
        return CloseCause.SHUTDOWN
    if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
        return cause_of(exc, conn.flow.transport)
    if isinstance(exc, Exception):
        logger.exception("reader of %s failed", conn.flow.id, exc_info=exc)
        return CloseCause.INTERNAL_ERROR
    return CloseCause.SHUTDOWN


async def _read_loop(
    table: FlowTable, sink: MessageSink, conn: TcpConnection | TlsConnection
) -> CloseCause:
    flow = conn.flow
    framer = conn.framer
    # Plain TCP reads the stdlib socket itself and waits for readability only when it is
    # empty: an idle connection then keeps this coroutine and trio's wait, not a chain of
    # socket-wrapper coroutines (about 2 KB a flow, docs/performance.md).
    raw = conn._raw if type(conn) is TcpConnection else None
    receive = conn.receiver() if raw is None else None
    stamped = raw is not None and _ANC_SIZE > 0 and _SO_TIMESTAMPNS is not None
    reads = 0
    partial_timeout = table.limits.partial_message_timeout
    started = 0.0  # when the incomplete message at the end of the buffer began (0: none)
    handled = 0
    while True:
        if raw is not None:
            reads += 1
            if reads >= _READS_PER_YIELD:
                reads = 0
                await trio.lowlevel.checkpoint()
            data = _recv_stamped(raw, table) if stamped else recv_nowait(raw, _RECV_SIZE)
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
                data = await receive(_RECV_SIZE)
            if scope.cancelled_caught:
                return CloseCause.PARTIAL_MESSAGE_TIMEOUT
        else:
            assert receive is not None
            data = await receive(_RECV_SIZE)
        if conn.cause is not None:
            return conn.cause
        if not data:
            return CloseCause.CLOSED_BY_PEER
        now = trio.current_time()
        conn.last_activity = now
        # A read holding several messages (a busy connection) has what they make this task
        # write to this connection (503s, 100s, answers) sent as one write (``cork``).
        corked = len(data) >= _CORK_READ and table.cork(conn)
        framer.feed(data)
        data = None  # an idle reader holds no copy of what it read
        completed = False
        try:
            while True:
                try:
                    event = framer.next_event()
                except FramingError as exc:
                    await _framing_error(sink, flow, exc)
                    if corked:
                        corked = False
                        await table.uncork()  # the error response goes out before the end
                    table.end(conn, CloseCause.FRAMING_ERROR, f"{exc.status} {exc.reason}")
                    await _linger(conn, receive or conn.receiver())
                    return CloseCause.FRAMING_ERROR
                if event is None:
                    break
                if type(event) is FramedMessage:
                    completed = True
                    await deliver(sink, flow, event.data)
                    handled += 1
                    if handled >= _MESSAGES_PER_YIELD:
                        # One read can hold a hundred messages: let other tasks (the store
                        # writer, other connections, timers) in between.
                        handled = 0
                        if corked:
                            await table.uncork()
                        await trio.lowlevel.checkpoint()
                        if corked:
                            corked = table.cork(conn)
                elif type(event) is KeepalivePing:
                    # RFC 5626 §4.4.1 / OB-EP-14: answer a ping at once with a single CRLF.
                    try:
                        await table.send_on(conn, _PONG)
                    except FlowGone:
                        assert conn.cause is not None  # send_on ended the flow first
                        return conn.cause
                    table.report_keepalive(flow)
                # KeepalivePong: activity only, never answered (OB-KA-01).
                if conn.cause is not None:
                    return conn.cause
        finally:
            if corked:
                await table.uncork()
        if framer.pending:
            if completed or not started:
                started = now
        else:
            started = 0.0


async def _linger(
    conn: TcpConnection | TlsConnection, receive: Callable[[int], Awaitable[bytes]]
) -> None:
    """Close gently after a framing error so the peer gets the error response.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    response the sink just sent. So: send FIN, then read and drop input for a short while.
    """
    if not isinstance(conn, TcpConnection):
        return
    try:
        conn.sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(_LINGER):
            while await receive(_RECV_SIZE):
                pass
    except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
        pass


async def _framing_error(sink: MessageSink, flow: Flow, exc: FramingError) -> None:
    try:
        await sink.on_framing_error(flow, exc)
    except TransportFailure as err:
        logger.debug("sink could not answer the framing error on %s: %s", flow.id, err)
    except Exception:
        logger.exception("sink.on_framing_error failed on %s", flow.id)
