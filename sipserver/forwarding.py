"""Carries out the proxy's decisions (trio): branches, their client transactions, CANCELs and the
responses that go back upstream. What to do comes from ``proxy/`` (``ProxyCore`` decides where a
request goes, ``ResponseContext`` what happens to each branch); this module only acts on it.

Invariants:
- A ``ProxyJob`` lives from the ``Forward`` decision until its context says ``Done``; while it
  lives it is in ``Forwarder.jobs`` and hangs on its server transaction (``owner``), and each of
  its branches hangs on its client transaction.
- A branch whose flow dies (the connection closed, a send failed) is reported to its context as
  a transport failure at once (RFC 5626 §7: an internal 430), so failover does not wait for a
  timer.
- Only opening a connection or resolving a name runs in a task of its own; everything else runs
  in the task of the message that caused it, except waiting for rtpengine (issue 18): a branch
  whose offer goes to rtpengine, and a response or ACK whose SDP does, wait in their call's
  media lane (``media_glue``), never in the reading task.
- Media never hangs a transaction: an offer no rtpengine took fails its branch with 503
  (media.on_failure = reject) or goes on untouched (pass) within the ng client's time budget.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .media import Leg, MediaStep, StepKind
from .outbound.flow import Flow, Transport
from .proxy.context import (
    AbandonBranch,
    BranchFailure,
    CancelBranch,
    Done,
    FinalResponse,
    ForwardResponse,
    RemoveBinding,
    ResponseContext,
    StartBranch,
)
from .proxy.peers import HOP_HEADER, hop_value
from .proxy.procedure import Forward
from .proxy.routing import transport_for_uri
from .proxy.targets import Dest, build_branch_request, must_wait, new_branch_id
from .registrar import Delete
from .registrar import RemovalCause as StoreRemoval
from .sip import ParseError, Request, Response, make_cancel
from .transaction import (
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    Terminated,
    Timeout,
    TransportError,
)
from .transport.errors import ConnectFailed, FlowGone

if TYPE_CHECKING:
    from .runtime import Server

proxy_log = logging.getLogger("sipserver.proxy")
media_log = logging.getLogger("sipserver.media")

# The status line of a branch whose offer no rtpengine took (media.on_failure = reject).
MEDIA_REJECT_REASON = "Service Unavailable (media relay unavailable)"


def _top_branch(msg: Response) -> str | None:
    """The top Via's branch: which of our branches a response answers (media legs)."""
    try:
        return msg.top_via.branch
    except ParseError:
        return None


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction


@attrs.define(eq=False)
class ProxyJob:
    """One statefully forwarded request: its server transaction and response context."""

    request: Request  # after route processing and Max-Forwards decrement
    arrival: Flow
    server_txn: ServerTransaction
    context: ResponseContext
    caller_rr: str | None
    record_callee: bool
    branches: dict[int, Branch] = attrs.field(factory=dict)
    # issue 18: the 503 a branch got because no rtpengine took its offer (the context turns a
    # 503 into 500, RFC 3261 §16.7; this one is ours, so the caller gets it as it is)
    media_rejects: dict[str, Response] = attrs.field(factory=dict)  # by its To tag


@attrs.define(eq=False)
class Branch:
    job: ProxyJob
    branch_id: int
    txn: ClientTransaction
    flow: Flow
    request: Request


class Forwarder:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.jobs: set[ProxyJob] = set()
        self.branches_by_flow: dict[Flow, set[Branch]] = {}

    # ------------------------------------------------------------------ entry points
    async def start(self, decision: Forward, arrival: Flow, txn: ServerTransaction) -> None:
        s = self.server
        now = s.clock.now()
        ctx = ResponseContext(
            decision.request.method,
            decision.targets,
            now=now,
            timer_c=s.cfg.proxy.timer_c,
            timeout_removes_binding=s.cfg.proxy.timeout_removes_binding,
        )
        job = ProxyJob(decision.request, arrival, txn, ctx, decision.caller_rr, decision.record_callee)
        txn.owner = job
        self.jobs.add(job)
        await self._run_context(job, ctx.start(now))

    async def on_cancel(self, invite_txn: ServerTransaction) -> None:
        """RFC 3261 §16.10: the CANCEL was answered 200 hop by hop; cancel the pending branches."""
        job = invite_txn.owner
        if isinstance(job, ProxyJob):
            actions = job.context.on_cancel(self.server.clock.now())
            media = self.server.media
            if media is not None and job.context.cancelled:
                media.on_cancel(job.request.call_id)  # RFC 3261 §9.2: delete, in the background
            await self._run_context(job, actions)

    def server_txn_ended(self, txn: ServerTransaction) -> None:
        job = txn.owner
        if isinstance(job, ProxyJob):
            self.jobs.discard(job)

    def flow_closed(self, flow: Flow) -> None:
        """RFC 5626 §7: branches pending on a flow that closed fail over now."""
        pending = self.branches_by_flow.pop(flow, None)
        nursery = self.server.nursery
        if pending and nursery is not None:
            for branch in list(pending):
                nursery.start_soon(self._branch_failed, branch, BranchFailure.TRANSPORT)

    async def on_response(self, resp: Response) -> None:
        s = self.server
        txn = s.transactions.find_client(resp)
        if txn is not None:
            await self.run_client_actions(txn, txn.on_response(resp, s.clock.now()))
        elif resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
            await self._forward_late_2xx(resp)  # RFC 3261 §16.7 / PX-15

    async def forward_stateless(self, req: Request, flow: Flow) -> None:
        """ACK for 2xx and other requests forwarded without a transaction (RFC 3261 §16.11)."""
        s = self.server
        dest = s.core.route_stateless(req, flow, s.clock.wall())
        if dest is None:
            return
        target = dest.flow
        if target is None:
            try:
                target = await self._resolve(dest)
            except (ConnectFailed, FlowGone):
                return
        out = build_branch_request(req, dest, s.via_for(target, new_branch_id(req, s.identity.node)), None)
        sent_to = target
        if s.media is None:
            await s.send(sent_to, out)
            return
        # late offer: the ACK carries the answer (issue 18)
        step = s.media.sessions.on_request(
            out, Leg.sender(req, flow), Leg.target(sent_to, dest.binding, direct=dest.uri is None), now=s.clock.now()
        )
        await s.media.relay(out, step, lambda: s.send(sent_to, out))

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        # Live response contexts only (a job leaves the set when its context is done); a heap
        # would keep finished jobs alive until their timer C deadline.
        best = self.server.media.next_deadline() if self.server.media is not None else None
        for job in self.jobs:
            d = job.context.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    async def handle_timers(self, now: float) -> None:
        if self.server.media is not None:
            self.server.media.handle_timer(now)  # calls whose BYE never came (issue 18)
        for job in list(self.jobs):
            d = job.context.next_deadline()
            if d is not None and d <= now:
                await self._run_context(job, job.context.handle_timer(now))

    # ------------------------------------------------------------------ context actions
    async def _run_context(self, job: ProxyJob, actions: Sequence[Any]) -> None:
        s = self.server
        for action in actions:
            if isinstance(action, StartBranch):
                dest: Dest = action.candidate.ref  # type: ignore[assignment]
                if dest.flow is None and s.nursery is not None and must_wait(dest):
                    # opening a connection or resolving a name waits: its own task, so the
                    # connection that carried the request keeps reading meanwhile
                    s.nursery.start_soon(self._start_branch, job, action.branch_id, dest)
                else:
                    await self._start_branch(job, action.branch_id, dest)
            elif isinstance(action, ForwardResponse):
                await self._forward_response(job, action.response)
            elif isinstance(action, FinalResponse):
                if action.response is None:
                    # no downstream response to copy (408, 480 for dead flows, 487)
                    resp = s.core.response(job.request, action.status, action.reason)
                    await self._respond(job, resp, None)
                elif action.response.to_tag in job.media_rejects:
                    # our own 503 (no rtpengine), not a downstream one turned into 500
                    await self._forward_response(job, job.media_rejects[action.response.to_tag])
                else:
                    await self._forward_response(job, action.response)
            elif isinstance(action, CancelBranch):
                await self._cancel_branch(job, action.branch_id)
            elif isinstance(action, AbandonBranch):
                branch = job.branches.get(action.branch_id)
                if branch is not None:
                    self._forget_client(branch.txn)
            elif isinstance(action, RemoveBinding):
                self._remove_binding(action)
            elif isinstance(action, Done):
                self.jobs.discard(job)
        s.wake_timer(job.context.next_deadline())

    def _remove_binding(self, action: RemoveBinding) -> None:
        """RFC 5626 §7: a flow that failed (430, transport error) loses its binding."""
        s = self.server
        s.metrics.failover(action.cause.value)
        key = action.binding_key
        binding = s.store.get(key) if key is not None else None  # type: ignore[arg-type]
        if binding is None or s.core.foreign(binding):
            # Another node's flow (issue 20): that node, or its death, decides about the binding.
            return
        change = Delete(binding.key, StoreRemoval.FLOW_FAILED)
        s.store.apply([change])
        proxy_log.info("binding removed: %s (failover: %s)", binding.key.text, action.cause.name.lower())
        s.commit.queue([change])

    async def _start_branch(self, job: ProxyJob, branch_id: int, dest: Dest) -> None:
        s = self.server
        now = s.clock.now()
        flow = dest.flow
        if flow is None:
            try:
                flow = await self._resolve(dest)
            except (ConnectFailed, FlowGone) as err:
                proxy_log.info("branch %d: %s", branch_id, err)
                await self._run_context(job, job.context.on_branch_failed(branch_id, BranchFailure.TRANSPORT, now))
                return
        elif not s.flows.is_alive(flow):
            # RFC 5626 §7: a dead flow is an internal 430 - fail over at once.
            await self._run_context(job, job.context.on_branch_failed(branch_id, BranchFailure.TRANSPORT, now))
            return
        rr = None
        if job.record_callee:
            # OB-CS-06: a second Record-Route for the callee's leg, naming its flow; none towards
            # another node of the cluster, which records the callee's leg itself (issue 20).
            callee_rr = None if dest.node else s.core.record_route(job.request, s.local_uri(flow), flow, ob=dest.ob)
            rr = (job.caller_rr, callee_rr)
        req = build_branch_request(job.request, dest, s.via_for(flow, new_branch_id(job.request, s.identity.node)), rr)
        if dest.node is not None:
            req.add_header(HOP_HEADER, hop_value(s.codec, req, s.clock.wall()))
        if s.media is not None:
            step = s.media.sessions.on_request(
                req, Leg.sender(job.request, job.arrival), Leg.target(flow, dest.binding, direct=dest.uri is None), now=now
            )
            if step is not None and step.kind is StepKind.DELETE:
                s.media.background(step)  # BYE (issue 18): the delete never holds it back
            elif step is not None:
                offer = step
                target = flow
                s.media.submit(req.call_id, lambda: self._start_after_media(job, branch_id, target, req, offer))
                return
        await self._launch(job, branch_id, flow, req)

    async def _start_after_media(self, job: ProxyJob, branch_id: int, flow: Flow, req: Request, step: MediaStep) -> None:
        """The branch's offer went to rtpengine (issue 18); in the call's media lane."""
        s = self.server
        assert s.media is not None
        outcome = await s.media.run_step(step)
        ctx = job.context
        if branch_id not in ctx.pending_branches():
            return  # ended meanwhile (timer C)
        status = None
        if outcome.reject:
            media_log.warning(
                "media: call %s branch %d to %s: no rtpengine took the offer; the branch fails with 503 "
                "(media.on_failure = reject)", req.call_id, branch_id, flow.id,
            )
            status, reason = 503, MEDIA_REJECT_REASON
        elif ctx.cancelled or ctx.answered:
            status, reason = 487, "Request Terminated"  # the caller gave up meanwhile: not rung
        if status is not None:
            resp = s.core.response(req, status, reason)  # our Via on top, like a branch's response
            if status == 503 and resp.to_tag:
                job.media_rejects[resp.to_tag] = resp
            await self._run_context(job, ctx.on_response(branch_id, resp, s.clock.now()))
            return
        await self._launch(job, branch_id, flow, req)

    async def _launch(self, job: ProxyJob, branch_id: int, flow: Flow, req: Request) -> None:
        s = self.server
        now = s.clock.now()
        ctxn: ClientTransaction
        if req.method == "INVITE":
            ctxn = InviteClientTransaction(req, flow.transport.reliable, s.timers, now, context=flow)
        else:
            ctxn = NonInviteClientTransaction(req, flow.transport.reliable, s.timers, now, context=flow)
        branch = Branch(job, branch_id, ctxn, flow, req)
        ctxn.owner = branch
        job.branches[branch_id] = branch
        self.branches_by_flow.setdefault(flow, set()).add(branch)
        await self.run_client_actions(ctxn, s.transactions.start(ctxn))

    async def run_client_actions(self, ctxn: ClientTransaction, actions: Sequence[Any]) -> None:
        s = self.server
        branch = ctxn.owner if isinstance(ctxn.owner, Branch) else None
        for action in actions:
            if isinstance(action, Send):
                if not await s.send(ctxn.context, action.message) and branch is not None:  # type: ignore[arg-type]
                    # RFC 3261 §17.1.4 / RFC 5626 §7: a send that fails is a failed branch now
                    ctxn.on_transport_error(s.clock.now())
                    await self._branch_failed(branch, BranchFailure.TRANSPORT)
                    return
            elif isinstance(action, DeliverResponse):
                if branch is not None:
                    ctx = branch.job.context
                    await self._run_context(branch.job, ctx.on_response(branch.branch_id, action.response, s.clock.now()))
            elif isinstance(action, (Timeout, TransportError)):
                if branch is not None:
                    cause = BranchFailure.TIMEOUT if isinstance(action, Timeout) else BranchFailure.TRANSPORT
                    ctx = branch.job.context
                    await self._run_context(branch.job, ctx.on_branch_failed(branch.branch_id, cause, s.clock.now()))
            elif isinstance(action, Terminated):
                self._forget_client(ctxn)
        s.wake_timer(ctxn.next_deadline())

    def _forget_client(self, ctxn: ClientTransaction) -> None:
        self.server.transactions.remove(ctxn)
        branch = ctxn.owner
        if isinstance(branch, Branch):
            ctxn.owner = None
            pending = self.branches_by_flow.get(branch.flow)
            if pending is not None:
                pending.discard(branch)
                if not pending:
                    del self.branches_by_flow[branch.flow]

    async def _branch_failed(self, branch: Branch, cause: BranchFailure) -> None:
        self._forget_client(branch.txn)
        job = branch.job
        await self._run_context(job, job.context.on_branch_failed(branch.branch_id, cause, self.server.clock.now()))

    async def _cancel_branch(self, job: ProxyJob, branch_id: int) -> None:
        branch = job.branches.get(branch_id)
        if branch is None or branch.request.method != "INVITE":
            return
        s = self.server
        flow = branch.flow
        cancel = NonInviteClientTransaction(
            make_cancel(branch.request), flow.transport.reliable, s.timers, s.clock.now(), context=flow
        )
        await self.run_client_actions(cancel, s.transactions.start(cancel))

    async def _forward_response(self, job: ProxyJob, resp: Response) -> None:
        """RFC 3261 §16.7 step 9: remove our Via, pass the response upstream."""
        out = resp.copy()
        branch = _top_branch(out) if self.server.media is not None else None  # media: its leg
        out.pop_first_value("via")
        if out.has_header("via"):
            await self._respond(job, out, branch)

    async def _respond(self, job: ProxyJob, out: Response, branch: str | None) -> None:
        """Send ``out`` upstream through the job's server transaction; with media, once
        rtpengine rewrote its SDP (issue 18: answers in 18x/2xx, late offers, delete on a
        final failure)."""
        s = self.server
        if s.media is None:
            await s.respond(job.server_txn, out)
            return
        step = s.media.on_response(out, branch)
        await s.media.relay(out, step, lambda: s.respond(job.server_txn, out))

    async def _forward_late_2xx(self, resp: Response) -> None:
        s = self.server
        route = s.core.route_late_2xx(resp)
        if route is None:
            return
        out, flow = route
        if s.media is None:
            await s.send(flow, out)
            return
        step = s.media.on_response(out, _top_branch(resp))
        await s.media.relay(out, step, lambda: s.send(flow, out))

    # ------------------------------------------------------------------ reaching a URI
    async def _resolve(self, dest: Dest) -> Flow:
        """A flow for a destination URI (RFC 3263 simplified: IP literal or A/AAAA, no NAPTR/SRV)."""
        assert dest.uri is not None
        s = self.server
        uri = dest.uri
        transport = transport_for_uri(uri)
        host = uri.param("maddr") or uri.host
        if host.lower().endswith(".invalid"):
            raise ConnectFailed(transport, (host, uri.port or 5060), "host is .invalid (RFC 7118 §5)")
        port = uri.port or (5061 if transport is Transport.TLS else 5060)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConnectFailed(transport, (host, port), f"cannot resolve: {exc}") from None
        if not infos:
            raise ConnectFailed(transport, (host, port), "no address")
        family, _, _, _, sockaddr = infos[0]
        addr = (str(sockaddr[0]), int(sockaddr[1]))
        if transport is Transport.UDP:
            local = s.udp_local.get(family) or s.udp_local.get(socket.AF_INET)
            if local is None:
                raise ConnectFailed(transport, addr, "no UDP listener for this address family")
            return Flow(Transport.UDP, local, addr, 0)
        if transport in (Transport.WS, Transport.WSS):
            raise ConnectFailed(transport, addr, "cannot open WebSocket connections to clients")
        existing = s.flows.find_stream(transport, addr)
        if existing is not None:
            return existing
        return await s.flows.connect(transport, addr)
