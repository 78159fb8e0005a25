"""The running server: builds the parts from config and wires them in one trio nursery.

Data flows one way (DESIGN.md): transport -> parser -> transaction layer -> registrar / proxy ->
transaction layer -> serializer -> transport. What to do with a request is decided sans-IO in
``proxy.procedure`` (``ProxyCore``) and ``registrar``; this module parses, matches transactions,
executes the decisions (``forwarding`` for forwarded requests, ``commit`` for the store) and
sleeps until the next deadline.

Invariants:
- A message is handled inline in the task of the connection or socket that read it; tasks are
  spawned only for work that must wait (opening an outgoing connection, name resolution).
- One timer task sleeps until the earliest deadline of transactions, response contexts and
  binding expiry; adding an earlier deadline wakes it.
- Every ``now`` handed to sans-IO code comes from the one ``Clock``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import trio

from . import native, parts
from .auth.credentials import CredentialStore
from .clock import Clock
from .config import Config
from .forwarding import Forwarder, ServerTransaction
from .gcpace import GcPacer
from .looplag import LoopLag
from .media_glue import MediaGlue
from .mgmt.logbudget import LogBudget, log_binding_event
from .mgmt.metrics import Metrics
from .mgmt.trace import Tracer
from .natkeeper import NatKeeper
from .outbound.flow import CloseCause, Flow, Transport
from .outbound.natping import BRANCH_PREFIX, NatKeepalive
from .overload import Shedder
from .proxy.procedure import Forward, ProxyCore, ProxySettings, Register, Reply
from .proxy.routing import KNOWN_METHODS, LocalIdentity, response_flow, stamp_received
from .registrar import (
    LocationStore,
    Put,
    Registrar,
    survives_restart,
)
from .registrar import RemovalCause as StoreRemoval
from .shedding import overload_warning, shed_early, shed_register, store_behind
from .sip import ParseError, Request, Response, make_response, parse_message
from .sip.build import phrase_with_detail
from .sip.framer import FramingError
from .sip.limits import over_limits
from .transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    TimerConfig,
    TransactionTable,
)
from .transport.addresses import LocalAddresses
from .transport.connection import warning_budget
from .transport.errors import FlowGone
from .transport.listeners import BoundListener, serve
from .transport.startup import fit_limits
from .transport.tls import make_server_context

log = logging.getLogger("sipserver")
flow_log = logging.getLogger("sipserver.flow")
reg_log = logging.getLogger("sipserver.registrar")


class Server:
    """Implements the transport's MessageSink and owns every part of the running server."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        os.makedirs(cfg.server.data_dir, exist_ok=True)
        self.clock = Clock()
        self.stats: dict[str, int] = {}
        self.codec, key = parts.flow_token_codec(cfg)
        self.identity = LocalIdentity(domains=set(cfg.server.domains))
        # store.backend (SQLite, Redis or memory): read by ``run``, then written by a child process.
        self.persistence, self.commit = parts.location_store(cfg, self.respond)
        self.store = LocationStore()
        self.registrar = Registrar(parts.registrar_settings(cfg), self.store, self.codec, is_local_domain=self.identity.is_local_domain)
        self.timers = TimerConfig(t1=cfg.transaction.t1, t2=cfg.transaction.t2, t4=cfg.transaction.t4)
        self.transactions = TransactionTable()
        self.flows = parts.flow_table(cfg)
        self.commit.sends = self.flows  # batched sends of the held replies
        self.gate = parts.auth_gate(cfg, key, self.stats)
        self.auth_enabled = self.gate is not None
        self.listeners: list[BoundListener] = []
        self.addresses = LocalAddresses(self.identity, cfg.server.advertise)
        self.udp_local = self.addresses.udp_local
        self.local_uri = self.addresses.uri
        self.via_for = self.addresses.via
        p = cfg.proxy
        self.core = ProxyCore(
            ProxySettings(p.record_route, frozenset(p.relay_domains), cfg.auth.trust_registered_flows, cfg.server.server_header),
            self.identity, self.codec, self.store, self.gate, self.flows.reachable, self.addresses.uri,
        )
        self.forwarder = Forwarder(self)
        self.cluster = parts.join_cluster(self)  # issue 20: None unless [cluster] node_id is set
        self.media = MediaGlue(cfg.media, self.clock) if cfg.media.enabled else None  # issue 18
        self.limiter = parts.rate_limiter(cfg)
        self.shedder = Shedder(cfg.limits.overload_queue_delay)
        self.store_shedder = Shedder(cfg.limits.overload_store_delay)  # REGISTERs (shedding.py)
        self.loop_lag = LoopLag()  # overload signal for every transport (WS, TLS included)
        self.nat = NatKeepalive(cfg.nat.keepalive_interval, cfg.nat.keepalive_failures)
        self.nat_keeper = NatKeeper(self)
        self.nursery: trio.Nursery | None = None
        self.started_at = time.time()
        self._timer_scope: trio.CancelScope | None = None
        self.metrics = Metrics()  # mgmt: responses, flow failures, latency (see mgmt/metrics.py)
        self.gc_pacer = GcPacer()
        self.tracer = Tracer()  # mgmt: POST /trace filters
        self.mgmt_address: tuple[str, int] | None = None  # bound mgmt listener (port 0 resolved)
        self._overload_log = warning_budget("overload")
        self._store_log = warning_budget("location store overload")
        self._rate_log = warning_budget("rate limit")
        # Per-event INFO lines (bindings, closed flows) are capped per second; see logbudget.
        self._reg_log_budget = LogBudget(reg_log, "binding")
        self._flow_log_budget = LogBudget(flow_log, "flow closed")
        self._bad_log_budget = LogBudget(log, "bad message")

    @property
    def credentials(self) -> CredentialStore | None:
        return self.gate.credentials if self.gate is not None else None

    @property
    def authenticated_flows(self) -> dict[Any, str]:
        return self.gate.flow_users if self.gate is not None else {}

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        self.clock.start()
        self.started_at = self.clock.wall()
        # After a restart: UDP bindings and bindings behind an external Path come back; bindings
        # tied to a connection that no longer exists are dropped (issue: registrar).
        keep = self.cluster.keep_at_start(survives_restart) if self.cluster else survives_restart
        self.store.apply([Put(b) for b in self.persistence.load(self.clock.wall(), keep)])
        if self.commit.writer is not None:
            self.persistence.close()
            await self.commit.writer.start()
        ssl_ctx = None
        if any(s.transport in ("tls", "wss") for s in cfg.server.listen):
            ssl_ctx = make_server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca or None, cfg.tls.min_version)
        fit_limits(self.flows, cfg.limits)  # max_connections vs RLIMIT_NOFILE; max_udp_flows
        specs = list(cfg.server.listen)
        gc_was_enabled = gc.isenabled()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if self.media is not None:
                    await nursery.start(self.media.run)  # rtpengine's ng client and call lanes
                await nursery.start(serve, specs, self.flows, self, ssl_ctx, self._bound)
                if self.cluster is not None:
                    await nursery.start(self.cluster.run)
                self.nat_keeper.adopt_restored()
                nursery.start_soon(self._timer_loop)
                if self.shedder.limit > 0:
                    nursery.start_soon(self.loop_lag.run)
                nursery.start_soon(self.commit.run)
                if cfg.mgmt.listen:
                    from .mgmt.api import serve_management

                    self.mgmt_address = await nursery.start(serve_management, self)
                for bl in self.listeners:
                    log.info("listening on %s", bl)
                log.info("code: %s", native.status())
                if self.gate is None:
                    log.warning(
                        "authentication is OFF: anyone can register any user of the served domains "
                        "(configure [users] or auth.credentials_file to turn it on)"
                    )
                # What exists at start-up (modules, configuration, bindings loaded from the store)
                # never needs walking again; from here on collections are paced by the messages
                # handled (GcPacer, docs/performance.md), not by CPython's allocation count.
                gc.freeze()
                gc.disable()
                task_status.started(self)
        finally:
            if gc_was_enabled:  # an embedding program (or the test suite) gets it back
                gc.enable()

    async def shutdown(self) -> None:
        """Flush the store and close (called on SIGINT/SIGTERM before the nursery is cancelled)."""
        await self.commit.flush()
        try:
            self.persistence.close()
        except Exception:  # pragma: no cover - closing must not hide the shutdown
            log.exception("closing the location store failed")

    def reload_credentials(self) -> bool:
        """Re-read the credentials file (SIGHUP, management API). Keeps the old set on error."""
        if self.gate is None:
            log.info("credentials reload requested, but authentication is off")
            return False
        return self.gate.reload(self.cfg.auth.credentials_file)

    def _bound(self, listeners: list[BoundListener]) -> None:
        """The listeners are bound and nothing was read yet: learn our own addresses."""
        self.listeners = listeners
        self.addresses.learn(listeners)

    # ------------------------------------------------------------------ sending
    async def send(self, flow: Flow, message: Request | Response) -> bool:
        data = message.to_bytes()
        if self.tracer.active:
            self.tracer.outgoing(flow, message, data)
        try:
            await self.flows.send(flow, data)
        except FlowGone as err:
            flow_log.info("send failed on %s: %s", flow.id, err.cause)
            return False
        if isinstance(message, Response):
            self.metrics.response_sent(message.status)
        return True

    async def reply(
        self, req: Request, arrival: Flow, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer statelessly (or for a server transaction already accounted for)."""
        await self.send(response_flow(req, arrival), self.core.response(req, status, reason, list(headers)))

    async def respond(self, txn: ServerTransaction, resp: Response) -> None:
        """Send a response through its server transaction (RFC 3261 §17.2)."""
        await self._run_server_actions(txn, txn.send_response(resp, self.clock.now()))

    async def _run_server_actions(self, txn: ServerTransaction, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.send(txn.context, action.message)  # type: ignore[arg-type]
            elif isinstance(action, Terminated):
                self.transactions.remove(txn)
                self.forwarder.server_txn_ended(txn)
        self.wake_timer(txn.next_deadline())

    # ------------------------------------------------------------------ MessageSink
    def on_flow_opened(self, flow: Flow) -> None:
        flow_log.debug("flow opened %s", flow.id)

    def on_keepalive(self, flow: Flow) -> None:
        self.metrics.keepalive(flow, self.clock.now())

    def on_flow_closed(self, flow: Flow, cause: CloseCause) -> None:
        """RFC 5626 §5.3.1 / §6: a dead flow removes its bindings and fails over pending branches."""
        if self._flow_log_budget.allow():
            flow_log.info("flow closed %s (%s)", flow.id, cause)
        self.metrics.flow_closed(flow, cause)
        if self.gate is not None:
            self.gate.forget(flow)
        self.nat.untrack(flow)
        token = self.core.token(flow)
        if cause is CloseCause.SHUTDOWN and flow.transport is Transport.UDP:
            token = None  # a UDP 5-tuple outlives the process: its bindings are kept for the restart
        if token is not None:
            changes = self.store.remove_flow(token, StoreRemoval.FLOW_FAILED)
            if changes:
                self.core.retire(token, [ch.key for ch in changes])
                for ch in changes:
                    if self._reg_log_budget.allow():
                        reg_log.info("binding removed: %s (flow %s %s)", ch.key.text, flow.id, cause)
                self.commit.queue(changes)
                self.metrics.flow_failed(cause)
        self.forwarder.flow_closed(flow)

    async def on_framing_error(self, flow: Flow, error: FramingError) -> None:
        if error.head:
            try:
                msg = parse_message(error.head + b"\r\n\r\n", max_size=1 << 30)
            except ParseError as err:
                msg = err.message  # type: ignore[assignment]
            if isinstance(msg, Request) and msg.has_header("via"):
                await self.reply(msg, flow, error.status, phrase_with_detail(error.status, error.reason))
                return
        log.info("unframeable data on %s: %s", flow.id, error.reason)

    async def on_message(self, flow: Flow, data: bytes) -> None:
        """Traces the message when asked (mgmt), times its handling for the latency histogram."""
        if self.tracer.active:
            self.tracer.incoming(flow, data)
        if data.startswith(b"SIP/2.0 ") and self.nat_keeper.pong(data):
            return  # issue 17: a keepalive answered, taken without parsing (NatKeeper.pong)
        if self.shedder.limit > 0:
            self.loop_lag.poke()
            if await shed_early(self, flow, data):
                return  # issue 19: overloaded, a new request answered 503 from its bytes
        start = time.perf_counter()  # processing cost, not protocol time: not the Clock
        try:
            await self._on_message(flow, data)
        finally:
            self.metrics.processing.observe(time.perf_counter() - start)
            self.gc_pacer.message(start)

    async def _on_message(self, flow: Flow, data: bytes) -> None:
        lim = self.cfg.limits
        try:
            msg = parse_message(data, stream=flow.transport in (Transport.TCP, Transport.TLS), max_size=lim.max_message_size)
        except ParseError as err:
            await self._parse_error(flow, err)
            return
        problem = over_limits(msg, lim.max_headers, lim.max_vias, lim.max_route_values)
        if problem is not None:
            await self._parse_error(flow, ParseError(problem, 400, msg))
            return
        try:
            if isinstance(msg, Request):
                await self._on_request(msg, flow)
            elif not (msg.top_via.branch or "").startswith(BRANCH_PREFIX):
                await self.forwarder.on_response(msg)  # type: ignore[arg-type]
            elif self.nat.answered(msg.top_via.branch or ""):
                self.count("nat_keepalives_answered")
        except ParseError as err:
            err.message = msg
            await self._parse_error(flow, err)

    async def _parse_error(self, flow: Flow, err: ParseError) -> None:
        msg = err.message
        if self._bad_log_budget.allow():
            log.info("bad message from %s: %s (%d)", flow.id, err.reason, err.status)
        self.count("parse_errors")
        if isinstance(msg, Request) and msg.method != "ACK":
            try:
                msg.top_via  # noqa: B018 - a response needs a Via to go anywhere
            except ParseError:
                if flow.transport is Transport.UDP:
                    return
            reason = phrase_with_detail(err.status, err.reason)
            try:
                await self.reply(msg, flow, err.status, reason)
            except ParseError:
                await self.send(flow, make_response(msg, err.status, reason))
        # responses that fail to parse are dropped (RFC 4475 bigcode, scalarlg)

    # ------------------------------------------------------------------ requests
    async def _on_request(self, req: Request, flow: Flow) -> None:
        method = req.method
        self.count(f"requests_{method}" if method in KNOWN_METHODS else "requests_other")
        if flow.transport is Transport.UDP:
            self.nat.heard(flow)
        stamp_received(req, flow.remote)
        now = self.clock.now()
        if self.limiter is not None and not self.limiter.allow(flow.remote[0], now):
            await self._rate_limited(req, flow, now)
            return
        if method == "CANCEL":
            await self._on_cancel(req, flow)
            return
        txn = self.transactions.find_server(req)
        if txn is not None:
            await self._run_server_actions(txn, txn.on_request(req, now))
            return
        if method == "ACK":
            await self.forwarder.forward_stateless(req, flow)
            return
        if self.shedder.limit > 0 and req.to_tag is None and self.shedder.overloaded(self._queue_delay(now), now):
            await self._shed(req, flow)  # in-dialog requests (BYE above all) end work: never shed
            return
        if method == "REGISTER" and req.to_tag is None and store_behind(self, now):
            await shed_register(self, req, flow, now)  # limits.overload_store_delay
            return
        cls = InviteServerTransaction if method == "INVITE" else NonInviteServerTransaction
        txn = cls(req, flow.transport.reliable, self.timers, now, context=response_flow(req, flow))
        self.transactions.add(txn)
        self.wake_timer(txn.next_deadline())
        if method == "INVITE":
            await self.respond(txn, self.core.response(req, 100))
        decision = self.core.handle(req, flow, now, self.clock.wall())
        if isinstance(decision, Reply):
            await self.respond(txn, self.core.response(req, decision.status, decision.reason, decision.headers))
        elif isinstance(decision, Register):
            await self._register(req, flow, txn, decision.user)
        else:
            assert isinstance(decision, Forward)
            await self.forwarder.start(decision, flow, txn)

    async def _rate_limited(self, req: Request, flow: Flow, now: float) -> None:
        """A source over ``rate_limit.requests_per_second``: 503 naming the setting (or dropped,
        ``rate_limit.action = "drop"``), and a budgeted WARNING naming it too (issue 16)."""
        assert self.limiter is not None
        self.count("rate_limited")
        rl = self.cfg.rate_limit
        self._rate_log.warning(
            "rate limit: %s sends more than rate_limit.requests_per_second = %s (burst %s); its "
            "requests are %s; raise the setting if this source is a NAT or proxy of many phones",
            flow.remote[0], rl.requests_per_second, rl.burst, "answered 503" if rl.action == "reject" else "dropped",
        )
        if rl.action == "reject" and req.method != "ACK":
            ra = self.limiter.retry_after(flow.remote[0], now)
            reason = "Service Unavailable (rate limit: rate_limit.requests_per_second)"
            await self.reply(req, flow, 503, reason, [("Retry-After", str(ra))])

    async def _shed(self, req: Request, flow: Flow) -> None:
        """Overload control (``limits.overload_queue_delay``): answer a new request 503 with
        Retry-After, statelessly, instead of handling it (RFC 3261 §21.5.4). Answering costs a
        fraction of handling, so the queue drains, and clients back off instead of
        retransmitting into it."""
        self.count("overload_rejected")
        retry = self.cfg.limits.overload_retry_after
        overload_warning(self)
        await self.reply(req, flow, 503, "Service Unavailable (overload)", [("Retry-After", str(retry))])

    def _queue_delay(self, now: float) -> float:
        """The overload signal (issue 19): the longest of the socket queues' delays (kernel
        timestamps), the event loop's lag and held REGISTER replies' wait outside store writes."""
        return max(
            self.flows.udp_queue_delay, self.flows.stream_queue_delay, self.loop_lag.lag,
            self.commit.age_outside_writes(now),
        )

    async def _on_cancel(self, req: Request, flow: Flow) -> None:
        """RFC 3261 §16.10: answer 200 hop by hop, cancel the pending branches."""
        invite_txn = self.transactions.find_invite_for_cancel(req)
        if invite_txn is None:
            await self.reply(req, flow, 481, "Call/Transaction Does Not Exist")
            return
        await self.reply(req, flow, 200)
        await self.forwarder.on_cancel(invite_txn)

    async def _register(self, req: Request, flow: Flow, txn: ServerTransaction, user: str | None) -> None:
        result = self.registrar.handle(req, flow, now=self.clock.wall(), local_uri=self.local_uri(flow))
        if user is not None and result.flow_token is not None and self.gate is not None:
            self.gate.remember(flow, user)  # auth.trust_registered_flows, checked against live bindings
        for ev in result.events:
            log_binding_event(ev, flow, self._reg_log_budget)
        if result.outbound_flow:
            # RFC 5626 §5.4: the flow is dead after Flow-Timer plus a grace period of silence.
            self.flows.set_idle_limit(flow, self.registrar.flow_timer(flow) + self.cfg.proxy.keepalive_grace)
            self.nat.untrack(flow)
        elif result.flow_token is not None:
            self.nat_keeper.bound(flow, result.flow_token)  # issue 17: kept (UDP: pinged) while bound
        resp = result.response
        if self.cfg.server.server_header:
            resp.add_header("Server", self.cfg.server.server_header)
        if result.changes and self.commit.durable:
            # Group commit: the 200 leaves after the batch holding these changes is on disk; the
            # writer task sends it, so the connection (or the whole UDP socket) keeps reading
            # and further REGISTERs join the same batch.
            self.commit.queue(result.changes, (txn, resp))
            return
        await self.respond(txn, resp)

    # ------------------------------------------------------------------ timers
    def wake_timer(self, deadline: float | None) -> None:
        scope = self._timer_scope
        if deadline is not None and scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _next_deadline(self, now: float) -> float:
        """The earliest deadline, at most a second away (log budgets and GC pacing tick each
        second)."""
        nxt = now + 1.0
        for d in (self.transactions.next_deadline(), self.forwarder.next_deadline(), self.nat.next_deadline()):
            if d is not None and d < nxt:
                nxt = d
        expiry = self.store.next_deadline()
        if expiry is not None:
            nxt = min(nxt, self.clock.from_wall(expiry))
        return nxt

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._next_deadline(self.clock.now())) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = self.clock.now()
            for txn, actions in self.transactions.handle_timers(now):
                if isinstance(txn, (InviteClientTransaction, NonInviteClientTransaction)):
                    await self.forwarder.run_client_actions(txn, actions)
                else:
                    await self._run_server_actions(txn, actions)
            await self.forwarder.handle_timers(now)
            await self.nat_keeper.run(now)
            self._reg_log_budget.tick()
            self._flow_log_budget.tick()
            self._bad_log_budget.tick()
            self.gc_pacer.idle(time.perf_counter())
            expired = self.store.expire(self.clock.wall())
            if expired:
                for ch in expired:
                    if self._reg_log_budget.allow():
                        reg_log.info("binding expired: %s", ch.key.text)
                self.commit.queue(expired)

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


__all__ = ["Server"]
