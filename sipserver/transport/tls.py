"""TLS contexts for the TLS and WSS listeners and for outgoing TLS connections.

Invariant: TLS 1.2 is the floor (RFC 3261 §26.2.1 asks for TLS; RFC 7525 rules out older
versions); a configuration problem raises ``TlsConfigError`` naming the file at fault, at start-up
rather than at the first handshake.
"""

from __future__ import annotations

import ssl
from os import PathLike

__all__ = ["TlsConfigError", "make_client_context", "make_server_context"]

StrPath = str | PathLike[str]

_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used, or the TLS version is unknown."""


def _min_version(value: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[value]
    except KeyError:
        raise TlsConfigError(
            f"unsupported TLS min_version {value!r} (use one of {', '.join(_VERSIONS)})"
        ) from None


def make_server_context(
    cert: StrPath, key: StrPath, ca: StrPath | None = None, min_version: str = "1.2"
) -> ssl.SSLContext:
    """Server context from PEM files. With ``ca``, client certificates are requested and
    verified against it when presented (optional: SIP UAs rarely have one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _min_version(min_version)
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load TLS certificate {cert!s} / key {key!s}: {exc}") from exc
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def make_client_context(
    ca: StrPath | None = None, *, verify: bool = True, min_version: str = "1.2"
) -> ssl.SSLContext:
    """Client context for outgoing TLS connections; system CAs unless ``ca`` is given."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = _min_version(min_version)
    if ca is not None:
        _load_ca(ctx, ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca: StrPath) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load TLS CA file {ca!s}: {exc}") from exc
