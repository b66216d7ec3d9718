"""``wa-sip-gateway meta show | apply | fetch-password``: Meta's calling settings for the
configured numbers, made to match the config, and the SIP password fetched into place.

Exit status: 0 done / all matches; 1 a config, token or Graph API failure; 2 ``show``
found problems (mismatches that break calls, restrictions in force) or ``apply
--dry-run`` has changes pending.

Listed in :data:`gateway.cli.COMMANDS` as :data:`COMMAND`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli.common import Command, add_config_option, load_or_report
from gateway.config import Config
from gateway.logging import configure_logging
from gateway.metaapi.graph import GraphClient, GraphError
from gateway.metaapi.password import fetch_credential, rotate_password, write_password_file
from gateway.metaapi.settings import (
    CallingSettings,
    Comparison,
    Desired,
    Finding,
    Row,
    compare,
    desired_for,
    plan,
)

__all__ = ["COMMAND"]

OK, FAILED, PROBLEMS = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--number",
        action="append",
        metavar="+E164",
        help="only this business number (repeatable; default: every number with a phone_number_id)",
    )


def _setup(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="meta_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser(
        "show",
        help="Meta's calling settings next to what the config implies, mismatches with fixes",
        description="For each number: Meta's calling settings next to what the config implies,"
        " every mismatch with its consequence and fix, restrictions, call hours. Exit 0 when"
        " nothing breaks calls, 2 when something does, 1 on errors.",
    )
    _common(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--check-password",
        action="store_true",
        help="also compare the gateway's SIP password with Meta's (include_sip_credentials;"
        " the password is never shown)",
    )
    apply = sub.add_parser(
        "apply",
        help="make Meta's calling settings match the config (shows the diff first)",
        description="Enable calling and SIP with this gateway's hostname and port, SRTP key"
        " exchange SDES, G.711 as configured and meta_api.calling. Shows the diff, then"
        " applies it; a second run changes nothing. --dry-run: only the diff (exit 2 when"
        " changes are pending).",
    )
    _common(apply)
    apply.add_argument("--dry-run", action="store_true", help="show the diff only")
    fetch = sub.add_parser(
        "fetch-password",
        help="write Meta's SIP password into each number's sip_password_file (mode 0600)",
        description="Read the SIP password (include_sip_credentials=true) and write it to the"
        " number's sip_password_file atomically, mode 0600; it is never printed. --rotate"
        " makes Meta generate a new one first (SIP is disabled and enabled again).",
    )
    _common(fetch)
    fetch.add_argument(
        "--rotate", action="store_true", help="have Meta generate a new password first"
    )


@dataclass(frozen=True)
class _Target:
    desired: Desired
    phone_number_id: str

    @property
    def label(self) -> str:
        return f"{self.desired.number.number} (phone_number_id {self.phone_number_id})"


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _targets(cfg: Config, args: argparse.Namespace) -> list[_Target] | None:
    wanted = set(args.number or [])
    known = {n.number for n in cfg.whatsapp.numbers}
    unknown = sorted(wanted - known)
    if unknown:
        _err(f"error: not in whatsapp.numbers: {', '.join(unknown)}")
        return None
    out: list[_Target] = []
    for index, number in enumerate(cfg.whatsapp.numbers):
        if wanted and number.number not in wanted:
            continue
        if number.phone_number_id is None:
            _err(
                f"warning: whatsapp.numbers.{index}.phone_number_id: not set; {number.number}"
                " skipped (find the id in WhatsApp Manager > Phone numbers)"
            )
            continue
        out.append(_Target(desired_for(cfg, index), number.phone_number_id))
    if not out:
        _err("error: no number to work on: set whatsapp.numbers[].phone_number_id")
        return None
    return out


def _fix(text: str, args: argparse.Namespace) -> str:
    return text.replace("-c FILE", f"-c {args.config}")


def _cmd_meta(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config, args.overlays)
    if cfg is None:
        return FAILED
    if cfg.meta_api is None:
        _err(
            f"config {args.config}: meta_api: required for the meta commands (at least"
            " access_token_file or access_token_env; see config/gateway.example.yaml)"
        )
        return FAILED
    targets = _targets(cfg, args)
    if targets is None:
        return FAILED
    commands: dict[str, Callable[[GraphClient, list[_Target]], Awaitable[int]]] = {
        "show": lambda g, t: _show(g, t, args),
        "apply": lambda g, t: _apply(g, t, args),
        "fetch-password": lambda g, t: _fetch_password(g, t, args),
    }
    command = commands[args.meta_command]
    configure_logging("info", "console", stream=sys.stderr)  # retries are noted on stderr

    async def run() -> int:
        assert cfg is not None and cfg.meta_api is not None
        try:
            graph = GraphClient.from_config(cfg.meta_api)
        except GraphError as exc:
            _err(f"error: {exc}")
            return FAILED
        async with graph:
            return await command(graph, targets)

    return asyncio.run(run())


# --------------------------------------------------------------------------- show


def _table(rows: list[Row]) -> list[str]:
    name_w = max([len(r.name) for r in rows] + [4])
    meta_w = max([len(r.meta) for r in rows] + [4])
    gw_w = max([len(r.gateway) for r in rows] + [14])
    lines = [f"  {'':<{name_w}}  {'Meta':<{meta_w}}  {'gateway config':<{gw_w}}"]
    for r in rows:
        verdict = "" if r.ok is None else "ok" if r.ok else "MISMATCH"
        lines.append(f"  {r.name:<{name_w}}  {r.meta:<{meta_w}}  {r.gateway:<{gw_w}}  {verdict}")
    return [line.rstrip() for line in lines]


_MARK = {"error": "x", "restriction": "!", "warning": "~"}


def _password_finding(state: str, target: _Target) -> Finding | None:
    number = target.desired.number.number
    if state == "matches":
        return None
    if state == "missing":
        message = (
            f"The gateway has no SIP password for {number}: Meta's INVITEs are refused (403)"
            " and calls to WhatsApp cannot answer Meta's challenge."
        )
    else:
        message = (
            f"The gateway's SIP password for {number} differs from Meta's: Meta's INVITEs fail"
            " the digest check (403) and Meta refuses the gateway's calls."
        )
    return Finding(
        "sip_user_password", "error", message, "wa-sip-gateway meta fetch-password -c FILE"
    )


async def _show(graph: GraphClient, targets: list[_Target], args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    status = OK
    for target in targets:
        number = target.desired.number
        entry: dict[str, Any] = {
            "number": number.number,
            "phone_number_id": target.phone_number_id,
            "waba_id": number.waba_id,
        }
        results.append(entry)
        password_state: str | None = None
        try:
            if args.check_password:
                try:
                    credential = await fetch_credential(graph, target.phone_number_id)
                    local = number.read_password()
                    password_state = (
                        "missing"
                        if local is None
                        else "matches"
                        if credential.password.matches(local)
                        else "differs"
                    )
                except GraphError as exc:
                    if exc.code is not None:
                        raise
                    password_state = None  # SIP not configured: the comparison says so
            body = await graph.get(f"/{target.phone_number_id}/settings")
        except GraphError as exc:
            entry["error"] = str(exc)
            entry["hint"] = exc.hint
            status = FAILED
            if not args.json:
                print(f"{target.label}: error: {exc.describe()}")
            continue
        settings = CallingSettings.parse(body)
        result = compare(settings, target.desired)
        if password_state is not None:
            text = {"matches": "matches Meta's", "differs": "DIFFERS", "missing": "missing"}
            result.rows.append(
                Row("SIP password", "set", text[password_state], password_state == "matches")
            )
            finding = _password_finding(password_state, target)
            if finding is not None:
                result.findings.append(finding)
        entry.update(
            ok=result.ok,
            meta=settings.to_json(),
            gateway=target.desired.to_json(),
            rows=[r.__dict__ for r in result.rows],
            findings=[f.to_json() for f in result.findings],
            context=dict(result.context),
        )
        if password_state is not None:
            entry["sip_password"] = password_state
        if not result.ok and status == OK:
            status = PROBLEMS
        if not args.json:
            _print_comparison(target, result, args)
    if args.json:
        payload = {"ok": status == OK, "config": str(args.config), "numbers": results}
        print(json.dumps(payload, indent=2))
    return status


def _print_comparison(target: _Target, result: Comparison, args: argparse.Namespace) -> None:
    problems = len(result.errors)
    warnings = len(result.findings) - problems
    counts = [
        f"{n} {word}{'s' if n != 1 else ''}"
        for n, word in ((problems, "problem"), (warnings, "warning"))
        if n
    ]
    verdict = ", ".join(counts) or "matches the config"
    waba = f", WABA {target.desired.number.waba_id}" if target.desired.number.waba_id else ""
    print(f"{target.label}{waba}: {verdict}")
    print("\n".join(_table(result.rows)))
    if result.findings:
        print("  problems:" if problems else "  warnings:")
        for f in sorted(result.findings, key=lambda f: f.severity == "warning"):
            print(f"    [{_MARK[f.severity]}] {f.key}: {f.message}")
            print(f"        fix: {_fix(f.fix, args)}")
    if result.context:
        print("  for context:")
        width = max(len(k) for k, _ in result.context)
        for key, value in result.context:
            print(f"    {key:<{width}}  {value}")
    print()


# --------------------------------------------------------------------------- apply


async def _apply(graph: GraphClient, targets: list[_Target], args: argparse.Namespace) -> int:
    status = OK
    pending = 0
    changed = 0
    for target in targets:
        path = f"/{target.phone_number_id}/settings"
        try:
            settings = CallingSettings.parse(await graph.get(path))
        except GraphError as exc:
            print(f"{target.label}: error reading Meta's settings: {exc.describe()}")
            status = FAILED
            continue
        todo = plan(settings, target.desired)
        if todo.empty:
            print(f"{target.label}: Meta already matches the config; nothing to change.")
            continue
        count = len(todo.changes)
        print(f"{target.label}: {count} change{'s' if count != 1 else ''}")
        width = max(len(c.key) for c in todo.changes)
        for c in todo.changes:
            print(f"  {c.key:<{width}}  {c.before}  ->  {c.after}")
        if args.dry_run:
            pending += count
            continue
        try:
            for body in todo.bodies:
                await graph.post(path, body)
            after = CallingSettings.parse(await graph.get(path))
        except GraphError as exc:
            print(f"  error: {exc.describe()}")
            print("  Meta's settings may be partly changed: run `meta show` to see them.")
            status = FAILED
            continue
        left = plan(after, target.desired)
        if not left.empty:
            keys = ", ".join(c.key for c in left.changes)
            print(f"  error: Meta accepted the update but still differs in: {keys}")
            status = FAILED
            continue
        changed += count
        print("  applied.")
        if todo.enables_sip or target.desired.number.read_password() is None:
            print(
                "  Meta generates a SIP password when SIP is enabled; put it in place with: "
                + _fix("wa-sip-gateway meta fetch-password -c FILE", args)
            )
    if args.dry_run:
        print(
            f"dry run: {pending} change{'s' if pending != 1 else ''} pending, nothing applied."
            if pending
            else "dry run: nothing to change."
        )
        return status if status != OK else PROBLEMS if pending else OK
    if status == OK:
        print(
            f"done: {changed} change{'s' if changed != 1 else ''} applied."
            if changed
            else "done: Meta already matched the config; nothing changed."
        )
    return status


# --------------------------------------------------------------------------- fetch-password


async def _fetch_password(
    graph: GraphClient, targets: list[_Target], args: argparse.Namespace
) -> int:
    status = OK
    for target in targets:
        number = target.desired.number
        path_: Path | None = number.sip_password_file
        if path_ is None:
            print(
                f"{target.label}: error: whatsapp.numbers.{target.desired.index} uses"
                f" sip_password_env ({number.sip_password_env}); fetch-password only writes"
                " files and never prints the password: use sip_password_file for this number"
            )
            status = FAILED
            continue
        try:
            if args.rotate:
                settings = CallingSettings.parse(
                    await graph.get(f"/{target.phone_number_id}/settings")
                )
                credential = await rotate_password(
                    graph, target.phone_number_id, settings, target.desired
                )
                print(f"{target.label}: Meta generated a new SIP password (SIP off and on).")
            else:
                credential = await fetch_credential(graph, target.phone_number_id)
        except GraphError as exc:
            print(f"{target.label}: error: {exc.describe()}")
            status = FAILED
            continue
        try:
            result = write_password_file(path_, credential.password)
        except OSError as exc:
            print(f"{target.label}: error: cannot write {path_}: {exc.strerror or exc}")
            status = FAILED
            continue
        app = f" (app {credential.app_id})" if credential.app_id else ""
        if result.changed:
            print(f"{target.label}: SIP password{app} written to {path_} (mode 0600).")
            if result.created and os.geteuid() == 0:
                print(
                    f"  note: {path_} is new and owned by root; if the gateway runs as another"
                    f" user: chown that-user {path_} (later runs keep the owner)"
                )
        else:
            print(f"{target.label}: {path_} already holds Meta's SIP password{app}; unchanged.")
    if status == OK:
        print(
            "The gateway reads the password file on every call: the next call uses it, no"
            " restart needed (a reload, systemctl reload wa-sip-gateway / SIGHUP, is harmless)."
            " Other gateway instances serving these numbers need the same file."
        )
    return status


COMMAND = Command(
    "meta", "Meta's Graph API: show, apply and fetch-password for the numbers", _setup, _cmd_meta
)
