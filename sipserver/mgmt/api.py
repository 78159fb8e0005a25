"""The management API: JSON status and actions, Prometheus metrics, on the mgmt HTTP listener.

Endpoints (all JSON unless noted; errors are ``{"error": "..."}`` with a 4xx/5xx status):

    GET  /                          list of endpoints
    GET  /info                      version, listeners, uptime
    GET  /stats                     counters and gauges as JSON
    GET  /registrations[?aor=A]     bindings
    POST /registrations/unregister?aor=A   (or DELETE /registrations/A)
    GET  /flows                     live flows
    POST /flows/close?id=ID         (or JSON body {"id": ID})
    GET  /transactions[?limit=N]    count and a brief list
    GET  /media                     calls anchored through rtpengine (issue 18)
    GET  /cluster                   the cluster's nodes, liveness, bindings per node (issue 20)
    GET  /metrics                   Prometheus text format 0.0.4
    POST /credentials/reload        re-read auth.credentials_file
    GET  /trace, POST /trace        {"source": IP|null, "aor": AOR|null, "enabled": bool}

Invariants:
- With ``mgmt.token`` set every request, /metrics included, needs ``Authorization: Bearer
  TOKEN`` (compared in constant time); without it the answer is 401 and nothing else is read.
- Handlers only read the server's state or call its public actions (remove an AoR's bindings and
  queue the store write, close a flow, reload credentials, set trace filters); bad input is a 400,
  an unknown path 404, a known path with the wrong method 405 with ``Allow``.
- The server object is duck-typed (``sipserver.runtime.Server``), so this module does not import
  the runtime.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from sipserver import __version__, native
from sipserver.outbound.flow import CloseCause
from sipserver.outbound.flowtoken import InvalidToken
from sipserver.registrar import RemovalCause

from .http import HttpRequest, HttpResponse, json_error, json_response, serve_http
from .metrics import binding_kind, collect, render
from .trace import normalize_aor

__all__ = ["ManagementApi", "serve_management", "watch_loop_lag"]

log = logging.getLogger("sipserver.mgmt")
reg_log = logging.getLogger("sipserver.registrar")

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_INTERVAL = 0.5
MAX_LIST = 10000

Endpoint = Callable[[HttpRequest], Awaitable[HttpResponse]]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class ManagementApi:
    """Routes HTTP requests to handlers reading or acting on a running ``Server``."""

    def __init__(self, server: Any) -> None:
        self.server = server
        token = server.cfg.mgmt.token
        self._token = f"Bearer {token}".encode() if token else None
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/": {"GET": self.index},
            "/info": {"GET": self.info},
            "/stats": {"GET": self.stats},
            "/registrations": {"GET": self.registrations},
            "/registrations/unregister": {"POST": self.unregister},
            "/flows": {"GET": self.flows},
            "/flows/close": {"POST": self.close_flow},
            "/transactions": {"GET": self.transactions},
            "/media": {"GET": self.media},
            "/cluster": {"GET": self.cluster},
            "/metrics": {"GET": self.metrics},
            "/credentials/reload": {"POST": self.reload},
            "/trace": {"GET": self.trace_state, "POST": self.trace},
        }

    async def handle(self, req: HttpRequest) -> HttpResponse:
        if self._token is not None:
            got = req.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(got, self._token):
                return json_error(
                    401, "missing or wrong bearer token", (("WWW-Authenticate", 'Bearer realm="sipserver"'),)
                )
        path = req.path.rstrip("/") or "/"
        methods = self.routes.get(path)
        if methods is None and path.startswith("/registrations/") and path != "/registrations/unregister":
            methods = {"DELETE": self.unregister_path}
        if methods is None:
            return json_error(404, f"no such endpoint: {req.path[:200]}")
        endpoint = methods.get(req.method)
        if endpoint is None:
            allow = ", ".join(sorted(methods))
            return json_error(405, f"{req.method} not allowed here (allowed: {allow})", (("Allow", allow),))
        return await endpoint(req)

    # ------------------------------------------------------------------ status
    async def index(self, req: HttpRequest) -> HttpResponse:
        return json_response(
            {
                "endpoints": [
                    f"{method} {path}" for path, methods in self.routes.items() for method in methods
                ]
                + ["DELETE /registrations/{aor}"]
            }
        )

    def _info(self) -> dict[str, Any]:
        s = self.server
        now = self.server.clock.wall()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.started_at)),
            "uptime": round(now - s.started_at, 1),
            "listeners": [str(bl) for bl in s.listeners],
            "domains": list(s.cfg.server.domains),
            "auth": bool(s.auth_enabled),
            "store": s.cfg.store.backend,
            "code": native.status(),
        }

    async def info(self, req: HttpRequest) -> HttpResponse:
        return json_response(self._info())

    async def stats(self, req: HttpRequest) -> HttpResponse:
        s = self.server
        m = s.metrics
        now = self.server.clock.wall()
        live = [b for b in s.store.all() if b.expires_at > now]
        flows: dict[str, int] = {}
        for fi in s.flows.snapshot():
            t = fi.transport.value.lower()
            flows[t] = flows.get(t, 0) + 1
        closed: dict[str, int] = {}
        for (_transport, cause), n in m.flows_closed.items():
            closed[cause] = closed.get(cause, 0) + n
        body = self._info()
        body.update(
            {
                "registrations": len(live),
                "aors": len({b.aor for b in live}),
                "flows": flows,
                "transactions": len(s.transactions),
                "counters": dict(sorted(s.stats.items())),
                "responses": {str(k): v for k, v in sorted(m.responses.items())},
                "flows_closed": closed,
                "flow_failures": dict(m.flow_failures),
                "failovers": dict(m.failovers),
                "keepalives": m.keepalives,
                "messages": m.processing.count,
                "processing_seconds_avg": _round(m.processing.sum / m.processing.count, 6) if m.processing.count else None,
                "event_loop_lag": _round(m.last_loop_lag, 4),
                "trace": s.tracer.state(),
            }
        )
        return json_response(body)

    async def metrics(self, req: HttpRequest) -> HttpResponse:
        text = render(collect(self.server, self.server.clock.wall()))
        return HttpResponse(200, text.encode(), PROMETHEUS_TYPE)

    def _flow_of(self, token: str | None) -> Any:
        if not token:
            return None
        try:
            return self.server.codec.decode(token)
        except (InvalidToken, ValueError):
            return None

    async def registrations(self, req: HttpRequest) -> HttpResponse:
        s = self.server
        now = self.server.clock.wall()
        wanted = req.arg("aor")
        if wanted is not None:
            try:
                aor = normalize_aor(wanted)
            except ValueError as exc:
                return json_error(400, str(exc))
            bindings = s.store.lookup(aor, now)
        else:
            bindings = sorted((b for b in s.store.all() if b.expires_at > now), key=lambda b: (b.aor, b.registered_at))
        out = []
        for b in bindings[:MAX_LIST]:
            flow = self._flow_of(b.flow_token)
            out.append(
                {
                    "aor": b.aor,
                    "contact": b.contact_uri,
                    "instance": b.instance_id,
                    "reg_id": b.reg_id,
                    "outbound": b.outbound,
                    "kind": binding_kind(b),
                    "keepalive": _keepalive_state(s, flow, now),
                    "flow": flow.id if flow is not None else None,
                    "flow_alive": s.flows.is_alive(flow) if flow is not None else None,
                    "transport": b.transport,
                    "source": b.source,
                    "expires": b.remaining(now),
                    "user_agent": b.user_agent,
                    "q": b.q,
                    "path": list(b.path),
                    "call_id": b.call_id,
                    "cseq": b.cseq,
                    "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.registered_at)),
                }
            )
        return json_response({"count": len(bindings), "registrations": out})

    async def flows(self, req: HttpRequest) -> HttpResponse:
        s = self.server
        now = trio.current_time()
        keepalives = s.metrics.last_keepalive
        out = []
        for fi in sorted(s.flows.snapshot(), key=lambda f: f.opened_at):
            try:
                bindings = len(s.store.flow_bindings(s.codec.encode(fi.flow)))
            except ValueError:
                bindings = 0
            ka = keepalives.get(fi.flow)
            out.append(
                {
                    "id": fi.id,
                    "transport": fi.transport.value.lower(),
                    "local": _hostport(fi.local),
                    "peer": _hostport(fi.remote),
                    "age": _round(now - fi.opened_at, 1),
                    "idle": _round(now - fi.last_activity, 1),
                    "last_keepalive": _round(now - ka, 1) if ka is not None else None,
                    "idle_limit": fi.idle_limit,
                    "bindings": bindings,
                    "user": s.authenticated_flows.get(fi.flow),
                }
            )
        return json_response({"count": len(out), "flows": out[:MAX_LIST]})

    async def transactions(self, req: HttpRequest) -> HttpResponse:
        s = self.server
        raw = req.arg("limit") or "100"
        if not raw.isdigit():
            return json_error(400, "limit must be a non-negative integer")
        limit = min(int(raw), MAX_LIST)
        out: list[dict[str, Any]] = []
        for txn in s.transactions:
            if len(out) >= limit:
                break
            request = txn.request
            name = type(txn).__name__
            try:
                call_id = request.call_id
            except Exception:
                call_id = None
            flow = txn.context
            out.append(
                {
                    "kind": "client" if "Client" in name else "server",
                    "method": request.method,
                    "state": txn.state.name,
                    "call_id": call_id,
                    "flow": getattr(flow, "id", None),
                }
            )
        return json_response({"count": len(s.transactions), "transactions": out})

    async def cluster(self, req: HttpRequest) -> HttpResponse:
        """Issue 20: this node, the others it sees alive or found dead, bindings per node."""
        cluster = getattr(self.server, "cluster", None)
        if cluster is None:
            return json_response({"enabled": False, "nodes": []})
        return json_response({"enabled": True} | cluster.status())

    async def media(self, req: HttpRequest) -> HttpResponse:
        """Issue 18: the calls media anchoring keeps, and the rtpengines configured."""
        glue = getattr(self.server, "media", None)
        if glue is None:
            return json_response({"enabled": False, "count": 0, "active": 0, "calls": []})
        calls = glue.sessions.calls(self.server.clock.now())
        out = [
            {
                "call_id": c.call_id,
                "caller_tag": c.caller_tag,
                "caller": c.caller,
                "anchored": c.anchored,
                "confirmed": c.confirmed,
                "late_offer": c.late_offer,
                "branches": c.branches,
                "anchored_branches": c.anchored_branches,
                "rtpengine": c.server,
                "age": _round(c.age, 1),
            }
            for c in calls[:MAX_LIST]
        ]
        return json_response(
            {
                "enabled": True,
                "rtpengine": [str(a) for a in self.server.cfg.media.rtpengine],
                "anchor": self.server.cfg.media.anchor,
                "count": len(calls),
                "active": sum(1 for c in calls if c.anchored),
                "calls": out,
            }
        )

    # ------------------------------------------------------------------ actions
    def _param(self, req: HttpRequest, name: str) -> str | None:
        """A parameter from the query string, else from a JSON object body."""
        value = req.arg(name)
        if value is not None or not req.body:
            return value
        try:
            body = json.loads(req.body)
        except ValueError:
            return None
        got = body.get(name) if isinstance(body, dict) else None
        return got if isinstance(got, str) else None

    async def unregister(self, req: HttpRequest) -> HttpResponse:
        aor = self._param(req, "aor")
        if not aor:
            return json_error(400, "missing aor (?aor=user@host)")
        return self._remove_aor(aor)

    async def unregister_path(self, req: HttpRequest) -> HttpResponse:
        return self._remove_aor(req.path[len("/registrations/") :])

    def _remove_aor(self, text: str) -> HttpResponse:
        try:
            aor = normalize_aor(text)
        except ValueError as exc:
            return json_error(400, str(exc))
        s = self.server
        changes = s.store.remove_aor(aor, RemovalCause.ADMIN)
        if not changes:
            return json_error(404, f"no registrations for {aor}")
        for ch in changes:
            reg_log.info("binding removed: %s (management API)", getattr(ch, "key", ch))
        s.commit.queue(changes)
        return json_response({"aor": aor, "removed": len(changes)})

    async def close_flow(self, req: HttpRequest) -> HttpResponse:
        flow_id = self._param(req, "id")
        if not flow_id:
            return json_error(400, "missing id (?id=FLOW-ID as listed by GET /flows)")
        s = self.server
        for fi in s.flows.snapshot():
            if fi.id == flow_id:
                try:
                    bindings = len(s.store.flow_bindings(s.codec.encode(fi.flow)))
                except ValueError:
                    bindings = 0
                log.info("closing flow %s on request of the management API", flow_id)
                s.flows.close(fi.flow, CloseCause.CLOSED_BY_MANAGEMENT)
                return json_response({"closed": flow_id, "bindings_removed": bindings})
        return json_error(404, f"no such flow: {flow_id[:200]}")

    async def reload(self, req: HttpRequest) -> HttpResponse:
        s = self.server
        if not s.auth_enabled or not s.cfg.auth.credentials_file:
            return json_error(409, "no auth.credentials_file is configured: nothing to reload")
        if not s.reload_credentials():
            return json_error(500, "reloading the credentials failed; the previous users stay (see the server log)")
        users = len(s.credentials.users()) if s.credentials is not None else 0
        return json_response({"reloaded": True, "users": users, "file": s.cfg.auth.credentials_file})

    async def trace_state(self, req: HttpRequest) -> HttpResponse:
        return json_response(self.server.tracer.state())

    async def trace(self, req: HttpRequest) -> HttpResponse:
        try:
            body = json.loads(req.body or b"null")
        except ValueError:
            return json_error(400, "body must be JSON")
        if not isinstance(body, dict):
            return json_error(400, 'body must be a JSON object {"source": ..., "aor": ..., "enabled": ...}')
        unknown = set(body) - {"source", "aor", "enabled"}
        if unknown:
            return json_error(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        source, aor, enabled = body.get("source"), body.get("aor"), body.get("enabled")
        if not isinstance(enabled, bool):
            return json_error(400, "enabled must be true or false")
        for name, value in (("source", source), ("aor", aor)):
            if value is not None and not isinstance(value, str):
                return json_error(400, f"{name} must be a string or null")
        try:
            self.server.tracer.set(source=source, aor=aor, enabled=enabled)
        except ValueError as exc:
            return json_error(400, str(exc))
        state = self.server.tracer.state()
        log.info("SIP trace filters now: sources=%s aors=%s", state["sources"], state["aors"])
        return json_response(state)


def _keepalive_state(server: Any, flow: Any, wall: float) -> dict[str, Any] | None:
    """Server-sent keepalives of an implicit UDP flow (issue 17), for ``sipserver ctl``."""
    state = server.nat.state(flow) if flow is not None else None
    if state is None:
        return None
    return {
        "next_ping_in": _round(max(0.0, state.next_ping - server.clock.now()), 1),
        "unanswered": state.failures + (1 if state.waiting else 0),
        "pings_sent": state.pings_sent,
    }


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def watch_loop_lag(metrics: Any, interval: float = LAG_INTERVAL) -> None:
    """Sleep ``interval`` over and over and record how late each wake-up is: a busy or blocked
    event loop shows here before it shows anywhere else."""
    while True:
        start = trio.current_time()
        await trio.sleep(interval)
        metrics.loop_lagged(max(0.0, trio.current_time() - start - interval))


async def serve_management(
    server: Any, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the management listener from ``server.cfg.mgmt`` and the event-loop lag probe until
    cancelled; ``nursery.start`` returns the bound (host, port), also kept in
    ``server.mgmt_address``."""
    address = server.cfg.mgmt.address
    if address is None:
        raise ValueError("mgmt.listen is not set")
    host, port = address
    api = ManagementApi(server)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_http, api.handle, host, port)
        server.mgmt_address = bound
        nursery.start_soon(watch_loop_lag, server.metrics)
        log.info("management API listening on http://%s", _hostport(bound))
        if not _is_loopback(host) and not server.cfg.mgmt.token:
            log.warning(
                "management API on non-loopback address %s without mgmt.token: anyone who can "
                "reach it can see and remove registrations",
                host,
            )
        task_status.started(bound)
