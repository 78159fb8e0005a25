"""store.backend = "redis" (issue 20, storage slice): bindings in a real redis-server, on the wire.

Each test starts its own redis-server (tests/integration/redis_fixture.py) and the server in
process (harness.running_server)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import trio
from harness import UdpUA, addr, register, request, response_to, running_server
from redis_fixture import RedisServer, free_tcp_port, redis  # noqa: F401

from sipserver.config import Config, config_from_dict
from sipserver.registrar import PersistenceError
from sipserver.runtime import Server

PREFIX = "sipserver:binding:"


def _store(r: RedisServer, **extra: object) -> dict[str, object]:
    return {"backend": "redis", "redis_url": r.url, **extra}


def _bindings(r: RedisServer) -> dict[str, dict[str, object]]:
    """user -> the binding's record, for every binding key in Redis."""
    client = r.client()
    out = {}
    for name in client.scan_iter(match=PREFIX + "*"):
        record = json.loads(client.get(name))
        out[record["aor"].split("@")[0]] = record | {"_ttl": client.pttl(name) / 1000, "_key": name}
    return out


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _message_reaches(alice: UdpUA, bob: UdpUA, body: str) -> None:
    """alice's MESSAGE to bob@example.com arrives at bob's socket; bob's 200 gets back."""
    await alice.send(request(alice, "MESSAGE", "sip:bob@example.com", body=body))
    msg = await bob.recv_request()
    assert msg.method == "MESSAGE" and msg.body == body.encode()
    await bob.send(response_to(msg, 200))
    assert (await alice.recv_response()).status == 200


async def test_register_writes_the_binding_with_its_ttl_and_unregister_deletes_it(
    tmp_path: Path, redis: RedisServer  # noqa: F811
) -> None:
    async with running_server(tmp_path, store=_store(redis)) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await bob.send(register(bob, "bob", expires=600))
        assert (await bob.recv_response()).status == 200
        stored = _bindings(redis)
        assert set(stored) == {"bob"}
        assert stored["bob"]["contact_uri"] == f"sip:bob@{bob.hostport()};ob"
        assert 590 < stored["bob"]["_ttl"] <= 600  # Redis expires it by itself, too

        await bob.send(register(bob, "bob", call_id="unreg", expires=0))
        ok = await bob.recv_response()
        assert ok.status == 200 and ok.contacts == []
        assert _bindings(redis) == {}


async def test_bindings_are_loaded_from_redis_after_a_restart(tmp_path: Path, redis: RedisServer) -> None:  # noqa: F811
    """The server stops, a new one starts on the same Redis (and UDP port): a MESSAGE for bob
    still reaches bob's phone, which did not register again."""
    listen = [f"udp:127.0.0.1:{_free_udp_port()}"]
    async with running_server(tmp_path, listen=listen, store=_store(redis)) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await bob.send(register(bob, "bob", expires=600))
        assert (await bob.recv_response()).status == 200
    async with running_server(tmp_path, listen=listen, store=_store(redis)) as server:
        alice = await UdpUA.open(addr(server, "udp"))
        await _message_reaches(alice, bob, "after the restart")
    assert set(_bindings(redis)) == {"bob"}


async def test_redis_down_register_503_calls_still_route_and_recovery(tmp_path: Path, redis: RedisServer) -> None:  # noqa: F811
    """Redis killed: a REGISTER is answered 503 with Retry-After at once, naming
    store.redis_url; a MESSAGE to the phone registered before still arrives. Redis restarted from
    its append-only file: the acknowledged binding is there, the change answered 503 is written
    without a new REGISTER, and REGISTERs get 200 again."""
    store = _store(redis, redis_retry_after=7)
    async with running_server(tmp_path, store=store) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        await bob.send(register(bob, "bob", expires=600))
        assert (await bob.recv_response()).status == 200

        redis.stop(signal.SIGKILL)
        carol = await UdpUA.open(addr(server, "udp"))
        started = time.monotonic()
        await carol.send(register(carol, "carol", call_id="carol-1", expires=600))
        refused = await carol.recv_response(timeout=2.0)
        assert refused.status == 503, refused.reason
        assert time.monotonic() - started < 1.0
        assert refused.header("retry-after") == "7"
        assert f"store.redis_url {redis.url}" in refused.reason
        assert refused.call_id == "carol-1"

        alice = await UdpUA.open(addr(server, "udp"))
        await _message_reaches(alice, bob, "while Redis is down")

        redis.start()
        assert "bob" in _bindings(redis)  # acknowledged before the kill: replayed from the AOF
        with trio.fail_after(3):
            while "carol" not in _bindings(redis):  # retried by the server on its own
                await trio.sleep(0.05)
        await carol.send(register(carol, "carol", call_id="carol-1", cseq=2, expires=600))
        assert (await carol.recv_response()).status == 200
    assert set(_bindings(redis)) == {"bob", "carol"}


def _config(tmp_path: Path, url: str) -> Config:
    return config_from_dict({
        "server": {"listen": ["udp:127.0.0.1:0"], "data_dir": str(tmp_path / "data"), "domains": ["example.com"]},
        "store": {"backend": "redis", "redis_url": url},
    })


async def test_an_unreachable_redis_at_start_up_names_store_redis_url(tmp_path: Path) -> None:
    """Not serving beats serving without the bindings acknowledged before."""
    url = f"redis://127.0.0.1:{free_tcp_port()}/0"
    server = Server(_config(tmp_path, url))
    with pytest.raises(PersistenceError, match=f"store.redis_url {url}: .*refused"):
        await server.run()
    assert server.listeners == []


async def test_a_password_in_the_url_is_not_shown(tmp_path: Path) -> None:
    server = Server(_config(tmp_path, f"redis://user:s3cret@127.0.0.1:{free_tcp_port()}/0"))
    with pytest.raises(PersistenceError) as err:
        await server.run()
    assert "s3cret" not in str(err.value) and "user:***@127.0.0.1" in str(err.value)


async def test_a_redis_that_stops_answering_gets_register_503_within_its_timeout(
    tmp_path: Path, redis: RedisServer  # noqa: F811
) -> None:
    """Redis frozen (SIGSTOP: connections still accepted, nothing answered), the worst case of
    an unreachable Redis: the REGISTER is answered 503 after about twice store.redis_timeout
    (one retry), not left to time out; once Redis answers again REGISTERs get 200."""
    async with running_server(tmp_path, store=_store(redis, redis_timeout=0.2)) as server:
        carol = await UdpUA.open(addr(server, "udp"))
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            await carol.send(register(carol, "carol", call_id="frozen", expires=600))
            refused = await carol.recv_response(timeout=3.0)
            assert refused.status == 503 and refused.header("retry-after") == "5"
            assert 0.2 <= time.monotonic() - started < 1.5
        finally:
            redis.process.send_signal(signal.SIGCONT)
        await carol.send(register(carol, "carol", call_id="frozen", cseq=2, expires=600))
        assert (await carol.recv_response()).status == 200
    assert set(_bindings(redis)) == {"carol"}


async def test_calls_to_known_phones_pass_while_a_frozen_redis_holds_a_register(
    tmp_path: Path, redis: RedisServer  # noqa: F811
) -> None:
    """Issue 20: with Redis unreachable, calls to known bindings are still routed from the
    local view. A REGISTER held for a frozen Redis used to count as server overload after
    50 ms (issue 19: the group-commit age was in the one overload signal), so MESSAGEs and
    INVITEs between registered phones were answered 503 (overload) until Redis timed out."""
    async with running_server(tmp_path, store=_store(redis, redis_timeout=0.5)) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        dave = await UdpUA.open(addr(server, "udp"))
        carol = await UdpUA.open(addr(server, "udp"))
        for ua, user in ((bob, "bob"), (dave, "dave")):
            await ua.send(register(ua, user, expires=600))
            assert (await ua.recv_response()).status == 200
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            await carol.send(register(carol, "carol", call_id="held", expires=600))
            await trio.sleep(0.3)  # carol's REGISTER held for Redis: 6x the 50 ms queue limit
            for n in range(3):
                await _message_reaches(dave, bob, f"while Redis is frozen {n}")
                await trio.sleep(0.1)
        finally:
            redis.process.send_signal(signal.SIGCONT)
        # Answered either way, never lost: 503 if Redis timed out first, 200 if it woke first.
        held = await carol.recv_response(timeout=3.0)
        assert held.status in (200, 503) and held.call_id == "held"
    assert server.stats.get("overload_rejected") is None


async def test_a_server_on_redis_is_not_held_overloaded_after_its_first_register(
    tmp_path: Path, redis: RedisServer  # noqa: F811
) -> None:
    """Issue 19/20: the group-commit age is an overload signal; the Redis commit used to leave it
    running after the first batch, so half a second later every new request was shed with 503.
    A REGISTER long after the first one, and a MESSAGE, must be served normally."""
    async with running_server(tmp_path, store=_store(redis)) as server:
        bob = await UdpUA.open(addr(server, "udp"))
        alice = await UdpUA.open(addr(server, "udp"))
        await bob.send(register(bob, "bob", expires=600))
        assert (await bob.recv_response()).status == 200
        await trio.sleep(3 * server.cfg.limits.overload_queue_delay + 0.2)
        await alice.send(register(alice, "alice", expires=600))
        assert (await alice.recv_response()).status == 200
        await trio.sleep(3 * server.cfg.limits.overload_queue_delay + 0.2)
        await _message_reaches(alice, bob, "not shed")
