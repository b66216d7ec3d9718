"""A real FreeSWITCH 1.10 for the integration tests, from a build that
scripts/build-freeswitch.sh made (FreeSWITCH is in no Debian suite).

    with FreeSwitchPbx(gw_port=5090) as fs:          # ports not given are picked free
        fs.sip_port                                  # the wagw profile's SIP port (UDP+TCP)
        fs.api("sofia status")                       # any API command -> its output
        fs.originate("loopback/0012195550714/to-whatsapp", "tone")   # -> "+OK <uuid>"
        fs.notices("WAGW-CALL")                      # the dialplan's log lines

WAGW_FREESWITCH names the build (its PREFIX, with bin/freeswitch and mod/);
without it the tests skip, saying so. config/freeswitch is copied into a
per-run directory (conf, log, db, recordings, ...) with vars.xml's wagw_*
values replaced (ports, the gateway's address, a random event-socket
password) and the test-only dialplan tests/peers/freeswitch/wagw-tests.xml
added; ``profile_params`` overrides or adds params of the wagw profile.
FreeSWITCH runs in the foreground (-nf -nc), is asked to shut down over its
event socket and then stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.peers import (
    LOOPBACK,
    PROJECT_DIR,
    PeerProcess,
    free_port,
    release_ports,
    start_process,
    stop_process,
    wait_until,
)

CONFIG_DIR = PROJECT_DIR / "config" / "freeswitch"
TEST_DIALPLAN = Path(__file__).with_name("freeswitch") / "wagw-tests.xml"
ENV = "WAGW_FREESWITCH"


class FreeSwitchError(RuntimeError):
    pass


def require_freeswitch() -> Path:
    """The build's prefix; skips the test when WAGW_FREESWITCH is unset, fails it
    when it names something that is not a build."""
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(
            f"{ENV} not set: build FreeSWITCH with scripts/build-freeswitch.sh SRC_DIR PREFIX "
            f"and export {ENV}=PREFIX"
        )
    prefix = Path(value)
    if not (prefix / "bin" / "freeswitch").exists() or not (prefix / "mod").is_dir():
        pytest.fail(f"{ENV}={prefix} is not a FreeSWITCH build (no bin/freeswitch, mod/)")
    return prefix


def build_info(prefix: Path) -> str:
    try:
        return (prefix / "BUILD-INFO").read_text()
    except FileNotFoundError:
        return ""


class EventSocket:
    """The inbound event socket: ``api`` commands, one connection each."""

    def __init__(self, port: int, password: str) -> None:
        self.port = port
        self.password = password

    @staticmethod
    def _read_message(sock: socket.socket, buf: bytearray) -> tuple[dict[str, str], bytes]:
        while b"\n\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise FreeSwitchError("event socket closed")
            buf.extend(chunk)
        head, _, rest = bytes(buf).partition(b"\n\n")
        headers = {}
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(": ")
            headers[name] = value
        length = int(headers.get("Content-Length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise FreeSwitchError("event socket closed")
            rest += chunk
        body, leftover = rest[:length], rest[length:]
        buf[:] = leftover
        return headers, body

    def api(self, command: str, *, timeout: float = 15.0) -> str:
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            buf = bytearray()
            headers, _ = self._read_message(sock, buf)
            if headers.get("Content-Type") != "auth/request":
                raise FreeSwitchError(f"unexpected greeting {headers}")
            sock.sendall(f"auth {self.password}\n\n".encode())
            headers, _ = self._read_message(sock, buf)
            if not headers.get("Reply-Text", "").startswith("+OK"):
                raise FreeSwitchError("event socket refused the password")
            sock.sendall(f"api {command}\n\n".encode())
            while True:
                headers, body = self._read_message(sock, buf)
                if headers.get("Content-Type") == "api/response":
                    return body.decode(errors="replace")


class FreeSwitchPbx(PeerProcess):
    """A FreeSWITCH process (by PID) with a private copy of config/freeswitch."""

    def __init__(
        self,
        *,
        prefix: Path | None = None,
        sip_port: int | None = None,
        gw_port: int | None = None,
        transport: str = "udp",
        profile_params: dict[str, str] | None = None,
        variables: dict[str, str] | None = None,
        test_routing: bool = True,
        log_dir: Path | None = None,
        keep_run_dir: bool | None = None,
        config_dir: Path = CONFIG_DIR,
        start_timeout: float = 30.0,
    ) -> None:
        self.prefix = prefix if prefix is not None else require_freeswitch()
        self.sip_port = sip_port or free_port()
        self.gw_port = gw_port or free_port()
        self.esl_port = free_port()
        rtp_start = free_port(202, tcp=False, low=30000, high=32700)
        self._rtp_block = (rtp_start, 202)
        rtp_start += rtp_start % 2
        self.rtp_ports = (rtp_start, rtp_start + 199)
        self.transport = transport
        self.profile_params = dict(profile_params or {})
        self.variables = dict(variables or {})
        self.test_routing = test_routing
        self.config_dir = Path(config_dir)
        self.start_timeout = start_timeout
        if keep_run_dir is None:
            keep_run_dir = os.environ.get("WAGW_KEEP_PEER_FILES") == "1"
        self.keep_run_dir = keep_run_dir
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.run_dir = Path(tempfile.mkdtemp(prefix="wagw-fs-"))
        self.esl = EventSocket(self.esl_port, secrets.token_hex(12))
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ paths --
    @property
    def conf_dir(self) -> Path:
        return self.run_dir / "conf"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "log" / "freeswitch.log"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def recordings_dir(self) -> Path:
        return self.run_dir / "recordings"

    @property
    def uri_host(self) -> str:
        return f"{LOOPBACK}:{self.sip_port}"

    # ----------------------------------------------------------- config --
    def _vars(self) -> dict[str, str]:
        values = {
            "wagw_fs_ip": LOOPBACK,
            "wagw_fs_port": str(self.sip_port),
            "wagw_gateway_ip": LOOPBACK,
            "wagw_gateway_port": str(self.gw_port),
            "wagw_transport": self.transport,
            "wagw_rtp_start": str(self.rtp_ports[0]),
            "wagw_rtp_end": str(self.rtp_ports[1]),
            "wagw_esl_port": str(self.esl_port),
            "wagw_esl_password": self.esl.password,
            "wagw_test_routing": "yes" if self.test_routing else "no",
        }
        values.update(self.variables)
        return values

    def write_config(self) -> None:
        shutil.copytree(self.config_dir, self.conf_dir)
        for sub in ("log", "db", "run", "recordings", "storage", "cache", "temp", "sounds"):
            (self.run_dir / sub).mkdir(exist_ok=True)
        shutil.copy2(TEST_DIALPLAN, self.conf_dir / "dialplan" / TEST_DIALPLAN.name)
        vars_xml = self.conf_dir / "vars.xml"
        text = vars_xml.read_text()
        for name, value in self._vars().items():
            pattern = re.compile(
                r'(<X-PRE-PROCESS cmd="set" data="' + re.escape(name) + r'=)[^"]*"'
            )
            text, n = pattern.subn(lambda m, v=value: m.group(1) + v + '"', text)
            if n != 1:
                raise FreeSwitchError(f"vars.xml: {name} set {n} times, expected once")
        vars_xml.write_text(text)
        if self.profile_params:
            profile = self.conf_dir / "sip_profiles" / "wagw.xml"
            text = profile.read_text()
            for name, value in self.profile_params.items():
                pattern = re.compile(r'(<param name="' + re.escape(name) + r'" value=")[^"]*"')
                text, n = pattern.subn(lambda m, v=value: m.group(1) + v + '"', text)
                if n == 0:
                    text = text.replace(
                        "  </settings>",
                        f'    <param name="{name}" value="{value}"/>\n  </settings>',
                    )
            profile.write_text(text)

    # --------------------------------------------------------- lifecycle --
    def argv(self) -> list[str]:
        r = self.run_dir
        return [
            str(self.prefix / "bin" / "freeswitch"),
            "-nf",
            "-nc",
            "-nonat",
            "-nocal",
            "-nort",
            "-base",
            str(r),
            "-conf",
            str(self.conf_dir),
            "-log",
            str(r / "log"),
            "-db",
            str(r / "db"),
            "-run",
            str(r / "run"),
            "-mod",
            str(self.prefix / "mod"),
            "-recordings",
            str(self.recordings_dir),
            "-storage",
            str(r / "storage"),
            "-cache",
            str(r / "cache"),
            "-temp",
            str(r / "temp"),
            "-sounds",
            str(r / "sounds"),
        ]

    def start(self) -> FreeSwitchPbx:
        self.write_config()
        self.proc = start_process(self.argv(), self.console_log, cwd=self.run_dir)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise FreeSwitchError(
                    f"freeswitch exited with {self.proc.returncode} while starting:\n"
                    + self._tail(self.log_file)
                    + self._tail(self.console_log)
                )
            with contextlib.suppress(OSError, FreeSwitchError):
                out = self.esl.api("sofia status", timeout=2)
                if re.search(r"^\s*wagw\s+profile\s.*\bRUNNING\b", out, re.M):
                    return self
            if time.monotonic() > deadline:
                raise FreeSwitchError(
                    f"freeswitch not ready after {self.start_timeout} s:\n"
                    + self._tail(self.log_file)
                )
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self._rtp_block is not None:
            release_ports(*self._rtp_block)
            self._rtp_block = None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError, FreeSwitchError):
                self.esl.api("fsctl shutdown", timeout=3)
            stop_process(proc, grace=10)
        if self.log_dir is not None and self.run_dir.exists():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for src in (self.log_file, self.console_log):
                if src.exists():
                    shutil.copy2(src, self.log_dir / f"freeswitch-{src.name}")
        if not self.keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # --------------------------------------------------------------- API --
    def api(self, command: str, *, timeout: float = 15.0) -> str:
        """Run one API command in the running FreeSWITCH; its output."""
        if self.proc is None or self.proc.poll() is not None:
            raise FreeSwitchError(f"freeswitch is not running (api {command!r})")
        return self.esl.api(command, timeout=timeout)

    def originate(
        self, dest: str, exten: str, *, context: str = "wagw-tests", timeout: float = 60.0
    ) -> str:
        """``originate dest exten XML context``: blocks until the call is answered
        ("+OK <uuid>") or fails ("-ERR <hangup cause>")."""
        return self.api(f"originate {dest} {exten} XML {context}", timeout=timeout).strip()

    def channels(self) -> list[str]:
        """The uuids of the live channels."""
        out = self.api("show channels as delim |")
        return [line.split("|", 1)[0] for line in out.splitlines()[1:] if "|" in line]

    # -------------------------------------------------------------- logs --
    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def notices(self, tag: str) -> list[str]:
        """The text after `tag` of the dialplan's ``log NOTICE <tag> ...`` lines."""
        rx = re.compile(r"\[NOTICE\] mod_dptools\.c:\d+ " + re.escape(tag) + r" (.*)$")
        return [m.group(1) for line in self.log_text().splitlines() if (m := rx.search(line))]

    def wait_notice(self, tag: str, *, timeout: float = 20.0, count: int = 1) -> list[str]:
        return wait_until(
            lambda: found if len(found := self.notices(tag)) >= count else None,
            timeout,
            what=f"{count} {tag} log line(s)",
        )

    @staticmethod
    def fields(line: str) -> dict[str, str]:
        """``a=1 b=two c=`` -> {"a": "1", "b": "two", "c": ""} (values without spaces)."""
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))

    def wait_recording(self, *, timeout: float = 30.0, copy_to: Path | None = None) -> Path:
        """The WAV of the first finished WAGW-RECORDED (copied to copy_to when given,
        since the run dir is removed on stop)."""
        line = self.wait_notice("WAGW-RECORDED", timeout=timeout)[0]
        path = Path(self.fields(line)["file"])
        if copy_to is not None:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy_to)
            return copy_to
        return path

    @staticmethod
    def _tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        except FileNotFoundError:
            return f"({path} missing)\n"
