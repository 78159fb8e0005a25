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

import enum
import logging
from collections.abc import Callable

import attrs

from ..auth.gate import AuthGate, Refusal
from ..bounded import LruTable
from ..outbound.flow import Flow
from ..outbound.flowtoken import FlowTokenCodec, InvalidToken
from ..registrar.binding import INSTANCE, Binding, BindingKey
from ..registrar.store import LocationStore
from ..sip import ParseError, Request, Response, SipURI, make_response
from .context import Target
from .peers import take_hop
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

log = logging.getLogger("sipserver.proxy")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, PUBLISH, INFO, UPDATE, PRACK"


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
    #: add the Record-Route naming the callee's flow (with ``caller_rr``, or alone for a request
    #: another node of the cluster handed on, whose caller's leg that node recorded)
    record_callee: bool = False


Decision = Reply | Register | Forward
_REGISTER_OPEN = Register(None)
_UNAVAILABLE = Reply(480, "Temporarily Unavailable")


class HopKind(enum.Enum):
    FLOW = "flow"  # down a flow of ours named by a verified token
    LOOKUP = "lookup"  # a served Request-URI: the location service
    EXTERNAL = "external"  # a host that is not ours: a relay domain, another server
    NODE = "node"  # another node of our cluster holds the flow a verified token names (issue 20)


@attrs.frozen
class Hop:
    kind: HopKind
    flow: Flow | None = None
    uri: SipURI | None = None
    node: str | None = None
    token: str | None = None


def _reply(refusal: Refusal) -> Reply:
    return Reply(refusal.status, refusal.reason, refusal.headers)


def _no_node(node: str) -> SipURI | None:
    return None


class ProxyCore:
    """What this server does with each request: its identity, the location store (read, and
    written only through the registrar), the flow-token codec and, with auth on, the gate.

    A plain slotted class, not attrs with ``attrs.field(factory=...)``: the mypyc build
    (sipserver/native.py) cannot compile a class attribute whose value is a field definition."""

    __slots__ = (
        "settings",
        "identity",
        "codec",
        "store",
        "gate",
        "flow_alive",
        "local_uri",
        "retired",
        "_skipped_log",
        "node_address",
    )

    def __init__(
        self,
        settings: ProxySettings,
        identity: LocalIdentity,
        codec: FlowTokenCodec,
        store: LocationStore,
        gate: AuthGate | None,
        flow_alive: Callable[[Flow], bool],
        local_uri: Callable[[Flow], SipURI],
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.codec = codec
        self.store = store
        self.gate = gate
        self.flow_alive = flow_alive
        self.local_uri = local_uri  # our URI on a flow's listener (Record-Route)
        # Flow token of a dead flow -> the outbound binding (AoR, instance, reg-id) it carried,
        # so a dialog survives the phone reconnecting (``_replacement``). Bounded: an attacker
        # can make flows die, not make this table grow.
        self.retired: LruTable[str, BindingKey] = LruTable(65536)
        # bindings whose skipping was logged once (``_lookup``)
        self._skipped_log: LruTable[BindingKey, bool] = LruTable(4096)
        #: issue 20: the address of a live node of the cluster (None: unknown or dead)
        self.node_address: Callable[[str], SipURI | None] = _no_node

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
    def handle(self, req: Request, arrival: Flow, now: float, wall: float) -> Decision:
        """The decision for a new request (not ACK, not CANCEL)."""
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
        return self._proxy(req, arrival, now, wall)

    def _register(self, req: Request, arrival: Flow, now: float) -> Decision:
        if self.gate is None:
            return _REGISTER_OPEN
        user = self.gate.check(req, arrival.remote[0], now, register=True)
        if isinstance(user, Refusal):
            return _reply(user)
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI) or to_uri.user_unescaped != user:
            return Reply(403, "Forbidden (authenticated user does not match To)")
        return Register(user)

    def _proxy(self, req: Request, arrival: Flow, now: float, wall: float) -> Decision:
        mf = check_max_forwards(req)
        if mf is None:
            return Reply(483, "Too Many Hops")
        unsupported = unsupported_proxy_require(req)
        if unsupported:
            return Reply(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
        if is_loop(req, self.identity):
            return Reply(482, "Loop Detected")
        # issue 20: a node of our cluster that handed this on has applied the relay policy
        peer = take_hop(self.codec, req, wall) if self.codec.node else None
        rr = self._route(req, arrival)
        if rr.reject is not None:
            return Reply(*rr.reject)
        req.set_header("Max-Forwards", str(mf))
        hop = self._next_hop(req, rr)
        if isinstance(hop, Reply):
            return hop
        # A peer's proof is worth something only for what a peer sends: a request down a flow of
        # ours, named by our token. Anything else it carries is judged like any request.
        trusted = peer is not None and hop.kind is HopKind.FLOW
        refusal = True if trusted else self._authorise(req, arrival, now, hop, rr.in_dialog)
        if isinstance(refusal, Reply):
            return refusal
        if self.gate is not None:
            self.gate.consume(req)
        dests = self._dests(req, hop, wall, authenticated=refusal)
        if isinstance(dests, Reply):
            return dests
        caller_rr = None
        record = self.settings.record_route and is_dialog_creating(req)
        if record and not trusted:
            ob = client_wants_outbound(req) or self._flow_registered(arrival)
            caller_rr = self.record_route(req, self.local_uri(arrival), arrival, ob=ob)
        return Forward(req, group_targets(dests), caller_rr, record_callee=record)

    def record_route(self, req: Request, local: SipURI, flow: Flow, *, ob: bool) -> str:
        """Our Record-Route naming ``flow``, bound to this dialog (Call-ID, caller's tag)."""
        token = self.token(flow)
        proof = None
        if token is not None:
            proof = self.codec.dialog_proof(token, req.call_id, req.from_tag or "")
        return record_route_uri(local, token, ob=ob, proof=proof)

    def _route(self, req: Request, arrival: Flow) -> RouteResult:
        """RFC 3261 §16.4: strict-route restore, then our Routes popped (tokens checked)."""
        strict = restore_strict_route(req, arrival, self.identity, self.codec)
        rr = preprocess_routes(req, arrival, self.identity, self.codec)
        if strict is not None and rr.reject is None and rr.token_flow is None:
            rr = attrs.evolve(rr, token_flow=strict.token_flow, in_dialog=strict.in_dialog)
        return rr

    # ------------------------------------------------------------------ the relay policy
    def _next_hop(self, req: Request, rr: RouteResult) -> Hop | Reply:
        """Where the request would go, before anyone is asked who they are (RFC 3261 §16.5)."""
        if rr.token_flow is not None:
            return Hop(HopKind.FLOW, flow=rr.token_flow)
        if rr.node is not None:
            return Hop(HopKind.NODE, node=rr.node, token=rr.node_token)
        routes = req.routes
        if routes:
            nxt = routes[0].uri
            if not isinstance(nxt, SipURI):
                return Reply(416, "Unsupported URI Scheme in Route")
            return self._external(nxt)
        uri = req.uri
        assert isinstance(uri, SipURI)
        if self.identity.is_served_uri(uri) and not uri.has_param("maddr"):
            return Hop(HopKind.LOOKUP, uri=uri)
        return self._external(uri)

    def _external(self, uri: SipURI) -> Hop | Reply:
        """Trust model: a host that is not ours is reached only when it is a served domain or a
        relay domain, checked on the address actually used (``maddr`` before the host)."""
        used = (uri.param("maddr") or uri.host).lower().strip("[]")
        if used in self.settings.relay_domains:
            return Hop(HopKind.EXTERNAL, uri=uri)
        if self.identity.is_local_domain(used):
            # One of our names or addresses is a SIP server of ours only on our ports: any other
            # port on our host is a service behind us (SSRF, issue 16 finding 3).
            port = uri.port or (5061 if uri.secure or uri.transport == "tls" else 5060)
            if port in self.identity.ports:
                return Hop(HopKind.EXTERNAL, uri=uri)
            return Reply(403, f"Forbidden (relaying to {used} port {port} is not allowed: not a port of this server)")
        return Reply(403, f"Forbidden (relaying to {used} is not allowed)")

    def _authorise(self, req: Request, arrival: Flow, now: float, hop: Hop, in_dialog: bool) -> bool | Reply:
        """Who may send this there (DESIGN.md, trust model). Returns whether the sender is
        authenticated, or the answer (407 challenge, 403).
        - Inside a dialog this server record-routed (a verified ``dlg`` proof): no challenge.
        - Towards a local user (lookup, or a flow token of ours): a sender claiming one of our
          users in From must prove it; anyone else may call our users.
        - Anywhere else (relay domain, another server): only an authenticated sender."""
        gate = self.gate
        if gate is None:
            return True  # authentication is off (logged at start-up): nobody can be asked
        elsewhere = hop.kind is HopKind.EXTERNAL
        if hop.kind is HopKind.FLOW or hop.kind is HopKind.NODE:
            if in_dialog:
                return False
            # Out of a dialog a token is a way to a local user only while a binding lives on its
            # flow; a trunk's flow, or a caller's, is "anywhere else" (issue 16, finding 2).
            token = hop.token if hop.kind is HopKind.NODE else self.token(hop.flow) if hop.flow else None
            elsewhere = token is None or not self.store.flow_bindings(token)
        try:
            from_uri = req.from_.uri
        except ParseError:
            return Reply(400, "Bad Request (unusable From)")
        local_from = isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri.host)
        if not elsewhere and not local_from:
            return False
        user: str | Refusal | None = self._trusted_user(arrival) if self.settings.trust_registered_flows else None
        if user is None:
            user = gate.check(req, arrival.remote[0], now, register=False)
        if isinstance(user, Refusal):
            return _reply(user)
        if local_from and isinstance(from_uri, SipURI) and from_uri.user_unescaped != user:
            return Reply(403, "Forbidden (From does not match the authenticated user)")
        return True

    def _trusted_user(self, flow: Flow) -> str | None:
        """auth.trust_registered_flows: the user whose authenticated REGISTER bound a binding
        that is still alive on this very flow."""
        assert self.gate is not None
        user = self.gate.flow_users.get(flow)
        token = self.token(flow) if user is not None else None
        if token is None:
            return None
        for b in self.store.flow_bindings(token):
            if b.aor.rpartition("@")[0] == user:  # an AoR is ``user@host``, user unescaped
                return user
        return None

    # ------------------------------------------------------------------ targets
    def _dests(self, req: Request, hop: Hop, wall: float, *, authenticated: bool) -> list[Dest] | Reply:
        """RFC 3261 §16.5 target determination, with RFC 5626 flow tokens first."""
        if hop.kind is HopKind.FLOW:
            assert hop.flow is not None
            flow = hop.flow if self.flow_alive(hop.flow) else self._replacement(hop.flow, wall)
            if flow is None:
                return Reply(430, "Flow Failed")
            return [Dest(req.uri_text, [], flow=flow)]
        if hop.kind is HopKind.NODE:
            assert hop.node is not None
            address = self.node_address(hop.node)
            if address is None:
                return Reply(430, f"Flow Failed (cluster node {hop.node} is not alive)")
            return [Dest(req.uri_text, [], uri=address, node=hop.node)]
        assert hop.uri is not None
        if hop.kind is HopKind.EXTERNAL:
            return [Dest(req.uri_text, [], uri=hop.uri)]
        return self._lookup(hop.uri, wall, authenticated)

    def retire(self, token: str, keys: list[BindingKey]) -> None:
        """A flow died with these bindings on it (runtime, on flow close)."""
        for key in keys:
            if key.kind == INSTANCE:
                self.retired.put(token, key)

    def _replacement(self, dead: Flow, wall: float) -> Flow | None:
        """A dialog survives a reconnect (issue 17): a phone that lost its connection and
        registered the same ``+sip.instance`` and reg-id again on a new flow is reached there by
        requests whose Route still names the dead flow. Never a flow of another instance: the
        binding key carries the instance and reg-id (RFC 5626 §6)."""
        token = self.token(dead)
        key = self.retired.get(token) if token is not None else None
        binding = self.store.get(key) if key is not None else None
        if binding is None or binding.expires_at <= wall or binding.flow_token is None:
            return None
        try:
            flow = self.codec.decode(binding.flow_token)
        except InvalidToken:
            return None
        return flow if self.flow_alive(flow) else None

    def _lookup(self, uri: SipURI, wall: float, authenticated: bool) -> list[Dest] | Reply:
        """RFC 3261 §16.5 / RFC 5627 §5.1: the location service, by AoR or by GRUU. An
        unauthenticated sender gets the same 480 for an unknown user as for an unregistered
        one (no user enumeration)."""
        store = self.store
        if uri.has_param("gr"):
            match = store.find_gruu(uri, wall)
            if match is None:
                return Reply(404, "Not Found (unknown GRUU)") if authenticated else _UNAVAILABLE
            bindings = store.lookup_instance(match.aor, match.instance_id, wall)
        else:
            bindings = store.lookup(uri.aor, wall)
            if not bindings and self.gate is not None and authenticated:
                if not self.gate.credentials.has_user(uri.user_unescaped or ""):
                    return Reply(404, "Not Found")
        dests = []
        for b in bindings:
            d = binding_dest(b, self.identity, self.codec)
            if d.node is not None:
                d.uri = self.node_address(d.node)
                if d.uri is None:
                    continue  # its node is gone: the binding goes with it (cluster view)
                dests.append(d)
                continue
            # A binding reached through no flow of ours (a REGISTER that was not first hop, a
            # foreign Path) sends the request to a host of the registrant's choosing: that is
            # "anywhere else" and passes the relay policy or is skipped (issue 16: no relay or
            # amplifier through a registered Contact).
            if d.flow is None and d.uri is not None and isinstance(self._external(d.uri), Reply):
                if self._skipped_log.get(b.key) is None:
                    self._skipped_log.put(b.key, True)
                    log.warning("binding %s of %s skipped: it names %s, reached through no flow of ours and "
                                "not in proxy.relay_domains", b.contact_uri[:80], b.aor, d.uri.host)
                continue
            dests.append(d)
        if not dests:
            return _UNAVAILABLE
        return dests

    def _foreign_route(self, req: Request) -> bool:
        """A Route naming somebody else: the request is not for this server's own handling."""
        for r in req.routes:
            u = r.uri
            if not isinstance(u, SipURI) or not self.identity.is_ours(u):
                return True
        return False

    def foreign(self, binding: Binding) -> bool:
        """A binding whose flow another node of the cluster holds (issue 20)."""
        if not self.codec.node or binding.flow_token is None:
            return False
        try:
            _, node = self.codec.decode_node(binding.flow_token)
        except InvalidToken:
            return False
        return bool(node) and node != self.codec.node

    def _flow_registered(self, flow: Flow) -> bool:
        """A flow an outbound REGISTER established (RFC 5626 §5.3.2 edge behaviour)."""
        token = self.token(flow)
        return token is not None and any(b.outbound for b in self.store.flow_bindings(token))

    # ------------------------------------------------------------------ without a transaction
    def route_stateless(self, req: Request, arrival: Flow, wall: float) -> Dest | None:
        """ACK for a 2xx (RFC 3261 §16.11): where it goes, or None to drop it. It cannot be
        challenged, so it goes only down a flow of ours inside a dialog this server
        record-routed, or to a local user's bindings; never to another host. The request is
        edited in place (Route pre-processing, Max-Forwards)."""
        mf = check_max_forwards(req)
        if mf is None:
            return None
        if req.has_header("cluster-hop"):
            req.remove_header("cluster-hop")  # an ACK needs no proof; none goes further (issue 20)
        rr = self._route(req, arrival)
        if rr.reject is not None:
            return None
        req.set_header("Max-Forwards", str(mf))
        hop = self._next_hop(req, rr)
        if isinstance(hop, Reply) or hop.kind is HopKind.EXTERNAL:
            return None
        if hop.kind in (HopKind.FLOW, HopKind.NODE) and not rr.in_dialog:
            return None
        dests = self._dests(req, hop, wall, authenticated=False)
        if isinstance(dests, Reply) or not dests:
            return None
        return dests[0]

    def route_late_2xx(self, resp: Response) -> tuple[Response, Flow] | None:
        """RFC 3261 §16.7 step 5 / PX-15: a 2xx to INVITE with no client transaction left is
        still forwarded upstream, our Via removed, down the caller's flow named by a Record-Route
        token of ours (whose flow matches the next Via). Nothing else is sent anywhere: a
        response made up to look like ours must not turn the server into a reflector."""
        vias = resp.vias
        if len(vias) < 2 or vias[0].host.lower() not in self.identity.hosts:
            return None
        out = resp.copy()
        out.pop_first_value("via")
        nxt = out.top_via
        caller_tag = resp.from_tag or ""
        for rr in out.record_routes:
            u = rr.uri
            if isinstance(u, SipURI) and self.identity.is_ours(u) and u.user:
                # Only the caller's leg of a dialog this server record-routed: the proof binds
                # the token to this Call-ID and the caller's tag (issue 16, finding 7).
                proof = u.param("dlg")
                if not proof or not self.codec.verify_dialog_proof(proof, u.user, resp.call_id, (caller_tag,)):
                    continue
                try:
                    f = self.codec.decode(u.user)
                except InvalidToken:
                    continue
                if self.flow_alive(f) and f.remote[0] in (nxt.received or nxt.host, nxt.host):
                    return out, f
        return None
