"""DTLS-SRTP endpoint (gateway.media.dtls): two endpoints in memory on a fake clock.

OpenSSL keeps its retransmission timer on the wall clock, so the two retransmission tests
sleep just over the first 1 s interval; everything else runs on the fake clock alone.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.media.dtls import (
    DEFAULT_PROFILES,
    DtlsCertificate,
    DtlsEndpoint,
    SrtpKeys,
    certificate_digest,
    classify,
)
from gateway.media.rtp import RtpSender
from gateway.media.srtp import SUITES, SrtpContext
from tests.peers import host_binary

Drop = Callable[[str, int, bytes], bool]  # (sender "c"/"s", index of its datagram, data)


@pytest.fixture(scope="module")
def certs() -> tuple[DtlsCertificate, DtlsCertificate]:
    return DtlsCertificate.generate(), DtlsCertificate.generate()


def endpoints(
    certs: tuple[DtlsCertificate, DtlsCertificate],
    *,
    client_fps: list[tuple[str, str]] | None = None,
    server_fps: list[tuple[str, str]] | None = None,
    client_profiles: tuple[str, ...] = DEFAULT_PROFILES,
    server_profiles: tuple[str, ...] = DEFAULT_PROFILES,
    timeout: float = 10.0,
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    ours, theirs = certs
    client = DtlsEndpoint(
        ours,
        client=True,
        remote_fingerprints=server_fps or [theirs.fingerprint],
        profiles=client_profiles,
        timeout=timeout,
    )
    server = DtlsEndpoint(
        theirs,
        client=False,
        remote_fingerprints=client_fps or [ours.fingerprint],
        profiles=server_profiles,
        timeout=timeout,
    )
    return client, server


class Wire:
    """Carries datagrams between the two endpoints, 10 ms a hop on the fake clock."""

    def __init__(self, client: DtlsEndpoint, server: DtlsEndpoint, now: float = 100.0) -> None:
        self.client, self.server, self.now = client, server, now
        self.sent = {"c": 0, "s": 0}
        self.dropped: list[tuple[str, bytes]] = []

    def pump(self, drop: Drop | None = None) -> None:
        for _ in range(20):
            moved = False
            for name, src, dst in (
                ("c", self.client, self.server),
                ("s", self.server, self.client),
            ):
                for data in src.pop_datagrams():
                    index = self.sent[name]
                    self.sent[name] += 1
                    if drop is not None and drop(name, index, data):
                        self.dropped.append((name, data))
                        continue
                    moved = True
                    self.now += 0.01
                    dst.receive(data, self.now)
            if not moved:
                return

    def handshake(self, drop: Drop | None = None) -> None:
        self.server.start(self.now)
        self.client.start(self.now)
        self.pump(drop)


def rtp_packets(count: int) -> list[bytes]:
    sender = RtpSender(48000)
    return [sender.next_packet(111, bytes([i]) * 80, 960) for i in range(count)]


# -- RFC 7983 demultiplexing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, "stun"),
        (1, "stun"),
        (3, "stun"),
        (4, None),
        (16, None),  # ZRTP
        (19, None),
        (20, "dtls"),  # change_cipher_spec
        (22, "dtls"),  # handshake
        (23, "dtls"),
        (63, "dtls"),
        (64, None),  # TURN channel
        (79, None),
        (127, None),
        (128, "rtp"),
        (0x90, "rtp"),  # V=2 with the extension bit
        (191, "rtp"),
        (192, None),
        (255, None),
    ],
)
def test_classify_rfc7983(first: int, kind: str | None) -> None:
    assert classify(first) == kind


# -- the handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "suite"),
    [
        (DEFAULT_PROFILES, DEFAULT_PROFILES, "AES_CM_128_HMAC_SHA1_80"),
        (("AEAD_AES_128_GCM",), DEFAULT_PROFILES, "AEAD_AES_128_GCM"),
        (DEFAULT_PROFILES, ("AEAD_AES_128_GCM",), "AEAD_AES_128_GCM"),
        (("AES_CM_128_HMAC_SHA1_80",), DEFAULT_PROFILES, "AES_CM_128_HMAC_SHA1_80"),
        # OpenSSL's server chooses by its own order among the offered ones
        (
            ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"),
            DEFAULT_PROFILES,
            "AES_CM_128_HMAC_SHA1_80",
        ),
        (("AEAD_AES_256_GCM",), ("AEAD_AES_256_GCM",), "AEAD_AES_256_GCM"),
    ],
)
def test_handshake_keys_mirror_and_protect_srtp(
    certs: tuple[DtlsCertificate, DtlsCertificate],
    client_profiles: tuple[str, ...],
    server_profiles: tuple[str, ...],
    suite: str,
) -> None:
    client, server = endpoints(
        certs, client_profiles=client_profiles, server_profiles=server_profiles
    )
    assert client.state == server.state == "new"
    wire = Wire(client, server)
    wire.handshake()
    assert client.state == server.state == "connected"
    assert client.failure is None and server.failure is None
    assert client.keys is not None and server.keys is not None
    assert client.keys.suite == server.keys.suite == suite
    length = SUITES[suite].material_length
    assert len(client.keys.local) == len(client.keys.remote) == length
    assert client.keys.local == server.keys.remote and client.keys.remote == server.keys.local
    assert client.keys.local != client.keys.remote
    # four hops of 10 ms for the client (CH .. server Finished), two for the server
    assert client.handshake_seconds == pytest.approx(0.04)
    assert server.handshake_seconds == pytest.approx(0.02)
    assert client.next_timeout() is None and server.next_timeout() is None

    ours = SrtpContext(*client.keys)
    theirs = SrtpContext(*server.keys)
    for rtp in rtp_packets(5):
        assert theirs.unprotect(ours.protect(rtp)) == rtp
        assert ours.unprotect(theirs.protect(rtp)) == rtp
    assert ours.auth_failures == theirs.auth_failures == 0


def test_small_mtu_fragments_whole_records(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    """Flights split into datagrams of at most the MTU, each holding whole DTLS records."""
    ours, theirs = certs
    client = DtlsEndpoint(ours, client=True, remote_fingerprints=[theirs.fingerprint], mtu=300)
    server = DtlsEndpoint(theirs, client=False, remote_fingerprints=[ours.fingerprint], mtu=300)
    sizes: list[int] = []

    def record(who: str, index: int, data: bytes) -> bool:
        sizes.append(len(data))
        pos = 0
        while pos < len(data):  # walk the records: they must tile the datagram exactly
            assert data[pos + 1] == 0xFE
            pos += 13 + int.from_bytes(data[pos + 11 : pos + 13])
        assert pos == len(data)
        return False

    Wire(client, server).handshake(drop=record)
    assert client.state == server.state == "connected"
    assert max(sizes) <= 300 and len(sizes) > 4  # the certificate flights needed several


def test_duplicated_datagrams_are_harmless(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    wire = Wire(client, server)
    client.start(wire.now)
    server.start(wire.now)
    for _ in range(4):
        for src, dst in ((client, server), (server, client)):
            for data in src.pop_datagrams():
                dst.receive(data, wire.now)
                dst.receive(data, wire.now)  # the network delivered it twice
    assert client.state == server.state == "connected"
    assert client.keys is not None and server.keys is not None
    assert client.keys.local == server.keys.remote


def test_two_handshakes_give_fresh_keys(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    first = endpoints(certs)
    second = endpoints(certs)
    Wire(*first).handshake()
    Wire(*second).handshake()
    assert first[0].keys is not None and second[0].keys is not None
    assert first[0].keys.local != second[0].keys.local


def test_keying_layout_rfc5764(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    """client_key | server_key | client_salt | server_salt, recomputed from the exporter."""
    client, server = endpoints(certs)
    Wire(client, server).handshake()
    material = client._conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    assert client.keys is not None and server.keys is not None
    assert client.keys.local == material[0:16] + material[32:46]
    assert server.keys.local == material[16:32] + material[46:60]


def test_no_common_profile_fails_both(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs, client_profiles=("AES_CM_128_HMAC_SHA1_32",))
    Wire(client, server).handshake()
    assert (client.state, client.failure) == ("failed", "no SRTP profile")
    assert (server.state, server.failure) == ("failed", "no SRTP profile")
    assert client.keys is None and server.keys is None


def test_unknown_profile_rejected(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    with pytest.raises(ValueError, match="F8_128"):
        DtlsEndpoint(
            certs[0], client=True, remote_fingerprints=[], profiles=("F8_128_HMAC_SHA1_80",)
        )


# -- fingerprints ---------------------------------------------------------------------------------


def test_client_rejects_server_fingerprint(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    other = DtlsCertificate.generate()
    client, server = endpoints(certs, server_fps=[other.fingerprint])
    Wire(client, server).handshake()
    assert (client.state, client.failure, client.keys) == ("failed", "fingerprint mismatch", None)
    # the client's alert ends the server too
    assert server.state == "failed" and server.keys is None
    assert server.failure is not None and server.failure.startswith("handshake: ")
    assert client.next_timeout() is None and server.next_timeout() is None


def test_server_rejects_client_fingerprint(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    other = DtlsCertificate.generate()
    client, server = endpoints(certs, client_fps=[other.fingerprint])
    Wire(client, server).handshake()
    assert (server.state, server.failure, server.keys) == ("failed", "fingerprint mismatch", None)
    assert client.state == "failed" and client.keys is None
    assert client.failure is not None and client.failure.startswith("handshake: ")


@pytest.mark.parametrize("algorithm", ["sha-1", "sha-224", "sha-256", "sha-384", "sha-512"])
def test_fingerprint_hashes(certs: tuple[DtlsCertificate, DtlsCertificate], algorithm: str) -> None:
    server_cert = certs[1]
    value = certificate_digest(server_cert.der, algorithm)
    client, server = endpoints(certs, server_fps=[(algorithm.upper(), value.lower())])
    Wire(client, server).handshake()
    assert client.state == "connected"


@pytest.mark.parametrize(
    ("fps", "state"),
    [
        # one of several of the same hash matches
        (lambda der: [("sha-256", "00:11"), ("sha-256", certificate_digest(der))], "connected"),
        # only the strongest hash offered counts (RFC 8842 5): a wrong sha-512 loses
        (lambda der: [("sha-256", certificate_digest(der)), ("sha-512", "AA:BB")], "failed"),
        # unknown hashes and malformed values are ignored, not fatal
        (
            lambda der: [("md5", "zz"), ("sha-384", "x:y"), ("sha-256", certificate_digest(der))],
            "connected",
        ),
        (lambda der: [("md5", "00:11")], "failed"),
        (lambda der: [], "failed"),
    ],
)
def test_fingerprint_selection(
    certs: tuple[DtlsCertificate, DtlsCertificate],
    fps: Callable[[bytes], list[tuple[str, str]]],
    state: str,
) -> None:
    client, server = endpoints(certs)
    client = DtlsEndpoint(certs[0], client=True, remote_fingerprints=fps(certs[1].der))
    Wire(client, server).handshake()
    assert client.state == state
    if state == "failed":
        assert client.failure == "fingerprint mismatch"


# -- retransmission and the bound -----------------------------------------------------------------


def test_lost_client_hello_is_retransmitted(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    wire = Wire(client, server)
    wire.handshake(drop=lambda who, i, data: who == "c" and i == 0)
    assert len(wire.dropped) == 1 and client.state == "handshaking"
    due = client.next_timeout()
    assert due is not None and wire.now < due <= wire.now + 1.0
    client.handle_timeout(wire.now + 0.5)  # not yet due
    assert client.pop_datagrams() == [] and client.retransmits == 0
    time.sleep(1.05)  # OpenSSL's first retransmission interval, on its wall clock
    client.handle_timeout(due)
    resent = client.pop_datagrams()
    assert client.retransmits == 1 and len(resent) == 1
    assert resent[0][0] == 22 and len(resent[0]) == len(wire.dropped[0][1])  # a ClientHello again
    later = client.next_timeout()
    assert later is not None and later >= due + 1.5  # the interval doubled
    wire.now = due
    server.receive(resent[0], due)
    wire.pump()
    assert client.state == server.state == "connected"
    assert client.handshake_seconds is not None and client.handshake_seconds > 1.0


def test_lost_final_flight_recovered(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    """The server's CCS+Finished is lost: the server is done, the client retransmits its
    flight, and the connected server answers it again (new record numbers, not a replay)."""
    client, server = endpoints(certs)
    wire = Wire(client, server)
    wire.handshake(drop=lambda who, i, data: who == "s" and i == 1)
    assert server.state == "connected" and client.state == "handshaking"
    due = client.next_timeout()
    assert due is not None
    time.sleep(1.05)
    client.handle_timeout(due)
    assert client.retransmits == 1
    wire.pump()
    assert client.state == "connected"
    assert client.keys is not None and server.keys is not None
    assert client.keys.local == server.keys.remote


@pytest.mark.parametrize("role", ["client", "server"])
def test_no_answer_fails_at_the_bound(
    certs: tuple[DtlsCertificate, DtlsCertificate], role: str
) -> None:
    client, server = endpoints(certs, timeout=10.0)
    endpoint = client if role == "client" else server
    endpoint.start(50.0)
    endpoint.pop_datagrams()
    due = endpoint.next_timeout()
    assert due is not None and due <= 60.0
    endpoint.handle_timeout(59.99)
    assert endpoint.state == "handshaking"
    endpoint.handle_timeout(60.0)
    assert (endpoint.state, endpoint.failure, endpoint.keys) == ("failed", "timeout", None)
    assert endpoint.next_timeout() is None
    endpoint.handle_timeout(70.0)
    assert endpoint.failure == "timeout"


def test_server_deadline_when_only_the_client_hello_came(
    certs: tuple[DtlsCertificate, DtlsCertificate],
) -> None:
    client, server = endpoints(certs, timeout=5.0)
    client.start(0.0)
    (hello,) = client.pop_datagrams()
    server.receive(hello, 0.1)  # a server not started starts on the first ClientHello
    assert server.state == "handshaking" and server.pop_datagrams()
    assert server.next_timeout() == pytest.approx(1.1, abs=0.2)  # OpenSSL's 1 s retransmission
    server.handle_timeout(5.1)
    assert (server.state, server.failure) == ("failed", "timeout")


# -- hostile input -------------------------------------------------------------------------------


def _garbage() -> list[bytes]:
    return [
        b"",
        b"\x16",
        bytes([22, 0xFE, 0xFD]) + os.urandom(10),  # truncated header
        bytes([22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]) + os.urandom(40),  # long length
        bytes([22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 9, 0, 20]) + os.urandom(20),  # random body
        bytes([21, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 3, 0, 2, 2, 40]),  # fake fatal alert, epoch 1
        bytes([23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 30]) + os.urandom(30),  # fake app data
        b"\x00\x01\x00\x00" + os.urandom(16),  # STUN
        b"\x80" + os.urandom(100),  # RTP
        *(bytes([b]) + os.urandom(60) for b in range(20, 64)),
    ]


def test_garbage_is_survived(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    for data in _garbage():
        server.receive(data, 0.0)
    assert server.state == "handshaking" and server.failure is None
    assert server.ignored >= 3  # empty, STUN, RTP
    wire = Wire(client, server)
    client.start(wire.now)
    (hello,) = client.pop_datagrams()
    for data in _garbage():
        client.receive(data, wire.now)
    server.receive(hello, wire.now)
    wire.pump()
    assert client.state == server.state == "connected"
    for data in _garbage() * 3:
        client.receive(data, wire.now)
        server.receive(data, wire.now)
    assert client.state == server.state == "connected"


def test_client_hello_flood_is_bounded(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    client.start(0.0)
    (hello,) = client.pop_datagrams()
    server.receive(hello, 0.0)
    answer = server.pop_datagrams()
    others = []
    for _ in range(100):  # distinct ClientHellos (new randoms, keys)
        stranger = DtlsEndpoint(certs[0], client=True, remote_fingerprints=[certs[1].fingerprint])
        stranger.start(0.0)
        others += stranger.pop_datagrams()
    flood = [hello] * 2000 + others
    for data in flood:
        server.receive(data, 0.5)
    assert server.state == "handshaking"
    assert len(server.pop_datagrams()) <= 64  # the outgoing queue is bounded
    # the genuine handshake still completes, and a connected server shrugs the flood off
    for data in answer:
        client.receive(data, 0.6)
    for data in client.pop_datagrams():
        server.receive(data, 0.7)
    for data in server.pop_datagrams():
        client.receive(data, 0.8)
    assert client.state == server.state == "connected"
    keys = server.keys
    for data in flood:
        server.receive(data, 1.0)
    assert server.state == "connected" and server.keys == keys
    assert len(server.pop_datagrams()) <= 64


# -- close, secrets ------------------------------------------------------------------------------


def test_close_sends_close_notify(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    Wire(client, server).handshake()
    client.close()
    (alert,) = client.pop_datagrams()
    assert classify(alert[0]) == "dtls" and alert[0] == 21  # an alert record
    assert client.state == "closed"
    server.receive(alert, 200.0)
    assert server.state == "closed" and server.failure is None
    server.close()
    assert server.pop_datagrams() == []  # nothing more once closed
    client.receive(alert, 201.0)
    assert client.ignored == 1


def test_close_before_and_after_failure(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    client.start(0.0)
    client.pop_datagrams()
    client.close()
    assert (
        client.state == "closed" and client.pop_datagrams() == [] and client.next_timeout() is None
    )
    server.start(0.0)
    server.handle_timeout(11.0)
    server.close()
    assert (server.state, server.failure) == ("failed", "timeout")


def test_secrets_never_in_reprs(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    client, server = endpoints(certs)
    Wire(client, server).handshake()
    keys = client.keys
    assert isinstance(keys, SrtpKeys)
    shown = " ".join([repr(keys), str(keys), f"{keys}", repr(client), repr(server), repr(certs[0])])
    for secret in (keys.local, keys.remote):
        assert secret.hex() not in shown.lower() and repr(secret) not in shown
    assert "AES_CM_128_HMAC_SHA1_80" in repr(keys)
    assert certs[0].fingerprint[1] in repr(certs[0]) and "PRIVATE" not in repr(certs[0])


# -- certificates ---------------------------------------------------------------------------------


def test_generated_certificate(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    cert = certs[0]
    c = cert.certificate
    assert c.subject.rfc4514_string() == "CN=wa-sip-gateway" == c.issuer.rfc4514_string()
    key = c.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    now = datetime.datetime.now(datetime.UTC)
    assert c.not_valid_before_utc < now - datetime.timedelta(days=29)
    assert now + datetime.timedelta(days=300) < c.not_valid_after_utc
    algo, value = cert.fingerprint
    assert algo == "sha-256"
    assert value == value.upper() and len(value.split(":")) == 32
    assert bytes.fromhex(value.replace(":", "")) == c.fingerprint(hashes.SHA256())
    assert cert.fingerprint != certs[1].fingerprint


def _openssl_fingerprint(pem: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(pem)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().split("=", 1)[1]


@pytest.mark.parametrize("kind", ["ec-p384", "rsa"])
def test_load_pem_and_fingerprint(tmp_path: Path, kind: str) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP384R1())
        if kind == "ec-p384"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    source = DtlsCertificate.generate()
    name = source.certificate.subject
    now = datetime.datetime.now(datetime.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    cert_file, key_file = tmp_path / "dtls.crt", tmp_path / "dtls.key"
    cert_file.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    loaded = DtlsCertificate.load(cert_file, key_file)
    expected = c.fingerprint(hashes.SHA256()).hex(":").upper()
    if host_binary("openssl"):
        expected_by_openssl = _openssl_fingerprint(cert_file)
        assert expected_by_openssl == expected
    assert loaded.fingerprint == ("sha-256", expected)
    # and it works in a handshake
    client, server = endpoints((loaded, DtlsCertificate.generate()))
    Wire(client, server).handshake()
    assert client.state == server.state == "connected"

    # a key that is not the certificate's
    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="does not belong"):
        DtlsCertificate.load(cert_file, other_key)
    with pytest.raises(ValueError):
        DtlsCertificate.load(key_file, key_file)


@pytest.mark.skipif(host_binary("openssl") is None, reason="no openssl binary")
def test_openssl_made_certificate(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=peer",
            "-days",
            "2",
            "-keyout",
            str(key_file),
            "-out",
            str(cert_file),
        ],
        check=True,
        capture_output=True,
    )
    loaded = DtlsCertificate.load(cert_file, key_file)
    assert loaded.fingerprint == ("sha-256", _openssl_fingerprint(cert_file))
