"""Health checks: certificate, chain, key, passwords, PBX probe, capacity, drain, reload;
the report in Meta's Health Status API shape; the text rendering."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.b2bua.port import LegAddress, SipPort
from gateway.b2bua.probe import PbxProber
from gateway.cli.render import render_text
from gateway.config import NumberConfig
from gateway.config.certs import CertInfo, name_covers
from gateway.ops.certs import certificate_findings, chain_finding, load_certificate, verify_chain
from gateway.ops.health import (
    capacity_findings,
    draining_finding,
    listener_finding,
    number_findings,
    pbx_findings,
    reload_finding,
)
from gateway.ops.report import Code, Finding, Report, Status
from gateway.ops.tlsstate import TlsState
from gateway.sip.message import Response, make_response
from gateway.sip.transaction import (
    ResponseReceived,
    Target,
    TransactionManager,
    TransactionTimeout,
)
from gateway.transport.tls import server_context

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
HOST = "sip.example.com"


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


def info_of(cert: x509.Certificate) -> CertInfo:
    return CertInfo.from_chain([cert])


def codes(findings: list[Finding]) -> list[int]:
    return [int(f.code) for f in findings]


# --------------------------------------------------------------------------- load / key


def test_load_certificate_ok(tmp_path: Path) -> None:
    cert, key = make_leaf([HOST])
    info, problems = load_certificate(*write_pair(tmp_path, [cert], key))
    assert problems == [] and info is not None
    assert info.dns_names == (HOST,)
    assert info.not_after == cert.not_valid_after_utc
    assert len(info.fingerprint) == 64


def test_key_not_matching_certificate_is_1106(tmp_path: Path) -> None:
    cert, _ = make_leaf([HOST])
    _, other = make_leaf([HOST])
    info, problems = load_certificate(*write_pair(tmp_path, [cert], other))
    assert info is None
    assert codes(problems) == [Code.CERT_KEY_MISMATCH]
    assert problems[0].status is Status.BLOCKED
    assert "openssl pkey -pubout" in problems[0].solution
    # The key's bytes never appear in what is reported.
    assert "PRIVATE" not in problems[0].description


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda c, k: (c.unlink(), None), "No such file"),
        (lambda c, k: (c.write_text("not pem"), None), "not a PEM certificate"),
        (lambda c, k: (k.write_text("-----BEGIN PRIVATE KEY-----\nxx\n"), None), "private key"),
    ],
    ids=["cert-missing", "cert-garbage", "key-garbage"],
)
def test_unreadable_files_are_1107(
    tmp_path: Path, write: Callable[[Path, Path], object], why: str
) -> None:
    cert, key = make_leaf([HOST])
    cert_file, key_file = write_pair(tmp_path, [cert], key)
    write(cert_file, key_file)
    info, problems = load_certificate(cert_file, key_file)
    assert info is None and codes(problems) == [Code.CERT_UNREADABLE]
    assert why in problems[0].description


def test_tls_state_reload_swaps_certificate_in_the_live_context(tmp_path: Path) -> None:
    state = TlsState()
    first, key1 = make_leaf([HOST])
    prepared, _ = TlsState.prepare(*write_pair(tmp_path, [first], key1))
    assert prepared is not None
    state.commit(prepared)
    live = state.context
    second, key2 = make_leaf([HOST])
    (tmp_path / "new").mkdir()
    prepared2, _ = TlsState.prepare(*write_pair(tmp_path / "new", [second], key2))
    assert prepared2 is not None
    state.commit(prepared2)
    assert state.context is live  # the listener's context object is kept ...
    assert state.info is not None and state.info.fingerprint == prepared2.info.fingerprint
    # ... and a new handshake on it presents the new certificate.
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out)
    srv = live.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(6):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    peer = cli.getpeercert(binary_form=True)
    assert peer == second.public_bytes(serialization.Encoding.DER)


def test_tls_state_refuses_a_bad_pair_and_keeps_nothing_else(tmp_path: Path) -> None:
    cert, _ = make_leaf([HOST])
    _, other = make_leaf([HOST])
    prepared, problems = TlsState.prepare(*write_pair(tmp_path, [cert], other))
    assert prepared is None and codes(problems) == [Code.CERT_KEY_MISMATCH]
    state = TlsState()
    state.fail(problems)
    assert codes(state.findings(HOST, False, NOW)) == [Code.CERT_KEY_MISMATCH]


# --------------------------------------------------------------------------- validity and name


def test_valid_certificate_has_no_findings() -> None:
    cert, _ = make_leaf([HOST])
    assert certificate_findings(info_of(cert), HOST, NOW) == []


def test_expired_is_blocked_1101() -> None:
    cert, _ = make_leaf([HOST], not_before=NOW - dt.timedelta(days=90),
                        not_after=NOW - dt.timedelta(days=1))  # fmt: skip
    found = certificate_findings(info_of(cert), HOST, NOW)
    assert codes(found) == [Code.CERT_EXPIRED]
    assert found[0].status is Status.BLOCKED
    assert "expired on 2026-05-31" in found[0].description


def test_not_yet_valid_is_blocked_1102() -> None:
    cert, _ = make_leaf([HOST], not_before=NOW + dt.timedelta(days=1))
    found = certificate_findings(info_of(cert), HOST, NOW)
    assert codes(found) == [Code.CERT_NOT_YET_VALID]
    assert "timedatectl" in found[0].solution


@pytest.mark.parametrize(("days", "limited"), [(13.9, True), (14.1, False), (1, True)])
def test_expiring_within_14_days_is_limited_1103(days: float, limited: bool) -> None:
    cert, _ = make_leaf([HOST], not_after=NOW + dt.timedelta(days=days))
    found = certificate_findings(info_of(cert), HOST, NOW)
    assert codes(found) == ([Code.CERT_EXPIRING] if limited else [])
    if limited:
        assert found[0].status is Status.LIMITED


def test_name_not_covering_hostname_is_1104() -> None:
    cert, _ = make_leaf(["other.example.net", "localhost"])
    found = certificate_findings(info_of(cert), HOST, NOW)
    assert codes(found) == [Code.CERT_NAME_MISMATCH]
    assert "other.example.net, localhost" in found[0].description
    assert found[0].status is Status.BLOCKED


@pytest.mark.parametrize(
    ("patterns", "covered"),
    [
        (["*.example.com"], True),
        (["SIP.Example.com."], True),
        (["*.com"], False),
        (["*.a.example.com"], False),
        (["example.com"], False),
        ([], False),
    ],
)
def test_name_covers(patterns: list[str], covered: bool) -> None:
    assert name_covers(patterns, HOST) is covered


# --------------------------------------------------------------------------- chain


def _roots(*cas: x509.Certificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cas:
        ctx.load_verify_locations(cadata=pem(*cas).decode())
    return ctx


def _chain_ok(tmp: Path, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey,
              roots: ssl.SSLContext, now: dt.datetime = NOW) -> tuple[bool, str]:  # fmt: skip
    cert_file, key_file = write_pair(tmp, chain, key)
    return verify_chain(server_context(cert_file, key_file), roots, info_of(chain[0]), now)


def test_chain_to_a_trusted_root_verifies(tmp_path: Path) -> None:
    ca = make_ca()
    leaf, key = make_leaf([HOST], ca, not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    assert _chain_ok(tmp_path, [leaf], key, _roots(ca[0])) == (True, "")


def test_intermediate_must_be_sent(tmp_path: Path) -> None:
    ca = make_ca()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    inter_cert, inter_key = make_leaf(["Intermediate"], ca, ca=True, not_after=soon)
    leaf, key = make_leaf([HOST], (inter_cert, inter_key), not_after=soon)
    ok, why = _chain_ok(tmp_path, [leaf], key, _roots(ca[0]))
    assert not ok and "local issuer" in why
    assert _chain_ok(tmp_path, [leaf, inter_cert], key, _roots(ca[0])) == (True, "")


def test_self_signed_does_not_verify(tmp_path: Path) -> None:
    leaf, key = make_leaf([HOST])
    ok, why = _chain_ok(tmp_path, [leaf], key, _roots())
    assert not ok and "self-signed" in why


def test_expired_leaf_is_expiry_not_trust(tmp_path: Path) -> None:
    ca = make_ca()
    now = dt.datetime.now(dt.UTC)
    leaf, key = make_leaf([HOST], ca, not_before=now - dt.timedelta(days=60),
                          not_after=now - dt.timedelta(days=1))  # fmt: skip
    assert _chain_ok(tmp_path, [leaf], key, _roots(ca[0]), now) == (True, "")


def test_chain_finding_is_limited_in_development_only() -> None:
    assert chain_finding(True, "", development=False) is None
    prod = chain_finding(False, "self-signed certificate", development=False)
    dev = chain_finding(False, "self-signed certificate", development=True)
    assert prod is not None and dev is not None
    assert (prod.code, prod.status) == (Code.CERT_CHAIN_UNTRUSTED, Status.BLOCKED)
    assert (dev.code, dev.status) == (Code.CERT_CHAIN_UNTRUSTED, Status.LIMITED)
    assert "self-signed certificate" in prod.description


# --------------------------------------------------------------------------- passwords


def _number(**kw: object) -> NumberConfig:
    return NumberConfig.model_validate({"number": "+15550001111", **kw})


def test_password_present(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret-4711\n")
    assert number_findings(_number(sip_password_file=str(pw))) == []


@pytest.mark.parametrize("case", ["missing", "empty", "directory", "unreadable-utf8"])
def test_password_file_problems_are_1201(tmp_path: Path, case: str) -> None:
    pw = tmp_path / "pw"
    if case == "empty":
        pw.write_text("\n")
    elif case == "directory":
        pw.mkdir()
    elif case == "unreadable-utf8":
        pw.write_bytes(b"\xff\xfe secret")
    found = number_findings(_number(sip_password_file=str(pw)))
    assert codes(found) == [Code.SIP_PASSWORD_MISSING]
    assert found[0].status is Status.BLOCKED
    assert str(pw) in found[0].description and "secret" not in found[0].description
    assert "include_sip_credentials=true" in found[0].solution


def test_password_env_unset_is_1201(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAGW_TEST_PW", raising=False)
    found = number_findings(_number(sip_password_env="WAGW_TEST_PW"))
    assert codes(found) == [Code.SIP_PASSWORD_MISSING]
    assert "WAGW_TEST_PW is not set" in found[0].description
    monkeypatch.setenv("WAGW_TEST_PW", "x")
    assert number_findings(_number(sip_password_env="WAGW_TEST_PW")) == []


# --------------------------------------------------------------------------- capacity, drain...


@pytest.mark.parametrize(
    ("active", "maximum", "free", "expected"),
    [
        (0, 10, 100, []),
        (9, 10, 100, []),  # 90% exactly: not above
        (19, 20, 100, [Code.CAPACITY_HIGH]),
        (10, 10, 100, [Code.CAPACITY_FULL]),
        (11, 10, 100, [Code.CAPACITY_FULL]),
        (0, 10, 1, [Code.MEDIA_PORTS_EXHAUSTED]),
        (10, 10, 0, [Code.CAPACITY_FULL, Code.MEDIA_PORTS_EXHAUSTED]),
    ],
)
def test_capacity(active: int, maximum: int, free: int, expected: list[int]) -> None:
    found = capacity_findings(active, maximum, free, (20000, 29999))
    assert codes(found) == expected
    for finding in found:
        limited = finding.code == Code.CAPACITY_HIGH
        assert finding.status is (Status.LIMITED if limited else Status.BLOCKED)


def test_pbx_blocked_after_three_misses() -> None:
    assert pbx_findings(2, "udp 10.0.0.5:5060") == []
    found = pbx_findings(3, "udp 10.0.0.5:5060")
    assert codes(found) == [Code.PBX_NOT_ANSWERING]
    assert "udp 10.0.0.5:5060" in found[0].description


def test_listener_drain_reload_findings() -> None:
    assert listener_finding(True, "0.0.0.0:5061", None) is None
    down = listener_finding(False, "0.0.0.0:5061", "Address already in use")
    assert down is not None and down.code == Code.TLS_LISTENER_DOWN
    assert "Address already in use" in down.description and "sport = :5061" in down.solution
    assert draining_finding(False, 3, None) is None
    drain = draining_finding(True, 1, "2026-06-01 12:05:00 UTC")
    assert drain is not None and drain.code == Code.DRAINING and drain.status is Status.BLOCKED
    assert "1 active call continues until" in drain.description
    assert reload_finding(None) is None
    refused = reload_finding(["limits.max_calls: must be >= 1"])
    assert refused is not None and refused.status is Status.LIMITED
    assert "limits.max_calls: must be >= 1" in refused.description


# --------------------------------------------------------------------------- the report


def test_report_shape_matches_metas_health_status_api() -> None:
    cert, _ = make_leaf([HOST], not_after=NOW + dt.timedelta(days=5))
    shared = certificate_findings(info_of(cert), HOST, NOW)
    missing = Finding(Code.SIP_PASSWORD_MISSING, Status.BLOCKED, "No SIP password.", "Copy it.")
    report = Report.build(HOST, shared, [("+15550001111", []), ("+15550002222", [missing])])
    body = report.to_json()
    expiring = shared[0].info()
    assert re.match(r"^1103: The TLS certificate expires on .* Possible solution: Renew", expiring)
    assert body == {
        "health_status": {
            "can_receive_call_sip": "BLOCKED",
            "entities": [
                {
                    "entity_type": "PHONE_NUMBER",
                    "id": "+15550001111",
                    "can_receive_call_sip": "LIMITED",
                    "additional_info": [expiring],
                },
                {
                    "entity_type": "PHONE_NUMBER",
                    "id": "+15550002222",
                    "can_receive_call_sip": "BLOCKED",
                    "additional_info": [expiring],
                    "errors": [
                        {
                            "error_code": 1201,
                            "error_description": "No SIP password.",
                            "possible_solution": "Copy it.",
                        }
                    ],
                },
                {
                    "entity_type": "GATEWAY",
                    "id": HOST,
                    "can_receive_call_sip": "LIMITED",
                    "additional_info": [expiring],
                },
            ],
        }
    }
    assert report.http_status == 503
    json.dumps(body)  # serialisable as is
    ok = Report.build(HOST, [], [("+15550001111", [])])
    assert ok.to_json()["health_status"] == {
        "can_receive_call_sip": "AVAILABLE",
        "entities": [
            {"entity_type": "PHONE_NUMBER", "id": "+15550001111",
             "can_receive_call_sip": "AVAILABLE"},
            {"entity_type": "GATEWAY", "id": HOST, "can_receive_call_sip": "AVAILABLE"},
        ],
    }  # fmt: skip
    assert ok.http_status == 200


def test_render_text_for_a_person() -> None:
    down = listener_finding(False, "0.0.0.0:5061", "Address already in use")
    assert down is not None
    body = Report.build(HOST, [down], [("+15550001111", [])]).to_json()
    plain = render_text(body, source="http://127.0.0.1:9465/health", colour=False)
    assert plain.splitlines()[0] == "wa-sip-gateway health (http://127.0.0.1:9465/health): BLOCKED"
    assert "[1001] The TLS listener on 0.0.0.0:5061" in plain
    assert "fix: Check that no other process holds port 5061" in plain
    assert "\033[" not in plain
    coloured = render_text(body, source="x", colour=True)
    assert "\033[31mBLOCKED" in coloured


def test_every_code_is_documented_in_the_operations_guide() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    for code in Code:
        assert f"| {int(code)} |" in readme, code


# --------------------------------------------------------------------------- PBX probe


class _Timers:
    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timers:
        self.pending.append((self.now + delay, callback))
        return self

    def cancel(self) -> None:
        self.pending.clear()

    def run_next(self) -> None:
        self.pending.sort(key=lambda item: item[0])
        at, callback = self.pending.pop(0)
        self.now = at
        callback()


def _prober() -> tuple[PbxProber, TransactionManager, _Timers]:
    manager = TransactionManager()
    timers = _Timers()
    sip = SipPort(manager, timers, lambda: None, "wa-sip-gateway/test")
    prober = PbxProber(
        sip, timers, LegAddress("udp", "127.0.0.1", 5090), Target("udp", "127.0.0.1", 5080), 30.0
    )
    return prober, manager, timers


def _answer(manager: TransactionManager, status: int = 200) -> ResponseReceived:
    out = manager.pop_outgoing()
    assert out and out[-1].message.method == "OPTIONS"  # type: ignore[union-attr]
    req = out[-1].message
    resp: Response = make_response(req, status)  # type: ignore[arg-type]
    events = manager.receive(resp, Target("udp", "127.0.0.1", 5080), 100.0)
    assert isinstance(events[0], ResponseReceived)
    return events[0]


def test_probe_sends_options_after_one_interval_and_counts_misses() -> None:
    prober, manager, timers = _prober()
    prober.start()
    assert manager.pop_outgoing() == []  # nothing at start
    timers.run_next()
    out = manager.pop_outgoing()
    assert len(out) == 1
    req = out[0].message
    assert req.method == "OPTIONS"  # type: ignore[union-attr]
    assert req.uri == "sip:127.0.0.1:5080"  # type: ignore[union-attr]
    assert out[0].target == Target("udp", "127.0.0.1", 5080)
    for expected in (1, 2, 3):
        timers.run_next()  # the previous probe got no answer
        assert prober.misses == expected
    assert codes(pbx_findings(prober.misses, prober.where)) == [Code.PBX_NOT_ANSWERING]


def test_probe_any_answer_clears_misses_and_is_claimed() -> None:
    prober, manager, timers = _prober()
    prober.start()
    for _ in range(4):
        timers.run_next()
    assert prober.misses == 3
    event = _answer(manager, 404)  # any answer: the PBX is there
    assert prober.claims(event)
    assert prober.misses == 0
    timers.run_next()
    assert prober.misses == 0  # the answered probe is not a miss


def test_probe_ignores_other_transactions_and_timeouts_count_once() -> None:
    prober, manager, timers = _prober()
    prober.start()
    timers.run_next()
    manager.pop_outgoing()
    tx = next(iter(prober._outstanding))
    assert prober.claims(TransactionTimeout(tx, "F"))
    assert not prober.claims(TransactionTimeout(tx, "F"))  # forgotten once final
    timers.run_next()
    assert prober.misses == 1
