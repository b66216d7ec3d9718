"""The daemon with Meta's Graph API emulated: a fetched (or rotated) SIP password is what
the next call from Meta authenticates with, and Meta's health_status shows up beside the
gateway's own on /health, /metrics and `wa-sip-gateway health`.

The PBX address is a dead port: a call whose digest is accepted ends 408/480 after
pbx.invite_timeout, one whose digest is refused ends 403 at once - enough to tell
which password the gateway holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.emulator import MetaCaller, default_tls
from tests.graph_emulator import TOKEN, GraphEmulator
from tests.integration.harness import GatewayProcess, free_port

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PNID = "106540352242922"
HARNESS_PASSWORD = "not-a-real-password-4711"  # what GatewayProcess writes


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    emulator = GraphEmulator()
    with emulator.running():
        yield emulator


def gateway(tmp_path: Path, emu: GraphEmulator, **meta_api: Any) -> GatewayProcess:
    workdir = tmp_path / "gw"
    workdir.mkdir()
    (workdir / "meta.token").write_text(TOKEN)
    overrides: dict[str, Any] = {
        "whatsapp": {
            "tls": {"ca_file": str(default_tls().ca_file)},
            "numbers": [
                {
                    "number": NUMBER,
                    "sip_password_file": "secrets/15550001111.password",
                    "phone_number_id": PNID,
                }
            ],
        },
        "pbx": {"address": f"127.0.0.1:{free_port()}", "invite_timeout": 1.0},
        "meta_api": {
            "access_token_file": "meta.token",
            "base_url": emu.base_url,
            "timeout": 2,
            "retries": 0,
            **meta_api,
        },
    }
    return GatewayProcess(workdir, overrides)


def call(gw: GatewayProcess, password: str) -> int | None:
    caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, password)
    return asyncio.run(caller.call(answer_timeout=5.0, talk_seconds=0.5)).status


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_fetch_password_and_rotation_reach_the_running_daemon(
    tmp_path: Path, emu: GraphEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = gateway(tmp_path, emu)
    gw.start()
    try:
        state = emu.configured(PNID, "sip.example.com", gw.ports["tls"])
        meta_password = state.password
        assert meta_password is not None and meta_password != HARNESS_PASSWORD
        # the gateway still holds another password: Meta's INVITE is refused
        assert call(gw, meta_password) == 403

        code, out = cli(capsys, "meta", "fetch-password", "-c", str(gw.config_path))
        assert code == 0, out
        assert meta_password not in out
        path = gw.workdir / "secrets" / "15550001111.password"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        # read on demand: the very next call authenticates, no reload
        assert call(gw, meta_password) in (408, 480)

        code, out = cli(capsys, "meta", "fetch-password", "-c", str(gw.config_path), "--rotate")
        assert code == 0, out
        rotated = state.password
        assert rotated is not None and rotated != meta_password
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)  # what an operator's script does; harmless
        deadline = time.monotonic() + 10
        while not any(line.get("event") == "config_reloaded" for line in gw.log_lines()):
            assert time.monotonic() < deadline, gw.log_text()[-3000:]
            time.sleep(0.05)
        assert call(gw, meta_password) == 403  # the old one no longer works
        assert call(gw, rotated) in (408, 480)
    finally:
        gw.stop()
    log = gw.log_text()
    for secret in (meta_password, rotated, TOKEN):
        assert secret not in log


def _health(gw: GatewayProcess) -> dict[str, Any]:
    _, text = gw.http_get("/health")
    return dict(json.loads(text))


def _number(health: dict[str, Any]) -> dict[str, Any]:
    return next(
        e for e in health["health_status"]["entities"] if e["entity_type"] == "PHONE_NUMBER"
    )


def _wait(predicate: Any, what: str, gw: GatewayProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{gw.log_text()[-3000:]}"
        time.sleep(0.1)


def test_meta_health_beside_ours(
    tmp_path: Path, emu: GraphEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emu.add_number(PNID, status="ENABLED")  # calling on, SIP off at Meta: 138024
    gw = gateway(tmp_path, emu, poll_health=True, health_interval=1)
    gw.start()
    try:
        _wait(
            lambda: "meta" in _number(_health(gw)) and _number(_health(gw))["meta"]["checked_at"],
            "first poll",
            gw,
        )
        number = _number(_health(gw))
        ours = number["can_receive_call_sip"]
        assert ours != "BLOCKED"
        meta = number["meta"]
        assert meta["id"] == PNID and meta["can_receive_call_sip"] == "BLOCKED"
        assert meta["entities"][0]["errors"][0]["error_code"] == 138024
        found = meta["disagreement"]
        assert (found["gateway"], found["meta"]) == (ours, "BLOCKED")
        assert "138024" in found["likely_cause"]
        assert gw.metric("wagw_meta_health_status", entity="phone_number", id=NUMBER) == 2
        assert any(line.get("event") == "meta_health_disagreement" for line in gw.log_lines())

        code, out = cli(capsys, "health", "-c", str(gw.config_path), "--color", "never")
        assert code == 0, out  # Meta's BLOCKED does not make the gateway's own verdict
        assert "    Meta says: BLOCKED" in out, out
        assert "DISAGREEMENT: the gateway says" in out
        assert "[138024] SIP is not enabled for this business phone number" in out

        # make Meta match the config; the next poll agrees
        emu.numbers[PNID].calling["sip"] = {
            "status": "ENABLED",
            "servers": [{"hostname": "sip.example.com", "port": gw.ports["tls"]}],
        }
        _wait(
            lambda: _number(_health(gw))["meta"]["can_receive_call_sip"] == "AVAILABLE",
            "Meta AVAILABLE",
            gw,
        )
        assert "disagreement" not in _number(_health(gw))["meta"]
        assert gw.metric("wagw_meta_health_status", entity="phone_number", id=NUMBER) == 0
        code, out = cli(capsys, "health", "-c", str(gw.config_path), "--color", "never")
        assert code == 0  # the exit status stays the gateway's own verdict
        assert "    Meta says: AVAILABLE" in out and "DISAGREEMENT" not in out
    finally:
        gw.stop()
    assert TOKEN not in gw.log_text()
