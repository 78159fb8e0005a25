"""The digest gate (auth/gate.py): RFC 3261 §22, issue 16's digest-uri check."""

from __future__ import annotations

from sipserver.auth.credentials import CredentialStore
from sipserver.auth.digest import DigestAuthenticator, compute_response, ha1
from sipserver.auth.gate import AuthGate, Refusal
from sipserver.auth.limits import FailureBan
from sipserver.sip import Request, parse_message

REALM = "example.com"


def gate() -> AuthGate:
    creds = CredentialStore.from_users(REALM, {"alice": {"password": "wonderland"}})
    digest = DigestAuthenticator(REALM, b"k" * 32)
    return AuthGate(creds, digest, FailureBan(3, 60.0, 600.0))


def invite(ruri: str, auth: str | None = None) -> Request:
    lines = [
        f"INVITE {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK1",
        "From: <sip:alice@example.com>;tag=1",
        "To: <sip:bob@example.com>",
        "Call-ID: c1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    msg = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def answer(g: AuthGate, digest_uri: str) -> str:
    challenge = g.check(invite("sip:bob@example.com"), "192.0.2.9", 1000.0, register=False)
    assert isinstance(challenge, Refusal) and challenge.status == 407
    value = challenge.headers[-1][1]  # the MD5 challenge
    nonce = value.split('nonce="')[1].split('"')[0]
    h1 = ha1("alice", REALM, "wonderland", "MD5")
    response = compute_response("MD5", h1, nonce, "00000001", "c0ffee", "auth", "INVITE", digest_uri)
    return (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="{digest_uri}", '
        f'response="{response}", algorithm=MD5, cnonce="c0ffee", qop=auth, nc=00000001'
    )


def test_digest_for_the_request_uri_passes() -> None:
    g = gate()
    auth = answer(g, "sip:bob@example.com")
    assert g.check(invite("sip:bob@example.com", auth), "192.0.2.9", 1001.0, register=False) == "alice"


def test_digest_computed_for_another_uri_is_refused() -> None:
    """RFC 2617 §3.2.2.5 / issue 16: a digest is valid only for the Request-URI it names; one
    captured for a call to bob does not authorise a request to the trunk."""
    g = gate()
    auth = answer(g, "sip:bob@example.com")
    result = g.check(invite("sip:999@itsp.example", auth), "192.0.2.9", 1001.0, register=False)
    assert isinstance(result, Refusal) and result.status == 407
    assert g.stats["auth_failures"] == 1


def test_equivalent_uri_spelling_passes() -> None:
    """RFC 3261 §19.1.4: a re-escaped or case-changed host is the same URI."""
    g = gate()
    auth = answer(g, "sip:bob@EXAMPLE.com")
    assert g.check(invite("sip:bob@example.com", auth), "192.0.2.9", 1001.0, register=False) == "alice"


def test_own_realm_credentials_are_consumed_others_travel_on() -> None:
    """RFC 3261 §22.3 / issue 16: the Proxy-Authorization for our realm stops here (a next hop
    would get a digest to attack offline); one for another proxy's realm is forwarded."""
    g = gate()
    ours = answer(g, "sip:bob@example.com")
    theirs = 'Digest username="alice", realm="itsp.example", nonce="n", uri="sip:bob@example.com", response="00"'
    req = invite("sip:bob@example.com", ours)
    req.add_header("Proxy-Authorization", theirs)
    assert g.check(req, "192.0.2.9", 1001.0, register=False) == "alice"
    g.consume(req)
    assert req.header_lines("proxy-authorization") == [theirs]
    assert "realm=\"example.com\"" not in req.to_bytes().decode()
