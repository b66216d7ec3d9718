"""HTTP server for health, readiness, liveness and metrics (aiohttp).

``/health``: the health report in Meta's Health Status API shape (200, or 503
when BLOCKED). ``/readyz``: 200 when the listeners are up and the gateway is
not draining, else 503 (for orchestrators and HTTP load balancers).
``/livez``: 200 whenever the event loop answers. ``/metrics``: Prometheus text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.ops.metrics import CONTENT_TYPE, Metrics
from gateway.ops.report import Report

HealthFn = Callable[[], Report]
ReadyFn = Callable[[], tuple[bool, dict[str, object]]]
AnnotateFn = Callable[[dict[str, Any]], dict[str, Any]]


class HttpServer:
    def __init__(
        self,
        metrics: Metrics,
        health: HealthFn | None = None,
        ready: ReadyFn | None = None,
        annotate: AnnotateFn | None = None,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._annotate = annotate  # adds Meta's view (gateway.metaapi.health) to /health
        app = web.Application()
        app.router.add_get("/metrics", self._on_metrics)
        app.router.add_get("/livez", self._on_livez)
        app.router.add_get("/readyz", self._on_readyz)
        app.router.add_get("/health", self._on_health)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _on_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _on_livez(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _on_readyz(self, _request: web.Request) -> web.Response:
        if self._ready is None:
            return web.json_response({"ready": True, "reasons": []})
        ok, body = self._ready()
        return web.json_response(body, status=200 if ok else 503)

    async def _on_health(self, _request: web.Request) -> web.Response:
        if self._health is None:
            raise web.HTTPNotFound()
        report = self._health()
        body: dict[str, Any] = report.to_json()
        if self._annotate is not None:
            body = self._annotate(body)
        return web.json_response(body, status=report.http_status)
