"""Meta's DTLS side: a DTLS 1.2 server with use_srtp over pyOpenSSL memory BIOs (RFC 5764).

Independent of the gateway's own DTLS code on purpose (the emulator must not
share the implementation it checks). Datagrams in, datagrams out; the caller
owns the socket and the clock. The peer's certificate is checked against the
SDP a=fingerprint during the handshake (a mismatch ends it with an alert),
and the SRTP master keys are exported as RFC 5764 4.2 lays them out.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from tests.emulator.sdp import SUITES, Crypto

#: use_srtp profile names (RFC 5764 4.1.2, RFC 7714 14.2) -> SDES suite names of the same keys.
DTLS_PROFILES = {
    "SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
    "SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
}
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"  # RFC 5764 4.2
DTLS1_2_VERSION = 0xFEFD
CIPHERTEXT_MTU = 1200
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha-1": hashes.SHA1(),
    "sha-224": hashes.SHA224(),
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}


def cert_fingerprint(cert: x509.Certificate, algo: str = "sha-256") -> str:
    """``AB:CD:...`` over the DER certificate (RFC 8122 5)."""
    return cert.fingerprint(_HASHES[algo]).hex(":").upper()


@dataclass(frozen=True)
class DtlsIdentity:
    """A self-signed ECDSA P-256 certificate (what Meta recommends) and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, common_name: str = "wa.meta.vc") -> DtlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.cert)

    def context(self, method: int) -> SSL.Context:
        """A DTLS 1.2 context with this certificate (cipher and curve defaults of OpenSSL)."""
        ctx = SSL.Context(method)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        try:  # pyOpenSSL >= 24.3 takes cryptography's objects (and deprecates its own)
            ctx.use_certificate(self.cert)
            ctx.use_privatekey(self.key)
        except TypeError:
            ctx.use_certificate(crypto.X509.from_cryptography(self.cert))
            ctx.use_privatekey(crypto.PKey.from_cryptography_key(self.key))
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
        return ctx


def split_srtp_keys(material: bytes, suite: str, server: bool) -> tuple[Crypto, Crypto]:
    """RFC 5764 4.2: client key, server key, client salt, server salt -> (ours, theirs)."""
    _, klen, slen = SUITES[suite]
    ck, sk = material[:klen], material[klen : 2 * klen]
    cs, ss = material[2 * klen : 2 * klen + slen], material[2 * klen + slen : 2 * (klen + slen)]
    client, server_key = Crypto(0, suite, ck + cs), Crypto(0, suite, sk + ss)
    return (server_key, client) if server else (client, server_key)


def export_srtp_keys(conn: SSL.Connection, server: bool) -> tuple[str, Crypto, Crypto]:
    """(use_srtp profile, our Crypto, the peer's Crypto) of a finished handshake."""
    profile = conn.get_selected_srtp_profile().decode("ascii")
    suite = DTLS_PROFILES[profile]
    _, klen, slen = SUITES[suite]
    material = conn.export_keying_material(EXPORTER_LABEL, 2 * (klen + slen))
    ours, theirs = split_srtp_keys(material, suite, server)
    return profile, ours, theirs


def drain(conn: SSL.Connection) -> list[bytes]:
    """What OpenSSL wrote to the memory BIO: one flight (or record) per read."""
    out: list[bytes] = []
    while True:
        try:
            data = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not data:
            return out
        out.append(data)


class DtlsServer:
    """One call's DTLS server (``a=setup:passive``, or actpass answered with active).

    ``state``: "new" (no ClientHello yet), "handshaking", "connected", "failed",
    "closed". ``failure`` says why it failed; ``fingerprint_ok`` is None until the
    peer's certificate was seen.
    """

    def __init__(
        self,
        identity: DtlsIdentity,
        remote_fingerprints: Sequence[tuple[str, str]],
        profiles: Sequence[str] = tuple(DTLS_PROFILES),
    ) -> None:
        for p in profiles:
            if p not in DTLS_PROFILES:
                raise ValueError(f"unsupported use_srtp profile {p}")
        self.remote_fingerprints = [(a, fp.upper()) for a, fp in remote_fingerprints]
        ctx = identity.context(SSL.DTLS_SERVER_METHOD)
        ctx.set_tlsext_use_srtp(":".join(profiles).encode("ascii"))
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()
        self.conn.set_ciphertext_mtu(CIPHERTEXT_MTU)
        self.state = "new"
        self.failure: str | None = None
        self.fingerprint_ok: bool | None = None
        self.peer_fingerprint: str | None = None
        self.started_at: float | None = None
        self.handshake_seconds: float | None = None
        self.profile: str | None = None
        self.keys: tuple[Crypto, Crypto] | None = None  # (ours, the gateway's)
        self.peer_closed = False

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        """Self-signed is expected: the SDP fingerprint is the trust anchor (RFC 8122 5)."""
        if depth != 0:
            return True
        c = cert.to_cryptography()
        self.peer_fingerprint = cert_fingerprint(c)
        self.fingerprint_ok = any(
            algo in _HASHES and cert_fingerprint(c, algo) == fp
            for algo, fp in self.remote_fingerprints
        )
        return self.fingerprint_ok

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """One datagram from the peer; returns the datagrams to send back."""
        if self.state in ("failed", "closed"):
            return []
        if self.started_at is None:
            self.started_at = now
            self.state = "handshaking"
        self.conn.bio_write(data)
        if self.state == "connected":
            try:
                self.conn.recv(65536)  # post-handshake records: close_notify, retransmissions
            except SSL.ZeroReturnError:
                self.peer_closed = True
            except (SSL.WantReadError, SSL.Error):
                pass
            return drain(self.conn)
        return self._handshake(now)

    def _handshake(self, now: float) -> list[bytes]:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return drain(self.conn)
        except SSL.Error as exc:
            self.state = "failed"
            if self.fingerprint_ok is False:
                self.failure = (
                    f"gateway's DTLS certificate (sha-256 {self.peer_fingerprint}) does not "
                    f"match its SDP a=fingerprint {self.remote_fingerprints}"
                )
            else:
                self.failure = f"DTLS handshake failed: {exc}"
            return drain(self.conn)  # the alert
        self.state = "connected"
        assert self.started_at is not None
        self.handshake_seconds = now - self.started_at
        try:
            self.profile, ours, theirs = export_srtp_keys(self.conn, server=True)
        except (SSL.Error, KeyError, AttributeError) as exc:
            self.state = "failed"
            self.failure = f"DTLS handshake negotiated no usable SRTP profile ({exc!r})"
            return drain(self.conn)
        self.keys = (ours, theirs)
        return drain(self.conn)

    def poll(self) -> list[bytes]:
        """Retransmit our last flight when its timer ran out (RFC 6347 4.2.4)."""
        if self.state != "handshaking":
            return []
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error:
            return []
        return drain(self.conn)

    def close(self) -> list[bytes]:
        """close_notify when connected."""
        out: list[bytes] = []
        if self.state == "connected":
            with contextlib.suppress(SSL.Error):
                self.conn.shutdown()
            out = drain(self.conn)
        self.state = "closed"
        return out
