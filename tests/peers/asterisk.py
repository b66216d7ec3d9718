"""A real Asterisk 22 for the integration tests, run from the Debian sid chroot
that scripts/setup-asterisk-chroot.sh builds (`make asterisk-chroot`).

    with AsteriskPbx(gw_port=5090) as pbx:        # ports not given are picked free
        pbx.ast_port                              # Asterisk's SIP/UDP port
        pbx.rx("pjsip show endpoints")            # any CLI command -> its output
        pbx.originate("PJSIP/wagw", app="Echo")   # or exten="senddtmf"
        pbx.wait_dtmf(timeout=15).digits          # what the "dtmf" extension read
        pbx.wait_recording(timeout=20)            # host path of a "record" WAV

config/asterisk/*.conf is copied into ROOT/opt/wagw/<run>/etc with the
@@PLACEHOLDERS@@ filled in; every run has its own control socket, logs and
spool there. With wa_emulation=True the test-only snippet
tests/peers/pjsip-wa-emulation.conf is appended to pjsip.conf: a TLS
transport and an endpoint "wa-test" with Opus + SDES-SRTP, so that Asterisk
can face a WhatsApp-like peer directly.

When the chroot is missing the test fails, or is skipped when the
environment has WAGW_ALLOW_SKIP_ASTERISK=1 (or WAGW_ALLOW_SKIP_PEERS=1).
WAGW_ASTERISK_ROOT overrides the chroot location (default
.cache/asterisk-root in the project).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import (
    LOOPBACK,
    PROJECT_DIR,
    PeerProcess,
    free_port,
    release_ports,
    self_signed_cert,
    skip_allowed,
    start_process,
    stop_process,
    wait_until,
)

CONFIG_DIR = PROJECT_DIR / "config" / "asterisk"
WA_EMULATION_SNIPPET = Path(__file__).with_name("pjsip-wa-emulation.conf")
CONF_FILES = (
    "asterisk.conf",
    "modules.conf",
    "logger.conf",
    "rtp.conf",
    "pjsip.conf",
    "extensions.conf",
)
RUNS_DIR = "/opt/wagw"  # inside the chroot


class AsteriskError(RuntimeError):
    pass


@dataclass(frozen=True)
class DtmfResult:
    """One run of the `dtmf` test extension (its WAGW-DTMF log line)."""

    uniqueid: str
    wacid: str
    digits: str
    status: str


def asterisk_root() -> Path:
    return Path(os.environ.get("WAGW_ASTERISK_ROOT", PROJECT_DIR / ".cache" / "asterisk-root"))


def require_asterisk_root(root: Path | None = None) -> Path:
    """The chroot's path; fails the test (or skips it when
    WAGW_ALLOW_SKIP_ASTERISK=1) when it has not been built."""
    root = Path(root) if root is not None else asterisk_root()
    if not (root / "usr" / "sbin" / "asterisk").exists():
        msg = (
            f"Asterisk chroot not found at {root}: run `make asterisk-chroot` "
            "(scripts/setup-asterisk-chroot.sh, needs root and a Debian mirror)"
        )
        if skip_allowed():
            pytest.skip(msg)
        pytest.fail(msg)
    if os.geteuid() != 0:
        msg = "running Asterisk from its chroot needs root (chroot(2))"
        if skip_allowed():
            pytest.skip(msg)
        pytest.fail(msg)
    return root


class AsteriskPbx(PeerProcess):
    """An Asterisk process (by PID) with a private copy of config/asterisk."""

    def __init__(
        self,
        *,
        root: Path | None = None,
        ast_port: int | None = None,
        gw_port: int | None = None,
        rtp_ports: tuple[int, int] | None = None,
        wa_emulation: bool = False,
        ast_tls_port: int | None = None,
        test_routing: bool = True,
        extra_pjsip: str = "",
        extra_extensions: str = "",
        log_dir: Path | None = None,
        keep_run_dir: bool | None = None,
        config_dir: Path = CONFIG_DIR,
        start_timeout: float = 30.0,
    ) -> None:
        self.root = require_asterisk_root(root)
        self.ast_port = ast_port or free_port()
        self.gw_port = gw_port or free_port()
        self._rtp_block: tuple[int, int] | None = None
        if rtp_ports is None:
            start = free_port(202, tcp=False, low=30000, high=32700)
            self._rtp_block = (start, 202)
            start += start % 2  # RTP on even ports, RTCP on the odd one above
            rtp_ports = (start, start + 199)
        self.rtp_ports = rtp_ports
        self.wa_emulation = wa_emulation
        self.ast_tls_port = (ast_tls_port or free_port()) if wa_emulation else None
        self.test_routing = test_routing
        self.extra_pjsip = extra_pjsip
        self.extra_extensions = extra_extensions
        self.config_dir = Path(config_dir)
        self.start_timeout = start_timeout
        if keep_run_dir is None:
            keep_run_dir = os.environ.get("WAGW_KEEP_PEER_FILES") == "1"
        self.keep_run_dir = keep_run_dir
        self.run_id = f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.run_dir = f"{RUNS_DIR}/{self.run_id}"  # as Asterisk sees it
        self.host_run_dir = self.root / self.run_dir.lstrip("/")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.conf = f"{self.run_dir}/etc/asterisk.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ paths --
    def host_path(self, chroot_path: str) -> Path:
        """Where a path Asterisk reports (inside the chroot) is on the host."""
        return self.root / chroot_path.lstrip("/")

    @property
    def console_log(self) -> Path:
        return self.host_run_dir / "console.log"

    @property
    def messages_log(self) -> Path:
        return self.host_run_dir / "var" / "log" / "messages"

    @property
    def keys_dir(self) -> Path:
        return self.host_run_dir / "etc" / "keys"

    @property
    def cert_file(self) -> Path:
        """The self-signed certificate of the TLS transport (wa_emulation)."""
        return self.keys_dir / "cert.pem"

    @property
    def uri_host(self) -> str:
        return f"{LOOPBACK}:{self.ast_port}"

    # ----------------------------------------------------------- config --
    def _substitutions(self) -> dict[str, str]:
        subs = {
            "RUN_DIR": self.run_dir,
            "AST_PORT": str(self.ast_port),
            "GW_PORT": str(self.gw_port),
            "RTP_START": str(self.rtp_ports[0]),
            "RTP_END": str(self.rtp_ports[1]),
            "KEYS_DIR": f"{self.run_dir}/etc/keys",
        }
        if self.ast_tls_port is not None:
            subs["AST_TLS_PORT"] = str(self.ast_tls_port)
        return subs

    def _fill(self, text: str, name: str) -> str:
        subs = self._substitutions()
        text = re.sub(r"@@([A-Z_]+)@@", lambda m: subs.get(m.group(1), m.group(0)), text)
        left = re.findall(r"@@[A-Z_]+@@", text)
        if left:
            raise AsteriskError(f"{name}: no value for {sorted(set(left))}")
        return text

    def _remove_stale_runs(self) -> None:
        """Remove the run dirs of test processes that are gone (killed before
        their AsteriskPbx could clean up)."""
        for d in self.host_path(RUNS_DIR).glob("run-*-*"):
            try:
                owner = int(d.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(d, ignore_errors=True)

    def write_config(self) -> None:
        self._remove_stale_runs()
        etc = self.host_run_dir / "etc"
        for sub in (
            "etc/keys",
            "var/cache",
            "var/db",
            "var/lib/keys",
            "var/spool/wagw-rec",
            "var/run",
            "var/log",
        ):
            (self.host_run_dir / sub).mkdir(parents=True, exist_ok=True)
        for name in CONF_FILES:
            text = (self.config_dir / name).read_text()
            if name == "pjsip.conf":
                if self.wa_emulation:
                    text += "\n" + WA_EMULATION_SNIPPET.read_text()
                text += "\n" + self.extra_pjsip
            if name == "extensions.conf":
                text += "\n" + self.extra_extensions
            (etc / name).write_text(self._fill(text, name))
        if self.wa_emulation:
            self_signed_cert(self.keys_dir)

    # --------------------------------------------------------- lifecycle --
    def start(self) -> AsteriskPbx:
        self.write_config()
        self.proc = start_process(
            ["chroot", str(self.root), "asterisk", "-f", "-C", self.conf], self.console_log
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise AsteriskError(
                    f"asterisk exited with {self.proc.returncode} while starting:\n"
                    + self._tail(self.console_log)
                )
            left = max(1.0, deadline - time.monotonic())
            res = self._rx(["core", "waitfullybooted"], timeout=left)
            if res.returncode == 0 and "fully booted" in res.stdout:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise AsteriskError(
                    f"asterisk not fully booted after {self.start_timeout} s:\n"
                    + self._tail(self.console_log)
                )
            time.sleep(0.1)
        if self.test_routing:
            self.rx("dialplan set global WAGW_TEST_ROUTING yes")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self._rtp_block is not None:
            release_ports(*self._rtp_block)
            self._rtp_block = None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._rx(["core", "stop", "now"], timeout=5)
            stop_process(proc, grace=5)
        if self.log_dir is not None and self.host_run_dir.exists():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for src in (self.console_log, self.messages_log, self.messages_log.with_name("full")):
                if src.exists():
                    shutil.copy2(src, self.log_dir / f"asterisk-{src.name}")
        if not self.keep_run_dir:
            shutil.rmtree(self.host_run_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # --------------------------------------------------------------- CLI --
    def _rx(self, words: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["chroot", str(self.root), "asterisk", "-C", self.conf, "-rx", " ".join(words)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def rx(self, command: str, *, timeout: float = 15.0) -> str:
        """Run one CLI command in the running Asterisk; its output."""
        if self.proc is None or self.proc.poll() is not None:
            raise AsteriskError(f"asterisk is not running (rx {command!r})")
        res = self._rx([command], timeout=timeout)
        if res.returncode != 0:
            raise AsteriskError(f"rx {command!r} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def originate(
        self,
        dest: str = "PJSIP/wagw",
        app: str | None = None,
        data: str = "",
        *,
        exten: str | None = None,
        context: str = "wagw-tests",
    ) -> str:
        """Place a call from Asterisk: to `dest` (a dial string such as
        "PJSIP/wagw" or "PJSIP/+15551234567@wagw"), connected once answered to
        either the application `app` with `data` or `exten`@`context`. Returns
        at once (the CLI does not wait for the answer). Note: Playtones returns
        at once as an application; use Echo, or exten="tone"."""
        if (app is None) == (exten is None):
            raise ValueError("give exactly one of app= or exten=")
        if app is not None:
            cmd = f"channel originate {dest} application {app}"
            if data:
                cmd += f" {data}"
        else:
            cmd = f"channel originate {dest} extension {exten}@{context}"
        return self.rx(cmd)

    def qualify(self, endpoint: str = "wagw", *, timeout: float = 10.0) -> bool:
        """Send OPTIONS to the endpoint's contacts now; True once one is Avail."""

        def reachable() -> bool:
            self.rx(f"pjsip qualify {endpoint}")
            time.sleep(0.3)
            out = self.rx(f"pjsip show contacts like {endpoint}")
            return bool(re.search(r"\bAvail\b", out))

        try:
            return wait_until(reachable, timeout, interval=0.5, what=f"{endpoint} reachable")
        except TimeoutError:
            return False

    def active_channels(self) -> int:
        out = self.rx("core show channels count")
        m = re.search(r"(\d+) active channels?", out)
        return int(m.group(1)) if m else 0

    # -------------------------------------------------------------- logs --
    def log_text(self) -> str:
        try:
            return self.messages_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, *, timeout: float = 10.0) -> re.Match[str]:
        """Wait for a line of the messages log to match the regex `pattern`."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log_text()), timeout, what=f"log /{pattern}/")

    def notices(self, tag: str) -> list[str]:
        """The text after `tag` of the dialplan's Log(NOTICE,<tag> ...) lines
        (not the VERBOSE "Executing ..." lines that echo them)."""
        rx = re.compile(r"\] NOTICE\[.*?: " + re.escape(tag) + r" (.*)$")
        return [m.group(1) for line in self.log_text().splitlines() if (m := rx.search(line))]

    def dtmf_results(self) -> list[DtmfResult]:
        """Every completed run of the `dtmf` extension so far, oldest first."""
        rx = re.compile(
            r"uniqueid=(?P<uniqueid>\S*) wacid=(?P<wacid>\S*) "
            r"digits=(?P<digits>\S*) status=(?P<status>\S*)"
        )
        return [
            DtmfResult(m["uniqueid"], m["wacid"], m["digits"], m["status"])
            for text in self.notices("WAGW-DTMF")
            if (m := rx.match(text))
        ]

    def wait_dtmf(self, *, timeout: float = 20.0, wacid: str | None = None) -> DtmfResult:
        """The first `dtmf` extension result (for the given X-WA-Call-ID)."""

        def found() -> DtmfResult | None:
            for r in self.dtmf_results():
                if wacid is None or r.wacid == wacid:
                    return r
            return None

        return wait_until(found, timeout, what="WAGW-DTMF log line")

    def recordings(self) -> list[Path]:
        """Host paths of finished `record` extension recordings, oldest first."""
        rx = re.compile(r"uniqueid=\S* file=(\S+)")
        return [
            self.host_path(m.group(1))
            for text in self.notices("WAGW-RECORDED")
            if (m := rx.match(text))
        ]

    def wait_recording(self, *, timeout: float = 30.0, copy_to: Path | None = None) -> Path:
        """Wait for a `record` extension run to finish; its WAV (copied to
        copy_to when given, since the run dir is removed on stop)."""
        path = wait_until(
            lambda: (self.recordings() or [None])[0], timeout, what="WAGW-RECORDED log line"
        )
        if copy_to is not None:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy_to)
            return copy_to
        return path

    @staticmethod
    def _tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"({path} missing)"
