"""DtlsEndpoint against another DTLS stack: the `openssl` binary's s_server and s_client over
loopback UDP (the system OpenSSL build, its own datagram BIO and timers; not our pyOpenSSL
memory BIOs).  Proves the handshake, the use_srtp choice and, through -keymatexport, that our
SRTP keys are RFC 5764's layout of the exporter output the other side computes."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, certificate_digest
from gateway.media.srtp import SUITES
from tests.peers import host_binary

pytestmark = pytest.mark.skipif(host_binary("openssl") is None, reason="no openssl binary")

LABEL = "EXTRACTOR-dtls_srtp"
SUITE_OF = {
    "SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
    "SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
}


@pytest.fixture(scope="module")
def peer_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[str, str]]:
    """The other side's certificate (made by openssl itself) and its SDP fingerprint."""
    d = tmp_path_factory.mktemp("openssl-peer")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=openssl-peer", "-days", "2",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return cert, key, ("sha-256", certificate_digest(der))


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_line(proc: subprocess.Popen[bytes], text: bytes, seconds: float = 5.0) -> str:
    """Read openssl's output (unbuffered: select sees the pipe) until ``text``; returns it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + seconds
    while text not in seen:
        assert time.monotonic() < deadline, f"openssl never printed {text!r}: {seen!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"openssl exited: {seen!r}"
            seen += chunk
    return seen.decode(errors="replace")


def drive(
    endpoint: DtlsEndpoint, sock: socket.socket, peer: tuple[str, int] | None
) -> tuple[str, int] | None:
    """The endpoint on a real socket and the real monotonic clock, until the handshake ends."""
    endpoint.start(time.monotonic())
    while endpoint.state == "handshaking":
        if peer is not None:
            for data in endpoint.pop_datagrams():
                sock.sendto(data, peer)
        due = endpoint.next_timeout()
        assert due is not None
        sock.settimeout(max(0.001, due - time.monotonic()))
        try:
            data, peer = sock.recvfrom(65536)
        except TimeoutError:
            endpoint.handle_timeout(time.monotonic())
        else:
            endpoint.receive(data, time.monotonic())
    if peer is not None:
        for data in endpoint.pop_datagrams():
            sock.sendto(data, peer)
    return peer


def finish(endpoint: DtlsEndpoint, sock: socket.socket, peer: tuple[str, int] | None,
           proc: subprocess.Popen[bytes]) -> str:  # fmt: skip
    """close_notify to the peer, then openssl's whole output."""
    endpoint.close()
    if peer is not None:
        for data in endpoint.pop_datagrams():
            sock.sendto(data, peer)
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


def expected_keys(output: str, client: bool) -> tuple[str, bytes, bytes]:
    """(suite, our local, our remote) from openssl's own exporter output (RFC 5764 4.2)."""
    profile = re.search(r"SRTP Extension negotiated, profile=(\S+)", output)
    material = re.search(r"Keying material: ([0-9A-F]+)", output)
    assert profile and material, output
    suite = SUITE_OF[profile.group(1)]
    k, s = SUITES[suite].key_length, SUITES[suite].salt_length
    m = bytes.fromhex(material.group(1))
    client_side = m[:k] + m[2 * k : 2 * k + s]
    server_side = m[k : 2 * k] + m[2 * k + s : 2 * k + 2 * s]
    return (suite, client_side, server_side) if client else (suite, server_side, client_side)


@pytest.mark.parametrize(
    ("server_profiles", "suite"),
    [
        ("SRTP_AES128_CM_SHA1_80", "AES_CM_128_HMAC_SHA1_80"),
        ("SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80", "AEAD_AES_128_GCM"),
    ],
)
def test_our_client_against_openssl_s_server(
    peer_files: tuple[Path, Path, tuple[str, str]], udp: socket.socket, server_profiles: str,
    suite: str,
) -> None:  # fmt: skip
    cert, key, fingerprint = peer_files
    ours = DtlsCertificate.generate()
    port = free_udp_port()
    length = 2 * SUITES[suite].material_length
    proc = subprocess.Popen(
        ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
         "-cert", str(cert), "-key", str(key), "-verify", "1", "-use_srtp", server_profiles,
         "-keymatexport", LABEL, "-keymatexportlen", str(length)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        started = wait_for_line(proc, b"ACCEPT")
        endpoint = DtlsEndpoint(ours, client=True, remote_fingerprints=[fingerprint])
        peer = drive(endpoint, udp, ("127.0.0.1", port))
        output = started + finish(endpoint, udp, peer, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert endpoint.state == "closed" and endpoint.failure is None, output
    assert endpoint.keys is not None
    assert tuple(endpoint.keys) == expected_keys(output, client=True)
    # s_server saw our certificate, the one our SDP fingerprint names
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
    assert pem is not None
    seen = x509.load_pem_x509_certificate(pem.group(0).encode())
    assert certificate_digest(seen.public_bytes(serialization.Encoding.DER)) == ours.fingerprint[1]


def test_our_server_against_openssl_s_client(
    peer_files: tuple[Path, Path, tuple[str, str]], udp: socket.socket
) -> None:
    cert, key, fingerprint = peer_files
    endpoint = DtlsEndpoint(
        DtlsCertificate.generate(), client=False, remote_fingerprints=[fingerprint]
    )
    port = udp.getsockname()[1]
    proc = subprocess.Popen(
        ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
         "-cert", str(cert), "-key", str(key),
         "-use_srtp", "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
         "-keymatexport", LABEL, "-keymatexportlen", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        peer = drive(endpoint, udp, None)
        time.sleep(0.2)  # let s_client print its summary before the close_notify
        output = finish(endpoint, udp, peer, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert endpoint.failure is None, output
    assert endpoint.keys is not None
    # our order wins as server: AES_CM_128_HMAC_SHA1_80 although the client listed GCM first
    assert endpoint.keys.suite == "AES_CM_128_HMAC_SHA1_80"
    assert tuple(endpoint.keys) == expected_keys(output, client=False)


def test_openssl_server_with_the_wrong_certificate(
    peer_files: tuple[Path, Path, tuple[str, str]], udp: socket.socket
) -> None:
    cert, key, _ = peer_files
    port = free_udp_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
         "-cert", str(cert), "-key", str(key), "-use_srtp", "SRTP_AES128_CM_SHA1_80"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_line(proc, b"ACCEPT")
        other = DtlsCertificate.generate().fingerprint
        endpoint = DtlsEndpoint(
            DtlsCertificate.generate(), client=True, remote_fingerprints=[other]
        )
        drive(endpoint, udp, ("127.0.0.1", port))
    finally:
        proc.kill()
        proc.wait()
    assert (endpoint.state, endpoint.failure, endpoint.keys) == (
        "failed",
        "fingerprint mismatch",
        None,
    )
