"""Issue 20, "How it is checked": phones on different nodes of one cluster call and message each
other over UDP, TCP and WS.

Three nodes (a, b, c) share one redis-server; a phone registers to one node only (its edge), and
a request for it sent to any node must come down the phone's own connection to its edge. The
nodes here are shared by the module's tests: nothing in this file kills a node or Redis."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from harness import WsUA, response_to
from nodes import (
    DOMAIN,
    HEARTBEAT_TTL,
    Cluster,
    Node,
    Phone,
    call,
    callee_hangs_up,
    caller_hangs_up,
    message,
    tcp_phone,
    udp_phone,
)

from sipserver.sip import Request


def user(name: str) -> str:
    """A user name of its own per test (the nodes and Redis are shared by the module)."""
    return f"{name}-{secrets.token_hex(3)}"


@asynccontextmanager
async def ws_phone(name: str, node: Node) -> AsyncIterator[Phone]:
    async with WsUA.open(node.ws) as ua:
        yield Phone(ua, name, node)


def names_listeners(cl: Cluster, caller: Phone) -> Callable[[Request], None]:
    """A check of the INVITE a callee receives: every Record-Route and every node's Via in it
    names a node's listening port, never the ephemeral local port of a connection a node
    opened itself (issue 20: a far end's BYE to that port fails)."""
    listening = {p for n in cl.nodes.values() for p in (n.udp_port, n.tcp_port, n.ws_port)}

    def check(inv: Request) -> None:
        rr = inv.header_values("record-route")
        assert rr, "the INVITE reached the callee without Record-Route"
        for value in rr:
            m = re.search(r"sips?:(?:[^@>;]*@)?([^:;>]+):(\d+)", value)
            assert m and int(m.group(2)) in listening, f"Record-Route {value} names no node listener ({sorted(listening)})"
        vias = inv.header_values("via")
        for value in vias[:-1]:  # the last one is the caller's own
            m = re.match(r"SIP/2\.0/\S+\s+([^;:\s]+):(\d+)", value.strip())
            assert m and int(m.group(2)) in listening, f"Via {value} names no node listener ({sorted(listening)})"
        assert caller.ua.hostport() in vias[-1], f"bottom Via {vias[-1]} is not the caller's"

    return check


async def test_each_node_registers_its_phones_and_every_node_sees_them(shared_cluster: Cluster) -> None:
    """A phone registers to its own node (200 OK); the binding is one key in Redis and every
    node's view (``GET /registrations``) has it, not just the edge's."""
    cl = shared_cluster
    names = {"a": user("ua"), "b": user("ub"), "c": user("uc")}
    p_a = await udp_phone(names["a"], cl["a"])
    p_b = await tcp_phone(names["b"], cl["b"])
    async with ws_phone(names["c"], cl["c"]) as p_c:
        await p_a.register(outbound=False)
        await p_b.register()
        await p_c.register()
        for p in (p_a, p_b, p_c):
            assert len(cl.binding_keys(p.aor)) == 1, f"{p.aor}: keys {cl.binding_keys(p.aor)}"
        # The other nodes learn of a binding from Redis change notifications: allow a moment.
        with trio.move_on_after(2.0):
            while not all(n.registrations(p.aor) for n in cl.nodes.values() for p in (p_a, p_b, p_c)):
                await trio.sleep(0.05)
        for node in cl.nodes.values():
            for p in (p_a, p_b, p_c):
                seen = node.registrations(p.aor)
                assert len(seen) == 1, f"node {node.node_id} view of {p.aor} (edge {p.node.node_id}): {seen}"
        await p_a.close()
        await p_b.close()


def test_every_node_keeps_a_heartbeat_key_with_a_ttl(shared_cluster: Cluster) -> None:
    """Issue 20: each node keeps a heartbeat key with a TTL (``<prefix>node:<id>``)."""
    cl = shared_cluster
    client = cl.client()
    for node_id in ("a", "b", "c"):
        key = f"{cl.prefix}node:{node_id}"
        assert client.exists(key), f"no heartbeat key {key}; keys: {sorted(client.scan_iter(match=cl.prefix + '*'))[:20]}"
        pttl = client.pttl(key)
        assert 0 < pttl <= HEARTBEAT_TTL * 1000, f"{key}: PTTL {pttl} ms, heartbeat_ttl {HEARTBEAT_TTL} s"


async def test_phones_on_the_same_node_call_each_other(shared_cluster: Cluster) -> None:
    """The baseline the cross-node tests build on: on each node, a UDP phone and a TCP or WS
    phone of that node call each other and hang up either way."""
    cl = shared_cluster
    for node in cl.nodes.values():
        alice = await udp_phone(user("alice"), node)
        await alice.register(outbound=False)
        bob = await tcp_phone(user("bob"), node)
        await bob.register()
        async with ws_phone(user("carol"), node) as carol:
            await carol.register()
            d = await call(alice, bob, on_invite=names_listeners(cl, alice))
            await caller_hangs_up(d)
            d = await call(bob, carol)
            await callee_hangs_up(d)
            d = await call(carol, alice)
            await callee_hangs_up(d)
        await alice.close()
        await bob.close()


async def test_udp_phone_on_a_calls_tcp_phone_on_b(shared_cluster: Cluster) -> None:
    """INVITE sent to A for a phone registered over TCP to B: the callee gets it on its own
    connection to B, 180/200 reach the caller, ACK and BYE from the caller reach the callee;
    a second call ends with the callee's BYE, which reaches the caller."""
    cl = shared_cluster
    alice = await udp_phone(user("alice"), cl["a"])
    bob = await tcp_phone(user("bob"), cl["b"])
    await alice.register(outbound=False)
    await bob.register()
    d = await call(alice, bob, on_invite=names_listeners(cl, alice))
    await caller_hangs_up(d)
    d = await call(alice, bob)
    await callee_hangs_up(d)
    await alice.close()
    await bob.close()


async def test_udp_phone_on_a_calls_ws_phone_on_c(shared_cluster: Cluster) -> None:
    cl = shared_cluster
    alice = await udp_phone(user("alice"), cl["a"])
    await alice.register(outbound=False)
    async with ws_phone(user("carol"), cl["c"]) as carol:
        await carol.register()
        d = await call(alice, carol, on_invite=names_listeners(cl, alice))
        await caller_hangs_up(d)
        d = await call(alice, carol)
        await callee_hangs_up(d)
    await alice.close()


async def test_ws_phone_on_c_calls_tcp_phone_on_b(shared_cluster: Cluster) -> None:
    cl = shared_cluster
    bob = await tcp_phone(user("bob"), cl["b"])
    await bob.register()
    async with ws_phone(user("carol"), cl["c"]) as carol:
        await carol.register()
        d = await call(carol, bob, on_invite=names_listeners(cl, carol))
        await callee_hangs_up(d)
        d = await call(carol, bob)
        await caller_hangs_up(d)
    await bob.close()


async def test_tcp_phone_on_b_calls_udp_phone_on_a(shared_cluster: Cluster) -> None:
    """The other way round: the callee is a plain UDP phone (no outbound) on A."""
    cl = shared_cluster
    alice = await udp_phone(user("alice"), cl["a"])
    bob = await tcp_phone(user("bob"), cl["b"])
    await alice.register(outbound=False)
    await bob.register()
    d = await call(bob, alice, on_invite=names_listeners(cl, bob))
    await caller_hangs_up(d)
    d = await call(bob, alice)
    await callee_hangs_up(d)
    await alice.close()
    await bob.close()


async def test_message_from_a_to_c_and_b(shared_cluster: Cluster) -> None:
    """MESSAGE sent to A for a WS phone on C and a TCP phone on B: it arrives on the callee's
    connection and the callee's 200 reaches the sender."""
    cl = shared_cluster
    alice = await udp_phone(user("alice"), cl["a"])
    await alice.register(outbound=False)
    bob = await tcp_phone(user("bob"), cl["b"])
    await bob.register()
    async with ws_phone(user("carol"), cl["c"]) as carol:
        await carol.register()
        for callee in (carol, bob):
            text, call_id = message(alice, f"sip:{callee.user}@{DOMAIN}", f"hi {callee.user}")
            await alice.send(text)
            got = await callee.recv_request("MESSAGE")
            assert got.call_id == call_id
            assert got.body == f"hi {callee.user}".encode()
            await callee.send(response_to(got, 200, to_tag=secrets.token_hex(4)))
            ok = await alice.recv_response(call_id=call_id)
            assert ok.status == 200, f"MESSAGE to {callee.aor} on {callee.node.node_id}: {ok.status} {ok.reason}"
    await alice.close()
    await bob.close()
