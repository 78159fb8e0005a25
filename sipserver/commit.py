"""Group commit of location-store changes (DESIGN.md, performance notes).

Every change handled before the writer picks up a batch is written in one SQLite transaction by
the store-writer child process; a REGISTER's 200 OK is held until the batch holding its changes
is on disk, so durability costs one fsync per batch, not per request.

Invariants:
- A reply queued with changes is sent only after those changes were handed to the writer and the
  write returned (or failed and was logged: the binding is in memory either way).
- The connection (or UDP socket) that read a REGISTER never waits for the disk: it queues and
  reads on; the writer task sends the held replies.
- Without a writer (memory store) changes are dropped and replies go out at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from .registrar import Change, PersistenceError
from .registrar.sqlite_store import batch_rows
from .store_writer import StoreWriterProcess

log = logging.getLogger("sipserver")

_REPLIES_PER_YIELD = 64

#: Sends a held reply: (server transaction, response).
ReplySender = Callable[[Any, Any], Awaitable[None]]


class GroupCommit:
    def __init__(self, writer: StoreWriterProcess | None, send_reply: ReplySender) -> None:
        self.writer = writer
        self._send_reply = send_reply
        self._pending: list[Change] = []
        self._replies: list[tuple[Any, Any]] = []
        self._wake = trio.Event()
        # When the oldest reply still held was queued: in the next batch, or in the one being
        # written (``age``, an overload signal).
        self._queued_since: float | None = None
        self._writing_since: float | None = None
        # Seconds writes have been in flight in all (a running total), when the one in flight
        # began, and the total at the moments ``_queued_since`` and ``_writing_since`` were
        # taken: ``age_outside_writes`` leaves the writes' own time out.
        self._write_time = 0.0
        self._write_began: float | None = None
        self._queued_mark = 0.0
        self._writing_mark = 0.0
        self.sends: Any = None  # the FlowTable (cork / uncork: batched sends), set by the runtime

    @property
    def durable(self) -> bool:
        return self.writer is not None

    def queue(self, changes: Sequence[Change], reply: tuple[Any, Any] | None = None) -> None:
        """Hand changes to the writer; ``reply`` (server transaction, response) is sent once the
        batch holding them is committed."""
        if self.writer is None:
            return
        self._pending.extend(changes)
        if reply is not None:
            if not self._replies:
                now = trio.current_time()
                self._queued_since = now
                self._queued_mark = self._written_by(now)
            self._replies.append(reply)
        self._wake.set()

    def age(self, now: float) -> float:
        """Seconds the oldest held reply has waited for the disk (0 when none waits): the
        location store's overload signal (``limits.overload_store_delay``, issue 19)."""
        since = self._writing_since if self._writing_since is not None else self._queued_since
        return 0.0 if since is None else max(0.0, now - since)

    def age_outside_writes(self, now: float) -> float:
        """``age`` without the time writes were in flight meanwhile: what the main process
        itself made the oldest held reply wait (the 200s of a big batch go out 64 per turn of
        a saturated event loop). One of the server's overload signals; a slow disk, whose
        stalls are the writes' own time, does not raise it."""
        if self._writing_since is not None:
            since, mark = self._writing_since, self._writing_mark
        elif self._queued_since is not None:
            since, mark = self._queued_since, self._queued_mark
        else:
            return 0.0
        return max(0.0, now - since - (self._written_by(now) - mark))

    def _written_by(self, now: float) -> float:
        """Seconds writes have been in flight, in all, by ``now``."""
        began = self._write_began
        return self._write_time + (now - began if began is not None else 0.0)

    async def _write(self, puts: Any, deletes: Any) -> None:
        """One batch to the writer, its time in flight counted (``age_outside_writes``)."""
        assert self.writer is not None
        began = self._write_began = trio.current_time()
        try:
            await self.writer.write_rows(puts, deletes)
        finally:
            self._write_time += trio.current_time() - began
            self._write_began = None

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._pending = self._pending, []
            replies = self._take_replies()
            if batch and self.writer is not None:
                try:
                    await self._write(*batch_rows(batch))
                except PersistenceError as err:
                    log.error("writing %d binding changes failed: %s", len(batch), err)
                except Exception:
                    log.exception("writing %d binding changes failed", len(batch))
            await self.send_replies(replies)
            self._writing_since = None

    def _take_replies(self) -> list[tuple[Any, Any]]:
        """The replies held for the batch about to be written; their age (``age``,
        ``age_outside_writes``) now follows that batch until ``send_replies`` is done."""
        replies, self._replies = self._replies, []
        self._writing_since, self._queued_since = self._queued_since, None
        self._writing_mark = self._queued_mark
        return replies

    async def send_replies(self, replies: Sequence[tuple[Any, Any]]) -> None:
        """Send held replies 64 at a time, letting the readers in between (a big batch), each
        64 as one write per TCP/TLS connection (``sends.cork``: a batch's 200s to the many
        REGISTERs of one connection are a single send system call)."""
        sends = self.sends
        for start in range(0, len(replies), _REPLIES_PER_YIELD):
            if start:
                await trio.lowlevel.checkpoint()
            corked = sends is not None and sends.cork()
            try:
                for txn, resp in replies[start : start + _REPLIES_PER_YIELD]:
                    await self._send_reply(txn, resp)
            finally:
                if corked:
                    await sends.uncork()

    async def flush(self) -> None:
        """Shutdown: write what is still queued, then let the writer process exit."""
        writer = self.writer
        if writer is None:
            return
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                await writer.write_rows(*batch_rows(batch))
            except PersistenceError as err:
                log.error("writing %d binding changes at shutdown failed: %s", len(batch), err)
        await writer.aclose()
