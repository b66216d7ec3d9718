"""Config for WebRTC media toward Meta (issue 14): the per-number ``srtp`` mode,
``media.dtls_timeout`` and the DTLS certificate files (``media.dtls``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.config import check_files, load_config
from tests.unit.config.support import MINIMAL, keys_of, problems_of, write

NUMBER_LINE = '    - {number: "+15550001111", sip_password_env: WA_TEST_PW}\n'
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def with_number(extra: str) -> str:
    return MINIMAL.replace(NUMBER_LINE, NUMBER_LINE.replace("}", f", {extra}}}"))


def with_dtls(files: str) -> str:
    return "mode: development\n" + MINIMAL + f"media:\n  dtls: {{{files}}}\n"


def make_pair(directory: Path, key: PrivateKey, name: str = "dtls") -> tuple[Path, Path]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wa-sip-gateway")])
    now = dt.datetime.now(dt.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, algorithm)
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def dtls_errors(tmp_path: Path) -> list[str]:
    cfg = load_config(write(tmp_path, with_dtls("cert_file: dtls.crt, key_file: dtls.key")))
    assert cfg.media.dtls.cert_file == tmp_path / "dtls.crt"
    return [e for e in check_files(cfg).errors if e.startswith("media.dtls")]


# --------------------------------------------------------------------------- the model


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.whatsapp.numbers[0].srtp == "auto"
    assert cfg.media.dtls_timeout == 10.0
    assert (cfg.media.dtls.cert_file, cfg.media.dtls.key_file) == (None, None)
    assert not [e for e in check_files(cfg).errors if e.startswith("media.dtls")]


@pytest.mark.parametrize("mode", ["sdes", "dtls", "auto", "SDES", "Dtls"])
def test_srtp_modes_load(tmp_path: Path, mode: str) -> None:
    cfg = load_config(write(tmp_path, with_number(f"srtp: {mode}")))
    assert cfg.whatsapp.numbers[0].srtp == mode.lower()


@pytest.mark.parametrize("value", ["sdes-srtp", "DTLS-SRTP", "none", "1", "[sdes]", "null"])
def test_bad_srtp_mode_names_the_key(tmp_path: Path, value: str) -> None:
    problems = problems_of(write(tmp_path, with_number(f"srtp: {value}")))
    assert keys_of(problems) == ["whatsapp.numbers.0.srtp"]
    assert problems == ["whatsapp.numbers.0.srtp: must be one of sdes, dtls, auto"]


@pytest.mark.parametrize(
    ("mode", "seen", "offered"),
    [
        ("sdes", None, "sdes"),
        ("sdes", "dtls", "sdes"),
        ("dtls", None, "dtls"),
        ("dtls", "sdes", "dtls"),
        ("auto", None, "sdes"),
        ("auto", "dtls", "dtls"),
        ("auto", "sdes", "sdes"),
    ],
)
def test_outbound_srtp(tmp_path: Path, mode: str, seen: str | None, offered: str) -> None:
    number = load_config(write(tmp_path, with_number(f"srtp: {mode}"))).whatsapp.numbers[0]
    assert number.outbound_srtp(seen) == offered  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-1", "61", "soon"])
def test_bad_dtls_timeout(tmp_path: Path, value: str) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + f"media: {{dtls_timeout: {value}}}\n"))
    assert keys_of(problems) == ["media.dtls_timeout"]


def test_dtls_timeout_and_empty_dtls_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "media:\n  dtls_timeout: 2.5\n  dtls:\n"))
    assert cfg.media.dtls_timeout == 2.5 and cfg.media.dtls.cert_file is None


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ("cert_file: dtls.crt", "media.dtls.key_file: required when media.dtls.cert_file is set"),
        ("key_file: dtls.key", "media.dtls.cert_file: required when media.dtls.key_file is set"),
    ],
)
def test_dtls_files_both_or_neither(tmp_path: Path, files: str, problem: str) -> None:
    assert problems_of(write(tmp_path, with_dtls(files))) == [problem]


def test_unknown_dtls_key(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, with_dtls("cert: dtls.crt")))
    assert keys_of(problems) == ["media.dtls.cert"]


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)],
    ids=["ecdsa-p256", "rsa"],
)
def test_usable_pair(tmp_path: Path, key: PrivateKey) -> None:
    make_pair(tmp_path, key)
    assert dtls_errors(tmp_path) == []


def test_missing_files(tmp_path: Path) -> None:
    assert dtls_errors(tmp_path) == [
        f"media.dtls.cert_file: file not found: {tmp_path / 'dtls.crt'}",
        f"media.dtls.key_file: file not found: {tmp_path / 'dtls.key'}",
    ]
    (tmp_path / "dtls.crt").mkdir()
    assert dtls_errors(tmp_path)[0].startswith("media.dtls.cert_file: not a regular file")


def test_unparsable_files(tmp_path: Path) -> None:
    cert_file, key_file = make_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    good_cert, good_key = cert_file.read_bytes(), key_file.read_bytes()
    cert_file.write_text("garbage", encoding="utf-8")
    assert dtls_errors(tmp_path) == ["media.dtls.cert_file: not a readable PEM certificate"]
    key_file.write_bytes(good_cert)  # a certificate where the key belongs
    assert dtls_errors(tmp_path) == [
        "media.dtls.cert_file: not a readable PEM certificate",
        "media.dtls.key_file: not a readable PEM private key",
    ]
    cert_file.write_bytes(good_cert)
    key_file.write_bytes(good_key[:-40])
    assert dtls_errors(tmp_path) == ["media.dtls.key_file: not a readable PEM private key"]


def test_encrypted_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    _, key_file = make_pair(tmp_path, key)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert dtls_errors(tmp_path) == [
        "media.dtls.key_file: an encrypted private key (the gateway needs it without a passphrase)"
    ]


def test_key_of_another_pair(tmp_path: Path) -> None:
    make_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    _, other_key = make_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()), "other")
    (tmp_path / "dtls.key").write_bytes(other_key.read_bytes())
    assert dtls_errors(tmp_path) == [
        "media.dtls.key_file: does not belong to media.dtls.cert_file (another key pair)"
    ]


def test_key_type_dtls_peers_do_not_take(tmp_path: Path) -> None:
    make_pair(tmp_path, ed25519.Ed25519PrivateKey.generate())
    assert dtls_errors(tmp_path) == [
        "media.dtls.key_file: not an ECDSA or RSA key (ECDSA P-256 recommended for DTLS)"
    ]


def test_problems_never_echo_the_key(tmp_path: Path) -> None:
    _, key_file = make_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    secret = key_file.read_text(encoding="utf-8")
    key_file.write_text(secret[:-40], encoding="utf-8")
    body = secret.splitlines()[1]
    assert all(body not in e for e in dtls_errors(tmp_path))
