"""What every command shares: the :class:`Command` record, ``-c/--config`` and loading the config.

A command module defines ``COMMAND = Command(name, help, setup, handler)``;
:mod:`gateway.cli` lists them in :data:`gateway.cli.COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateway.config import Config, ConfigError, load_config

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "Command",
    "Handler",
    "add_config_option",
    "load_or_report",
    "print_problems",
]

CONFIG_ENV = "WA_SIP_GATEWAY_CONFIG"
DEFAULT_CONFIG = "/etc/wa-sip-gateway/gateway.yaml"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``setup`` adds its options to its parser, ``handler`` runs it."""

    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    handler: Handler


def add_config_option(parser: argparse.ArgumentParser) -> None:
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


def print_problems(path: Path, problems: list[str], out: TextIO) -> None:
    count = len(problems)
    print(f"config {path}: {count} problem{'s' if count != 1 else ''}", file=out)
    for problem in problems:
        print(problem, file=out)


def load_or_report(path: Path, overlays: Sequence[Path] = ()) -> Config | None:
    """Load the config, or print its problems to stderr and return None."""
    try:
        return load_config(path, *overlays)
    except ConfigError as exc:
        print_problems(path, exc.problems, sys.stderr)
        return None
