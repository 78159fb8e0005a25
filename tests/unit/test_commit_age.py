"""GroupCommit.age: how long the oldest held REGISTER reply has waited for the location store,
one of the overload signals (issue 19)."""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import MockClock

from sipserver.commit import GroupCommit
from sipserver.registrar.binding import BindingKey
from sipserver.registrar.store import Delete

CHANGE = Delete(BindingKey("alice@example.com", "contact", "sip:alice@192.0.2.1"))


class SlowWriter:
    """Stands in for the store writer: each write takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def write_rows(self, *rows: Any) -> None:
        await trio.sleep(self.delay)


async def test_age_counts_from_the_oldest_held_reply_until_it_is_sent(autojump_clock: MockClock) -> None:
    sent: list[tuple[Any, Any]] = []

    async def send(txn: Any, resp: Any) -> None:
        sent.append((txn, resp))

    gc = GroupCommit(SlowWriter(0.3), send)  # type: ignore[arg-type]
    assert gc.age(trio.current_time()) == 0.0
    gc.queue([CHANGE], ("t1", "200"))
    await trio.sleep(0.1)
    gc.queue([CHANGE], ("t2", "200"))  # a younger one does not reset the age
    assert abs(gc.age(trio.current_time()) - 0.1) < 1e-9
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gc.run)
        await trio.sleep(0.2)  # the write takes 0.3 s: the replies are still held
        assert sent == [] and abs(gc.age(trio.current_time()) - 0.3) < 1e-9
        await trio.sleep(0.2)
        assert sent == [("t1", "200"), ("t2", "200")]
        assert gc.age(trio.current_time()) == 0.0
        nursery.cancel_scope.cancel()


async def test_age_outside_writes_leaves_the_writes_own_time_out(autojump_clock: MockClock) -> None:
    """The server's overload signal counts what the main process made a held reply wait (here:
    slow sending of a batch's 200s), not the store's writes: a disk stall is not an overload
    (issue 19, limits.overload_store_delay has the whole age)."""
    sent: list[str] = []

    async def send(txn: Any, resp: Any) -> None:
        await trio.sleep(0.05)  # each 200 takes 50 ms to go out: a saturated loop
        sent.append(txn)

    gc = GroupCommit(SlowWriter(0.3), send)  # type: ignore[arg-type]
    t0 = trio.current_time()

    def at(t: float) -> tuple[float, float]:
        now = trio.current_time()
        assert abs(now - (t0 + t)) < 1e-9
        return round(gc.age(now), 9), round(gc.age_outside_writes(now), 9)

    gc.queue([CHANGE], ("t1", "200"))
    gc.queue([CHANGE], ("t2", "200"))
    await trio.sleep(0.1)
    assert at(0.1) == (0.1, 0.1)  # no write yet: all of it counts
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gc.run)  # writes t1 and t2 from 0.1 to 0.4, sends until 0.5
        await trio.sleep(0.2)
        assert at(0.3) == (0.3, 0.1)  # 0.2 s of it in the write
        await trio.sleep(0.15)
        gc.queue([CHANGE], ("t3", "200"))  # at 0.45, while t1 and t2 go out
        await trio.sleep(0.001)
        assert sent == ["t1"] and at(0.451) == (0.451, 0.151)
        await trio.sleep(0.049)  # 0.5: t2 sent, t3's batch starts its write
        assert sent == ["t1", "t2"] and at(0.5) == (0.05, 0.05)
        await trio.sleep(0.2)  # in t3's write: only the 50 ms before it counts
        assert at(0.7) == (0.25, 0.05)
        await trio.sleep(0.2)
        assert sent == ["t1", "t2", "t3"] and at(0.9) == (0.0, 0.0)
        nursery.cancel_scope.cancel()
