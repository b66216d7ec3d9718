"""What the runtime shows: the health report, readiness, and the metrics' view of it.

:class:`RuntimeView` reads a :class:`gateway.app.runtime.Runtime` (its services
and its :class:`gateway.app.runtime.RuntimeState`) and answers ``/health``,
``/readyz`` and :class:`gateway.ops.metrics.OpsView`; it changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.app.runtime import Runtime
from gateway.ops.health import (
    capacity_findings,
    draining_finding,
    listener_finding,
    number_findings,
    pbx_findings,
    reload_finding,
)
from gateway.ops.report import Finding, Report
from gateway.transport.rtp import FrameTimes

__all__ = ["RuntimeView", "status_text"]


class RuntimeView:
    """The health report, readiness and :class:`gateway.ops.metrics.OpsView` of a runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    # -- /health and /readyz --------------------------------------------------
    def health_report(self) -> Report:
        rt = self._rt
        cfg, state = rt.cfg, rt.state
        shared: list[Finding] = []
        if cfg.whatsapp.listen is not None:  # None: behind a proxy, which listens for Meta
            listener = listener_finding(
                state.tls_listening, str(cfg.whatsapp.listen), state.tls_listen_error
            )
            if listener is not None:
                shared.append(listener)
        if cfg.whatsapp.tls is not None:
            now = dt.datetime.now(dt.UTC)
            shared += rt.tls.findings(cfg.whatsapp.hostname, cfg.development, now)
        shared += pbx_findings(rt.prober.misses, rt.prober.where)
        active = len(rt.calls.calls)
        shared += capacity_findings(
            active, cfg.limits.max_calls, rt.ports.available, cfg.media.port_range
        )
        drain = draining_finding(state.draining, active, self._deadline_text())
        if drain is not None:
            shared.append(drain)
        refused = reload_finding(state.reload_problems)
        if refused is not None:
            shared.append(refused)
        numbers = [(n.number, number_findings(n)) for n in cfg.whatsapp.numbers]
        return Report.build(cfg.whatsapp.hostname, shared, numbers)

    def _deadline_text(self) -> str | None:
        deadline = self._rt.state.drain_deadline
        if deadline is None:
            return None
        left = max(0.0, deadline - self._rt.loop.time())
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=left)
        return f"{when:%Y-%m-%d %H:%M:%S} UTC (shutdown.drain_timeout)"

    def readiness(self) -> tuple[bool, dict[str, object]]:
        state = self._rt.state
        reasons: list[str] = []
        if not state.tls_listening and self._rt.cfg.whatsapp.listen is not None:
            reasons.append(f"whatsapp TLS listener not accepting ({state.tls_listen_error})")
        if not state.pbx_listening:
            reasons.append("pbx listener not up")
        if state.draining:
            reasons.append("draining")
        return not reasons, {"ready": not reasons, "reasons": reasons}

    # -- OpsView for the metrics collector ------------------------------------
    def active_calls(self) -> Sequence[Any]:
        return list(self._rt.calls.calls.values())

    def cert_expiry(self) -> float | None:
        return self._rt.tls.expiry_timestamp

    def loop_lag(self) -> float:
        return self._rt.lag.worst()

    def draining(self) -> bool:
        return self._rt.state.draining

    def capacity(self) -> tuple[int, int]:
        return self._rt.cfg.limits.max_calls, self._rt.ports.available

    def frame_times_view(self) -> Mapping[str, FrameTimes]:
        return self._rt.frame_times

    def extra_counters(self) -> Mapping[str, float]:
        rt = self._rt
        return {
            "pbx_probe_misses": rt.prober.misses,
            "records_written": rt.records.written,
            "record_errors": rt.records.errors,
            "reloads_ok": rt.state.reloads_applied,
            "reloads_refused": rt.state.reloads_refused,
        }


def status_text(runtime: Runtime, report: Report) -> str:
    """The one-line STATUS= for systemd: active calls, health, draining."""
    active = len(runtime.calls.calls)
    text = f"{active} active call{'s' if active != 1 else ''}, health {report.status.name}"
    if runtime.state.draining:
        text = "draining: " + text
    return text
