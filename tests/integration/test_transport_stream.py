"""TCP and TLS: framing, CRLF keep-alives, flow lifecycle, limits, outgoing connections.

RFC 3261 §18.3 (framing by Content-Length), RFC 5626 §4.4.1 / §5.4 (OB-EP-14, OB-KA-01: ping is
answered with exactly one CRLF, a pong is never answered), §5.3.1 (a dead flow is gone).
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio
from certs import client_context, make_self_signed
from transport_fixtures import Server, echo_of, ipv6_available, sip_message, start_server

from sipserver.config import ListenSpec
from sipserver.outbound.flow import Transport
from sipserver.sip.framer import FramedMessage, StreamFramer
from sipserver.transport import (
    ConnectFailed,
    FlowGone,
    FlowLimits,
    make_server_context,
)


async def tcp_server(nursery: trio.Nursery, host: str = "127.0.0.1", **kw: object) -> Server:
    return await start_server(nursery, [ListenSpec(Transport.TCP, host, 0)], **kw)  # type: ignore[arg-type]


async def connect(server: Server, v6: bool = False) -> trio.SocketStream:
    host, port = server.addr(Transport.TCP, v6)
    return await trio.open_tcp_stream(host, port)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int, timeout: float = 2.0) -> bytes:
    buf = b""
    with trio.fail_after(timeout):
        while len(buf) < n:
            chunk = await stream.receive_some(n - len(buf))
            if not chunk:
                break
            buf += chunk
    return buf


async def receive_messages(stream: trio.abc.ReceiveStream, count: int) -> list[bytes]:
    framer = StreamFramer()
    out: list[bytes] = []
    with trio.fail_after(3):
        while len(out) < count:
            chunk = await stream.receive_some()
            assert chunk, "connection closed early"
            framer.feed(chunk)
            while (event := framer.next_event()) is not None:
                assert isinstance(event, FramedMessage)
                out.append(event.data)
    return out


async def assert_silent(stream: trio.abc.ReceiveStream, seconds: float = 0.2) -> None:
    with trio.move_on_after(seconds):
        data = await stream.receive_some()
        pytest.fail(f"unexpected bytes {data!r}")


async def assert_eof(stream: trio.abc.ReceiveStream, timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                return  # reset
            if not data:
                return


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="ipv4"),
        pytest.param(
            "::1", id="ipv6", marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6")
        ),
    ],
)
async def test_tcp_message_delivered_and_answered_on_its_flow(
    nursery: trio.Nursery, host: str
) -> None:
    server = await tcp_server(nursery, host, echo=True)
    client = await connect(server, ":" in host)
    msg = sip_message(b"v=0\r\n")
    await client.send_all(msg)
    assert await receive_messages(client, 1) == [echo_of(msg)]
    flow, data = server.sink.messages[0]
    assert data == msg
    local = client.socket.getsockname()
    remote = client.socket.getpeername()
    assert flow.transport is Transport.TCP
    assert flow.remote == (local[0], local[1])
    assert flow.local == (remote[0], remote[1])
    assert flow.serial > 1000  # serial_base + n
    assert server.sink.opened == [flow]
    await client.aclose()


async def test_crlf_ping_gets_exactly_one_crlf_ob_ep_14(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await client.send_all(b"\r\n\r\n")
    assert await receive_exactly(client, 2) == b"\r\n"
    await assert_silent(client)
    await server.sink.wait_for(lambda: len(server.sink.keepalives) == 1)
    assert server.sink.messages == []
    await client.aclose()


async def test_lone_crlf_pong_is_never_answered_ob_ep_14(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await client.send_all(b"\r\n")
    await assert_silent(client, 0.3)
    assert server.sink.keepalives == []
    await client.aclose()


async def test_ping_and_message_in_one_write_ob_ka_01(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery, echo=True)
    client = await connect(server)
    msg = sip_message()
    await client.send_all(b"\r\n\r\n" + msg)
    assert await receive_exactly(client, 2) == b"\r\n"  # the pong comes first
    assert await receive_messages(client, 1) == [echo_of(msg)]
    assert [data for _, data in server.sink.messages] == [msg]
    await client.aclose()


async def test_split_ping_yields_one_pong_ob_ka_01(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await client.send_all(b"\r\n")
    await trio.sleep(0.05)
    await client.send_all(b"\r\n")
    assert await receive_exactly(client, 2) == b"\r\n"
    await assert_silent(client)
    await client.aclose()


async def test_pipelined_messages_in_pieces(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    msgs = [sip_message(b"body %d\r\n\r\n" % i, call_id=f"c{i}") for i in range(5)]
    stream = b"".join(msgs)
    for i in range(0, len(stream), 37):
        await client.send_all(stream[i : i + 37])
    await server.sink.wait_for(lambda: len(server.sink.messages) == 5)
    assert [data for _, data in server.sink.messages] == msgs
    await client.aclose()


async def test_framing_error_reported_then_connection_closed(nursery: trio.Nursery) -> None:
    """RFC 3261 §18.3: no Content-Length on a stream -> the sink answers 400, then close."""
    server = await tcp_server(nursery)
    server.sink.framing_reply = b"SIP/2.0 400 Content-Length required\r\nContent-Length: 0\r\n\r\n"
    client = await connect(server)
    await client.send_all(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n")
    await server.sink.wait_for(lambda: server.sink.framing_errors)
    flow, error = server.sink.framing_errors[0]
    assert error.status == 400
    assert error.head is not None and b"Call-ID: x" in error.head
    assert await receive_messages(client, 1) == [server.sink.framing_reply]
    await assert_eof(client)
    await server.sink.wait_for(lambda: server.sink.closed)
    cause = server.sink.closed_cause(flow)
    assert cause is not None and cause.startswith("framing error")
    assert not server.table.is_alive(flow)


async def test_closed_by_peer_reported_once_and_send_raises_flow_gone(
    nursery: trio.Nursery,
) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await client.send_all(sip_message())
    await server.sink.wait_for(lambda: server.sink.messages)
    flow = server.sink.messages[0][0]
    await client.aclose()
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) == "closed by peer"
    assert not server.table.is_alive(flow)
    with trio.fail_after(0.5):
        with pytest.raises(FlowGone) as info:
            await server.table.send(flow, sip_message())
    assert info.value.flow == flow


async def test_close_by_server(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    server.table.close(flow)
    assert not server.table.is_alive(flow)
    assert server.sink.closed_cause(flow) == "closed by server"
    await assert_eof(client)
    await trio.sleep(0.05)
    assert server.sink.closed_cause(flow) == "closed by server"  # still reported only once
    assert server.table.count_for_ip("127.0.0.1") == 0


async def test_partial_message_timeout_closes(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(partial_message_timeout=0.3))
    client = await connect(server)
    msg = sip_message(b"12345")
    await client.send_all(msg[:-3])  # a started message that never completes
    await assert_eof(client, timeout=2)
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed[0][1] == "partial message timeout"
    assert server.sink.messages == []


async def test_slow_but_complete_message_is_not_cut(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(partial_message_timeout=0.5))
    client = await connect(server)
    msg = sip_message(b"abc")
    await client.send_all(msg[:10])
    await trio.sleep(0.2)
    await client.send_all(msg[10:])
    await server.sink.wait_for(lambda: server.sink.messages)
    # An idle connection (nothing pending) is not subject to the partial-message deadline.
    await trio.sleep(0.7)
    assert server.sink.closed == []
    await client.aclose()


async def test_max_connections_per_ip(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(max_connections_per_ip=2), echo=True)
    first = await connect(server)
    second = await connect(server)
    await server.sink.wait_for(lambda: len(server.sink.opened) == 2)
    with caplog.at_level(logging.WARNING, logger="sipserver.transport"):
        third = await connect(server)
        await assert_eof(third)
    assert any("max_connections_per_ip" in r.getMessage() for r in caplog.records)
    assert len(server.sink.opened) == 2
    assert server.table.count_for_ip("127.0.0.1") == 2
    await first.send_all(sip_message())
    assert await receive_messages(first, 1) == [echo_of(sip_message())]
    # A slot frees up when a connection ends.
    await second.aclose()
    await server.sink.wait_for(lambda: server.table.count_for_ip("127.0.0.1") == 1)
    fourth = await connect(server)
    await fourth.send_all(sip_message())
    assert await receive_messages(fourth, 1) == [echo_of(sip_message())]
    for s in (first, third, fourth):
        await s.aclose()


async def test_max_connections_total(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(max_connections=1))
    first = await connect(server)
    await server.sink.wait_for(lambda: server.sink.opened)
    second = await connect(server)
    await assert_eof(second)
    assert server.table.count() == 1
    await first.aclose()


async def test_idle_limit_closes_unbound_flow(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(idle_flow_timeout=60))
    silent = await connect(server)
    kept = await connect(server)
    pinging = await connect(server)
    await server.sink.wait_for(lambda: len(server.sink.opened) == 3)
    silent_flow, kept_flow, pinging_flow = server.sink.opened
    server.table.set_idle_limit(kept_flow, None)  # e.g. a flow the runtime wants kept
    server.table.set_idle_limit(pinging_flow, 30)  # Flow-Timer 25 + grace
    assert server.table.get_idle_limit(silent_flow) == 60
    assert server.table.get_idle_limit(kept_flow) is None
    assert server.table.get_idle_limit(pinging_flow) == 30
    for _ in range(5):
        await trio.sleep(20)
        await pinging.send_all(b"\r\n\r\n")
        assert await receive_exactly(pinging, 2) == b"\r\n"
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(silent_flow) == "idle timeout"
    await assert_eof(silent)
    assert server.table.is_alive(kept_flow)
    assert server.table.is_alive(pinging_flow)
    await trio.sleep(31)
    assert server.sink.closed_cause(pinging_flow) == "keepalive timeout"
    assert server.table.is_alive(kept_flow)
    info = {i.flow: i for i in server.table.snapshot()}
    assert set(info) == {kept_flow}
    assert info[kept_flow].idle_limit is None
    for s in (silent, kept, pinging):
        await s.aclose()


async def test_concurrent_sends_are_serialised(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    msgs = [sip_message(bytes([65 + i]) * 300_000, call_id=str(i)) for i in range(6)]
    big_table = server.table
    big_table.limits = FlowLimits(max_message_size=2_000_000)

    async def reader() -> list[bytes]:
        framer = StreamFramer(2_000_000)
        out: list[bytes] = []
        with trio.fail_after(10):
            while len(out) < len(msgs):
                framer.feed(await client.receive_some())
                while (event := framer.next_event()) is not None:
                    assert isinstance(event, FramedMessage)
                    out.append(event.data)
        return out

    received: list[bytes] = []

    async def collect() -> None:
        received.extend(await reader())

    async with trio.open_nursery() as inner:
        inner.start_soon(collect)
        for m in msgs:
            inner.start_soon(big_table.send, flow, m)
    assert sorted(received) == sorted(msgs)
    await client.aclose()


async def test_send_timeout_closes_a_stuck_connection(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery, limits=FlowLimits(send_timeout=0.3))
    client = await connect(server)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    with trio.fail_after(5):
        with pytest.raises(FlowGone) as info:
            for _ in range(1000):  # the client never reads: buffers fill up
                await server.table.send(flow, b"x" * 65536)
    assert info.value.cause == "send timeout"
    assert server.sink.closed_cause(flow) == "send timeout"
    await client.aclose()


async def test_sink_exception_is_logged_and_connection_continues(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = await tcp_server(nursery, echo=True)
    client = await connect(server)
    server.sink.fail_next = True
    with caplog.at_level(logging.ERROR, logger="sipserver.transport"):
        await client.send_all(sip_message(call_id="a") + sip_message(call_id="b"))
        assert await receive_messages(client, 1) == [echo_of(sip_message(call_id="b"))]
    assert any(r.exc_info and "on_message" in r.getMessage() for r in caplog.records)
    assert server.sink.closed == []
    await client.aclose()


async def test_connect_to_a_tcp_listener(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    target = server.addr(Transport.TCP)
    flow = await server.table.connect(Transport.TCP, target)
    assert flow.transport is Transport.TCP and flow.remote == target
    assert server.table.is_alive(flow)
    assert server.table.find_stream(Transport.TCP, target) == flow  # reuse (RFC 3261 §18.1.1)
    assert server.table.find_stream(Transport.TLS, target) is None
    # The listener side sees the connection as another flow; messages cross both ways.
    await server.sink.wait_for(lambda: len(server.sink.opened) == 2)
    accepted = next(f for f in server.sink.opened if f != flow)
    assert accepted.remote == flow.local
    await server.table.send(flow, sip_message(call_id="out"))
    await server.table.send(accepted, b"\r\n\r\n")  # a ping towards the connecting side
    await server.sink.wait_for(lambda: server.sink.messages and server.sink.keepalives)
    assert server.sink.messages[0] == (accepted, sip_message(call_id="out"))
    assert server.sink.keepalives == [flow]  # the outgoing side answered the ping
    server.table.close(flow)
    assert server.table.find_stream(Transport.TCP, target) is None
    await server.sink.wait_for(lambda: server.sink.closed_cause(accepted) == "closed by peer")


async def test_connect_failure(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(ConnectFailed):
            await server.table.connect(Transport.TCP, ("127.0.0.1", port))
    assert server.table.count_for_ip("127.0.0.1") == 0


async def test_shutdown_reports_every_flow(nursery: trio.Nursery) -> None:
    server = await tcp_server(nursery)
    client = await connect(server)
    await server.sink.wait_for(lambda: server.sink.opened)
    flow = server.sink.opened[0]
    server.scope.cancel()
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) == "shutdown"
    await assert_eof(client)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("certs"))


async def test_tls_message_ping_and_connect(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server = await start_server(
        nursery,
        [ListenSpec(Transport.TLS, "127.0.0.1", 0)],
        ssl_context=make_server_context(cert, key),
        echo=True,
    )
    host, port = server.addr(Transport.TLS)
    tcp = await trio.open_tcp_stream(host, port)
    client = trio.SSLStream(tcp, client_context(cert), server_hostname="localhost")
    msg = sip_message(b"secret")
    await client.send_all(b"\r\n\r\n" + msg)
    assert await receive_exactly(client, 2) == b"\r\n"
    assert await receive_messages(client, 1) == [echo_of(msg)]
    flow = server.sink.messages[0][0]
    assert flow.transport is Transport.TLS
    await client.aclose()
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(flow) == "closed by peer"
    # Outgoing TLS with a context that trusts the test certificate.
    server.sink.echo = False
    out = await server.table.connect(
        Transport.TLS, (host, port), ssl_context=client_context(cert), server_hostname="localhost"
    )
    assert out.transport is Transport.TLS
    await server.table.send(out, sip_message(call_id="outgoing"))
    await server.sink.wait_for(lambda: len(server.sink.messages) == 2)
    accepted, data = server.sink.messages[1]
    assert (accepted.transport, accepted.remote, data) == (
        Transport.TLS,
        out.local,
        sip_message(call_id="outgoing"),
    )


async def test_tls_handshake_failure_opens_no_flow(
    nursery: trio.Nursery, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server = await start_server(
        nursery,
        [ListenSpec(Transport.TLS, "127.0.0.1", 0)],
        ssl_context=make_server_context(cert, key),
    )
    host, port = server.addr(Transport.TLS)
    plain = await trio.open_tcp_stream(host, port)
    await plain.send_all(sip_message())  # not TLS
    await assert_eof(plain)
    assert server.sink.opened == []
    assert server.sink.messages == []
    # Untrusted by the client: the handshake fails, the listener keeps working.
    tcp = await trio.open_tcp_stream(host, port)
    bad = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname="localhost")
    with pytest.raises(trio.BrokenResourceError):
        await bad.do_handshake()
    good = trio.SSLStream(
        await trio.open_tcp_stream(host, port), client_context(cert), server_hostname="localhost"
    )
    await good.send_all(sip_message())
    await server.sink.wait_for(lambda: server.sink.messages)
    await good.aclose()
    assert server.table.count_for_ip("127.0.0.1") <= 1


async def test_framing_error_answer_survives_unread_input(nursery: trio.Nursery) -> None:
    """The error response reaches the peer, followed by a clean end of stream, even though the
    peer keeps sending after the bad head (the server drains its input before closing)."""
    server = await tcp_server(nursery)
    reply = b"SIP/2.0 400 Bad Content-Length\r\nContent-Length: 0\r\n\r\n"
    server.sink.framing_reply = reply
    client = await connect(server)
    junk = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n" + b"j" * 400_000

    async def push() -> None:
        try:
            await client.send_all(junk)
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(push)
    assert await receive_messages(client, 1) == [reply]
    await assert_eof(client)


async def test_idle_tcp_flow_memory_budget(nursery: trio.Nursery) -> None:
    """Per-connection memory of an idle TCP flow, reader task included, stays under 8 KiB."""
    import gc
    import tracemalloc

    count = 200
    server = await tcp_server(nursery, limits=FlowLimits(max_connections_per_ip=count + 10))
    host, port = server.addr(Transport.TCP)
    clients = [socket.socket() for _ in range(count)]
    for c in clients:
        c.setblocking(False)
    warm = socket.create_connection((host, port))
    warm.sendall(b"\r\n\r\n")
    await server.sink.wait_for(lambda: server.sink.keepalives)
    server.sink.opened.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for c in clients:
            try:
                c.connect((host, port))
            except BlockingIOError:
                pass
        await server.sink.wait_for(lambda: len(server.sink.opened) == count, timeout=10)
        for c in clients:
            c.send(b"\r\n\r\n")  # each flow has been used once (lock, buffers) and is idle again
        await server.sink.wait_for(lambda: len(server.sink.keepalives) == count + 1, timeout=10)
        server.sink.opened.clear()
        server.sink.keepalives.clear()
        await trio.sleep(0.05)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_flow = sum(s.size_diff for s in after.compare_to(before, "filename")) / count
    for c in [warm, *clients]:
        c.close()
    assert per_flow < 8 * 1024, f"{per_flow:.0f} bytes per idle TCP flow"


def test_listener_spec_takes_config_names_or_transports() -> None:
    assert ListenSpec("TCP", "::", 0).transport == "tcp"
    assert ListenSpec(Transport.WSS, "::", 0).flow_transport is Transport.WSS
    with pytest.raises(ValueError):
        ListenSpec("sctp", "::", 0)


async def test_snapshot_and_counts(nursery: trio.Nursery) -> None:
    server = await start_server(
        nursery,
        [ListenSpec("tcp", "127.0.0.1", 0), ListenSpec("udp", "127.0.0.1", 0)],
    )
    assert {b.transport for b in server.bound} == {"tcp", "udp"}
    client = await connect(server)
    udp = trio.socket.socket(type=socket.SOCK_DGRAM)
    await udp.bind(("127.0.0.1", 0))
    await udp.sendto(b"\r\n", server.addr(Transport.UDP))
    await server.sink.wait_for(lambda: len(server.sink.opened) == 2)
    infos = {i.transport: i for i in server.table.snapshot()}
    assert set(infos) == {Transport.TCP, Transport.UDP}
    assert infos[Transport.UDP].remote == udp.getsockname()
    assert infos[Transport.TCP].id == infos[Transport.TCP].flow.id
    assert infos[Transport.TCP].opened_at <= infos[Transport.TCP].last_activity
    assert server.table.count() == 2
    assert server.table.count(Transport.TCP) == 1
    assert server.table.count(Transport.UDP) == 1
    assert server.table.count_for_ip("127.0.0.1") == 1
    udp.close()
    await client.aclose()


async def test_answers_to_one_big_read_all_arrive_in_order_then_the_framing_error(
    nursery: trio.Nursery,
) -> None:
    """Issue 19, batched sends: what the messages of one read make the server write back to
    their connection leaves in one write (FlowTable.cork); on the wire every answer arrives,
    in order, and a framing error later in the same read is still answered before the close."""
    server = await tcp_server(nursery, echo=True)
    server.sink.framing_reply = b"SIP/2.0 400 Content-Length required\r\nContent-Length: 0\r\n\r\n"
    client = await connect(server)
    msgs = [sip_message(b"x" * 200 + b"\r\n", call_id=f"big{i}") for i in range(20)]
    assert sum(map(len, msgs)) >= 4096  # one read long enough to be corked
    await client.send_all(b"".join(msgs) + b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: bad\r\n\r\n")
    got = await receive_messages(client, 21)
    assert got == [echo_of(m) for m in msgs] + [server.sink.framing_reply]
    await assert_eof(client)
