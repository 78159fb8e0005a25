"""The proof a cluster node puts on a request it hands to another node (issue 20). Sans-IO.

A node that forwards a request to the node holding the destination flow has already applied the
relay policy and authenticated the sender (DESIGN.md, trust model); the receiving node must not
ask again (it cannot: the caller's credentials were for the first node, and a challenge from the
second would reach a caller that never talked to it). So the first node adds ``Cluster-Hop:
NODE;ts=T;mac=M``, M being a MAC under the flow-token key all nodes share over the node, the
time, and what makes this request one (Call-ID, CSeq, method, Request-URI, its own Via branch).
Trust comes from the key, not from the source address: anybody may send to a node's cluster
address, and a request without a valid proof is treated like any other.

Invariants:
- The header is removed from every request a node receives, valid or not, so it never travels
  further than one hop and a forged one only costs its sender the header.
- A proof older or newer than ``MAX_SKEW`` seconds is refused (a captured request replayed later).
"""

from __future__ import annotations

from ..outbound.flowtoken import FlowTokenCodec, valid_node
from ..sip import ParseError, Request

__all__ = ["HOP_HEADER", "MAX_SKEW", "hop_value", "take_hop"]

HOP_HEADER = "Cluster-Hop"
MAX_SKEW = 30.0


def _body(node: str, ts: int, req: Request) -> bytes:
    cseq = req.cseq
    via = req.top_via
    # The Routes name the flow the request is for: covered, so that a captured request cannot be
    # replayed towards another phone's flow inside the skew window.
    routes = ",".join(v.strip() for v in req.header_values("route"))
    text = "\x00".join(("hop", node, str(ts), req.call_id, str(cseq.seq), req.method, req.uri_text, via.branch or "",
                        routes))
    return text.encode("utf-8", "surrogateescape")


def hop_value(codec: FlowTokenCodec, req: Request, wall: float) -> str:
    """The ``Cluster-Hop`` value for ``req`` as it leaves this node (its Via already on top)."""
    ts = int(wall)
    return f"{codec.node};ts={ts};mac={codec.mac_text(_body(codec.node, ts, req))}"


def take_hop(codec: FlowTokenCodec, req: Request, wall: float) -> str | None:
    """Remove any ``Cluster-Hop`` header from ``req``; the sending node's name when there was one
    proof and it verifies, else None."""
    if not req.has_header("cluster-hop"):
        return None
    values = req.header_values("cluster-hop")
    req.remove_header("cluster-hop")  # even an empty one: it never goes further than one hop
    if len(values) != 1 or not codec.node:
        return None
    node, _, rest = values[0].partition(";")
    node = node.strip()
    if not valid_node(node):
        return None
    params = dict(p.partition("=")[::2] for p in rest.split(";"))
    try:
        ts = int(params.get("ts", ""))
        body = _body(node, ts, req)
    except (ValueError, ParseError):
        return None
    if abs(wall - ts) > MAX_SKEW or not codec.verify_mac_text(body, params.get("mac", "")):
        return None
    return node
