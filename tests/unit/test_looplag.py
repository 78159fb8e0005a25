"""The event-loop lag probe (issue 19's overload signal for every transport): it measures only
while messages arrive, reads 0 and keeps no timer when the server is idle."""

from __future__ import annotations

import time

import pytest
import trio

from sipserver.looplag import LoopLag


def _no_deadline() -> bool:
    """No timer due within 5 s (the probe's would be 10 ms away; a ``fail_after`` of the test
    itself is further)."""
    return trio.lowlevel.current_statistics().seconds_to_next_deadline > 5


@pytest.mark.trio
async def test_measures_a_blocked_loop_while_messages_arrive_and_parks_when_idle() -> None:
    probe = LoopLag(interval=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe.run)
        await trio.sleep(0.05)
        assert probe.lag == 0.0 and _no_deadline()  # idle: never started, no probe timer
        probe.poke()  # a message
        while _no_deadline():  # until the probe sleeps its 10 ms
            await trio.sleep(0)
        time.sleep(0.08)  # the loop is held (a saturated server's round of tasks)
        probe.poke()  # the message read after the stall
        with trio.fail_after(10):
            while not probe.lag:  # the probe and this task wake in the same batch, any order
                await trio.sleep(0)
        assert probe.lag >= 0.06
        with trio.fail_after(20):  # free and quiet again: back to 0, parked (a machine
            while not (probe.lag == 0.0 and _no_deadline()):  # busy elsewhere wakes it late)
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def test_not_run_on_a_mock_clock() -> None:
    """Virtual time stands still while tasks run: nothing to measure, no deadline to add."""
    from trio.testing import MockClock

    probe = LoopLag()
    probe.poke()

    async def main() -> None:
        with trio.fail_after(1):  # virtual: reached at once if the probe kept sleeping
            await probe.run()

    trio.run(main, clock=MockClock(autojump_threshold=0))
