"""Kamailio 6.1 (Debian sid, in the peer chroot of make asterisk-chroot) as the SIP
front of several gateway instances, for the integration tests and the benchmark.
Not bookworm's 5.6.3: under OpenSSL 3 its TLS module frees memory twice and a worker
dies (seen here under failover; kamailio/kamailio#3791), which tls_threads_mode=2
(Kamailio 5.8+, set by the shipped config) prevents.

    cert, key = self_signed_cert(tmp_path / "certs")
    with KamailioProxy(
        tmp_path / "kamailio",
        backends=["sip:127.0.0.1:5071", "sip:127.0.0.1:5072;transport=tcp"],
        meta_port=emulator_port,         # Meta-bound traffic: TLS to 127.0.0.1:<this>
        cert_file=cert, key_file=key,    # the public TLS listener's certificate
        ca_file=cert,                    # CA list of the TLS client (the Meta emulator's cert)
    ) as kam:
        kam.public_port                  # TLS, where "Meta" connects (allowlist: `allow`)
        kam.internal_port                # UDP + TCP, where the instances send (outbound_proxy)
        kam.wait_state("sip:127.0.0.1:5071", "AP", timeout=5)
        kam.dispatcher()                 # {"sip:127.0.0.1:5071": "AP", ...}
        kam.set_state("sip:127.0.0.1:5071", "d")   # take an instance out by hand
        kam.cpu_seconds()                # user+system CPU of every Kamailio process so far

It runs the shipped config/kamailio/kamailio.cfg unchanged, with the defines
overridden on the command line (-A), as config/kamailio/README.md shows:
listeners on 127.0.0.1 only, META_ADDR/META_PORT pointing at the Meta
emulator while the Request-URI host stays META_HOST (wa.meta.vc), and its own
tls.cfg (the shipped one with the three file paths replaced),
dispatcher.list (`backends`, set 1, flags 0) and address.list (`allow`) in
a per-run directory of the chroot (/opt/wagw/kam-*, removed at stop unless
WAGW_KEEP_PEER_FILES=1). NO_LOCAL_CFG keeps a config/kamailio/kamailio-local.cfg out.

API:
    KamailioProxy(workdir, *, backends, cert_file, key_file, ca_file, meta_port,
                  meta_addr="127.0.0.1", public_port=None, internal_port=None,
                  ping_interval=1, allow=("127.0.0.0/8",), defines=None, shm_mb=64)
        Ports left None are picked free (tests.peers.free_port). `defines` adds
        or overrides -A defines (e.g. {"FR_BACKEND_MS": 1000}): ints and the
        listen sockets (PUBLIC_TLS, PUBLIC_ADVERTISE, INTERNAL_*) go as they
        are, other strings quoted (script strings), "" defines a bare name.
    start(timeout=15) / stop(grace=5) / with-statement (start again after
        stop: same ports, log appended); pid; log_path; workdir
    public_port, internal_port, internal_hostport ("127.0.0.1:P", an
        instance's whatsapp.outbound_proxy), public_uri (sip:...;transport=tls)
    kamcmd(*args) -> str: any RPC command (dispatcher.reload, ...)
    dispatcher() -> dict[uri, flags]; wait_state(uri, flags_prefix, timeout);
    set_state(uri, state)                 state: "a", "i", "d", "ap", "ip" ...
    processes() -> list[int]: PIDs of the live Kamailio processes (its group)
    cpu_seconds() -> float: utime+stime (+ reaped children) of all of them
    log_text() -> str

Kamailio forks about a dozen children (UDP/TCP receivers, timers, ctl). It is
started in a new session (start_new_session), so its PID is the process group
of all of them; stop() sends SIGTERM to that group, SIGKILL after a grace
period, and then checks that no process of the group is left (KamailioError if
one is). Logs (-E: stderr) go to workdir/kamailio.log and stay there.

kamailio_available() says whether the binaries and the tls module are
installed; require_kamailio() fails the test when they are not (skips it when
WAGW_ALLOW_SKIP_PEERS=1, as the other peers do): `make test` installs them
(APT_PACKAGES in the Makefile).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tests.peers import (
    LOOPBACK,
    PROJECT_DIR,
    PeerProcess,
    free_port,
    skip_allowed,
    start_process,
    wait_until,
)

CONFIG_DIR = PROJECT_DIR / "config" / "kamailio"
CONFIG_FILE = CONFIG_DIR / "kamailio.cfg"
META_HOST = "wa.meta.vc"
# The paths in the shipped tls.cfg that the test copy replaces.
TLS_CERT_PATH = "/etc/kamailio/tls/fullchain.pem"
TLS_KEY_PATH = "/etc/kamailio/tls/privkey.pem"
TLS_CA_PATH = "/etc/ssl/certs/ca-certificates.crt"
MODULE_GLOBS = ("usr/lib/*/kamailio/modules/tls.so", "usr/lib/kamailio/modules/tls.so")
KAMAILIO = "/usr/sbin/kamailio"  # in the peer chroot, never the host's
KAMCMD = "/usr/sbin/kamcmd"  # in the peer chroot
RUNS_DIR = "/opt/wagw"  # inside the chroot, shared with tests/peers/asterisk.py
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class KamailioError(RuntimeError):
    pass


def kamailio_root() -> Path:
    """The sid chroot the peers run from (make asterisk-chroot; WAGW_ASTERISK_ROOT)."""
    return Path(os.environ.get("WAGW_ASTERISK_ROOT", PROJECT_DIR / ".cache" / "asterisk-root"))


def kamailio_available(root: Path | None = None) -> bool:
    """kamailio and kamcmd are installed in the chroot, and the tls module is there."""
    root = root or kamailio_root()
    has_tls = any(glob.glob(str(root / pattern)) for pattern in MODULE_GLOBS)
    binaries = (root / "usr/sbin/kamailio", root / "usr/sbin/kamcmd")
    return has_tls and all(os.access(b, os.X_OK) for b in binaries)


def require_kamailio() -> None:
    """Fail the test (skip it when skip_allowed()) unless kamailio_available()."""
    import pytest

    if kamailio_available():
        return
    msg = f"Kamailio with TLS not found in {kamailio_root()}: make asterisk-chroot"
    if skip_allowed():
        pytest.skip(msg)
    pytest.fail(msg)


def check_config(files: Mapping[str, str | Path], *extra: str) -> subprocess.CompletedProcess[str]:
    """``kamailio -c`` of the chroot's Kamailio on a config directory built from
    ``files`` (name -> text, or a host path to copy), as it would be installed:
    the config is ``kamailio.cfg`` there, its includes next to it. The directory
    is removed afterwards. (The host has no Kamailio: make apt-deps does not
    install one, so nothing here may fall back to /usr/sbin of the host.)"""
    root = kamailio_root()
    inside = f"{RUNS_DIR}/kamcheck-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    host_dir = root / inside.lstrip("/")
    host_dir.mkdir(parents=True)
    try:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copy(content, host_dir / name)
            else:
                (host_dir / name).write_text(content)
        argv = ["chroot", str(root), KAMAILIO, "-c", "-f", f"{inside}/kamailio.cfg"]
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30, cwd="/")
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (index 0 = field 3, state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2 :].split()


def _group_members(pgid: int) -> list[tuple[int, list[str]]]:
    """Live (non-zombie) processes whose process group is pgid, with their stat fields."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        members.append((int(entry), fields))
    return members


# Defines used as bare tokens (listen=...), not as script strings.
_RAW_DEFINES = frozenset({"PUBLIC_TLS", "PUBLIC_ADVERTISE", "INTERNAL_UDP", "INTERNAL_TCP"})


def _define(name: str, value: str | int) -> str:
    """-A argument: NAME alone for "", NAME=value for ints and listen sockets,
    NAME="value" for other strings."""
    if value == "":
        return name
    if isinstance(value, int) or name in _RAW_DEFINES:
        return f"{name}={value}"
    return f'{name}="{value}"'


class KamailioProxy(PeerProcess):
    """One Kamailio (main process by PID, children by its process group) running
    config/kamailio/kamailio.cfg on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        *,
        backends: Sequence[str],
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        meta_port: int,
        meta_addr: str = LOOPBACK,
        public_port: int | None = None,
        internal_port: int | None = None,
        ping_interval: int = 1,
        allow: Iterable[str] = ("127.0.0.0/8",),
        defines: Mapping[str, str | int] | None = None,
        shm_mb: int = 64,
        config_file: Path = CONFIG_FILE,
    ) -> None:
        self.workdir = Path(workdir)
        self.backends = list(backends)
        if not self.backends:
            raise ValueError("at least one backend (dispatcher set 1 may not be empty)")
        self.cert_file, self.key_file, self.ca_file = Path(cert_file), Path(key_file), Path(ca_file)
        self.meta_addr, self.meta_port = meta_addr, meta_port
        # kept for the life of this object (a restart reuses them)
        self.public_port = public_port or free_port(udp=False)
        self.internal_port = internal_port or free_port()
        self.ping_interval = ping_interval
        self.allow = [ipaddress.ip_network(net, strict=False) for net in allow]
        self.defines = dict(defines or {})
        self.shm_mb = shm_mb
        self.config_file = Path(config_file)
        self.proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        # Kamailio runs from the sid chroot; its files are in a per-run directory there.
        self.root = kamailio_root()
        self.inside = f"{RUNS_DIR}/kam-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # as it sees it
        self.host_dir = self.root / self.inside.lstrip("/")

    # ------------------------------------------------------------ paths --
    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    @property
    def run_dir(self) -> Path:
        """The run directory (pid file, ctl socket) on the host."""
        return self.host_dir / "run"

    @property
    def ctl(self) -> str:
        return f"unix:{self.inside}/run/kamailio_ctl"

    @property
    def internal_hostport(self) -> str:
        """Where instances send (whatsapp.outbound_proxy), UDP or TCP."""
        return f"{LOOPBACK}:{self.internal_port}"

    @property
    def public_uri(self) -> str:
        """What "Meta" connects to."""
        return f"sip:{LOOPBACK}:{self.public_port};transport=tls"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ----------------------------------------------------------- config --
    def write_config(self) -> None:
        """The config, its lists, tls.cfg and the TLS files, copied into the chroot."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.config_file, self.host_dir / "kamailio.cfg")
        tls = (CONFIG_DIR / "tls.cfg").read_text()
        for old, src, name in (
            (TLS_CERT_PATH, self.cert_file, "cert.pem"),
            (TLS_KEY_PATH, self.key_file, "key.pem"),
            (TLS_CA_PATH, self.ca_file, "ca.pem"),
        ):
            if old not in tls:
                raise KamailioError(f"config/kamailio/tls.cfg no longer names {old}")
            shutil.copy(src, self.host_dir / name)
            tls = tls.replace(old, f"{self.inside}/{name}")
        (self.host_dir / "tls.cfg").write_text(tls)
        lines = [f"1 {uri} 0 0 duid=gw{i}" for i, uri in enumerate(self.backends, 1)]
        (self.host_dir / "dispatcher.list").write_text("\n".join(lines) + "\n")
        allow = [
            f"1 {net.network_address} {net.prefixlen} 0 test{i}"
            for i, net in enumerate(self.allow, 1)
        ]
        (self.host_dir / "address.list").write_text("\n".join(allow) + "\n")

    def argv(self) -> list[str]:
        inside = self.inside
        defines: dict[str, str | int] = {
            "NO_LOCAL_CFG": "",
            "PUBLIC_TLS": f"tls:{LOOPBACK}:{self.public_port}",
            "INTERNAL_UDP": f"udp:{LOOPBACK}:{self.internal_port}",
            "INTERNAL_TCP": f"tcp:{LOOPBACK}:{self.internal_port}",
            "DS_LIST": f"{inside}/dispatcher.list",
            "ALLOW_LIST": f"{inside}/address.list",
            "TLS_CFG": f"{inside}/tls.cfg",
            "CTL_SOCK": self.ctl,
            "META_ADDR": self.meta_addr,
            "META_PORT": self.meta_port,
            "DS_PING_INTERVAL": self.ping_interval,
        }
        defines.update(self.defines)
        argv = [
            "chroot",
            str(self.root),
            KAMAILIO,
            "-DD",
            "-E",
            "-f",
            f"{inside}/kamailio.cfg",
            "-Y",
            f"{inside}/run",
            "-w",
            inside,
            "-m",
            str(self.shm_mb),
        ]
        for name, value in defines.items():
            argv += ["-A", _define(name, value)]
        return argv

    # --------------------------------------------------------- lifecycle --
    def start(self, timeout: float = 15.0) -> KamailioProxy:
        """Start Kamailio; return once kamcmd answers and the TLS and internal TCP
        ports accept connections. KamailioError (with the log's tail) otherwise."""
        if self.proc is not None:
            raise KamailioError("already started")
        if not kamailio_available(self.root):
            raise KamailioError(f"kamailio/kamcmd/tls.so not in {self.root} (make asterisk-chroot)")
        self.write_config()
        self.proc = start_process(self.argv(), self.log_path, cwd=self.workdir)
        self._pgid = self.proc.pid  # start_new_session: the group leader
        try:
            wait_until(self._ready, timeout, what="Kamailio listening and answering kamcmd")
        except (TimeoutError, KamailioError) as exc:
            tail = self._tail()
            self.stop()
            raise KamailioError(f"Kamailio did not start: {exc}\n{tail}") from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise KamailioError(f"kamailio exited with {self.proc.returncode}")
        for port in (self.public_port, self.internal_port):
            try:
                socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            except OSError:
                return False
        res = self._run_kamcmd(["core.uptime"], timeout=2)
        return res is not None and res.returncode == 0

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` s; then no
        process of the group may be left. Idempotent."""
        proc, self.proc = self.proc, None
        pgid, self._pgid = self._pgid, None
        try:
            if proc is not None and pgid is not None:
                self._stop_group(proc, pgid, grace)
        finally:
            if os.environ.get("WAGW_KEEP_PEER_FILES") != "1":
                shutil.rmtree(self.host_dir, ignore_errors=True)

    @staticmethod
    def _stop_group(proc: subprocess.Popen[bytes], pgid: int, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None and not _group_members(pgid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
                if proc.poll() is not None and not _group_members(pgid):
                    break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        left = [pid for pid, _ in _group_members(pgid)]
        if proc.poll() is None or left:
            raise KamailioError(f"Kamailio processes left after SIGKILL: {left or [proc.pid]}")

    # ------------------------------------------------------------ kamcmd --
    def _run_kamcmd(
        self, args: list[str], timeout: float
    ) -> subprocess.CompletedProcess[str] | None:
        try:
            argv = ["chroot", str(self.root), KAMCMD, "-s", self.ctl, *args]
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return None

    def kamcmd(self, *args: str, timeout: float = 5.0) -> str:
        """Run one RPC command (kamcmd -s <ctl> ARGS...); its output."""
        if self.proc is None or self.proc.poll() is not None:
            raise KamailioError(f"kamailio is not running (kamcmd {' '.join(args)})")
        res = self._run_kamcmd(list(args), timeout)
        if res is None:
            raise KamailioError(f"kamcmd {' '.join(args)}: no answer within {timeout} s")
        if res.returncode != 0 or res.stdout.lstrip().startswith("error:"):
            raise KamailioError(f"kamcmd {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def dispatcher(self) -> dict[str, str]:
        """Dispatcher set 1 as Kamailio sees it: URI (as in dispatcher.list) -> FLAGS.
        First letter A active, I inactive, D disabled, T trying; then P probing or
        X not probing (before the first probe round, or disabled by hand)."""
        states: dict[str, str] = {}
        uri = None
        for line in self.kamcmd("dispatcher.list").splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "URI":
                uri = value.strip()
            elif key == "FLAGS" and uri is not None:
                states[uri] = value.strip()
                uri = None
        return states

    def wait_state(self, uri: str, flags_prefix: str, timeout: float) -> str:
        """Wait until `uri`'s flags start with flags_prefix ("A", "AP", "I", ...);
        return them, or raise TimeoutError (with the last flags seen)."""
        seen: dict[str, str] = {}

        def reached() -> str | None:
            seen.update(self.dispatcher())
            flags = seen.get(uri, "")
            return flags if flags.startswith(flags_prefix) else None

        try:
            return wait_until(reached, timeout, what=f"{uri} flags {flags_prefix}*")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {seen}") from None

    def set_state(self, uri: str, state: str) -> None:
        """dispatcher.set_state STATE 1 URI. "d": out by hand (stays out; "i" is
        undone by the next 200 to a probe), "a"/"ap": back in."""
        self.kamcmd("dispatcher.set_state", state, "1", uri)

    # --------------------------------------------------------- processes --
    def processes(self) -> list[int]:
        """PIDs of the live Kamailio processes (main and children)."""
        return [] if self._pgid is None else [pid for pid, _ in _group_members(self._pgid)]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every live Kamailio process so far (plus
        children it has reaped), from /proc/PID/stat."""
        if self._pgid is None:
            return 0.0
        ticks = 0
        for _, fields in _group_members(self._pgid):
            # fields 14-17: utime stime cutime cstime (index = field - 3)
            ticks += sum(int(f) for f in fields[11:15])
        return ticks / _CLK_TCK

    # -------------------------------------------------------------- logs --
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern: str) -> list[str]:
        """Log lines matching the regex `pattern`."""
        rx = re.compile(pattern)
        return [line for line in self.log_text().splitlines() if rx.search(line)]

    def _tail(self, lines: int = 40) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else f"({self.log_path} empty)"


__all__ = [
    "CONFIG_DIR",
    "CONFIG_FILE",
    "META_HOST",
    "KamailioError",
    "KamailioProxy",
    "kamailio_available",
    "require_kamailio",
]
