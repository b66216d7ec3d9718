"""TLS material and contexts for the Meta emulator.

The emulator plays Meta's edge (``wa.meta.vc``). It gets a throw-away CA and a
leaf certificate signed by it whose SAN covers ``wa.meta.vc``, ``localhost``
and ``127.0.0.1``, so a gateway configured with ``whatsapp.tls.ca_file`` =
:attr:`EmulatorTls.ca_file` verifies it exactly as it verifies Meta (chain and
host name). ``cert_file`` holds the leaf followed by the CA, so pointing a
verifier at ``cert_file`` works too.
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DNS_NAMES = ("wa.meta.vc", "localhost")
DEFAULT_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class EmulatorTls:
    """Files of the emulator's certificate (PEM)."""

    directory: Path
    cert_file: Path  # leaf + CA
    key_file: Path
    ca_file: Path  # the CA alone: what the gateway's whatsapp.tls.ca_file points at

    @classmethod
    def create(
        cls,
        directory: Path,
        dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
        ips: Sequence[str] = DEFAULT_IPS,
    ) -> EmulatorTls:
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Meta Emulator Test CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns_names]
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        tls = cls(
            directory=directory,
            cert_file=directory / "meta-emulator.crt",
            key_file=directory / "meta-emulator.key",
            ca_file=directory / "meta-emulator-ca.crt",
        )
        tls.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        tls.key_file.chmod(0o600)
        tls.cert_file.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
        tls.ca_file.write_bytes(ca_cert.public_bytes(pem))
        return tls

    def server_context(
        self, alpn: Sequence[str] | None = ("sip",), sni_seen: list[str] | None = None
    ) -> ssl.SSLContext:
        """Meta's server side: TLS 1.2+, no client certificate request.

        ``alpn`` is the server's ALPN list: with ``("sip",)`` a client offering
        ``sip`` ends up with it selected, which the emulator then treats as the
        handshake Meta aborts (alert 120). SNI names are appended to ``sni_seen``.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if sni_seen is not None:
            seen = sni_seen

            def _sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
                seen.append(name or "")

            ctx.sni_callback = _sni
        return ctx


def client_context(ca_file: Path | None, *, alpn: Sequence[str] | None = None) -> ssl.SSLContext:
    """Meta's client side: no ALPN (unless a test asks), TLS 1.2+.

    With ``ca_file`` the peer certificate and host name are verified (Meta
    verifies the gateway's certificate); without it nothing is verified.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(ca_file))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


_DEFAULT: EmulatorTls | None = None


def default_tls() -> EmulatorTls:
    """One certificate per test process, in a temporary directory removed at exit."""
    global _DEFAULT
    if _DEFAULT is None:
        directory = Path(tempfile.mkdtemp(prefix="wa-meta-emulator-"))
        atexit.register(shutil.rmtree, directory, True)
        _DEFAULT = EmulatorTls.create(directory)
    return _DEFAULT
