"""``wa-sip-gateway health``: the running gateway's report, or what can be checked without it.

The report comes from ``GET /health`` on ``http.listen`` (a wildcard address is
reached on loopback). When nothing answers, the command checks what it can
from the files (certificate, key, SIP passwords) and reports the GATEWAY as
BLOCKED with code 1002. :mod:`gateway.cli.render` draws it for a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.cli.common import Command, add_config_option, load_or_report
from gateway.cli.render import render_text
from gateway.config import Config
from gateway.netaddr import hostport
from gateway.ops.certs import certificate_findings, chain_finding, verify_chain
from gateway.ops.health import not_running_finding, number_findings
from gateway.ops.report import Finding, Report
from gateway.ops.tlsstate import TlsState, roots_context

__all__ = ["COMMAND", "fetch_health", "health_url", "offline_report"]


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
    report, source = fetch_health(cfg, timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        colour = args.color == "always" or (
            args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        )
        print(render_text(report, source=source, colour=colour))
    status = report.get("health_status", {}).get("can_receive_call_sip")
    return 2 if status == "BLOCKED" else 0


def health_url(cfg: Config) -> str:
    host, port = cfg.http.listen
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{hostport(host, port)}/health"


def fetch_health(cfg: Config, *, timeout: float = 5.0) -> tuple[dict[str, Any], str]:
    """(the report as JSON, where it came from)."""
    url = health_url(cfg)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode()), url
    except urllib.error.HTTPError as exc:  # 503 carries the BLOCKED report
        try:
            return json.loads(exc.read().decode()), url
        except ValueError:
            why = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        why = str(getattr(reason, "strerror", None) or reason)
    return offline_report(cfg, not_running_finding(url, why)).to_json(), "checked from the files"


def offline_report(cfg: Config, gateway_down: Finding) -> Report:
    shared: list[Finding] = [gateway_down]
    tls = cfg.whatsapp.tls
    prepared, problems = TlsState.prepare(tls.cert_file, tls.key_file) if tls else (None, [])
    if prepared is None:
        shared += problems
    else:
        now = dt.datetime.now(dt.UTC)
        shared += certificate_findings(prepared.info, cfg.whatsapp.hostname, now)
        try:
            ok, why = verify_chain(prepared.context, roots_context(), prepared.info, now)
        except ssl.SSLError as exc:
            ok, why = False, str(exc)
        finding = chain_finding(ok, why, cfg.development)
        if finding is not None:
            shared.append(finding)
    numbers = [(n.number, number_findings(n)) for n in cfg.whatsapp.numbers]
    return Report.build(cfg.whatsapp.hostname, shared, numbers)


COMMAND = Command(
    "health",
    "print the running gateway's health (exit 0 AVAILABLE/LIMITED, 2 BLOCKED, 1 bad config)",
    _setup_health,
    _cmd_health,
)
