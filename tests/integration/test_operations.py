"""Operations against the daemon as a process: /health for each condition, metrics and the
call record of a real call, SIGHUP during a call, SIGTERM drain, the `health` command, and
the shipped dashboard, alert rules and systemd unit.

The gateway's certificate here is issued by a test CA that the daemon trusts through
SSL_CERT_FILE (its "system roots"), and the daemon runs in production mode, so the
baseline is a clean AVAILABLE and each test changes exactly one thing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.sip.message import Request, make_response, parse_message
from tests.emulator import CallResult, MetaCaller, measure_tone
from tests.integration.harness import ROOT, GatewayProcess, free_port
from tests.peers import host_binary
from tests.peers.asterisk import AsteriskPbx
from tests.unit.ops.support import key_pem, make_ca, make_leaf, pem

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"
HOST = "sip.example.com"
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


class Gateway(GatewayProcess):
    """The harness's process, with a certificate from the test CA and a config that can
    be written before start (to know the ports) and edited later (reload)."""

    def __init__(self, workdir: Path, overrides: dict[str, Any]) -> None:
        super().__init__(workdir, overrides)
        self._written: dict[str, Any] | None = None

    def write_config(self) -> dict[str, Any]:
        if self._written is None:
            self._written = super().write_config()
        return self._written

    def rewrite(self, change: Callable[[dict[str, Any]], None]) -> None:
        cfg = self.write_config()
        change(cfg)
        self.config_path.write_text(yaml.safe_dump(cfg))

    @property
    def pbx_listen_port(self) -> int:
        return int(str(self.write_config()["pbx"]["listen"]).rpartition(":")[2])

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.http_get("/health")
        return code, json.loads(body)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


def summary(body: dict[str, Any]) -> dict[str, Any]:
    """{"status": overall, id: (status, error codes, additional_info codes)}."""
    hs = body["health_status"]
    out: dict[str, Any] = {"status": hs["can_receive_call_sip"]}
    for e in hs["entities"]:
        errors = [x["error_code"] for x in e.get("errors", [])]
        info = [int(x.split(":", 1)[0]) for x in e.get("additional_info", [])]
        out[e["id"]] = (e["can_receive_call_sip"], errors, info)
    return out


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {last!r}")
        time.sleep(0.1)
        last = probe()
    return last


def log_events(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [line for line in gw.log_lines() if line.get("event") == name]


@pytest.fixture
def test_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A CA the daemons of this test trust as their system roots."""
    ca = make_ca()
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(pem(ca[0]))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return ca


def issue(
    workdir: Path,
    ca: Any,
    names: tuple[str, ...] = (HOST, "localhost"),
    *,
    days: tuple[float, float] = (-1, 90),
) -> x509.Certificate:
    """Write tls/gw.crt and tls/gw.key (where the harness's config points)."""
    now = dt.datetime.now(dt.UTC)
    cert, key = make_leaf(
        list(names),
        ca,
        not_before=now + dt.timedelta(days=days[0]),
        not_after=now + dt.timedelta(days=days[1]),
    )
    tls = workdir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "gw.crt").write_bytes(pem(cert))
    (tls / "gw.key").write_bytes(key_pem(key))
    (tls / "gw.key").chmod(0o600)
    return cert


def production(workdir: Path, ca: Any, **overrides: Any) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"mode": "production", "logging": {"level": "info", "format": "json"}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    gw = Gateway(workdir, cfg)
    if not (workdir / "tls" / "gw.crt").exists():
        issue(workdir, ca)
    return gw


@contextmanager
def running(gw: Gateway) -> Iterator[Gateway]:
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def available() -> dict[str, Any]:
    return {"status": "AVAILABLE", NUMBER: ("AVAILABLE", [], []), HOST: ("AVAILABLE", [], [])}


def served_certificate(port: int) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class OptionsResponder:
    """A stand-in PBX that answers SIP OPTIONS over UDP (and counts them)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.seen = 0
        self._stop = False
        self._thread = __import__("threading").Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            msg = parse_message(data)
            if isinstance(msg, Request) and msg.method == "OPTIONS":
                self.seen += 1
                self.sock.sendto(make_response(msg, 200, to_tag="pbx1").to_bytes(), addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def options(port: int, branch: str) -> tuple[bytes | None, int]:
    """Send OPTIONS to the gateway's PBX listener; (first response line..., its bytes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        me = s.getsockname()[1]
        s.sendto(
            (
                f"OPTIONS sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{branch}\r\n"
                f"From: <sip:lb@127.0.0.1:{me}>;tag=lb{branch}\r\n"
                f"To: <sip:{NUMBER}@127.0.0.1:{port}>\r\n"
                f"Call-ID: {branch}@lb\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            return s.recv(65535), me
        except TimeoutError:
            return None, me


# --------------------------------------------------------------------------- health conditions


def test_baseline_is_available_and_the_pbx_probe_blocks_and_recovers(
    tmp_path: Path, test_ca: Any
) -> None:
    """No PBX: 3 unanswered OPTIONS probes -> BLOCKED 1301 on every entity; the first
    answer -> AVAILABLE again. /readyz stays 200 (listeners up), /livez too."""
    gw = production(tmp_path / "gw", test_ca, pbx={"probe_interval": 0.3})
    with running(gw):
        code, body = gw.health()
        assert (code, summary(body)) == (200, available())
        code, body = wait_for(
            lambda: (r := gw.health())[0] == 503 and r, 5, "1301 after three misses"
        )
        blocked = ("BLOCKED", [1301], [])
        assert summary(body) == {"status": "BLOCKED", NUMBER: blocked, HOST: blocked}
        error = body["health_status"]["entities"][1]["errors"][0]
        assert error["error_description"].startswith(
            f"The PBX at udp 127.0.0.1:{gw.ports['pbx_address']} did not answer the last 3"
        )
        assert "identified by IP" in error["possible_solution"]
        assert gw.metric("wagw_health_status", entity="gateway", id=HOST) == 2.0
        assert gw.http_get("/readyz")[0] == 200 and gw.http_get("/livez")[0] == 200
        pbx = OptionsResponder(gw.ports["pbx_address"])
        try:
            wait_for(lambda: gw.health()[0] == 200, 3, "back on the first answer")
            assert summary(gw.health()[1]) == available()
            assert pbx.seen >= 1
            assert gw.metric("wagw_pbx_probe_misses") == 0.0
        finally:
            pbx.close()
        assert log_events(gw, "pbx_not_answering") and log_events(gw, "pbx_answering_again")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired", [1101]),
        ("not_yet_valid", [1102]),
        ("other_name", [1104]),
        ("key_mismatch", [1001, 1106]),
        ("self_signed", [1105]),
    ],
)
def test_certificate_conditions(
    tmp_path: Path, test_ca: Any, case: str, expected: list[int]
) -> None:
    work = tmp_path / "gw"
    if case == "expired":
        issue(work, test_ca, days=(-90, -1))
    elif case == "not_yet_valid":
        issue(work, test_ca, days=(2, 90))
    elif case == "other_name":
        issue(work, test_ca, names=("other.example.net",))
    elif case == "key_mismatch":
        issue(work, test_ca)
        _, other = make_leaf([HOST])
        (work / "tls" / "gw.key").write_bytes(key_pem(other))
    elif case == "self_signed":
        now = dt.datetime.now(dt.UTC)
        cert, key = make_leaf(
            [HOST, "localhost"],
            not_before=now - dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=90),
        )
        (work / "tls").mkdir(parents=True)
        (work / "tls" / "gw.crt").write_bytes(pem(cert))
        (work / "tls" / "gw.key").write_bytes(key_pem(key))
    gw = production(work, test_ca)
    with running(gw):
        code, body = gw.health()
        blocked = ("BLOCKED", expected, [])
        assert (code, summary(body)) == (
            503,
            {"status": "BLOCKED", NUMBER: blocked, HOST: blocked},
        ), body
        if case == "key_mismatch":
            ready, text = gw.http_get("/readyz")
            assert ready == 503 and "whatsapp TLS listener not accepting" in text
            with pytest.raises(OSError):
                served_certificate(gw.ports["tls"])
        else:
            assert gw.http_get("/readyz")[0] == 200
            expiry = gw.metric("wagw_tls_certificate_expiry_timestamp_seconds")
            crt = x509.load_pem_x509_certificate((work / "tls" / "gw.crt").read_bytes())
            assert expiry == crt.not_valid_after_utc.timestamp()


def test_certificate_expiring_soon_is_limited(tmp_path: Path, test_ca: Any) -> None:
    work = tmp_path / "gw"
    issue(work, test_ca, days=(-80, 10))
    with running(production(work, test_ca)) as gw:
        code, body = gw.health()
    limited = ("LIMITED", [], [1103])
    assert (code, summary(body)) == (200, {"status": "LIMITED", NUMBER: limited, HOST: limited})
    assert re.match(
        r"1103: The TLS certificate expires on .* \(in 10\.0 days\)\.",
        body["health_status"]["entities"][0]["additional_info"][0],
    )


def test_missing_password_blocks_that_number_and_the_health_command(
    tmp_path: Path, test_ca: Any
) -> None:
    """Two numbers, the second one's password file missing: only it is BLOCKED (1201); the
    `health` command prints it and exits 2; with the daemon stopped it reports 1002."""
    second = "+15550002222"
    numbers = [
        {"number": NUMBER, "sip_password_file": "secrets/15550001111.password"},
        {"number": second, "sip_password_file": "secrets/15550002222.password"},
    ]
    gw = production(tmp_path / "gw", test_ca, whatsapp={"numbers": numbers})
    with running(gw):
        code, body = gw.health()
        assert (code, summary(body)) == (
            503,
            {
                "status": "BLOCKED",
                NUMBER: ("AVAILABLE", [], []),
                second: ("BLOCKED", [1201], []),
                HOST: ("AVAILABLE", [], []),
            },
        )
        error = body["health_status"]["entities"][1]["errors"][0]
        path = tmp_path / "gw" / "secrets" / "15550002222.password"
        assert error == {
            "error_code": 1201,
            "error_description": f"No SIP password for {second}: the file {path} does not"
            " exist; Meta's calls to this number are refused with 403.",
            "possible_solution": f"Copy the SIP password Meta generated for {second} (GET"
            " /<PHONE_NUMBER_ID>/settings?include_sip_credentials=true) into"
            f" {path}, readable by the service user (mode 0600); it is read on every call,"
            " no reload needed.",
        }
        cli = [sys.executable, "-m", "gateway", "health", "-c", str(gw.config_path)]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert out.stdout.splitlines()[0].endswith("/health): BLOCKED")
        assert f"[1201] No SIP password for {second}" in out.stdout
        assert "\033[" not in out.stdout  # not a terminal: no colour
        as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=30)
        assert summary(json.loads(as_json.stdout)) == summary(body)
        # Meta calling that number is refused (after the digest round): counted by status.
        refused = asyncio.run(MetaCaller(("127.0.0.1", gw.ports["tls"]), second, PASSWORD).call())
        assert refused.status == 403
        assert gw.metric("wagw_call_rejections_total", direction="inbound", code="403") == 1.0
        assert gw.metric("wagw_calls_total", direction="inbound", result="rejected") == 1.0
        # The password file appears: healthy on the next request, no reload.
        path.write_text("another-secret\n")
        assert gw.health()[0] == 200
        ok = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "AVAILABLE" in ok.stdout.splitlines()[0]
    down = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert down.returncode == 2
    assert "checked from the files" in down.stdout and "[1002] The gateway does not answer" in (
        down.stdout
    )
    assert "another-secret" not in gw.log_text() + down.stdout + PASSWORD


def test_tls_port_taken_then_freed(tmp_path: Path, test_ca: Any) -> None:
    gw = production(tmp_path / "gw", test_ca)
    gw.write_config()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", gw.ports["tls"]))
    blocker.listen()
    with running(gw):
        code, body = gw.health()
        blocked = ("BLOCKED", [1001], [])
        assert (code, summary(body)) == (503, {"status": "BLOCKED", NUMBER: blocked, HOST: blocked})
        assert (
            "Address already in use"
            in body["health_status"]["entities"][1]["errors"][0]["error_description"]
        )
        assert gw.http_get("/readyz")[0] == 503
        blocker.close()
        wait_for(lambda: gw.health()[0] == 200, 8, "the listener retried")
        assert gw.http_get("/readyz")[0] == 200
        assert served_certificate(gw.ports["tls"])


# --------------------------------------------------------------------------- real calls


@contextmanager
def with_asterisk(
    tmp_path: Path,
    ca: Any,
    before_start: Callable[[], None] | None = None,
    **overrides: Any,
) -> Iterator[tuple[Gateway, AsteriskPbx]]:
    gw_port = free_port()
    with ExitStack() as stack:
        pbx = stack.enter_context(AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast"))
        pbx_cfg = {
            "listen": f"127.0.0.1:{gw_port}",
            "address": f"127.0.0.1:{pbx.ast_port}",
            "request_uri_user": "tone",
            **overrides.pop("pbx", {}),
        }
        gw = production(tmp_path / "gw", ca, pbx=pbx_cfg, **overrides)
        stack.callback(gw.stop)
        if before_start is not None:
            before_start()  # after Asterisk started: what it sets is the gateway's alone
        gw.start()
        yield gw, pbx


def caller(gw: GatewayProcess) -> MetaCaller:
    return MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)


async def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    return (await asyncio.to_thread(gw.metric, name, **labels)) or 0.0


def test_call_metrics_capacity_and_record(tmp_path: Path, test_ca: Any) -> None:
    """A real call (Meta emulator -> gateway -> Asterisk): /metrics shows it active with
    packet counters rising, /health is BLOCKED 1402 while the only slot is taken, and
    the call record afterwards has every field with plausible values."""
    records = tmp_path / "gw" / "calls.jsonl"
    with with_asterisk(
        tmp_path,
        test_ca,
        limits={"max_calls": 1},
        records={"path": str(records)},
        pbx={"probe_interval": 0.5},
    ) as (gw, _pbx):
        wait_for(
            lambda: 'wagw_sip_responses_total{code="' in gw.http_get("/metrics")[1],
            5,
            "Asterisk answered an OPTIONS probe",
        )
        assert summary(gw.health()[1]) == available()

        async def scenario() -> tuple[CallResult, dict[str, Any]]:
            task = asyncio.create_task(caller(gw).call(talk_seconds=4.0, dtmf="12"))
            seen: dict[str, Any] = {}
            await asyncio.sleep(1.8)
            seen["active"] = await metric(gw, "wagw_calls_active", direction="inbound")
            seen["rx1"] = await metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="rx")
            seen["wa1"] = await metric(gw, "wagw_rtp_packets_total", leg="whatsapp", direction="tx")
            seen["health"] = await asyncio.to_thread(gw.health)
            await asyncio.sleep(1.0)
            seen["rx2"] = await metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="rx")
            seen["wa2"] = await metric(gw, "wagw_rtp_packets_total", leg="whatsapp", direction="tx")
            return await task, seen

        result, seen = asyncio.run(scenario())
        assert result.ok, result.describe()
        assert seen["active"] == 1.0
        assert 0 < seen["rx1"] < seen["rx2"] and 0 < seen["wa1"] < seen["wa2"]
        code, body = seen["health"]
        full = ("BLOCKED", [1402], [])
        assert (code, summary(body)) == (503, {"status": "BLOCKED", NUMBER: full, HOST: full})
        line = wait_for(lambda: records.exists() and records.read_text(), 5, "the record")
        assert gw.metric("wagw_calls_active", direction="inbound") == 0.0
        assert gw.metric("wagw_calls_total", direction="inbound", result="answered") == 1.0
        assert gw.metric("wagw_calls_total", direction="inbound", result="rejected") is None
        assert gw.metric("wagw_call_setup_seconds_count") == 1.0
        assert gw.metric("wagw_call_duration_seconds_count") == 1.0
        assert (gw.metric("wagw_media_frame_seconds_count", leg="whatsapp") or 0) > 20
        assert gw.metric("wagw_dtmf_events_total", direction="to_pbx") == 2.0
        assert gw.metric("wagw_call_records_total", result="written") == 1.0
        assert summary(gw.health()[1]) == available()
    rec = json.loads(line.splitlines()[0])
    assert rec["type"] == "call" and rec["direction"] == "inbound"
    assert rec["wacid"] == result.wacid and rec["meta_call_id"] == result.call_id
    assert rec["pbx_call_id"] and rec["pbx_call_id"] != rec["meta_call_id"]
    assert rec["business_number"] == NUMBER and rec["whatsapp_user"] == "+12195550714"
    start, answer, end = (
        dt.datetime.fromisoformat(rec[k].replace("Z", "+00:00"))
        for k in ("start_time", "answer_time", "end_time")
    )
    assert start <= answer < end and abs((end - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert 0 < rec["setup_seconds"] < 3 and 3.5 < rec["duration_seconds"] < 6
    assert rec["end_cause"] == "meta_bye" and rec["ended_by"] == "whatsapp"
    assert rec["status"] == 200
    assert rec["codecs"]["whatsapp"].lower().startswith("opus/48000")
    assert rec["codecs"]["pbx"].upper().startswith(("PCMU", "PCMA"))
    assert rec["transcoded"] is True
    for leg in ("whatsapp", "pbx"):
        stats = rec["legs"][leg]
        assert stats["rx_packets"] > 100 and stats["tx_packets"] > 100, stats
        assert stats["lost"] <= 5 and stats["jitter_ms"] < 30 and 3.5 < stats["mos"] <= 4.5
    assert rec["dtmf"] == {"to_pbx": 2, "to_whatsapp": 0}
    assert 3.5 < rec["mos"] <= 4.5
    assert "inline:" not in line and PASSWORD not in line


class NotifySocket:
    """What systemd would read from $NOTIFY_SOCKET, read as it arrives (the kernel queues
    only ten datagrams on a unix socket)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self._stop = False
        self._thread = __import__("threading").Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> list[str]:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        return self.messages


def test_reload_during_a_call_keeps_audio_and_refuses_a_bad_config(
    tmp_path: Path, test_ca: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP mid-call with a new certificate: new TLS connections get it, the call's
    audio keeps flowing both ways. Then a config with an invalid key: refused, the log
    names the key, the running config stays (health 1601 LIMITED). systemd sees
    READY, WATCHDOG, RELOADING/READY."""
    notify = NotifySocket(tmp_path / "notify.sock")

    def as_systemd() -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
        monkeypatch.setenv("WATCHDOG_USEC", "600000")  # ping every 0.2 s

    with with_asterisk(tmp_path, test_ca, as_systemd) as (gw, _pbx):
        first = served_certificate(gw.ports["tls"])

        async def scenario() -> tuple[CallResult, dict[str, Any]]:
            task = asyncio.create_task(caller(gw).call(talk_seconds=5.0, tone_hz=523.0))
            seen: dict[str, Any] = {}
            await asyncio.sleep(1.5)
            seen["before"] = await metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="tx")
            seen["new"] = issue(tmp_path / "gw", test_ca)
            gw.signal(signal.SIGHUP)
            await asyncio.to_thread(
                wait_for, lambda: log_events(gw, "config_reloaded"), 5, "reloaded"
            )
            seen["served"] = await asyncio.to_thread(served_certificate, gw.ports["tls"])
            await asyncio.sleep(1.5)
            seen["after"] = await metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="tx")
            return await task, seen

        result, seen = asyncio.run(scenario())
        assert result.ok, result.describe()
        assert seen["served"] == der(seen["new"]) != first
        assert seen["after"] - seen["before"] > 50  # WhatsApp -> PBX audio after the reload
        assert result.max_media_gap is not None and result.max_media_gap < 0.2
        freq, level = measure_tone(result.received_pcm, result.sample_rate)
        assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)
        reloaded = log_events(gw, "config_reloaded")[0]
        assert reloaded["certificate_sha256"] == seen["new"].fingerprint(hashes.SHA256()).hex()

        gw.rewrite(lambda cfg: cfg.setdefault("limits", {}).update(max_calls=0))
        gw.signal(signal.SIGHUP)
        refused = wait_for(lambda: log_events(gw, "config_reload_refused"), 5, "refused")
        assert refused[0]["problems"] == ["limits.max_calls: must be >= 1"]
        assert refused[0]["level"] == "error"
        limited = ("LIMITED", [], [1601])
        assert summary(gw.health()[1]) == {"status": "LIMITED", NUMBER: limited, HOST: limited}
        assert gw.metric("wagw_calls_max") == 200.0  # the old config is in force
        assert gw.metric("wagw_config_reloads_total", result="refused") == 1.0
        assert caller_ok(gw)  # and it still takes calls
        gw.rewrite(lambda cfg: cfg["limits"].update(max_calls=7))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: len(log_events(gw, "config_reloaded")) == 2, 5, "second reload")
        assert gw.metric("wagw_calls_max") == 7.0
        assert summary(gw.health()[1]) == available()
    messages = notify.close()
    joined = "\n".join(messages)
    assert messages[0].startswith("READY=1\nSTATUS=0 active calls, health AVAILABLE")
    assert "WATCHDOG=1" in messages
    assert joined.count("RELOADING=1") == 3 and joined.count("READY=1") == 4
    assert "STATUS=1 active call, health AVAILABLE" in joined
    assert any(m.startswith("STOPPING=1") for m in messages)


def caller_ok(gw: GatewayProcess) -> bool:
    result = asyncio.run(caller(gw).call(talk_seconds=1.0))
    assert result.ok, result.describe()
    return True


def test_drain_refuses_new_calls_while_active_ones_finish(tmp_path: Path, test_ca: Any) -> None:
    """SIGTERM with two calls up: new INVITEs and OPTIONS get 503 + Retry-After, /readyz
    and /health fail (1501); the short call ends normally; the long one gets a BYE with a
    Reason at shutdown.drain_timeout; then the process exits 0."""
    with with_asterisk(tmp_path, test_ca, shutdown={"drain_timeout": 4}) as (gw, _pbx):

        async def scenario() -> tuple[CallResult, CallResult, CallResult, dict[str, Any]]:
            short = asyncio.create_task(caller(gw).call(talk_seconds=3.0))
            long = asyncio.create_task(
                caller(gw).call(talk_seconds=30.0, hangup="gateway", gateway_bye_timeout=15)
            )
            seen: dict[str, Any] = {}
            await asyncio.sleep(1.5)
            gw.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            seen["readyz"] = await asyncio.to_thread(gw.http_get, "/readyz")
            seen["health"] = await asyncio.to_thread(gw.health)
            seen["draining"] = await metric(gw, "wagw_draining")
            seen["options"] = await asyncio.to_thread(options, gw.pbx_listen_port, "drain1")
            refused = await caller(gw).call(talk_seconds=1.0)
            return await short, await long, refused, seen

        short, long, refused, seen = asyncio.run(scenario())
        assert gw.proc is not None
        assert gw.proc.wait(10) == 0
    assert short.ok, short.describe()
    assert short.bye_from == "emulator"
    assert long.status == 200 and long.bye_from == "gateway", long.describe()
    assert "drain timeout" in (long.bye_reason or ""), long.bye_headers
    assert refused.status == 503
    final = [m.text for m in refused.messages if m.text.startswith("SIP/2.0 503")]
    assert final and "\r\nRetry-After: " in final[-1]
    reply, _ = seen["options"]
    assert reply is not None and reply.startswith(b"SIP/2.0 503")
    assert b"\r\nRetry-After: 5\r\n" in reply
    code, text = seen["readyz"]
    assert code == 503 and json.loads(text) == {"ready": False, "reasons": ["draining"]}
    code, body = seen["health"]
    drain = ("BLOCKED", [1501], [])
    assert (code, summary(body)) == (503, {"status": "BLOCKED", NUMBER: drain, HOST: drain})
    assert (
        "2 active calls continue until"
        in body["health_status"]["entities"][1]["errors"][0]["error_description"]
    )
    assert seen["draining"] == 1.0
    events = [line.get("event") for line in gw.log_lines()]
    assert "draining" in events and "drain_timeout" in events and events[-1] == "stopped"


# --------------------------------------------------------------------------- shipped files

PROMTOOL = host_binary("promtool")
SYSTEMD_ANALYZE = host_binary("systemd-analyze")


def _tool(path: str | None, package: str) -> str:
    assert path, f"{package} is required (apt package {package}; make apt-deps installs it)"
    return path


def test_alert_rules_check_and_fire_as_documented() -> None:
    promtool = _tool(PROMTOOL, "prometheus")
    rules = ROOT / "config" / "prometheus"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = yaml.safe_load((rules / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {a["alert"] for a in alerts}
    assert {
        "WaGatewayHealthBlocked",
        "WaGatewayCertificateExpiresSoon",
        "WaGatewayAsrDrop",
        "WaGatewayPacketLoss",
        "WaGatewayEventLoopLag",
    } <= names
    tested = set(re.findall(r"alertname: (\w+)", (rules / "alerts_test.yml").read_text()))
    assert names <= tested | {"WaGatewayHealthLimited"}


DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time", "__inputs"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "editable": {"type": "boolean"},
        "refresh": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {"type": "object", "required": ["from", "to"]},
        "__inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "type", "pluginId"],
                "properties": {
                    "type": {"const": "datasource"},
                    "pluginId": {"const": "prometheus"},
                },
            },
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": {"$ref": "#/$defs/variable"}}},
        },
        "panels": {"type": "array", "minItems": 12, "items": {"$ref": "#/$defs/panel"}},
    },
    "$defs": {
        "datasource": {
            "type": "object",
            "required": ["type", "uid"],
            "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${DS_PROMETHEUS}"}},
        },
        "variable": {
            "type": "object",
            "required": ["name", "type"],
            "properties": {"name": {"type": "string"}, "type": {"enum": ["query", "custom"]}},
        },
        "gridPos": {
            "type": "object",
            "required": ["x", "y", "w", "h"],
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "h": {"type": "integer", "minimum": 1},
            },
        },
        "panel": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"$ref": "#/$defs/gridPos"},
                "type": {"enum": ["row", "timeseries", "stat", "table", "gauge", "bargauge"]},
                "datasource": {"$ref": "#/$defs/datasource"},
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["refId", "expr"],
                        "properties": {
                            "refId": {"type": "string", "pattern": "^[A-Z]$"},
                            "expr": {"type": "string", "pattern": "wagw_"},
                            "datasource": {"$ref": "#/$defs/datasource"},
                        },
                    },
                },
            },
            "if": {"properties": {"type": {"not": {"const": "row"}}}},
            "then": {"required": ["datasource", "targets"]},
        },
    },
}


def test_dashboard_is_a_valid_importable_dashboard_over_our_metrics(tmp_path: Path) -> None:
    path = ROOT / "config" / "grafana" / "wa-sip-gateway.json"
    dash = json.loads(path.read_text())
    jsonschema.validate(dash, DASHBOARD_SCHEMA)
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        area = {(x, y) for x in xs for y in ys}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
    titles = " | ".join(p["title"] for p in panels).lower()
    for needed in (
        "active calls",
        "asr",
        "acd",
        "setup time",
        "sip responses by class",
        "meta failures by reason",
        "loss",
        "jitter",
        "mos",
        "per-packet processing",
        "health per number",
        "certificate days left",
        "webrtc calls by outcome",
        "ice and dtls setup time",
    ):
        assert needed in titles, needed
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    # Every metric a panel uses is one the gateway exports (names from a unit scrape).
    exported = set(re.findall(r"^# TYPE (\w+) ", _scrape_names(), re.M))
    series = {n for n in exported} | {f"{n}_total" for n in exported}
    series |= {f"{n}_{s}" for n in exported for s in ("bucket", "sum", "count", "info")}
    for expr in exprs:
        for name in re.findall(r"\b(wagw_\w+)", expr):
            assert name in series, (name, expr)
    # PromQL syntax: Grafana's variables filled in, checked by promtool as recording rules.
    promtool = _tool(PROMTOOL, "prometheus")
    filled = [e.replace("$__rate_interval", "5m").replace('=~"$instance"', '=~".*"') for e in exprs]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(filled)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool, "check", "rules", "dashboard.rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _scrape_names() -> str:
    from gateway.ops.admission import Admission, OverloadCollector
    from gateway.ops.metrics import Metrics
    from gateway.sip.digest_throttle import DigestThrottle
    from gateway.sip.overload import OverloadControl
    from gateway.sip.transaction import TransactionManager
    from gateway.transport.sip import SipStats
    from tests.unit.ops.support import FakeView

    metrics = Metrics()
    manager = TransactionManager()
    metrics.bind(SipStats(), manager, FakeView())
    # Overload control's families, as the daemon registers them beside the rest.
    admission = Admission(OverloadControl(None, None), manager, None)
    metrics.registry.register(OverloadCollector(admission, DigestThrottle(), lambda: 0.0))
    return metrics.render().decode()


def test_systemd_unit_verifies_and_install_stages_the_layout(tmp_path: Path) -> None:
    analyze = _tool(SYSTEMD_ANALYZE, "systemd")
    unit = (ROOT / "systemd" / "wa-sip-gateway.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=wa-sip-gateway",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE=",
        "StateDirectory=wa-sip-gateway",
        "run -c /etc/wa-sip-gateway/gateway.yaml",
    ):
        assert line in unit, line
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    entry = Path(sys.executable).with_name("wa-sip-gateway")
    local = tmp_path / "wa-sip-gateway.service"
    local.write_text(unit.replace("/opt/wa-sip-gateway/venv/bin/wa-sip-gateway", str(entry)))
    verify = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    stop = float(re.search(r"TimeoutStopSec=(\d+)s", unit).group(1))  # type: ignore[union-attr]
    from gateway.config import load_config

    template = load_config(ROOT / "systemd" / "gateway.yaml")
    assert template.mode == "production"
    assert stop > template.shutdown.drain_timeout
    assert str(template.records.path).startswith("/var/lib/wa-sip-gateway/")
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest), NO_VENV="1")
    run = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert (dest / "etc/systemd/system/wa-sip-gateway.service").read_text() == unit
    cfg = dest / "etc/wa-sip-gateway/gateway.yaml"
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert (dest / "etc/wa-sip-gateway/secrets").stat().st_mode & 0o777 == 0o750
    assert (dest / "var/lib/wa-sip-gateway").is_dir()
    cfg.write_text("# edited\n" + cfg.read_text())
    again = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and cfg.read_text().startswith("# edited")  # kept


def test_systemd_template_unit_verifies_and_install_stages_instances(tmp_path: Path) -> None:
    """wa-sip-gateway@.service (one instance per core behind Kamailio): the single
    unit's settings except what names the instance, verified as wa-sip-gateway@1;
    systemd/instance-1.yaml over gateway.yaml is a valid proxy-mode config that
    matches Kamailio's dispatcher.list; INSTANCES=4 stages four such overlays."""
    analyze = _tool(SYSTEMD_ANALYZE, "systemd")
    single = (ROOT / "systemd" / "wa-sip-gateway.service").read_text()
    unit = (ROOT / "systemd" / "wa-sip-gateway@.service").read_text()
    per_instance = ("Description=", "ExecStart=", "StateDirectory=", "WorkingDirectory=")

    def settings(text: str) -> list[str]:
        return [
            line for line in text.splitlines() if line and not line.startswith(("#", *per_instance))
        ]

    assert settings(unit) == settings(single)
    for line in (
        "ExecStart=/opt/wa-sip-gateway/venv/bin/wa-sip-gateway run"
        " -c /etc/wa-sip-gateway/gateway.yaml -c /etc/wa-sip-gateway/instance-%i.yaml",
        "StateDirectory=wa-sip-gateway/%i",
        "WorkingDirectory=/var/lib/wa-sip-gateway/%i",
        "systemctl stop wa-sip-gateway@2",
    ):
        assert line in unit, line
    entry = Path(sys.executable).with_name("wa-sip-gateway")
    local = tmp_path / "units" / "wa-sip-gateway@1.service"
    local.parent.mkdir()
    local.write_text(unit.replace("/opt/wa-sip-gateway/venv/bin/wa-sip-gateway", str(entry)))
    verify = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    from gateway.config import load_config

    base = ROOT / "systemd" / "gateway.yaml"
    dispatcher = [
        line.split()[1]
        for line in (ROOT / "config" / "kamailio" / "dispatcher.list").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest), NO_VENV="1", INSTANCES="4")
    run = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    etc = dest / "etc/wa-sip-gateway"
    assert (etc / "instance-1.yaml").read_text() == (ROOT / "systemd/instance-1.yaml").read_text()
    assert (dest / "etc/systemd/system/wa-sip-gateway@.service").read_text() == unit
    assert (dest / "etc/systemd/system/wa-sip-gateway.service").read_text() == single
    assert (dest / "opt/wa-sip-gateway/config/kamailio/kamailio.cfg").is_file()
    secret = etc / "secrets" / "nonce.secret"
    assert secret.stat().st_mode & 0o777 == 0o640 and len(secret.read_bytes().strip()) >= 16
    stop = float(re.search(r"TimeoutStopSec=(\d+)s", unit).group(1))  # type: ignore[union-attr]
    seen: dict[str, set[object]] = {"proxy": set(), "pbx": set(), "http": set(), "media": set()}
    for n in range(1, 5):
        overlay = etc / f"instance-{n}.yaml"
        assert overlay.stat().st_mode & 0o777 == 0o640
        cfg = load_config(base, overlay)
        wa = cfg.whatsapp
        assert wa.listen is None and wa.proxy_listen is not None
        assert wa.outbound_proxy is not None and str(wa.outbound_proxy.port) == "5060"
        assert [str(net) for net in wa.trusted_proxies] == ["127.0.0.1/32"]
        assert cfg.cluster.nonce_secret_file == Path("/etc/wa-sip-gateway/secrets/nonce.secret")
        assert str(cfg.records.path).startswith(f"/var/lib/wa-sip-gateway/{n}/")
        assert dispatcher[n - 1] == f"sip:{wa.proxy_listen.host}:{wa.proxy_listen.port}"
        low, high = cfg.media.port_range
        assert 20000 <= low < high <= 29999 and low % 2 == 0
        seen["proxy"].add(wa.proxy_listen)
        seen["pbx"].add(cfg.pbx.listen)
        seen["http"].add(cfg.http.listen)
        seen["media"].update(range(low, high + 1, 500))
        assert stop > cfg.shutdown.drain_timeout
    assert [len(v) for v in seen.values()] == [4, 4, 4, 20]  # nothing shared
    (etc / "instance-2.yaml").write_text("# edited\n")
    again = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and (etc / "instance-2.yaml").read_text() == "# edited\n"
    bad = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=dict(env, INSTANCES="17"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "INSTANCES" in bad.stderr
