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
