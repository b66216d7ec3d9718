"""Tests for gateway.config.certs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config.certs import certificate_problems, ensure_dev_certificate


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generates_certificate(tmp_path: Path) -> None:
    cert_file = tmp_path / "tls" / "sub" / "gw.crt"
    key_file = tmp_path / "keys" / "gw.key"
    assert ensure_dev_certificate(cert_file, key_file, "sip.example.com") is True
    cert = _load(cert_file)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sip.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_file.stat().st_mode) == 0o644
    assert certificate_problems(cert_file, "sip.example.com") == []
    assert list(tmp_path.rglob("*.tmp")) == []


def test_second_call_keeps_files(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    assert ensure_dev_certificate(cert_file, key_file, "a.example") is True
    before = cert_file.read_bytes(), key_file.read_bytes()
    assert ensure_dev_certificate(cert_file, key_file, "a.example") is False
    assert (cert_file.read_bytes(), key_file.read_bytes()) == before


def test_regenerates_when_one_file_missing(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    ensure_dev_certificate(cert_file, key_file, "a.example")
    old_key = key_file.read_bytes()
    cert_file.unlink()
    assert ensure_dev_certificate(cert_file, key_file, "a.example") is True
    assert key_file.read_bytes() != old_key
    # the pair matches: a TLS context accepts it
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)


async def test_certificate_works_for_tls(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    ensure_dev_certificate(cert_file, key_file, "sip.example.com")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    try:
        for name in ("sip.example.com", "localhost"):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=name
            )
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_certificate_problems(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    ensure_dev_certificate(cert_file, key_file, "sip.example.com")
    assert certificate_problems(cert_file, "SIP.Example.com") == []
    assert certificate_problems(cert_file, "other.example.com") == [
        "certificate does not cover other.example.com (subjectAltName DNS names)"
    ]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    [expired] = certificate_problems(cert_file, "sip.example.com", now=later)
    assert expired.startswith("certificate expired on ")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=360)
    [expiring] = certificate_problems(cert_file, "sip.example.com", now=soon)
    assert expiring.startswith("certificate expires on ")
    assert certificate_problems(tmp_path / "missing.crt", "a") == ["not a readable PEM certificate"]
