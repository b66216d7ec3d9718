"""The certificate checks of the health report (codes 1101-1107).

:func:`load_certificate` reads and cross-checks the certificate and key files;
:func:`certificate_findings` turns the one certificate check
(:func:`gateway.config.certs.check_certificate`, which ``check-config`` uses too)
into findings; :func:`verify_chain` verifies the chain the listener sends with a
TLS handshake in memory, and :func:`chain_finding` reports the result.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.config.certs import CertCheck, CertInfo, Problem, check_certificate
from gateway.ops.report import Code, Finding, Status

__all__ = [
    "certificate_findings",
    "chain_finding",
    "load_certificate",
    "verify_chain",
]

_RENEW = (
    "Renew the certificate (e.g. certbot renew), write it to whatsapp.tls.cert_file and"
    " key_file, and reload: systemctl reload wa-sip-gateway (calls in progress are kept)."
)


def _unreadable(key: str, path: Path, why: str) -> Finding:
    return Finding(
        Code.CERT_UNREADABLE,
        Status.BLOCKED,
        f"Cannot load whatsapp.tls.{key} ({path}): {why}; the TLS listener cannot start.",
        "Check the path, that the service user can read the file, and the PEM format"
        " (BEGIN CERTIFICATE / BEGIN PRIVATE KEY; the key must not be password-protected),"
        " then reload (systemctl reload wa-sip-gateway).",
    )


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_certificate(cert_file: Path, key_file: Path) -> tuple[CertInfo | None, list[Finding]]:
    """Read and cross-check the certificate chain and key files (no secret leaves here).

    Returns the chain's :class:`CertInfo` and no findings when both load and the key
    belongs to the certificate; else None and the BLOCKED findings (1107 unreadable,
    1106 key mismatch).
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        return None, [_unreadable("cert_file", cert_file, exc.strerror or "cannot read")]
    except ValueError:
        return None, [_unreadable("cert_file", cert_file, "not a PEM certificate")]
    key: PrivateKeyTypes
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        return None, [_unreadable("key_file", key_file, exc.strerror or "cannot read")]
    except (ValueError, TypeError):
        return None, [_unreadable("key_file", key_file, "not an unencrypted PEM private key")]
    except Exception:  # cryptography raises UnsupportedAlgorithm for exotic keys
        return None, [_unreadable("key_file", key_file, "unsupported key type")]
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        return None, [
            Finding(
                Code.CERT_KEY_MISMATCH,
                Status.BLOCKED,
                f"The private key in whatsapp.tls.key_file ({key_file}) does not belong to"
                f" the certificate in whatsapp.tls.cert_file ({cert_file}); the TLS listener"
                " cannot use them.",
                "Install the key the certificate was issued for (the outputs of `openssl x509"
                " -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` must be"
                " identical), then reload (systemctl reload wa-sip-gateway).",
            )
        ]
    return CertInfo.from_chain(chain), []


def certificate_findings(info: CertInfo, hostname: str, now: dt.datetime) -> list[Finding]:
    """Validity period and name of the certificate in force."""
    return [_finding(check, hostname, now) for check in check_certificate(info, hostname, now)]


def _finding(check: CertCheck, hostname: str, now: dt.datetime) -> Finding:
    info = check.info
    if check.problem is Problem.NOT_YET_VALID:
        return Finding(
            Code.CERT_NOT_YET_VALID,
            Status.BLOCKED,
            f"The TLS certificate is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC;"
            " Meta refuses the TLS connection.",
            "Check the host clock (timedatectl) and the certificate's dates; install a"
            " certificate valid now and reload.",
        )
    if check.problem is Problem.EXPIRED:
        return Finding(
            Code.CERT_EXPIRED,
            Status.BLOCKED,
            f"The TLS certificate expired on {info.not_after:%Y-%m-%d %H:%M} UTC;"
            " Meta refuses the TLS connection.",
            _RENEW,
        )
    if check.problem is Problem.EXPIRING:
        days = (info.not_after - now).total_seconds() / 86400
        return Finding(
            Code.CERT_EXPIRING,
            Status.LIMITED,
            f"The TLS certificate expires on {info.not_after:%Y-%m-%d %H:%M} UTC"
            f" (in {days:.1f} days).",
            _RENEW + " Automate renewal with a deploy hook that reloads the gateway.",
        )
    names = ", ".join(info.dns_names[:5]) or "no DNS names"
    return Finding(
        Code.CERT_NAME_MISMATCH,
        Status.BLOCKED,
        f"The TLS certificate does not cover {hostname} (its subjectAltName: {names});"
        " Meta refuses the TLS connection.",
        f"Get a certificate whose subjectAltName includes {hostname}, the SIP server"
        " hostname configured at Meta, or correct whatsapp.hostname; then reload.",
    )


def verify_chain(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, info: CertInfo, now: dt.datetime
) -> tuple[bool, str]:
    """A TLS handshake in memory between ``server_ctx`` (our certificate and key) and
    ``client_ctx`` (system roots, no name check): whether the chain the listener sends
    verifies, and OpenSSL's reason when it does not. A leaf outside its validity period
    does not count here (that is 1101/1102); an expired intermediate does."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=None)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(12):
        for name, side in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                # 9/10: not yet valid / expired: the chain was built to a trusted root.
                leaf_out_of_date = not info.not_before <= now < info.not_after
                if exc.verify_code in (9, 10) and leaf_out_of_date:
                    return True, ""
                return False, str(exc.verify_message or exc.reason or "verification failed")
            except ssl.SSLError as exc:
                return False, str(exc.reason or exc)
        if done["client"]:
            return True, ""
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return False, "handshake did not complete"


def chain_finding(verified: bool, why: str, development: bool) -> Finding | None:
    if verified:
        return None
    status = Status.LIMITED if development else Status.BLOCKED
    dev = " (LIMITED only because mode is development)" if development else ""
    return Finding(
        Code.CERT_CHAIN_UNTRUSTED,
        status,
        f"The certificate chain does not verify against the system's trusted roots"
        f" ({why}){dev}; Meta refuses certificates it cannot verify.",
        "Use a certificate from a public CA and put the full chain in whatsapp.tls.cert_file"
        " (the certificate first, then the intermediates), then reload.",
    )
