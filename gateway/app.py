"""The daemon: wires config, listeners, the SIP core and the HTTP server; handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import ssl
from collections.abc import Callable

from gateway import __version__
from gateway.b2bua.calls import CallManager
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.legs import SipPort
from gateway.media.bridge import BridgeFactory
from gateway.ops.config import Config
from gateway.ops.http import HttpServer
from gateway.ops.logging import get_logger
from gateway.ops.metrics import Metrics
from gateway.sip.auth import DigestServer
from gateway.sip.transaction import TransactionManager
from gateway.transport.rtp import MediaClock, PortAllocator
from gateway.transport.sip import AccessList, SipStack
from gateway.transport.tls import client_context, server_context

log = get_logger(__name__)


class _LoopScheduler:
    """The event loop as a :class:`gateway.b2bua.legs.Scheduler`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback)


class Gateway:
    """One running gateway instance."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stopped = asyncio.Event()
        self.stack: SipStack | None = None
        self.http: HttpServer | None = None
        self.calls: CallManager | None = None
        self.media_clock: MediaClock | None = None
        self.metrics = Metrics()

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        manager = TransactionManager()
        endpoint = Endpoint(manager, loop.time, user_agent=cfg.sip.user_agent)
        tls_server = server_context(cfg.whatsapp.tls.cert_file, cfg.whatsapp.tls.key_file)
        try:
            tls_client: ssl.SSLContext | None = client_context(cfg.whatsapp.tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls_client_context_failed", error=str(exc))
            tls_client = None
        stack = SipStack(
            manager,
            lambda event, leg: calls.handle(event, leg),
            max_message_size=cfg.sip.max_message_size,
            client_ssl=tls_client,
        )
        self.stack = stack
        self.ports = PortAllocator(cfg.media.address, *cfg.media.port_range)
        self.media_clock = MediaClock(loop)
        sip = SipPort(manager, _LoopScheduler(loop), stack.flush, cfg.sip.user_agent)
        digest = DigestServer(secrets.token_bytes(32), cfg.whatsapp.hostname, algorithms=("MD5",))
        bridges = BridgeFactory(loop, self.ports, self.media_clock, cfg.media)
        calls = CallManager(cfg, sip, endpoint, bridges, digest)
        self.calls = calls
        wa = cfg.whatsapp
        meta_acl = AccessList(wa.allowed_networks)
        pbx_acl = AccessList(cfg.pbx.trusted_networks)
        host, port = await stack.listen_stream(
            "whatsapp", wa.listen.host, wa.listen.port, meta_acl, tls_server
        )
        log.info("listening", leg="whatsapp", transport="tls", address=f"{host}:{port}")
        pbx = cfg.pbx.listen
        await stack.listen_udp("pbx", pbx.host, pbx.port, pbx_acl)
        await stack.listen_stream("pbx", pbx.host, pbx.port, pbx_acl)
        log.info("listening", leg="pbx", transport="udp+tcp", address=f"{pbx.host}:{pbx.port}")
        stack.set_peer_leg(cfg.pbx.transport, cfg.pbx.address.host, cfg.pbx.address.port, "pbx")
        self.metrics.bind(stack.stats, manager)
        self.http = HttpServer(self.metrics)
        await self.http.start(cfg.http.listen.host, cfg.http.listen.port)
        log.info("listening", leg="http", address=f"{cfg.http.listen.host}:{cfg.http.listen.port}")
        log.info("ready", version=__version__)

    async def stop(self) -> None:
        if self.calls is not None:
            self.calls.hangup_all("gateway shutting down")
            await asyncio.sleep(0.2)  # let the BYEs go out
        if self.media_clock is not None:
            self.media_clock.close()
        if self.http is not None:
            await self.http.stop()
        if self.stack is not None:
            await self.stack.close()
        log.info("stopped")


async def serve(cfg: Config) -> int:
    gw = Gateway(cfg)
    loop = asyncio.get_running_loop()
    try:
        await gw.start()
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        await gw.stop()
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, gw.stopped.set)
    await gw.stopped.wait()
    log.info("stopping")
    await gw.stop()
    return 0


def run(cfg: Config) -> int:
    return asyncio.run(serve(cfg))
