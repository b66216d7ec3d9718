"""The scale-out report (issue 7): N instances behind Kamailio against one.

Renders a run, or a one-instance baseline and an N-instance run of the same
invocation (``--compare``) side by side with the ratios, and keeps the
"Scale-out" sections of docs/benchmarks.md (the single-instance writer in
bench.report leaves them as they are).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench.report import (
    SCALE_OUT,
    TARGET_P99_MS,
    _core_text,
    _ms,
    command_args,
    machine,
)
from bench.result import InstanceResult, Result
from bench.run import git_describe
from bench.stats import DirectionStats, percentile

LATEST = f"{SCALE_OUT} through Kamailio: latest run"
METHOD_TITLE = f"{SCALE_OUT}: method"
HISTORY = f"{SCALE_OUT} history"
# Any other "## Scale-out..." section (written by hand: a summary of several runs) is
# kept as it is, between the latest run and the method.
HISTORY_HEADER = (
    "| date | commit | arguments | instances | calls up (per instance) | instance CPU per "
    "call-second | Kamailio CPU per call-second | generator % of a core | lost W->P / P->W "
    "| W->P p50 / p99 ms | P->W p50 / p99 ms | at the bar |"
)
HISTORY_RULE = "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---|"
_ROW_RE = re.compile(r"^\| \d{4}-\d{2}-\d{2} ")

METHOD = """\
Written by `python -m bench --instances N` (`--compare`: first the same
per-instance load on one instance behind the same front, then N instances).
Everything is as in the single-instance benchmark above (the same load
generator, SRTP/Opus and G.711 streams, warm-up, window and measurements),
except the front: N gateway processes, each with its own ports, media range
and HTTP port, no TLS listener (`whatsapp.listen: null`), Meta's requests
relayed to `whatsapp.proxy_listen` (UDP) by Kamailio 6.1 running the shipped
config/kamailio/kamailio.cfg (tests/peers/kamailio.py, dispatcher probing
every 3 s as shipped), one `cluster.nonce_secret_file` for all. The load
generator is Meta: one TLS connection to Kamailio's public port carrying
every call's SIP; Kamailio hashes the Call-ID over the instances (the spread
is whatever the hash gives), Record-Routes itself twice, and the ACK and BYE
carry its entries as Route with the instance's Contact as Request-URI. Media
goes straight between the generator and the instance that took the call,
never through Kamailio. CPU figures are scheduler run time from /proc (all
threads; Kamailio: all its processes), "runs per 100 packets" how often an
instance was put on its core (schedstat) per packet it forwarded. The bar
(issue 3): every call set up, zero loss, p99 added latency under 5 ms both
ways. Capacity ratio = calls carried at the bar by N instances / by one, at
the loads tried; CPU ratio = instance CPU per call-second with N instances /
with one.

Placement: instance i is pinned to core i mod ncpu; the load generator and
Kamailio get the cores left over. On a 2-core machine the one-instance
baseline is the single-instance layout (instance on core 0, generator and
Kamailio on core 1), but with two instances nothing is left over: the
generator and Kamailio run on either core, beside the instances. Under
`--priority realtime` the instances and Kamailio are SCHED_FIFO 10 and the
generator SCHED_FIFO 9, so an instance never waits for the benchmark's own
load generator (as on a dedicated machine) and the generator takes what the
instances leave; `--generator-same-priority` puts it at 10 instead, and then
the instances wait for it. The generator needs most of a core for 200 calls
(one process: TLS SIP, PBX stub, SRTP protect/unprotect and a receive
timestamp for every packet), the two instances about as much each as one
instance alone, so at 100 calls per instance this machine is short of CPU
and one of the two has to give: the report shows the generator's CPU, its
wait for a core and its pacer lateness, and how long the instances waited.
"""


def at_bar(r: Result) -> tuple[bool, list[str]]:
    """Zero loss, p99 added latency under 5 ms both ways, every call set up."""
    problems: list[str] = []
    if r.calls_failed:
        problems.append(f"{r.calls_failed} of {r.params.calls} calls failed to set up")
    for d in (r.m2p, r.p2m):
        if d.lost:
            problems.append(f"{d.name}: {d.lost} of {d.sent} packets lost")
        p99 = d.latency().get("p99")
        if p99 is None:
            problems.append(f"{d.name}: no latency measured")
        elif p99 >= TARGET_P99_MS:
            problems.append(f"{d.name}: p99 {p99:.2f} ms (bar {TARGET_P99_MS:g} ms)")
    return not problems, problems


def front_per_call_second(r: Result) -> float:
    if r.front is None or not r.call_seconds:
        return float("nan")
    return r.front.cpu / r.call_seconds


def _front_pct(r: Result) -> float:
    if r.front is None or not r.window_seconds:
        return float("nan")
    return 100 * r.front.cpu / r.window_seconds


def others_pct(r: Result) -> float:
    """Busy time of all cores (interrupts left out) not spent in the instances, Kamailio or
    the load generator: other work on the machine, in % of one core."""
    busy = sum(
        sum(v for k, v in use.items() if k not in ("idle", "iowait", "irq", "softirq"))
        for use in r.core_use.values()
    )
    ours = r.daemon_cpu + r.generator_cpu + (r.front.cpu if r.front is not None else 0.0)
    return max(0.0, 100 * busy - 100 * ours / r.window_seconds) if r.window_seconds else 0.0


def _pps(d: DirectionStats, r: Result) -> str:
    return f"{d.sent / r.call_seconds:.1f}" if r.call_seconds else "-"


def _lat(d: DirectionStats) -> str:
    lat = d.latency()
    return f"{_ms(lat.get('p50'))} / {_ms(lat.get('p99'))}"


def _each(r: Result, fmt: str, attr: str) -> str:
    return " / ".join(fmt.format(getattr(i, attr)) for i in r.instances)


def _spread(r: Result) -> str:
    counts = [i.calls for i in r.instances]
    text = " / ".join(str(c) for c in counts)
    if len(counts) > 1 and any(counts):
        text += f" ({100 * max(counts) / sum(counts):.0f} % on the busiest)"
    return text


def _front_text(r: Result) -> tuple[str, str, str]:
    """(window, set-up, teardown) cells for Kamailio."""
    f = r.front
    if f is None:
        return ("-", "-", "-")
    n = max(r.calls_ok + r.calls_failed, 1)
    window = (
        f"{f.cpu:.2f} s = {1000 * front_per_call_second(r):.3f} ms per call-second, "
        f"{_front_pct(r):.1f} % of a core"
    )
    setup = f"{f.ramp_cpu:.2f} s = {1000 * f.ramp_cpu / n:.2f} ms per call"
    down = f"{f.hangup_cpu:.2f} s = {1000 * f.hangup_cpu / max(r.calls_ok, 1):.2f} ms per call"
    if f.alive_at_end != f.processes:
        down += f"; {f.processes - f.alive_at_end} of its {f.processes} processes died"
    return window, setup, down


def _column(r: Result) -> list[str]:
    ok, problems = at_bar(r)
    window, setup, down = _front_text(r)
    fails = "; ".join(f"{n}x {w}" for w, n in r.failures.items())
    return [
        f"{r.calls_ok} / {r.calls_failed}" + (f" ({fails})" if fails else ""),
        _spread(r),
        f"{_ms(percentile(r.setup_ms, 50))} / {_ms(percentile(r.setup_ms, 99))} ms",
        f"{r.window_seconds:.1f} s, {r.call_seconds:.0f} call-seconds; "
        f"{_pps(r.m2p, r)} / {_pps(r.p2m, r)} packets per call-second sent (50 nominal)",
        " / ".join(f"{1000 * i.cpu_per_call_second:.2f}" for i in r.instances) + " ms",
        f"{1000 * r.cpu_per_call_second:.2f} ms ({r.daemon_cpu:.1f} s CPU)",
        _each(r, "{:.0f} %", "core_pct"),
        " / ".join(f"{1000 * i.wait:.0f} ms" for i in r.instances),
        window,
        setup,
        down,
        f"{r.generator_core_pct:.0f} % of a core, waited {1000 * r.generator_wait:.0f} ms; "
        f"pacer lateness p99 {r.pacer_late_p99_ms:.2f} ms, max {r.pacer_late_max_ms:.1f} ms",
        "; ".join(_core_text(c, u) for c, u in sorted(r.core_use.items())),
        f"{others_pct(r):.0f} % of a core",
        f"{r.m2p.lost} / {r.p2m.lost} (of {r.m2p.sent} / {r.p2m.sent} sent)",
        _lat(r.m2p),
        _lat(r.p2m),
        f"{r.socket_drops}",
        "**yes**" if ok else "**no**: " + "; ".join(problems),
    ]


ROWS = (
    "calls set up / failed",
    "calls per instance (Kamailio's Call-ID hash)",
    "call set-up p50 / p99 (INVITE to 200, 407 round included)",
    "measurement window; load sent W->P / P->W",
    "**CPU per call-second, each instance**",
    "CPU per call-second, all instances",
    "each instance's share of its core",
    "each instance runnable but waiting for its core",
    "**Kamailio CPU in the window** (all its processes)",
    "Kamailio CPU during the ramp (set-up)",
    "Kamailio CPU during the hang-up",
    "load generator (one process: Meta, PBX, all streams)",
    "cores in the window (whole machine)",
    "other work on the machine (cores' busy time minus the above, interrupts aside)",
    "packets lost W->P / P->W",
    "W->P added latency p50 / p99 ms",
    "P->W added latency p50 / p99 ms",
    "datagrams dropped by the kernel",
    "at the bar (every call up, zero loss, p99 < 5 ms)",
)


def _title(r: Result) -> str:
    n = r.params.instances
    return f"{n} instance{'s' if n > 1 else ''} x {r.params.calls} calls"


def ratios(base: Result, main: Result) -> list[str]:
    """The capacity and CPU ratios of main (N instances) to base (one), as sentences."""
    n = main.params.instances
    b_ok, m_ok = at_bar(base)[0], at_bar(main)[0]
    cost_b, cost_m = base.cpu_per_call_second, main.cpu_per_call_second
    cpu_ratio = cost_m / cost_b if cost_b else float("nan")
    out = []
    if b_ok and m_ok:
        out.append(
            f"**Capacity ratio {main.calls_ok / base.calls_ok:.2f}**: {n} instances carried "
            f"{main.calls_ok} calls at the bar, one instance {base.calls_ok} (both at the bar; "
            "each is the load tried, a lower bound of what it carries)."
        )
    elif b_ok:
        out.append(
            f"**Capacity ratio not reached**: one instance carried {base.calls_ok} calls at the "
            f"bar, {n} instances did not carry {main.calls_ok} at it "
            f"(so the ratio at this load is below {main.calls_ok / base.calls_ok:.2f})."
        )
    else:
        out.append(
            f"**No capacity ratio**: the one-instance baseline ({base.calls_ok} calls) missed "
            "the bar itself."
        )
    if not math.isnan(cpu_ratio):
        linear = n / cpu_ratio
        out.append(
            f"**CPU ratio {cpu_ratio:.2f}**: instance CPU per call-second "
            f"{1000 * cost_m:.2f} ms with {n} instances against {1000 * cost_b:.2f} ms with one; "
            f"CPU-bound capacity of {n} instances = {linear:.2f}x one instance's "
            f"({n} / {cpu_ratio:.2f}: linear would be {n}.00)."
        )
    return out


def render(results: list[Result], commit: str) -> str:
    main = results[-1]
    base = results[0] if len(results) > 1 else None
    lines = [
        f"{LATEST}: {main.started}",
        "",
        f"Command: `python -m bench {command_args(main.params)}` (ramp {main.params.rate:g} "
        f"calls/s, warm-up {main.params.warmup:g} s"
        + (
            f"; first the baseline `python -m bench {command_args(base.params)}`"
            if base is not None
            else ""
        )
        + f"). Code: {commit}.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine().items()],
        "",
        "Placement: "
        + "; ".join(f"{_title(r)}: {r.placement}" for r in results)
        + ". "
        + " ".join(n for n in main.notes if n.startswith("priority")),
        "",
        "| figure | " + " | ".join(_title(r) for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    columns = [_column(r) for r in results]
    for k, name in enumerate(ROWS):
        lines.append(f"| {name} | " + " | ".join(c[k] for c in columns) + " |")
    if base is not None:
        for sentence in ratios(base, main):
            lines += ["", sentence]
    lines += ["", *_per_instance(results)]
    lines += ["", *_notes(results)]
    return "\n".join(lines).rstrip() + "\n"


def _per_instance(results: list[Result]) -> list[str]:
    rows = [
        "Per instance:",
        "",
        "| run | instance | core | calls | CPU per call-second (user + system) | % of its core "
        "| waited | runs per 100 packets | lost W->P / P->W | W->P p50 / p99 ms "
        "| P->W p50 / p99 ms | memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows += [_instance_row(_title(r), i) for i in r.instances]
    return rows


def _instance_row(run: str, i: InstanceResult) -> str:
    core = "-" if i.core is None else str(i.core)
    packets = i.m2p.received + i.p2m.received
    runs = f"{100 * i.slices / packets:.0f}" if packets else "-"
    split = (i.utime + i.stime) or 1.0
    return (
        f"| {run} | {i.name} | {core} | {i.calls} | {1000 * i.cpu_per_call_second:.2f} ms "
        f"({100 * i.utime / split:.0f} % + {100 * i.stime / split:.0f} %) | "
        f"{i.core_pct:.0f} % | {1000 * i.wait:.0f} ms | {runs} | {i.m2p.lost} / {i.p2m.lost} | "
        f"{_lat(i.m2p)} | {_lat(i.p2m)} | {i.rss_idle_kib / 1024:.0f} -> "
        f"{i.rss_kib / 1024:.0f} MiB |"
    )


def caveats(r: Result) -> list[str]:
    """What the shared machine did to this run's figures (2 cores: the load generator and
    Kamailio run beside the instances)."""
    out: list[str] = []
    if r.generator_wait_pct >= 10:
        out.append(
            f"the load generator was short of CPU: runnable but without a core for "
            f"{r.generator_wait:.1f} s ({r.generator_wait_pct:.0f} % of the window); it used "
            f"{r.generator_core_pct:.0f} % of a core"
        )
    if r.pacer_late_p99_ms > 3:
        out.append(
            f"its sends ran late (pacer lateness p99 {r.pacer_late_p99_ms:.1f} ms, max "
            f"{r.pacer_late_max_ms:.0f} ms) and were caught up in bursts; added latency is "
            "counted from the actual send, so the lateness itself is not in it"
        )
    waits = [i for i in r.instances if i.wait_pct >= 1]
    if waits:
        out.append(
            "instances waited for their cores while the generator or Kamailio ran there: "
            + ", ".join(f"{i.name} {1000 * i.wait:.0f} ms" for i in waits)
            + "; that wait is in the added latency"
        )
    if r.socket_drops:
        out.append(f"the kernel dropped {r.socket_drops} datagrams on the benchmark's sockets")
    return out


def _notes(results: list[Result]) -> list[str]:
    out: list[str] = []
    for r in results:
        notes = [f"**caveat**: {c}" for c in caveats(r)]
        notes += [n for n in r.notes if not n.startswith("priority")]
        if r.audio:
            audio = "; ".join(f"{k}: {v}" for k, v in r.audio.items())
            notes.append(f"audio check (call 0): {audio}")
        notes.append(
            f"teardown: {r.byes_ok} BYEs answered 200, {r.byes_failed} not; {r.pbx_byes} BYEs "
            f"reached the PBX; exit status {[i.exit for i in r.instances]}"
        )
        if r.front is not None and r.front.errors:
            notes.append("Kamailio logged errors: " + " | ".join(r.front.errors[:5]))
        if r.daemon_errors:
            notes.append("errors in the instances' logs: " + " | ".join(r.daemon_errors[:5]))
        out += [f"- {_title(r)}: {n}" for n in notes]
    return ["Notes:", "", *out] if out else []


def history_row(r: Result, commit: str) -> str:
    ok, _ = at_bar(r)
    spread = "/".join(str(i.calls) for i in r.instances)
    costs = " / ".join(f"{1000 * i.cpu_per_call_second:.2f}" for i in r.instances)
    return (
        f"| {r.started[:16]} | {commit.split(' ')[0]}{'*' if 'uncommitted' in commit else ''} | "
        f"`{command_args(r.params)}` | {r.params.instances} | {r.calls_ok} ({spread}) | "
        f"{costs} ms | {1000 * front_per_call_second(r):.3f} ms | "
        f"{r.generator_core_pct:.0f} % | {r.m2p.lost} / {r.p2m.lost} | {_lat(r.m2p)} | "
        f"{_lat(r.p2m)} | {'yes' if ok else 'no'} |"
    )


def write_markdown(path: Path, results: list[Result]) -> None:
    """Replace the scale-out sections (history rows kept, new ones appended; sections
    written by hand kept)."""
    commit = results[-1].code or git_describe()
    before: list[str] = []
    after: list[str] = []
    by_hand: list[str] = []
    rows: list[str] = []
    section, seen = "", False
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
        if section.startswith(SCALE_OUT):
            seen = True
            if section.startswith(HISTORY) and _ROW_RE.match(line):
                rows.append(line)
            elif not section.startswith((LATEST, METHOD_TITLE, HISTORY)):
                by_hand.append(line)
        else:
            (after if seen else before).append(line)
    rows += [history_row(r, r.code or commit) for r in results]
    out = [
        "\n".join(before).rstrip(),
        "",
        render(results, commit).rstrip(),
        "",
        *(["\n".join(by_hand).rstrip(), ""] if by_hand else []),
        METHOD_TITLE,
        "",
        METHOD.rstrip(),
        "",
        HISTORY,
        "",
        "One row per run, newest last (a `--compare` invocation writes its baseline row first).",
        "",
        HISTORY_HEADER,
        HISTORY_RULE,
        *rows,
        "",
    ]
    if after:
        out += ["\n".join(after).rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))


def render_stdout(results: list[Result]) -> str:
    return render(results, results[-1].code or git_describe())
