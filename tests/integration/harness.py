"""Test harness: the real server in-process on loopback, and raw-socket SIP user agents.

The UAs here are deliberately dumb: they send the exact bytes a test writes and hand back what
arrived, parsed, so tests assert on the wire.

A test that waits for the server's timers (expiry, timer C, "nothing arrives within 0.3 s")
takes the ``autojump`` fixture: trio runs it on a ``MockClock``, and the server, which reads
time only through ``sipserver.clock.Clock`` (trio's clock), skips through those waits instead
of sleeping them. Tests that measure real time (a subprocess, a child process, kernel receive
timestamps) stay on the real clock."""

from __future__ import annotations

import itertools
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from trio.testing import MockClock

from sipserver.config import config_from_dict
from sipserver.runtime import Server
from sipserver.sip import Request, Response, parse_message
from sipserver.sip.framer import FramedMessage, KeepalivePing, KeepalivePong, StreamFramer

DEFAULT_LISTEN = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "ws:127.0.0.1:0"]

# Real seconds every task must have been blocked before the MockClock jumps to the next
# deadline. Not 0 (pytest-trio's ``autojump_clock``): blocked includes waiting for the kernel to
# hand over loopback bytes, and a jump taken then would fire timers the exchange never waits
# for on the real clock (a UDP retransmission at 0.5 s, a ``fail_after`` in ``recv``). Loopback
# bytes sent in-process are queued before ``send`` returns, so only the kernel deferring that
# work (ksoftirqd under load) or the scheduler can delay them; 50 ms is far above that, and each
# jump costs only this much wall time.
AUTOJUMP_THRESHOLD = 0.05


@pytest.fixture(name="autojump")
def autojump_fixture() -> MockClock:
    """``autojump``: a ``MockClock`` for the test (pytest-trio runs a test on any Clock fixture
    it takes as a parameter): virtual time jumps to the next deadline once the run loop has been
    idle for ``AUTOJUMP_THRESHOLD`` real seconds. A module imports ``autojump_fixture`` to make
    it visible; a test takes ``autojump: MockClock``."""
    return MockClock(autojump_threshold=AUTOJUMP_THRESHOLD)


@asynccontextmanager
async def running_server(
    tmp_path: Path, listen: list[str] | None = None, **sections: dict[str, Any]
) -> AsyncIterator[Server]:
    """Start a Server on loopback with ephemeral ports; yield it; stop it."""
    data: dict[str, Any] = {
        "server": {
            "listen": listen or DEFAULT_LISTEN,
            "data_dir": str(tmp_path / "data"),
            "domains": ["example.com"],
        },
        "store": {"backend": "memory"},
        "rate_limit": {"enabled": False},
    }
    # NAT keepalives are off unless a test turns them on (``nat={"keepalive": True, ...}``): a
    # plain UDP phone's first OPTIONS comes at a phase of the 25 s interval taken from its
    # address, so on the real clock about one test in twenty-five saw one within its first
    # second (test_rtpengine_down_reject_is_503_quickly's "phone hears nothing"), and on the
    # autojump clock it is the next deadline virtual time leaps to (this failed CI twice).
    data["nat"] = {"keepalive": False}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    cfg = config_from_dict(data)
    server = Server(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await server.shutdown()


def addr(server: Server, transport: str, v6: bool = False) -> tuple[str, int]:
    for bl in server.listeners:
        if bl.transport == transport and ((":" in bl.host) == v6):
            return (bl.host, bl.port)
    raise LookupError(transport)


_counter = itertools.count(1)


class UA:
    """A raw SIP user agent over one transport. ``recv`` returns parsed messages."""

    def __init__(self, transport: str, local: tuple[str, int]) -> None:
        self.transport = transport
        self.local = local
        self.user = "ua"
        self.received: list[bytes] = []

    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    async def send(self, data: bytes | str) -> None:
        raise NotImplementedError

    async def recv_raw(self, timeout: float = 3.0) -> bytes:
        raise NotImplementedError

    async def recv(self, timeout: float = 3.0) -> Request | Response:
        while True:
            data = await self.recv_raw(timeout)
            if data.strip(b"\r\n"):
                return parse_message(data)  # type: ignore[return-value]

    async def recv_response(
        self, timeout: float = 3.0, *, skip_provisional: bool = True
    ) -> Response:
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Response):
                if skip_provisional and msg.status < 200:
                    continue
                return msg

    async def recv_request(self, timeout: float = 3.0) -> Request:
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, Request):
                return msg

    async def expect_nothing(self, timeout: float = 0.5) -> None:
        try:
            data = await self.recv_raw(timeout)
        except trio.TooSlowError:
            return
        raise AssertionError(f"unexpected data: {data[:200]!r}")

    async def close(self) -> None:
        pass

    def hostport(self) -> str:
        host, port = self.local
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UdpUA(UA):
    def __init__(self, sock: trio.socket.SocketType, server: tuple[str, int]) -> None:
        super().__init__("udp", sock.getsockname()[:2])
        self.sock = sock
        self.server = server

    @classmethod
    async def open(cls, server: tuple[str, int], local_host: str | None = None) -> UdpUA:
        fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        sock = trio.socket.socket(fam, socket.SOCK_DGRAM)
        await sock.bind((local_host or ("::1" if fam == socket.AF_INET6 else "127.0.0.1"), 0))
        return cls(sock, server)

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        await self.sock.sendto(data, self.server)

    async def recv_raw(self, timeout: float = 3.0) -> bytes:
        with trio.fail_after(timeout):
            data, _ = await self.sock.recvfrom(65536)
        self.received.append(data)
        return data

    async def close(self) -> None:
        self.sock.close()


class TcpUA(UA):
    def __init__(
        self, stream: trio.abc.Stream, local: tuple[str, int], transport: str = "tcp"
    ) -> None:
        super().__init__(transport, local)
        self.stream = stream
        self.framer = StreamFramer(1 << 20)
        self.pongs = 0
        self.pings = 0

    @classmethod
    async def open(cls, server: tuple[str, int]) -> TcpUA:
        stream = await trio.open_tcp_stream(*server)
        local = stream.socket.getsockname()[:2]
        return cls(stream, local)

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        await self.stream.send_all(data)

    async def recv_raw(self, timeout: float = 3.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                ev = self.framer.next_event()
                if isinstance(ev, FramedMessage):
                    self.received.append(ev.data)
                    return ev.data
                if isinstance(ev, KeepalivePong):
                    self.pongs += 1
                    return b"\r\n"
                if isinstance(ev, KeepalivePing):
                    self.pings += 1
                    return b"\r\n\r\n"
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("connection closed by the server")
                self.framer.feed(chunk)

    async def close(self) -> None:
        await self.stream.aclose()


class WsUA(UA):
    def __init__(self, ws: trio_websocket.WebSocketConnection, local: tuple[str, int]) -> None:
        super().__init__("ws", local)
        self.ws = ws

    @classmethod
    @asynccontextmanager
    async def open(cls, server: tuple[str, int], path: str = "/") -> AsyncIterator[WsUA]:
        async with trio_websocket.open_websocket(
            server[0], server[1], path, use_ssl=False, subprotocols=["sip"]
        ) as ws:
            local = ws._stream.socket.getsockname()[:2]  # type: ignore[attr-defined]
            ua = cls(ws, local)
            yield ua

    @property
    def via_transport(self) -> str:
        return "WS"

    async def send(self, data: bytes | str) -> None:
        await self.ws.send_message(data if isinstance(data, str) else data.decode())

    async def recv_raw(self, timeout: float = 3.0) -> bytes:
        with trio.fail_after(timeout):
            msg = await self.ws.get_message()
        data = msg.encode() if isinstance(msg, str) else msg
        self.received.append(data)
        return data


def branch() -> str:
    return "z9hG4bK" + secrets.token_hex(6)


def register(
    ua: UA,
    user: str,
    *,
    domain: str = "example.com",
    call_id: str | None = None,
    cseq: int = 1,
    contact: str | None = None,
    instance: str | None = None,
    reg_id: int | None = None,
    expires: int | None = 3600,
    supported: str | None = "path, outbound, gruu",
    extra: list[str] | None = None,
    contact_host: str | None = None,
) -> str:
    """An outbound REGISTER (when instance/reg_id are given) as the wire text."""
    n = next(_counter)
    call_id = call_id or f"reg-{user}-{n}"
    host = contact_host or ua.hostport()
    if contact is None:
        tparam = (
            ""
            if ua.transport == "udp"
            else f";transport={'ws' if ua.transport == 'ws' else ua.transport}"
        )
        contact = f"<sip:{user}@{host}{tparam};ob>"
        if reg_id is not None:
            contact += f";reg-id={reg_id}"
        if instance is not None:
            contact += f';+sip.instance="<{instance}>"'
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={branch()};rport",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{domain}>",
        f"From: <sip:{user}@{domain}>;tag={secrets.token_hex(4)}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if supported:
        lines.append(f"Supported: {supported}")
    lines.extend(extra or [])
    lines.append("Content-Length: 0")
    return "\r\n".join(lines) + "\r\n\r\n"


def request(
    ua: UA,
    method: str,
    ruri: str,
    *,
    from_user: str = "alice",
    to: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    routes: list[str] | None = None,
    contact: str | None = None,
    body: str = "",
    extra: list[str] | None = None,
    to_tag: str | None = None,
    from_tag: str | None = None,
    via_branch: str | None = None,
    max_forwards: int = 70,
    domain: str = "example.com",
) -> str:
    n = next(_counter)
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{ua.via_transport} {ua.hostport()};branch={via_branch or branch()};rport",
        f"Max-Forwards: {max_forwards}",
        f"To: <{to or ruri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"From: <sip:{from_user}@{domain}>;tag={from_tag or secrets.token_hex(4)}",
        f"Call-ID: {call_id or f'call-{n}'}",
        f"CSeq: {cseq} {method}",
    ]
    for r in routes or []:
        lines.append(f"Route: {r}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines.extend(extra or [])
    body_bytes = body.encode()
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body_bytes)}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def response_to(
    req: Request,
    status: int,
    reason: str = "OK",
    *,
    to_tag: str | None = None,
    extra: list[str] | None = None,
    contact: str | None = None,
    body: str = "",
) -> str:
    """A UAS response to a request the UA received, copying Via/From/To/Call-ID/CSeq/RR."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for v in req.header_lines("via"):
        lines.append(f"Via: {v}")
    for v in req.header_lines("record-route"):
        lines.append(f"Record-Route: {v}")
    lines.append(f"From: {req.header('from')}")
    to = req.header("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {req.call_id}")
    lines.append(f"CSeq: {req.cseq.seq} {req.cseq.method}")
    if contact:
        lines.append(f"Contact: {contact}")
    lines.extend(extra or [])
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body
