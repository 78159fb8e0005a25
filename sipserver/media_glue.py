"""Media anchoring in the running server (trio side of ``sipserver.media``, issue 18).

``MediaGlue`` owns the ng client (``media.client.NgClient``) and the sans-IO ``MediaSessions``,
and carries out the steps the sessions return. ``forwarding`` asks it at the offer/answer
points (a branch request, a response going upstream, an ACK without a transaction, a CANCEL,
a BYE) and hands it the message to send afterwards.

Invariants:
- The sans-IO sessions see SIP events synchronously, in the order the proxy handles them; only
  the ng round trips wait, and they never wait in the task that reads a socket or a connection:
  each call has one *lane*, a FIFO of work run by one task of its own, so a call's ng commands
  and the messages that wait on them keep their order while other calls and other messages go
  on (rtpengine down: the wait is the client's timeout budget, for that call only).
- A message of a call whose lane still holds messages goes through the lane too (after them), so
  a 180 never overtakes the 183 whose SDP is still with rtpengine.
- A delete never holds a message back: the BYE, CANCEL or final response goes on at once (a
  queued delete does not make a lane hold messages); the delete runs in the lane afterwards,
  after any offer still in flight, so rtpengine never re-creates a call it was told to delete.
- A step whose command could not run at all (a bug, the client stopped) finishes as "no
  rtpengine answered", so its branch fails or its message passes: nothing waits for timer C.
- Work in a lane that fails is logged; it never takes the server down.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .clock import Clock
from .media import (
    MediaMetrics,
    MediaOutcome,
    MediaSessions,
    MediaSettings,
    MediaStep,
    NgUnavailable,
    StepKind,
)
from .media.client import NgClient
from .sip import Message, ParseError, Response

__all__ = ["MediaGlue", "Work"]

log = logging.getLogger("sipserver.media")

Work = Callable[[], Awaitable[Any]]


def call_id_of(msg: Message) -> str | None:
    try:
        return msg.call_id
    except ParseError:
        return None


class MediaGlue:
    def __init__(self, section: Any, clock: Clock) -> None:
        """From the ``[media]`` config section."""
        self.clock = clock
        self.metrics = MediaMetrics()
        self.client = NgClient.from_section(section, self.metrics)
        self.sessions = MediaSessions(MediaSettings.from_section(section), self.metrics)
        self._lanes: dict[str, deque[tuple[Work, bool]]] = {}
        self._queued: dict[str, int] = {}  # call-id -> queued work that carries a message
        self._active: dict[str, trio.lowlevel.Task] = {}  # call-id -> lane task running such work
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The ng client and the lanes' tasks (``await nursery.start(glue.run)``)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.client.run)
            self._nursery = nursery
            task_status.started()

    # ------------------------------------------------------------------ lanes
    def busy(self, call_id: str | None) -> bool:
        """A message of ``call_id`` must queue: messages of the call are queued in its lane, or
        one is being worked on by another task (the lane's own work sends in order)."""
        if call_id is None:
            return False
        if call_id in self._queued:
            return True
        task = self._active.get(call_id)
        return task is not None and task is not trio.lowlevel.current_task()

    def submit(self, call_id: str, work: Work, *, holds: bool = True) -> None:
        """Run ``work`` after everything already queued for ``call_id``; ``holds``: it carries
        a message (later messages of the call must queue behind it)."""
        if holds:
            self._queued[call_id] = self._queued.get(call_id, 0) + 1
        lane = self._lanes.get(call_id)
        if lane is not None:
            lane.append((work, holds))
            return
        if self._nursery is None:
            raise RuntimeError("MediaGlue is not running: start it with nursery.start(glue.run)")
        self._lanes[call_id] = deque([(work, holds)])
        try:
            self._nursery.start_soon(self._drain, call_id)
        except RuntimeError:  # shutting down: rtpengine ends the call by its own timeout
            del self._lanes[call_id]
            self._queued.pop(call_id, None)
            log.debug("media: call %s: shutting down, its media work is dropped", call_id)

    async def _drain(self, call_id: str) -> None:
        lane = self._lanes[call_id]
        me = trio.lowlevel.current_task()
        try:
            while lane:
                work, holds = lane.popleft()
                if holds:
                    left = self._queued[call_id] - 1
                    if left:
                        self._queued[call_id] = left
                    else:
                        del self._queued[call_id]
                    self._active[call_id] = me
                try:
                    await work()
                except Exception:
                    log.exception("media: call %s: work after an ng command failed", call_id)
                finally:
                    self._active.pop(call_id, None)
        finally:
            del self._lanes[call_id]

    async def run_step(self, step: MediaStep) -> MediaOutcome:
        """Send the step's command and apply the reply; never raises."""
        try:
            return await self.client.run_step(step)
        except Exception as exc:  # pragma: no cover - a bug; the transaction must still end
            log.exception("media: %s could not be sent", step.command.name)
            return step.finish(NgUnavailable(f"internal error: {exc!r}"))

    def background(self, step: MediaStep, call_id: str | None = None) -> None:
        """A step nobody waits for (a delete): into the call's lane, holding no message."""
        key = call_id or step.command.call_id or ""

        async def work() -> None:
            await self.run_step(step)

        self.submit(key, work, holds=False)

    # ------------------------------------------------------------------ relaying
    async def relay(self, msg: Message, step: MediaStep | None, send: Work) -> None:
        """Send ``msg`` (by calling ``send``) once ``step`` has rewritten it: an offer or answer
        waits for rtpengine in the call's lane; a delete goes on behind the message; without a
        step the message goes now, unless earlier work of its call is still queued."""
        call_id = call_id_of(msg)
        if call_id is None:
            await send()
            return
        if step is not None and step.kind is not StepKind.DELETE:
            rewrite = step

            async def work() -> None:
                await self.run_step(rewrite)  # a response or an ACK: it never rejects
                await send()

            self.submit(call_id, work)
            return
        if self.busy(call_id):
            self.submit(call_id, send)
        else:
            await send()
        if step is not None:
            self.background(step, call_id)

    # ------------------------------------------------------------------ events
    def on_response(self, out: Response, branch: str | None) -> MediaStep | None:
        return self.sessions.on_response(out, branch=branch, now=self.clock.now())

    def on_cancel(self, call_id: str) -> None:
        step = self.sessions.on_cancel(call_id)
        if step is not None:
            self.background(step, call_id)

    def next_deadline(self) -> float | None:
        return self.sessions.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Calls whose signalling stopped are deleted (in their lanes)."""
        for step in self.sessions.handle_timer(now):
            self.background(step)
