"""Issue 20: an attacker forging the Cluster-Hop proof, on the wire.

A cluster node (store.backend = "redis" on a real redis-server, ``[cluster] node_id = "b"``,
outbound.secret known to the test) with issue 16's attacked configuration: auth on ([users]
alice, bob, carol), relay domain 127.0.0.2 (the trunk). bob and carol are registered phones.
The attacker (127.0.0.4, no account) claims to be alice, or calls the trunk, which both need
authentication (DESIGN.md, trust model), and adds a ``Cluster-Hop`` header pretending that
node "a" of the cluster already authenticated it:
- ``a;ts=NOW;mac=GARBAGE``;
- a genuine proof (right key) copied from another request;
- a proof of this very request computed with the wrong key.
Each must be challenged (407) and neither bob nor the trunk may hear anything. A control test
sends the same request with a proof under the right key, to show the forgeries are refused for
their MAC and nothing else; and every Cluster-Hop is removed before the request goes on.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from attacker import DOMAIN, FOREIGN, SDP, Scene, Victim, scene, sip
from redis_fixture import RedisServer, require_redis_server

from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.outbound.keyfile import parse_secret
from sipserver.proxy.peers import HOP_HEADER, hop_value
from sipserver.sip import Request, parse_message

SECRET = "0123456789abcdef0123456789abcdef"  # the cluster's outbound.secret (hex, 16 octets)
WRONG_KEY = bytes(range(200, 216))
SILENCE = 0.3  # seconds bob and the trunk are listened to after the attack
ALICE = f"sip:alice@{DOMAIN}"
MALLORY = f"sip:mallory@{FOREIGN}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def node_sections(redis: RedisServer) -> dict[str, dict[str, Any]]:
    return {
        "store": {
            "backend": "redis",
            "redis_url": redis.url,
            "redis_key_prefix": f"t{secrets.token_hex(4)}:",
        },
        "cluster": {"node_id": "b"},
        "outbound": {"secret": SECRET},
    }


def genuine(node: str = "a") -> FlowTokenCodec:
    """What a real node of this cluster signs with (test-side knowledge of the secret)."""
    return FlowTokenCodec(parse_secret(SECRET), node=node)


def parsed(text: str) -> Request:
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def with_header(text: str, value: str) -> str:
    head, sep, body = text.partition("\r\n\r\n")
    return f"{head}\r\n{HOP_HEADER}: {value}{sep}{body}"


def path_of(sc: Scene, user: str) -> tuple[str, ...]:
    """The Path this node stored for ``user``: what a peer node puts in the Route of a request it
    hands on (the lookup it made there yielded this node's Path)."""
    aor = f"{user}@{DOMAIN}"
    for b in sc.server.store.all():
        if b.key.aor == aor and b.path:
            return b.path
    raise AssertionError(f"no binding with a Path for {aor}")


def attack(sc: Scene, method: str, ruri: str, from_uri: str = ALICE) -> str:
    """The request as a peer node would hand it on: to a local user, Routed by the Path this node
    stored (so only the proof stands between the sender and the flow)."""
    body = SDP if method == "INVITE" else "hello"
    ctype = "application/sdp" if method == "INVITE" else "text/plain"
    user = ruri[4:].partition("@")[0] if ruri.endswith(f"@{DOMAIN}") else ""
    return sip(
        method,
        ruri,
        routes=path_of(sc, user) if user else (),
        via=sc.attacker.hostport(),
        from_uri=from_uri,
        body=body,
        content_type=ctype,
        contact=f"<sip:x@{sc.attacker.hostport()}>" if method == "INVITE" else None,
    )


FORGERIES = ("garbage mac", "proof copied from another request", "valid proof under the wrong key")


def forgeries(text: str) -> dict[str, str]:
    """The three forged Cluster-Hop values for the request ``text``."""
    now = time.time()
    req = parsed(text)
    other = parsed(text.replace(req.call_id, f"other-{secrets.token_hex(6)}"))
    garbage = secrets.token_urlsafe(16)
    return {
        "garbage mac": f"a;ts={int(now)};mac={garbage}",
        "proof copied from another request": hop_value(genuine(), other, now),
        "valid proof under the wrong key": hop_value(FlowTokenCodec(WRONG_KEY, node="a"), req, now),
    }


async def assert_nobody_heard(sc: Scene, call_ids: list[str], victim: Victim) -> None:
    await trio.sleep(SILENCE)
    for peer, name in ((sc.bob, "bob"), (sc.carol, "carol"), (sc.relay, "the trunk")):
        heard = [(r.method, r.call_id) for r in peer.heard if r.call_id in call_ids]
        assert not heard, f"{name} heard the attacker's requests: {heard}"
    await victim.assert_silent(0)


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE"])
async def test_forged_cluster_hop_for_a_local_user_is_challenged(
    tmp_path: Path, redis_server: RedisServer, victim: Victim, method: str
) -> None:
    """The attacker claims to be alice (a local user: must authenticate) calling / messaging bob,
    with each forged proof: 407 every time, bob hears nothing."""
    async with scene(tmp_path, **node_sections(redis_server)) as sc:
        plain = attack(sc, method, f"sip:bob@{DOMAIN}")
        resp = await sc.ask(plain)
        assert resp is not None and resp.status == 407, (
            "without any Cluster-Hop the attacker is challenged"
        )
        call_ids = [parsed(plain).call_id]
        for what in FORGERIES:
            text = attack(sc, method, f"sip:bob@{DOMAIN}")  # a fresh Call-ID and branch each time
            value = forgeries(text)[what]
            call_ids.append(parsed(text).call_id)
            resp = await sc.ask(with_header(text, value))
            got = None if resp is None else (resp.status, resp.reason)
            assert resp is not None and resp.status in (401, 407), (
                f"{method} with {what} ({value}): {got}"
            )
        await assert_nobody_heard(sc, call_ids, victim)


async def test_forged_cluster_hop_towards_the_trunk_is_challenged(
    tmp_path: Path, redis_server: RedisServer, victim: Victim
) -> None:
    """Relaying to a relay domain needs an authenticated sender; a stranger (From a foreign
    domain) with each forged proof is challenged and the trunk hears nothing. Towards somebody
    else (the victim, neither served nor a relay domain) it is 403 whatever the proof."""
    async with scene(tmp_path, **node_sections(redis_server)) as sc:
        trunk = f"sip:pstn@{sc.relay.hostport}"
        call_ids = []
        for method in ("INVITE", "MESSAGE"):
            for what in FORGERIES:
                text = attack(sc, method, trunk, from_uri=MALLORY)
                call_ids.append(parsed(text).call_id)
                resp = await sc.ask(with_header(text, forgeries(text)[what]))
                got = None if resp is None else (resp.status, resp.reason)
                assert resp is not None and resp.status in (401, 407), (
                    f"{method} to the trunk with {what}: {got}"
                )
            text = attack(sc, method, victim.uri(), from_uri=MALLORY)
            call_ids.append(parsed(text).call_id)
            resp = await sc.ask(with_header(text, forgeries(text)["garbage mac"]))
            assert resp is not None and resp.status == 403, (
                None if resp is None else (resp.status, resp.reason)
            )
        await assert_nobody_heard(sc, call_ids, victim)


async def test_control_the_right_key_is_what_gets_through(
    tmp_path: Path, redis_server: RedisServer, victim: Victim
) -> None:
    """Control: the same request as the attack with a proof of it under the cluster's key is
    taken as handed on by node a (no challenge; bob gets it), so the attacks above fail only for
    their MAC. bob's copy carries no Cluster-Hop (it goes one hop only)."""
    async with scene(tmp_path, **node_sections(redis_server)) as sc:
        assert sc.server.codec.node == "b", "the server under attack is not a cluster node"
        text = attack(sc, "MESSAGE", f"sip:bob@{DOMAIN}")
        value = hop_value(genuine(), parsed(text), time.time())
        resp = await sc.ask(with_header(text, value))
        assert resp is not None and resp.status == 200, (
            None if resp is None else (resp.status, resp.reason)
        )
        heard = sc.bob.heard_call(parsed(text).call_id, "MESSAGE")
        assert len(heard) == 1
        assert not heard[0].has_header("cluster-hop"), heard[0].header_lines("cluster-hop")
        await victim.assert_silent(0)


@pytest.mark.parametrize(
    "value",
    ["a;ts=1;mac=AAAA", "b;ts=NOW;mac=GARBAGE", ""],
    ids=["stale-garbage", "garbage-naming-this-node", "empty"],
)
async def test_every_cluster_hop_is_removed_before_the_request_goes_on(
    tmp_path: Path, redis_server: RedisServer, value: str
) -> None:
    """peers.py invariant: the header is removed from every request a node receives, valid or
    not, so a forged one never travels further. A stranger may call bob without authenticating;
    bob's INVITE must carry no Cluster-Hop."""
    async with scene(tmp_path, **node_sections(redis_server)) as sc:
        text = attack(sc, "INVITE", f"sip:bob@{DOMAIN}", from_uri=MALLORY)
        resp = await sc.ask(with_header(text, value.replace("NOW", str(int(time.time())))))
        assert resp is not None and resp.status == 486, (
            None if resp is None else (resp.status, resp.reason)
        )
        heard = sc.bob.heard_call(parsed(text).call_id, "INVITE")
        assert len(heard) == 1
        assert not heard[0].has_header("cluster-hop"), (
            f"the Cluster-Hop {value!r} reached bob: {heard[0].header_lines('cluster-hop')}"
            + (
                " (BUG sipserver/proxy/peers.py take_hop: an empty value is never removed)"
                if not value
                else ""
            )
        )


async def test_a_genuine_proof_is_worth_nothing_without_this_nodes_route(
    tmp_path: Path, redis_server: RedisServer, victim: Victim
) -> None:
    """A peer hands on only requests Routed by this node's own flow token. A request with a
    genuine proof but no such Route (here: a plain R-URI lookup of bob, as if a peer's proof were
    a pass for anything) is judged like any request: the claimed alice is challenged."""
    async with scene(tmp_path, **node_sections(redis_server)) as sc:
        plain = sip("MESSAGE", f"sip:bob@{DOMAIN}", via=sc.attacker.hostport(), from_uri=ALICE,
                    body="hello", content_type="text/plain")
        value = hop_value(genuine(), parsed(plain), time.time())
        resp = await sc.ask(with_header(plain, value))
        assert resp is not None and resp.status == 407, None if resp is None else (resp.status, resp.reason)
        assert not sc.bob.heard_call(parsed(plain).call_id, "MESSAGE"), "bob got a request its sender never proved"
        await victim.assert_silent(0)
