"""The one loop-lag probe: its window for wagw_event_loop_lag_seconds, and the overload
monitor it feeds (gateway/ops/lag.py)."""

from __future__ import annotations

import asyncio

from gateway.ops.lag import LAG_WINDOW, PROBE_INTERVAL, LagProbe
from gateway.sip.overload import LoadMonitor


def test_worst_lag_over_the_window_and_the_monitor_fed() -> None:
    loop = asyncio.new_event_loop()
    try:
        monitor = LoadMonitor(lag_threshold=0.1, hold=1.0, interval=PROBE_INTERVAL)
        probe = LagProbe(loop, monitor)
        assert probe.interval == PROBE_INTERVAL and probe.worst(0.0) == 0.0
        probe.observe(1.0, 0.002)
        probe.observe(1.05, 0.150)  # one bad moment
        probe.observe(1.1, 0.001)
        assert probe.worst(1.1) == 0.150
        assert monitor.lagging(1.1)  # admission saw the same reading
        assert probe.worst(1.0 + LAG_WINDOW - 0.5) == 0.150
        assert probe.worst(1.0 + LAG_WINDOW + 1.0) == 0.0  # out of the window
        probe.observe(30.0, 0.004)
        assert probe.worst(30.0) == 0.004
    finally:
        loop.close()


def test_without_overload_control_the_probe_still_measures() -> None:
    loop = asyncio.new_event_loop()
    try:
        probe = LagProbe(loop, None)
        probe.observe(5.0, 0.03)
        assert probe.worst(5.2) == 0.03
    finally:
        loop.close()
