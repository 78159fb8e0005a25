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
- A message of a call whose lane is busy goes through the lane too (after the earlier work), so
  a 180 never overtakes the 183 whose SDP is still with rtpengine.
- A delete never holds a message back: the BYE, CANCEL or final response goes on at once; the
  delete runs in the lane afterwards (after any offer still in flight, so rtpengine never
  re-creates a call it was told to delete).
- Work in a lane that fails is logged; it never takes the server down.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .clock import Clock
from .media import MediaMetrics, MediaSessions, MediaSettings, MediaStep, StepKind
from .media.client import NgClient
from .sip import Message, ParseError

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
        self._lanes: dict[str, deque[Work]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The ng client and the lanes' tasks (``await nursery.start(glue.run)``)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.client.run)
            self._nursery = nursery
            task_status.started()

    # ------------------------------------------------------------------ lanes
    def busy(self, call_id: str | None) -> bool:
        return call_id is not None and call_id in self._lanes

    def submit(self, call_id: str, work: Work) -> None:
        """Run ``work`` after everything already queued for ``call_id``."""
        lane = self._lanes.get(call_id)
        if lane is not None:
            lane.append(work)
            return
        if self._nursery is None:
            raise RuntimeError("MediaGlue is not running: start it with nursery.start(glue.run)")
        self._lanes[call_id] = deque([work])
        self._nursery.start_soon(self._drain, call_id)

    async def _drain(self, call_id: str) -> None:
        lane = self._lanes[call_id]
        try:
            while lane:
                work = lane.popleft()
                try:
                    await work()
                except Exception:
                    log.exception("media: call %s: work after an ng command failed", call_id)
        finally:
            del self._lanes[call_id]

    def background(self, step: MediaStep, call_id: str | None = None) -> None:
        """A step nobody waits for (a delete): into the call's lane."""
        key = call_id or step.command.call_id or ""

        async def work() -> None:
            await self.client.run_step(step)

        self.submit(key, work)

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
                await self.client.run_step(rewrite)  # a response or an ACK: it never rejects
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
    def on_response(self, out: Message, branch: str | None) -> MediaStep | None:
        return self.sessions.on_response(out, branch=branch, now=self.clock.now())  # type: ignore[arg-type]

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
