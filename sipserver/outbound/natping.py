"""Keepalives the server sends for UDP phones that send none (issue 17, DESIGN.md "Flows for
every phone"). Sans-IO: flows, times and response branches go in; which flows to ping now and
which are dead come out.

A phone that does not do RFC 5626 registers over UDP and then stays silent; its NAT forgets the
mapping after about 30 s and calls to it are lost. The server sends it an OPTIONS down its
implicit flow every ``interval`` (25 s by default). Any response, even a 4xx or 5xx, and any
request from the flow mean it is alive; ``max_failures`` unanswered pings in a row mean it is
dead, and its bindings go.

Invariants:
- Each tracked flow has one scheduled ping; its phase inside the interval comes from the flow
  itself, so thousands of flows registered in one burst still ping evenly spread over time. A
  flow keeps its phase for good: after the runtime was away for longer than an interval, the
  missed rounds are skipped, not collapsed onto one instant.
- Pings go out in batches on a coarse grid (``tick``, 100 ms): ``next_deadline`` is the first
  grid point at or after the earliest ping, so the runtime wakes ten times a second for 50,000
  phones, not 2,000 times. One tick sends at most ``CATCH_UP`` times its share of the pings
  (and at least ``MIN_BATCH``): pings overdue after a stall drain over a few seconds, never
  in one burst.
- A ping counts as unanswered only when the next one falls due (a full interval to answer).
- ``due`` never returns a flow twice for one time; an untracked flow is never returned.

The cost per ping is kept small (issue 17: 50,000 phones on a fraction of a core): the runtime
renders each flow's OPTIONS from a ``KeepaliveTemplate`` made once (only the identifier in
branch, From tag and Call-ID changes), and takes their responses with
``keepalive_response_branch`` before any parsing.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import zlib
from typing import Any

import attrs

from ..sip.build import make_request
from ..sip.message import Request
from .flow import Flow

__all__ = [
    "BRANCH_PREFIX",
    "SLOT",
    "KeepaliveTemplate",
    "NatKeepalive",
    "keepalive_options",
    "keepalive_response_branch",
    "keepalive_template",
]

#: Our keepalive OPTIONS carry a branch starting with this (RFC 3261 magic cookie + "nk"), so
#: their responses are recognised without a transaction.
BRANCH_PREFIX = "z9hG4bKnk"

#: Seconds between the runtime's keepalive wake-ups (pings are sent in batches on this grid).
TICK = 0.1
#: One tick sends at most this many times its even share of the pings ...
CATCH_UP = 10
#: ... and at least this many.
MIN_BATCH = 64


@attrs.define(slots=True)
class _Ping:
    due: float
    failures: int = 0
    outstanding: str | None = None  # branch of the ping not answered yet
    sent: int = 0
    memo: Any = None  # the runtime's precomputed OPTIONS for the flow; dropped with it


@attrs.frozen
class PingState:
    """What ``sipserver ctl`` shows per flow."""

    next_ping: float
    failures: int
    pings_sent: int
    waiting: bool


class NatKeepalive:
    def __init__(self, interval: float, max_failures: int, tick: float = TICK) -> None:
        if not interval > 0:
            raise ValueError("the keepalive interval must be positive")
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not 0 < tick <= interval:
            raise ValueError("the tick must be positive and at most the interval")
        self.interval = interval
        self.max_failures = max_failures
        self.tick = tick
        self._flows: dict[Flow, _Ping] = {}
        self._by_branch: dict[str, Flow] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = itertools.count()
        # The grid slot of the last ``due`` call and the pings it has handed out so far.
        self._slot = -1
        self._slot_pings = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, flow: object) -> bool:
        return flow in self._flows

    def track(self, flow: Flow, now: float) -> None:
        """Keep ``flow`` open (an implicit UDP binding lives on it); no-op when tracked."""
        if flow in self._flows:
            return
        # The flow's phase: a stable fraction of the interval taken from its address, so a
        # burst of registrations does not become a burst of pings.
        phase = (zlib.crc32(repr((flow.local, flow.remote)).encode()) & 0xFFFF) / 65536.0
        due = now + self.interval * phase
        self._flows[flow] = _Ping(due)
        heapq.heappush(self._heap, (due, next(self._seq), flow))

    def untrack(self, flow: Flow) -> None:
        ping = self._flows.pop(flow, None)
        if ping is not None and ping.outstanding is not None:
            self._by_branch.pop(ping.outstanding, None)

    def heard(self, flow: Flow) -> None:
        """Anything arrived from ``flow``: it is alive."""
        ping = self._flows.get(flow)
        if ping is not None:
            ping.failures = 0
            if ping.outstanding is not None:
                self._by_branch.pop(ping.outstanding, None)
                ping.outstanding = None

    def answered(self, branch: str) -> bool:
        """A response to one of our pings (any status). False when the branch is not ours."""
        flow = self._by_branch.pop(branch, None)
        if flow is None:
            return False
        ping = self._flows.get(flow)
        if ping is not None:
            ping.failures = 0
            ping.outstanding = None
        return True

    def sent(self, flow: Flow, branch: str) -> None:
        """The runtime sent a ping with ``branch`` down ``flow``."""
        ping = self._flows.get(flow)
        if ping is not None:
            ping.outstanding = branch
            ping.sent += 1
            self._by_branch[branch] = flow

    def memo(self, flow: Flow) -> Any:
        """What the runtime attached to a tracked flow (``remember``), else None."""
        ping = self._flows.get(flow)
        return None if ping is None else ping.memo

    def remember(self, flow: Flow, memo: Any) -> None:
        ping = self._flows.get(flow)
        if ping is not None:
            ping.memo = memo

    def next_deadline(self) -> float | None:
        """When the runtime should call ``due``: the first grid point (``tick``) at or after the
        earliest ping, and not within a slot whose batch is used up."""
        heap = self._heap
        while heap and self._flows.get(heap[0][2]) is None:
            heapq.heappop(heap)  # untracked since it was scheduled
        if not heap:
            return None
        first = heap[0][0]
        tick = self.tick
        slot = math.ceil(first / tick)
        if self._slot_pings >= self._batch_limit():
            slot = max(slot, self._slot + 1)
        return max(first, slot * tick)  # max: never before the ping (float rounding)

    def _batch_limit(self) -> int:
        return max(MIN_BATCH, math.ceil(CATCH_UP * len(self._flows) * self.tick / self.interval))

    def due(self, now: float) -> tuple[list[Flow], list[Flow]]:
        """(flows to ping now, flows now dead). Dead flows are untracked."""
        to_ping: list[Flow] = []
        dead: list[Flow] = []
        slot = math.floor(now / self.tick)
        if slot != self._slot:
            self._slot, self._slot_pings = slot, 0
        budget = self._batch_limit() - self._slot_pings
        heap = self._heap
        interval = self.interval
        while heap and heap[0][0] <= now and len(to_ping) < budget:
            due, _, flow = heapq.heappop(heap)
            ping = self._flows.get(flow)
            if ping is None or ping.due != due:
                continue  # untracked, or re-tracked with another schedule
            if ping.outstanding is not None:
                self._by_branch.pop(ping.outstanding, None)
                ping.outstanding = None
                ping.failures += 1
                if ping.failures >= self.max_failures:
                    del self._flows[flow]
                    dead.append(flow)
                    continue
            nxt = due + interval
            if nxt <= now:  # the runtime was away for long: skip the missed rounds, keep the phase
                nxt += interval * (math.floor((now - nxt) / interval) + 1)
            ping.due = nxt
            heapq.heappush(heap, (nxt, next(self._seq), flow))
            to_ping.append(flow)
        self._slot_pings += len(to_ping)
        return to_ping, dead

    def state(self, flow: Flow) -> PingState | None:
        ping = self._flows.get(flow)
        if ping is None:
            return None
        return PingState(ping.due, ping.failures, ping.sent, ping.outstanding is not None)


def keepalive_options(contact_uri: str, via: str, branch: str, local_host: str) -> Request:
    """The OPTIONS a keepalive sends (RFC 3261 §11): to the phone's Contact, down its flow.
    ``via`` is our complete Via value, ending in ``;branch=`` ``branch``; Call-ID and tags are
    derived from the branch; nothing is expected back but a response."""
    ident = branch[len(BRANCH_PREFIX):]
    return make_request(
        "OPTIONS",
        contact_uri,
        [
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", f"<sip:keepalive@{local_host}>;tag={ident}"),
            ("To", f"<{contact_uri}>"),
            ("Call-ID", f"nk-{ident}"),
            ("CSeq", "1 OPTIONS"),
            ("Content-Length", "0"),
        ],
    )


#: Stands for the ping's identifier in a template (no SIP text holds a NUL).
SLOT = "\x00"


@attrs.frozen
class KeepaliveTemplate:
    """A flow's keepalive OPTIONS as bytes, cut where the ping's identifier goes."""

    contact_uri: str
    parts: tuple[bytes, ...]

    def render(self, ident: str) -> bytes:
        """The OPTIONS with branch ``BRANCH_PREFIX + ident``: the bytes
        ``keepalive_options`` would give for it."""
        return ident.encode().join(self.parts)


def keepalive_template(contact_uri: str, via: str, local_host: str) -> KeepaliveTemplate | None:
    """The template of ``keepalive_options``; ``via`` ends in ``;branch=`` + BRANCH_PREFIX +
    SLOT. None when the slot cannot be found exactly three times (branch, tag, Call-ID)."""
    data = keepalive_options(contact_uri, via, BRANCH_PREFIX + SLOT, local_host).to_bytes()
    parts = tuple(data.split(SLOT.encode()))
    return KeepaliveTemplate(contact_uri, parts) if len(parts) == 4 else None


_BRANCH = b"branch="
_OURS = BRANCH_PREFIX.encode()
_BRANCH_VALUE = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+")


def keepalive_response_branch(data: bytes) -> str | None:
    """The branch of a response to one of our keepalives, read without parsing the message:
    the message's first ``branch=`` parameter (that of the top Via, whose line comes first
    in any response a phone builds from our request) when it starts with BRANCH_PREFIX; None
    for anything else (the caller then parses the message as usual). Costs one search of
    the bytes; whether the branch is an outstanding ping of ours is ``NatKeepalive.answered``'s
    to say (an unguessable identifier: no forged answer keeps a dead flow alive)."""
    i = data.find(_BRANCH)
    if i < 0 or not data.startswith(_OURS, i + 7):
        return None
    m = _BRANCH_VALUE.match(data, i + 7)
    return m.group().decode() if m is not None else None
