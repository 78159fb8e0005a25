"""Globally Routable UA URIs, the basics (RFC 5627 §3, §5, §6): build them for the 200 OK and
recognise them in a Request-URI.

Invariants:
- A public GRUU is the AoR URI (scheme, canonically escaped user, lower-case host, no port or
  parameters) plus ``;gr=<instance-id>``, the instance-id being the normalised URN (quotes and
  angle brackets removed, lower case). Same AoR and instance give the same string on every
  refresh (GRUU-02).
- A temporary GRUU is ``<scheme>:<opaque>@<domain>;gr`` whose opaque user part is 128 random bits
  in base64url. It reveals nothing about the AoR (RFC 5627 §3.2 asks for that) and means
  something only through the location store's index of minted users (GRUU-03). Random rather
  than HMAC-derived: the store keeps the minted users anyway (they must die with the
  registration), so a key would add nothing but a secret to manage.
- ``parse_gruu`` never raises; a URI that is not a GRUU gives None.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import attrs

from sipserver.sip.randomness import random_bytes
from sipserver.sip.uri import SipURI

from .binding import escape_param, escape_user

__all__ = [
    "GruuRef",
    "aor_uri_text",
    "new_temp_gruu_user",
    "normalise_instance",
    "parse_gruu",
    "pub_gruu",
    "temp_gruu",
    "token_urlsafe",
]

TEMP_GRUU_BYTES = 16


def aor_uri_text(uri: SipURI) -> str:
    """The AoR as a URI: scheme, user and host only (RFC 3261 §10.3 step 5)."""
    host = uri.host.lower()
    host = f"[{host}]" if ":" in host else host
    user = uri.user_unescaped
    return (
        f"{uri.scheme}:{escape_user(user)}@{host}" if user is not None else f"{uri.scheme}:{host}"
    )


def normalise_instance(value: str) -> str:
    """``"<urn:uuid:X>"`` / ``<urn:uuid:X>`` / ``urn:uuid:X`` -> ``urn:uuid:x`` (RFC 5626 §4.1)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.lower()


def pub_gruu(aor_uri: SipURI, instance_id: str) -> str:
    """RFC 5627 §3.1: the AoR with ``gr`` set to the instance-id."""
    return f"{aor_uri_text(aor_uri)};gr={escape_param(instance_id)}"


def temp_gruu(aor_uri: SipURI, user: str) -> str:
    """RFC 5627 §3.2: an opaque user at the AoR's domain with a valueless ``gr``."""
    host = aor_uri.host.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{aor_uri.scheme}:{user}@{host};gr"


def token_urlsafe(nbytes: int) -> str:
    """``secrets.token_urlsafe``, the same format, from the pooled ``os.urandom`` bytes of
    ``sipserver.sip.randomness`` (a system call per REGISTER is slow on some virtual machines)."""
    return base64.urlsafe_b64encode(random_bytes(nbytes)).rstrip(b"=").decode("ascii")


def new_temp_gruu_user(token: Callable[[int], str] = token_urlsafe) -> str:
    """A fresh opaque user part: base64url characters only, so it needs no escaping."""
    return token(TEMP_GRUU_BYTES)


@attrs.frozen(slots=True)
class GruuRef:
    """What a Request-URI says as a GRUU: ``temp_user`` is set for a temporary GRUU (whose AoR
    only the store knows), ``aor``/``instance_id`` for a public one. ``host`` is the domain."""

    host: str
    temp_user: str | None = None
    aor: str | None = None
    instance_id: str | None = None

    @property
    def temporary(self) -> bool:
        return self.temp_user is not None


def parse_gruu(uri: SipURI) -> GruuRef | None:
    """Classify a URI by its ``gr`` parameter (RFC 5627 §3): valueless = temporary GRUU,
    with a value = public GRUU, absent = not a GRUU."""
    gr = uri.param("gr")
    if gr is None:
        return None
    host = uri.host.lower()
    if gr == "":
        if not uri.user:
            return None
        return GruuRef(host=host, temp_user=uri.user_unescaped)
    instance_id = normalise_instance(gr)
    if not instance_id:
        return None
    return GruuRef(host=host, aor=uri.aor, instance_id=instance_id)
