"""The request procedure of the proxy (RFC 3261 §16.3-§16.6, RFC 5626 §5.3 and §7). Sans-IO.

``ProxyCore.handle`` takes a new request (its server transaction already exists), the flow it
arrived on and the time, and decides what becomes of it: answer it here (``Reply``), hand it to
the registrar (``Register``), or forward it to these targets with this Record-Route
(``Forward``, which starts a ``ResponseContext``). ``route_stateless`` does the same for an ACK
with no transaction, ``route_late_2xx`` for a 2xx whose client transaction is gone. The runtime
carries the decisions out; nothing here waits, sends or reads a clock.

Invariants:
- Requests are checked in the RFC's order: URI scheme, requests for the server itself, then
  Max-Forwards (§16.3 step 3), Proxy-Require (step 5), loops (step 4), Route pre-processing
  (§16.4), authentication, target determination (§16.5).
- A Route of ours must carry a valid flow token to name a flow; a forged token is 403 and a
  token whose flow is dead is 430 (RFC 5626 §5.3.1), never a guess.
- Relaying to a host that is neither served nor reached through a verified token of ours is
  allowed only for ``relay_domains``; everything else is 403.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..auth.gate import AuthGate, Refusal
from ..outbound.flow import Flow
from ..outbound.flowtoken import FlowTokenCodec, InvalidToken
from ..registrar.store import LocationStore
from ..sip import ParseError, Request, Response, SipURI, make_response
from .context import Target
from .routing import (
    KNOWN_METHODS,
    LocalIdentity,
    RouteResult,
    check_max_forwards,
    client_wants_outbound,
    is_dialog_creating,
    preprocess_routes,
    record_route_uri,
    restore_strict_route,
    unsupported_proxy_require,
)
from .targets import Dest, binding_dest, group_targets, is_loop, stable_tag

__all__ = ["ALLOW", "Forward", "ProxyCore", "ProxySettings", "Register", "Reply"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, PUBLISH, INFO, UPDATE, PRACK"
# Requests inside a dialog that was authorised when it was created (a To tag is present).
_IN_DIALOG = frozenset({"BYE", "ACK", "CANCEL", "PRACK", "UPDATE", "INFO", "NOTIFY"})


@attrs.frozen
class ProxySettings:
    record_route: bool = True
    relay_domains: frozenset[str] = frozenset()
    trust_registered_flows: bool = True
    server_header: str = ""


@attrs.frozen
class Reply:
    """Answer the request here with this status."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Register:
    """A REGISTER for a served domain: the registrar's. ``user`` is the authenticated user
    (None when authentication is off)."""

    user: str | None


@attrs.frozen
class Forward:
    """Forward statefully: ``request`` after route processing and Max-Forwards, to ``targets``;
    ``caller_rr`` is the Record-Route naming the caller's flow (None: no Record-Route)."""

    request: Request
    targets: list[Target]
    caller_rr: str | None


Decision = Reply | Register | Forward


def _reply(refusal: Refusal) -> Reply:
    return Reply(refusal.status, refusal.reason, refusal.headers)


@attrs.define
class ProxyCore:
    """What this server does with each request: its identity, the location store (read, and
    written only through the registrar), the flow-token codec and, with auth on, the gate."""

    settings: ProxySettings
    identity: LocalIdentity
    codec: FlowTokenCodec
    store: LocationStore
    gate: AuthGate | None
    flow_alive: Callable[[Flow], bool]

    # ------------------------------------------------------------------ responses
    def response(
        self, req: Request, status: int, reason: str | None = None, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()
    ) -> Response:
        """A response of ours: a stable To tag (RFC 3261 §8.2.6.2) and the Server header."""
        hdrs = list(headers)
        if self.settings.server_header:
            hdrs.append(("Server", self.settings.server_header))
        to_tag = stable_tag(req) if status > 100 else None
        return make_response(req, status, reason, to_tag=to_tag, headers=hdrs)

    def token(self, flow: Flow) -> str | None:
        try:
            return self.codec.encode(flow)
        except ValueError:
            return None

    # ------------------------------------------------------------------ new requests
    def handle(self, req: Request, arrival: Flow, now: float, wall: float, local_rr: SipURI) -> Decision:
        """The decision for a new request (not ACK, not CANCEL). ``local_rr`` is our URI on the
        arrival flow's listener, for the caller's Record-Route."""
        uri = req.uri
        if not isinstance(uri, SipURI):
            return Reply(416, f"Unsupported URI Scheme ({uri.scheme})")
        local = self.identity.is_local_domain(uri.host) and not self._foreign_route(req)
        if req.method == "REGISTER" and local:
            return self._register(req, arrival, now)
        to_us = local and uri.user is None
        if req.method == "OPTIONS" and (to_us or req.max_forwards == 0):
            return Reply(200, None, (
                ("Allow", ALLOW),
                ("Supported", "path, outbound, gruu"),
                ("Accept", "application/sdp, text/plain, message/sipfrag"),
            ))
        if to_us and not req.routes:
            if req.method in KNOWN_METHODS:
                reason = f"Method Not Allowed ({req.method} addressed to the server)"
                return Reply(405, reason, (("Allow", "OPTIONS, REGISTER"),))
            return Reply(501, f"Not Implemented ({req.method})", (("Allow", ALLOW),))
        return self._proxy(req, arrival, now, wall, local_rr)

    def _register(self, req: Request, arrival: Flow, now: float) -> Decision:
        if self.gate is None:
            return Register(None)
        user = self.gate.check(req, arrival.remote[0], now, register=True)
        if isinstance(user, Refusal):
            return _reply(user)
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI) or to_uri.user_unescaped != user:
            return Reply(403, "Forbidden (authenticated user does not match To)")
        self.gate.remember(arrival, user)
        return Register(user)

    def _proxy(self, req: Request, arrival: Flow, now: float, wall: float, local_rr: SipURI) -> Decision:
        mf = check_max_forwards(req)
        if mf is None:
            return Reply(483, "Too Many Hops")
        unsupported = unsupported_proxy_require(req)
        if unsupported:
            return Reply(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
        if is_loop(req, self.identity):
            return Reply(482, "Loop Detected")
        strict = restore_strict_route(req, self.identity, self.codec)
        rr = preprocess_routes(req, arrival, self.identity, self.codec)
        if strict:
            rr = attrs.evolve(rr, verified_token=True)
        if rr.reject is not None:
            return Reply(*rr.reject)
        req.set_header("Max-Forwards", str(mf))
        refusal = self._authorise(req, arrival, now)
        if refusal is not None:
            return refusal
        dests = self.targets(req, rr, wall)
        if isinstance(dests, Reply):
            return dests
        caller_rr = None
        if self.settings.record_route and is_dialog_creating(req):
            ob = client_wants_outbound(req) or self._flow_registered(arrival)
            caller_rr = record_route_uri(local_rr, self.token(arrival), ob=ob)
        return Forward(req, group_targets(dests), caller_rr)

    def _authorise(self, req: Request, arrival: Flow, now: float) -> Reply | None:
        """Requests from users of our domains are challenged (407) unless they arrive on a flow
        an authenticated REGISTER established (auth.trust_registered_flows)."""
        gate = self.gate
        if gate is None:
            return None
        try:
            from_uri = req.from_.uri
        except ParseError:
            return None
        if not isinstance(from_uri, SipURI) or not self.identity.is_local_domain(from_uri.host):
            return None
        if req.to_tag is not None and req.method in _IN_DIALOG:
            return None  # in-dialog: the dialog was authorised when it was created
        user: str | Refusal | None = None
        if self.settings.trust_registered_flows:
            user = gate.flow_users.get(arrival)
        if user is None:
            user = gate.check(req, arrival.remote[0], now, register=False)
        if isinstance(user, Refusal):
            return _reply(user)
        if from_uri.user_unescaped != user:
            return Reply(403, "Forbidden (From does not match the authenticated user)")
        return None

    # ------------------------------------------------------------------ targets
    def targets(self, req: Request, rr: RouteResult, wall: float) -> list[Dest] | Reply:
        """RFC 3261 §16.5 target determination, with RFC 5626 flow tokens first."""
        if rr.token_flow is not None and rr.token_ob:
            if not self.flow_alive(rr.token_flow):
                return Reply(430, "Flow Failed")
            return [Dest(req.uri_text, [], flow=rr.token_flow)]
        routes = req.routes
        if routes:
            nxt = routes[0].uri
            if not isinstance(nxt, SipURI):
                return Reply(416, "Unsupported URI Scheme in Route")
            return [Dest(req.uri_text, [], uri=nxt)]
        uri = req.uri
        assert isinstance(uri, SipURI)
        if self.identity.is_served_uri(uri):
            return self._lookup(uri, wall)
        if rr.verified_token:
            # In a dialog we record-routed: the remote target may be anywhere (a NATed address).
            return [Dest(req.uri_text, [], uri=uri)]
        if uri.host.lower() in self.settings.relay_domains:
            return [Dest(req.uri_text, [], uri=uri)]
        return Reply(403, f"Forbidden (relaying to {uri.host} is not allowed)")

    def _lookup(self, uri: SipURI, wall: float) -> list[Dest] | Reply:
        """RFC 3261 §16.5 / RFC 5627 §5.1: the location service, by AoR or by GRUU."""
        store = self.store
        if uri.has_param("gr"):
            match = store.find_gruu(uri, wall)
            if match is None:
                return Reply(404, "Not Found (unknown GRUU)")
            bindings = store.lookup_instance(match.aor, match.instance_id, wall)
        else:
            bindings = store.lookup(uri.aor, wall)
            if not bindings and self.gate is not None:
                if not self.gate.credentials.has_user(uri.user_unescaped or ""):
                    return Reply(404, "Not Found")
        if not bindings:
            return Reply(480, "Temporarily Unavailable")
        return [binding_dest(b, self.identity, self.codec) for b in bindings]

    def _foreign_route(self, req: Request) -> bool:
        """A Route naming somebody else: the request is not for this server's own handling."""
        for r in req.routes:
            u = r.uri
            if not isinstance(u, SipURI) or not self.identity.is_ours(u):
                return True
        return False

    def _flow_registered(self, flow: Flow) -> bool:
        """A flow an outbound REGISTER established (RFC 5626 §5.3.2 edge behaviour)."""
        token = self.token(flow)
        return token is not None and any(b.outbound for b in self.store.flow_bindings(token))

    # ------------------------------------------------------------------ without a transaction
    def route_stateless(self, req: Request, arrival: Flow, wall: float) -> Dest | None:
        """ACK for a 2xx (RFC 3261 §16.11): where it goes, or None to drop it. The request is
        edited in place (Route pre-processing, Max-Forwards)."""
        mf = check_max_forwards(req)
        if mf is None:
            return None
        rr = preprocess_routes(req, arrival, self.identity, self.codec)
        if rr.reject is not None:
            return None
        req.set_header("Max-Forwards", str(mf))
        dests = self.targets(req, rr, wall)
        if isinstance(dests, Reply) or not dests:
            return None
        return dests[0]

    def route_late_2xx(self, resp: Response) -> tuple[Response, Flow | tuple[str, int]] | None:
        """RFC 3261 §16.7 step 5 / PX-15: a 2xx to INVITE with no client transaction left is
        still forwarded upstream: our Via removed, down the caller's flow named by its
        Record-Route token, else to the next Via's received/rport address. None: drop it."""
        vias = resp.vias
        if len(vias) < 2 or vias[0].host.lower() not in self.identity.hosts:
            return None
        out = resp.copy()
        out.pop_first_value("via")
        nxt = out.top_via
        for rr in out.record_routes:
            u = rr.uri
            if isinstance(u, SipURI) and self.identity.is_ours(u) and u.user:
                try:
                    f = self.codec.decode(u.user)
                except InvalidToken:
                    continue
                if self.flow_alive(f) and f.remote[0] in (nxt.received or nxt.host, nxt.host):
                    return out, f
        return out, (nxt.received or nxt.host, nxt.rport or nxt.port or 5060)
