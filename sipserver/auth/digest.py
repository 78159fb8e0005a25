"""Digest authentication (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

Works on header *values* (plain strings) so it does not depend on the message layer.

Invariants:
- Nonces are stateless: ``base64url(stamp || random || HMAC-SHA256(secret, stamp || random)[:16])``.
  Verifying one needs only the secret; a nonce this authenticator did not mint never passes.
- Only ``qop=auth`` is accepted (RFC 7616 §3.3 makes qop mandatory). The RFC 2069 form without
  qop carries no cnonce/nc, so it cannot be protected against replay; it is refused.
- The nonce-count table only learns from requests whose response digest was correct, so an
  unauthenticated peer cannot grow it or poison it; it is capped at ``max_nonces`` entries and
  expired nonces are pruned (an expired nonce is answered STALE before the table is consulted).
- Unknown users are checked against a dummy HA1, so they cost the same work as a wrong password.
- Secrets, HA1s and responses never appear in reprs or exception messages.
- ``parse_credentials`` never raises; ``verify`` never raises on hostile credentials.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Callable

import attrs

from ..bounded import LruTable

__all__ = [
    "AuthResult",
    "AuthStatus",
    "DigestAuthenticator",
    "DigestCredentials",
    "compute_response",
    "ha1",
    "parse_credentials",
]

# RFC 7616 §6.1 / RFC 8760 §2: algorithm names are case-insensitive tokens.
_HASHES: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256"}


def _normalise_algorithm(value: str) -> str:
    """Canonical spelling for the algorithms we know; anything else is kept as given."""
    upper = value.upper()
    return upper if upper in _HASHES else value


def _h(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode("utf-8", "surrogatepass")).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """HA1 = H(username ":" realm ":" password), RFC 7616 §3.4.2 (non ``-sess`` algorithms).

    Raises ``ValueError`` for an algorithm other than MD5 / SHA-256.
    """
    algo = _normalise_algorithm(algorithm)
    if algo not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(algo, f"{username}:{realm}:{password}")


def compute_response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str,
                     qop: str, method: str, uri: str) -> str:
    """RFC 7616 §3.4.1 with qop=auth: H(HA1:nonce:nc:cnonce:qop:H(method:uri)).

    ``algorithm`` must be "MD5" or "SHA-256" (any case); ValueError otherwise.
    """
    algorithm = _normalise_algorithm(algorithm)
    if algorithm not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    return _h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------- parsing

@attrs.frozen
class DigestCredentials:
    """One parsed Digest Authorization / Proxy-Authorization value (RFC 3261 §25.1 credentials).

    ``params`` holds every auth-param, names lower-cased, values unquoted.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str = attrs.field(repr=False)
    algorithm: str = "MD5"
    cnonce: str | None = None
    qop: str | None = None
    nc: str | None = None
    opaque: str | None = None
    params: dict[str, str] = attrs.field(factory=dict, repr=False, eq=False, hash=False)


_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_BARE = re.compile(r'[^ \t,"]+')
_ESCAPE = re.compile(r"\\(.)", re.S)
# A folded line (RFC 3261 §7.3.1): CRLF followed by whitespace is one SP.
_FOLD = re.compile(r"[ \t]*\r?\n[ \t]+")
_REQUIRED = ("username", "realm", "nonce", "uri", "response")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _parse_params(value: str) -> tuple[str, dict[str, str]] | None:
    """Split ``scheme 1*SP #auth-param`` into the lower-cased scheme and its params."""
    text = _FOLD.sub(" ", value)
    if "\r" in text or "\n" in text:
        return None
    pos = _skip_ws(text, 0)
    m = _TOKEN.match(text, pos)
    if m is None:
        return None
    scheme = m.group().lower()
    pos = m.end()
    if pos < len(text) and text[pos] not in " \t":
        return None
    params: dict[str, str] = {}
    end = len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= end:
            break
        if text[pos] == ",":  # RFC 7230 §7: empty list elements are tolerated
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        name = m.group().lower()
        pos = _skip_ws(text, m.end())
        if pos >= end or text[pos] != "=":
            return None
        pos = _skip_ws(text, pos + 1)
        q = _QUOTED.match(text, pos)
        if q is not None:
            val = _ESCAPE.sub(r"\1", q.group(1))
            pos = q.end()
        else:
            b = _BARE.match(text, pos)
            if b is None:
                return None
            val = b.group()
            pos = b.end()
        if name in params:  # a repeated param is ambiguous: refuse rather than guess
            return None
        params[name] = val
        pos = _skip_ws(text, pos)
        if pos >= end:
            break
        if text[pos] != ",":
            return None
        pos += 1
    return scheme, params


def parse_credentials(value: str) -> DigestCredentials | None:
    """Parse an Authorization / Proxy-Authorization header value.

    Returns None for another scheme (RFC 4475 regaut01: an unknown scheme means no
    credentials), for malformed input, or when a required param (username, realm, nonce, uri,
    response) is missing. Never raises.
    """
    try:
        parsed = _parse_params(value)
    except Exception:  # defensive: hostile input must never escape as an exception
        return None
    if parsed is None:
        return None
    scheme, params = parsed
    if scheme != "digest" or any(k not in params for k in _REQUIRED):
        return None
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=_normalise_algorithm(params.get("algorithm", "MD5")),
        cnonce=params.get("cnonce"),
        qop=params.get("qop"),
        nc=params.get("nc"),
        opaque=params.get("opaque"),
        params=params,
    )


# --------------------------------------------------------------------------- verification

class AuthStatus(enum.Enum):
    OK = "ok"
    STALE = "stale"  # digest right, nonce authentic but expired: re-challenge with stale=true
    FAILED = "failed"


@attrs.frozen
class AuthResult:
    """Outcome of ``DigestAuthenticator.verify``.

    ``username`` is the name the client claimed; it is authenticated only when ``status`` is OK.
    ``reason`` is for logs only: callers answer every FAILED the same way (scanner resistance).
    """

    status: AuthStatus
    username: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK

    @property
    def stale(self) -> bool:
        return self.status is AuthStatus.STALE

    @property
    def failed(self) -> bool:
        return self.status is AuthStatus.FAILED


_STAMP = struct.Struct(">d")
_RAND_LEN = 8
_MAC_LEN = 16
_NONCE_LEN = _STAMP.size + _RAND_LEN + _MAC_LEN
_NC = re.compile(r"[0-9A-Fa-f]{8}")


def _quote(value: str) -> str:
    """RFC 3261 §25.1 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b(text: str) -> bytes:
    return text.encode("utf-8", "replace")


@attrs.define
class DigestAuthenticator:
    """Issues Digest challenges and checks credentials for one realm (RFC 3261 §22.4).

    ``random_bytes`` is injectable so tests can make nonces deterministic.
    """

    realm: str
    secret: bytes = attrs.field(repr=False)
    nonce_lifetime: float = 300.0
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    max_nonces: int = 100_000
    random_bytes: Callable[[int], bytes] = attrs.field(default=secrets.token_bytes, repr=False)
    _opaque: str = attrs.field(init=False, repr=False)
    _dummy_ha1: dict[str, str] = attrs.field(init=False, repr=False)
    # nonce -> (highest nc seen, issue stamp); oldest-used first (LRU order).
    _nc_seen: LruTable[str, tuple[int, float]] = attrs.field(init=False, repr=False)
    # Nonces issued at or before this stamp may have lost their nc record to the cap.
    _evicted_horizon: float = attrs.field(init=False, default=float("-inf"), repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if not self.nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be positive")
        if self.max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self._nc_seen = LruTable(self.max_nonces)
        algos = tuple(_normalise_algorithm(a) for a in self.algorithms)
        if not algos or any(a not in _HASHES for a in algos) or len(set(algos)) != len(algos):
            raise ValueError(f"algorithms must be distinct values from {sorted(_HASHES)}")
        self.algorithms = algos
        key = hmac.new(self.secret, b"sipserver-digest-opaque:" + _b(self.realm), "sha256")
        self._opaque = base64.urlsafe_b64encode(key.digest()[:12]).decode("ascii")
        self._dummy_ha1 = {
            a: _h(a, hmac.new(self.secret, b"dummy-ha1:" + a.encode(), "sha256").hexdigest())
            for a in _HASHES
        }

    # ----------------------------------------------------------------- challenge

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.secret, body, "sha256").digest()[:_MAC_LEN]

    def _new_nonce(self, now: float) -> str:
        body = _STAMP.pack(now) + self.random_bytes(_RAND_LEN)
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    def _nonce_stamp(self, nonce: str) -> float | None:
        """Issue time of a nonce we minted, or None if it is not ours (forged or altered)."""
        if len(nonce) != 43:  # 32 bytes in unpadded base64
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except (binascii.Error, ValueError):
            return None
        # Canonical form only: base64 ignores the low bits of the last character.
        if len(raw) != _NONCE_LEN or base64.urlsafe_b64encode(raw)[:43] != nonce.encode():
            return None
        body, mac = raw[: -_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        stamp: float = _STAMP.unpack_from(body)[0]
        return stamp

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, preferred first.

        RFC 8760 §2.4 / RFC 7616 §3.7: a server offering several algorithms sends one challenge
        per algorithm, most preferred first; each gets its own nonce.
        """
        out = []
        for algo in self.algorithms:
            value = (
                f"Digest realm={_quote(self.realm)}, nonce=\"{self._new_nonce(now)}\", "
                f"opaque=\"{self._opaque}\", algorithm={algo}, qop=\"auth\""
            )
            if stale:
                value += ", stale=true"
            out.append(value)
        return out

    # ----------------------------------------------------------------- verify

    def verify(
        self,
        creds: DigestCredentials,
        method: str,
        ha1_lookup: Callable[[str, str], str | None],
        now: float,
        request_uri: str | None = None,
    ) -> AuthResult:
        """Check credentials against a challenge this authenticator issued (RFC 7616 §3.4).

        ``ha1_lookup(username, algorithm)`` returns the stored HA1 hex or None (unknown user).
        ``request_uri``, when given, must equal the digest ``uri`` textually (RFC 7616 §3.4.6);
        pass None to leave that check to the caller (SIP URI equality is the message layer's).
        """
        user = creds.username

        def failed(reason: str) -> AuthResult:
            return AuthResult(AuthStatus.FAILED, user, reason)

        if creds.realm != self.realm:
            return failed("realm mismatch")
        algo = creds.algorithm
        if algo not in self.algorithms:
            return failed("unsupported algorithm")
        if creds.params.get("userhash", "false").lower() != "false":
            return failed("unsupported userhash")
        if creds.qop is None:
            return failed("missing qop")
        if creds.qop.lower() != "auth":
            return failed("unsupported qop")
        if not creds.cnonce:
            return failed("missing cnonce")
        if creds.nc is None or not _NC.fullmatch(creds.nc):
            return failed("bad nonce count")
        if creds.opaque is not None and not hmac.compare_digest(_b(creds.opaque), _b(self._opaque)):
            return failed("opaque mismatch")
        if request_uri is not None and request_uri != creds.uri:
            return failed("uri mismatch")
        stamp = self._nonce_stamp(creds.nonce)
        if stamp is None:
            return failed("bad nonce")
        age = now - stamp
        if age < -self.nonce_lifetime:  # authentic but from our own future: clock jumped back
            return failed("bad nonce")

        stored = ha1_lookup(user, algo)
        known = stored is not None
        expected = compute_response(
            algo,
            stored if stored is not None else self._dummy_ha1[algo],
            creds.nonce, creds.nc, creds.cnonce, creds.qop, method, creds.uri,
        )
        match = hmac.compare_digest(_b(expected), _b(creds.response.lower()))
        if not known:
            return failed("unknown user")
        if not match:
            return failed("wrong password")
        # RFC 7616 §3.3: stale only when the digest was right for an expired nonce.
        if age > self.nonce_lifetime:
            return AuthResult(AuthStatus.STALE, user, "nonce expired")
        status = self._record_nc(creds.nonce, int(creds.nc, 16), stamp, now)
        if status is None:
            return failed("replayed nonce count")
        if status is AuthStatus.STALE:
            return AuthResult(AuthStatus.STALE, user, "nonce-count record evicted")
        return AuthResult(AuthStatus.OK, user)

    # ----------------------------------------------------------------- nonce counts

    def _record_nc(self, nonce: str, nc: int, stamp: float, now: float) -> AuthStatus | None:
        """RFC 7616 §3.4: each request under a nonce must carry a higher nonce-count.

        Returns OK, STALE, or None for a replay. A nonce with no record that was issued before
        an eviction may have lost its record to the cap: it is answered STALE (the client
        retries with a fresh nonce) rather than risk accepting a replay.
        """
        seen = self._nc_seen.get(nonce)
        if seen is None:
            if stamp <= self._evicted_horizon:
                return AuthStatus.STALE
            self._prune(now)
            for _, (_, evicted_stamp) in self._nc_seen.put(nonce, (nc, stamp)):
                self._evicted_horizon = max(self._evicted_horizon, evicted_stamp)
            return AuthStatus.OK
        if nc <= seen[0]:
            return None
        self._nc_seen.put(nonce, (nc, stamp))
        return AuthStatus.OK

    def _prune(self, now: float) -> None:
        table = self._nc_seen
        # Expired nonces are answered STALE before the table is read, so their records are dead.
        while table:
            oldest = next(iter(table))
            if now - table[oldest][1] <= self.nonce_lifetime:
                break
            del table[oldest]

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces whose nonce-count is being remembered (bounded by max_nonces)."""
        return len(self._nc_seen)
