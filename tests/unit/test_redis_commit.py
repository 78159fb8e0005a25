"""RedisCommit (issue 20, store.backend = "redis"): a batch Redis did not take answers its
REGISTERs 503 with Retry-After and is written again, whole, with the last change per binding;
a 200 OK only ever leaves for a batch the writer confirmed. The writer is scripted here; the
same on the wire against a real redis-server is in tests/integration/test_redis_store.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing
from trio.testing import MockClock

from sipserver.redis_store import RedisCommit, shown_url
from sipserver.registrar import PersistenceError
from sipserver.registrar.binding import Binding, BindingKey
from sipserver.registrar.store import Delete, Put
from sipserver.sip import parse_message, parse_sip_uri

OK = (
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    "From: <sip:bob@example.com>;tag=f\r\nTo: <sip:bob@example.com>;tag=t\r\nCall-ID: c1\r\n"
    "CSeq: 7 REGISTER\r\nContact: <sip:bob@192.0.2.1>;expires=600\r\nContent-Length: 0\r\n\r\n"
)


def _binding(user: str) -> Binding:
    uri = f"sip:{user}@192.0.2.1"
    now = time.time()
    return Binding(
        key=BindingKey.for_contact(f"{user}@example.com", parse_sip_uri(uri)), aor=f"{user}@example.com",
        contact_uri=uri, expires_at=now + 600, call_id="c", cseq=1, registered_at=now,
    )


class ScriptedWriter:
    """Fails while ``down``; records every batch it was handed."""

    def __init__(self) -> None:
        self.down = False
        self.batches: list[tuple[list[Any], list[Any]]] = []

    async def write_rows(self, puts: Sequence[Any], deletes: Sequence[Any]) -> None:
        self.batches.append((list(puts), list(deletes)))
        if self.down:
            raise PersistenceError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    async def aclose(self) -> None:
        pass


async def test_a_failed_batch_is_answered_503_and_written_again_with_the_last_change() -> None:
    sent: list[tuple[Any, Any]] = []

    async def send(txn: Any, resp: Any) -> None:
        sent.append((txn, resp))

    writer = ScriptedWriter()
    url = "redis://u:pw@10.0.0.5:6379/0"
    commit = RedisCommit(writer, send, where=f"store.redis_url {shown_url(url)}", retry_after=9)  # type: ignore[arg-type]
    bob, carol = _binding("bob"), _binding("carol")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit.run)
        writer.down = True
        commit.queue([Put(bob), Put(carol)], ("txn-1", parse_message(OK.encode())))
        await trio.testing.wait_all_tasks_blocked()
        (txn, resp), = sent
        assert txn == "txn-1" and resp.status == 503
        assert resp.header("retry-after") == "9" and resp.call_id == "c1" and resp.cseq.seq == 7
        assert resp.reason == "Service Unavailable (location store unreachable: store.redis_url redis://u:***@10.0.0.5:6379/0)"
        assert ":pw@" not in resp.to_bytes().decode()

        # bob unregisters while Redis is still down: only the delete is left for bob
        commit.queue([Delete(bob.key)], ("txn-2", parse_message(OK.encode())))
        await trio.testing.wait_all_tasks_blocked()
        assert sent[-1][1].status == 503
        writer.down = False
        commit.queue([])  # any wake-up (the retry timer does it every second) writes it
        await trio.testing.wait_all_tasks_blocked()
        puts, deletes = writer.batches[-1]
        assert [row[0] for row in puts] == [carol.key.text]
        assert deletes == [(bob.key.text,)]
        assert commit.unwritten == {} and commit.reachable

        commit.queue([Put(bob)], ("txn-3", parse_message(OK.encode())))
        await trio.testing.wait_all_tasks_blocked()
        assert sent[-1][0] == "txn-3" and sent[-1][1].status == 200
        nursery.cancel_scope.cancel()


async def test_changes_redis_has_not_taken_are_retried_without_a_new_register(autojump_clock: MockClock) -> None:
    writer = ScriptedWriter()

    async def send(txn: Any, resp: Any) -> None:
        pass

    commit = RedisCommit(writer, send, where="store.redis_url redis://127.0.0.1:6379/0", retry_after=5)  # type: ignore[arg-type]
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit.run)
            writer.down = True
            commit.queue([Put(_binding("dave"))])
            await trio.testing.wait_all_tasks_blocked()
            writer.down = False
            started = trio.current_time()
            while commit.unwritten:
                await trio.sleep(0.05)
            assert trio.current_time() - started <= 1.1  # the retry timer, once a second
            nursery.cancel_scope.cancel()
    assert len(writer.batches) == 2 and writer.batches[-1][0][0][0] == _binding("dave").key.text


def test_shown_url_hides_passwords_in_userinfo_and_query() -> None:
    assert shown_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert shown_url("redis://user:s3cret@10.0.0.5:6379/2") == "redis://user:***@10.0.0.5:6379/2"
    assert shown_url("rediss://:s3cret@[::1]/0") == "rediss://:***@[::1]/0"
    assert shown_url("unix:///run/redis.sock?db=1&password=s3cret") == "unix:///run/redis.sock?db=1&password=***"
