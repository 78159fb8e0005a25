"""GcPacer: collections by messages handled, not by CPython's allocation count (see its module
docstring and docs/performance.md)."""

from __future__ import annotations

from sipserver.gcpace import GcPacer


def make(**kw: object) -> tuple[GcPacer, list[int]]:
    calls: list[int] = []

    def collect(generation: int) -> int:
        calls.append(generation)
        return 0

    return GcPacer(collect=collect, **kw), calls  # type: ignore[arg-type]


def test_young_every_n_messages_middle_every_kth_full_rarely() -> None:
    pacer, calls = make(every=10, young_per_middle=3, middle_per_full=2)
    for i in range(10 * 12):
        pacer.message(float(i) * 0.001)
    # 12 collections: every third is the middle generation, every second middle one is full
    assert calls == [0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2]
    assert pacer.collections == [8, 2, 2]


def test_no_collection_before_the_count() -> None:
    pacer, calls = make(every=256)
    for i in range(255):
        pacer.message(0.0)
    assert calls == []
    pacer.message(0.0)
    assert calls == [0]


def test_idle_collects_only_after_a_quiet_second() -> None:
    pacer, calls = make(every=1000, idle_after=1.0)
    pacer.idle(0.5)
    assert calls == []  # the clock starts at 0: not yet a second
    pacer.idle(1.0)
    assert calls == [0]
    pacer.idle(1.5)
    assert calls == [0]
    for _ in range(1000):
        pacer.message(2.0)  # a collection by count at 2.0 ...
    assert calls == [0, 0]
    pacer.idle(2.5)  # ... so the next idle one waits until 3.0
    assert calls == [0, 0]
    pacer.idle(3.0)
    assert calls == [0, 0, 0]
