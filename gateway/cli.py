"""Command line: ``wa-sip-gateway [--version] <command> [options]``.

Commands are registered in :data:`COMMANDS` by :func:`_command`; to add one,
write ``def _cmd_name(args) -> int`` and a ``_setup_name(parser)`` that adds
its options (``_add_config_option`` for ``-c/--config``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateway import __version__
from gateway.ops.config import Config, ConfigError, check_files, load_config, summary

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "main"]

CONFIG_ENV = "WA_SIP_GATEWAY_CONFIG"
DEFAULT_CONFIG = "/etc/wa-sip-gateway/gateway.yaml"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    handler: Handler


COMMANDS: list[_Command] = []


def _command(
    name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS.append(_Command(name, help, setup, handler))
        return handler

    return register


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        action="append",
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG}; now {default});"
        " given again, each later file is merged over the first (one instance's overlay)",
    )
    parser.set_defaults(config_default=Path(default))


def _print_problems(path: Path, problems: list[str], out: TextIO) -> None:
    count = len(problems)
    print(f"config {path}: {count} problem{'s' if count != 1 else ''}", file=out)
    for problem in problems:
        print(problem, file=out)


def _load(path: Path, overlays: Sequence[Path] = ()) -> Config | None:
    """Load the config, or print its problems to stderr and return None."""
    try:
        return load_config(path, *overlays)
    except ConfigError as exc:
        _print_problems(path, exc.problems, sys.stderr)
        return None


@_command("check-config", "validate the configuration file and exit", _add_config_option)
def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.overlays)
    if cfg is None:
        return 1
    files = check_files(cfg)
    if files.errors:
        _print_problems(args.config, files.errors, sys.stderr)
    for warning in files.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if files.errors:
        return 1
    print(summary(cfg))
    return 0


@_command("run", "run the gateway daemon in the foreground", _add_config_option)
def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.overlays)
    if cfg is None:
        return 1

    from gateway.ops.certs import ensure_dev_certificate
    from gateway.ops.logging import configure_logging, get_logger

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


def _setup_health(parser: argparse.ArgumentParser) -> None:
    _add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print the /health JSON as is")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the statuses (default: auto, when stdout is a terminal and NO_COLOR unset)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="HTTP timeout (default: 5)"
    )


@_command(
    "health",
    "print the running gateway's health (exit 0 AVAILABLE/LIMITED, 2 BLOCKED, 1 bad config)",
    _setup_health,
)
def _cmd_health(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.overlays)
    if cfg is None:
        return 1
    from gateway.ops.health_cli import fetch_health, render

    report, source = fetch_health(cfg, timeout=args.timeout)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        colour = args.color == "always" or (
            args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        )
        print(render(report, source=source, colour=colour))
    status = report.get("health_status", {}).get("can_receive_call_sip")
    return 2 if status == "BLOCKED" else 0


import gateway.metaapi.cli  # noqa: E402, F401  registers "meta" (needs _command above)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wa-sip-gateway",
        description="Gateway between WhatsApp Business Calling (SIP/TLS) and a PBX (SIP/UDP/TCP).",
    )
    parser.add_argument("--version", action="version", version=f"wa-sip-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.setup(child)
        child.set_defaults(handler=command.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if hasattr(args, "config_default"):  # commands that read the config: -c given 0+ times
        files = args.config or [args.config_default]
        args.config, args.overlays = files[0], tuple(files[1:])
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        print("wa-sip-gateway: error: a command is required", file=sys.stderr)
        return 2
    return handler(args)
