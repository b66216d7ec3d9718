"""``wa-sip-gateway check-config``: validate the configuration and the files it names."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.common import Command, add_config_option, load_or_report, print_problems
from gateway.config import check_files, summary

__all__ = ["COMMAND"]


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config, args.overlays)
    if cfg is None:
        return 1
    files = check_files(cfg)
    if files.errors:
        print_problems(args.config, files.errors, sys.stderr)
    for warning in files.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if files.errors:
        return 1
    print(summary(cfg))
    return 0


COMMAND = Command(
    "check-config", "validate the configuration file and exit", add_config_option, _cmd_check_config
)
