"""Overload control on the wire (issue 19): while the Shedder says overloaded, new out-of-dialog
requests on UDP and TCP are answered 503 + Retry-After from their bytes, before any transaction
or registrar work; in-dialog requests, ACK, CANCEL and retransmissions of accepted requests
still take the full path; and a TCP connection whose bytes waited in the kernel overloads the
server (kernel receive timestamps on TCP, Linux)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import trio
from harness import TcpUA, UdpUA, WsUA, addr, register, request, running_server

from sipserver.sip import parse_message

pytestmark = pytest.mark.trio


def _overloaded(server: object, on: bool) -> None:
    """A fake signal: the queues look 1 s deep (or empty)."""
    server._queue_delay = lambda now: 1.0 if on else 0.0  # type: ignore[attr-defined]
    server.shedder.shedding = on  # type: ignore[attr-defined]


async def test_new_requests_get_503_from_bytes_in_dialog_ones_pass(tmp_path: Path) -> None:
    limits = {"overload_queue_delay": 0.1, "overload_retry_after": 9}
    async with running_server(tmp_path, listen=["udp:127.0.0.1:0", "tcp:127.0.0.1:0"], limits=limits) as server:
        u = await UdpUA.open(addr(server, "udp"))
        t = await TcpUA.open(addr(server, "tcp"))
        _overloaded(server, True)
        for ua in (u, t):
            req = register(ua, "alice")
            await ua.send(req)
            resp = await ua.recv_response()
            sent = parse_message(req.encode())
            assert resp.status == 503 and resp.header("retry-after") == "9"
            assert resp.call_id == sent.call_id and resp.to_tag  # RFC 3261 §8.2.6.2
            assert resp.top_via.branch == sent.top_via.branch
        assert server.stats.get("overload_rejected_early") == 2
        assert server.store.lookup("alice@example.com", time.time()) == []
        assert len(server.transactions) == 0  # no transaction work for a shed request

        # In-dialog (a To tag): never shed; the full path answers (here: no such dialog).
        bye = request(u, "BYE", "sip:bob@example.com", to_tag="abc", call_id="c-1")
        await u.send(bye)
        assert (await u.recv_response()).status != 503
        # A new INVITE is shed too.
        inv = request(t, "INVITE", "sip:bob@example.com")
        await t.send(inv)
        assert (await t.recv_response()).status == 503

        _overloaded(server, False)  # the queues drained: handled as usual
        await u.send(register(u, "alice"))
        assert (await u.recv_response()).status == 200
        await u.close()
        await t.close()


async def test_retransmission_of_accepted_request_gets_its_answer(tmp_path: Path) -> None:
    async with running_server(tmp_path, listen=["udp:127.0.0.1:0"]) as server:
        u = await UdpUA.open(addr(server, "udp"))
        req = register(u, "carol")
        await u.send(req)
        assert (await u.recv_response()).status == 200
        _overloaded(server, True)
        await u.send(req)  # the same branch: its transaction (Timer J) answers, not a 503
        assert (await u.recv_response()).status == 200
        await u.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP receive timestamps: Linux")
async def test_tcp_bytes_that_waited_too_long_shed_new_requests(tmp_path: Path) -> None:
    """The TCP signal: a connection whose bytes sat in the kernel longer than the limit, twice
    in a row, makes the server shed the next new request; the first stall alone sheds nothing."""
    limits = {"overload_queue_delay": 0.1}
    async with running_server(tmp_path, listen=["tcp:127.0.0.1:0"], limits=limits) as server:
        t = await TcpUA.open(addr(server, "tcp"))
        await t.send(register(t, "dave"))
        assert (await t.recv_response()).status == 200
        await trio.sleep(0.2)
        for user, status in (("erin", 200), ("frank", 503)):
            # Sent without yielding to trio, then the event loop is stuck: the bytes wait in
            # the connection's socket buffer.
            with socket.socket(fileno=os.dup(t.stream.socket.fileno())) as same:
                same.sendall(register(t, user).encode())
            time.sleep(0.3)
            assert (await t.recv_response()).status == status
        assert server.flows.stream_queue_delay == 0.0  # read to empty since
        await t.close()


async def test_bye_in_the_dialog_of_a_shed_503_is_answered_481_and_never_reaches_the_callee(
    tmp_path: Path,
) -> None:
    """RFC 3261 §12.1, §12.2.2: a 503 makes no dialog, so a request carrying the 503's To tag
    (sipp ends every failed call with such a BYE) is answered 481 from its bytes, during and
    after the overload, and the callee the full path would have looked up hears nothing."""
    listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
    async with running_server(tmp_path, listen=listen, nat={"keepalive": False}) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await bob.send(register(bob, "bob"))
        assert (await bob.recv_response()).status == 200
        for ua in (await UdpUA.open(addr(server, "udp")), await TcpUA.open(addr(server, "tcp"))):
            _overloaded(server, True)
            await ua.send(request(ua, "INVITE", "sip:bob@example.com", call_id=f"shed-{ua.transport}"))
            resp = await ua.recv_response()
            assert resp.status == 503 and resp.to_tag.startswith("503shed")
            await ua.send(request(ua, "ACK", "sip:bob@example.com", call_id=f"shed-{ua.transport}",
                                  to_tag=resp.to_tag))
            for cseq, on in ((2, True), (3, False)):
                _overloaded(server, on)
                await ua.send(request(ua, "BYE", "sip:bob@example.com", call_id=f"shed-{ua.transport}",
                                      to_tag=resp.to_tag, cseq=cseq))
                got = await ua.recv_response()
                assert got.status == 481 and got.call_id == f"shed-{ua.transport}" and got.cseq.seq == cseq
                assert got.to_tag == resp.to_tag and got.top_via.param("received") == "127.0.0.1"
            await bob.expect_nothing(0.3)
            await ua.close()
        assert server.stats.get("overload_shed_dialog_481") == 4
        await bob.close()


async def test_a_lagging_event_loop_sheds_new_websocket_requests(tmp_path: Path) -> None:
    """WebSocket bytes pass through trio-websocket and carry no kernel timestamp; the event
    loop's lag is their overload signal (issue 19). A task hogging the loop (as a saturated
    server's tasks do) makes new WS requests get 503 + Retry-After, every request is answered,
    and once the loop is free again a REGISTER gets its 200 at once."""
    limits = {"overload_queue_delay": 0.05, "overload_retry_after": 7}
    async with running_server(tmp_path, listen=["ws:127.0.0.1:0"], limits=limits) as server:
        async with WsUA.open(addr(server, "ws")) as ws:
            await ws.send(register(ws, "alice"))
            assert (await ws.recv_response()).status == 200
            statuses: list[int] = []
            sent = 0
            hogging = True

            async def hog() -> None:
                while hogging:
                    time.sleep(0.12)  # the loop runs nothing else meanwhile
                    await trio.sleep(0)

            async def send_until_shed() -> None:
                nonlocal sent
                while not any(s == 503 for s in statuses) and sent < 200:
                    await ws.send(register(ws, "alice"))
                    sent += 1
                    await trio.sleep(0.005)

            async def collect() -> None:
                while len(statuses) < sent or not any(s == 503 for s in statuses):
                    resp = await ws.recv_response(timeout=5)
                    statuses.append(resp.status)
                    if resp.status == 503:
                        assert resp.header("retry-after") == "7"

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hog)
                    nursery.start_soon(send_until_shed)
                    await collect()
                    while len(statuses) < sent:  # every request is answered, 200 or 503
                        statuses.append((await ws.recv_response(timeout=5)).status)
                    hogging = False
            assert 503 in statuses and set(statuses) <= {200, 503}
            assert server.stats.get("overload_rejected", 0) >= 1
            with trio.fail_after(2):  # the loop is free: served again (within the 2 s of
                while True:  # issue 19's recovery target; at once on a quiet machine)
                    await trio.sleep(0.1)
                    await ws.send(register(ws, "alice"))
                    if (await ws.recv_response()).status == 200:
                        break


async def test_pipelined_registers_over_one_tcp_connection_all_get_their_200(tmp_path: Path) -> None:
    """Issue 19, batched sends: the group commit writes a batch's 200s to one connection in
    one send (FlowTable.cork); on the wire each REGISTER still gets its own 200, once, and
    every binding is stored (SQLite store, the default)."""
    async with running_server(tmp_path, listen=["tcp:127.0.0.1:0"], store={"backend": "sqlite"}) as server:
        t = await TcpUA.open(addr(server, "tcp"))
        regs = [register(t, f"user{i}", call_id=f"pipe-{i}") for i in range(60)]
        await t.send("".join(regs))
        got = [await t.recv_response() for _ in regs]
        assert sorted(r.call_id for r in got) == sorted(f"pipe-{i}" for i in range(60))
        assert all(r.status == 200 for r in got)
        await t.expect_nothing(0.2)  # no duplicate
        assert all(server.store.lookup(f"user{i}@example.com", time.time()) for i in range(60))
        await t.close()
