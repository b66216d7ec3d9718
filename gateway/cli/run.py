"""``wa-sip-gateway run``: the daemon in the foreground."""

from __future__ import annotations

import argparse

from gateway import __version__
from gateway.cli.common import Command, add_config_option, load_or_report
from gateway.config import check_files, summary

__all__ = ["COMMAND"]


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config, args.overlays)
    if cfg is None:
        return 1

    from gateway.config.certs import ensure_dev_certificate
    from gateway.logging import configure_logging, get_logger

    configure_logging(cfg.logging.level, cfg.logging.format)
    log = get_logger("gateway.cli")
    tls = cfg.whatsapp.tls
    if cfg.development and tls is not None:
        try:
            generated = ensure_dev_certificate(tls.cert_file, tls.key_file, cfg.whatsapp.hostname)
        except OSError as exc:
            log.error("dev_certificate_failed", cert_file=str(tls.cert_file), error=str(exc))
            return 1
        if generated:
            log.warning(
                "dev_certificate_generated",
                cert_file=str(tls.cert_file),
                key_file=str(tls.key_file),
                hostname=cfg.whatsapp.hostname,
            )
    files = check_files(cfg)
    for warning in files.warnings:
        log.warning("config_warning", problem=warning)
    if files.errors:
        for error in files.errors:
            log.error("config_error", problem=error)
        return 1
    log.info("starting", version=__version__, config=str(args.config), summary=summary(cfg))

    import gateway.app as app

    try:
        return app.run(cfg, args.config, args.overlays)
    except KeyboardInterrupt:
        return 130


COMMAND = Command("run", "run the gateway daemon in the foreground", add_config_option, _cmd_run)
