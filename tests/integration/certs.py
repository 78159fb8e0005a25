"""Throwaway self-signed certificates for TLS and WSS tests (never for real use).

``make_self_signed(tmp_path)`` writes a P-256 key and a certificate valid for ``localhost``,
``127.0.0.1`` and ``::1``; ``client_context(cert_path)`` is a client SSL context that trusts
exactly that certificate (hostname checking stays on).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["client_context", "make_self_signed"]


def make_self_signed(
    directory: Path,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    name: str = "sipserver-test",
) -> tuple[Path, Path]:
    """Write ``NAME.crt`` and ``NAME.key`` (PEM) into ``directory``; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else name)]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def client_context(cert_path: Path) -> ssl.SSLContext:
    """A TLS client context trusting only ``cert_path``."""
    ctx = ssl.create_default_context(cafile=str(cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
