"""UDP listener: datagram delivery, STUN keep-alives, CRLF keep-alives, UDP flow lifetime.

RFC 3261 §18.1/§18.2, RFC 5626 §3 (UDP flow = 5-tuple), §8 (OB-EP-13, OB-STUN-01..03).
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio
from transport_fixtures import Server, ipv6_available, sip_message, start_server

from sipserver.config import ListenSpec
from sipserver.outbound.flow import Flow, Transport
from sipserver.transport import FlowGone, FlowLimits

FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback"),
    ),
]


async def udp_server(nursery: trio.Nursery, host: str, **kw: object) -> Server:
    return await start_server(nursery, [ListenSpec(Transport.UDP, host, 0)], **kw)  # type: ignore[arg-type]


async def udp_client(host: str) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


def addr2(addr: tuple[object, ...]) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


@pytest.mark.parametrize("host", FAMILIES)
async def test_datagram_delivered_with_its_flow(nursery: trio.Nursery, host: str) -> None:
    server = await udp_server(nursery, host, echo=True)
    local = server.addr(Transport.UDP, ":" in host)
    client = await udp_client(host)
    msg = sip_message(b"hello")
    await client.sendto(msg, local)
    await server.sink.wait_for(lambda: server.sink.messages)
    flow, data = server.sink.messages[0]
    assert data == msg
    assert flow == Flow(Transport.UDP, local, addr2(client.getsockname()), 0)
    assert server.sink.opened == [flow]
    assert server.table.is_alive(flow)
    # The echo goes back from the listening socket to the client's address.
    with trio.fail_after(2):
        reply, src = await client.recvfrom(65535)
    assert reply.endswith(b"ECHO " + msg)
    assert addr2(src) == local
    # A second datagram on the same 5-tuple is the same flow: not opened again.
    await client.sendto(msg, local)
    await server.sink.wait_for(lambda: len(server.sink.messages) == 2)
    assert server.sink.messages[1][0] == flow
    assert server.sink.opened == [flow]
    client.close()


@pytest.mark.parametrize("host", FAMILIES)
async def test_stun_binding_answered_never_sip_ob_stun_01_02(
    nursery: trio.Nursery, host: str
) -> None:
    from sipserver.outbound import stun
    server = await udp_server(nursery, host)
    local = server.addr(Transport.UDP, ":" in host)
    client = await udp_client(host)
    request = stun.binding_request()
    await client.sendto(request, local)
    with trio.fail_after(2):
        response, _ = await client.recvfrom(2048)
    assert response[:2] == b"\x01\x01"  # Binding success response
    assert response[8:20] == request[8:20]  # same transaction id
    assert stun.parse_xor_mapped_address(response) == addr2(client.getsockname())
    await server.sink.wait_for(lambda: server.sink.keepalives)
    assert server.sink.messages == []
    client.close()


async def test_malformed_stun_dropped_silently_ob_stun_03(nursery: trio.Nursery) -> None:

    server = await udp_server(nursery, "127.0.0.1")
    local = server.addr(Transport.UDP)
    client = await udp_client("127.0.0.1")
    # Looks like STUN (type 0x0001, cookie) but the length does not match the datagram.
    await client.sendto(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12, local)
    await client.sendto(sip_message(), local)  # the listener is still working afterwards
    await server.sink.wait_for(lambda: server.sink.messages)
    assert [data for _, data in server.sink.messages] == [sip_message()]
    with trio.move_on_after(0.2):
        await client.recvfrom(2048)
        pytest.fail("a malformed STUN message was answered")
    client.close()


async def test_crlf_datagram_is_activity_only(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    server = await udp_server(nursery, "127.0.0.1")
    local = server.addr(Transport.UDP)
    client = await udp_client("127.0.0.1")
    await client.sendto(sip_message(), local)
    await server.sink.wait_for(lambda: server.sink.messages)
    flow = server.sink.messages[0][0]
    first = server.table.last_activity(flow)
    await trio.sleep(5)
    await client.sendto(b"\r\n\r\n", local)
    await client.sendto(b" \r\n", local)
    await server.sink.wait_for(lambda: server.table.last_activity(flow) != first)
    await trio.sleep(0.1)
    assert len(server.sink.messages) == 1
    client.close()


async def test_send_to_unseen_udp_flow(nursery: trio.Nursery) -> None:
    """After a restart the runtime still sends on stored UDP flows it has not heard from."""
    server = await udp_server(nursery, "127.0.0.1")
    local = server.addr(Transport.UDP)
    client = await udp_client("127.0.0.1")
    flow = Flow(Transport.UDP, local, addr2(client.getsockname()), 0)
    assert not server.table.is_alive(flow)
    await server.table.send(flow, b"NOTIFY")
    with trio.fail_after(2):
        data, src = await client.recvfrom(2048)
    assert (data, addr2(src)) == (b"NOTIFY", local)
    assert server.table.find_udp_local("192.0.2.1") == local
    client.close()


async def test_send_udp_without_socket_of_that_family_is_flow_gone(nursery: trio.Nursery) -> None:
    server = await udp_server(nursery, "127.0.0.1")
    flow = Flow(Transport.UDP, ("::1", 5060), ("::1", 5999), 0)
    with pytest.raises(FlowGone):
        await server.table.send(flow, b"x")
    assert server.table.find_udp_local("::1") is None


async def test_large_udp_datagram_sent_with_warning(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 3261 §18.1.1: big requests should use TCP; we warn but never drop silently."""
    server = await udp_server(nursery, "127.0.0.1", limits=FlowLimits(udp_warn_size=1300))
    local = server.addr(Transport.UDP)
    client = await udp_client("127.0.0.1")
    flow = Flow(Transport.UDP, local, addr2(client.getsockname()), 0)
    big = b"x" * 3000
    with caplog.at_level(logging.WARNING, logger="sipserver.transport"):
        await server.table.send(flow, big)
    with trio.fail_after(2):
        data, _ = await client.recvfrom(65535)
    assert data == big
    assert any("udp_warn_size" in r.getMessage() for r in caplog.records)
    client.close()


async def test_oversized_datagram_still_reaches_the_sink(nursery: trio.Nursery) -> None:
    """The parser answers 513; the transport must not drop it silently."""
    server = await udp_server(nursery, "127.0.0.1", limits=FlowLimits(max_message_size=1000))
    client = await udp_client("127.0.0.1")
    big = sip_message(b"y" * 5000)
    await client.sendto(big, server.addr(Transport.UDP))
    await server.sink.wait_for(lambda: server.sink.messages)
    assert server.sink.messages[0][1] == big
    client.close()


async def test_sink_exception_does_not_stop_the_udp_listener(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = await udp_server(nursery, "127.0.0.1")
    client = await udp_client("127.0.0.1")
    server.sink.fail_next = True
    with caplog.at_level(logging.ERROR, logger="sipserver.transport"):
        await client.sendto(sip_message(call_id="a"), server.addr(Transport.UDP))
        await client.sendto(sip_message(call_id="b"), server.addr(Transport.UDP))
        await server.sink.wait_for(lambda: len(server.sink.messages) == 2)
    assert any(r.exc_info for r in caplog.records)
    client.close()


async def test_udp_flow_forgotten_after_idle_limit(
    nursery: trio.Nursery, autojump_clock: object
) -> None:
    server = await udp_server(nursery, "127.0.0.1", limits=FlowLimits(idle_flow_timeout=30))
    local = server.addr(Transport.UDP)
    quiet = await udp_client("127.0.0.1")
    chatty = await udp_client("127.0.0.1")
    await quiet.sendto(sip_message(), local)
    await chatty.sendto(sip_message(), local)
    await server.sink.wait_for(lambda: len(server.sink.opened) == 2)
    quiet_flow = Flow(Transport.UDP, local, addr2(quiet.getsockname()), 0)
    chatty_flow = Flow(Transport.UDP, local, addr2(chatty.getsockname()), 0)
    server.table.set_idle_limit(chatty_flow, 60)
    for _ in range(4):
        await trio.sleep(20)
        await chatty.sendto(b"\r\n\r\n", local)  # keep-alive: activity
    await server.sink.wait_for(lambda: server.sink.closed)
    assert server.sink.closed_cause(quiet_flow) == "idle timeout"
    assert not server.table.is_alive(quiet_flow)
    assert server.table.is_alive(chatty_flow)
    await trio.sleep(61)
    assert server.sink.closed_cause(chatty_flow) == "keepalive timeout"
    quiet.close()
    chatty.close()
