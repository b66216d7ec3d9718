"""The supervisor: signals, the periodic tick and watchdog, reload and drain.

It owns a :class:`gateway.app.runtime.Runtime` from start to stop:

* start: the PBX and HTTP listeners must bind (else exit 1); the WhatsApp TLS
  listener may fail and is retried every few seconds (health 1001). ``ready``
  is logged and systemd gets ``READY=1`` once the listeners are set up.
* the tick, every :data:`TICK`: the systemd watchdog, a jitter and setup-time
  sample of live calls and a chain check every :data:`SAMPLE_EVERY`, the TLS
  listener's retry, and ``STATUS=`` when it changed.
* SIGHUP: :func:`gateway.app.reload.reload_runtime`, one at a time.
* SIGTERM/SIGINT: drain. New calls and OPTIONS get 503 + Retry-After,
  ``/readyz`` fails, calls in progress go on until they end or
  ``shutdown.drain_timeout`` (then BYE with a Reason); exit 0. A second signal
  stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from gateway import __version__
from gateway.app.reload import reload_runtime
from gateway.app.runtime import TLS_RETRY, Runtime
from gateway.app.view import RuntimeView, status_text
from gateway.logging import get_logger
from gateway.ops.report import Report

__all__ = ["SAMPLE_EVERY", "TICK", "Supervisor"]

log = get_logger(__name__)

TICK = 0.5  # seconds: watchdog, status, samples, retries
SAMPLE_EVERY = 5.0  # jitter samples and setup times of live calls


class Supervisor:
    """Runs one runtime (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.view = RuntimeView(runtime)
        self.stopped = asyncio.Event()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._next_sample = 0.0
        self._next_tls_retry = 0.0
        self._next_watchdog = 0.0
        self._status = ""
        self._ready = False  # READY=1 sent: STATUS= updates may follow
        self._reloading = False
        self._drain_task: asyncio.Task[None] | None = None
        runtime.watch(self._update_status)

    # -- start and stop -----------------------------------------------------
    async def start(self) -> None:
        """Start the runtime (OSError: a listener that must bind did not), then tick."""
        rt = self.runtime
        await rt.start()
        now = rt.loop.time()
        self._next_sample = now + SAMPLE_EVERY
        self._next_tls_retry = now + TLS_RETRY
        self._tick_handle = rt.loop.call_at(now + TICK, self._tick)
        report = self.view.health_report()
        log.info("ready", version=__version__, health=report.status.name)
        self._status = self._status_text(report)
        rt.notifier.ready(self._status)
        self._ready = True
        self._watchdog(now)

    async def stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        await self.runtime.stop()

    def install_signals(self) -> None:
        loop = self.runtime.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # -- the periodic tick --------------------------------------------------------
    def _tick(self) -> None:
        rt = self.runtime
        now = rt.loop.time()
        try:
            self._watchdog(now)
            if now >= self._next_sample:
                self._next_sample = now + SAMPLE_EVERY
                rt.metrics.calls.sample_active(self.view.active_calls())
                rt.spawn(rt.tls.check_chain())
            if not rt.state.tls_listening and now >= self._next_tls_retry and not self._reloading:
                self._next_tls_retry = now + TLS_RETRY
                if rt.tls.context is None:
                    rt.load_certificate(rt.cfg)
                rt.spawn(rt.listen_tls())
            self._update_status()
        except Exception:
            log.exception("ops_tick_failed")
        self._tick_handle = rt.loop.call_at(now + TICK, self._tick)

    def _watchdog(self, now: float) -> None:
        notifier = self.runtime.notifier
        interval = notifier.watchdog_interval
        if interval is not None and now >= self._next_watchdog:
            self._next_watchdog = now + interval  # checked every TICK (WatchdogSec >= 2 s)
            notifier.watchdog()

    def _status_text(self, report: Report | None = None) -> str:
        return status_text(self.runtime, report or self.view.health_report())

    def _update_status(self) -> None:
        if not self._ready:
            return
        status = self._status_text()
        if status != self._status:
            self._status = status
            self.runtime.notifier.status(status)

    # -- SIGHUP: reload -------------------------------------------------------------
    def request_reload(self) -> None:
        if self._reloading:
            log.info("config_reload_already_running")
            return
        self.runtime.spawn(self.reload())

    async def reload(self) -> bool:
        """Reload the config file and certificate; True when applied."""
        rt = self.runtime
        if rt.config_path is None:
            return await reload_runtime(rt)  # logs that there is nothing to reload
        self._reloading = True
        rt.notifier.reloading()
        try:
            return await reload_runtime(rt)
        finally:
            self._reloading = False
            self._status = self._status_text()
            rt.notifier.ready(self._status)

    # -- SIGTERM: drain -------------------------------------------------------------
    def request_stop(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self.drain())
        else:
            log.warning("stop_now", why="second stop signal while draining")
            self.stopped.set()

    async def drain(self) -> None:
        """Refuse new calls, wait for the calls in progress (at most
        ``shutdown.drain_timeout``, then hang them up), and set :attr:`stopped`."""
        rt = self.runtime
        loop, calls, state = rt.loop, rt.calls, rt.state
        timeout = rt.cfg.shutdown.drain_timeout
        state.draining_since = loop.time()
        state.drain_deadline = deadline = state.draining_since + timeout
        calls.draining = True
        rt.endpoint.draining = True
        log.info("draining", active_calls=len(calls.calls), drain_timeout=timeout)
        self._status = self._status_text()
        rt.notifier.stopping(self._status)
        while calls.calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
            self._update_status()
        if calls.calls:
            log.warning("drain_timeout", active_calls=len(calls.calls), drain_timeout=timeout)
            calls.hangup_all("gateway shutting down (drain timeout)")
            await asyncio.sleep(0.3)  # let the BYEs go out
        else:
            log.info("drained")
        self.stopped.set()
