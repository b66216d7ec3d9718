"""SIGHUP: reload the config file and the TLS certificate into a running runtime.

A config that does not validate, files that are missing, or a certificate/key
pair that does not load are refused (``config_reload_refused`` names the keys;
health 1601) and the running config stays. Keys that need new sockets keep
their running values until a restart (:func:`gateway.app.settings.merge_live`,
``config_reload_needs_restart``). Calls in progress are untouched.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from gateway.app.runtime import Runtime
from gateway.app.settings import merge_live
from gateway.config import ConfigError, check_files, load_config
from gateway.logging import get_logger
from gateway.ops.tlsstate import TlsState

__all__ = ["reload_runtime"]

log = get_logger(__name__)


async def reload_runtime(runtime: Runtime) -> bool:
    """Reload ``runtime.config_path`` (and its overlays); True when applied."""
    path = runtime.config_path
    if path is None:
        log.warning("config_reload_unavailable", why="started without a config file")
        return False
    log.info("config_reload", config=str(path))
    try:
        new = load_config(path, *runtime.overlays)
    except ConfigError as exc:
        return _refuse(runtime, exc.problems)
    files = check_files(new)
    if files.errors:
        return _refuse(runtime, files.errors)
    tls = new.whatsapp.tls
    prepared, problems = TlsState.prepare(tls.cert_file, tls.key_file) if tls else (None, [])
    if prepared is None and tls is not None:
        return _refuse(runtime, [f"whatsapp.tls: {p.description}" for p in problems])
    effective, restart = merge_live(runtime.cfg, new)
    try:
        if prepared is not None:
            runtime.tls.commit(prepared)
    except (OSError, ssl.SSLError) as exc:
        return _refuse(runtime, [f"whatsapp.tls.cert_file: changed while loading ({exc})"])
    runtime.apply(effective)
    runtime.state.reload_problems = None
    runtime.state.reloads_applied += 1
    certificate: dict[str, str] = {}
    if prepared is not None:
        info = prepared.info
        certificate["certificate_sha256"] = info.fingerprint
        certificate["certificate_not_after"] = info.not_after.isoformat()
    log.info("config_reloaded", config=str(path), **certificate)
    if restart:
        log.warning("config_reload_needs_restart", keys=restart)
    if not runtime.state.tls_listening:
        await runtime.listen_tls()
    await runtime.tls.check_chain(force=True)
    return True


def _refuse(runtime: Runtime, problems: Sequence[str]) -> bool:
    runtime.state.reload_problems = list(problems)
    runtime.state.reloads_refused += 1
    log.error(
        "config_reload_refused",
        config=str(runtime.config_path),
        problems=list(problems),
        keeping="the running configuration",
    )
    return False
