"""Who is asking: digest authentication of one request (RFC 3261 §22), with the failure ban and
the flows an authenticated REGISTER established. Sans-IO: the request, the source address and the
time go in; the authenticated user name, or the refusal to answer with, comes out.

Invariants:
- A banned source is refused (403) before its credentials are looked at.
- Every failed digest is answered alike (a new challenge) so a scanner learns nothing; the
  reason is logged, never the secret or the response hash.
- ``flow_users`` holds a user only for a flow whose REGISTER that user authenticated; a closed
  flow is forgotten (``forget``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import attrs

from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.uri import parse_uri
from .credentials import CredentialStore
from .digest import DigestAuthenticator, parse_credentials
from .limits import FailureBan

log = logging.getLogger("sipserver")

__all__ = ["AuthGate", "Refusal"]


@attrs.frozen
class Refusal:
    """Answer the request with this instead of serving it (401/407 challenge, 403 ban)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@attrs.define
class AuthGate:
    credentials: CredentialStore
    authenticator: DigestAuthenticator
    ban: FailureBan
    stats: dict[str, int] = attrs.field(factory=dict)
    flow_users: dict[Hashable, str] = attrs.field(factory=dict)

    @property
    def realm(self) -> str:
        return self.authenticator.realm

    def check(self, req: Request, source_ip: str, now: float, *, register: bool) -> str | Refusal:
        """RFC 3261 §22.3 (proxy, 407/Proxy-Authorization) and §22.4 (registrar, 401/Authorization).
        Returns the authenticated user name or the refusal to send."""
        if self.ban.is_banned(source_ip, now):
            self._count("auth_banned")
            return Refusal(403, "Forbidden (too many failed authentications)")
        header = "Authorization" if register else "Proxy-Authorization"
        stale = False
        for value in req.header_lines(header):
            creds = parse_credentials(value)
            if creds is None or creds.realm != self.realm:
                continue
            if not _same_uri(creds.uri, req):
                # RFC 2617 §3.2.2.5 (RFC 3261 §22.4): the digest was computed for another request
                self._count("auth_failures")
                log.info("authentication failed from %s for %r: digest uri %r is not the Request-URI",
                         source_ip, creds.username, creds.uri[:80])
                self.ban.record_failure(source_ip, now)
                continue
            result = self.authenticator.verify(creds, req.method, self.credentials.lookup, now)
            if result.ok:
                self.ban.record_success(source_ip, now)
                return result.username
            if result.stale:
                stale = True
                continue
            self._count("auth_failures")
            log.info("authentication failed from %s for %r: %s", source_ip, creds.username, result.reason)
            self.ban.record_failure(source_ip, now)
        status = 401 if register else 407
        name = "WWW-Authenticate" if register else "Proxy-Authenticate"
        return Refusal(status, None, tuple((name, c) for c in self.authenticator.challenge(now, stale=stale)))

    def consume(self, req: Request) -> None:
        """RFC 3261 §22.3: credentials for our realm are meant for this proxy, so they stop here;
        forwarded, they would hand the next hop a digest to attack offline (issue 16).
        Credentials for other realms travel on to the proxies that asked for them."""
        lines = req.header_lines("Proxy-Authorization")
        if not lines:
            return
        keep = [v for v in lines if (c := parse_credentials(v)) is None or c.realm != self.realm]
        if len(keep) != len(lines):
            req.remove_header("Proxy-Authorization")
            for value in keep:
                req.add_header("Proxy-Authorization", value)

    def reload(self, path: str) -> bool:
        """Re-read the credentials file (SIGHUP, management API). Keeps the old set on error,
        with the reason logged."""
        if not path:
            log.info("credentials reload requested, but no auth.credentials_file is configured")
            return False
        try:
            self.credentials = CredentialStore.load_file(path, self.realm)
        except Exception as exc:
            log.error("credentials reload failed, keeping the previous users: %s", exc)
            return False
        log.info("credentials reloaded from %s: %d users", path, len(self.credentials.users()))
        return True

    def remember(self, flow: Hashable, user: str) -> None:
        """An authenticated REGISTER arrived on ``flow`` (auth.trust_registered_flows)."""
        self.flow_users[flow] = user

    def forget(self, flow: Hashable) -> None:
        self.flow_users.pop(flow, None)

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


def _same_uri(digest_uri: str, req: Request) -> bool:
    """The digest ``uri`` names this request's Request-URI: the same text, or the same URI by
    RFC 3261 §19.1.4 comparison (a client may re-escape or reorder parameters)."""
    if digest_uri == req.uri_text:
        return True
    try:
        return parse_uri(digest_uri) == req.uri
    except ParseError:
        return False
