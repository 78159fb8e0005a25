"""Digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): REG3261-03.

The client side of the round trips is written here with hashlib directly, independent of the
code under test, so a symmetric mistake in both halves cannot pass unnoticed.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipserver.auth.digest import (
    AuthResult,
    AuthStatus,
    DigestAuthenticator,
    DigestCredentials,
    compute_response,
    ha1,
    parse_credentials,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "example.org"
USERS = {"alice": "wonderland", "bob": "builder"}
T0 = 1_700_000_000.0


def _hash(algorithm: str, text: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]
    return hashlib.new(name, text.encode()).hexdigest()


def lookup(username: str, algorithm: str) -> str | None:
    password = USERS.get(username)
    if password is None:
        return None
    return _hash(algorithm, f"{username}:{REALM}:{password}")


def make_auth(**kw: object) -> DigestAuthenticator:
    return DigestAuthenticator(realm=REALM, secret=SECRET, **kw)  # type: ignore[arg-type]


def challenge_params(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    return {
        m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
        for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value)
    }


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client_header(
    challenge: str,
    username: str,
    password: str,
    *,
    method: str = "REGISTER",
    uri: str = "sip:example.org",
    nc: str = "00000001",
    cnonce: str = "c0ffee",
    realm: str | None = None,
) -> str:
    """What a UA would send back for ``challenge`` (RFC 7616 §3.4)."""
    p = challenge_params(challenge)
    algo = p["algorithm"]
    realm = p["realm"] if realm is None else realm
    a1 = _hash(algo, f"{username}:{realm}:{password}")
    a2 = _hash(algo, f"{method}:{uri}")
    resp = _hash(algo, f"{a1}:{p['nonce']}:{nc}:{cnonce}:auth:{a2}")
    return (
        f"Digest username={quote(username)}, realm={quote(realm)}, nonce=\"{p['nonce']}\", "
        f'uri="{uri}", response="{resp}", algorithm={algo}, cnonce="{cnonce}", '
        f"qop=auth, nc={nc}, opaque=\"{p['opaque']}\""
    )


def verify(auth: DigestAuthenticator, header: str, now: float, method: str = "REGISTER") -> AuthResult:
    creds = parse_credentials(header)
    assert creds is not None
    return auth.verify(creds, method, lookup, now)


# --------------------------------------------------------------------------- RFC test vectors


def test_rfc2617_section_3_5_md5_vector() -> None:
    # RFC 2617 §3.5 worked example.
    h1 = ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    resp = compute_response(
        "MD5", h1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth",
        "GET", "/dir/index.html",
    )
    assert resp == "6629fae49393a05397450978507c4ef1"


def test_rfc7616_section_3_9_1_sha256_vector() -> None:
    # RFC 7616 §3.9.1 (note the password is "Circle of Life" there).
    h1 = ha1("Mufasa", "http-auth@example.org", "Circle of Life", "SHA-256")
    resp = compute_response(
        "SHA-256", h1, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html",
    )
    assert resp == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc7616_section_3_9_1_md5_vector() -> None:
    h1 = ha1("Mufasa", "http-auth@example.org", "Circle of Life", "md5")
    resp = compute_response(
        "MD5", h1, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html",
    )
    assert resp == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc2617_authorization_header_parses() -> None:
    # RFC 2617 §3.5 request header, folded over lines as in the RFC.
    value = (
        'Digest username="Mufasa",\r\n'
        '     realm="testrealm@host.com",\r\n'
        '     nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n'
        '     uri="/dir/index.html",\r\n'
        "     qop=auth,\r\n"
        "     nc=00000001,\r\n"
        '     cnonce="0a4f113b",\r\n'
        '     response="6629fae49393a05397450978507c4ef1",\r\n'
        '     opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    creds = parse_credentials(value)
    assert creds is not None
    assert (creds.username, creds.realm, creds.uri) == ("Mufasa", "testrealm@host.com", "/dir/index.html")
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    assert creds.algorithm == "MD5"  # absent -> MD5 (RFC 7616 §3.3)
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    h1 = ha1("Mufasa", creds.realm, "Circle Of Life", creds.algorithm)
    assert creds.nc is not None and creds.cnonce is not None and creds.qop is not None
    assert compute_response(
        creds.algorithm, h1, creds.nonce, creds.nc, creds.cnonce, creds.qop, "GET", creds.uri
    ) == creds.response


def test_ha1_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError) as exc:
        ha1("alice", REALM, "s3cret-pw", "SHA-512-256")
    assert "s3cret-pw" not in str(exc.value)


# --------------------------------------------------------------------------- challenges


def test_challenge_offers_sha256_first_then_md5_each_with_own_nonce() -> None:
    values = make_auth().challenge(T0)
    assert len(values) == 2
    params = [challenge_params(v) for v in values]
    assert [p["algorithm"] for p in params] == ["SHA-256", "MD5"]
    for p in params:
        assert p["realm"] == REALM
        assert p["qop"] == "auth"
        assert p["opaque"]
        assert "stale" not in p
    assert params[0]["nonce"] != params[1]["nonce"]


def test_challenge_stale_flag_on_every_value() -> None:
    values = make_auth().challenge(T0, stale=True)
    assert all(challenge_params(v)["stale"] == "true" for v in values)


def test_challenge_honours_configured_algorithms() -> None:
    values = make_auth(algorithms=("md5",)).challenge(T0)
    assert [challenge_params(v)["algorithm"] for v in values] == ["MD5"]


def test_challenge_quotes_realm() -> None:
    auth = DigestAuthenticator(realm='odd "realm" \\ here', secret=SECRET)
    value = auth.challenge(T0)[0]
    assert 'realm="odd \\"realm\\" \\\\ here"' in value


def test_nonces_are_unpredictable_and_urlsafe() -> None:
    auth = make_auth()
    nonces = {challenge_params(v)["nonce"] for _ in range(50) for v in auth.challenge(T0)}
    assert len(nonces) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in nonces)


@pytest.mark.parametrize("bad", [b"", b"short!", b"x" * 15])
def test_short_secret_refused_without_echoing_it(bad: bytes) -> None:
    with pytest.raises(ValueError) as exc:
        DigestAuthenticator(realm=REALM, secret=bad)
    assert not bad or bad.decode() not in str(exc.value)


def test_unknown_algorithm_config_refused() -> None:
    with pytest.raises(ValueError):
        make_auth(algorithms=("SHA-512",))
    with pytest.raises(ValueError):
        make_auth(algorithms=())


def test_secret_not_in_repr() -> None:
    auth = make_auth()
    assert "0123456789abcdef" not in repr(auth)
    assert REALM in repr(auth)


# --------------------------------------------------------------------------- verify


@pytest.mark.parametrize("index, algo", [(0, "SHA-256"), (1, "MD5")])
def test_round_trip_ok_for_both_algorithms(index: int, algo: str) -> None:
    auth = make_auth()
    challenge = auth.challenge(T0)[index]
    assert challenge_params(challenge)["algorithm"] == algo
    result = verify(auth, client_header(challenge, "alice", "wonderland"), T0 + 1)
    assert result.status is AuthStatus.OK
    assert result.ok and not result.stale and not result.failed
    assert result.username == "alice"


def test_round_trip_with_unusual_username_characters() -> None:
    global USERS
    saved = USERS
    USERS = {'we"ird\\ñame': "pw"}
    try:
        auth = make_auth()
        result = verify(auth, client_header(auth.challenge(T0)[0], 'we"ird\\ñame', "pw"), T0)
        assert result.ok and result.username == 'we"ird\\ñame'
    finally:
        USERS = saved


def test_uppercase_hex_response_accepted() -> None:
    auth = make_auth()
    header = client_header(auth.challenge(T0)[0], "bob", "builder")
    header = re.sub(r'response="([0-9a-f]+)"', lambda m: f'response="{m.group(1).upper()}"', header)
    assert verify(auth, header, T0).ok


def test_wrong_password_fails() -> None:
    auth = make_auth()
    result = verify(auth, client_header(auth.challenge(T0)[0], "alice", "guess"), T0)
    assert result.status is AuthStatus.FAILED
    assert result.reason == "wrong password"


def test_unknown_user_fails_like_wrong_password_and_still_computes() -> None:
    """Scanner resistance: same status, and the lookup path is taken for unknown users too."""
    auth = make_auth()
    asked: list[tuple[str, str]] = []

    def spy(username: str, algorithm: str) -> str | None:
        asked.append((username, algorithm))
        return lookup(username, algorithm)

    ch = auth.challenge(T0)[0]
    unknown = auth.verify(parse_credentials(client_header(ch, "mallory", "x")), "REGISTER", spy, T0)  # type: ignore[arg-type]
    wrong = auth.verify(parse_credentials(client_header(ch, "alice", "x")), "REGISTER", spy, T0)  # type: ignore[arg-type]
    assert unknown.status is wrong.status is AuthStatus.FAILED
    assert unknown.reason == "unknown user"
    assert asked == [("mallory", "SHA-256"), ("alice", "SHA-256")]


def test_user_with_only_md5_ha1_cannot_use_sha256() -> None:
    auth = make_auth()

    def md5_only(username: str, algorithm: str) -> str | None:
        return lookup(username, algorithm) if algorithm == "MD5" else None

    sha, md5 = auth.challenge(T0)
    for ch, ok in ((sha, False), (md5, True)):
        creds = parse_credentials(client_header(ch, "alice", "wonderland"))
        assert creds is not None
        assert auth.verify(creds, "REGISTER", md5_only, T0).ok is ok


def test_method_is_part_of_the_digest() -> None:
    auth = make_auth()
    header = client_header(auth.challenge(T0)[0], "alice", "wonderland", method="REGISTER")
    assert verify(auth, header, T0, method="INVITE").failed


def test_expired_nonce_with_right_password_is_stale() -> None:
    auth = make_auth(nonce_lifetime=60.0)
    header = client_header(auth.challenge(T0)[0], "alice", "wonderland")
    assert verify(auth, header, T0 + 59).ok
    later = client_header(auth.challenge(T0)[0], "alice", "wonderland")
    result = verify(auth, later, T0 + 61)
    assert result.status is AuthStatus.STALE and result.stale
    assert result.username == "alice"


def test_expired_nonce_with_wrong_password_is_failed_not_stale() -> None:
    # RFC 7616 §3.3: stale=true only when the digest itself was valid.
    auth = make_auth(nonce_lifetime=60.0)
    result = verify(auth, client_header(auth.challenge(T0)[0], "alice", "nope"), T0 + 61)
    assert result.failed


def test_nonce_from_the_future_is_refused() -> None:
    auth = make_auth(nonce_lifetime=60.0)
    header = client_header(auth.challenge(T0 + 1000)[0], "alice", "wonderland")
    assert verify(auth, header, T0).reason == "bad nonce"


def _alter(nonce: str, index: int) -> str:
    ch = nonce[index]
    return nonce[:index] + ("A" if ch != "A" else "B") + nonce[index + 1 :]


@pytest.mark.parametrize("index", [0, 5, 10, 20, 30, 41])
def test_altered_nonce_fails(index: int) -> None:
    auth = make_auth()
    ch = auth.challenge(T0)[0]
    nonce = challenge_params(ch)["nonce"]
    forged = ch.replace(nonce, _alter(nonce, index))
    result = verify(auth, client_header(forged, "alice", "wonderland"), T0)
    assert result.failed and result.reason == "bad nonce"


def test_nonce_from_other_secret_fails() -> None:
    other = DigestAuthenticator(realm=REALM, secret=b"another-secret-of-32-bytes......")
    header = client_header(other.challenge(T0)[0], "alice", "wonderland")
    header = re.sub(r', opaque="[^"]*"', "", header)  # opaque is optional to echo
    assert verify(make_auth(), header, T0).reason == "bad nonce"


@pytest.mark.parametrize("nonce", ["", "abc", "x" * 43, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "é" * 43])
def test_made_up_nonce_fails(nonce: str) -> None:
    auth = make_auth()
    ch = auth.challenge(T0)[0]
    forged = ch.replace(challenge_params(ch)["nonce"], nonce)
    assert verify(auth, client_header(forged, "alice", "wonderland"), T0).reason == "bad nonce"


def test_same_nonce_count_twice_is_a_replay() -> None:
    auth = make_auth()
    header = client_header(auth.challenge(T0)[0], "alice", "wonderland", nc="00000001")
    assert verify(auth, header, T0).ok
    again = verify(auth, header, T0 + 1)
    assert again.failed and again.reason == "replayed nonce count"


def test_increasing_nonce_count_ok_lower_refused() -> None:
    auth = make_auth()
    ch = auth.challenge(T0)[0]
    for nc in ("00000001", "00000002", "0000000a"):
        assert verify(auth, client_header(ch, "alice", "wonderland", nc=nc), T0).ok
    assert verify(auth, client_header(ch, "alice", "wonderland", nc="00000009"), T0).failed


def test_failed_attempt_does_not_consume_nonce_count() -> None:
    # Only authenticated requests update the table: a forger cannot burn a victim's nc range.
    auth = make_auth()
    ch = auth.challenge(T0)[0]
    assert verify(auth, client_header(ch, "alice", "bad", nc="00000100"), T0).failed
    assert verify(auth, client_header(ch, "alice", "wonderland", nc="00000001"), T0).ok
    assert auth.tracked_nonces == 1


def test_nonce_count_table_is_bounded_and_evicted_nonce_cannot_be_replayed() -> None:
    auth = make_auth(max_nonces=3)
    headers = [client_header(auth.challenge(T0 + i)[0], "alice", "wonderland") for i in range(10)]
    for i, h in enumerate(headers):
        assert verify(auth, h, T0 + 10 + i).ok
        assert auth.tracked_nonces <= 3
    # The first nonce's record was evicted: replaying it must not be accepted.
    replay = verify(auth, headers[0], T0 + 30)
    assert not replay.ok
    # The most recent nonces are still tracked and refuse replays.
    assert verify(auth, headers[-1], T0 + 30).reason == "replayed nonce count"


def test_expired_nonce_records_are_pruned() -> None:
    auth = make_auth(nonce_lifetime=60.0)
    for i in range(5):
        assert verify(auth, client_header(auth.challenge(T0)[0], "alice", "wonderland"), T0 + i).ok
    assert auth.tracked_nonces == 5
    assert verify(auth, client_header(auth.challenge(T0 + 100)[0], "alice", "wonderland"), T0 + 100).ok
    assert auth.tracked_nonces == 1


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda h: h.replace("qop=auth, ", ""), "missing qop"),
        (lambda h: h.replace("qop=auth", "qop=auth-int"), "unsupported qop"),
        (lambda h: h.replace("algorithm=SHA-256", "algorithm=SHA-256-sess"), "unsupported algorithm"),
        (lambda h: h.replace("algorithm=SHA-256", "algorithm=SHA-512-256"), "unsupported algorithm"),
        (lambda h: h.replace('cnonce="c0ffee", ', ""), "missing cnonce"),
        (lambda h: h.replace("nc=00000001", "nc=1"), "bad nonce count"),
        (lambda h: h.replace("nc=00000001", "nc=0000000g"), "bad nonce count"),
        (lambda h: re.sub(r'opaque="[^"]*"', 'opaque="nope"', h), "opaque mismatch"),
        (lambda h: h + ", userhash=true", "unsupported userhash"),
    ],
)
def test_malformed_or_unsupported_credentials_fail(edit: object, reason: str) -> None:
    auth = make_auth()
    header = edit(client_header(auth.challenge(T0)[0], "alice", "wonderland"))  # type: ignore[operator]
    result = verify(auth, header, T0)
    assert result.failed
    assert result.reason == reason


def test_rfc2069_style_without_qop_is_refused_even_if_correct() -> None:
    auth = make_auth()
    p = challenge_params(auth.challenge(T0)[1])  # MD5
    a1 = _hash("MD5", f"alice:{REALM}:wonderland")
    a2 = _hash("MD5", "REGISTER:sip:example.org")
    resp = _hash("MD5", f"{a1}:{p['nonce']}:{a2}")
    header = (
        f'Digest username="alice", realm="{REALM}", nonce="{p["nonce"]}", '
        f'uri="sip:example.org", response="{resp}", algorithm=MD5'
    )
    assert verify(auth, header, T0).reason == "missing qop"


def test_algorithm_not_offered_is_refused() -> None:
    sha_only = make_auth(algorithms=("SHA-256",))
    md5_ch = make_auth().challenge(T0)[1]  # same secret, so the nonce itself is authentic
    result = verify(sha_only, client_header(md5_ch, "alice", "wonderland"), T0)
    assert result.reason == "unsupported algorithm"


def test_realm_mismatch_fails() -> None:
    auth = make_auth()
    header = client_header(auth.challenge(T0)[0], "alice", "wonderland", realm="other.org")
    assert verify(auth, header, T0).reason == "realm mismatch"


def test_request_uri_check_when_given() -> None:
    auth = make_auth()
    ch = auth.challenge(T0)[0]
    creds = parse_credentials(client_header(ch, "alice", "wonderland", uri="sip:example.org"))
    assert creds is not None
    assert auth.verify(creds, "REGISTER", lookup, T0, request_uri="sip:evil.org").reason == "uri mismatch"
    assert auth.verify(creds, "REGISTER", lookup, T0, request_uri="sip:example.org").ok


# --------------------------------------------------------------------------- parse_credentials


def test_parse_odd_spacing_case_and_escapes() -> None:
    value = (
        'dIgEsT   USERNAME = "bo\\"b\\\\" ,Realm=  "x.org",, nonce ="n" ,\t'
        'uri= "sip:x.org" , Response="abc", ALGORITHM = sha-256 ,qop=auth,nc=00000002 ,'
        'cnonce="c\\n", opaque="o", extra=tok'
    )
    creds = parse_credentials(value)
    assert creds is not None
    assert creds.username == 'bo"b\\'
    assert creds.realm == "x.org"
    assert creds.nonce == "n"
    assert creds.uri == "sip:x.org"
    assert creds.response == "abc"
    assert creds.algorithm == "SHA-256"
    assert (creds.qop, creds.nc, creds.cnonce, creds.opaque) == ("auth", "00000002", "cn", "o")
    assert creds.params["extra"] == "tok"


def test_parse_line_folding_around_separators() -> None:
    value = 'Digest username\r\n =\r\n\t"a",\n realm="r", nonce="n", uri="u"\r\n , response="x"'
    creds = parse_credentials(value)
    assert creds is not None
    assert (creds.username, creds.realm, creds.response) == ("a", "r", "x")


@pytest.mark.parametrize(
    "raw, expected",
    [("md5", "MD5"), ("MD5", "MD5"), ("Sha-256", "SHA-256"), ("MD5-sess", "MD5-sess"), ("foo", "foo")],
)
def test_parse_algorithm_normalised(raw: str, expected: str) -> None:
    creds = parse_credentials(
        f'Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm={raw}'
    )
    assert creds is not None and creds.algorithm == expected


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",  # RFC 4475 regaut01: unknown scheme = no credentials
        'NewScheme username="a", realm="r", nonce="n", uri="u", response="x"',
        'Digestive username="a", realm="r", nonce="n", uri="u", response="x"',
        'Digest,username="a", realm="r", nonce="n", uri="u", response="x"',
        "",
        "Digest",
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", response="y"',
        'Digest username="a, realm="r", nonce="n", uri="u", response="x"',  # unterminated
        'Digest username="a" realm="r", nonce="n", uri="u", response="x"',  # missing comma
        'Digest username=, realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x"\r\nVia: x',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", =v',
    ],
)
def test_parse_reg3261_03_unusable_credentials_are_none(value: str) -> None:
    assert parse_credentials(value) is None


def test_credentials_repr_hides_response() -> None:
    creds = parse_credentials(
        'Digest username="a", realm="r", nonce="n", uri="u", response="deadbeefcafe"'
    )
    assert creds is not None
    assert "deadbeefcafe" not in repr(creds)


@given(st.text())
def test_parse_never_raises_on_random_text(value: str) -> None:
    result = parse_credentials(value)
    assert result is None or isinstance(result, DigestCredentials)


@given(st.text(alphabet=st.sampled_from('Digest usernam="\\, \t\r\n=xyz')))
def test_parse_never_raises_on_syntax_soup(value: str) -> None:
    result = parse_credentials(value)
    assert result is None or isinstance(result, DigestCredentials)


_value = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"))


@given(username=_value, realm=_value, nonce=_value, uri=_value, response=_value)
def test_parse_quoted_values_round_trip(
    username: str, realm: str, nonce: str, uri: str, response: str
) -> None:
    value = (
        f"Digest username={quote(username)}, realm={quote(realm)}, nonce={quote(nonce)}, "
        f"uri={quote(uri)}, response={quote(response)}"
    )
    creds = parse_credentials(value)
    assert creds is not None
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response) == (
        username, realm, nonce, uri, response,
    )


@given(
    username=st.text(),
    realm=st.text(),
    nonce=st.text(),
    response=st.text(),
    algorithm=st.sampled_from(["MD5", "SHA-256", "bogus", ""]),
    qop=st.one_of(st.none(), st.text()),
    nc=st.one_of(st.none(), st.text()),
    cnonce=st.one_of(st.none(), st.text()),
    opaque=st.one_of(st.none(), st.text()),
)
def test_verify_never_raises_on_hostile_credentials(
    username: str, realm: str, nonce: str, response: str, algorithm: str,
    qop: str | None, nc: str | None, cnonce: str | None, opaque: str | None,
) -> None:
    auth = make_auth()
    creds = DigestCredentials(
        username=username, realm=realm, nonce=nonce, uri="sip:x", response=response,
        algorithm=algorithm, qop=qop, nc=nc, cnonce=cnonce, opaque=opaque,
    )
    assert auth.verify(creds, "REGISTER", lookup, T0).failed


def test_opaque_may_be_omitted_by_client() -> None:
    auth = make_auth()
    header = re.sub(r', opaque="[^"]*"', "", client_header(auth.challenge(T0)[0], "alice", "wonderland"))
    assert "opaque" not in header
    assert verify(auth, header, T0).ok
