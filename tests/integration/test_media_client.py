"""The ng client's machinery against scripted fake rtpengines on loopback (no daemon needed):
retransmission with the same cookie, replies matched by cookie under concurrency, garbage and
strays ignored, typed errors, routing to the server that holds a call, dead servers."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from sipserver.media import ng
from sipserver.media.bencode import decode, encode
from sipserver.media.client import MediaUnavailable, NgClient, NgCommandError, open_ng_client
from sipserver.media.metrics import MediaMetrics

Handler = Callable[[bytes, tuple[str, int], "FakeEngine"], Awaitable[None]]


class FakeEngine:
    """A UDP socket on 127.0.0.1 that hands every datagram to ``handler``."""

    def __init__(self, sock: trio.socket.SocketType, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.received: list[bytes] = []

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.sock.getsockname()[1]}"

    async def serve(self) -> None:
        while True:
            data, peer = await self.sock.recvfrom(65535)
            self.received.append(data)
            await self.handler(data, peer, self)

    async def reply(self, peer: tuple[str, int], cookie: str, body: dict[str, object]) -> None:
        await self.sock.sendto(cookie.encode() + b" " + encode(body), peer)


async def start_fake(nursery: trio.Nursery, handler: Handler) -> FakeEngine:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    engine = FakeEngine(sock, handler)
    nursery.start_soon(engine.serve)
    return engine


def cookie_of(data: bytes) -> str:
    return data.partition(b" ")[0].decode()


def command_of(data: bytes) -> dict[bytes, object]:
    body = decode(data.partition(b" ")[2])
    assert isinstance(body, dict)
    return body  # type: ignore[return-value]


async def pong(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
    await engine.reply(peer, cookie_of(data), {"result": "pong"})


async def test_retransmission_reuses_the_cookie() -> None:
    """The first datagram is lost; the retransmission (same bytes, same cookie) is answered."""

    async def drop_first(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        if len(engine.received) > 1:
            await engine.reply(peer, cookie_of(data), {"result": "ok", "sdp": b"v=0\r\n"})

    metrics = MediaMetrics()
    async with trio.open_nursery() as nursery:
        engine = await start_fake(nursery, drop_first)
        async with open_ng_client([engine.address], timeout=0.1, retransmissions=2, metrics=metrics) as client:
            reply = await client.offer("c", "f", b"v=0\r\n")
        nursery.cancel_scope.cancel()
    assert reply.sdp == b"v=0\r\n"
    first, second = engine.received
    assert first == second and cookie_of(first) == cookie_of(second)
    assert command_of(first)[b"command"] == b"offer"
    assert metrics.retransmissions == 1 and metrics.errors == {("offer", "timeout"): 1}
    assert metrics.requests == {"offer": 1} and metrics.rtt_count == 1


async def test_concurrent_requests_are_matched_by_cookie() -> None:
    """Replies come back in reverse order, plus a stray and garbage: each waiter gets its own."""
    held: list[tuple[bytes, tuple[str, int]]] = []

    async def reverse(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        held.append((data, peer))
        if len(held) == 5:
            await engine.sock.sendto(b"not ng at all", peer)
            await engine.sock.sendto(b"stray d6:result2:oke", peer)
            for d, p in reversed(held):
                call_id = command_of(d)[b"call-id"]
                await engine.reply(p, cookie_of(d), {"result": "ok", "warning": call_id})

    results: dict[str, str | None] = {}
    metrics = MediaMetrics()
    async with trio.open_nursery() as nursery:
        engine = await start_fake(nursery, reverse)
        async with open_ng_client([engine.address], timeout=2.0, metrics=metrics) as client:

            async def one(i: int) -> None:
                results[f"call-{i}"] = (await client.request(ng.query(f"call-{i}"))).warning

            async with trio.open_nursery() as requests:
                for i in range(5):
                    requests.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert results == {f"call-{i}": f"call-{i}" for i in range(5)}
    assert len({cookie_of(d) for d, _ in held}) == 5
    assert metrics.errors == {("unknown", "protocol"): 1}


async def test_error_replies_are_typed_and_raise_in_request() -> None:
    async def refuse(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        await engine.reply(peer, cookie_of(data), {"result": "error", "error-reason": "Unknown call-id"})

    async with trio.open_nursery() as nursery:
        engine = await start_fake(nursery, refuse)
        async with open_ng_client([engine.address]) as client:
            result = await client.execute(ng.delete("c"))
            assert isinstance(result, ng.NgError) and result.reason == "Unknown call-id"
            assert result.server == ng.parse_ng_address(engine.address)
            with pytest.raises(NgCommandError, match="Unknown call-id"):
                await client.delete("c")
            assert client.metrics.errors == {("delete", "error"): 2}
        nursery.cancel_scope.cancel()


async def test_unreadable_reply_is_an_error_not_a_hang() -> None:
    async def garble(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        await engine.sock.sendto(cookie_of(data).encode() + b" d6:resulti1ee", peer)

    async with trio.open_nursery() as nursery:
        engine = await start_fake(nursery, garble)
        async with open_ng_client([engine.address], timeout=1.0) as client:
            with trio.fail_after(0.5):
                result = await client.execute(ng.ping())
            assert isinstance(result, ng.NgError) and "unreadable reply" in result.reason
        nursery.cancel_scope.cancel()


async def test_load_limit_fails_over_to_the_next() -> None:
    async def busy(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        await engine.reply(peer, cookie_of(data), {"result": "load limit", "message": "busy"})

    async with trio.open_nursery() as nursery:
        first = await start_fake(nursery, busy)
        second = await start_fake(nursery, pong)
        async with open_ng_client([first.address, second.address]) as client:
            reply = await client.ping()
            assert reply.server == ng.parse_ng_address(second.address)
        nursery.cancel_scope.cancel()


async def test_a_routed_command_goes_to_its_server_only() -> None:
    async def silent(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        pass

    async with trio.open_nursery() as nursery:
        first = await start_fake(nursery, pong)
        holder = await start_fake(nursery, silent)  # holds the call, then stops answering
        async with open_ng_client([first.address, holder.address], timeout=0.05, retransmissions=1) as client:
            result = await client.execute(ng.delete("c").routed(ng.parse_ng_address(holder.address)))
            assert isinstance(result, ng.NgUnavailable)
            assert len(holder.received) == 2 and first.received == []
        nursery.cancel_scope.cancel()


async def test_a_dead_server_is_skipped_then_probed_once() -> None:
    answering = False

    async def flaky(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        if answering:
            await pong(data, peer, engine)

    clock_start = trio.current_time()
    async with trio.open_nursery() as nursery:
        first = await start_fake(nursery, flaky)
        second = await start_fake(nursery, pong)
        async with open_ng_client([first.address, second.address], timeout=0.05, retransmissions=2, dead_time=0.3) as client:
            assert (await client.ping()).server == ng.parse_ng_address(second.address)
            assert len(first.received) == 3  # three tries, then dead
            assert (await client.ping()).server == ng.parse_ng_address(second.address)
            assert len(first.received) == 3  # skipped while dead
            answering = True
            await trio.sleep(0.35)
            assert (await client.ping()).server == ng.parse_ng_address(first.address)  # alive again
        nursery.cancel_scope.cancel()
    assert trio.current_time() - clock_start < 2


async def test_all_dead_get_one_try_each() -> None:
    async def silent(data: bytes, peer: tuple[str, int], engine: FakeEngine) -> None:
        pass

    async with trio.open_nursery() as nursery:
        a = await start_fake(nursery, silent)
        b = await start_fake(nursery, silent)
        async with open_ng_client([a.address, b.address], timeout=0.1, retransmissions=2) as client:
            with pytest.raises(MediaUnavailable, match="no reply to 3 tries"):
                await client.ping()
            start = trio.current_time()
            with pytest.raises(MediaUnavailable, match="no reply to 1 try of"):
                await client.ping()
            assert trio.current_time() - start < 0.5  # 0.2 s; with retransmissions it would be 0.6
            assert (len(a.received), len(b.received)) == (4, 4)
        nursery.cancel_scope.cancel()


async def test_no_server_configured_and_not_running() -> None:
    async with open_ng_client([]) as client:
        result = await client.execute(ng.ping())
        assert isinstance(result, ng.NgUnavailable) and "no rtpengine configured" in result.reason
    idle = NgClient(["udp:127.0.0.1:9"])
    with pytest.raises(RuntimeError, match="not running"):
        await idle.ping()
    with pytest.raises(ValueError):
        NgClient([], timeout=0)
