"""Persistence of bindings across restarts: SQLite with group commit, or nothing at all.

The in-memory ``LocationStore`` answers every lookup; this layer only mirrors it so a restart does
not forget registrations. The runtime collects the changes of every REGISTER handled in one
batch, has them written in one transaction by a child process (``sipserver.store_writer``, which
runs ``write_rows`` on rows made by ``batch_rows``) and sends their 200 OKs once it is committed,
so a 200 OK is never sent for a binding that is not on disk, and durability costs one commit per
batch.

Invariants:
- One table, ``bindings``, one row per binding, keyed by ``BindingKey.text``; the row holds the
  binding as JSON (``Binding.to_record``, written by ``record_json``) plus ``aor`` and
  ``expires_at`` columns for SQL.
- ``write_batch`` is one transaction: all of the batch is on disk, or none of it.
- WAL journal with ``synchronous=FULL`` by default: a commit is durable against power loss
  (the WAL is fsynced at each commit, i.e. once per batch) and readers never block the writer.
  ``synchronous="NORMAL"`` is accepted for hosts where an fsync per batch is too slow; a power
  cut may then lose the last batches (never corrupt the file), and the affected UAs simply
  re-register.
- After ``load`` the file holds exactly what it returned: expired rows, rows the caller chose not
  to keep (stream-connection bindings whose flows died with the old process) and unreadable rows
  are deleted, so the file mirrors the memory store again.
- Calls are not thread-safe by themselves (``check_same_thread=False``); the caller serialises
  them. Every failure surfaces as ``PersistenceError``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from .binding import Binding, BindingKey, record_json
from .store import Change, Put

__all__ = [
    "MemoryPersistence",
    "Persistence",
    "PersistenceError",
    "SqlitePersistence",
    "batch_rows",
    "survives_restart",
]

SCHEMA_VERSION = 1

#: A row to insert or replace: (key text, AoR, expires_at, record JSON).
PutRow = tuple[str, str, float, str]
#: A row to delete: (key text,).
DeleteRow = tuple[str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    key TEXT PRIMARY KEY,
    aor TEXT NOT NULL,
    expires_at REAL NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bindings_expires_at ON bindings (expires_at);
"""


class PersistenceError(Exception):
    """The database could not be opened, read or written."""


class Persistence(Protocol):
    """What the runtime needs from a persistence backend."""

    def write_batch(self, changes: Sequence[Change]) -> None: ...

    def load(self, now: float, keep: Callable[[Binding], bool]) -> list[Binding]: ...

    def close(self) -> None: ...


def survives_restart(binding: Binding) -> bool:
    """A sensible ``keep`` for ``load``: a binding is still reachable after a restart unless it
    was tied to one of our stream connections (TCP/TLS/WS/WSS), which died with the old process.
    UDP flows are 5-tuples that still work; bindings without a flow token are reached through the
    Contact or an external Path."""
    return binding.flow_token is None or binding.transport == "udp"


class MemoryPersistence:
    """``backend = "memory"``: remembers nothing, so a restart starts empty."""

    def write_batch(self, changes: Sequence[Change]) -> None:
        return None

    def load(self, now: float, keep: Callable[[Binding], bool]) -> list[Binding]:
        return []

    def close(self) -> None:
        return None


class SqlitePersistence:
    """Bindings in one SQLite file (stdlib ``sqlite3``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise PersistenceError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = os.fspath(path)
        #: Rows dropped by the last ``load`` because they could not be decoded.
        self.unreadable = 0
        try:
            # isolation_level=None: no implicit transactions; ``write_batch`` opens its own.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
            conn = self._conn
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            self.journal_mode = str(mode[0]).lower() if mode else ""
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise PersistenceError(
                    f"{self.path}: schema version {version} is newer than this server's "
                    f"({SCHEMA_VERSION})"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as err:
            self._close_quietly()
            raise PersistenceError(f"cannot open location database {self.path}: {err}") from None
        except PersistenceError:
            self._close_quietly()
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PersistenceError("location database is closed")
        return self._conn

    def write_batch(self, changes: Sequence[Change]) -> None:
        """Write a batch in one transaction (group commit). Only the last change per key
        matters, so the batch is collapsed first."""
        if changes:
            self.write_rows(*batch_rows(changes))

    def write_rows(self, puts: Sequence[PutRow], deletes: Sequence[DeleteRow]) -> None:
        """Write rows made by ``batch_rows`` in one transaction: all of them or none."""
        if not puts and not deletes:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if deletes:
                    conn.executemany("DELETE FROM bindings WHERE key = ?", deletes)
                if puts:
                    conn.executemany(
                        "INSERT OR REPLACE INTO bindings (key, aor, expires_at, record) "
                        "VALUES (?, ?, ?, ?)",
                        puts,
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise PersistenceError(f"cannot write bindings to {self.path}: {err}") from None

    def load(self, now: float, keep: Callable[[Binding], bool]) -> list[Binding]:
        """Unexpired bindings for which ``keep`` is true; everything else is deleted."""
        conn = self._connection()
        out: list[Binding] = []
        drop: list[tuple[str]] = []
        self.unreadable = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,))
                for key_text, record in conn.execute("SELECT key, record FROM bindings"):
                    binding = _decode(key_text, record)
                    if binding is None:
                        self.unreadable += 1
                        drop.append((key_text,))
                    elif keep(binding):
                        out.append(binding)
                    else:
                        drop.append((key_text,))
                if drop:
                    conn.executemany("DELETE FROM bindings WHERE key = ?", drop)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise PersistenceError(f"cannot read bindings from {self.path}: {err}") from None
        return out

    def close(self) -> None:
        """Close the database (checkpointing the WAL); further calls raise PersistenceError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as err:
                raise PersistenceError(f"cannot close {self.path}: {err}") from None

    def _close_quietly(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass


def batch_rows(changes: Sequence[Change]) -> tuple[list[PutRow], list[DeleteRow]]:
    """The rows a batch of changes writes: the last change per key wins (batch order is kept
    for the survivors). Plain tuples of strings and numbers, so a batch can be handed to another
    process cheaply (``sipserver.store_writer``)."""
    final: dict[BindingKey, Change] = {}
    pop = final.pop
    for change in changes:
        key = change.key
        pop(key, None)  # keep batch order for the surviving change
        final[key] = change
    puts: list[PutRow] = []
    deletes: list[DeleteRow] = []
    for key, change in final.items():
        text = key.text
        if isinstance(change, Put):
            b = change.binding
            # The record is built straight as text (the same JSON as to_record's), and the
            # key text is reused in it rather than rendered twice.
            puts.append((text, b.aor, b.expires_at, record_json(b, text)))
        else:
            deletes.append((text,))
    return puts, deletes


def _decode(key_text: object, record: object) -> Binding | None:
    """A row back into a Binding; None when it is unreadable or its key does not match."""
    if not isinstance(key_text, str) or not isinstance(record, str):
        return None
    try:
        data = json.loads(record)
        if not isinstance(data, dict):
            return None
        binding = Binding.from_record(data)
    except ValueError:
        return None
    return binding if binding.key.text == key_text else None
