"""Flow token codec: RFC 5626 §5.2 (OB-EP-02, OB-EP-06, OB-EP-07)."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipserver.outbound.flow import Flow, Transport
from sipserver.outbound.flowtoken import FlowTokenCodec, InvalidToken

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
VECTORS = Path(__file__).parent / "vectors" / "flowtoken_vectors.json"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

V4 = Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 49152), 17)
V6 = Flow(Transport.WSS, ("2001:db8::1", 443), ("2001:db8::abcd", 50000), 2**40 + 3)


def canonical(flow: Flow) -> Flow:
    """The Flow with hosts in the canonical form decode() promises."""

    def c(addr: tuple[str, int]) -> tuple[str, int]:
        return (ipaddress.ip_address(addr[0]).compressed, addr[1])

    return Flow(flow.transport, c(flow.local), c(flow.remote), flow.serial)


@pytest.fixture
def codec() -> FlowTokenCodec:
    return FlowTokenCodec(KEY)


# --- strategies -----------------------------------------------------------------------------

ports = st.integers(0, 65535)
serials = st.integers(0, 2**64 - 1)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    hosts = draw(st.sampled_from([ipv4, ipv6]))
    return Flow(
        draw(st.sampled_from(list(Transport))),
        (draw(hosts), draw(ports)),
        (draw(hosts), draw(ports)),
        draw(serials),
    )


# --- round trip and uniqueness (OB-EP-02) ---------------------------------------------------


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize(
    ("local", "remote"),
    [
        (("192.0.2.1", 5060), ("203.0.113.9", 34567)),
        (("0.0.0.0", 0), ("255.255.255.255", 65535)),
        (("2001:db8::1", 5061), ("2001:db8:ffff::42", 1)),
        (("::", 0), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    ],
)
@pytest.mark.parametrize("serial", [0, 1, 2**64 - 1])
def test_ob_ep_02_round_trip_every_transport_and_family(
    codec: FlowTokenCodec,
    transport: Transport,
    local: tuple[str, int],
    remote: tuple[str, int],
    serial: int,
) -> None:
    flow = Flow(transport, local, remote, serial)
    token = codec.encode(flow)
    assert codec.decode(token) == flow
    # A fresh codec (no caches) with the same key agrees: tokens survive a restart with the key.
    assert FlowTokenCodec(KEY).decode(token) == flow
    assert FlowTokenCodec(KEY).encode(flow) == token


@settings(max_examples=500)
@given(flows())
def test_ob_ep_02_round_trip_random_flows(flow: Flow) -> None:
    codec = FlowTokenCodec(KEY)
    token = codec.encode(flow)
    assert TOKEN_RE.match(token)
    assert codec.decode(token) == canonical(flow)


@settings(max_examples=500)
@given(flows(), flows())
def test_ob_ep_02_distinct_flows_distinct_tokens(a: Flow, b: Flow) -> None:
    codec = FlowTokenCodec(KEY)
    assert (codec.encode(a) == codec.encode(b)) == (canonical(a) == canonical(b))


def test_ob_ep_02_same_flow_same_token(codec: FlowTokenCodec) -> None:
    again = Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 49152), 17)
    assert codec.encode(V4) == codec.encode(again)


@pytest.mark.parametrize(
    "changed",
    [
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 49152), 18),  # serial
        Flow(Transport.TLS, ("192.0.2.1", 5060), ("198.51.100.7", 49152), 17),  # transport
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 49153), 17),  # remote port
        Flow(Transport.TCP, ("192.0.2.1", 5061), ("198.51.100.7", 49152), 17),  # local port
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.8", 49152), 17),  # remote IP
        Flow(Transport.TCP, ("192.0.2.2", 5060), ("198.51.100.7", 49152), 17),  # local IP
        Flow(Transport.TCP, ("198.51.100.7", 49152), ("192.0.2.1", 5060), 17),  # swapped
    ],
)
def test_ob_ep_02_any_field_change_changes_token(codec: FlowTokenCodec, changed: Flow) -> None:
    """A reused address pair on a new connection (new serial) must not get the old token."""
    assert codec.encode(changed) != codec.encode(V4)
    assert codec.decode(codec.encode(changed)) == changed


def test_decoded_hosts_are_canonical(codec: FlowTokenCodec) -> None:
    flow = Flow(Transport.UDP, ("2001:DB8:0:0::0:1", 5060), ("2001:0db8::00ab", 5060))
    assert codec.decode(codec.encode(flow)) == Flow(
        Transport.UDP, ("2001:db8::1", 5060), ("2001:db8::ab", 5060)
    )


def test_token_is_a_sip_uri_user_part(codec: FlowTokenCodec) -> None:
    """Only RFC 3261 unreserved characters, so ``sip:TOKEN@host;lr;ob`` needs no escaping."""
    for flow in (V4, V6):
        token = codec.encode(flow)
        assert TOKEN_RE.match(token), token
        assert "=" not in token


def test_layout_is_the_documented_one(codec: FlowTokenCodec) -> None:
    """Independent re-computation of the documented format with the standard library."""
    body = (
        bytes([0x12, 4])  # version 1, transport TCP=2; IPv4
        + bytes([192, 0, 2, 1])
        + struct.pack("!H", 5060)
        + bytes([198, 51, 100, 7])
        + struct.pack("!H", 49152)
        + struct.pack("!Q", 17)
    )
    mac = hmac.new(KEY, body, "sha256").digest()[:12]
    expected = base64.urlsafe_b64encode(mac + body).rstrip(b"=").decode()
    assert codec.encode(V4) == expected


# --- tampering and keys (OB-EP-06, OB-EP-07) ------------------------------------------------


@pytest.mark.parametrize("flow", [V4, V6], ids=["ipv4", "ipv6"])
def test_ob_ep_06_every_single_character_change_is_rejected(
    codec: FlowTokenCodec, flow: Flow
) -> None:
    token = codec.encode(flow)
    for i, original in enumerate(token):
        for ch in B64URL_ALPHABET:
            if ch == original:
                continue
            forged = token[:i] + ch + token[i + 1 :]
            with pytest.raises(InvalidToken):
                codec.decode(forged)


@pytest.mark.parametrize("flow", [V4, V6], ids=["ipv4", "ipv6"])
def test_ob_ep_06_every_bit_flip_of_the_decoded_token_is_rejected(
    codec: FlowTokenCodec, flow: Flow
) -> None:
    token = codec.encode(flow)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for bit in range(len(raw) * 8):
        mutated = bytearray(raw)
        mutated[bit // 8] ^= 1 << (bit % 8)
        forged = base64.urlsafe_b64encode(bytes(mutated)).rstrip(b"=").decode()
        with pytest.raises(InvalidToken):
            codec.decode(forged)


def test_ob_ep_06_token_of_another_key_is_rejected(codec: FlowTokenCodec) -> None:
    """A server restarted with a new key refuses tokens minted before the restart."""
    old_token = FlowTokenCodec(OTHER_KEY).encode(V4)
    with pytest.raises(InvalidToken, match="MAC"):
        codec.decode(old_token)


def test_ob_ep_06_previous_key_still_verifies() -> None:
    old = FlowTokenCodec(OTHER_KEY)
    rotated = FlowTokenCodec(KEY, previous_keys=[OTHER_KEY])
    old_token = old.encode(V6)
    assert rotated.decode(old_token) == V6
    # New tokens are minted with the current key: the old server does not accept them.
    new_token = rotated.encode(V6)
    assert new_token != old_token
    assert FlowTokenCodec(KEY).decode(new_token) == V6
    with pytest.raises(InvalidToken):
        old.decode(new_token)


def test_ob_ep_06_dropped_previous_key_is_refused() -> None:
    old_token = FlowTokenCodec(OTHER_KEY).encode(V4)
    FlowTokenCodec(KEY, previous_keys=[OTHER_KEY]).decode(old_token)  # still accepted
    with pytest.raises(InvalidToken):
        FlowTokenCodec(KEY, previous_keys=[bytes(32)]).decode(old_token)


def test_forged_token_is_not_accepted_after_a_good_decode(codec: FlowTokenCodec) -> None:
    """Caching must only remember verified tokens."""
    token = codec.encode(V4)
    forged = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for _ in range(3):
        assert codec.decode(token) == V4
        with pytest.raises(InvalidToken):
            codec.decode(forged)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "A",
        "VskztcQ/S8p4WPbOnHbuyh5iJvJIW3ib",  # the RFC 5626 §9 example token
        "wazHDLdIMtUg6r0I/oRZ15zx3zHE1w1Z",
        "h7kjh12s",  # RFC 7118 example
        "not a token at all",
        "é" * 46,
        "\x00" * 46,
        "\ud800" * 46,  # lone surrogate
        "A" * 46,
        "_" * 78,
        "A" * 10_000,
    ],
)
def test_ob_ep_07_garbage_is_invalid_token(codec: FlowTokenCodec, bad: str) -> None:
    with pytest.raises(InvalidToken):
        codec.decode(bad)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],  # truncated
        lambda t: t[1:],
        lambda t: t + "A",  # extended
        lambda t: t + "==",  # padded
        lambda t: t + "\n",
        lambda t: " " + t,
        lambda t: t[:20] + "." + t[21:],  # illegal character in place
        lambda t: (
            t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else t[:5] + "+" + t[6:]
        ),
        lambda t: t.upper() if t.upper() != t else t.lower(),
    ],
)
@pytest.mark.parametrize("flow", [V4, V6], ids=["ipv4", "ipv6"])
def test_ob_ep_07_mangled_token_is_invalid(
    codec: FlowTokenCodec, flow: Flow, mangle: Callable[[str], str]
) -> None:
    token = codec.encode(flow)
    mangled = mangle(token)
    assert mangled != token
    with pytest.raises(InvalidToken):
        codec.decode(mangled)


def test_non_string_is_invalid_token(codec: FlowTokenCodec) -> None:
    for bad in (None, b"abc", 42, codec.encode(V4).encode()):
        with pytest.raises(InvalidToken):
            codec.decode(bad)  # type: ignore[arg-type]


@settings(max_examples=2000)
@given(st.text())
@example("")
def test_ob_ep_07_random_text_only_raises_invalid_token(text: str) -> None:
    codec = FlowTokenCodec(KEY)
    with pytest.raises(InvalidToken):
        codec.decode(text)


@settings(max_examples=2000)
@given(st.text(alphabet=B64URL_ALPHABET, min_size=40, max_size=80))
def test_ob_ep_07_random_base64url_only_raises_invalid_token(text: str) -> None:
    codec = FlowTokenCodec(KEY)
    with pytest.raises(InvalidToken):
        codec.decode(text)


@settings(max_examples=2000)
@given(
    flow=flows(),
    mutations=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(0, 100),
)
def test_ob_ep_06_random_byte_mutations_are_rejected(
    flow: Flow, mutations: list[tuple[int, int]], cut: int
) -> None:
    codec = FlowTokenCodec(KEY)
    token = codec.encode(flow)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for pos, value in mutations:
        raw[pos % len(raw)] = value
    if cut % 3 == 0:
        del raw[cut % len(raw) :]  # sometimes also truncate
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    if forged == token:
        assert codec.decode(forged) == canonical(flow)
    else:
        with pytest.raises(InvalidToken):
            codec.decode(forged)


# --- construction errors and secrecy --------------------------------------------------------


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        FlowTokenCodec(b"x" * 15)
    with pytest.raises(ValueError):
        FlowTokenCodec(KEY, previous_keys=[b"short"])
    FlowTokenCodec(b"x" * 16)  # the minimum is accepted


@pytest.mark.parametrize(
    "flow",
    [
        Flow(Transport.UDP, ("192.0.2.1", 5060), ("2001:db8::1", 5060)),  # mixed families
        Flow(Transport.UDP, ("proxy.example.com", 5060), ("192.0.2.1", 5060)),  # not an IP
        Flow(Transport.UDP, ("192.0.2.1", 5060), ("192.0.2.256", 5060)),
        Flow(Transport.UDP, ("192.0.2.1", 65536), ("192.0.2.2", 5060)),
        Flow(Transport.UDP, ("192.0.2.1", 5060), ("192.0.2.2", -1)),
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("192.0.2.2", 5060), 2**64),
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("192.0.2.2", 5060), -1),
        Flow(Transport.TCP, ("fe80::1%eth0", 5060), ("fe80::2", 5060)),  # scope id is lost
        Flow(Transport.TCP, ("192.0.2.01", 5060), ("192.0.2.2", 5060)),  # leading zero
    ],
)
def test_unrepresentable_flows_raise_value_error(codec: FlowTokenCodec, flow: Flow) -> None:
    with pytest.raises(ValueError):
        codec.encode(flow)


def test_key_never_shows_in_repr_or_errors() -> None:
    codec = FlowTokenCodec(KEY, previous_keys=[OTHER_KEY])
    texts = [repr(codec), str(codec)]
    for bad in ("", "A" * 46, FlowTokenCodec(b"z" * 32).encode(V4)):
        try:
            codec.decode(bad)
        except InvalidToken as exc:
            texts.append(str(exc))
    for key in (KEY, OTHER_KEY):
        for text in texts:
            assert key.hex() not in text
            assert repr(key)[2:-1] not in text


# --- compatibility vectors ------------------------------------------------------------------


def _vector_flow(v: dict[str, object]) -> Flow:
    local, remote = v["local"], v["remote"]
    assert isinstance(local, list) and isinstance(remote, list)
    serial = v["serial"]
    assert isinstance(serial, int)
    return Flow(Transport(v["transport"]), (local[0], local[1]), (remote[0], remote[1]), serial)


def test_ob_ep_06_vectors_decode_and_reencode() -> None:
    """Tokens in stored Paths must keep working across versions of this code."""
    doc = json.loads(VECTORS.read_text())
    codec = FlowTokenCodec(bytes.fromhex(doc["key_hex"]), [bytes.fromhex(doc["previous_key_hex"])])
    current = FlowTokenCodec(bytes.fromhex(doc["key_hex"]))
    assert len(doc["vectors"]) >= 5
    assert {v["transport"] for v in doc["vectors"]} == {t.value for t in Transport}
    for v in doc["vectors"]:
        flow = _vector_flow(v)
        assert codec.decode(v["token"]) == canonical(flow)
        assert current.encode(flow) == v["token"]
    for v in doc["previous_key_vectors"]:
        flow = _vector_flow(v)
        assert codec.decode(v["token"]) == canonical(flow)
        assert current.encode(flow) != v["token"]
        with pytest.raises(InvalidToken):
            current.decode(v["token"])


# --- cost and purity ------------------------------------------------------------------------


def test_encode_decode_is_cheap() -> None:
    """Runs per request. Generous bound (about 50x the measured cost) to stay robust on CI."""
    codec = FlowTokenCodec(KEY)
    distinct = [
        Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.7", 1024 + i), i) for i in range(2000)
    ]
    start = time.perf_counter()
    for flow in distinct:  # cold: no cache help
        assert codec.decode(codec.encode(flow)) is not None
    for _ in range(5):  # warm
        for flow in distinct:
            codec.decode(codec.encode(flow))
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{12000} encode+decode took {elapsed:.2f}s"
