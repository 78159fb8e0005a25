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
  itself, so thousands of flows registered in one burst still ping evenly spread over time.
- A ping counts as unanswered only when the next one falls due (a full interval to answer).
- ``due`` never returns a flow twice for one time; an untracked flow is never returned.
"""

from __future__ import annotations

import heapq
import itertools
import zlib

import attrs

from ..sip.build import make_request
from ..sip.message import Request
from .flow import Flow

__all__ = ["BRANCH_PREFIX", "NatKeepalive", "keepalive_options"]

#: Our keepalive OPTIONS carry a branch starting with this (RFC 3261 magic cookie + "nk"), so
#: their responses are recognised without a transaction.
BRANCH_PREFIX = "z9hG4bKnk"


@attrs.define(slots=True)
class _Ping:
    due: float
    failures: int = 0
    outstanding: str | None = None  # branch of the ping not answered yet
    sent: int = 0


@attrs.frozen
class PingState:
    """What ``sipserver ctl`` shows per flow."""

    next_ping: float
    failures: int
    pings_sent: int
    waiting: bool


class NatKeepalive:
    def __init__(self, interval: float, max_failures: int) -> None:
        if not interval > 0:
            raise ValueError("the keepalive interval must be positive")
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.interval = interval
        self.max_failures = max_failures
        self._flows: dict[Flow, _Ping] = {}
        self._by_branch: dict[str, Flow] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = itertools.count()

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

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._flows.get(heap[0][2]) is None:
            heapq.heappop(heap)  # untracked since it was scheduled
        return heap[0][0] if heap else None

    def due(self, now: float) -> tuple[list[Flow], list[Flow]]:
        """(flows to ping now, flows now dead). Dead flows are untracked."""
        to_ping: list[Flow] = []
        dead: list[Flow] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
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
            ping.due = due + self.interval
            if ping.due <= now:  # the runtime was away for long: no catching up in a burst
                ping.due = now + self.interval
            heapq.heappush(heap, (ping.due, next(self._seq), flow))
            to_ping.append(flow)
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
