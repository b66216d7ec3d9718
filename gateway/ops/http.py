"""HTTP server for metrics and liveness (aiohttp)."""

from __future__ import annotations

from aiohttp import web

from gateway.ops.metrics import CONTENT_TYPE, Metrics


class HttpServer:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        app = web.Application()
        app.router.add_get("/metrics", self._on_metrics)
        app.router.add_get("/livez", self._on_livez)
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
