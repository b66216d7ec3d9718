"""The running gateway: every service, built whole by :func:`gateway.app.build.build`.

A :class:`Runtime` holds the services (none of them waits for :meth:`start` to
exist) and what the health report reads about them (:class:`RuntimeState`).
:meth:`Runtime.start` binds the listeners and starts the timers; the
:class:`gateway.app.supervisor.Supervisor` decides when to start, reload, drain
and stop it. SIP events arrive at :meth:`Runtime.on_sip_event` (the PBX prober
first, then the call table) and ended calls at :meth:`Runtime.on_call_end`
(the call record and its metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.b2bua.call import Call
from gateway.b2bua.calls import CallManager
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.probe import PbxProber
from gateway.config import Config
from gateway.logging import configure_logging, get_logger
from gateway.metaapi.health import MetaHealthPoller
from gateway.ops.admission import OverloadControls
from gateway.ops.http import HttpServer
from gateway.ops.lag import LagProbe
from gateway.ops.metrics import Metrics
from gateway.ops.records import RecordWriter, build_record
from gateway.ops.systemd import Notifier
from gateway.ops.tlsstate import TlsState
from gateway.sip.transaction import Event, TransactionManager
from gateway.transport.rtp import FrameTimes, MediaClock, PortAllocator
from gateway.transport.sip import AccessList, SipStack

__all__ = ["TLS_RETRY", "Runtime", "RuntimeState"]

log = get_logger(__name__)

TLS_RETRY = 5.0  # a TLS listener that is down is retried this often


@dataclass
class RuntimeState:
    """What the health report, readiness and metrics read besides the services."""

    tls_listening: bool = False
    tls_listen_error: str | None = None
    pbx_listening: bool = False
    draining_since: float | None = None  # loop time of SIGTERM
    drain_deadline: float | None = None
    reload_problems: list[str] | None = None  # why the last reload was refused
    reloads_applied: int = 0
    reloads_refused: int = 0

    @property
    def draining(self) -> bool:
        return self.draining_since is not None


@dataclass(eq=False)
class Runtime:
    """The services of one gateway instance (see the module docstring)."""

    cfg: Config
    config_path: Path | None  # reloaded on SIGHUP, with ``overlays`` merged over it
    overlays: tuple[Path, ...]
    loop: asyncio.AbstractEventLoop
    notifier: Notifier
    manager: TransactionManager
    endpoint: Endpoint
    stack: SipStack
    wa_acl: AccessList
    pbx_acl: AccessList
    ports: PortAllocator
    media_clock: MediaClock
    frame_times: dict[str, FrameTimes]
    calls: CallManager
    prober: PbxProber
    overload: OverloadControls
    lag: LagProbe
    tls: TlsState
    records: RecordWriter
    metrics: Metrics
    meta_health: MetaHealthPoller
    http: HttpServer
    state: RuntimeState = field(default_factory=RuntimeState)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _watchers: list[Callable[[], None]] = field(default_factory=list)

    # -- start and stop -----------------------------------------------------
    async def start(self) -> None:
        """Load the certificate, bind the listeners (PBX and HTTP must bind: OSError
        otherwise; the TLS listener may fail and is retried), start the timers."""
        cfg = self.cfg
        self.load_certificate(cfg)
        pbx = cfg.pbx.listen
        await self.stack.listen_udp("pbx", pbx.host, pbx.port, self.pbx_acl)
        await self.stack.listen_stream("pbx", pbx.host, pbx.port, self.pbx_acl)
        self.state.pbx_listening = True
        log.info("listening", leg="pbx", transport="udp+tcp", address=f"{pbx.host}:{pbx.port}")
        await self._listen_proxy()
        await self.listen_tls()
        address = cfg.pbx.address
        self.stack.set_peer_leg(cfg.pbx.transport, address.host, address.port, "pbx")
        self.prober.start()
        self.lag.start()
        self.meta_health.start()
        http = cfg.http.listen
        await self.http.start(http.host, http.port)
        log.info("listening", leg="http", address=f"{http.host}:{http.port}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.tls.check_chain(), 5.0)

    async def stop(self) -> None:
        """Hang up what is left, close every socket and file; log ``stopped``."""
        await self.meta_health.stop()
        self.lag.stop()
        self.prober.stop()
        if self.calls.calls:
            self.calls.hangup_all("gateway shutting down")
            await asyncio.sleep(0.2)  # let the BYEs go out
        self.media_clock.close()
        await self.http.stop()
        await self.stack.close()
        for task in self._tasks:
            task.cancel()
        self.records.close()
        log.info("stopped")
        self.notifier.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task that :meth:`stop` cancels if still running."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when something the status line shows may have changed
        (the TLS listener came up, the PBX stopped or started answering)."""
        self._watchers.append(callback)

    def changed(self) -> None:
        for callback in self._watchers:
            callback()

    # -- the WhatsApp listeners -------------------------------------------------
    def load_certificate(self, cfg: Config) -> bool:
        """Put ``whatsapp.tls``'s certificate in force; False (logged) when it is unusable."""
        tls = cfg.whatsapp.tls
        if tls is None:  # behind a proxy without a TLS listener: nothing to load
            return False
        prepared, problems = TlsState.prepare(tls.cert_file, tls.key_file)
        if prepared is None:
            self.tls.fail(problems)
            for problem in problems:
                log.error(
                    "tls_certificate_unusable", code=problem.code, problem=problem.description
                )
            return False
        self.tls.commit(prepared)
        info = prepared.info
        log.info(
            "tls_certificate_loaded",
            sha256=info.fingerprint,
            not_after=info.not_after.isoformat(),
            names=list(info.dns_names),
        )
        return True

    async def _listen_proxy(self) -> None:
        """Behind a proxy: UDP and TCP on whatsapp.proxy_listen, open to trusted_proxies."""
        wa = self.cfg.whatsapp
        if wa.proxy_listen is None:
            return
        acl = AccessList(wa.trusted_proxies)
        host, port = wa.proxy_listen
        await self.stack.listen_udp("whatsapp", host, port, acl)
        await self.stack.listen_stream("whatsapp", host, port, acl)
        if wa.outbound_proxy is not None:
            out = wa.outbound_proxy
            self.stack.set_peer_leg(wa.proxy_transport, out.host, out.port, "whatsapp")
        log.info("listening", leg="whatsapp", transport="udp+tcp", address=f"{host}:{port}",
                 trusted_proxies=[str(n) for n in wa.trusted_proxies])  # fmt: skip

    async def listen_tls(self) -> None:
        """Open the WhatsApp TLS listener unless it is open; on failure say why in the
        state (health 1001) and leave it to the next retry."""
        state, ctx, listen = self.state, self.tls.context, self.cfg.whatsapp.listen
        if state.tls_listening or listen is None:
            return
        if ctx is None:
            state.tls_listen_error = "no usable certificate and key"
            return
        try:
            host, port = await self.stack.listen_stream(
                "whatsapp", listen.host, listen.port, self.wa_acl, ctx
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            if state.tls_listen_error != why:
                log.error("tls_listen_failed", address=str(listen), error=why, retry=TLS_RETRY)
            state.tls_listen_error = why
            return
        state.tls_listening = True
        state.tls_listen_error = None
        log.info("listening", leg="whatsapp", transport="tls", address=f"{host}:{port}")
        self.changed()

    # -- events from the services ---------------------------------------------
    def on_sip_event(self, event: Event, leg: str) -> None:
        """The SIP stack's events: the PBX probe's own first, then the call table."""
        if self.prober.claims(event):
            return
        self.calls.handle(event, leg)

    def on_call_end(self, call: Call, reason: str) -> None:
        """An ended call: its record (written) and its totals (metrics)."""
        try:
            record = build_record(call, time.time() - self.loop.time())
            self.metrics.calls.ended(call, record)
            self.records.write(record)
        except Exception:
            log.exception("call_record_failed", call=getattr(call, "key", "?"))

    def on_reject(self, direction: str, status: int) -> None:
        """A new INVITE refused by the call table (counted where it is decided)."""
        self.metrics.calls.rejected(direction, status)

    # -- a reload that was accepted ----------------------------------------------
    def apply(self, effective: Config) -> None:
        """Put a reloaded config in force (the keys :func:`merge_live` let through)."""
        old = self.cfg
        self.cfg = effective
        self.meta_health.configure(effective)
        self.calls.cfg = effective
        self.prober.set_interval(effective.pbx.probe_interval)
        if (effective.logging.level, effective.logging.format) != (
            old.logging.level,
            old.logging.format,
        ):
            configure_logging(effective.logging.level, effective.logging.format)
        if effective.records != old.records:
            self.records.close()
            written, errors = self.records.written, self.records.errors
            rec = effective.records
            self.records = RecordWriter(rec.path, max_bytes=rec.max_bytes, keep=rec.keep)
            self.records.written, self.records.errors = written, errors
        else:
            self.records.reopen()
