"""The event loop's lag: one probe for admission control and for the metrics.

:class:`LagProbe` is a timer every :data:`PROBE_INTERVAL` (50 ms); how late it
fires is the loop's lag. Each reading goes to the overload monitor
(:class:`gateway.sip.overload.LoadMonitor`, whose view is
``wagw_sip_loop_lag_seconds`` and which makes new INVITEs wait while the loop
lags) and into a window of :data:`LAG_WINDOW` seconds whose worst reading is
``wagw_event_loop_lag_seconds``. Nothing per probe allocates beyond the float
of the reading: the window is a ring of the worst lag per half second.
"""

from __future__ import annotations

import asyncio

from gateway.sip.overload import LoadMonitor

__all__ = ["LAG_WINDOW", "PROBE_INTERVAL", "LagProbe"]

PROBE_INTERVAL = 0.05  # seconds between probes (20 timer callbacks a second)
LAG_WINDOW = 10.0  # wagw_event_loop_lag_seconds is the worst lag over this window
_SLOT = 0.5  # the window's resolution in seconds


class LagProbe:
    """A timer every ``interval``: how late it fires is the loop's lag (see above)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        monitor: LoadMonitor | None,
        *,
        window: float = LAG_WINDOW,
    ) -> None:
        self._loop = loop
        self._monitor = monitor
        self.interval = monitor.interval if monitor is not None else PROBE_INTERVAL
        self._slots = max(1, round(window / _SLOT))
        self._slot_of = [-1] * self._slots  # which half second each slot holds
        self._worst = [0.0] * self._slots
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        now = self._loop.time()
        self.observe(now, max(0.0, now - self._due))
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._run)

    def observe(self, now: float, lag: float) -> None:
        """One reading (the timer's; public for tests on a fake clock)."""
        if self._monitor is not None:
            self._monitor.probed(now, lag)
        slot = int(now / _SLOT)
        i = slot % self._slots
        if self._slot_of[i] != slot:
            self._slot_of[i] = slot
            self._worst[i] = lag
        elif lag > self._worst[i]:
            self._worst[i] = lag

    def worst(self, now: float | None = None) -> float:
        """The largest lag seen over the window up to ``now`` (default: the loop's time)."""
        current = int((self._loop.time() if now is None else now) / _SLOT)
        oldest = current - self._slots
        return max(
            (w for s, w in zip(self._slot_of, self._worst, strict=True) if s > oldest),
            default=0.0,
        )
