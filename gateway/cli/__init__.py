"""Command line: ``wa-sip-gateway [--version] <command> [options]``.

Each command is a module of this package defining ``COMMAND`` (a
:class:`~gateway.cli.common.Command`): ``check-config`` (:mod:`.check`),
``run`` (:mod:`.run`), ``health`` (:mod:`.health`, rendering in
:mod:`.render`), ``meta`` (:mod:`.meta`). To add one, write the module
(``add_config_option`` for ``-c/--config``, ``load_or_report`` to read the
config) and list its ``COMMAND`` in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway.cli import check, health, meta, run
from gateway.cli.common import CONFIG_ENV, DEFAULT_CONFIG, Command, Handler

__all__ = ["COMMANDS", "CONFIG_ENV", "DEFAULT_CONFIG", "main"]

COMMANDS: tuple[Command, ...] = (check.COMMAND, run.COMMAND, health.COMMAND, meta.COMMAND)


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
