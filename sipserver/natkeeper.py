"""Keeping the flows of phones without outbound open (trio side of ``outbound.natping``,
issue 17): the UDP flows of stored bindings come back after a restart, and the keepalive
OPTIONS that ``NatKeepalive`` schedules are sent; a flow that stopped answering is closed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .outbound.flow import CloseCause
from .outbound.flowtoken import InvalidToken
from .outbound.natping import BRANCH_PREFIX, keepalive_options
from .sip.randomness import random_hex

if TYPE_CHECKING:
    from .runtime import Server


class NatKeeper:
    def __init__(self, server: Server) -> None:
        self.server = server

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

    async def run(self, now: float) -> None:
        """Issue 17: keepalive OPTIONS down the flows of UDP phones without outbound; a flow
        that stopped answering is closed (its bindings go); one left without bindings is
        released to the ordinary idle timeout."""
        s = self.server
        to_ping, dead = s.nat.due(now)
        for flow in dead:
            s.count("nat_keepalive_failures")
            if s.flows.is_alive(flow):
                s.flows.close(flow, CloseCause.KEEPALIVE_TIMEOUT)
            else:
                s.on_flow_closed(flow, CloseCause.KEEPALIVE_TIMEOUT)
        for flow in to_ping:
            token = s.core.token(flow)
            bindings = s.store.flow_bindings(token) if token else []
            if not bindings:
                s.nat.untrack(flow)
                s.flows.set_idle_limit(flow, s.cfg.limits.idle_flow_timeout)
            elif s.cfg.nat.keepalive:
                branch = BRANCH_PREFIX + random_hex(8)
                s.nat.sent(flow, branch)
                s.count("nat_keepalives_sent")
                via = s.via_for(flow, branch)
                await s.send(flow, keepalive_options(bindings[0].contact_uri, via, branch, s.local_uri(flow).host))

