"""Issue 20: a node that joins a running cluster is reachable from the others as soon as its
first binding is, not one heartbeat interval later.

A node learns its peers by polling their heartbeat keys every ``heartbeat_interval``; a node
started after it is unknown until the next poll. Here the interval is 5 s: node a is started,
then node b; a phone registers on b and a phone on a calls it at once. The change notification
for the new binding names b, which makes a poll its peers right then, so the INVITE reaches the
phone on b instead of being answered 480 for up to 5 s."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nodes import Node, call, caller_hangs_up, node_pair, tcp_phone, udp_phone
from redis_fixture import RedisServer

SLOW_INTERVAL = 5.0


@pytest.fixture
def two_slow_nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with node_pair(redis_server, tmp_path, heartbeat_interval=SLOW_INTERVAL,
                   heartbeat_ttl=3 * SLOW_INTERVAL) as pair:  # a is up (and has polled) before b starts
        yield pair


async def test_phone_on_a_node_that_just_joined_is_called_at_once(two_slow_nodes: tuple[Node, Node]) -> None:
    a, b = two_slow_nodes
    started = time.monotonic()
    tag = secrets.token_hex(3)
    callee = await tcp_phone(f"late-{tag}", b)
    await callee.register()
    caller = await udp_phone(f"early-{tag}", a)
    await caller.register(outbound=False)
    with trio.move_on_after(2.0):  # the binding reaches a's view by notification, not by poll
        while not a.registrations(callee.aor):
            await trio.sleep(0.02)
    assert a.registrations(callee.aor), f"node a never saw {callee.aor} registered on b"
    d = await call(caller, callee)
    elapsed = time.monotonic() - started
    assert elapsed < SLOW_INTERVAL, f"the call took {elapsed:.1f} s: a poll, not the notification, found b"
    await caller_hangs_up(d)
