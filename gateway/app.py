"""The daemon: wires config, listeners, the SIP core and the HTTP server; handles signals.

Service life (README, "Running as a service"):

* start: PBX and HTTP listeners must bind (else exit 1). The WhatsApp TLS
  listener may fail (port taken, certificate or key unusable): the daemon then
  runs on, retries every few seconds and reports why on ``/health`` (1001 and
  the certificate's own code) instead of exiting. ``ready`` is logged and
  systemd gets ``READY=1`` once the listeners are set up.
* SIGHUP: reload the config file and the TLS certificate; calls in progress
  are untouched. A config that does not validate, or a certificate/key pair
  that does not load, is refused (``config_reload_refused`` names the keys)
  and the running config stays. Keys that need new sockets (listen
  addresses, networks, media, http, sip) keep their running values until a
  restart (``config_reload_needs_restart``).
* SIGTERM/SIGINT: drain. New calls and OPTIONS get 503 + Retry-After,
  ``/readyz`` fails, calls in progress go on until they end or
  ``shutdown.drain_timeout`` (then BYE with a Reason); exit 0. A second
  signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.b2bua.calls import CallManager
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.port import LegAddress, SipPort
from gateway.config import Config, ConfigError, MediaConfig, check_files, load_config
from gateway.logging import configure_logging, get_logger
from gateway.media.bridge import BridgeFactory
from gateway.media.settings import MediaSettings
from gateway.metaapi.health import MetaHealthCollector, MetaHealthPoller
from gateway.ops.admission import OverloadControls, build_throttle
from gateway.ops.health import (
    Finding,
    PbxProber,
    Report,
    capacity_findings,
    draining_finding,
    listener_finding,
    number_findings,
    pbx_findings,
    reload_finding,
)
from gateway.ops.http import HttpServer
from gateway.ops.metrics import Metrics
from gateway.ops.records import RecordWriter, build_record
from gateway.ops.systemd import Notifier
from gateway.ops.tlsstate import TlsState
from gateway.sip.auth import DigestServer
from gateway.sip.transaction import Event, RequestReceived, Target, TransactionManager
from gateway.transport.guard import ConnectionLimits
from gateway.transport.rtp import FrameTimes, MediaClock, PortAllocator
from gateway.transport.sip import AccessList, SipStack
from gateway.transport.tls import client_context

log = get_logger(__name__)

TICK = 0.5  # seconds: loop-lag probe, watchdog, status, retries
LAG_WINDOW = 10.0  # wagw_event_loop_lag_seconds is the worst delay over this window
SAMPLE_EVERY = 5.0  # jitter samples and setup times of live calls
TLS_RETRY = 5.0  # a TLS listener that is down is retried this often


class _LoopScheduler:
    """The event loop as a :class:`gateway.b2bua.port.Scheduler`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback)


def media_settings(media: MediaConfig) -> MediaSettings:
    """The bridge's plain settings from the config's ``media`` section."""
    return MediaSettings(
        no_media_timeout=media.no_media_timeout,
        opus_complexity=media.opus_complexity,
        latch=media.latch,
        latch_window=media.latch_window,
    )


def merge_live(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the keys that need new sockets or objects kept from ``old``; and the
    names of those keys that the new file changes (they wait for a restart)."""
    keep_wa = ("listen", "hostname", "allowed_networks", "advertise", "trusted_proxies",
               "proxy_listen", "proxy_transport", "outbound_proxy")  # fmt: skip
    keep_pbx = ("address", "transport", "listen", "trusted_networks")
    changed: list[str] = []
    for section, keys in (("whatsapp", keep_wa), ("pbx", keep_pbx)):
        for key in keys:
            if getattr(getattr(new, section), key) != getattr(getattr(old, section), key):
                changed.append(f"{section}.{key}")
    old_ca = old.whatsapp.tls.ca_file if old.whatsapp.tls is not None else None
    if (new.whatsapp.tls.ca_file if new.whatsapp.tls is not None else None) != old_ca:
        changed.append("whatsapp.tls.ca_file")
    for section in ("media", "http", "sip", "cluster"):
        if getattr(new, section) != getattr(old, section):
            changed.append(section)
    tls = new.whatsapp.tls
    if tls is not None:
        tls = tls.model_copy(update={"ca_file": old_ca})
    wa_update: dict[str, Any] = {k: getattr(old.whatsapp, k) for k in keep_wa}
    wa = new.whatsapp.model_copy(update={**wa_update, "tls": tls})
    pbx = new.pbx.model_copy(update={k: getattr(old.pbx, k) for k in keep_pbx})
    effective = new.model_copy(
        update={
            "whatsapp": wa,
            "pbx": pbx,
            **{key: getattr(old, key) for key in ("media", "http", "sip", "cluster")},
        }
    )
    return effective, changed


class Gateway:
    """One running gateway instance."""

    def __init__(
        self,
        cfg: Config,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        overlays: Sequence[Path] = (),
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overlays = tuple(overlays)  # merged over config_path on reload too
        self.notifier = notifier or Notifier()
        self.stopped = asyncio.Event()
        self.stack: SipStack | None = None
        self.http: HttpServer | None = None
        self.calls: CallManager | None = None
        self.endpoint: Endpoint | None = None
        self.media_clock: MediaClock | None = None
        self.ports: PortAllocator | None = None
        self.prober: PbxProber | None = None
        self.metrics = Metrics()
        self.meta_health = MetaHealthPoller(cfg)  # Meta's health_status (meta_api.poll_health)
        self.frame_times = {"whatsapp": FrameTimes(), "pbx": FrameTimes()}
        self.tls = TlsState()
        self.tls_listening = False
        self.tls_listen_error: str | None = None
        self.pbx_listening = False
        self.draining_since: float | None = None
        self.drain_deadline: float | None = None
        self.reload_problems: list[str] | None = None
        self.reloads = {"applied": 0, "refused": 0}
        self.records = RecordWriter(
            cfg.records.path, max_bytes=cfg.records.max_bytes, keep=cfg.records.keep
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acl: AccessList | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        self._lags: deque[tuple[float, float]] = deque()
        self._next_sample = 0.0
        self._next_tls_retry = 0.0
        self._next_watchdog = 0.0
        self._status = ""
        self._ready = False  # READY=1 sent: STATUS= updates may follow
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloading = False
        self._drain_task: asyncio.Task[None] | None = None
        self.overload: OverloadControls | None = None

    # -- start and stop -----------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._loop = loop
        manager = TransactionManager()
        endpoint = Endpoint(manager, loop.time, user_agent=cfg.sip.user_agent)
        self.endpoint = endpoint
        self._load_certificate(cfg)
        try:
            ca_file = cfg.whatsapp.tls.ca_file if cfg.whatsapp.tls is not None else None
            tls_client: ssl.SSLContext | None = client_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls_client_context_failed", error=str(exc))
            tls_client = None
        stack = SipStack(
            manager,
            self._on_sip_event,
            max_message_size=cfg.sip.max_message_size,
            client_ssl=tls_client,
            limits=ConnectionLimits(**cfg.sip.connections.model_dump()),
        )
        self.stack = stack
        self.ports = PortAllocator(cfg.media.address, *cfg.media.port_range)
        self.media_clock = MediaClock(loop)
        scheduler = _LoopScheduler(loop)
        sip = SipPort(manager, scheduler, stack.flush, cfg.sip.user_agent)
        # Shared by the instances behind one proxy (cluster.nonce_secret_file): a nonce
        # issued here verifies on any of them.
        secret = cfg.cluster.read_nonce_secret() or secrets.token_bytes(32)
        digest = DigestServer(secret, cfg.whatsapp.hostname, algorithms=("MD5",))
        bridges = BridgeFactory(
            loop, self.ports, self.media_clock, media_settings(cfg.media), self.frame_times
        )
        throttle = build_throttle(cfg, digest.nonce_ttl)
        self.calls = CallManager(
            cfg, sip, endpoint, bridges, digest, on_call_end=self._on_call_end, throttle=throttle
        )
        self.overload = OverloadControls(cfg, loop, stack, manager, self.calls, throttle)
        self._acl = AccessList(cfg.whatsapp.allowed_networks)
        pbx_acl = AccessList(cfg.pbx.trusted_networks)
        pbx = cfg.pbx.listen
        await stack.listen_udp("pbx", pbx.host, pbx.port, pbx_acl)
        await stack.listen_stream("pbx", pbx.host, pbx.port, pbx_acl)
        self.pbx_listening = True
        log.info("listening", leg="pbx", transport="udp+tcp", address=f"{pbx.host}:{pbx.port}")
        await self._listen_proxy(stack)
        await self._listen_tls()
        stack.set_peer_leg(cfg.pbx.transport, cfg.pbx.address.host, cfg.pbx.address.port, "pbx")
        adv = cfg.sip_advertise
        self.prober = PbxProber(
            sip,
            scheduler,
            LegAddress(cfg.pbx.transport, adv.host, adv.port),
            Target(cfg.pbx.transport, cfg.pbx.address.host, cfg.pbx.address.port),
            cfg.pbx.probe_interval,
            on_change=self._update_status,
        )
        self.prober.start()
        self.metrics.bind(stack.stats, manager, self)
        self.metrics.registry.register(MetaHealthCollector(self.meta_health))
        self.metrics.registry.register(self.overload.collector())
        self.meta_health.start()
        self.http = HttpServer(
            self.metrics, self.health_report, self.readiness, annotate=self.meta_health.annotate
        )
        await self.http.start(cfg.http.listen.host, cfg.http.listen.port)
        log.info("listening", leg="http", address=f"{cfg.http.listen.host}:{cfg.http.listen.port}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.tls.check_chain(), 5.0)
        now = loop.time()
        self._tick_due = now + TICK
        self._next_sample = now + SAMPLE_EVERY
        self._next_tls_retry = now + TLS_RETRY
        self._tick_handle = loop.call_at(self._tick_due, self._tick)
        report = self.health_report()
        log.info("ready", version=__version__, health=report.status.name)
        self._status = self._status_text(report)
        self.notifier.ready(self._status)
        self._ready = True
        self._watchdog(now)

    def _load_certificate(self, cfg: Config) -> bool:
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

    async def _listen_proxy(self, stack: SipStack) -> None:
        """Behind a proxy: UDP and TCP on whatsapp.proxy_listen, open to trusted_proxies."""
        wa = self.cfg.whatsapp
        if wa.proxy_listen is None:
            return
        acl = AccessList(wa.trusted_proxies)
        host, port = wa.proxy_listen
        await stack.listen_udp("whatsapp", host, port, acl)
        await stack.listen_stream("whatsapp", host, port, acl)
        if wa.outbound_proxy is not None:
            out = wa.outbound_proxy
            stack.set_peer_leg(wa.proxy_transport, out.host, out.port, "whatsapp")
        log.info("listening", leg="whatsapp", transport="udp+tcp", address=f"{host}:{port}",
                 trusted_proxies=[str(n) for n in wa.trusted_proxies])  # fmt: skip

    async def _listen_tls(self) -> None:
        stack, ctx, acl = self.stack, self.tls.context, self._acl
        listen = self.cfg.whatsapp.listen
        if stack is None or acl is None or self.tls_listening or listen is None:
            return
        if ctx is None:
            self.tls_listen_error = "no usable certificate and key"
            return
        try:
            host, port = await stack.listen_stream("whatsapp", listen.host, listen.port, acl, ctx)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            if self.tls_listen_error != why:
                log.error("tls_listen_failed", address=str(listen), error=why, retry=TLS_RETRY)
            self.tls_listen_error = why
            return
        self.tls_listening = True
        self.tls_listen_error = None
        log.info("listening", leg="whatsapp", transport="tls", address=f"{host}:{port}")
        self._update_status()

    async def stop(self) -> None:
        await self.meta_health.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.overload is not None:
            self.overload.stop()
        if self.prober is not None:
            self.prober.stop()
        if self.calls is not None and self.calls.calls:
            self.calls.hangup_all("gateway shutting down")
            await asyncio.sleep(0.2)  # let the BYEs go out
        if self.media_clock is not None:
            self.media_clock.close()
        if self.http is not None:
            await self.http.stop()
        if self.stack is not None:
            await self.stack.close()
        for task in self._tasks:
            task.cancel()
        self.records.close()
        log.info("stopped")
        self.notifier.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- SIP events: the PBX probe first, then the call table ----------------
    def _on_sip_event(self, event: Event, leg: str) -> None:
        prober, calls = self.prober, self.calls
        if prober is not None and prober.claims(event):
            return
        if calls is None:
            return
        if isinstance(event, RequestReceived) and event.request.method == "INVITE":
            before = dict(calls.counters.rejected or {})
            calls.handle(event, leg)
            after = calls.counters.rejected or {}
            if after != before:
                direction = "inbound" if leg == "whatsapp" else "outbound"
                for status, n in after.items():
                    if n > before.get(status, 0):
                        self.metrics.calls.rejected(direction, status, n - before.get(status, 0))
            return
        calls.handle(event, leg)

    def _on_call_end(self, call: Any, reason: str) -> None:
        try:
            loop_now = self._loop.time() if self._loop is not None else time.monotonic()
            record = build_record(call, time.time() - loop_now)
            self.metrics.calls.ended(call, record)
            self.records.write(record)
        except Exception:
            log.exception("call_record_failed", call=getattr(call, "key", "?"))

    # -- health -------------------------------------------------------------
    def health_report(self) -> Report:
        cfg = self.cfg
        shared: list[Finding] = []
        if cfg.whatsapp.listen is not None:  # None: behind a proxy, which listens for Meta
            listener = listener_finding(
                self.tls_listening, str(cfg.whatsapp.listen), self.tls_listen_error
            )
            if listener is not None:
                shared.append(listener)
        if cfg.whatsapp.tls is not None:
            now = dt.datetime.now(dt.UTC)
            shared += self.tls.findings(cfg.whatsapp.hostname, cfg.development, now)
        if self.prober is not None:
            shared += pbx_findings(self.prober.misses, self.prober.where)
        active = len(self.calls.calls) if self.calls is not None else 0
        free = self.ports.available if self.ports is not None else 2
        shared += capacity_findings(active, cfg.limits.max_calls, free, cfg.media.port_range)
        drain = draining_finding(self.draining(), active, self._deadline_text())
        if drain is not None:
            shared.append(drain)
        refused = reload_finding(self.reload_problems)
        if refused is not None:
            shared.append(refused)
        numbers = [(n.number, number_findings(n)) for n in cfg.whatsapp.numbers]
        return Report.build(cfg.whatsapp.hostname, shared, numbers)

    def _deadline_text(self) -> str | None:
        if self.drain_deadline is None or self._loop is None:
            return None
        left = max(0.0, self.drain_deadline - self._loop.time())
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=left)
        return f"{when:%Y-%m-%d %H:%M:%S} UTC (shutdown.drain_timeout)"

    def readiness(self) -> tuple[bool, dict[str, object]]:
        reasons: list[str] = []
        if not self.tls_listening and self.cfg.whatsapp.listen is not None:
            reasons.append(f"whatsapp TLS listener not accepting ({self.tls_listen_error})")
        if not self.pbx_listening:
            reasons.append("pbx listener not up")
        if self.draining():
            reasons.append("draining")
        return not reasons, {"ready": not reasons, "reasons": reasons}

    # -- OpsView for the metrics collector ------------------------------------
    def active_calls(self) -> Sequence[Any]:
        return list(self.calls.calls.values()) if self.calls is not None else []

    def cert_expiry(self) -> float | None:
        return self.tls.expiry_timestamp

    def loop_lag(self) -> float:
        return max((lag for _, lag in self._lags), default=0.0)

    def draining(self) -> bool:
        return self.draining_since is not None

    def capacity(self) -> tuple[int, int]:
        return self.cfg.limits.max_calls, self.ports.available if self.ports is not None else 0

    def frame_times_view(self) -> Mapping[str, FrameTimes]:
        return self.frame_times

    def extra_counters(self) -> Mapping[str, float]:
        return {
            "pbx_probe_misses": self.prober.misses if self.prober is not None else 0,
            "records_written": self.records.written,
            "record_errors": self.records.errors,
            "reloads_ok": self.reloads["applied"],
            "reloads_refused": self.reloads["refused"],
        }

    # -- the periodic tick: lag, samples, watchdog, status, TLS retry --------
    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(0.0, now - self._tick_due)
        lags = self._lags
        lags.append((now, lag))
        while lags and lags[0][0] < now - LAG_WINDOW:
            lags.popleft()
        try:
            self._watchdog(now)
            if now >= self._next_sample:
                self._next_sample = now + SAMPLE_EVERY
                self.metrics.calls.sample_active(self.active_calls())
                self._spawn(self.tls.check_chain())
            if not self.tls_listening and now >= self._next_tls_retry and not self._reloading:
                self._next_tls_retry = now + TLS_RETRY
                if self.tls.context is None:
                    self._load_certificate(self.cfg)
                self._spawn(self._listen_tls())
            self._update_status()
        except Exception:
            log.exception("ops_tick_failed")
        self._tick_due = now + TICK
        self._tick_handle = loop.call_at(self._tick_due, self._tick)

    def _watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_watchdog:
            self._next_watchdog = now + interval  # checked every TICK (WatchdogSec >= 2 s)
            self.notifier.watchdog()

    def _status_text(self, report: Report | None = None) -> str:
        report = report or self.health_report()
        active = len(self.calls.calls) if self.calls is not None else 0
        text = f"{active} active call{'s' if active != 1 else ''}, health {report.status.name}"
        if self.draining():
            text = "draining: " + text
        return text

    def _update_status(self) -> None:
        if not self._ready:
            return
        status = self._status_text()
        if status != self._status:
            self._status = status
            self.notifier.status(status)

    # -- SIGHUP: reload -------------------------------------------------------
    def request_reload(self) -> None:
        if self._reloading:
            log.info("config_reload_already_running")
            return
        self._spawn(self.reload())

    async def reload(self) -> bool:
        """Reload the config file and certificate; True when applied."""
        if self.config_path is None:
            log.warning("config_reload_unavailable", why="started without a config file")
            return False
        self._reloading = True
        self.notifier.reloading()
        try:
            return await self._reload()
        finally:
            self._reloading = False
            self._status = self._status_text()
            self.notifier.ready(self._status)

    async def _reload(self) -> bool:
        path = self.config_path
        assert path is not None
        log.info("config_reload", config=str(path))
        try:
            new = load_config(path, *self.overlays)
        except ConfigError as exc:
            return self._refuse(exc.problems)
        files = check_files(new)
        if files.errors:
            return self._refuse(files.errors)
        tls = new.whatsapp.tls
        prepared, problems = TlsState.prepare(tls.cert_file, tls.key_file) if tls else (None, [])
        if prepared is None and tls is not None:
            return self._refuse([f"whatsapp.tls: {p.description}" for p in problems])
        effective, restart = merge_live(self.cfg, new)
        old = self.cfg
        try:
            if prepared is not None:
                self.tls.commit(prepared)
        except (OSError, ssl.SSLError) as exc:
            return self._refuse([f"whatsapp.tls.cert_file: changed while loading ({exc})"])
        self.cfg = effective
        self.meta_health.configure(effective)
        if self.calls is not None:
            self.calls.cfg = effective
        if self.prober is not None:
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
        self.reload_problems = None
        self.reloads["applied"] += 1
        certificate: dict[str, str] = {}
        if prepared is not None:
            info = prepared.info
            certificate["certificate_sha256"] = info.fingerprint
            certificate["certificate_not_after"] = info.not_after.isoformat()
        log.info("config_reloaded", config=str(path), **certificate)
        if restart:
            log.warning("config_reload_needs_restart", keys=restart)
        if not self.tls_listening:
            await self._listen_tls()
        await self.tls.check_chain(force=True)
        return True

    def _refuse(self, problems: Sequence[str]) -> bool:
        self.reload_problems = list(problems)
        self.reloads["refused"] += 1
        log.error(
            "config_reload_refused",
            config=str(self.config_path),
            problems=list(problems),
            keeping="the running configuration",
        )
        return False

    # -- SIGTERM: drain ---------------------------------------------------------
    def request_stop(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self.drain())
        else:
            log.warning("stop_now", why="second stop signal while draining")
            self.stopped.set()

    async def drain(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        calls = self.calls
        timeout = self.cfg.shutdown.drain_timeout
        self.draining_since = loop.time()
        self.drain_deadline = self.draining_since + timeout
        if calls is not None:
            calls.draining = True
        if self.endpoint is not None:
            self.endpoint.draining = True
        active = len(calls.calls) if calls is not None else 0
        log.info("draining", active_calls=active, drain_timeout=timeout)
        self._status = self._status_text()
        self.notifier.stopping(self._status)
        while calls is not None and calls.calls and loop.time() < self.drain_deadline:
            await asyncio.sleep(0.1)
            self._update_status()
        if calls is not None and calls.calls:
            log.warning("drain_timeout", active_calls=len(calls.calls), drain_timeout=timeout)
            calls.hangup_all("gateway shutting down (drain timeout)")
            await asyncio.sleep(0.3)  # let the BYEs go out
        else:
            log.info("drained")
        self.stopped.set()


async def serve(cfg: Config, config_path: Path | None = None, overlays: Sequence[Path] = ()) -> int:
    gw = Gateway(cfg, config_path, overlays=overlays)
    loop = asyncio.get_running_loop()
    try:
        await gw.start()
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        await gw.stop()
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, gw.request_stop)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, gw.request_reload)
    await gw.stopped.wait()
    log.info("stopping")
    await gw.stop()
    return 0


def run(cfg: Config, config_path: Path | None = None, overlays: Sequence[Path] = ()) -> int:
    return asyncio.run(serve(cfg, config_path, overlays))
