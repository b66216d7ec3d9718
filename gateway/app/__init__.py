"""The daemon: ``build(config) -> Runtime``, and the :class:`Supervisor` that runs it.

* :mod:`gateway.app.build`: every service constructed and wired from a ``Config``
  (no socket bound, nothing left ``None``).
* :mod:`gateway.app.runtime`: :class:`Runtime`, the services and their state;
  start (bind, start timers) and stop; SIP events, ended and refused calls.
* :mod:`gateway.app.view`: the health report, readiness and the metrics' view.
* :mod:`gateway.app.supervisor`: signals, the tick and watchdog, reload, drain.
* :mod:`gateway.app.reload`: what a SIGHUP applies; :mod:`gateway.app.settings`:
  the config turned into plain settings, and a reload's merge.

Service life is described in :mod:`gateway.app.supervisor` (and the README,
"Running as a service").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from gateway.app.build import build
from gateway.app.runtime import Runtime
from gateway.app.settings import media_settings, merge_live
from gateway.app.supervisor import Supervisor
from gateway.config import Config
from gateway.logging import get_logger

__all__ = ["Runtime", "Supervisor", "build", "media_settings", "merge_live", "run", "serve"]

log = get_logger(__name__)


async def serve(cfg: Config, config_path: Path | None = None, overlays: Sequence[Path] = ()) -> int:
    """Build, start and supervise the gateway until it is stopped; the exit status."""
    supervisor = Supervisor(build(cfg, config_path=config_path, overlays=overlays))
    try:
        await supervisor.start()
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        await supervisor.stop()
        return 1
    supervisor.install_signals()
    await supervisor.stopped.wait()
    log.info("stopping")
    await supervisor.stop()
    return 0


def run(cfg: Config, config_path: Path | None = None, overlays: Sequence[Path] = ()) -> int:
    return asyncio.run(serve(cfg, config_path, overlays))
