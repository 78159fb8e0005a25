"""The SQLite location file written by a child process (issue registrar: durable store with
group commit; issue performance: SQLite off the event loop's GIL)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from sipserver.registrar import PersistenceError
from sipserver.store_writer import StoreWriterProcess


@asynccontextmanager
async def _started(path: Path) -> AsyncIterator[StoreWriterProcess]:
    writer = StoreWriterProcess(str(path))
    await writer.start()
    try:
        yield writer
    finally:
        await writer.aclose()


def _rows(path: Path) -> dict[str, tuple[str, float, str]]:
    with sqlite3.connect(path) as conn:
        return {k: (a, e, r) for k, a, e, r in conn.execute("SELECT key, aor, expires_at, record FROM bindings")}


async def test_batches_are_committed_by_the_child(tmp_path: Path) -> None:
    path = tmp_path / "location.sqlite"
    async with _started(path) as writer:
        assert writer.pid is not None and writer.pid != os.getpid()
        await writer.write_rows([("k1", "a@example.com", 100.0, "{}"), ("k2", "b@example.com", 200.0, "{}")], [])
        # committed before write_rows returned: another connection sees both rows
        assert set(_rows(path)) == {"k1", "k2"}
        await writer.write_rows([("k3", "c@example.com", 300.0, "{}")], [("k1",)])
        assert set(_rows(path)) == {"k2", "k3"}
        assert _rows(path)["k3"] == ("c@example.com", 300.0, "{}")
    assert writer.pid is None


async def test_a_killed_child_is_started_again_and_the_batch_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "location.sqlite"
    async with _started(path) as writer:
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await trio.sleep(0.2)
        with caplog.at_level(logging.ERROR, logger="sipserver.store"):
            await writer.write_rows([("k1", "a@example.com", 100.0, "{}")], [])
        assert writer.pid not in (None, first)
        assert set(_rows(path)) == {"k1"}
        assert any("starting it again" in r.getMessage() for r in caplog.records)


async def test_the_child_ignores_sigterm_and_sigint(tmp_path: Path) -> None:
    """systemd's stop and a terminal's Ctrl-C reach the whole process group; the parent still
    has to write its last batch after them."""
    path = tmp_path / "location.sqlite"
    async with _started(path) as writer:
        pid = writer.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        await trio.sleep(0.2)
        await writer.write_rows([("k1", "a@example.com", 100.0, "{}")], [])
        assert writer.pid == pid
        assert set(_rows(path)) == {"k1"}


async def test_a_database_that_cannot_be_opened_is_reported_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "is-a-directory"
    bad.mkdir()
    writer = StoreWriterProcess(str(bad))
    with pytest.raises(PersistenceError, match="cannot open location database"):
        await writer.start()
    assert writer.pid is None
