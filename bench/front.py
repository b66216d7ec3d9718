"""Kamailio in front of the benchmark's gateway instances (scale-out, issue 7).

The shipped config/kamailio/kamailio.cfg, run by tests.peers.kamailio.KamailioProxy
from the peer chroot (make asterisk-chroot): public TLS listener where the load
generator connects as Meta, dispatcher set 1 = the instances' proxy_listen
(UDP, as config/kamailio/dispatcher.list ships it), Call-ID hash. Media never
passes through it. Its processes are pinned and prioritised like the
generator's (bench.placement) once they have all forked, and their CPU is read
from /proc as the instances' is (scheduler run time of every thread).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.daemon import HOSTNAME, CpuSample, free_port, read_cpu, set_priority
from gateway.config.certs import ensure_dev_certificate
from tests.peers.kamailio import KamailioProxy, kamailio_available, kamailio_root

PING_INTERVAL = 3  # s, the shipped DS_PING_INTERVAL
_ERROR_RE = re.compile(r"\b(ERROR|CRITICAL|ALERT|BUG)\b")


@dataclass
class KamailioFront:
    workdir: Path
    cores: frozenset[int] | None = None
    priority: str = "normal"
    rt_priority: int = 10
    kam: KamailioProxy | None = None
    pids: list[int] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)

    @staticmethod
    def check() -> None:
        if not kamailio_available():
            raise RuntimeError(f"Kamailio with TLS not found in {kamailio_root()}: "
                               "make asterisk-chroot")  # fmt: skip

    def prepare(self, backends: list[tuple[str, int]]) -> str:
        """Configure it for these instances (proxy_listen addresses); its internal
        address, the instances' whatsapp.outbound_proxy."""
        self.check()
        certs = self.workdir / "front-tls"
        cert, key = certs / "cert.pem", certs / "key.pem"
        ensure_dev_certificate(cert, key, HOSTNAME)
        self.backends = [f"sip:{host}:{port}" for host, port in backends]
        self.kam = KamailioProxy(
            self.workdir / "kamailio",
            backends=self.backends,
            cert_file=cert,
            key_file=key,
            ca_file=cert,  # nothing goes to Meta in the benchmark
            meta_port=free_port(),
            ping_interval=PING_INTERVAL,
        )
        return self.kam.internal_hostport

    @property
    def address(self) -> tuple[str, int]:
        """The public TLS listener: where "Meta" connects."""
        assert self.kam is not None
        return ("127.0.0.1", self.kam.public_port)

    def start(self, timeout: float = 20.0) -> None:
        """Start it once the instances listen; wait until it probes them all active."""
        assert self.kam is not None, "prepare() first"
        self.kam.start()
        for uri in self.backends:
            self.kam.wait_state(uri, "AP", timeout)
        self.pids = self.kam.processes()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                if self.cores is not None:
                    os.sched_setaffinity(pid, set(self.cores))
                set_priority(self.priority, pid, self.rt_priority)

    def cpu(self) -> CpuSample:
        """CPU of all its processes so far (a process gone since start counts 0)."""
        total = CpuSample(0.0, 0.0, 0.0, 0, 0, 0)
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError):
                s = read_cpu(pid)
                total = CpuSample(s.at, total.utime + s.utime, total.stime + s.stime,
                                  total.run_ns + s.run_ns, total.rss_kib + s.rss_kib,
                                  total.wait_ns + s.wait_ns)  # fmt: skip
        return total

    def alive(self) -> int:
        """How many of the processes seen at start are still running."""
        return sum(1 for pid in self.pids if Path(f"/proc/{pid}").exists())

    def stop(self) -> None:
        if self.kam is not None:
            self.kam.stop()

    def errors(self, limit: int = 20) -> list[str]:
        if self.kam is None:
            return []
        lines = [ln for ln in self.kam.log_text().splitlines() if _ERROR_RE.search(ln)]
        return lines[:limit]
