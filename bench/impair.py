"""The impairment relay on the WhatsApp media leg of a bench run (issue 11), and its
section of docs/benchmarks.md.

``python -m bench --loss 5 --burst 2x60 --jitter 20`` puts one relay
(tests/peers/impair.py, in a thread of the bench process) between each call's
Meta media socket and the gateway's WhatsApp port: Meta's SDP declares the
relay, Meta sends to it, the gateway sends to it. By default only Meta ->
gateway is impaired (``--impair-both``: the way back as well); ``--relay``
without an impairment measures what the relay itself adds. Such a run does not
touch the "Latest run" and "History" sections: it rewrites the run table and
latest figures of the "Audio under impairment" section and keeps the rest of
that section (the PESQ figures, written by hand) as it is.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from bench.result import Params, Result
from bench.stats import DirectionStats
from tests.peers.impair import (
    Impairment,
    ImpairmentRelay,
    RelayCounts,
    RelayThread,
    parse_bursts,
)

__all__ = ["RelayThread", "describe", "wanted", "write_markdown"]

SECTION = "## Audio under impairment"
RUNS = "### Bench runs with the relay"
_ROW_RE = re.compile(r"^\| \d{4}-\d{2}-\d{2} ")
HEADER = (
    "| date | code | calls x s | impairment (Meta -> gateway / back) | relay lost | "
    "WhatsApp -> PBX lost | p50 / p99 ms | PBX -> WhatsApp lost | p50 / p99 ms | "
    "daemon CPU per call-second |"
)
RULE = "|---|---|---|---|---:|---:|---:|---:|---:|---:|"


def wanted(p: Params) -> bool:
    return p.relay or not impairment(p, 0).clean


def impairment(p: Params, call: int) -> Impairment:
    """Meta -> gateway for call number ``call`` (its own seed: calls lose different
    packets). Bursts sit inside the expected measurement window."""
    window_start_ms = 1000 * (p.calls / p.rate + p.warmup + 2.0)
    count = int(p.burst.split("x")[0]) if p.burst else 0
    every_ms = 1000 * p.seconds / (count + 1) if count else 0.0
    return Impairment(
        loss_pct=p.loss,
        bursts=parse_bursts(p.burst, window_start_ms + every_ms / 2, every_ms),
        jitter_ms=p.jitter,
        jitter_reorder=p.jitter_reorder,
        reorder_pct=p.reorder,
        duplicate_pct=p.duplicate,
        seed=p.impair_seed + call,
    )


def both_ways(p: Params, call: int) -> tuple[Impairment, Impairment]:
    there = impairment(p, call)
    back = replace(there, seed=there.seed + 100_000) if p.impair_both else Impairment()
    return there, back


def added_delay_ms(p: Params) -> float:
    """Delay the relay adds on purpose, at most: jitter, and the gateway's reorder
    buffer holding 3 packets (60 ms) before it gives a lost one up (the warm-up's
    freshness bar is raised by this much)."""
    if not wanted(p):
        return 0.0
    lossy = p.loss or p.burst or p.reorder or p.jitter_reorder
    return p.jitter + (60.0 if lossy else 0.0)


def describe(p: Params) -> str:
    if impairment(p, 0).clean:
        return "none (the relay alone)"
    there = impairment(p, 0).describe()
    if p.burst:
        there = there.replace(" bursts", " bursts in the window")
    return f"{there} / {there if p.impair_both else 'none'}"


def sum_counts(relays: list[ImpairmentRelay]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for relay in relays:
        for name, c in relay.counts.items():
            into = out.setdefault(name, {})
            for key, value in vars(c).items():
                into[key] = into.get(key, 0) + int(value)
            into["lost"] = into.get("lost", 0) + c.lost
    return out


def args(p: Params) -> str:
    out = ""
    if p.relay:
        out += " --relay"
    if p.loss:
        out += f" --loss {p.loss:g}"
    if p.burst:
        out += f" --burst {p.burst}"
    if p.jitter:
        out += f" --jitter {p.jitter:g}" + (" --jitter-reorder" if p.jitter_reorder else "")
    if p.reorder:
        out += f" --reorder {p.reorder:g}"
    if p.duplicate:
        out += f" --duplicate {p.duplicate:g}"
    if p.impair_both:
        out += " --impair-both"
    if p.impair_seed != 1:
        out += f" --impair-seed {p.impair_seed}"
    return out


def _lat(d: DirectionStats) -> str:
    lat = d.latency()
    if not lat:
        return "-"
    return f"{lat['p50']:.2f} / {lat['p99']:.2f}"


def _relay_lost(r: Result, name: str) -> str:
    c = r.relay_counts.get(name, {})
    if not c.get("received"):
        return "0"
    return f"{c['lost']} of {c['received']}"


def row(r: Result, commit: str) -> str:
    p = r.params
    return (
        f"| {r.started[:16]} | {commit} | {p.calls} x {p.seconds:g} | {describe(p)} | "
        f"{_relay_lost(r, 'to_gateway')} / {_relay_lost(r, 'to_meta')} | "
        f"{r.m2p.lost} of {r.m2p.sent} | {_lat(r.m2p)} | {r.p2m.lost} of {r.p2m.sent} | "
        f"{_lat(r.p2m)} | {r.cpu_per_call_second * 1000:.2f} ms |"
    )


def render_stdout(r: Result) -> str:
    lines = [f"relay on the WhatsApp media leg: {describe(r.params)}"]
    for name, c in r.relay_counts.items():
        shown = {k: v for k, v in c.items() if v and k in vars(RelayCounts())}
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return "\n".join(lines)


def write_markdown(path: Path, r: Result, commit: str) -> None:
    """Add this run's row to the section's table; the rest of the file as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    before: list[str] = []
    by_hand: list[str] = []
    rows: list[str] = []
    after: list[str] = []
    section, sub, seen = "", "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section, sub = line, ""
            if line.startswith(SECTION):
                seen = True
                continue
        elif line.startswith("### "):
            sub = line
        if section.startswith(SECTION):
            if sub.startswith(RUNS):
                if _ROW_RE.match(line):
                    rows.append(line)
            else:
                by_hand.append(line)
        else:
            (after if seen else before).append(line)
    rows.append(row(r, commit))
    out = [
        "\n".join(before).rstrip(),
        "",
        SECTION,
        "",
        *(["\n".join(by_hand).strip(), ""] if "".join(by_hand).strip() else []),
        RUNS,
        "",
        "`python -m bench` with the impairment relay (bench/impair.py) in a thread of the "
        "bench process; one row per run, newest last. Relay lost: packets the relay dropped "
        "(whole run, all calls). Lost and latency: packets sent inside the window; a packet "
        "the gateway concealed (Opus FEC/PLC toward the PBX) counts as received, at the time "
        "its stand-in left, so the latency includes the relay's delay and the reorder "
        "buffer's wait for a missing packet.",
        "",
        HEADER,
        RULE,
        *rows,
        "",
    ]
    if after:
        out += ["\n".join(after).rstrip(), ""]
    path.write_text("\n".join(out))
