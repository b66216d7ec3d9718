"""TLS certificate helpers: a self-signed development certificate and sanity checks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["certificate_problems", "ensure_dev_certificate"]

DEV_CERT_DAYS = 365
_EKU = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_dev_certificate(cert_file: Path, key_file: Path, hostname: str) -> bool:
    """Create a self-signed certificate for development unless both files exist.

    The certificate is ECDSA P-256, valid for 365 days, with SANs
    ``DNS:hostname``, ``DNS:localhost`` and ``IP:127.0.0.1``.  If either file
    is missing both are (re)written: the key with mode 0600, the certificate
    with 0644; parent directories are created.  Returns True when generated.
    """
    if cert_file.exists() and key_file.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_CERT_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKU), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path in (cert_file, key_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(key_file, key_pem, 0o600)
    _write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _matches(pattern: str, hostname: str) -> bool:
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == hostname


def certificate_problems(
    cert_file: Path, hostname: str, now: dt.datetime | None = None
) -> list[str]:
    """Human-readable problems with the PEM certificate in ``cert_file`` for ``hostname``.

    Reports an unparsable file, a certificate that is not yet valid or has
    expired (or expires within 14 days), and a SAN list not covering
    ``hostname``.  An empty list means no problem was found.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return ["not a readable PEM certificate"]
    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    if now < cert.not_valid_before_utc:
        problems.append(f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    if now > cert.not_valid_after_utc:
        problems.append(f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif now + dt.timedelta(days=14) > cert.not_valid_after_utc:
        problems.append(f"certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = names.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if not any(_matches(pattern, hostname) for pattern in dns_names):
        problems.append(f"certificate does not cover {hostname} (subjectAltName DNS names)")
    return problems
