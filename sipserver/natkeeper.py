"""Keeping the flows of phones without outbound open (trio side of ``outbound.natping``,
issue 17): the UDP flows of stored bindings come back after a restart, and the keepalive
OPTIONS that ``NatKeepalive`` schedules are sent; a flow that stopped answering is closed.

A flow bound without outbound is kept while a binding lives on it (``bound``); once none does
(the phone unregistered, its binding expired or moved to another flow) it is released to the
ordinary idle timeout (``FlowTable.release_idle_limit``), UDP flows when their next ping falls
due, connections by a sweep that looks at each of them once per keepalive interval.

Cost (50,000 phones on a fraction of a core, ``scripts/bench/nat_keepalive_bench.py``): pings
are sent in batches on ``NatKeepalive``'s grid, each rendered from the flow's template (made
once per flow and Contact: no message built, no flow token computed per ping), and their
responses are taken by ``pong`` before any parsing.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import attrs

from .outbound.flow import CloseCause, Flow, Transport
from .outbound.flowtoken import InvalidToken
from .outbound.natping import (
    BRANCH_PREFIX,
    SLOT,
    KeepaliveTemplate,
    keepalive_options,
    keepalive_response_branch,
    keepalive_template,
)
from .sip.randomness import random_hex
from .transport.errors import FlowGone

if TYPE_CHECKING:
    from .runtime import Server


@attrs.frozen
class _Pinger:
    """What a flow's pings need, worked out once: its token and its OPTIONS template."""

    token: str
    template: KeepaliveTemplate | None  # None: the Contact defeats the template, build each time
    contact_uri: str


class NatKeeper:
    def __init__(self, server: Server) -> None:
        self.server = server
        # Connections bound without outbound (flow -> token), swept once per interval.
        self._pinned: dict[Flow, str] = {}
        self._sweep: collections.deque[Flow] = collections.deque()
        self._swept_at = -math.inf

    def adopt_restored(self) -> None:
        """After a restart, the UDP flows of stored bindings are flows again (issue 17): a
        request for such a binding goes down the stored 5-tuple, an outbound one keeps its
        Flow-Timer deadline (RFC 5626 §5.4)."""
        s = self.server
        now = s.clock.now()
        grace = s.cfg.proxy.keepalive_grace
        for b in s.store.all():
            if b.flow_token is None or b.transport != "udp":
                continue
            try:
                flow = s.codec.decode(b.flow_token)
            except InvalidToken:
                continue  # minted under a key no longer configured: unreachable, expires alone
            limit = s.registrar.flow_timer(flow) + grace if b.outbound else None
            if s.flows.adopt_udp(flow, limit, now):
                if not b.outbound:
                    s.nat.track(flow, now)

    def bound(self, flow: Flow, token: str) -> None:
        """A REGISTER without outbound bound a contact to ``flow`` (an implicit flow): kept
        while a binding lives on it; a UDP one is pinged (the phone sends no keepalives)."""
        s = self.server
        s.flows.set_idle_limit(flow, None)
        if flow.transport is Transport.UDP:
            if flow not in s.nat:
                s.nat.track(flow, s.clock.now())
                s.wake_timer(s.nat.next_deadline())  # its first ping may come before the next wake-up
        elif flow not in self._pinned:
            self._pinned[flow] = token
            self._sweep.append(flow)

    def pong(self, data: bytes) -> bool:
        """A response to a keepalive OPTIONS (any status), recognised before parsing: True when
        ``data`` was one (counted when it answers an outstanding ping), False for anything
        else, which the runtime then handles as usual."""
        branch = keepalive_response_branch(data)
        if branch is None:
            return False
        if self.server.nat.answered(branch):
            self.server.count("nat_keepalives_answered")
        return True

    async def run(self, now: float) -> None:
        """Issue 17: keepalive OPTIONS down the flows of UDP phones without outbound; a flow
        that stopped answering is closed (its bindings go); one left without bindings is
        released to the ordinary idle timeout."""
        s = self.server
        self._sweep_pinned(now)
        to_ping, dead = s.nat.due(now)
        for flow in dead:
            s.count("nat_keepalive_failures")
            if s.flows.is_alive(flow):
                s.flows.close(flow, CloseCause.KEEPALIVE_TIMEOUT)
            else:
                s.on_flow_closed(flow, CloseCause.KEEPALIVE_TIMEOUT)
        send = s.flows.send
        for flow in to_ping:
            pinger = self._pinger(flow)
            if pinger is None:
                s.nat.untrack(flow)
                s.flows.release_idle_limit(flow)
                continue
            if not s.cfg.nat.keepalive:
                continue
            ident = random_hex(8)
            s.nat.sent(flow, BRANCH_PREFIX + ident)
            s.count("nat_keepalives_sent")
            if pinger.template is None or s.tracer.active:
                branch = BRANCH_PREFIX + ident
                via = s.via_for(flow, branch)
                await s.send(flow, keepalive_options(pinger.contact_uri, via, branch, s.local_uri(flow).host))
                continue
            try:
                await send(flow, pinger.template.render(ident))
            except FlowGone:
                pass  # ended and reported by the flow table; no binding lives on a dead flow

    def _pinger(self, flow: Flow) -> _Pinger | None:
        """The flow's ``_Pinger``, made again when its first binding's Contact changed; None
        when no binding lives on the flow any more."""
        s = self.server
        pinger: _Pinger | None = s.nat.memo(flow)
        token = pinger.token if pinger is not None else s.core.token(flow)
        bindings = s.store.flow_bindings(token) if token else []
        if not bindings or token is None:
            return None
        contact = bindings[0].contact_uri
        if pinger is None or pinger.contact_uri != contact:
            via = s.via_for(flow, BRANCH_PREFIX + SLOT)
            pinger = _Pinger(token, keepalive_template(contact, via, s.local_uri(flow).host), contact)
            s.nat.remember(flow, pinger)
        return pinger

    def _sweep_pinned(self, now: float) -> None:
        """Connections bound without outbound whose bindings are all gone (unregistered,
        expired, moved) go back to the idle timeout, so they can be reaped; each is looked at
        once per keepalive interval, a share of them per call."""
        pending = self._sweep
        if not pending:
            return
        s = self.server
        interval = s.nat.interval
        share = len(pending) * min(now - self._swept_at, interval) / interval
        self._swept_at = now
        for _ in range(min(len(pending), max(1, math.ceil(share)))):
            flow = pending.popleft()
            token = self._pinned[flow]
            if not s.flows.is_alive(flow):
                del self._pinned[flow]
            elif not s.store.flow_bindings(token):
                del self._pinned[flow]
                s.flows.release_idle_limit(flow)
            else:
                pending.append(flow)
