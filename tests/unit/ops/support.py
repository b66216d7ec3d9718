"""Helpers shared by the ops tests and the integration tests that check the
shipped dashboard and certificates: certificates made on the spot, and fakes of
what the metrics collector reads (the runtime's view, a call, its bridge)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.media.stats import BridgeStats, LegStats
from gateway.ops.report import Code, Finding, Report, Status
from gateway.transport.rtp import FrameTimes

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test Root CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=3650))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    names: list[str],
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = _name(names[0] if names else "no-name")
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=10))
        .not_valid_after(not_after or NOW + dt.timedelta(days=80))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    return builder.sign(signing_key, hashes.SHA256()), key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(
    tmp: Path, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_file, key_file = tmp / "gw.crt", tmp / "gw.key"
    cert_file.write_bytes(pem(*chain))
    key_file.write_bytes(key_pem(key))
    return cert_file, key_file


# --------------------------------------------------------------------------- metrics view


class FakeBridge:
    def __init__(self, **legs: dict[str, Any]) -> None:
        self.legs = legs
        self.dtmf = (0, 0)

    def stats(self) -> BridgeStats:
        return BridgeStats(
            whatsapp=LegStats(**self.legs.get("whatsapp", {})),
            pbx=LegStats(**self.legs.get("pbx", {})),
            dtmf_events_to_pbx=self.dtmf[0],
            dtmf_events_to_whatsapp=self.dtmf[1],
        )


class FakeCall:
    direction = "inbound"

    def __init__(self, key: str, answered: float | None = 101.5) -> None:
        self.key = key
        self.started = 100.0
        self.answered_at = answered
        self.bridge = FakeBridge(
            whatsapp={
                "rx_packets": 100,
                "tx_packets": 110,
                "lost": 2,
                "jitter_seconds": 0.004,
                "srtp_auth_failures": 1,
            },
            pbx={"rx_packets": 90, "tx_packets": 95, "lost": 0, "jitter_seconds": 0.001},
        )


class FakeView:
    def __init__(self) -> None:
        self.calls: list[Any] = [FakeCall("wacid.C")]
        self.times = {"whatsapp": FrameTimes(), "pbx": FrameTimes()}
        self.times["whatsapp"].counts[2] = 5
        self.times["whatsapp"].sum_ns = 75_000

    def active_calls(self) -> Sequence[Any]:
        return self.calls

    def health_report(self) -> Report:
        blocked = Finding(Code.SIP_PASSWORD_MISSING, Status.BLOCKED, "d", "s")
        return Report.build("sip.example.com", [], [("+15550001111", [blocked])])

    def cert_expiry(self) -> float | None:
        return 1_800_000_000.0

    def loop_lag(self) -> float:
        return 0.003

    def draining(self) -> bool:
        return True

    def capacity(self) -> tuple[int, int]:
        return 200, 1000

    def frame_times_view(self) -> Mapping[str, FrameTimes]:
        return self.times

    def extra_counters(self) -> Mapping[str, float]:
        return {"pbx_probe_misses": 1, "records_written": 3}
