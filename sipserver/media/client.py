"""The ng client (trio): commands to rtpengine over UDP, with retransmission and failover.

One connected UDP socket per configured rtpengine and one reader task per socket; requests are
matched to replies by cookie, so any number may be in flight at once. A command is framed once
and every try sends the same bytes with the same cookie (rtpengine answers a retransmission from
its reply cache instead of running the command twice).

Invariants:
- ``execute`` never raises for network trouble: it returns ``NgOk``, ``NgError`` (rtpengine
  answered "error") or ``NgUnavailable`` (nobody answered), after at most
  ``timeout * (retransmissions + 1)`` per server tried, plus ``timeout`` per server already
  marked dead (each gets one try, first the live ones in configured order, then the dead).
- A server that does not answer any try (or whose port is refused: ICMP on a connected socket)
  is marked dead for ``dead_time`` seconds; any reply from it revives it.
- A command routed to a server (``NgCommand.server``: the rtpengine that holds the call) goes to
  that server only; another rtpengine does not know the call.
- ``request`` and the named helpers (``ping``, ``offer``...) raise instead: ``MediaUnavailable``
  when no rtpengine answered, ``NgCommandError`` when rtpengine refused the command.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from . import ng
from .metrics import MediaMetrics
from .ng import (
    MAX_DATAGRAM,
    CallStats,
    NgAddress,
    NgCommand,
    NgError,
    NgFlags,
    NgOk,
    NgProtocolError,
    NgReply,
    NgRequest,
    NgResult,
    NgUnavailable,
    decode_reply,
    describe,
    new_cookie,
    parse_ng_address,
    parse_query,
    split_message,
)
from .session import MediaOutcome, MediaStep

__all__ = ["MediaError", "MediaUnavailable", "NgClient", "NgCommandError", "open_ng_client"]

log = logging.getLogger("sipserver.media")

# The largest UDP payload over IPv4; a bigger request could never be sent.
MAX_REQUEST = 65507


class MediaError(Exception):
    """The media layer's one exception family."""


class MediaUnavailable(MediaError):
    """No rtpengine answered within the timeout budget."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NgCommandError(MediaError):
    """rtpengine answered, refusing the command (``result`` "error" or "load limit")."""

    def __init__(self, reply: NgError) -> None:
        super().__init__(f"rtpengine ({reply.server}) said {reply.result}: {reply.reason}")
        self.reply = reply


@attrs.define(eq=False)
class _Server:
    address: NgAddress
    sock: Any = None  # trio.socket.SocketType once connected
    dead_until: float = -math.inf
    lock: trio.Lock = attrs.field(factory=trio.Lock)  # one socket, even for concurrent first uses

    def dead(self, now: float) -> bool:
        return now < self.dead_until


@attrs.define(eq=False)
class _Pending:
    server: _Server
    event: trio.Event = attrs.field(factory=trio.Event)
    reply: NgReply | None = None
    refused: bool = False


class NgClient:
    def __init__(
        self,
        servers: Sequence[NgAddress | str],
        *,
        timeout: float = 0.5,
        retransmissions: int = 2,
        dead_time: float = 30.0,
        metrics: MediaMetrics | None = None,
        cookie: Callable[[], str] = new_cookie,
    ) -> None:
        if timeout <= 0 or retransmissions < 0 or dead_time < 0:
            raise ValueError("timeout must be > 0, retransmissions and dead_time >= 0")
        self.servers = [_Server(s if isinstance(s, NgAddress) else parse_ng_address(s)) for s in servers]
        # Every server a command was routed to, configured or not (a call outlives a reload).
        self._known = {s.address: s for s in self.servers}
        self.timeout = timeout
        self.tries = retransmissions + 1
        self.dead_time = dead_time
        self.metrics = metrics if metrics is not None else MediaMetrics()
        self._cookie = cookie
        self._pending: dict[str, _Pending] = {}
        self._nursery: trio.Nursery | None = None

    @classmethod
    def from_section(cls, section: Any, metrics: MediaMetrics | None = None) -> NgClient:
        """From the ``[media]`` config section (duck-typed)."""
        return cls(
            list(section.rtpengine),
            timeout=section.timeout,
            retransmissions=section.retransmissions,
            dead_time=section.dead_time,
            metrics=metrics,
        )

    # ------------------------------------------------------------------ lifetime
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the sockets and read replies until cancelled (``await nursery.start(client.run)``)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for server in self.servers:
                    await self._socket(server)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for server in self._known.values():
                if server.sock is not None:
                    server.sock.close()
                    server.sock = None
            for pending in self._pending.values():
                pending.event.set()  # reply None: the waiters see no answer

    async def _socket(self, server: _Server) -> Any:
        """The connected socket of ``server`` (made, and its reader started, on first use)."""
        if server.sock is not None:
            return server.sock
        if self._nursery is None:
            raise RuntimeError("NgClient is not running: start it with nursery.start(client.run)")
        async with server.lock:
            if server.sock is None:
                await self._connect(server, self._nursery)
        return server.sock

    async def _connect(self, server: _Server, nursery: trio.Nursery) -> None:
        addr = server.address
        try:
            infos = await trio.socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            sock = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                await sock.connect(sockaddr)
            except OSError:
                sock.close()
                raise
        except (OSError, IndexError) as exc:
            log.warning("media: cannot reach rtpengine %s: %s", addr, exc)
            return
        server.sock = sock
        nursery.start_soon(self._reader, server, sock)

    # ------------------------------------------------------------------ replies
    async def _reader(self, server: _Server, sock: Any) -> None:
        while True:
            try:
                data = await sock.recv(MAX_DATAGRAM)
            except (trio.ClosedResourceError, OSError) as exc:
                if server.sock is not sock or isinstance(exc, trio.ClosedResourceError):
                    return  # closed under us: the client stopped
                # ICMP port unreachable (ECONNREFUSED) and friends: nobody listens there now
                for pending in list(self._pending.values()):
                    if pending.server is server and not pending.event.is_set():
                        pending.refused = True
                        pending.event.set()
                continue
            try:
                cookie, body = split_message(data)
            except NgProtocolError as exc:
                self.metrics.error("unknown", "protocol")
                log.warning("media: unreadable datagram from rtpengine %s: %s", server.address, exc)
                continue
            waiter = self._pending.get(cookie)
            if waiter is None or waiter.server is not server or waiter.event.is_set():
                continue  # a late reply to a try we gave up on, or a duplicate
            try:
                reply = decode_reply(body)
            except NgProtocolError as exc:
                log.warning("media: unreadable reply from rtpengine %s: %s", server.address, exc)
                reply = NgError("error", f"unreadable reply: {exc}")
                self.metrics.error("unknown", "protocol")
            waiter.reply = attrs.evolve(reply, server=server.address)
            waiter.event.set()

    # ------------------------------------------------------------------ requests
    def _order(self, command: NgCommand) -> list[tuple[_Server, int]]:
        """(server, tries) in the order to try them."""
        now = trio.current_time()
        if command.server is not None:
            server = self._known.get(command.server)
            if server is None:  # no longer configured (a reload): the call is still there
                server = self._known[command.server] = _Server(command.server)
            return [(server, 1 if server.dead(now) else self.tries)]
        alive = [(s, self.tries) for s in self.servers if not s.dead(now)]
        dead = sorted((s for s in self.servers if s.dead(now)), key=lambda s: s.dead_until)
        return alive + [(s, 1) for s in dead]

    async def execute(self, command: NgCommand) -> NgResult:
        """Send ``command`` and return rtpengine's reply, or ``NgUnavailable``; never raises
        for network trouble (see the module docstring for the time budget)."""
        order = self._order(command)
        if not order:
            return NgUnavailable("no rtpengine configured (media.rtpengine)")
        failures: list[str] = []
        for server, tries in order:
            result = await self._try(server, command, tries)
            if isinstance(result, NgOk):
                return result
            if isinstance(result, NgError):
                if result.result != "load limit":
                    return result
                failures.append(f"{server.address}: load limit")
                continue
            failures.append(f"{server.address}: {result.reason}")
        return NgUnavailable("; ".join(failures))

    async def _try(self, server: _Server, command: NgCommand, tries: int) -> NgResult:
        name = command.name if command.name in ("ping", "offer", "answer", "delete", "query") else "other"
        cookie = self._cookie()
        while cookie in self._pending:
            cookie = new_cookie()
        request = NgRequest.build(command, cookie)
        if len(request.data) > MAX_REQUEST:
            return NgUnavailable(f"{describe(command)} is {len(request.data)} bytes, more than one datagram")
        sock = await self._socket(server)
        if sock is None:
            self._mark_dead(server, "cannot open a socket")
            return NgUnavailable("cannot open a socket")
        pending = _Pending(server)
        self._pending[cookie] = pending
        self.metrics.request(name)
        started = trio.current_time()
        try:
            for attempt in range(tries):
                if attempt:
                    self.metrics.retransmission()
                try:
                    await sock.send(request.data)
                except OSError as exc:  # an ICMP error from an earlier datagram shows up here
                    pending.refused = True
                    log.debug("media: send to %s failed: %s", server.address, exc)
                    break
                with trio.move_on_after(self.timeout):
                    await pending.event.wait()
                if pending.event.is_set():
                    break
                self.metrics.error(name, "timeout")
            if pending.reply is not None:
                self.metrics.round_trip(trio.current_time() - started)
                if isinstance(pending.reply, NgError):
                    self.metrics.error(name, "error")
                self._mark_alive(server)
                return pending.reply
            if pending.refused:
                self.metrics.error(name, "refused")
                self._mark_dead(server, "refused (nothing listens on the port)")
                return NgUnavailable("refused")
            if pending.event.is_set():
                return NgUnavailable("client stopped")
            reason = f"no reply to {tries} tr{'y' if tries == 1 else 'ies'} of {self.timeout:g} s"
            self._mark_dead(server, reason)
            return NgUnavailable(reason)
        finally:
            del self._pending[cookie]

    def _mark_dead(self, server: _Server, why: str) -> None:
        now = trio.current_time()
        if not server.dead(now):
            log.warning("media: rtpengine %s is not answering (%s); skipped for %g s", server.address, why, self.dead_time)
        server.dead_until = now + self.dead_time

    def _mark_alive(self, server: _Server) -> None:
        if server.dead_until != -math.inf:
            log.info("media: rtpengine %s answers again", server.address)
            server.dead_until = -math.inf

    # ------------------------------------------------------------------ raising helpers
    async def request(self, command: NgCommand) -> NgOk:
        result = await self.execute(command)
        if isinstance(result, NgUnavailable):
            raise MediaUnavailable(result.reason)
        if isinstance(result, NgError):
            raise NgCommandError(result)
        return result

    async def ping(self, server: NgAddress | None = None) -> NgOk:
        return await self.request(NgCommand("ping", server=server))

    async def offer(
        self,
        call_id: str,
        from_tag: str,
        sdp: bytes,
        flags: NgFlags | None = None,
        *,
        to_tag: str | None = None,
        via_branch: str | None = None,
    ) -> NgOk:
        return await self.request(ng.offer(call_id, from_tag, sdp, flags or NgFlags(), to_tag=to_tag, via_branch=via_branch))

    async def answer(
        self,
        call_id: str,
        from_tag: str,
        to_tag: str,
        sdp: bytes,
        flags: NgFlags | None = None,
        *,
        via_branch: str | None = None,
    ) -> NgOk:
        return await self.request(ng.answer(call_id, from_tag, to_tag, sdp, flags or NgFlags(), via_branch=via_branch))

    async def delete(
        self, call_id: str, from_tag: str | None = None, to_tag: str | None = None, via_branch: str | None = None
    ) -> NgOk:
        return await self.request(ng.delete(call_id, from_tag, to_tag, via_branch))

    async def query(self, call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> CallStats:
        return parse_query(await self.request(ng.query(call_id, from_tag, to_tag)))

    async def run_step(self, step: MediaStep) -> MediaOutcome:
        """Send a ``MediaSessions`` step's command and apply the result."""
        return step.finish(await self.execute(step.command))


@asynccontextmanager
async def open_ng_client(servers: Sequence[NgAddress | str], **kwargs: Any) -> AsyncIterator[NgClient]:
    """``async with open_ng_client(["udp:127.0.0.1:2223"]) as ng: await ng.ping()``."""
    client = NgClient(servers, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
