"""The Cluster-Hop proof (issue 20, sipserver/proxy/peers.py), sans-IO.

A node handing a request to the node that holds the destination flow adds ``Cluster-Hop:
NODE;ts=T;mac=M`` so that the receiving node does not authenticate the sender again. Trust
comes only from the MAC under the key the nodes share (DESIGN.md, trust model): ``take_hop``
returns the sending node for exactly one valid, fresh proof of *this* request, None for
anything else, and removes the header from the request in every case so it never travels
further than one hop."""

from __future__ import annotations

import re

import pytest

from sipserver.outbound.flowtoken import FlowTokenCodec
from sipserver.proxy.peers import HOP_HEADER, MAX_SKEW, hop_value, take_hop
from sipserver.sip import Request, parse_message

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
OLD_KEY = bytes(range(50, 82))
WALL = 1_700_000_000.0

A = FlowTokenCodec(KEY, node="a")
B = FlowTokenCodec(KEY, node="b")


def request(
    method: str = "INVITE",
    ruri: str = "sip:bob@example.com",
    call_id: str = "call-1@alice.example.org",
    cseq: int = 17,
    branch: str = "z9hG4bK.node-a.1",
    extra: str = "",
) -> Request:
    """A request as node a sends it to node b: a's Via on top, the caller's below."""
    text = (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5070;branch={branch}\r\n"
        "Via: SIP/2.0/UDP alice.example.org;branch=z9hG4bK.up1;received=192.0.2.10\r\n"
        "Max-Forwards: 69\r\n"
        "From: Alice <sip:alice@example.org>;tag=fa1\r\n"
        "To: Bob <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def with_hop(req: Request, *values: str) -> Request:
    for value in values:
        req.add_header(HOP_HEADER, value)
    return req


def proof(codec: FlowTokenCodec = A, req: Request | None = None, wall: float = WALL) -> str:
    return hop_value(codec, req if req is not None else request(), wall)


def assert_gone(req: Request) -> None:
    assert not req.has_header("cluster-hop"), (
        f"Cluster-Hop left on the request: {req.header_lines('cluster-hop')}"
    )
    assert b"cluster-hop" not in req.to_bytes().lower()


# --------------------------------------------------------------------------- the valid proof
def test_valid_proof_names_the_sending_node_and_is_removed() -> None:
    """Issue 20: a's proof for this very request, fresh, under the shared key: b learns "a" and
    the header is gone from what b forwards."""
    value = proof()
    assert re.fullmatch(r"a;ts=1700000000;mac=[A-Za-z0-9_-]+", value), value
    req = with_hop(request(), value)
    assert take_hop(B, req, WALL) == "a"
    assert_gone(req)


@pytest.mark.parametrize("skew", [0.0, MAX_SKEW, -MAX_SKEW, MAX_SKEW - 0.5, -(MAX_SKEW - 0.5)])
def test_proof_within_max_skew_is_accepted(skew: float) -> None:
    """Issue 20: the clocks of two nodes may differ by up to MAX_SKEW seconds."""
    req = with_hop(request(), proof())
    assert take_hop(B, req, WALL + skew) == "a"
    assert_gone(req)


def test_proof_under_a_previous_key_is_accepted() -> None:
    """Issue 20 with key rotation (outbound.previous_secrets): a node not yet restarted with the
    new key still proves itself to one that has the old key among its previous keys."""
    old_a = FlowTokenCodec(OLD_KEY, node="a")
    new_b = FlowTokenCodec(KEY, (OLD_KEY,), node="b")
    req = with_hop(request(), proof(old_a))
    assert take_hop(new_b, req, WALL) == "a"
    assert_gone(req)


def test_request_without_the_header_is_left_alone() -> None:
    req = request()
    before = req.to_bytes()
    assert take_hop(B, req, WALL) is None
    assert req.to_bytes() == before


# --------------------------------------------------------------------------- forgeries
def _mac_of(value: str) -> str:
    return value.rpartition("mac=")[2]


FORGED = [
    pytest.param(
        lambda v: v.rpartition("mac=")[0] + "mac=" + "A" * len(_mac_of(v)), id="garbage-mac"
    ),
    pytest.param(lambda v: v.rpartition("mac=")[0] + "mac=", id="empty-mac"),
    pytest.param(lambda v: v.rpartition(";mac=")[0], id="no-mac"),
    pytest.param(lambda v: v[:-1] + ("B" if v[-1] != "B" else "C"), id="mac-last-char"),
    pytest.param(lambda v: v[:-2], id="mac-truncated"),
    pytest.param(lambda v: v + "A", id="mac-extended"),
    pytest.param(lambda v: "c" + v[1:], id="other-node-name"),
    pytest.param(lambda v: "b" + v[1:], id="receiving-node-name"),
    pytest.param(lambda v: v.replace("ts=1700000000", "ts=1700000001"), id="ts-changed"),
    pytest.param(lambda v: v.replace("ts=1700000000", "ts=abc"), id="ts-not-a-number"),
    pytest.param(lambda v: v.replace("ts=1700000000;", ""), id="no-ts"),
    pytest.param(lambda v: "a", id="bare-node"),
    pytest.param(lambda v: ";;;", id="semicolons"),
]


@pytest.mark.parametrize("forge", FORGED)
def test_forged_proof_is_refused_and_removed(forge) -> None:  # type: ignore[no-untyped-def]
    """Issue 20 / DESIGN.md trust model: a proof whose MAC does not verify for the node, time and
    request it states gives nothing (the sender is then asked to authenticate like anyone), and
    the header is removed all the same."""
    value = forge(proof())
    req = with_hop(request(), value)
    assert take_hop(B, req, WALL) is None, f"forged proof {value!r} accepted"
    assert_gone(req)


OTHER_REQUESTS = [
    pytest.param({"call_id": "call-2@alice.example.org"}, id="call-id"),
    pytest.param({"cseq": 18}, id="cseq"),
    pytest.param({"method": "MESSAGE"}, id="method"),
    pytest.param({"ruri": "sip:carol@example.com"}, id="request-uri"),
    pytest.param({"ruri": "sip:bob@example.com;transport=tcp"}, id="request-uri-param"),
    pytest.param({"branch": "z9hG4bK.node-a.2"}, id="via-branch"),
    # The Route names the flow: a captured proof must not take the request to another phone.
    pytest.param({"extra": "Route: <sip:OTHERFLOW@127.0.0.1:5080;transport=tcp;lr;ob>\r\n"}, id="route-added"),
]


def test_proof_over_a_route_refused_when_the_route_names_another_flow() -> None:
    """Issue 20: a request handed on is Routed by the Path the receiving node stored; replaying
    a captured one with the Route swapped for another phone's flow token does not verify."""
    route = "Route: <sip:FLOW1@127.0.0.1:5080;transport=tcp;lr;ob>\r\n"
    genuine = proof(A, request(extra=route))
    assert take_hop(B, with_hop(request(extra=route), genuine), WALL) == "a"
    swapped = with_hop(request(extra=route.replace("FLOW1", "FLOW2")), genuine)
    assert take_hop(B, swapped, WALL) is None
    assert_gone(swapped)


@pytest.mark.parametrize("changed", OTHER_REQUESTS)
def test_proof_of_another_request_is_refused_and_removed(changed: dict[str, object]) -> None:
    """Issue 20: a genuine proof copied from another request (captured between two nodes) does
    not verify on a request that differs in Call-ID, CSeq, method, Request-URI, the sending
    node's Via branch or its Route."""
    genuine = proof(A, request())
    req = with_hop(request(**changed), genuine)  # type: ignore[arg-type]
    assert take_hop(B, req, WALL) is None, f"proof of another request accepted ({changed})"
    assert_gone(req)


def test_proof_of_this_request_after_an_edit_of_the_request_uri_is_refused() -> None:
    """Issue 20: the proof is over the request as it left the node; rewriting the Request-URI on
    the way invalidates it."""
    req = with_hop(request(), proof())
    edited = parse_message(req.to_bytes().replace(b"INVITE sip:bob@", b"INVITE sip:mallory@", 1))
    assert isinstance(edited, Request)
    assert take_hop(B, edited, WALL) is None
    assert_gone(edited)


def test_proof_under_another_key_is_refused_and_removed() -> None:
    """Issue 20: a proof that is perfectly valid under another key (another cluster, an attacker
    guessing the scheme) gives nothing."""
    forged = proof(FlowTokenCodec(OTHER_KEY, node="a"))
    req = with_hop(request(), forged)
    assert take_hop(B, req, WALL) is None
    assert_gone(req)


@pytest.mark.parametrize("skew", [MAX_SKEW + 1, -(MAX_SKEW + 1), 3600.0, -3600.0, 1e9])
def test_proof_outside_max_skew_is_refused_and_removed(skew: float) -> None:
    """Issue 20 (peers.py invariant): a proof older or newer than MAX_SKEW seconds is refused
    (a captured request replayed later)."""
    req = with_hop(request(), proof())
    assert take_hop(B, req, WALL + skew) is None
    assert_gone(req)


def test_two_cluster_hop_headers_are_refused_and_both_removed() -> None:
    """Issue 20: exactly one proof; a valid one next to a forged one (two lines, or two values
    of one line) gives nothing, and every value goes."""
    good = proof()
    for values in (
        (good, "a;ts=1700000000;mac=AAAA"),
        ("a;ts=1700000000;mac=AAAA", good),
        (good, good),
    ):
        req = with_hop(request(), *values)
        assert take_hop(B, req, WALL) is None, values
        assert_gone(req)
    req = with_hop(request(), f"{good}, {good}")
    assert take_hop(B, req, WALL) is None
    assert_gone(req)


def test_codec_with_no_node_accepts_no_proof_and_removes_it() -> None:
    """Issue 20: a server outside any cluster has no peers; even a proof valid under its own key
    gives nothing, and the header is removed."""
    req = with_hop(request(), proof())
    assert take_hop(FlowTokenCodec(KEY), req, WALL) is None
    assert_gone(req)


def test_hop_value_of_a_codec_with_no_node_is_not_accepted_anywhere() -> None:
    """Issue 20: a proof naming no node (minted by a server on its own) proves nothing."""
    value = proof(FlowTokenCodec(KEY))
    assert value.startswith(";ts=")
    req = with_hop(request(), value)
    got = take_hop(B, req, WALL)
    assert got is None, (
        f"BUG (sipserver/proxy/peers.py take_hop): a proof naming no node is accepted and returns "
        f"{got!r}, not None; procedure.py _proxy tests `peer is not None` and skips authentication"
    )
    assert_gone(req)


@pytest.mark.parametrize(
    "value", ["", " ", ",", " , "], ids=["empty", "space", "comma", "space-comma"]
)
def test_empty_cluster_hop_header_is_removed(value: str) -> None:
    """Issue 20 (peers.py invariant: "The header is removed from every request a node receives,
    valid or not"): a Cluster-Hop line with no value at all must go too."""
    req = request(extra=f"Cluster-Hop: {value}\r\n")
    assert req.has_header("cluster-hop")
    assert take_hop(B, req, WALL) is None
    assert not req.has_header("cluster-hop"), (
        f"BUG (sipserver/proxy/peers.py take_hop): a Cluster-Hop header whose value is {value!r} "
        "is left on the request (header_values() is empty, so take_hop returns before "
        "remove_header) and is forwarded to the next hop"
    )


def test_mac_of_the_proof_is_not_a_flow_token_mac() -> None:
    """Issue 20 / OB-EP-06: the proof MAC and token MACs share the key; a proof body is never a
    valid token body, so a proof's MAC cannot be turned into a token (domain separation)."""
    from sipserver.outbound.flowtoken import InvalidToken

    value = proof()
    for codec in (A, B):
        with pytest.raises(InvalidToken):
            codec.decode(_mac_of(value))
