"""The certificate check, and a self-signed development certificate.

One check of a certificate (:func:`check_certificate`: validity period, and a
subjectAltName that covers the SIP hostname) on a :class:`CertInfo`, used twice:
by ``check-config`` as warnings (:func:`certificate_problems`) and by the health
report as findings with codes (:mod:`gateway.ops.certs`). Pure: no sockets, no
ssl module (the chain's verification by a TLS handshake is in ``gateway.ops.certs``).
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_WARNING_DAYS",
    "CertCheck",
    "CertInfo",
    "Problem",
    "certificate_problems",
    "check_certificate",
    "dtls_certificate_problems",
    "ensure_dev_certificate",
    "name_covers",
]

DEV_CERT_DAYS = 365
CERT_WARNING_DAYS = 14  # a certificate expiring sooner is a warning (LIMITED)
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
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
    )
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


@dataclass(frozen=True)
class CertInfo:
    """The certificate chain in force (leaf first) and what the checks need from it."""

    chain: tuple[x509.Certificate, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    fingerprint: str  # SHA-256 of the leaf, hex

    @classmethod
    def from_chain(cls, chain: Sequence[x509.Certificate]) -> CertInfo:
        leaf = chain[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(
            chain=tuple(chain),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            dns_names=names,
            fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        )


def name_covers(patterns: Iterable[str], hostname: str) -> bool:
    """Whether a DNS SAN list covers ``hostname`` (RFC 6125: ``*.`` only as the whole
    leftmost label, matching exactly one label)."""
    host = hostname.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == pattern[2:]:
                return True
        elif pattern == host:
            return True
    return False


class Problem(enum.Enum):
    """What :func:`check_certificate` can find wrong with a certificate."""

    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    EXPIRING = "expiring"  # within CERT_WARNING_DAYS
    NAME_MISMATCH = "name_mismatch"  # the SAN's DNS names do not cover the hostname


@dataclass(frozen=True)
class CertCheck:
    """One problem found, with the certificate it was found in."""

    problem: Problem
    info: CertInfo


def check_certificate(info: CertInfo, hostname: str, now: dt.datetime) -> list[CertCheck]:
    """The certificate's validity period at ``now`` and whether it covers ``hostname``."""
    out: list[CertCheck] = []
    if now < info.not_before:
        out.append(CertCheck(Problem.NOT_YET_VALID, info))
    if now >= info.not_after:
        out.append(CertCheck(Problem.EXPIRED, info))
    elif now + dt.timedelta(days=CERT_WARNING_DAYS) > info.not_after:
        out.append(CertCheck(Problem.EXPIRING, info))
    if not name_covers(info.dns_names, hostname):
        out.append(CertCheck(Problem.NAME_MISMATCH, info))
    return out


def certificate_problems(
    cert_file: Path, hostname: str, now: dt.datetime | None = None
) -> list[str]:
    """Human-readable problems with the PEM certificate in ``cert_file`` for ``hostname``.

    Reports an unparsable file and what :func:`check_certificate` finds: a
    certificate that is not yet valid or has expired (or expires within
    :data:`CERT_WARNING_DAYS` days), and a SAN list not covering ``hostname``.
    An empty list means no problem was found.
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError):
        return ["not a readable PEM certificate"]
    info = CertInfo.from_chain(chain)
    texts = {
        Problem.NOT_YET_VALID: f"certificate not valid before {info.not_before:%Y-%m-%d}",
        Problem.EXPIRED: f"certificate expired on {info.not_after:%Y-%m-%d}",
        Problem.EXPIRING: f"certificate expires on {info.not_after:%Y-%m-%d}",
        Problem.NAME_MISMATCH: (
            f"certificate does not cover {hostname} (subjectAltName DNS names)"
        ),
    }
    found = check_certificate(info, hostname, now or dt.datetime.now(dt.UTC))
    return [texts[check.problem] for check in found]


def dtls_certificate_problems(cert_file: Path, key_file: Path) -> dict[str, str]:
    """What is wrong with a DTLS certificate and key pair (``media.dtls``), by key
    (``cert_file``/``key_file``): unparsable PEM, a key type DTLS-SRTP peers do not
    take (ECDSA, which Meta recommends, or RSA), or a key that is not the
    certificate's. The files must be readable (checked before). Empty: usable."""
    out: dict[str, str] = {}
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        out["cert_file"] = "not a readable PEM certificate"
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except TypeError:
        out["key_file"] = "an encrypted private key (the gateway needs it without a passphrase)"
        return out
    except (OSError, ValueError):
        out["key_file"] = "not a readable PEM private key"
        return out
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        out["key_file"] = "not an ECDSA or RSA key (ECDSA P-256 recommended for DTLS)"
    elif "cert_file" not in out and cert.public_key() != key.public_key():
        out["key_file"] = "does not belong to media.dtls.cert_file (another key pair)"
    return out
