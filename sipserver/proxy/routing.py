"""Proxy request processing up to the choice of targets (RFC 3261 §16.3-§16.6, RFC 5626 §5.3).

Sans-IO: functions take a request, the flow it arrived on and this server's identity, and return
decisions. Invariants:
- A Route or Record-Route URI is "ours" when its host is one of our addresses or served domains
  and its port is one of our ports (or absent).
- A Route of ours whose user part is present must be a valid flow token (RFC 5626 §5.2); a token
  that fails its HMAC is a forgery and the request is refused with 403, never guessed at.
- Routing to a flow named by a token never touches the Contact (no Contact rewriting anywhere).
"""

from __future__ import annotations

import attrs

from ..outbound.flow import Flow, Transport
from ..outbound.flowtoken import FlowTokenCodec, ForeignToken, InvalidToken
from ..sip.errors import ParseError
from ..sip.headers import NameAddr
from ..sip.message import Request
from ..sip.uri import SipURI

SUPPORTED_OPTIONS = frozenset({"path", "outbound", "gruu"})
# Requests that create a dialog and so get a Record-Route (RFC 3261 §16.6 step 4; RFC 6665, 3515).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY",
     "REFER", "PUBLISH", "INFO", "UPDATE", "PRACK"}
)


class LocalIdentity:
    """Who "we" are: addresses, ports and domains this server answers for.

    A plain slotted class, not attrs with ``attrs.field(factory=...)``: the mypyc build
    (sipserver/native.py) cannot compile a class attribute whose value is a field definition."""

    __slots__ = ("hosts", "ports", "domains", "node")

    def __init__(
        self,
        hosts: set[str] | None = None,
        ports: set[int] | None = None,
        domains: set[str] | None = None,
        node: str = "",
    ) -> None:
        self.hosts: set[str] = set() if hosts is None else hosts
        self.ports: set[int] = set() if ports is None else ports
        self.domains: set[str] = set() if domains is None else domains
        #: this node's name in a cluster ("" alone); salts the loop hash of our Via branches,
        #: since nodes of one cluster share hosts (and, with --workers, ports) yet are distinct
        #: hops
        self.node = node

    def __repr__(self) -> str:
        return f"LocalIdentity(hosts={self.hosts!r}, ports={self.ports!r}, domains={self.domains!r}, node={self.node!r})"

    def add_host(self, host: str) -> None:
        self.hosts.add(host.lower().strip("[]"))

    def is_local_domain(self, host: str) -> bool:
        """Served domain: configured domains, our addresses, and ``localhost`` (issue: runtime)."""
        h = host.lower().strip("[]")
        return h in self.domains or h in self.hosts or h == "localhost"

    def is_served_uri(self, uri: SipURI) -> bool:
        """A Request-URI this server resolves through the location service: a served domain or
        one of our addresses on one of our ports. A UA on our own host (our IP, another port) is
        a target, not us."""
        host = uri.host.lower()
        if host in self.domains or host == "localhost":
            return True
        return host in self.hosts and (uri.port is None or uri.port in self.ports)

    def is_ours(self, uri: SipURI) -> bool:
        host = uri.host.lower()
        if host not in self.hosts and host not in self.domains and host != "localhost":
            return False
        return uri.port is None or uri.port in self.ports


@attrs.frozen
class RouteResult:
    """Outcome of Route pre-processing (RFC 3261 §16.4, RFC 5626 §5.3.1)."""

    # the flow named by the last token of ours whose flow differs from the arrival flow:
    # the request goes down that flow (an "incoming" request in RFC 5626 §5.3.1 terms); a token
    # authorises sending down its own flow and nothing else (DESIGN.md, trust model)
    token_flow: Flow | None = None
    # a status to answer with at once (403 forged token), with a reason
    reject: tuple[int, str] | None = None
    popped: int = 0
    # the Route naming ``token_flow`` carried a dialog proof (``dlg``) that verifies for this
    # request's Call-ID and tags: the request is inside a dialog this server record-routed,
    # and goes down that dialog's flow
    in_dialog: bool = False
    # issue 20: the top Route (left in place) carries a genuine token of another cluster node:
    # the request goes to that node, which sends it down its flow
    node: str | None = None
    node_token: str | None = None


def _dialog_tags(req: Request) -> list[str]:
    return [t for t in (req.from_tag, req.to_tag) if t]


def _dialog_proven(uri: SipURI, token: str, req: Request, codec: FlowTokenCodec) -> bool:
    # The dialog proof counts only on the token whose flow the request is sent down: a
    # genuine proof of one dialog must not carry a request down another flow (issue 16).
    proof = uri.param("dlg")
    return bool(proof and req.to_tag and codec.verify_dialog_proof(proof, token, req.call_id, _dialog_tags(req)))


def _take_token(
    uri: SipURI, req: Request, arrival: Flow, codec: FlowTokenCodec, found: list[object]
) -> tuple[int, str] | None:
    """Check one URI of ours that carries a token; note its flow and dialog proof in ``found``
    ([token_flow, in_dialog, node]). Returns a rejection for a forged token."""
    token = uri.user
    assert token
    try:
        flow = codec.decode(token)
    except ForeignToken as foreign:
        found[1] = _dialog_proven(uri, token, req, codec)
        found[2] = foreign.node
        return None
    except InvalidToken:
        return (403, "Forbidden (invalid flow token in Route)")
    if flow == arrival:
        return None  # the sender's own leg: it names no destination and proves nothing
    found[0] = flow
    found[1] = _dialog_proven(uri, token, req, codec)
    return None


def _peer_route(uri: SipURI, codec: FlowTokenCodec) -> bool:
    """A Route that is not ours by address but carries a genuine token of another node of our
    cluster (nodes on other hosts): trusted by the shared key, not by its host (issue 20)."""
    if not codec.node or not uri.user:
        return False
    try:
        _, node = codec.decode_node(uri.user)
    except InvalidToken:
        return False
    return bool(node) and node != codec.node


def preprocess_routes(
    req: Request, arrival: Flow, identity: LocalIdentity, codec: FlowTokenCodec
) -> RouteResult:
    """Pop every top Route that is ours; decode flow tokens on the way.

    RFC 3261 §16.4: a top Route naming this proxy is removed. RFC 5626 §5.3.1: a token whose flow
    is the arrival flow marks an outgoing request (from the UA): keep going; a token naming another
    flow marks an incoming request: that flow is the destination. Two Record-Route entries of ours
    (one per leg, OB-CS-06) are both consumed here, in either direction of the dialog.
    Linear in the Route header's size: the values are parsed once and removed in one edit."""
    routes = req.routes
    found: list[object] = [None, False, None]
    n = 0
    for top in routes:
        uri = top.uri
        if not isinstance(uri, SipURI):
            break
        if not identity.is_ours(uri):
            if _peer_route(uri, codec):
                _take_token(uri, req, arrival, codec, found)
            break
        if uri.user:
            reject = _take_token(uri, req, arrival, codec, found)
            if reject is not None:
                return RouteResult(reject=reject)
            if found[2] is not None:
                break  # another node's flow: the Route stays for that node
        n += 1
    if n:
        rest = req.header_values("route")[n:]
        req.remove_header("route")
        if rest:
            req.add_header("Route", ", ".join(rest))
    token_flow, node = found[0], found[2]
    assert token_flow is None or isinstance(token_flow, Flow)
    if node is not None:
        # The remaining top Route is the other node's; an earlier token of ours (a flow of ours
        # other than the arrival one) cannot also be the destination.
        top_uri = req.routes[0].uri
        assert isinstance(top_uri, SipURI) and isinstance(node, str)
        return RouteResult(popped=n, in_dialog=bool(found[1]), node=node, node_token=top_uri.user)
    return RouteResult(token_flow=token_flow, popped=n, in_dialog=bool(found[1]))


def restore_strict_route(
    req: Request, arrival: Flow, identity: LocalIdentity, codec: FlowTokenCodec
) -> RouteResult | None:
    """RFC 3261 §16.4: a Request-URI that is ours (one of our Record-Route URIs, recognised by
    its verified flow token) with a Route set present means the previous hop was a strict router:
    the real Request-URI is the last Route value. Returns what the Request-URI's token proves
    when it restored one (None: nothing restored)."""
    uri = req.uri
    if not isinstance(uri, SipURI) or not uri.user or not identity.is_ours(uri):
        return None
    values = req.header_values("route")
    if not values:
        return None
    found: list[object] = [None, False, None]
    if _take_token(uri, req, arrival, codec, found) is not None or found[2] is not None:
        return None  # not one of ours after all: the request is handled as it stands
    last = NameAddr.parse(values[-1], "Route")
    req.remove_header("route")
    if len(values) > 1:
        req.add_header("Route", ", ".join(values[:-1]))
    req.uri = last.sip_uri
    token_flow = found[0]
    assert token_flow is None or isinstance(token_flow, Flow)
    return RouteResult(token_flow=token_flow, in_dialog=bool(found[1]))


def unsupported_proxy_require(req: Request) -> list[str]:
    """RFC 3261 §16.3 step 5: Proxy-Require tags we do not support (420 + Unsupported)."""
    return sorted(t for t in req.proxy_require if t not in SUPPORTED_OPTIONS)


def check_max_forwards(req: Request) -> int | None:
    """RFC 3261 §16.3 step 3. Returns the value to forward with, None when exhausted."""
    mf = req.max_forwards
    if mf is None:
        return 70  # RFC 3261 §16.6 step 3: add one
    if mf <= 0:
        return None
    return min(mf, 256) - 1


def is_dialog_creating(req: Request) -> bool:
    return req.method in DIALOG_CREATING and req.to_tag is None


def client_wants_outbound(req: Request) -> bool:
    """RFC 5626 §5.3.2: the UA asked for outbound when its Contact (or the top Route) has ;ob."""
    try:
        for c in req.contacts:
            if not c.star and isinstance(c.uri, SipURI) and c.uri.has_param("ob"):
                return True
    except ParseError:
        return False
    return False


def record_route_uri(local: SipURI, token: str | None, *, ob: bool, proof: str | None = None) -> str:
    """Our Record-Route value: ``<sip:TOKEN@host:port;transport=x;lr[;ob][;dlg=PROOF]>``
    (RFC 5626 §5.3; ``dlg`` binds the token to the dialog, ``FlowTokenCodec.dialog_proof``)."""
    uri = local.replace(user=token)
    uri = uri.with_param("lr")
    if ob:
        uri = uri.with_param("ob")
    if proof:
        uri = uri.with_param("dlg", proof)
    return f"<{uri}>"


def transport_for_uri(uri: SipURI) -> Transport:
    t = uri.transport
    if uri.secure:
        return Transport.TLS if t in (None, "tcp", "tls") else Transport.WSS
    if t == "tcp":
        return Transport.TCP
    if t == "tls":
        return Transport.TLS
    if t == "ws":
        return Transport.WS
    if t == "wss":
        return Transport.WSS
    return Transport.UDP


def stamp_received(req: Request, source: tuple[str, int]) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via, from the source
    address the request came from."""
    via = req.top_via
    changes: dict[str, str | None] = {}
    src_ip, src_port = source
    if via.host != src_ip:
        changes["received"] = src_ip
    if via.wants_rport:
        changes["rport"] = str(src_port)
        changes.setdefault("received", src_ip)
    if changes:
        req.replace_top_via(via.with_params(**changes))


def response_flow(req: Request, arrival: Flow) -> Flow:
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
