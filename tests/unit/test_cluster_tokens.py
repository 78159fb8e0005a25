"""Flow tokens of a cluster (issue 20): a token names the node that minted it, inside the MAC.

RFC 5626 §5.2 requirements apply to every node: tokens unique per flow (OB-EP-02), tampering
detectable and tokens under an unknown key refused (OB-EP-06), a token failing the integrity
check treated as forged (OB-EP-07). The cluster adds: a genuine token of another node decodes to
``ForeignToken`` naming that node (so the request goes there), and nothing that does not verify
is ever taken as a token of some node (no guessing from an unauthenticated node name)."""

from __future__ import annotations

import base64

import pytest

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import (
    MAC_BYTES,
    FlowTokenCodec,
    ForeignToken,
    InvalidToken,
    token_node,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
OLD_KEY = bytes(range(50, 82))

V4 = Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 49152), 17)
V6 = Flow(Transport.WSS, ("2001:db8::1", 443), ("2001:db8::abcd", 50000), 2**40 + 3)
FLOWS = [V4, V6]


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def node_a(key: bytes = KEY) -> FlowTokenCodec:
    return FlowTokenCodec(key, node="a")


def node_b(key: bytes = KEY, previous: tuple[bytes, ...] = ()) -> FlowTokenCodec:
    return FlowTokenCodec(key, previous, node="b")


def assert_refused(codec: FlowTokenCodec, token: str) -> None:
    """InvalidToken, and never a ForeignToken: nothing is guessed from an unverified token."""
    with pytest.raises(InvalidToken) as decoded:
        codec.decode(token)
    assert not isinstance(decoded.value, ForeignToken), (
        f"forged token taken as node {decoded.value.node!r}'s"
    )
    with pytest.raises(InvalidToken) as peeked:
        codec.decode_node(token)
    assert not isinstance(peeked.value, ForeignToken)


# --------------------------------------------------------------------------- genuine tokens
@pytest.mark.parametrize("flow", FLOWS, ids=["v4", "v6"])
def test_token_minted_by_a_decodes_on_b_as_foreign_token_naming_a(flow: Flow) -> None:
    """Issue 20: a genuine token (MAC verifies under the shared key) minted by node a is, on node
    b, a ``ForeignToken`` naming a and carrying the flow, so b sends the request to a."""
    token = node_a().encode(flow)
    with pytest.raises(ForeignToken) as exc:
        node_b().decode(token)
    assert exc.value.node == "a"
    assert exc.value.flow == flow
    # ForeignToken is an InvalidToken: a caller that knows nothing of clusters answers 403 (OB-EP-07)
    assert isinstance(exc.value, InvalidToken)
    assert node_b().decode_node(token) == (flow, "a")


@pytest.mark.parametrize("flow", FLOWS, ids=["v4", "v6"])
def test_token_minted_by_a_decodes_on_a_as_its_own_flow(flow: Flow) -> None:
    """Issue 20 / OB-EP-02: on the node that minted it, the token decodes to the same flow."""
    a = node_a()
    token = a.encode(flow)
    assert a.decode(token) == flow
    assert a.decode_node(token) == (flow, "a")
    # another codec of node a with the same key (a restart with outbound.secret) agrees
    assert node_a().decode(token) == flow


def test_same_flow_on_two_nodes_gives_two_tokens() -> None:
    """Issue 20 / OB-EP-02: with --workers every node has the same addresses and serials of
    different processes collide, so the same Flow must give different tokens on a and b, and
    each node takes only its own as its own."""
    ta, tb = node_a().encode(V4), node_b().encode(V4)
    assert ta != tb
    assert node_a().decode(ta) == V4
    assert node_b().decode(tb) == V4
    with pytest.raises(ForeignToken):
        node_a().decode(tb)
    with pytest.raises(ForeignToken):
        node_b().decode(ta)


def test_token_under_a_previous_key_still_names_its_node() -> None:
    """OB-EP-06 key rotation: a token of a minted under the previous key is still genuine on b
    (which has it in previous_keys) and still names a."""
    token = node_a(OLD_KEY).encode(V4)
    with pytest.raises(ForeignToken) as exc:
        node_b(KEY, (OLD_KEY,)).decode(token)
    assert (exc.value.node, exc.value.flow) == ("a", V4)


# --------------------------------------------------------------------------- forgeries
@pytest.mark.parametrize("flow", FLOWS, ids=["v4", "v6"])
def test_one_flipped_byte_anywhere_is_refused_on_every_node(flow: Flow) -> None:
    """OB-EP-06 / OB-EP-07: flipping any octet of a node's token (MAC, flow fields, version,
    node name) makes it fail the integrity check on every node, the minting one included; the
    codec never answers ForeignToken for it."""
    data = raw(node_a().encode(flow))
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            forged = bytearray(data)
            forged[i] ^= mask
            token = text(bytes(forged))
            for codec in (node_a(), node_b(), FlowTokenCodec(KEY)):
                assert_refused(codec, token)


@pytest.mark.parametrize("other", ["b", "c", "aa", "node-1", "z" * 32])
def test_token_relabelled_with_another_node_name_is_refused(other: str) -> None:
    """Issue 20 / OB-EP-06: the node name is inside the MAC; a token of a whose name is
    rewritten (same length or not) is refused on every node, including the one now named, and is
    not routed to anybody."""
    data = raw(node_a().encode(V4))
    assert data.endswith(b"a")
    forged = text(data[:-1] + other.encode("ascii"))
    assert token_node(forged) == other  # the unchecked peek believes the label...
    for codec in (node_a(), node_b(), FlowTokenCodec(KEY, node="c"), FlowTokenCodec(KEY)):
        assert_refused(codec, forged)  # ...nothing that decides does


def test_token_downgraded_to_version_1_is_refused() -> None:
    """Issue 20 / OB-EP-06: stripping the node name and the version 2 nibble of a's token would
    give a version 1 token that every node takes as its own; the MAC covers the version, so it is
    refused."""
    data = raw(node_a().encode(V4))
    mac, body = data[:MAC_BYTES], data[MAC_BYTES:-1]
    assert body[0] >> 4 == 2
    downgraded = text(mac + bytes([(1 << 4) | (body[0] & 0x0F)]) + body[1:])
    for codec in (node_a(), node_b(), FlowTokenCodec(KEY)):
        assert_refused(codec, downgraded)


def test_version_1_token_upgraded_with_a_node_name_is_refused() -> None:
    """Issue 20 / OB-EP-06: the reverse, a server-on-its-own token given a node name, is refused."""
    data = raw(FlowTokenCodec(KEY).encode(V4))
    mac, body = data[:MAC_BYTES], data[MAC_BYTES:]
    upgraded = text(mac + bytes([(2 << 4) | (body[0] & 0x0F)]) + body[1:] + b"b")
    assert token_node(upgraded) == "b"
    for codec in (node_a(), node_b(), FlowTokenCodec(KEY)):
        assert_refused(codec, upgraded)


def test_token_minted_under_another_key_is_refused_not_guessed() -> None:
    """OB-EP-06: a node of another cluster (another outbound.secret) minting with the same node
    name: its token is well formed and names a, but does not verify, so no node of ours takes it
    for a's (InvalidToken, not ForeignToken)."""
    token = node_a(OTHER_KEY).encode(V4)
    assert token_node(token) == "a"
    for codec in (node_a(), node_b(), node_b(KEY, (OLD_KEY,)), FlowTokenCodec(KEY)):
        assert_refused(codec, token)


def test_truncated_or_extended_tokens_are_refused() -> None:
    """OB-EP-07: a's token with its last octet (the node name) cut off, or an octet added."""
    data = raw(node_a().encode(V4))
    for forged in (data[:-1], data + b"x", data[:-2], data + b"\x00"):
        for codec in (node_a(), node_b()):
            assert_refused(codec, text(forged))


# --------------------------------------------------------------------------- version 1
def test_version_1_token_is_taken_as_its_own_by_every_node() -> None:
    """Issue 20, as flowtoken.py defines it: a token minted by a server outside any cluster
    (codec node "") has no node name; decode_node says "" and every node, and the server on its
    own, decodes it as a flow of its own (a server that joins a cluster keeps its old Paths)."""
    token = FlowTokenCodec(KEY).encode(V4)
    assert token_node(token) == ""
    for codec in (FlowTokenCodec(KEY), node_a(), node_b()):
        assert codec.decode(token) == V4
        assert codec.decode_node(token) == (V4, "")


def test_server_on_its_own_refuses_a_cluster_token_as_foreign() -> None:
    """Issue 20: a node-less codec given a node's genuine token does not take it as its own
    flow: ForeignToken naming the node (an InvalidToken, so 403, OB-EP-07)."""
    token = node_a().encode(V4)
    with pytest.raises(ForeignToken) as exc:
        FlowTokenCodec(KEY).decode(token)
    assert exc.value.node == "a"
    assert FlowTokenCodec(KEY).decode_node(token) == (V4, "a")


def test_version_1_token_under_another_key_is_refused_on_a_node() -> None:
    """OB-EP-06: tokens from a server with a different key are rejected, node or not."""
    token = FlowTokenCodec(OTHER_KEY).encode(V4)
    for codec in (node_a(), node_b(), FlowTokenCodec(KEY)):
        assert_refused(codec, token)


# --------------------------------------------------------------------------- token_node
def test_token_node_peeks_at_the_name_without_a_key() -> None:
    """Issue 20: ``token_node`` reads the name for display (ctl cluster) with no key at all; ""
    for a version 1 token and for anything that is not a token."""
    assert token_node(node_a().encode(V4)) == "a"
    assert token_node(node_b().encode(V6)) == "b"
    assert token_node(FlowTokenCodec(KEY, node="z" * 32).encode(V6)) == "z" * 32
    assert token_node(FlowTokenCodec(KEY).encode(V4)) == ""
    for junk in ("", "a", "!!!!", "AAAA", "not a token", text(b"\x00" * 40)):
        assert token_node(junk) == ""


# --------------------------------------------------------------------------- node names
@pytest.mark.parametrize("name", ["A", "-a", "_a", "a b", "a.b", "é", "a" * 33, "a\x00"])
def test_a_node_name_that_a_token_cannot_carry_is_refused_at_construction(name: str) -> None:
    """Issue 20: a node name is 1..32 of a-z 0-9 _ - (first a letter or digit)."""
    with pytest.raises(ValueError):
        FlowTokenCodec(KEY, node=name)


def test_longest_node_name_round_trips() -> None:
    """Issue 20: 32 octets is the longest name a token carries."""
    name = "n" + "0" * 30 + "z"
    codec = FlowTokenCodec(KEY, node=name)
    token = codec.encode(V6)
    assert codec.decode(token) == V6
    with pytest.raises(ForeignToken) as exc:
        node_b().decode(token)
    assert exc.value.node == name
