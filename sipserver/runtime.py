"""The running server: builds the parts from config and wires them in one trio nursery.

Data flows one way (DESIGN.md): transport -> parser -> transaction layer -> registrar / proxy ->
transaction layer -> serializer -> transport. Everything protocol-shaped is sans-IO and lives in
``sipserver.sip``, ``transaction``, ``registrar``, ``proxy``, ``outbound`` and ``auth``; this module
only executes what those return: it sends bytes, sleeps until the next deadline and commits the
location store.

Invariants:
- A message is handled inline in the task of the connection or socket that read it; tasks are
  spawned only for work that must wait (opening an outgoing connection, name resolution).
- One timer task sleeps until the earliest deadline of transactions, response contexts and
  binding expiry; adding an earlier deadline wakes it.
- REGISTERs are committed with group commit: every change handled before the writer picks up
  the batch is written in one SQLite transaction, and each 200 OK leaves only after its batch.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any, cast

import attrs
import trio

from .auth.credentials import CredentialStore
from .auth.digest import DigestAuthenticator, parse_credentials
from .auth.limits import FailureBan, TokenBucketLimiter
from .config import Config
from .gcpace import GcPacer
from .mgmt.logbudget import LogBudget
from .mgmt.metrics import Metrics
from .mgmt.trace import Tracer
from .outbound.flow import Flow, Transport
from .outbound.flowtoken import FlowTokenCodec, InvalidToken
from .outbound.keyfile import load_or_create_key, parse_secret
from .proxy.context import (
    AbandonBranch,
    BranchFailure,
    CancelBranch,
    Candidate,
    Done,
    FinalResponse,
    ForwardResponse,
    RemoveBinding,
    ResponseContext,
    StartBranch,
    Target,
)
from .proxy.routing import (
    KNOWN_METHODS,
    LocalIdentity,
    check_max_forwards,
    client_wants_outbound,
    is_dialog_creating,
    preprocess_routes,
    record_route_uri,
    restore_strict_route,
    transport_for_uri,
    unsupported_proxy_require,
)
from .registrar import (
    Binding,
    Delete,
    LocationStore,
    MemoryPersistence,
    PersistenceError,
    Put,
    Registrar,
    RegistrarSettings,
    SqlitePersistence,
    survives_restart,
)
from .registrar import RemovalCause as StoreRemoval
from .registrar.sqlite_store import batch_rows
from .sip import (
    NameAddr,
    ParseError,
    Request,
    Response,
    SipURI,
    make_cancel,
    make_response,
    parse_message,
    reason_phrase,
)
from .sip.build import MAGIC_COOKIE
from .sip.framer import FramingError
from .sip.randomness import random_hex
from .sip.uri import parse_uri
from .store_writer import StoreWriterProcess
from .transaction import (
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionTable,
    TransportError,
)
from .transport.connection import RateLimitedLog
from .transport.errors import ConnectFailed, FlowGone
from .transport.flows import FlowLimits, FlowTable
from .transport.listeners import BoundListener, ListenerSpec, serve
from .transport.tls import make_server_context

log = logging.getLogger("sipserver")
flow_log = logging.getLogger("sipserver.flow")
reg_log = logging.getLogger("sipserver.registrar")
proxy_log = logging.getLogger("sipserver.proxy")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, PUBLISH, INFO, UPDATE, PRACK"


@attrs.define(eq=False)
class Dest:
    """Where one branch goes: a known flow, or an address to reach (then a flow is made)."""

    request_uri: str
    route_set: list[str]
    flow: Flow | None = None
    uri: SipURI | None = None  # next hop when no flow: Contact or Route URI
    binding: Binding | None = None
    ob: bool = False  # the callee side asked for outbound (its Record-Route gets ;ob)


@attrs.define(eq=False)
class ProxyJob:
    """State of one statefully forwarded request: server transaction + response context."""

    request: Request  # after route processing and Max-Forwards decrement
    arrival: Flow
    server_txn: Any
    context: ResponseContext
    caller_rr: str | None
    branches: dict[int, tuple[Any, Dest, Request]] = attrs.field(factory=dict)
    to_tag: str = ""


class Server:
    """Implements the transport's MessageSink and owns every part of the running server."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        data_dir = cfg.server.data_dir
        os.makedirs(data_dir, exist_ok=True)
        # Flow tokens: key from config or generated file (0600); previous keys still verify.
        if cfg.outbound.secret:
            key = parse_secret(cfg.outbound.secret)
        else:
            key = load_or_create_key(cfg.flow_token_key_path)
        previous = [parse_secret(s) for s in cfg.outbound.previous_secrets]
        self.codec = FlowTokenCodec(key, previous)
        self.identity = LocalIdentity(domains=set(cfg.server.domains))
        # SQLite: opened here (a bad path fails at start-up) and read by ``run``; from then on
        # a child process writes it (store_writer: SQLite off the event loop's GIL).
        self.writer: StoreWriterProcess | None = None
        if cfg.store.backend == "sqlite":
            self.persistence: Any = SqlitePersistence(cfg.store_path)
            self.writer = StoreWriterProcess(str(cfg.store_path))
        else:
            self.persistence = MemoryPersistence()
        self.store = LocationStore()
        r = cfg.registrar
        self.registrar = Registrar(
            RegistrarSettings(
                min_expires=r.min_expires,
                max_expires=r.max_expires,
                default_expires=r.default_expires,
                flow_timer=r.flow_timer,
                outbound_without_first_hop=r.outbound_without_first_hop,
                gruu=r.gruu,
                require_instance=r.require_instance,
            ),
            self.store,
            self.codec,
            is_local_domain=self.identity.is_local_domain,
        )
        t = cfg.transaction
        self.timers = TimerConfig(t1=t.t1, t2=t.t2, t4=t.t4)
        self.transactions = TransactionTable()
        lim = cfg.limits
        self.flows = FlowTable(
            serial_base=(int(time.time()) & 0xFFFFFFFF) << 24,
            limits=FlowLimits(
                max_connections=lim.max_connections,
                max_connections_per_ip=lim.max_connections_per_ip,
                partial_message_timeout=lim.partial_message_timeout,
                idle_flow_timeout=lim.idle_flow_timeout,
                max_message_size=lim.max_message_size,
                udp_warn_size=lim.udp_warn_size,
            ),
        )
        # Auth
        self.auth_enabled = cfg.auth_enabled
        realm = cfg.auth.realm or (cfg.server.domains[0] if cfg.server.domains else "sipserver")
        self.realm = realm
        self.credentials: CredentialStore | None = None
        if self.auth_enabled:
            if cfg.auth.credentials_file:
                self.credentials = CredentialStore.load_file(cfg.auth.credentials_file, realm)
            else:
                users = {
                    name: {k: v for k, v in attrs.asdict(u).items() if v}
                    for name, u in cfg.users.items()
                }
                self.credentials = CredentialStore.from_users(realm, users)
        auth_secret = parse_secret(cfg.auth.secret) if cfg.auth.secret else hashlib.sha256(b"digest-nonce:" + key).digest()
        self.authenticator = DigestAuthenticator(
            realm, auth_secret, nonce_lifetime=cfg.auth.nonce_lifetime, algorithms=tuple(cfg.auth.algorithms)
        )
        self.ban = FailureBan(cfg.auth.max_failures, cfg.auth.failure_window, cfg.auth.ban_time)
        self.authenticated_flows: dict[Flow, str] = {}
        rl = cfg.rate_limit
        self.limiter = TokenBucketLimiter(rl.requests_per_second, rl.burst) if rl.enabled else None
        # Runtime state
        self.listeners: list[BoundListener] = []
        self.jobs_by_server_txn: dict[int, ProxyJob] = {}
        self.branch_owner: dict[int, tuple[ProxyJob, int]] = {}  # id(client txn) -> job, branch
        self.branches_by_flow: dict[Flow, set[tuple[ProxyJob, int]]] = {}
        self.nursery: trio.Nursery | None = None
        self.started_at = time.time()
        self._timer_scope: trio.CancelScope | None = None
        self._pending_writes: list[Any] = []
        self._pending_replies: list[tuple[Any, Response]] = []
        self._local_uris: dict[tuple[Transport, tuple[str, int]], SipURI] = {}
        self._write_event = trio.Event()
        self._batch_done: trio.Event = trio.Event()
        self.stats: dict[str, int] = {}
        self.metrics = Metrics()  # mgmt: responses, flow failures, latency (see mgmt/metrics.py)
        self.gc_pacer = GcPacer()
        self._overload_log = RateLimitedLog()
        self._shedding = False
        self.tracer = Tracer()  # mgmt: POST /trace filters
        self.mgmt_address: tuple[str, int] | None = None  # bound mgmt listener (port 0 resolved)
        self.udp_local: dict[int, tuple[str, int]] = {}
        # Per-event INFO lines (bindings, closed flows) are capped per second; see logbudget.
        self._reg_log_budget = LogBudget(reg_log, "binding")
        self._flow_log_budget = LogBudget(flow_log, "flow closed")

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        now = time.time()
        # After a restart: UDP bindings and bindings behind an external Path come back; bindings
        # tied to a connection that no longer exists are dropped (issue: registrar).
        self.store.apply([Put(b) for b in self.persistence.load(now, survives_restart)])
        if self.writer is not None:
            self.persistence.close()
            await self.writer.start()
        ssl_ctx = None
        if any(s.transport in ("tls", "wss") for s in cfg.server.listen):
            ssl_ctx = make_server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca or None, cfg.tls.min_version)
        specs = [ListenerSpec(s.transport, s.host, s.port, s.path) for s in cfg.server.listen]
        gc_was_enabled = gc.isenabled()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await nursery.start(serve, specs, self.flows, self, ssl_ctx, self._bound)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._writer_loop)
                if cfg.mgmt.listen:
                    from .mgmt.api import serve_management

                    self.mgmt_address = await nursery.start(serve_management, self)
                for bl in self.listeners:
                    log.info("listening on %s", bl)
                if not self.auth_enabled:
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
        await self._flush_writes()
        try:
            self.persistence.close()
        except Exception:  # pragma: no cover - closing must not hide the shutdown
            log.exception("closing the location store failed")

    def reload_credentials(self) -> bool:
        """Re-read the credentials file (SIGHUP, management API). Keeps the old set on error."""
        path = self.cfg.auth.credentials_file
        if not self.auth_enabled or not path:
            log.info("credentials reload requested, but no auth.credentials_file is configured")
            return False
        try:
            self.credentials = CredentialStore.load_file(path, self.realm)
        except Exception as exc:
            log.error("credentials reload failed, keeping the previous users: %s", exc)
            return False
        log.info("credentials reloaded from %s: %d users", path, len(self.credentials.users()))
        return True

    def _bound(self, listeners: list[BoundListener]) -> None:
        """The listeners are bound and nothing was read yet: learn our own addresses."""
        self.listeners = listeners
        self._learn_identity()

    def _learn_identity(self) -> None:
        ident = self.identity
        advertise = self.cfg.server.advertise
        if advertise:
            ident.add_host(advertise)
        for bl in self.listeners:
            ident.ports.add(bl.port)
            if bl.host in ("0.0.0.0", "::"):
                for host in _local_addresses(bl.host == "::"):
                    ident.add_host(host)
            else:
                ident.add_host(bl.host)
            if bl.transport == "udp":
                self.udp_local[socket.AF_INET6 if ":" in bl.host else socket.AF_INET] = (bl.host, bl.port)

    # ------------------------------------------------------------------ local URIs
    def local_uri(self, flow: Flow) -> SipURI:
        key = (flow.transport, flow.local)
        uri = self._local_uris.get(key)
        if uri is None:
            uri = self._local_uris[key] = self._make_local_uri(flow)
        return uri

    def _make_local_uri(self, flow: Flow) -> SipURI:
        """This server's URI on the listener a flow belongs to (Via, Record-Route, Path).
        Accepted connections know their real local address; a wildcard UDP socket does not,
        so the advertised (or detected) address stands in for it."""
        host = flow.local[0]
        if host in ("0.0.0.0", "::", ""):
            host = self.cfg.server.advertise or _default_host(host == "::")
        params: list[tuple[str, str | None]] = []
        if flow.transport is not Transport.UDP:
            params.append(("transport", flow.transport.uri_param))
        return SipURI("sip", None, None, host, flow.local[1], params, None)

    def via_for(self, flow: Flow, branch: str) -> str:
        uri = self.local_uri(flow)
        return f"SIP/2.0/{flow.transport.value} {uri.hostport};branch={branch}"

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

    def response_flow(self, req: Request, arrival: Flow) -> Flow:
        """RFC 3261 §18.2.2 / RFC 3581: on streams the arrival connection; on UDP the source
        address when rport was asked for, else received (source IP) and the Via port."""
        if arrival.transport is not Transport.UDP:
            return arrival
        via = req.top_via
        if via.wants_rport:
            return arrival
        port = via.port or 5060
        if (arrival.remote[0], port) == arrival.remote:
            return arrival
        return Flow(Transport.UDP, arrival.local, (arrival.remote[0], port), 0)

    async def reply(
        self, req: Request, arrival: Flow, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer statelessly (or for a server transaction already accounted for)."""
        resp = self._response(req, status, reason, headers)
        await self.send(self.response_flow(req, arrival), resp)

    def _response(
        self, req: Request, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        hdrs = list(headers)
        if self.cfg.server.server_header:
            hdrs.append(("Server", self.cfg.server.server_header))
        to_tag = None
        if status > 100:
            to_tag = _stable_tag(req)
        return make_response(req, status, reason, to_tag=to_tag, headers=hdrs)

    # ------------------------------------------------------------------ MessageSink
    def on_flow_opened(self, flow: Flow) -> None:
        flow_log.debug("flow opened %s", flow.id)

    def on_keepalive(self, flow: Flow) -> None:
        self.metrics.keepalive(flow, trio.current_time())

    def on_flow_closed(self, flow: Flow, cause: str) -> None:
        """RFC 5626 §5.3.1 / §6: a dead flow removes its bindings and fails over pending branches."""
        if self._flow_log_budget.allow():
            flow_log.info("flow closed %s (%s)", flow.id, cause)
        self.metrics.flow_closed(flow, cause)
        self.authenticated_flows.pop(flow, None)
        try:
            token = self.codec.encode(flow)
        except ValueError:
            token = None
        if token is not None:
            changes = self.store.remove_flow(token, StoreRemoval.FLOW_FAILED)
            if changes:
                for ch in changes:
                    if self._reg_log_budget.allow():
                        reg_log.info("binding removed: %s (flow %s %s)", _key_text(ch), flow.id, cause)
                self._queue_writes(changes)
                self.metrics.flow_failed(cause)
        pending = self.branches_by_flow.pop(flow, None)
        if pending and self.nursery is not None:
            for job, branch_id in list(pending):
                self.nursery.start_soon(self._branch_failed, job, branch_id, BranchFailure.TRANSPORT)

    async def on_framing_error(self, flow: Flow, error: FramingError) -> None:
        if error.head:
            try:
                msg = parse_message(error.head + b"\r\n\r\n", max_size=1 << 30)
            except ParseError as err:
                msg = err.message  # type: ignore[assignment]
            if isinstance(msg, Request) and msg.has_header("via"):
                await self.reply(msg, flow, error.status, f"{reason_phrase(error.status)} ({_clean(error.reason)})")
                return
        log.info("unframeable data on %s: %s", flow.id, error.reason)

    async def on_message(self, flow: Flow, data: bytes) -> None:
        """Traces the message when asked (mgmt), times its handling for the latency histogram."""
        if self.tracer.active:
            self.tracer.incoming(flow, data)
        start = time.perf_counter()
        try:
            await self._on_message(flow, data)
        finally:
            self.metrics.processing.observe(time.perf_counter() - start)
            self.gc_pacer.message(start)

    async def _on_message(self, flow: Flow, data: bytes) -> None:
        try:
            msg = parse_message(
                data,
                stream=flow.transport in (Transport.TCP, Transport.TLS),
                max_size=self.cfg.limits.max_message_size,
            )
        except ParseError as err:
            await self._parse_error(flow, err)
            return
        lim = self.cfg.limits
        if msg.header_count() > lim.max_headers or len(msg.vias) > lim.max_vias:
            what = "headers" if msg.header_count() > lim.max_headers else "Via values"
            limit = lim.max_headers if what == "headers" else lim.max_vias
            await self._parse_error(flow, ParseError(f"too many {what} (limit {limit})", 400, msg))
            return
        try:
            if isinstance(msg, Request):
                await self._on_request(msg, flow)
            else:
                await self._on_response(msg, flow)  # type: ignore[arg-type]
        except ParseError as err:
            err.message = msg
            await self._parse_error(flow, err)

    async def _parse_error(self, flow: Flow, err: ParseError) -> None:
        msg = err.message
        log.info("bad message from %s: %s (%d)", flow.id, err.reason, err.status)
        self._count("parse_errors")
        if isinstance(msg, Request) and msg.method != "ACK":
            try:
                msg.top_via  # noqa: B018 - a response needs a Via to go anywhere
            except ParseError:
                if flow.transport is Transport.UDP:
                    return
            reason = f"{reason_phrase(err.status)} ({_clean(err.reason)})"
            try:
                await self.reply(msg, flow, err.status, reason)
            except ParseError:
                resp = make_response(msg, err.status, reason)
                await self.send(flow, resp)
        # responses that fail to parse are dropped (RFC 4475 bigcode, scalarlg)

    # ------------------------------------------------------------------ requests
    def _fix_via(self, req: Request, flow: Flow) -> None:
        """RFC 3261 §18.2.1 received, RFC 3581 rport on the top Via."""
        via = req.top_via
        changes: dict[str, str | None] = {}
        src_ip, src_port = flow.remote
        if via.host != src_ip:
            changes["received"] = src_ip
        if via.wants_rport:
            changes["rport"] = str(src_port)
            changes.setdefault("received", src_ip)
        if changes:
            req.replace_top_via(via.with_params(**changes))

    async def _on_request(self, req: Request, flow: Flow) -> None:
        self._count(f"requests_{req.method}" if req.method in KNOWN_METHODS else "requests_other")
        self._fix_via(req, flow)
        now = trio.current_time()
        if self.limiter is not None and not self.limiter.allow(flow.remote[0], now):
            self._count("rate_limited")
            if self.cfg.rate_limit.action == "reject" and req.method != "ACK":
                ra = self.limiter.retry_after(flow.remote[0], now)
                await self.reply(req, flow, 503, "Service Unavailable (rate limit)", [("Retry-After", str(ra))])
            return
        method = req.method
        if method == "ACK":
            txn = self.transactions.find_server(req)
            if txn is not None:
                await self._run_server_actions(txn, txn.on_request(req, now))
                return
            await self._forward_stateless(req, flow)
            return
        if method == "CANCEL":
            await self._on_cancel(req, flow, now)
            return
        txn = self.transactions.find_server(req)
        if txn is not None:
            await self._run_server_actions(txn, txn.on_request(req, now))
            return
        if flow.transport is Transport.UDP and self._overloaded():
            await self._shed(req, flow)
            return
        reliable = flow.transport.reliable
        if method == "INVITE":
            txn = InviteServerTransaction(req, reliable, self.timers, now, context=self.response_flow(req, flow))
        else:
            txn = NonInviteServerTransaction(req, reliable, self.timers, now, context=self.response_flow(req, flow))
        self.transactions.add(txn)
        self._wake_timer(txn.next_deadline())
        if method == "INVITE":
            await self._txn_respond(txn, self._response(req, 100))
        await self._dispatch(req, flow, txn)

    def _overloaded(self) -> bool:
        """Shedding starts when a request waited longer than the limit and goes on until the
        waits are under a quarter of it: stopping at the limit itself would keep a standing
        queue of about the limit (measured: every request 200 ms late at 6,000/s)."""
        limit = self.cfg.limits.overload_queue_delay
        if limit <= 0:
            return False
        delay = self.flows.udp_queue_delay
        if self._shedding:
            if delay < limit / 4:
                self._shedding = False
        elif delay > limit:
            self._shedding = True
        return self._shedding

    async def _shed(self, req: Request, flow: Flow) -> None:
        """Overload control (``limits.overload_queue_delay``): answer a new request 503 with
        Retry-After, statelessly, instead of handling it (RFC 3261 §21.5.4). Answering costs a
        fraction of handling, so the queue drains, and clients back off instead of
        retransmitting into it."""
        self._count("overload_rejected")
        delay = self.flows.udp_queue_delay
        retry = self.cfg.limits.overload_retry_after
        self._overload_log.warning(
            "overload: UDP requests waited %.0f ms in the socket queue (limit %.0f ms); "
            "answering new requests 503 with Retry-After: %d until it drains",
            delay * 1000,
            self.cfg.limits.overload_queue_delay * 1000,
            retry,
        )
        await self.reply(
            req, flow, 503, "Service Unavailable (overload)", [("Retry-After", str(retry))]
        )

    async def _txn_respond(self, txn: Any, resp: Response) -> None:
        now = trio.current_time()
        await self._run_server_actions(txn, txn.send_response(resp, now))

    async def _run_server_actions(self, txn: Any, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.send(txn.context, action.message)
            elif isinstance(action, Terminated):
                self.transactions.remove(txn)
                self.jobs_by_server_txn.pop(id(txn), None)
        deadline = txn.next_deadline()
        if deadline is not None:
            self._wake_timer(deadline)

    async def _dispatch(self, req: Request, flow: Flow, txn: Any) -> None:
        # Requests this server answers itself.
        uri = req.uri
        if not isinstance(uri, SipURI):
            await self._txn_respond(txn, self._response(req, 416, f"Unsupported URI Scheme ({uri.scheme})"))
            return
        if req.method == "REGISTER" and self.identity.is_local_domain(uri.host) and not self._foreign_route(req):
            await self._register(req, flow, txn)
            return
        to_us = uri.user is None and self.identity.is_local_domain(uri.host) and not self._foreign_route(req)
        mf = req.max_forwards
        if req.method == "OPTIONS" and (to_us or mf == 0):
            await self._txn_respond(
                txn,
                self._response(
                    req,
                    200,
                    headers=[
                        ("Allow", ALLOW),
                        ("Supported", "path, outbound, gruu"),
                        ("Accept", "application/sdp, text/plain, message/sipfrag"),
                    ],
                ),
            )
            return
        if to_us and req.method != "ACK" and not req.routes:
            if req.method in KNOWN_METHODS:
                await self._txn_respond(
                    txn, self._response(req, 405, f"Method Not Allowed ({req.method} addressed to the server)", [("Allow", "OPTIONS, REGISTER")])
                )
            else:
                await self._txn_respond(txn, self._response(req, 501, f"Not Implemented ({req.method})", [("Allow", ALLOW)]))
            return
        await self._proxy(req, flow, txn)

    def _foreign_route(self, req: Request) -> bool:
        """A Route naming somebody else: the request is not for this server's own handling."""
        for r in req.routes:
            u = r.uri
            if not isinstance(u, SipURI) or not self.identity.is_ours(u):
                return True
        return False

    # ------------------------------------------------------------------ auth
    async def _check_auth(self, req: Request, flow: Flow, txn: Any, *, register: bool) -> str | None:
        """Digest auth (RFC 3261 §22). Returns the authenticated user, or None after answering."""
        now = trio.current_time()
        ip = flow.remote[0]
        if self.ban.is_banned(ip, now):
            self._count("auth_banned")
            await self._txn_respond(txn, self._response(req, 403, "Forbidden (too many failed authentications)"))
            return None
        header = "Authorization" if register else "Proxy-Authorization"
        stale = False
        assert self.credentials is not None
        for value in req.header_lines(header):
            creds = parse_credentials(value)
            if creds is None or creds.realm != self.realm:
                continue
            result = self.authenticator.verify(creds, req.method, self.credentials.lookup, now)
            if result.ok:
                self.ban.record_success(ip, now)
                return result.username
            if result.stale:
                stale = True
                continue
            self._count("auth_failures")
            log.info("authentication failed from %s for %r: %s", ip, creds.username, result.reason)
            self.ban.record_failure(ip, now)
        status = 401 if register else 407
        hname = "WWW-Authenticate" if register else "Proxy-Authenticate"
        hdrs = [(hname, c) for c in self.authenticator.challenge(now, stale=stale)]
        await self._txn_respond(txn, self._response(req, status, None, hdrs))
        return None

    # ------------------------------------------------------------------ registrar
    async def _register(self, req: Request, flow: Flow, txn: Any) -> None:
        if self.auth_enabled:
            user = await self._check_auth(req, flow, txn, register=True)
            if user is None:
                return
            to_uri = req.to.uri
            if not isinstance(to_uri, SipURI) or to_uri.user_unescaped != user:
                await self._txn_respond(txn, self._response(req, 403, "Forbidden (authenticated user does not match To)"))
                return
            self.authenticated_flows[flow] = user
        result = self.registrar.handle(req, flow, now=time.time(), local_uri=self.local_uri(flow))
        for ev in result.events:
            _log_binding_event(ev, flow, self._reg_log_budget)
        if result.outbound_flow:
            # RFC 5626 §5.4: the flow is dead after Flow-Timer plus a grace period of silence.
            self.flows.set_idle_limit(flow, self.cfg.registrar.flow_timer + self.cfg.proxy.keepalive_grace)
        elif result.flow_token is not None:
            self.flows.set_idle_limit(flow, None)  # bound: kept while the binding lives
        resp = result.response
        if self.cfg.server.server_header:
            resp.add_header("Server", self.cfg.server.server_header)
        if result.changes and self.writer is not None:
            # Group commit: the 200 leaves after the batch holding these changes is on disk; the
            # writer task sends it, so the connection (or the whole UDP socket) keeps reading
            # and further REGISTERs join the same batch.
            self._queue_writes(result.changes, (txn, resp))
            return
        await self._txn_respond(txn, resp)

    def _queue_writes(self, changes: Sequence[Any], reply: tuple[Any, Response] | None = None) -> None:
        """Hand changes to the writer; ``reply`` (server transaction, response) is sent once the
        batch holding the changes is committed (group commit, one fsync per batch)."""
        self._pending_writes.extend(changes)
        if reply is not None:
            self._pending_replies.append(reply)
        self._write_event.set()

    async def _persist(self, changes: Sequence[Any]) -> None:
        """Group commit: wait until the batch holding these changes is written."""
        if self.writer is None:
            return
        done = self._batch_done
        self._queue_writes(changes)
        await done.wait()

    async def _writer_loop(self) -> None:
        while True:
            await self._write_event.wait()
            self._write_event = trio.Event()
            batch, self._pending_writes = self._pending_writes, []
            replies, self._pending_replies = self._pending_replies, []
            done, self._batch_done = self._batch_done, trio.Event()
            if batch and self.writer is not None:
                try:
                    await self.writer.write_rows(*batch_rows(batch))
                except PersistenceError as err:
                    log.error("writing %d binding changes failed: %s", len(batch), err)
                except Exception:
                    log.exception("writing %d binding changes failed", len(batch))
            done.set()
            for i, (txn, resp) in enumerate(replies, 1):
                await self._txn_respond(txn, resp)
                if i % 64 == 0:
                    await trio.lowlevel.checkpoint()  # a big batch: let the readers in too

    async def _flush_writes(self) -> None:
        """Shutdown: write what is still queued, then let the writer process exit."""
        writer = self.writer
        if writer is None:
            return
        if self._pending_writes:
            batch, self._pending_writes = self._pending_writes, []
            try:
                await writer.write_rows(*batch_rows(batch))
            except PersistenceError as err:
                log.error("writing %d binding changes at shutdown failed: %s", len(batch), err)
        await writer.aclose()

    # ------------------------------------------------------------------ proxy
    async def _proxy(self, req: Request, flow: Flow, txn: Any) -> None:
        mf = check_max_forwards(req)
        if mf is None:
            await self._txn_respond(txn, self._response(req, 483, "Too Many Hops"))
            return
        unsupported = unsupported_proxy_require(req)
        if unsupported:
            await self._txn_respond(txn, self._response(req, 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))]))
            return
        if self._is_loop(req):
            await self._txn_respond(txn, self._response(req, 482, "Loop Detected"))
            return
        strict = restore_strict_route(req, self.identity, self.codec)
        rr = preprocess_routes(req, flow, self.identity, self.codec)
        if strict:
            rr = attrs.evolve(rr, verified_token=True)
        if rr.reject is not None:
            await self._txn_respond(txn, self._response(req, *rr.reject))
            return
        req.set_header("Max-Forwards", str(mf))
        if self.auth_enabled and not await self._proxy_auth(req, flow, txn):
            return
        dests, error = await self._targets(req, flow, rr)
        if error is not None:
            await self._txn_respond(txn, self._response(req, *error))
            return
        caller_rr = None
        if self.cfg.proxy.record_route and is_dialog_creating(req):
            ob = client_wants_outbound(req) or self._flow_registered(flow)
            caller_rr = record_route_uri(self.local_uri(flow), self._token(flow), ob=ob)
        targets = _group_targets(dests)
        ctx = ResponseContext(
            req.method,
            targets,
            now=trio.current_time(),
            timer_c=self.cfg.proxy.timer_c,
            timeout_removes_binding=self.cfg.proxy.timeout_removes_binding,
        )
        job = ProxyJob(req, flow, txn, ctx, caller_rr)
        self.jobs_by_server_txn[id(txn)] = job
        await self._run_context(job, ctx.start(trio.current_time()))

    async def _proxy_auth(self, req: Request, flow: Flow, txn: Any) -> bool:
        """Requests from users of our domains are challenged (407) unless they arrive on a flow an
        authenticated REGISTER established (config auth.trust_registered_flows)."""
        try:
            from_uri = req.from_.uri
        except ParseError:
            return True
        if not isinstance(from_uri, SipURI) or not self.identity.is_local_domain(from_uri.host):
            return True
        if req.to_tag is not None and req.method in ("BYE", "ACK", "CANCEL", "PRACK", "UPDATE", "INFO", "NOTIFY"):
            return True  # in-dialog: the dialog was authorised when it was created
        user = self.authenticated_flows.get(flow) if self.cfg.auth.trust_registered_flows else None
        if user is None:
            user = await self._check_auth(req, flow, txn, register=False)
            if user is None:
                return False
        if from_uri.user_unescaped != user:
            await self._txn_respond(txn, self._response(req, 403, "Forbidden (From does not match the authenticated user)"))
            return False
        return True

    def _flow_registered(self, flow: Flow) -> bool:
        """A flow an outbound REGISTER established (RFC 5626 §5.3.2 edge behaviour)."""
        token = self._token(flow)
        return token is not None and any(b.outbound for b in self.store.flow_bindings(token))

    def _token(self, flow: Flow) -> str | None:
        try:
            return self.codec.encode(flow)
        except ValueError:
            return None

    def _is_loop(self, req: Request) -> bool:
        """RFC 3261 §16.3 step 4: a Via of ours whose branch carries the hash we would compute now."""
        vias = req.vias
        if len(vias) < 2:
            return False
        mine = _loop_hash(req)
        for via in vias[1:]:
            b = via.branch or ""
            if b.startswith(MAGIC_COOKIE + "sv") and b[9:21] == mine and via.host.lower() in self.identity.hosts:
                return True
        return False

    async def _targets(self, req: Request, flow: Flow, rr: Any) -> tuple[list[Dest], tuple[int, str] | None]:
        """RFC 3261 §16.5 target determination, with RFC 5626 flow tokens first."""
        if rr.token_flow is not None and rr.token_ob:
            target_flow = rr.token_flow
            if not self.flows.is_alive(target_flow):
                return [], (430, "Flow Failed")
            return [Dest(req.uri_text, [], flow=target_flow)], None
        routes = req.routes
        if routes:
            nxt = routes[0].uri
            if not isinstance(nxt, SipURI):
                return [], (416, "Unsupported URI Scheme in Route")
            return [Dest(req.uri_text, [], uri=nxt)], None
        uri = req.uri
        assert isinstance(uri, SipURI)
        if self.identity.is_served_uri(uri):
            now = time.time()
            if uri.has_param("gr"):
                match = self.store.find_gruu(uri, now)
                if match is None:
                    return [], (404, "Not Found (unknown GRUU)")
                bindings = self.store.lookup_instance(match.aor, match.instance_id, now)
                if not bindings:
                    return [], (480, "Temporarily Unavailable")
            else:
                bindings = self.store.lookup(uri.aor, now)
                if not bindings:
                    if self.credentials is not None and not self.credentials.has_user(uri.user_unescaped or ""):
                        return [], (404, "Not Found")
                    return [], (480, "Temporarily Unavailable")
            return [self._binding_dest(b) for b in bindings], None
        if rr.verified_token:
            # In a dialog we record-routed: the remote target may be anywhere (a NATed address).
            return [Dest(req.uri_text, [], uri=uri)], None
        if uri.host.lower() in self.cfg.proxy.relay_domains:
            return [Dest(req.uri_text, [], uri=uri)], None
        return [], (403, f"Forbidden (relaying to {uri.host} is not allowed)")

    def _binding_dest(self, b: Binding) -> Dest:
        """RFC 3327 §5.4 / RFC 5626 §7: the stored Path is the branch's route set; a top Path URI
        of ours carries the flow token, whose Flow is the destination socket."""
        path = list(b.path)
        if path:
            top = NameAddr.parse(path[0], "Path")
            turi = top.uri
            if isinstance(turi, SipURI) and self.identity.is_ours(turi) and turi.user:
                try:
                    f = self.codec.decode(turi.user)
                except InvalidToken:
                    f = None
                return Dest(b.contact_uri, path[1:], flow=f, binding=b, ob=turi.has_param("ob"))
            return Dest(b.contact_uri, path, uri=top.sip_uri, binding=b)
        contact = NameAddr.parse(f"<{b.contact_uri}>", "Contact")
        return Dest(b.contact_uri, [], uri=contact.sip_uri, binding=b)

    async def _run_context(self, job: ProxyJob, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, StartBranch):
                dest = cast(Dest, action.candidate.ref)
                if dest.flow is None and self.nursery is not None and _must_wait(dest):
                    # opening a connection or resolving a name waits: its own task, so the
                    # connection that carried the request keeps reading meanwhile
                    self.nursery.start_soon(self._start_branch, job, action.branch_id, dest)
                else:
                    await self._start_branch(job, action.branch_id, dest)
            elif isinstance(action, ForwardResponse):
                await self._forward_response(job, action.response)
            elif isinstance(action, FinalResponse):
                if action.response is None:
                    # no downstream response to copy (408, 480 for dead flows, 487)
                    await self._txn_respond(job.server_txn, self._response(job.request, action.status, action.reason))
                else:
                    await self._forward_response(job, action.response)
            elif isinstance(action, CancelBranch):
                await self._cancel_branch(job, action.branch_id)
            elif isinstance(action, AbandonBranch):
                self._drop_branch(job, action.branch_id)
            elif isinstance(action, RemoveBinding):
                self.metrics.failover(action.cause.value)
                changes = self._remove_binding(action.binding_key)
                if changes:
                    proxy_log.info("binding removed: %s (failover: %s)", _key_text(changes[0]), action.cause.name.lower())
                    self._queue_writes(changes)
            elif isinstance(action, Done):
                self.jobs_by_server_txn.pop(id(job.server_txn), None)
        deadline = job.context.next_deadline()
        if deadline is not None:
            self._wake_timer(deadline)

    def _remove_binding(self, key: Any) -> list[Any]:
        """RFC 5626 §7: a flow that failed (430, transport error) loses its binding."""
        if key is None or self.store.get(key) is None:
            return []
        change = Delete(key, StoreRemoval.FLOW_FAILED)
        self.store.apply([change])
        return [change]

    async def _resolve(self, dest: Dest) -> Flow:
        """A flow for a destination URI (RFC 3263 simplified: IP literal or A/AAAA, no NAPTR/SRV)."""
        assert dest.uri is not None
        uri = dest.uri
        transport = transport_for_uri(uri)
        host = uri.param("maddr") or uri.host
        if host.lower().endswith(".invalid"):
            raise ConnectFailed(transport, (host, uri.port or 5060), "host is .invalid (RFC 7118 §5)")
        port = uri.port or (5061 if transport in (Transport.TLS,) else 5060)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConnectFailed(transport, (host, port), f"cannot resolve: {exc}") from None
        if not infos:
            raise ConnectFailed(transport, (host, port), "no address")
        family, _, _, _, sockaddr = infos[0]
        addr = (str(sockaddr[0]), int(sockaddr[1]))
        if transport is Transport.UDP:
            local = self.udp_local.get(family) or self.udp_local.get(socket.AF_INET)
            if local is None:
                raise ConnectFailed(transport, addr, "no UDP listener for this address family")
            return Flow(Transport.UDP, local, addr, 0)
        if transport in (Transport.WS, Transport.WSS):
            raise ConnectFailed(transport, addr, "cannot open WebSocket connections to clients")
        existing = self.flows.find_stream(transport, addr)
        if existing is not None:
            return existing
        return await self.flows.connect(transport, addr)

    async def _start_branch(self, job: ProxyJob, branch_id: int, dest: Dest) -> None:
        now = trio.current_time()
        flow = dest.flow
        if flow is None:
            try:
                flow = await self._resolve(dest)
            except (ConnectFailed, FlowGone) as err:
                proxy_log.info("branch %d: %s", branch_id, err)
                await self._run_context(job, job.context.on_branch_failed(branch_id, BranchFailure.TRANSPORT, now))
                return
        elif not self.flows.is_alive(flow):
            # RFC 5626 §7: a dead flow is an internal 430 - fail over at once.
            await self._run_context(job, job.context.on_branch_failed(branch_id, BranchFailure.TRANSPORT, now))
            return
        req = job.request.copy()
        if dest.request_uri != req.uri_text:
            req.uri = parse_uri(dest.request_uri)
        if dest.route_set:
            existing = req.header_values("route")
            req.remove_header("route")
            for value in [*dest.route_set, *existing]:
                req.add_header("Route", value)
        if job.caller_rr is not None:
            req.add_header("Record-Route", job.caller_rr, top=True)
            # OB-CS-06: a second Record-Route for the callee's leg, naming its flow.
            callee_rr = record_route_uri(self.local_uri(flow), self._token(flow), ob=dest.ob)
            req.add_header("Record-Route", callee_rr, top=True)
        branch = _branch_for(job.request)
        req.add_header("Via", self.via_for(flow, branch), top=True)
        reliable = flow.transport.reliable
        ctxn: InviteClientTransaction | NonInviteClientTransaction
        if req.method == "INVITE":
            ctxn = InviteClientTransaction(req, reliable, self.timers, now, context=flow)
        else:
            ctxn = NonInviteClientTransaction(req, reliable, self.timers, now, context=flow)
        job.branches[branch_id] = (ctxn, dest, req)
        self.branch_owner[id(ctxn)] = (job, branch_id)
        self.branches_by_flow.setdefault(flow, set()).add((job, branch_id))
        await self._run_client_actions(ctxn, self.transactions.start(ctxn))

    async def _run_client_actions(self, ctxn: Any, actions: Sequence[Any]) -> None:
        owner = self.branch_owner.get(id(ctxn))
        for action in actions:
            if isinstance(action, Send):
                if not await self.send(ctxn.context, action.message) and owner is not None:
                    # RFC 3261 §17.1.4 / RFC 5626 §7: a send that fails is a failed branch now
                    ctxn.on_transport_error(trio.current_time())
                    self._forget_client(ctxn)
                    await self._branch_event(owner, BranchFailure.TRANSPORT)
                    return
            elif isinstance(action, DeliverResponse):
                if owner is not None:
                    job, branch_id = owner
                    await self._run_context(job, job.context.on_response(branch_id, action.response, trio.current_time()))
            elif isinstance(action, Timeout):
                if owner is not None:
                    await self._branch_event(owner, BranchFailure.TIMEOUT)
            elif isinstance(action, TransportError):
                if owner is not None:
                    await self._branch_event(owner, BranchFailure.TRANSPORT)
            elif isinstance(action, Terminated):
                self._forget_client(ctxn)
        deadline = ctxn.next_deadline()
        if deadline is not None:
            self._wake_timer(deadline)

    async def _branch_event(self, owner: tuple[ProxyJob, int], cause: BranchFailure) -> None:
        job, branch_id = owner
        await self._run_context(job, job.context.on_branch_failed(branch_id, cause, trio.current_time()))

    def _forget_client(self, ctxn: Any) -> None:
        self.transactions.remove(ctxn)
        owner = self.branch_owner.pop(id(ctxn), None)
        if owner is not None:
            flow = ctxn.context
            s = self.branches_by_flow.get(flow) if flow is not None else None
            if s is not None:
                s.discard(owner)
                if not s:
                    self.branches_by_flow.pop(flow, None)

    def _drop_branch(self, job: ProxyJob, branch_id: int) -> None:
        entry = job.branches.get(branch_id)
        if entry is not None:
            self._forget_client(entry[0])

    async def _branch_failed(self, job: ProxyJob, branch_id: int, cause: BranchFailure) -> None:
        entry = job.branches.get(branch_id)
        if entry is not None:
            self._forget_client(entry[0])
        await self._run_context(job, job.context.on_branch_failed(branch_id, cause, trio.current_time()))

    async def _cancel_branch(self, job: ProxyJob, branch_id: int) -> None:
        entry = job.branches.get(branch_id)
        if entry is None:
            return
        ctxn, dest, breq = entry
        if breq.method != "INVITE":
            return
        cancel = make_cancel(breq)
        now = trio.current_time()
        flow = ctxn.context
        ctx2 = NonInviteClientTransaction(cancel, flow.transport.reliable, self.timers, now, context=flow)
        await self._run_client_actions(ctx2, self.transactions.start(ctx2))

    async def _forward_response(self, job: ProxyJob, resp: Response) -> None:
        """RFC 3261 §16.7 step 9: remove our Via, pass the response upstream."""
        out = resp.copy()
        out.pop_first_value("via")
        if not out.has_header("via"):
            return
        await self._txn_respond(job.server_txn, out)

    async def _on_cancel(self, req: Request, flow: Flow, now: float) -> None:
        """RFC 3261 §16.10: answer 200 hop by hop, cancel the pending branches."""
        invite_txn = self.transactions.find_invite_for_cancel(req)
        if invite_txn is None:
            await self.reply(req, flow, 481, "Call/Transaction Does Not Exist")
            return
        await self.reply(req, flow, 200)
        job = self.jobs_by_server_txn.get(id(invite_txn))
        if job is None:
            return
        await self._run_context(job, job.context.on_cancel(now))

    async def _forward_stateless(self, req: Request, flow: Flow) -> None:
        """ACK for 2xx and other requests forwarded without a transaction (RFC 3261 §16.11)."""
        mf = check_max_forwards(req)
        if mf is None:
            return
        rr = preprocess_routes(req, flow, self.identity, self.codec)
        if rr.reject is not None:
            return
        req.set_header("Max-Forwards", str(mf))
        dests, error = await self._targets(req, flow, rr)
        if error is not None or not dests:
            return
        dest = dests[0]
        target = dest.flow
        if target is None:
            try:
                target = await self._resolve(dest)
            except (ConnectFailed, FlowGone):
                return
        if dest.request_uri != req.uri_text:
            req.uri = parse_uri(dest.request_uri)
        req.add_header("Via", self.via_for(target, _branch_for(req)), top=True)
        await self.send(target, req)

    # ------------------------------------------------------------------ responses
    async def _on_response(self, resp: Response, flow: Flow) -> None:
        txn = self.transactions.find_client(resp)
        if txn is None:
            # RFC 3261 §16.7 / PX-15: not ours, or a late 2xx after the transaction ended.
            if resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
                await self._forward_late_2xx(resp)
            return
        await self._run_client_actions(txn, txn.on_response(resp, trio.current_time()))

    async def _forward_late_2xx(self, resp: Response) -> None:
        vias = resp.vias
        if len(vias) < 2 or vias[0].host.lower() not in self.identity.hosts:
            return
        out = resp.copy()
        out.pop_first_value("via")
        nxt = out.top_via
        # Upstream over the flow named by the caller-side Record-Route token when present.
        for rr in out.record_routes:
            u = rr.uri
            if isinstance(u, SipURI) and self.identity.is_ours(u) and u.user:
                try:
                    f = self.codec.decode(u.user)
                except InvalidToken:
                    continue
                if self.flows.is_alive(f) and f.remote[0] in (nxt.received or nxt.host, nxt.host):
                    await self.send(f, out)
                    return
        port = nxt.rport or nxt.port or 5060
        host = nxt.received or nxt.host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            proxy_log.info("late 2xx for %s dropped: next Via host %r is not an address", resp.call_id, host)
            return
        local = self.udp_local.get(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if local is not None:
            await self.send(Flow(Transport.UDP, local, (host, port), 0), out)

    # ------------------------------------------------------------------ timers
    def _wake_timer(self, deadline: float | None) -> None:
        scope = self._timer_scope
        if deadline is not None and scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _timer_loop(self) -> None:
        while True:
            now = trio.current_time()
            nxt = now + 1.0
            d = self.transactions.next_deadline()
            if d is not None:
                nxt = min(nxt, d)
            # Live response contexts only (a job leaves the dict when its context is done); a
            # heap would keep finished jobs alive until their timer C deadline.
            for job in self.jobs_by_server_txn.values():
                d = job.context.next_deadline()
                if d is not None and d < nxt:
                    nxt = d
            with trio.CancelScope(deadline=nxt) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            for txn, actions in self.transactions.handle_timers(now):
                if isinstance(txn, (InviteClientTransaction, NonInviteClientTransaction)):
                    await self._run_client_actions(txn, actions)
                else:
                    await self._run_server_actions(txn, actions)
            for job in list(self.jobs_by_server_txn.values()):
                d = job.context.next_deadline()
                if d is not None and d <= now:
                    await self._run_context(job, job.context.handle_timer(now))
            self._reg_log_budget.tick()
            self._flow_log_budget.tick()
            self.gc_pacer.idle(time.perf_counter())
            wall = time.time()
            expired = self.store.expire(wall)
            if expired:
                for ch in expired:
                    if self._reg_log_budget.allow():
                        reg_log.info("binding expired: %s", _key_text(ch))
                self._queue_writes(expired)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


# ---------------------------------------------------------------------------- helpers

def _log_binding_event(ev: Any, flow: Flow, budget: LogBudget) -> None:
    """One line per significant binding event (added, replaced, removed) within the log budget;
    refreshes at debug."""
    kind = type(ev).__name__.removeprefix("Binding").lower()
    level = logging.DEBUG if kind == "refreshed" else logging.INFO
    if budget.allow(level):
        key = getattr(ev, "key", None)
        text = getattr(key, "text", None) or str(key)
        cause = getattr(ev, "cause", None)
        extra = f" ({cause.name.lower()})" if cause is not None and hasattr(cause, "name") else ""
        reg_log.log(level, "binding %s: %s via %s%s", kind, text, flow.id, extra)


def _must_wait(dest: Dest) -> bool:
    """True when reaching ``dest`` may block: a new TCP/TLS connection or a DNS name."""
    uri = dest.uri
    if uri is None:
        return False
    if transport_for_uri(uri) is not Transport.UDP:
        return True
    host = uri.param("maddr") or uri.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _key_text(change: Any) -> str:
    key = getattr(change, "key", change)
    return str(getattr(key, "text", key))


def _clean(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text)[:200]


def _stable_tag(req: Request) -> str:
    """A To tag that is the same for retransmissions of one request (RFC 3261 §8.2.6.2)."""
    try:
        seed = f"{req.call_id}|{req.from_tag}|{req.cseq.seq}|{req.top_via.branch}"
    except ParseError:
        seed = req.start_line()
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def _loop_hash(req: Request) -> str:
    """RFC 3261 §16.6 step 8: hash of what makes a request distinct, for loop detection.
    The top Via is left out: a request bounced back by a downstream element carries that
    element's Via on top, and must still be recognised; a spiral changes the Request-URI."""
    try:
        seed = f"{req.uri_text}|{req.from_tag}|{req.to_tag}|{req.call_id}|{req.cseq.seq}"
    except ParseError:
        seed = req.start_line()
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def _branch_for(req: Request) -> str:
    return f"{MAGIC_COOKIE}sv{_loop_hash(req)}.{random_hex(5)}"


def _group_targets(dests: list[Dest]) -> list[Target]:
    """RFC 5626 §7: one target per +sip.instance, its flows in ascending reg-id (OB-AP-01/04);
    a binding without instance (or not outbound) is a target of its own."""
    by_instance: dict[tuple[str, str], list[Dest]] = {}
    singles: list[Target] = []
    for d in dests:
        b = d.binding
        if b is not None and b.instance_id and b.outbound:
            by_instance.setdefault((b.aor, b.instance_id), []).append(d)
        else:
            singles.append(Target((_candidate(d),)))
    targets = [
        Target(tuple(_candidate(d) for d in sorted(group, key=lambda d: d.binding.reg_id or 0 if d.binding else 0)))
        for group in by_instance.values()
    ]
    return targets + singles


def _candidate(d: Dest) -> Candidate:
    b = d.binding
    return Candidate(ref=d, q=b.q if b is not None else 1.0, binding_key=b.key if b is not None else None, label=d.request_uri)


def _local_addresses(v6: bool) -> list[str]:
    hosts = ["::1"] if v6 else ["127.0.0.1"]
    try:
        name = socket.gethostname()
        for info in socket.getaddrinfo(name, None, socket.AF_INET6 if v6 else socket.AF_INET):
            hosts.append(str(info[4][0]))
    except OSError:
        pass
    d = _default_host(v6)
    if d:
        hosts.append(d)
    return hosts


_default_cache: dict[bool, str] = {}


def _default_host(v6: bool) -> str:
    """The address this host would use to reach the outside (no packet is sent)."""
    if v6 in _default_cache:
        return _default_cache[v6]
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    target = ("2001:db8::1", 9) if v6 else ("192.0.2.1", 9)
    host = "::1" if v6 else "127.0.0.1"
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(target)
            host = s.getsockname()[0]
    except OSError:
        pass
    _default_cache[v6] = host
    return host


async def serve_config(cfg: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a server until cancelled (tests start it with ``nursery.start``)."""
    await _serve(Server(cfg), task_status=task_status)


def run(cfg: Config) -> int:
    """`sipserver run`: serve until SIGINT/SIGTERM, then shut down cleanly and return 0.
    SIGHUP re-reads the credentials without a restart."""

    async def main() -> None:
        server = Server(cfg)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                nursery.start_soon(_serve, server)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        server.reload_credentials()
                        continue
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except Exception:
        log.exception("server failed")
        return 1
    log.info("stopped")
    return 0


async def _serve(server: Server, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled, then flush the store (shielded, so a cancelled run still saves)."""
    try:
        await server.run(task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await server.shutdown()


__all__ = ["Server", "run", "serve_config"]
