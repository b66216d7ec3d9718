"""The gateway daemon as a process for the benchmark: config, start, CPU readings, stop.

Like ``tests.integration.harness.GatewayProcess`` but quiet (logging level
warning, so there is no "ready" line to wait for: readiness is ``/livez``),
pinned to one core from its first instruction, and tied to the benchmark's
life with ``PR_SET_PDEATHSIG`` so it never outlives it.

Two ways Meta's side reaches it: its own TLS listener (the single-instance
benchmark), or, with :class:`ProxySide`, no TLS listener and Meta's requests
relayed by a SIP proxy to ``whatsapp.proxy_listen`` (one of several instances
behind Kamailio, bench.front).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUSINESS_NUMBER = "+15550001111"
SIP_PASSWORD = "not-a-real-password-4711"
HOSTNAME = "sip.example.com"
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class CpuSample:
    """CPU time of a process (all threads), read from /proc."""

    at: float  # time.monotonic()
    utime: float  # seconds
    stime: float  # seconds
    run_ns: int  # scheduler run time of all threads (ns, precise), 0 when unavailable
    rss_kib: int
    wait_ns: int = 0  # time runnable but waiting for a CPU (others had it), all threads
    slices: int = 0  # times a thread was put on a CPU (wake-ups, preemptions), all threads

    @property
    def total(self) -> float:
        """Seconds of CPU: the precise schedstat figure when present, else utime+stime."""
        return self.run_ns / 1e9 if self.run_ns else self.utime + self.stime


def read_cpu(pid: int) -> CpuSample:
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    run_ns = wait_ns = slices = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                fields3 = fh.read().split()
                run_ns += int(fields3[0])
                wait_ns += int(fields3[1])
                slices += int(fields3[2])
    rss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    return CpuSample(time.monotonic(), utime, stime, run_ns, rss, wait_ns, slices)


CORE_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read_core_times() -> dict[int, dict[str, float]]:
    """Per core: seconds in each /proc/stat column (user ... steal)."""
    out: dict[int, dict[str, float]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            name = line.split(" ", 1)[0]
            if not name.startswith("cpu") or name == "cpu":
                continue
            values = [int(v) / CLK_TCK for v in line.split()[1:9]]
            out[int(name[3:])] = dict(zip(CORE_COLUMNS, values, strict=False))
    return out


def read_socket_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped on our 127.0.0.1 UDP sockets with these local ports."""
    total = 0
    with open("/proc/net/udp") as fh:
        next(fh, None)
        for line in fh:
            parts = line.split()
            if len(parts) < 13:
                continue
            ip, _, port = parts[1].partition(":")
            if ip == "0100007F" and int(port, 16) in ports:
                total += int(parts[-1])
    return total


def read_udp_counters() -> dict[str, int]:
    """System-wide UDP counters (/proc/net/snmp): drops anywhere on the loopback path."""
    with open("/proc/net/snmp") as fh:
        lines = [line.split() for line in fh if line.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)}


PRIORITIES = ("normal", "high", "realtime")
RT_PRIORITY = 10


def set_priority(priority: str, pid: int = 0, rt_priority: int = RT_PRIORITY) -> str:
    """Make ``pid`` (0: this process) win its core against other work on the machine.

    ``high``: nice -20, also for its autogroup (with sched_autogroup, nice only ranks
    tasks inside one session). ``realtime``: SCHED_FIFO ``rt_priority``, above every
    normal task (the kernel still leaves others 5 %). Returns what was done, for the
    report.
    """
    if priority == "high":
        os.setpriority(os.PRIO_PROCESS, pid, -20)
        with contextlib.suppress(OSError), open(f"/proc/{pid or 'self'}/autogroup", "w") as fh:
            fh.write("-20")
        return "nice -20 (process and autogroup)"
    if priority == "realtime":
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(rt_priority))
        return f"SCHED_FIFO {rt_priority}"
    return "normal"


def autogroup_nice(pid: int = 0) -> int | None:
    try:
        with open(f"/proc/{pid or 'self'}/autogroup") as fh:
            return int(fh.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _child_setup(core: int | None, priority: str) -> None:
    """Runs in the child between fork and exec (a new session, so its own autogroup):
    pin, priority, die with the parent."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    set_priority(priority)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True)
class ProxySide:
    """An instance behind a SIP proxy (issue 7): no TLS listener; what it shares with
    the other instances and where the proxy is."""

    nonce_secret_file: Path  # cluster.nonce_secret_file, the same for every instance
    outbound_proxy: str  # "host:port", the proxy's internal listener
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32",)
    transport: str = "udp"  # whatsapp.proxy_transport

    def whatsapp(self, proxy_port: int) -> dict[str, Any]:
        """The whatsapp.* keys that put the instance behind the proxy."""
        return {
            "listen": None,
            "trusted_proxies": list(self.trusted_proxies),
            "proxy_listen": f"127.0.0.1:{proxy_port}",
            "proxy_transport": self.transport,
            "outbound_proxy": self.outbound_proxy,
        }


@dataclass
class Daemon:
    """One gateway process started from a generated YAML config in ``workdir``."""

    workdir: Path
    pbx_address: tuple[str, int]
    max_calls: int
    core: int | None
    media_ports: tuple[int, int] = (20000, 21999)
    priority: str = "normal"
    log_level: str = "warning"
    source: Path | None = None  # a directory holding gateway/ to run instead of the working tree
    gc_mode: str = ""  # "" or "threshold=A,B,C" (an experiment; see bench.gcprobe)
    overrides: dict[str, Any] = field(default_factory=dict)
    proxy: ProxySide | None = None  # behind a SIP proxy instead of its own TLS listener
    name: str = "daemon"
    srtp: str = "sdes"  # the number's key exchange: what the load generator's offers use
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def tls_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ports["tls"])

    @property
    def sip_address(self) -> tuple[str, int]:
        """Where Meta's side is received: the TLS listener, or proxy_listen (UDP + TCP)."""
        return ("127.0.0.1", self.ports["proxy" if self.proxy else "tls"])

    def assign_ports(self) -> dict[str, int]:
        """Pick the listening ports (once; the proxy needs proxy_listen before start)."""
        if not self.ports:
            sip = "proxy" if self.proxy else "tls"
            self.ports = {sip: free_port(), "pbx_listen": free_port(), "http": free_port()}
        return self.ports

    @property
    def gc_path(self) -> Path:
        return self.workdir / "gc-pauses.json"

    def gc_pauses(self) -> list[tuple[float, float, int]]:
        """(monotonic time, seconds, generation) of each GC run; after the daemon exited."""
        try:
            data = json.loads(self.gc_path.read_text())
        except (OSError, ValueError):
            return []
        return [(float(t), float(d), int(g)) for t, d, g in data.get("pauses", [])]

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def write_config(self) -> Path:
        self.assign_ports()
        pw = self.workdir / "secrets" / "15550001111.password"
        pw.parent.mkdir(parents=True, exist_ok=True)
        pw.write_text(SIP_PASSWORD + "\n")
        pw.chmod(0o600)
        if self.proxy is None:
            side: dict[str, Any] = {
                "listen": f"127.0.0.1:{self.ports['tls']}",
                "advertise": f"127.0.0.1:{self.ports['tls']}",
            }
        else:
            side = self.proxy.whatsapp(self.ports["proxy"])
        cfg: dict[str, Any] = {
            "mode": "development",  # makes the self-signed certificate
            "whatsapp": {
                **side,
                "hostname": HOSTNAME,
                "tls": {"cert_file": "tls/gw.crt", "key_file": "tls/gw.key"},
                "allowed_networks": ["127.0.0.0/8"],
                "numbers": [
                    {
                        "number": BUSINESS_NUMBER,
                        "sip_password_file": str(pw.relative_to(self.workdir)),
                        "srtp": self.srtp,
                    }
                ],
            },
            "pbx": {
                "address": f"{self.pbx_address[0]}:{self.pbx_address[1]}",
                "transport": "udp",
                "listen": f"127.0.0.1:{self.ports['pbx_listen']}",
                "trusted_networks": ["127.0.0.0/8"],
            },
            "media": {"address": "127.0.0.1", "port_range": list(self.media_ports)},
            "http": {"listen": f"127.0.0.1:{self.ports['http']}"},
            "logging": {"level": self.log_level, "format": "json"},
            "limits": {"max_calls": self.max_calls},
            # The load generator is one source address placing every call (two INVITEs
            # each, 407 then credentials): per-source budgets sized for it, not for one
            # of Meta's edges (sip.rate_limits defaults). Overload control stays on.
            "sip": {
                "rate_limits": {
                    "invite": {"rate": 1000, "burst": 2000},
                    "other": {"rate": 5000, "burst": 10000},
                    "messages": {"rate": 10000, "burst": 20000},
                }
            },
        }
        if self.proxy is not None:
            cfg["cluster"] = {"nonce_secret_file": str(self.proxy.nonce_secret_file)}
        for key, value in self.overrides.items():
            cfg.setdefault(key, {}).update(value)
        path = self.workdir / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, timeout: float = 20.0) -> None:
        config = self.write_config()
        log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        probe = self.workdir / "probe"
        probe.mkdir(exist_ok=True)
        shutil.copy(Path(__file__).with_name("gcprobe.py"), probe / "sitecustomize.py")
        env["WAGW_BENCH_GC_OUT"] = str(self.gc_path)
        env["WAGW_BENCH_GC_MODE"] = self.gc_mode
        paths = [str(probe), str(self.source) if self.source else "", env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        core, priority = self.core, self.priority
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            preexec_fn=lambda: _child_setup(core, priority),
            start_new_session=True,  # its own autogroup; stopped by PID, and with us
        )
        log.close()
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports['http']}/livez"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1) as resp,
            ):
                if resp.status == 200 and self._sip_open():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_text()}")

    def media_engine(self) -> str:
        """The media engine the daemon runs, from wagw_build_info ("" if unreadable)."""
        url = f"http://127.0.0.1:{self.ports['http']}/metrics"
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("wagw_build_info{") and 'media_engine="' in line:
                    return line.split('media_engine="', 1)[1].split('"', 1)[0]
        return ""

    def _sip_open(self) -> bool:
        """The TLS listener (or proxy_listen's TCP side) accepts connections."""
        try:
            with socket.create_connection(self.sip_address, timeout=1):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """TERM the process by PID; TERM again if it is still draining calls (the gateway
        stops at once on a second signal); KILL if it lingers. Its exit status."""
        proc = self.proc
        if proc is None:
            return None
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGTERM, timeout)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        return proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def export_ref(ref: str, dest: Path) -> str:
    """``gateway/`` as committed at ``ref`` into ``dest`` (read-only use of the repository);
    the short commit id."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "--verify", f"{ref}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    paths = ["gateway"]
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", sha, "setup.py", "pyproject.toml"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths += listed
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha, *paths],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    if "setup.py" in listed and (dest / "gateway" / "media" / "_native.pyx").exists():
        # The native media engine as committed (optional: a failed build leaves the
        # Python engine, which the report then names).
        built = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=dest,
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            tail = (built.stderr or built.stdout).strip().splitlines()[-3:]
            print(f"bench: --ref {ref}: native engine not built: {' / '.join(tail)}", flush=True)
    return sha
