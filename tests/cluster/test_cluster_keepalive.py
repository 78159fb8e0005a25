"""Issue 20: only the node holding a flow keeps it alive.

A plain UDP phone (no outbound) registered on node a gets the server's NAT keepalive OPTIONS
(nat.keepalive, docs/nat.md) from node a alone: node b has the binding in its view but not the
flow, and must not ping it (the "every node pings every contact" of whole-contact replication).
The keepalive interval is scaled down to 1 s; 3.5 s of listening must see pings from a only."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import response_to
from nodes import Node, node_pair, udp_phone
from redis_fixture import RedisServer

from sipserver.sip import Request


@pytest.fixture
def pinging_nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with node_pair(redis_server, tmp_path,
                   extra_toml="\n[nat]\nkeepalive = true\nkeepalive_interval = 1.0\n") as pair:
        yield pair


async def test_only_the_node_holding_a_udp_flow_pings_it(pinging_nodes: tuple[Node, Node]) -> None:
    a, b = pinging_nodes
    phone = await udp_phone(f"desk-{secrets.token_hex(3)}", a)
    await phone.register(outbound=False)
    with trio.move_on_after(2.0):
        while not b.registrations(phone.aor):
            await trio.sleep(0.02)
    assert b.registrations(phone.aor), f"node b never saw {phone.aor} (registered on a)"

    senders: list[str] = []
    with trio.move_on_after(3.5):
        while True:
            msg = await phone.ua.recv(5.0)
            if isinstance(msg, Request) and msg.method == "OPTIONS":
                via = msg.top_via
                senders.append(f"{via.host}:{via.port}")
                await phone.send(response_to(msg, 200))
    a_sent_by = f"{a.udp[0]}:{a.udp[1]}"
    assert senders, "no keepalive OPTIONS reached the phone in 3.5 s (keepalive_interval 1 s)"
    assert set(senders) == {a_sent_by}, f"keepalive OPTIONS sent by {senders}; only node a ({a_sent_by}) holds the flow"
