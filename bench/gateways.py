"""The system under test: one gateway daemon reached directly over TLS, or N
instances (each its own process, core, ports and media range, one shared
nonce secret) behind Kamailio."""

from __future__ import annotations

import contextlib
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemon import CpuSample, Daemon, ProxySide, read_cpu
from bench.front import KamailioFront
from bench.placement import Placement

FRONTS = ("direct", "kamailio")


def media_ranges(calls: int, instances: int) -> list[tuple[int, int]]:
    """Even port ranges below the ephemeral range, one per instance, side by side,
    each big enough for every call (the Call-ID hash may send most to one)."""
    size = 4 * calls + 400
    total = size * instances
    low = 20000 + 2 * random.randrange(0, (12000 - total) // 2) if total < 12000 else 10000
    return [(low + i * size, low + (i + 1) * size - 1) for i in range(instances)]


@dataclass
class Gateways:
    workdir: Path
    placement: Placement
    front_kind: str  # "direct" or "kamailio"
    daemons: list[Daemon] = field(default_factory=list)
    front: KamailioFront | None = None

    @classmethod
    def build(
        cls,
        workdir: Path,
        *,
        instances: int,
        front: str,
        placement: Placement,
        pbx_address: tuple[str, int],
        calls: int,
        priority: str,
        log_level: str,
        source: Path | None,
        gc_mode: str,
        overrides: dict[str, Any],
        srtp: str = "sdes",
    ) -> Gateways:
        if front == "direct" and instances != 1:
            raise ValueError("several instances need a front (kamailio)")
        gw = cls(workdir, placement, front)
        proxy: ProxySide | None = None
        if front == "kamailio":
            gw.front = KamailioFront(workdir, placement.others, priority, placement.front_rt)
            secret = workdir / "nonce.secret"
            secret.write_text(secrets.token_hex(32) + "\n")
            secret.chmod(0o600)
            proxy = ProxySide(secret, outbound_proxy="")  # the address once Kamailio is set up
        for i, media in enumerate(media_ranges(calls, instances)):
            name = "daemon" if front == "direct" else f"instance {i + 1}"
            sub = workdir if front == "direct" else workdir / f"instance-{i + 1}"
            sub.mkdir(parents=True, exist_ok=True)
            gw.daemons.append(
                Daemon(
                    sub,
                    pbx_address=pbx_address,
                    max_calls=max(calls + 10, 200),
                    core=placement.instance_cores[i],
                    media_ports=media,
                    overrides=overrides,
                    priority=priority,
                    log_level=log_level,
                    source=source,
                    gc_mode=gc_mode,
                    proxy=proxy,
                    name=name,
                    srtp=srtp,
                )
            )
        if gw.front is not None and proxy is not None:
            listens = [("127.0.0.1", d.assign_ports()["proxy"]) for d in gw.daemons]
            internal = gw.front.prepare(listens)
            for d in gw.daemons:
                d.proxy = ProxySide(proxy.nonce_secret_file, outbound_proxy=internal)
        return gw

    def start(self) -> None:
        """Blocking: every instance ready, then the front probing them all active."""
        for d in self.daemons:
            d.start()
        if self.front is not None:
            self.front.start()

    @property
    def meta_address(self) -> tuple[str, int]:
        """Where the load generator connects as Meta."""
        return self.front.address if self.front is not None else self.daemons[0].tls_address

    def cpu(self) -> list[CpuSample]:
        return [read_cpu(d.pid) for d in self.daemons]

    def instance_of(self, media_port: int) -> int:
        """Which instance answered a call, by the media port in its SDP answer."""
        for i, d in enumerate(self.daemons):
            if d.media_ports[0] <= media_port <= d.media_ports[1]:
                return i
        return -1

    def ports(self) -> set[int]:
        """Local ports of the instances' media and PBX-side sockets."""
        out: set[int] = set()
        for d in self.daemons:
            out |= set(range(d.media_ports[0], d.media_ports[1] + 1))
            out.add(d.ports["pbx_listen"])
            if d.proxy is not None:
                out.add(d.ports["proxy"])
        return out

    def stop(self) -> list[int | None]:
        """Stop the front first (no new requests), then every instance; exit statuses."""
        if self.front is not None:
            with contextlib.suppress(Exception):
                self.front.stop()
        return [d.stop() for d in self.daemons]
