"""Issue 16, written as an attacker would try it: datagrams from ever new source ports must not
grow the UDP flow table without bound (``limits.max_udp_flows``). A new source beyond the cap
evicts the flow without a binding heard from least recently (reported closed "evicted" and
counted); a registered phone's flow is never evicted and still gets its calls; when every
tracked flow carries a binding, a new source is answered without being tracked.
"""

from __future__ import annotations

import socket
from pathlib import Path

import trio
from harness import UdpUA, addr, register, request, running_server
from transport_fixtures import Server, sip_message, start_server

from sipserver.config import ListenSpec
from sipserver.outbound.flow import CloseCause, Flow, Transport
from sipserver.transport import FlowLimits

PRIVATE = "192.0.2.77:5060"


async def udp_server(nursery: trio.Nursery, max_udp_flows: int) -> Server:
    return await start_server(
        nursery,
        [ListenSpec(Transport.UDP, "127.0.0.1", 0)],
        limits=FlowLimits(max_udp_flows=max_udp_flows),
        echo=True,
    )


async def client() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def flow_of(server: Server, sock: trio.socket.SocketType) -> Flow:
    host, port = sock.getsockname()
    return Flow(Transport.UDP, server.addr(Transport.UDP), (host, port), 0)


async def say(server: Server, sock: trio.socket.SocketType, call_id: str) -> None:
    """One message from ``sock``, and its echo back (the datagram was handled)."""
    await sock.sendto(sip_message(call_id=call_id), server.addr(Transport.UDP))
    with trio.fail_after(2):
        reply, _ = await sock.recvfrom(65535)
    assert call_id.encode() in reply


async def test_new_source_evicts_the_least_recently_heard_unbound_flow(
    nursery: trio.Nursery,
) -> None:
    server = await udp_server(nursery, max_udp_flows=3)
    table, sink = server.table, server.sink
    a, b, c, d = [await client() for _ in range(4)]
    for i, sock in enumerate((a, b, c)):
        await say(server, sock, f"first-{i}")
    await say(server, a, "a-again")  # a is now heard more recently than b
    await say(server, d, "d")
    assert table.count(Transport.UDP) == 3
    assert sink.closed_cause(flow_of(server, b)) is CloseCause.EVICTED
    assert CloseCause.EVICTED.label == "evicted"
    for sock in (a, c, d):
        assert table.is_alive(flow_of(server, sock))
    assert table.udp_evicted == 1
    # The evicted source is not shut out: its next datagram is a new flow (evicting c now).
    await say(server, b, "b-back")
    assert table.is_alive(flow_of(server, b))
    assert sink.closed_cause(flow_of(server, c)) is CloseCause.EVICTED


async def test_bound_flows_are_never_evicted_and_a_full_table_still_answers(
    nursery: trio.Nursery,
) -> None:
    server = await udp_server(nursery, max_udp_flows=2)
    table, sink = server.table, server.sink
    phone1, phone2, stranger = [await client() for _ in range(3)]
    for sock in (phone1, phone2):
        await say(server, sock, "register")
        table.set_idle_limit(flow_of(server, sock), None)  # what the runtime does on a binding
    await say(server, stranger, "hello")  # answered...
    assert not table.is_alive(flow_of(server, stranger))  # ...but not tracked
    assert flow_of(server, stranger) not in sink.opened
    assert table.udp_untracked == 1 and table.udp_evicted == 0
    assert all(table.is_alive(flow_of(server, s)) for s in (phone1, phone2))
    # A released flow (its binding gone) may be evicted again.
    table.release_idle_limit(flow_of(server, phone2))
    await say(server, stranger, "hello-again")
    assert sink.closed_cause(flow_of(server, phone2)) is CloseCause.EVICTED
    assert table.is_alive(flow_of(server, stranger))
    assert table.get_idle_limit(flow_of(server, stranger)) == table.limits.idle_flow_timeout


async def test_flood_of_sources_keeps_the_table_bounded_and_the_phone_reachable(
    tmp_path: Path,
) -> None:
    """200 source ports against max_udp_flows = 50: at most 50 tracked; the phone that
    registered first keeps its flow and still receives the INVITE sent to it afterwards."""
    async with running_server(
        tmp_path, limits={"max_udp_flows": 50}, nat={"keepalive": False}
    ) as server:
        target = addr(server, "udp")
        phone = await UdpUA.open(target)
        await phone.send(register(phone, "bob", contact=f"<sip:bob@{PRIVATE}>", supported=None))
        assert (await phone.recv_response()).status == 200
        phone_flow = Flow(Transport.UDP, target, phone.local, 0)
        assert server.flows.is_alive(phone_flow)
        attackers = []
        for i in range(200):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            attackers.append(sock)
            await sock.sendto(
                request(
                    UdpUA(sock, target), "OPTIONS", "sip:example.com", call_id=f"flood-{i}"
                ).encode(),
                target,
            )
        # Every one of them was handled (answered)...
        for sock in attackers:
            with trio.fail_after(3):
                reply, _ = await sock.recvfrom(65535)
            assert reply.startswith(b"SIP/2.0 ")
            sock.close()
        # ...but the table stayed within the cap, the excess evicted and counted.
        assert server.flows.count(Transport.UDP) <= 50
        assert server.flows.udp_evicted >= 150
        evicted = server.metrics.flows_closed.get((Transport.UDP, CloseCause.EVICTED), 0)
        assert evicted == server.flows.udp_evicted
        assert server.flows.is_alive(phone_flow)
        caller = await UdpUA.open(target)
        await caller.send(request(caller, "INVITE", "sip:bob@example.com", from_user="alice"))
        invite = await phone.recv_request()
        assert invite.method == "INVITE" and invite.uri_text == f"sip:bob@{PRIVATE}"


async def test_register_from_an_untracked_source_binds_it(tmp_path: Path) -> None:
    """The table is full of registered phones: a new phone's REGISTER is answered on an
    untracked flow, and the binding makes that flow tracked, so calls reach it."""
    async with running_server(
        tmp_path, limits={"max_udp_flows": 1}, nat={"keepalive": False}
    ) as server:
        target = addr(server, "udp")
        bob = await UdpUA.open(target)
        await bob.send(register(bob, "bob", contact=f"<sip:bob@{PRIVATE}>", supported=None))
        assert (await bob.recv_response()).status == 200
        carol = await UdpUA.open(target)
        carol_flow = Flow(Transport.UDP, target, carol.local, 0)
        await carol.send(request(carol, "OPTIONS", "sip:example.com"))
        assert (await carol.recv_response()).status == 200
        assert not server.flows.is_alive(carol_flow)  # answered, not tracked
        await carol.send(register(carol, "carol", contact=f"<sip:carol@{PRIVATE}>", supported=None))
        assert (await carol.recv_response()).status == 200
        assert server.flows.is_alive(carol_flow)
        assert server.flows.count(Transport.UDP) == 2  # bound flows may exceed the cap
        await bob.send(request(bob, "INVITE", "sip:carol@example.com", from_user="bob"))
        invite = await carol.recv_request()
        assert invite.uri_text == f"sip:carol@{PRIVATE}"
