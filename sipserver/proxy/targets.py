"""Where a forwarded request goes, and the request each branch carries (RFC 3261 §16.5-§16.6,
RFC 3327 §5.4, RFC 5626 §7). Sans-IO.

Invariants:
- A ``Dest`` is either a known flow (a binding's flow token, a Route token) or a URI to reach;
  reaching a URI (DNS, a new connection) is the runtime's work, deciding which URI is ours.
- One ``Target`` per ``+sip.instance`` with its flows in ascending reg-id (OB-AP-01/04); a binding
  without instance, or not outbound, is a target of its own.
- A branch request is built from the forwarded request by editing copies: the Request-URI, the
  route set, our Record-Route pair (OB-CS-06) and our Via; nothing else changes.
"""

from __future__ import annotations

import hashlib
import ipaddress

import attrs

from ..outbound.flow import Flow, Transport
from ..outbound.flowtoken import FlowTokenCodec, InvalidToken
from ..registrar.binding import Binding
from ..sip import NameAddr, ParseError, Request
from ..sip.build import MAGIC_COOKIE
from ..sip.randomness import random_hex
from ..sip.uri import SipURI, parse_uri
from .context import Candidate, Target
from .routing import LocalIdentity, transport_for_uri

__all__ = [
    "Dest",
    "binding_dest",
    "build_branch_request",
    "group_targets",
    "is_loop",
    "must_wait",
    "new_branch_id",
    "stable_tag",
]


@attrs.define(eq=False)
class Dest:
    """Where one branch goes: a known flow, or a URI to reach (then the runtime makes a flow)."""

    request_uri: str
    route_set: list[str]
    flow: Flow | None = None
    uri: SipURI | None = None  # next hop when no flow: Contact or Route URI
    binding: Binding | None = None
    ob: bool = False  # the callee side asked for outbound (its Record-Route gets ;ob)
    #: issue 20: the flow is held by this other node of the cluster; ``uri`` is that node's
    #: address and the route set starts with the Path/Route naming the flow
    node: str | None = None


def binding_dest(b: Binding, identity: LocalIdentity, codec: FlowTokenCodec) -> Dest:
    """RFC 3327 §5.4 / RFC 5626 §7: the stored Path is the branch's route set; a top Path URI of
    ours carries the flow token, whose Flow is the destination socket."""
    path = list(b.path)
    if path:
        top = NameAddr.parse(path[0], "Path")
        turi = top.uri
        ours = isinstance(turi, SipURI) and identity.is_ours(turi)
        if isinstance(turi, SipURI) and turi.user and (ours or codec.node):
            try:
                f, node = codec.decode_node(turi.user)
            except InvalidToken:
                f, node = None, ""
                if not ours:
                    return Dest(b.contact_uri, path, uri=top.sip_uri, binding=b)
            if node and node != codec.node:
                # Another node holds the flow (issue 20): to that node, the Path as Route.
                return Dest(b.contact_uri, path, binding=b, ob=turi.has_param("ob"), node=node)
            return Dest(b.contact_uri, path[1:], flow=f, binding=b, ob=turi.has_param("ob"))
        return Dest(b.contact_uri, path, uri=top.sip_uri, binding=b)
    contact = NameAddr.parse(f"<{b.contact_uri}>", "Contact")
    return Dest(b.contact_uri, [], uri=contact.sip_uri, binding=b)


def group_targets(dests: list[Dest]) -> list[Target]:
    """RFC 5626 §7: one target per +sip.instance, its flows in ascending reg-id (OB-AP-01/04)."""
    by_instance: dict[tuple[str, str], list[Dest]] = {}
    singles: list[Target] = []
    for d in dests:
        b = d.binding
        if b is not None and b.instance_id and b.outbound:
            by_instance.setdefault((b.aor, b.instance_id), []).append(d)
        else:
            singles.append(Target((_candidate(d),)))
    grouped = [
        Target(tuple(_candidate(d) for d in sorted(group, key=_reg_id)))
        for group in by_instance.values()
    ]
    return grouped + singles


def _reg_id(d: Dest) -> int:
    return (d.binding.reg_id or 0) if d.binding is not None else 0


def _candidate(d: Dest) -> Candidate:
    b = d.binding
    if b is None:
        return Candidate(ref=d, label=d.request_uri)
    return Candidate(ref=d, q=b.q, binding_key=b.key, label=d.request_uri)


def must_wait(dest: Dest) -> bool:
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


def build_branch_request(
    request: Request, dest: Dest, via: str, record_route: tuple[str | None, str | None] | None
) -> Request:
    """RFC 3261 §16.6: copy, set the Request-URI, prepend the branch's route set, add our
    Record-Route pair (caller's leg below, callee's leg on top, OB-CS-06) and our Via."""
    req = request.copy()
    if dest.request_uri != req.uri_text:
        req.uri = parse_uri(dest.request_uri)
    if dest.route_set:
        values = [*dest.route_set, *req.header_values("route")]
        req.remove_header("route")
        req.add_header("Route", ", ".join(values))
    if record_route is not None:
        # Either may be missing on a hop between cluster nodes (issue 20): the node that hands the
        # request on records only the caller's leg, the node holding the callee's flow only that.
        caller_rr, callee_rr = record_route
        if caller_rr is not None:
            req.add_header("Record-Route", caller_rr, top=True)
        if callee_rr is not None:
            req.add_header("Record-Route", callee_rr, top=True)
    req.add_header("Via", via, top=True)
    return req


def stable_tag(req: Request) -> str:
    """A To tag that is the same for retransmissions of one request (RFC 3261 §8.2.6.2)."""
    try:
        seed = f"{req.call_id}|{req.from_tag}|{req.cseq.seq}|{req.top_via.branch}"
    except ParseError:
        seed = req.start_line()
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def _loop_hash(req: Request, salt: str = "") -> str:
    """RFC 3261 §16.6 step 8: hash of what makes a request distinct, for loop detection.
    The top Via is left out: a request bounced back by a downstream element carries that
    element's Via on top, and must still be recognised; a spiral changes the Request-URI."""
    try:
        seed = f"{req.uri_text}|{req.from_tag}|{req.to_tag}|{req.call_id}|{req.cseq.seq}"
    except ParseError:
        seed = req.start_line()
    if salt:
        seed += "|" + salt
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


_OUR_PREFIX = MAGIC_COOKIE + "sv"


def new_branch_id(req: Request, salt: str = "") -> str:
    """Our Via branch: magic cookie, the loop hash (§16.6 step 8), then randomness. ``salt`` is
    the cluster node's name (``LocalIdentity.node``)."""
    return f"{_OUR_PREFIX}{_loop_hash(req, salt)}.{random_hex(5)}"


def is_loop(req: Request, identity: LocalIdentity) -> bool:
    """RFC 3261 §16.3 step 4: a Via of ours whose branch carries the hash we would compute now."""
    vias = req.vias
    if len(vias) < 2:
        return False
    mine = _loop_hash(req, identity.node)
    for via in vias[1:]:
        b = via.branch or ""
        if b.startswith(_OUR_PREFIX) and b[9:21] == mine and via.host.lower() in identity.hosts:
            return True
    return False
