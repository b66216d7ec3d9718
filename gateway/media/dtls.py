"""DTLS-SRTP (RFC 5764) toward WebRTC peers: a sans-IO endpoint over pyOpenSSL memory BIOs.

One :class:`DtlsEndpoint` per call leg runs the DTLS 1.2 handshake on the leg's one UDP port
(demultiplexed by :func:`classify`, RFC 7983), checks the peer's certificate against the
``a=fingerprint`` values of its SDP (RFC 8122; not against a CA: WebRTC certificates are
self-signed) and exports the SRTP master keys and salts (RFC 5764 4.2), which
:class:`gateway.media.srtp.SrtpContext` takes as it takes SDES keys.  After the handshake the
endpoint is idle: SRTP never passes through it.

Datagrams and time go in, datagrams come out (:meth:`DtlsEndpoint.pop_datagrams`), and the
caller arms a timer at :meth:`DtlsEndpoint.next_timeout`.  One wrinkle: OpenSSL keeps its
retransmission timer (1 s, doubling) on the wall clock and pyOpenSSL exposes no hook to
replace it, so :meth:`DtlsEndpoint.handle_timeout` retransmits only when OpenSSL's own timer
has run out too.  The endpoint turns OpenSSL's remaining time into a deadline on the caller's
clock after every call, so with the event loop's monotonic clock the two agree; the overall
bound (``timeout``) is kept on the caller's clock alone.

SRTP protection profiles (``use_srtp``), by the suite names of
:data:`gateway.sdp.crypto.SUITE_LENGTHS`:

==========================  ===========================
suite                       DTLS-SRTP profile
==========================  ===========================
AES_CM_128_HMAC_SHA1_80     SRTP_AES128_CM_SHA1_80
AES_CM_128_HMAC_SHA1_32     SRTP_AES128_CM_SHA1_32
AEAD_AES_128_GCM            SRTP_AEAD_AES_128_GCM
AEAD_AES_256_GCM            SRTP_AEAD_AES_256_GCM
==========================  ===========================

By default the client offers AES_CM_128_HMAC_SHA1_80 then AEAD_AES_128_GCM, and the server
accepts the same two.  OpenSSL's server picks by its own order among what the client offered,
so as the server we also take AES_CM_128_HMAC_SHA1_80 whenever it is offered.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Sequence
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from gateway.media.srtp import SUITES

__all__ = [
    "DEFAULT_PROFILES",
    "DtlsCertificate",
    "DtlsEndpoint",
    "SrtpKeys",
    "certificate_digest",
    "classify",
]

Demux = Literal["stun", "dtls", "rtp"]


def classify(first_byte: int) -> Demux | None:
    """RFC 7983 demultiplexing of one port by the first octet of a datagram: 0..3 STUN,
    20..63 DTLS, 128..191 RTP/RTCP; anything else (ZRTP, TURN channels, junk) is dropped."""
    if first_byte <= 3:
        return "stun"
    if 20 <= first_byte <= 63:
        return "dtls"
    if 128 <= first_byte <= 191:
        return "rtp"
    return None


# ---------------------------------------------------------------------------------------------
# SRTP protection profiles and keys

#: Suite name (gateway.sdp.crypto.SUITE_LENGTHS) -> DTLS-SRTP profile name
#: (RFC 5764 4.1.2, RFC 7714 14.2).
_PROFILE_NAMES: dict[str, bytes] = {
    "AES_CM_128_HMAC_SHA1_80": b"SRTP_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": b"SRTP_AES128_CM_SHA1_32",
    "AEAD_AES_128_GCM": b"SRTP_AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM": b"SRTP_AEAD_AES_256_GCM",
}
_SUITE_BY_PROFILE = {name: suite for suite, name in _PROFILE_NAMES.items()}
#: What we offer as client and accept as server, in our order of preference.
DEFAULT_PROFILES: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"


class SrtpKeys(NamedTuple):
    """SRTP keying from the handshake: master key || master salt for each direction, as
    :class:`gateway.media.srtp.SrtpContext` (suite, local, remote) takes it.

    ``repr`` hides the keys."""

    suite: str
    local: bytes
    remote: bytes

    def __repr__(self) -> str:
        return f"SrtpKeys(suite={self.suite!r}, local=***, remote=***)"


def _split_keying(material: bytes, suite: str, client: bool) -> SrtpKeys:
    """RFC 5764 4.2: client_key, server_key, client_salt, server_salt."""
    info = SUITES[suite]
    k, s = info.key_length, info.salt_length
    client_key, server_key = material[:k], material[k : 2 * k]
    client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s : 2 * (k + s)]
    client_side, server_side = client_key + client_salt, server_key + server_salt
    if client:
        return SrtpKeys(suite, client_side, server_side)
    return SrtpKeys(suite, server_side, client_side)


# ---------------------------------------------------------------------------------------------
# Certificates and fingerprints

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}
#: Strongest first: of the fingerprints a peer sends, only those of the strongest hash we know
#: count (RFC 8842 5), and the certificate must match one of them.
_HASH_PREFERENCE = ("sha-512", "sha-384", "sha-256", "sha-224", "sha-1")


def certificate_digest(der: bytes, algorithm: str = "sha-256") -> str:
    """The RFC 8122 fingerprint of a DER certificate: uppercase hex octets joined by colons."""
    try:
        algo = _HASHES[algorithm.lower()]
    except KeyError:
        raise ValueError(f"unsupported fingerprint hash {algorithm!r}") from None
    digest = hashes.Hash(algo())
    digest.update(der)
    return digest.finalize().hex(":").upper()


def _fingerprint_bytes(value: str) -> bytes | None:
    try:
        return bytes.fromhex(value.strip().replace(":", ""))
    except ValueError:
        return None


def _matches(der: bytes, fingerprints: Sequence[tuple[str, str]]) -> bool:
    offered: dict[str, list[bytes]] = {}
    for algorithm, value in fingerprints:
        octets = _fingerprint_bytes(value)
        if octets is not None:
            offered.setdefault(algorithm.lower(), []).append(octets)
    for algorithm in _HASH_PREFERENCE:
        if algorithm in offered:
            digest = hashes.Hash(_HASHES[algorithm]())
            digest.update(der)
            return digest.finalize() in offered[algorithm]
    return False


_DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION (pyOpenSSL names only the TLS ones)
_OPTIONS = (
    SSL.OP_NO_QUERY_MTU  # memory BIOs have no path MTU: the endpoint sets one
    | SSL.OP_NO_TICKET
    | SSL.OP_NO_COMPRESSION
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)
_VERIFY = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class DtlsCertificate:
    """Our DTLS certificate and key, and the OpenSSL contexts built from them (one per list of
    SRTP profiles, shared by every call).  ``repr`` shows the fingerprint, never the key."""

    __slots__ = ("_contexts", "_key", "certificate", "der", "fingerprint")

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ) -> None:
        if certificate.public_key() != key.public_key():
            raise ValueError("the private key does not belong to the certificate")
        self.certificate = certificate
        self.der = certificate.public_bytes(serialization.Encoding.DER)
        #: ``("sha-256", "AB:CD:...")`` for our ``a=fingerprint``.
        self.fingerprint: tuple[str, str] = ("sha-256", certificate_digest(self.der))
        self._key = key
        self._contexts: dict[tuple[str, ...], SSL.Context] = {}

    @classmethod
    def generate(
        cls,
        *,
        common_name: str = "wa-sip-gateway",
        not_before: datetime.datetime | None = None,
        days: int = 365,
    ) -> DtlsCertificate:
        """A fresh self-signed ECDSA P-256 certificate, valid from 30 days before
        ``not_before`` (default: now) to ``days`` after it."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = not_before or datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(days=30))
            .not_valid_after(start + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(
        cls, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
    ) -> DtlsCertificate:
        """Certificate and unencrypted private key from PEM files (``ValueError`` if unusable)."""
        with open(cert_file, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{os.fspath(key_file)}: not an ECDSA or RSA private key")
        return cls(certificate, key)

    def __repr__(self) -> str:
        return f"DtlsCertificate({self.fingerprint[0]} {self.fingerprint[1]})"

    def context(self, profiles: tuple[str, ...]) -> SSL.Context:
        """The OpenSSL context for ``profiles`` (suite names), built once."""
        ctx = self._contexts.get(profiles)
        if ctx is None:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_min_proto_version(_DTLS1_2_VERSION)
            ctx.set_max_proto_version(_DTLS1_2_VERSION)
            ctx.use_certificate(self.certificate)
            ctx.use_privatekey(self._key)
            ctx.check_privatekey()
            ctx.set_options(_OPTIONS)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_tlsext_use_srtp(b":".join(_PROFILE_NAMES[p] for p in profiles))
            ctx.set_verify(_VERIFY)  # each connection adds its fingerprint check
            self._contexts[profiles] = ctx
        return ctx


# ---------------------------------------------------------------------------------------------
# The endpoint

State = Literal["new", "handshaking", "connected", "failed", "closed"]

#: A conservative path MTU for our records (WebRTC stacks use 1200 too).
DEFAULT_MTU = 1200
#: Outgoing datagrams held until popped; the oldest are dropped beyond this.
_MAX_QUEUED = 64
#: Records processed per received datagram once connected (a datagram holds a few at most).
_MAX_READS = 16
_RECORD_HEADER = 13  # type, version, epoch, sequence number, length (RFC 6347 4.1)


_HANDSHAKE_HEADER = 12  # msg_type, length, message_seq, fragment_offset, fragment_length
#: Handshake messages that travel in clear (epoch 0) in DTLS 1.2: hellos, HelloVerifyRequest,
#: NewSessionTicket, Certificate .. ClientKeyExchange, CertificateStatus.  Finished is always
#: encrypted.
_CLEAR_HANDSHAKE_TYPES = frozenset({1, 2, 3, 4, 11, 12, 13, 14, 15, 16, 22})


def _plausible(data: bytes) -> bool:
    """Whether every record of a datagram is well framed, and every clear handshake fragment
    self-consistent.  OpenSSL drops bad records silently but fails the whole handshake on a
    malformed clear handshake message, so junk from the wire is filtered here first.
    (Encrypted records are authenticated by OpenSSL; a bad one is dropped there.)"""
    pos = 0
    while pos < len(data):
        if len(data) - pos < _RECORD_HEADER or data[pos + 1] != 0xFE:
            return False
        length = int.from_bytes(data[pos + 11 : pos + 13])
        body = pos + _RECORD_HEADER
        if body + length > len(data):
            return False
        if data[pos] == 22 and data[pos + 3 : pos + 5] == b"\0\0":
            if length < _HANDSHAKE_HEADER or data[body] not in _CLEAR_HANDSHAKE_TYPES:
                return False
            message_length = int.from_bytes(data[body + 1 : body + 4])
            offset = int.from_bytes(data[body + 6 : body + 9])
            fragment = int.from_bytes(data[body + 9 : body + 12])
            if fragment != length - _HANDSHAKE_HEADER or offset + fragment > message_length:
                return False
        pos = body + length
    return True


class _FingerprintCheck:
    """The verify callback: the peer's leaf certificate must match its SDP fingerprint; CA
    chains mean nothing here (WebRTC certificates are self-signed)."""

    __slots__ = ("fingerprints", "mismatch")

    def __init__(self, fingerprints: Sequence[tuple[str, str]]) -> None:
        self.fingerprints = tuple(fingerprints)
        self.mismatch = False

    def __call__(
        self, conn: SSL.Connection, cert: crypto.X509, err: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            return True
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        if _matches(der, self.fingerprints):
            return True
        self.mismatch = True
        return False


def _datagrams(data: bytes, mtu: int) -> list[bytes]:
    """OpenSSL's output through a memory BIO is a stream of records: split it at record
    boundaries and pack whole records into datagrams of at most ``mtu`` octets."""
    out: list[bytes] = []
    current = b""
    pos = 0
    while pos < len(data):
        end = len(data)
        if end - pos >= _RECORD_HEADER:
            end = min(end, pos + _RECORD_HEADER + int.from_bytes(data[pos + 11 : pos + 13]))
        record = data[pos:end]
        pos = end
        if current and len(current) + len(record) > mtu:
            out.append(current)
            current = b""
        current += record
    if current:
        out.append(current)
    return out


class DtlsEndpoint:
    """One DTLS-SRTP association, client or server, sans-IO (see the module docstring).

    No cookie exchange (RFC 6347 4.2.1) as server: the endpoint lives on a per-call port whose
    peer address ICE has verified and latched, so a spoofed ClientHello cannot reach it, and a
    ClientHello flood from the peer costs at most this one SSL object and a bounded queue.

    ``handshake_seconds`` runs from the first handshake datagram (client: :meth:`start`;
    server: the first ClientHello) to the last.  ``retransmits`` counts our retransmitted
    flights, ``ignored`` the datagrams dropped (not DTLS, malformed, or arriving after the end).
    """

    def __init__(
        self,
        cert: DtlsCertificate,
        *,
        client: bool,
        remote_fingerprints: Sequence[tuple[str, str]],
        timeout: float = 10.0,
        profiles: Sequence[str] = DEFAULT_PROFILES,
        mtu: int = DEFAULT_MTU,
    ) -> None:
        unknown = [p for p in profiles if p not in _PROFILE_NAMES]
        if unknown or not profiles:
            raise ValueError(f"unsupported DTLS-SRTP suites {unknown or list(profiles)}")
        self.client = client
        self.timeout = timeout
        self.state: State = "new"
        self.failure: str | None = None
        self.keys: SrtpKeys | None = None
        self.handshake_seconds: float | None = None
        self.retransmits = 0
        self.ignored = 0
        self._mtu = mtu
        self._check = _FingerprintCheck(remote_fingerprints)
        self._conn = SSL.Connection(cert.context(tuple(profiles)), None)
        self._conn.set_verify(_VERIFY, self._check)
        self._conn.set_ciphertext_mtu(mtu)
        if client:
            self._conn.set_connect_state()
        else:
            self._conn.set_accept_state()
        self._out: list[bytes] = []
        self._deadline = 0.0
        self._retransmit_at: float | None = None
        self._began: float | None = None

    def __repr__(self) -> str:
        role = "client" if self.client else "server"
        return f"DtlsEndpoint({role}, state={self.state!r}, failure={self.failure!r})"

    # -- inputs ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the client sends its ClientHello; the server waits for one.  The ``timeout``
        bound runs from here."""
        if self.state != "new":
            return
        self.state = "handshaking"
        self._deadline = now + self.timeout
        if self.client:
            self._began = now
            self._handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """One datagram classified as DTLS.  A server not yet started starts here."""
        if not data or classify(data[0]) != "dtls" or not _plausible(data):
            self.ignored += 1
            return
        if self.state == "new" and not self.client:
            self.start(now)
        if self.state == "handshaking":
            if self._began is None:
                self._began = now
            self._conn.bio_write(data)
            self._handshake(now)
        elif self.state == "connected":
            self._conn.bio_write(data)
            self._read()
        else:
            self.ignored += 1

    def handle_timeout(self, now: float) -> None:
        """Retransmit the last flight when due; past the ``timeout`` bound the handshake fails."""
        if self.state != "handshaking":
            return
        if now >= self._deadline:
            self._fail("timeout")
            return
        if self._retransmit_at is None or now < self._retransmit_at:
            return
        try:
            if self._conn.DTLSv1_handle_timeout():
                self.retransmits += 1
        except SSL.Error as exc:
            self._fail(self._reason(exc))
        self._flush()
        self._rearm(now)

    def close(self) -> None:
        """End the association: a close_notify alert when connected (pop it with
        :meth:`pop_datagrams`).  A failed endpoint stays failed."""
        if self.state == "connected":
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
            self._flush()
        if self.state != "failed":
            self.state = "closed"
        self._retransmit_at = None

    # -- outputs --------------------------------------------------------------------------------

    def pop_datagrams(self) -> list[bytes]:
        """Datagrams to send to the peer now."""
        out, self._out = self._out, []
        return out

    def next_timeout(self) -> float | None:
        """When :meth:`handle_timeout` is due (caller's clock), or None."""
        if self.state != "handshaking":
            return None
        if self._retransmit_at is None:
            return self._deadline
        return min(self._deadline, self._retransmit_at)

    # -- internals ------------------------------------------------------------------------------

    def _handshake(self, now: float) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._fail(self._reason(exc))
        else:
            self._established(now)
        self._flush()
        self._rearm(now)

    def _established(self, now: float) -> None:
        peer = self._conn.get_peer_certificate(as_cryptography=True)
        if peer is None or not _matches(
            peer.public_bytes(serialization.Encoding.DER), self._check.fingerprints
        ):
            self._fail("fingerprint mismatch")
            return
        suite = _SUITE_BY_PROFILE.get(self._conn.get_selected_srtp_profile())
        if suite is None:
            self._fail("no SRTP profile")
            return
        material = self._conn.export_keying_material(
            _EXPORTER_LABEL, 2 * SUITES[suite].material_length
        )
        self.keys = _split_keying(material, suite, self.client)
        self.state = "connected"
        self.handshake_seconds = now - (self._began or now)

    def _read(self) -> None:
        """After the handshake: alerts, or the peer's retransmitted last flight (ours was lost;
        OpenSSL answers it).  Application data is not part of DTLS-SRTP and is dropped."""
        for _ in range(_MAX_READS):
            try:
                self._conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.Error:  # close_notify (ZeroReturnError) or a fatal alert
                self.state = "closed"
                break
        self._flush()

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure = reason
        self._retransmit_at = None

    def _reason(self, exc: SSL.Error) -> str:
        if self._check.mismatch:
            return "fingerprint mismatch"
        errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        reasons = [e[-1] for e in errors if isinstance(e, tuple) and e and e[-1]]
        return f"handshake: {reasons[-1] if reasons else type(exc).__name__}"

    def _rearm(self, now: float) -> None:
        remaining = self._conn.DTLSv1_get_timeout() if self.state == "handshaking" else None
        self._retransmit_at = None if remaining is None else now + remaining

    def _flush(self) -> None:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if chunks:
            self._out.extend(_datagrams(b"".join(chunks), self._mtu))
            if len(self._out) > _MAX_QUEUED:
                del self._out[: len(self._out) - _MAX_QUEUED]
