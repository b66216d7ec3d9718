"""Start the gateway as a real process from a config file, and drive real peers at it.

Every process started here is tracked by PID and stopped (TERM, then KILL) at
teardown. Everything listens on loopback with ports picked free at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.certs import ensure_dev_certificate
from tests.peers import host_binary

ROOT = Path(__file__).resolve().parents[2]
SIPP = host_binary("sipp")


def free_port(kind: int = socket.SOCK_STREAM, both: bool = True) -> int:
    """A port free for TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not both:
            return port
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass
class GatewayProcess:
    workdir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "gateway.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def write_config(self) -> dict[str, Any]:
        self.ports = {
            "tls": free_port(),
            "pbx_listen": free_port(),
            "pbx_address": free_port(),
            "http": free_port(),
        }
        tls_dir = self.workdir / "tls"
        ensure_dev_certificate(tls_dir / "gw.crt", tls_dir / "gw.key", "sip.example.com")
        pw = self.workdir / "secrets" / "15550001111.password"
        pw.parent.mkdir(parents=True, exist_ok=True)
        pw.write_text("not-a-real-password-4711\n")
        pw.chmod(0o600)
        cfg: dict[str, Any] = {
            "mode": "development",
            "whatsapp": {
                "listen": f"127.0.0.1:{self.ports['tls']}",
                "hostname": "sip.example.com",
                "advertise": f"127.0.0.1:{self.ports['tls']}",
                "tls": {"cert_file": "tls/gw.crt", "key_file": "tls/gw.key"},
                "allowed_networks": ["127.0.0.0/8"],
                "numbers": [
                    {"number": "+15550001111", "sip_password_file": "secrets/15550001111.password"}
                ],
            },
            "pbx": {
                "address": f"127.0.0.1:{self.ports['pbx_address']}",
                "transport": "udp",
                "listen": f"127.0.0.1:{self.ports['pbx_listen']}",
                "trusted_networks": ["127.0.0.0/8"],
            },
            # WAGW_MEDIA_ENGINE=native|python runs the suite on one media engine (issue
            # 12); unset: the config's default, auto (native where the extension is built).
            "media": {
                "address": "127.0.0.1",
                "port_range": [40000, 40999],
                "engine": os.environ.get("WAGW_MEDIA_ENGINE", "auto"),
            },
            "http": {"listen": f"127.0.0.1:{self.ports['http']}"},
            "logging": {"level": "debug", "format": "json"},
        }
        _merge(cfg, self.overrides)
        self.config_path.write_text(yaml.safe_dump(cfg))
        return cfg

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_text()}")
            if any(line.get("event") == "ready" for line in self.log_lines()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """TERM the process by PID, KILL if it lingers; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def http_get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.ports['http']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def media_engine(self) -> str | None:
        """The media engine the daemon runs (wagw_build_info), None if absent."""
        _, text = self.http_get("/metrics")
        for line in text.splitlines():
            if line.startswith("wagw_build_info{") and 'media_engine="' in line:
                return line.split('media_engine="', 1)[1].split('"', 1)[0]
        return None

    def check_media_engine(self) -> None:
        """With WAGW_MEDIA_ENGINE=native|python: the daemon runs that engine."""
        wanted = os.environ.get("WAGW_MEDIA_ENGINE", "auto")
        if wanted != "auto":
            assert self.media_engine() == wanted, (self.media_engine(), wanted)

    def metric(self, name: str, **labels: str) -> float | None:
        """Value of one sample from /metrics, None when absent."""
        _, text = self.http_get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == want:
                return float(value)
        return None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@contextlib.contextmanager
def running_gateway(workdir: Path, **overrides: Any) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(workdir, overrides)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def run_sipp(
    scenario: str,
    workdir: Path,
    remote: str,
    *,
    transport: str = "u1",
    calls: int = 1,
    rate: int = 10,
    timeout: float = 30.0,
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run SIPp (a real, independent SIP implementation) with an XML scenario."""
    assert SIPP, "sipp (apt package sip-tester) is required"
    scen = workdir / "scenario.xml"
    scen.write_text(scenario)
    port = free_port()
    cmd = [
        SIPP,
        remote,
        "-sf",
        str(scen),
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        transport,
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-trace_msg",
    ]
    cmd += extra or []
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def sipp_messages(workdir: Path) -> str:
    """The SIPp message trace (what was sent and received) for assertions."""
    return "\n".join(p.read_text(errors="replace") for p in workdir.glob("*_messages.log"))
