"""Overload control and the location store (issue 19): a store write that stalls is not an
overload of the server. The writer child is stopped with SIGSTOP, as a disk that takes its time
over an fsync (a VM's virtual disk, an SD card) would hold it.

Before: the age of the oldest REGISTER reply held for the group commit was part of the one
overload signal, against the 50 ms queue limit, so a 104 ms fsync stall on this project's VM
answered REGISTERs and calls 503 + Retry-After: 10 at a quarter of the server's capacity
(register_bench.sh --transport tcp --rate 1200: 416 of 24,000 refused). Now that wait has its
own limit (limits.overload_store_delay, 1 s) and only REGISTERs, the one request that writes to
the store, are refused when the store does fall behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from harness import UdpUA, addr, register, request, response_to, running_server

from sipserver.runtime import Server
from sipserver.sip import Response

pytestmark = pytest.mark.trio


@asynccontextmanager
async def writer_stopped(server: Server) -> AsyncIterator[None]:
    """The SQLite writer child stopped (SIGSTOP) for the block, continued after it."""
    writer = server.commit.writer
    assert writer is not None and writer._proc is not None
    pid = writer._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _registered(server: Server, user: str) -> UdpUA:
    ua = await UdpUA.open(addr(server, "udp"))
    await ua.send(register(ua, user, expires=600))
    assert (await ua.recv_response()).status == 200
    return ua


async def _message_reaches(sender: UdpUA, callee: UdpUA, user: str, body: str) -> None:
    """A MESSAGE to ``user`` arrives at the callee's socket and its 200 gets back."""
    await sender.send(request(sender, "MESSAGE", f"sip:{user}@example.com", body=body))
    msg = await callee.recv_request()
    assert msg.method == "MESSAGE" and msg.body == body.encode()
    await callee.send(response_to(msg, 200))
    assert (await sender.recv_response()).status == 200


async def _collect(ua: UdpUA, count: int, timeout: float) -> dict[str, Response]:
    """The final responses to ``count`` requests sent by ``ua``, by Call-ID."""
    got: dict[str, Response] = {}
    with trio.fail_after(timeout):
        while len(got) < count:
            resp = await ua.recv_response(timeout=timeout)
            assert resp.call_id not in got, f"second final response for {resp.call_id}"
            got[resp.call_id] = resp
    return got


async def test_a_stalled_store_write_refuses_nothing(tmp_path: Path) -> None:
    """A write held 400 ms (8x the 50 ms queue limit, well under the store's 1 s): new
    REGISTERs sent during it wait and then all get 200, and a MESSAGE between registered
    phones is relayed meanwhile. The old single signal engaged shedding after 100 ms here."""
    async with running_server(tmp_path, listen=["udp:127.0.0.1:0"], store={"backend": "sqlite"}) as server:
        assert server.cfg.limits.overload_queue_delay == 0.05  # the defaults
        assert server.cfg.limits.overload_store_delay == 1.0
        bob = await _registered(server, "bob")
        dave = await _registered(server, "dave")
        phones = await UdpUA.open(addr(server, "udp"))
        sent: list[str] = []
        async with writer_stopped(server):
            for i in range(10):
                call_id = f"stalled-{i}"
                await phones.send(register(phones, f"user{i}", call_id=call_id, expires=600))
                sent.append(call_id)
                await trio.sleep(0.04)
                if i == 5:  # 200 ms into the stall
                    await _message_reaches(dave, bob, "bob", "during the stall")
        got = await _collect(phones, len(sent), timeout=5)
        assert {c: r.status for c, r in got.items()} == {c: 200 for c in sent}
        assert server.stats.get("overload_rejected") is None
        assert all(server.store.lookup(f"user{i}@example.com", time.time()) for i in range(10))


async def test_a_store_that_stays_behind_refuses_new_registers_only(tmp_path: Path) -> None:
    """The writer stopped far longer than overload_store_delay: new REGISTERs get 503 with
    Retry-After (RFC 3261 §21.5.4) naming the store, a MESSAGE between registered phones is
    still relayed (it writes nothing), the REGISTERs accepted before get their 200 once the
    store writes again, and a REGISTER after that is served at once."""
    limits = {"overload_store_delay": 0.1, "overload_retry_after": 6}
    async with running_server(
        tmp_path, listen=["udp:127.0.0.1:0"], store={"backend": "sqlite"}, limits=limits
    ) as server:
        bob = await _registered(server, "bob")
        dave = await _registered(server, "dave")
        phones = await UdpUA.open(addr(server, "udp"))
        sent: list[str] = []
        refused: dict[str, Response] = {}
        async with writer_stopped(server):
            for i in range(30):
                call_id = f"behind-{i}"
                await phones.send(register(phones, f"user{i}", call_id=call_id, expires=600))
                sent.append(call_id)
                await trio.sleep(0.03)
                if i == 20:  # 600 ms into it: shedding has engaged by now
                    await _message_reaches(dave, bob, "bob", "while the store is behind")
            # The 503s come at once, while the writer is still stopped.
            while not refused:
                resp = await phones.recv_response(timeout=2)
                assert resp.status == 503, resp.status
                refused[resp.call_id] = resp
        rest = await _collect(phones, len(sent) - len(refused), timeout=5)
        got = {**refused, **rest}
        assert set(got) == set(sent)
        statuses = {c: r.status for c, r in got.items()}
        assert set(statuses.values()) == {200, 503}
        assert statuses["behind-0"] == 200  # the first ones were held, not refused
        for resp in got.values():
            if resp.status == 503:
                assert resp.reason == "Service Unavailable (location store overloaded)"
                assert resp.header("retry-after") == "6"
        shed = sum(s == 503 for s in statuses.values())
        assert server.stats.get("overload_rejected_store") == shed
        for i, call_id in enumerate(sent):  # stored exactly when answered 200
            stored = bool(server.store.lookup(f"user{i}@example.com", time.time()))
            assert stored == (statuses[call_id] == 200), call_id

        with trio.fail_after(2):  # the store caught up: served again at once
            await phones.send(register(phones, "late", call_id="after", expires=600))
            assert (await phones.recv_response()).status == 200
