"""Tests for gateway.cli."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "gateway.example.yaml"

BROKEN = """\
whatsapp:
  hostname: sip.example.com
  tls: {cert_file: gw.crt, key_file: gw.key}
  numbers:
    - {number: "15550001111", sip_password_env: PW}
pbx: {transport: sctp}
"""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"wa-sip-gateway {__version__}\n"


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "a command is required" in capsys.readouterr().err


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_check_config_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("config OK: 1 number, TLS 127.0.0.1:5061 (sip.example.com)")
    assert out.out.count("\n") == 1
    assert all(line.startswith("warning: ") for line in out.err.splitlines())


def test_check_config_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"config {path}: 2 problems",
        "whatsapp.numbers.0.number: must be +E.164 (a '+' and 8-15 digits)",
        "pbx.transport: must be one of udp, tcp",
    ]


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert main(["check-config", "-c", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"config {path}: 1 problem",
        f"{path}: file not found",
    ]


def test_check_config_production_needs_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", "secret")
    path = tmp_path / "gw.yaml"
    path.write_text(BROKEN.replace('"15550001111"', '"+15550001111"').replace("sctp", "udp"))
    assert main(["check-config", "-c", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"config {path}: 2 problems",
        f"whatsapp.tls.cert_file: file not found: {tmp_path / 'gw.crt'}",
        f"whatsapp.tls.key_file: file not found: {tmp_path / 'gw.key'}",
    ]


def test_config_default_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.yaml"
    monkeypatch.setenv("WA_SIP_GATEWAY_CONFIG", str(path))
    assert main(["check-config"]) == 1
    assert capsys.readouterr().err.startswith(f"config {path}: 1 problem\n")
    monkeypatch.delenv("WA_SIP_GATEWAY_CONFIG")
    assert main(["check-config"]) == 1
    assert "config /etc/wa-sip-gateway/gateway.yaml: " in capsys.readouterr().err


def test_run_with_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["run", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"config {path}: 2 problems\n")
    assert "pbx.transport: must be one of udp, tcp" in err


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", "config/gateway.example.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config OK: 1 number")


def test_check_config_with_an_instance_overlay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-c given twice: the second file is merged over the first (one instance of several)."""
    overlay = tmp_path / "instance-2.yaml"
    overlay.write_text(
        "whatsapp:\n  listen: null\n  proxy_listen: 127.0.0.1:5072\n"
        "  trusted_proxies: [127.0.0.1/32]\nhttp: {listen: 127.0.0.1:9467}\n",
        encoding="utf-8",
    )
    assert main(["check-config", "-c", str(EXAMPLE), "-c", str(overlay)]) == 0
    out = capsys.readouterr().out
    assert "TLS off (sip.example.com)" in out and "http 127.0.0.1:9467" in out
    assert out.rstrip().endswith("behind proxy on 127.0.0.1:5072, development mode")
    overlay.write_text("http: {listen: 127.0.0.1:99999}\n", encoding="utf-8")
    assert main(["check-config", "-c", str(EXAMPLE), "-c", str(overlay)]) == 1
    assert "http.listen: " in capsys.readouterr().err
