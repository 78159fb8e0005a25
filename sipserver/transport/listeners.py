"""Binding the listeners and running them: ``serve()`` is the transport layer's entry point.

Invariants:
- every listener is bound before ``serve`` reports started (port 0 works: the bound addresses
  are returned), and a bind failure closes whatever was bound and raises;
- one task per UDP socket, one accept loop per stream socket, one task per accepted connection,
  and one idle reaper; they all live in ``serve``'s nursery, which the flow table also uses for
  outgoing connections;
- nothing a peer does can end a listener: accept errors are logged (and back off when the
  process is out of file descriptors), connection tasks catch their own failures;
- when ``serve`` is cancelled, every flow is reported closed with cause "shutdown";
- a listener found in ``inherited`` is not bound here: a worker of ``sipserver run --workers N``
  serves the sockets its supervisor bound for it (SO_REUSEPORT, sipserver.workers).
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable, Sequence

import attrs
import trio

from sipserver.config import ListenSpec, ListenTransport
from sipserver.outbound.flow import Transport

from .connection import logger, warning_budget
from .flows import FlowTable
from .sink import MessageSink
from .stream import handle_accepted_stream
from .udp import UdpEndpoint, run_udp_endpoint
from .websocket import handle_accepted_websocket

# Task names given once: trio otherwise builds a new name string for every connection's task.
_STREAM_TASK = "sipserver.connection"
_WS_TASK = "sipserver.websocket"

__all__ = ["BoundListener", "serve"]

# A worker's sockets of its shared listeners, bound (and listening) by the supervisor, by spec;
# set by sipserver.workers before the server starts, taken by ``serve``.
inherited: dict[ListenSpec, list[socket.socket]] = {}

_UDP_RCVBUF = 4 * 1024 * 1024
_BACKLOG = 1024
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@attrs.frozen(slots=True)
class BoundListener:
    """A listening socket as actually bound (``path`` only for WS/WSS)."""

    transport: ListenTransport
    host: str
    port: int
    path: str | None = None
    advertise_host: str = ""  # ListenSpec.advertise_*: the public address behind a 1:1 NAT
    advertise_port: int | None = None

    @property
    def flow_transport(self) -> Transport:
        return Transport(self.transport.upper())

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}{self.path or ''}"


async def serve(
    listeners: Sequence[ListenSpec],
    table: FlowTable,
    sink: MessageSink,
    ssl_context: ssl.SSLContext | None,
    on_bound: Callable[[list[BoundListener]], None] | None = None,
    *,
    task_status: trio.TaskStatus[list[BoundListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind every listener, report ``list[BoundListener]`` via ``nursery.start``, then serve
    until cancelled. TLS and WSS listeners need ``ssl_context``. ``on_bound`` is called with
    the bound listeners before anything is read from them (the sink may need their ports to
    know its own addresses: a datagram already waiting is read before ``nursery.start``
    returns)."""
    for spec in listeners:
        if spec.flow_transport.secure and ssl_context is None:
            raise ValueError(f"{spec.transport} listener on port {spec.port} needs a TLS context")
    opened: list[tuple[ListenSpec, socket.socket]] = []
    attached = False
    try:
        for spec in listeners:
            for raw in inherited.pop(spec, None) or await _bind(spec):
                opened.append((spec, raw))
        bound = [_describe(spec, raw) for spec, raw in opened]
        if on_bound is not None:
            on_bound(bound)
        async with trio.open_nursery() as nursery:
            table.attach(nursery, sink)
            attached = True
            for spec, raw in opened:
                if spec.flow_transport is Transport.UDP:
                    endpoint = UdpEndpoint(raw)
                    table.add_udp(endpoint)
                    nursery.start_soon(run_udp_endpoint, table, sink, endpoint)
                else:
                    nursery.start_soon(
                        _accept_loop,
                        table,
                        sink,
                        trio.socket.from_stdlib_socket(raw),
                        spec,
                        ssl_context,
                        nursery,
                    )
            nursery.start_soon(table.run_reaper)
            for item in bound:
                logger.debug("listening on %s", item)
            task_status.started(bound)
    finally:
        if attached:
            table.detach()
        for _, raw in opened:
            raw.close()


def _describe(spec: ListenSpec, raw: socket.socket) -> BoundListener:
    name = raw.getsockname()
    is_ws = spec.flow_transport in (Transport.WS, Transport.WSS)
    return BoundListener(
        spec.transport, name[0], name[1], spec.path if is_ws else None,
        spec.advertise_host, spec.advertise_port,
    )


async def _bind(spec: ListenSpec) -> list[socket.socket]:
    """Bind (and listen on) every address ``spec.host`` resolves to."""
    datagram = spec.flow_transport is Transport.UDP
    socktype = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    try:
        infos = await trio.socket.getaddrinfo(
            spec.host or None, spec.port, type=socktype, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot resolve listen address {spec.host!r}: {exc}") from exc
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            key = (int(family), str(sockaddr[0]))
            if key in seen:
                continue
            seen.add(key)
            raw = socket.socket(family, type_, proto)
            sockets.append(raw)
            if family == socket.AF_INET6:
                raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if datagram:
                try:
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
                except OSError:
                    pass  # the kernel caps it; not fatal
            elif hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                raw.bind(sockaddr)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot bind {spec.transport} {sockaddr[0]} port {spec.port}: {exc.strerror}",
                ) from exc
            if not datagram:
                raw.listen(_BACKLOG)
            raw.setblocking(False)
    except BaseException:
        for raw in sockets:
            raw.close()
        raise
    return sockets


async def _accept_loop(
    table: FlowTable,
    sink: MessageSink,
    listener: trio.socket.SocketType,
    spec: ListenSpec,
    ssl_context: ssl.SSLContext | None,
    nursery: trio.Nursery,
) -> None:
    """Accept connections, apply the connection limits, start one task per connection."""
    transport = spec.flow_transport
    websocket = transport in (Transport.WS, Transport.WSS)
    errors = warning_budget("accept error")
    while True:
        try:
            sock, addr = await listener.accept()
        except OSError as exc:
            if exc.errno in _CAPACITY_ERRNOS:
                errors.warning(
                    "accept on %s port %d: %s; backing off", transport.value, spec.port, exc
                )
                await trio.sleep(0.1)
            else:
                # e.g. ECONNABORTED: the peer gave up while queued. Never fatal.
                logger.debug("accept on %s port %d: %s", transport.value, spec.port, exc)
                await trio.sleep(0)
            continue
        ip = addr[0]
        if not table.admit(ip, transport):
            sock.close()
            continue
        try:
            if websocket:
                nursery.start_soon(
                    handle_accepted_websocket,
                    table,
                    sink,
                    sock,
                    ip,
                    transport,
                    ssl_context,
                    spec.path,
                    name=_WS_TASK,
                )
            else:
                nursery.start_soon(
                    handle_accepted_stream,
                    table,
                    sink,
                    sock,
                    ip,
                    transport,
                    ssl_context,
                    name=_STREAM_TASK,
                )
        except BaseException:
            sock.close()
            table.release(ip)
            raise
