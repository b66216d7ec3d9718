"""``wa-sip-gateway health``: the running gateway's health (drawn by :mod:`gateway.cli.render`)."""

from __future__ import annotations

import argparse
import os
import sys

from gateway.cli.common import Command, add_config_option, load_or_report

__all__ = ["COMMAND"]


def _setup_health(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
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


def _cmd_health(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config, args.overlays)
    if cfg is None:
        return 1
    from gateway.cli.render import fetch_health, render

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


COMMAND = Command(
    "health",
    "print the running gateway's health (exit 0 AVAILABLE/LIMITED, 2 BLOCKED, 1 bad config)",
    _setup_health,
    _cmd_health,
)
