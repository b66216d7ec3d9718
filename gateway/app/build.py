"""``build(config) -> Runtime``: every service of the gateway, constructed and wired.

Nothing here binds a socket or starts a timer (that is :meth:`Runtime.start`),
and nothing is left ``None`` for later. The services that call back up (the SIP
stack with each event, the call table with each ended or refused call, the PBX
prober when its verdict changes, the HTTP server and the metrics with what they
report) are given closures over the runtime, which exists by the time any of
them can run.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.app.runtime import Runtime
from gateway.app.settings import media_settings
from gateway.app.view import RuntimeView
from gateway.b2bua.calls import CallManager
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.port import LegAddress, SipPort
from gateway.b2bua.probe import PbxProber
from gateway.config import Config
from gateway.logging import get_logger
from gateway.media.bridge import BridgeFactory
from gateway.media.dtls import DtlsCertificate
from gateway.media.native import srtp_library
from gateway.metaapi.health import MetaHealthCollector, MetaHealthPoller
from gateway.ops.admission import OverloadControls, build_throttle
from gateway.ops.http import HttpServer
from gateway.ops.lag import LagProbe
from gateway.ops.metrics import Metrics
from gateway.ops.records import RecordWriter
from gateway.ops.systemd import Notifier
from gateway.ops.tlsstate import TlsState
from gateway.sip.auth import DigestServer
from gateway.sip.transaction import Target, TransactionManager
from gateway.transport.guard import ConnectionLimits
from gateway.transport.rtp import FrameTimes, MediaClock, PortAllocator
from gateway.transport.sip import AccessList, SipStack
from gateway.transport.tls import client_context

__all__ = ["LoopScheduler", "build"]

log = get_logger(__name__)


class LoopScheduler:
    """The event loop as a :class:`gateway.b2bua.port.Scheduler`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback)


def build(
    cfg: Config,
    *,
    config_path: Path | None = None,
    overlays: Sequence[Path] = (),
    notifier: Notifier | None = None,
) -> Runtime:
    """The gateway's services from ``cfg``, wired; called on the running event loop."""
    loop = asyncio.get_running_loop()
    runtime: Runtime  # bound at the end; the closures below run only after that
    manager = TransactionManager()
    endpoint = Endpoint(manager, loop.time, user_agent=cfg.sip.user_agent)
    try:
        ca_file = cfg.whatsapp.tls.ca_file if cfg.whatsapp.tls is not None else None
        tls_client: ssl.SSLContext | None = client_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        log.error("tls_client_context_failed", error=str(exc))
        tls_client = None
    stack = SipStack(
        manager,
        lambda event, leg: runtime.on_sip_event(event, leg),
        max_message_size=cfg.sip.max_message_size,
        client_ssl=tls_client,
        limits=ConnectionLimits(**cfg.sip.connections.model_dump()),
    )
    ports = PortAllocator(cfg.media.address, *cfg.media.port_range)
    media_clock = MediaClock(loop)
    frame_times = {"whatsapp": FrameTimes(), "pbx": FrameTimes()}
    scheduler = LoopScheduler(loop)
    sip = SipPort(manager, scheduler, stack.flush, cfg.sip.user_agent)
    # Shared by the instances behind one proxy (cluster.nonce_secret_file): a nonce
    # issued here verifies on any of them.
    secret = cfg.cluster.read_nonce_secret() or secrets.token_bytes(32)
    digest = DigestServer(secret, cfg.whatsapp.hostname, algorithms=("MD5",))
    bridges = BridgeFactory(
        loop,
        ports,
        media_clock,
        media_settings(cfg.media),
        frame_times,
        certificate=dtls_certificate(cfg),
    )
    srtp = srtp_library() if bridges.engine == "native" else "pylibsrtp"
    log.info("media_engine", engine=bridges.engine, configured=cfg.media.engine, srtp=srtp)
    throttle = build_throttle(cfg, digest.nonce_ttl)
    calls = CallManager(
        cfg,
        sip,
        endpoint,
        bridges,
        digest,
        on_call_end=lambda call, reason: runtime.on_call_end(call, reason),
        on_reject=lambda direction, status: runtime.on_reject(direction, status),
        throttle=throttle,
    )
    overload = OverloadControls(cfg, loop.time, stack, manager, calls, throttle)
    adv, pbx = cfg.sip_advertise, cfg.pbx
    prober = PbxProber(
        sip,
        scheduler,
        LegAddress(pbx.transport, adv.host, adv.port),
        Target(pbx.transport, pbx.address.host, pbx.address.port),
        pbx.probe_interval,
        on_change=lambda: runtime.changed(),
    )
    meta_health = MetaHealthPoller(cfg)  # Meta's health_status (meta_api.poll_health)
    metrics = Metrics(media_engine=bridges.engine)
    view: RuntimeView  # bound with the runtime
    http = HttpServer(
        metrics,
        lambda: view.health_report(),
        lambda: view.readiness(),
        annotate=meta_health.annotate,
    )
    rec = cfg.records
    runtime = Runtime(
        cfg=cfg,
        config_path=config_path,
        overlays=tuple(overlays),
        loop=loop,
        notifier=notifier or Notifier(),
        manager=manager,
        endpoint=endpoint,
        stack=stack,
        wa_acl=AccessList(cfg.whatsapp.allowed_networks),
        pbx_acl=AccessList(pbx.trusted_networks),
        ports=ports,
        media_clock=media_clock,
        frame_times=frame_times,
        calls=calls,
        prober=prober,
        overload=overload,
        lag=LagProbe(loop, overload.monitor),
        tls=TlsState(),
        records=RecordWriter(rec.path, max_bytes=rec.max_bytes, keep=rec.keep),
        metrics=metrics,
        meta_health=meta_health,
        http=http,
    )
    view = RuntimeView(runtime)
    metrics.bind(stack.stats, manager, view)
    metrics.registry.register(MetaHealthCollector(meta_health))
    metrics.registry.register(overload.collector())
    return runtime


def dtls_certificate(cfg: Config) -> DtlsCertificate | None:
    """The DTLS certificate of Meta's WebRTC media mode: ``media.dtls``'s files, else a
    new ECDSA P-256 one; None when every number is ``srtp: sdes``. Its fingerprint is
    logged (it is public: it goes in every WebRTC-mode SDP)."""
    if cfg.whatsapp.numbers and all(n.srtp == "sdes" for n in cfg.whatsapp.numbers):
        return None
    files = cfg.media.dtls
    if files.cert_file is not None and files.key_file is not None:
        cert = DtlsCertificate.load(files.cert_file, files.key_file)
        source = str(files.cert_file)
    else:
        cert = DtlsCertificate.generate()
        source = "generated (ECDSA P-256)"
    algorithm, fingerprint = cert.fingerprint
    log.info("dtls_certificate", source=source, fingerprint=f"{algorithm} {fingerprint}")
    return cert
