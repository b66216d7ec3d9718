"""The benchmark's report: the machine, the figures, the verdict; stdout and docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import math
import os
import platform
import re
import subprocess
from pathlib import Path

from bench.impair import args as impair_args
from bench.result import Params, Result
from bench.run import git_describe, summary_numbers
from bench.stats import DirectionStats, percentile, worst_moments

TARGET_CALLS = 200
TARGET_P99_MS = 5.0
HISTORY_HEADER = (
    "| date | commit | arguments | calls up | daemon CPU per call-second | % of one core "
    "| lost W->P | lost P->W | W->P p50 / p99 ms | P->W p50 / p99 ms | other load on core 0 "
    "| target |"
)
HISTORY_RULE = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
SCALE_OUT = "## Scale-out"  # sections written by bench.scaleout, kept as they are here
_HISTORY_ROW_RE = re.compile(r"^\| \d{4}-\d{2}-\d{2} ")
# The sections write_markdown writes itself (the rest of the file is kept as it is)
_WRITTEN_HERE = ("## Latest run", "## Where the daemon's time goes", "## History")


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines())
    )
    info["CPU"] = fields.get("Model name") or platform.processor() or "unknown"
    mhz = fields.get("CPU max MHz") or fields.get("CPU MHz")
    if mhz:
        info["CPU"] += f" ({float(mhz):.0f} MHz)"
    info["cores"] = f"{os.cpu_count()} ({fields.get('Thread(s) per core', '?')} thread(s) per core)"
    if fields.get("Hypervisor vendor"):
        info["virtualisation"] = (
            f"{fields['Hypervisor vendor']} ({fields.get('Virtualization type', '?')})"
        )
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    info["memory"] = mem or "unknown"
    info["kernel"] = f"{platform.system()} {platform.release()}"
    info["Python"] = f"{platform.python_implementation()} {platform.python_version()}"
    libs = []
    for dist in ("pylibsrtp", "opuslib-next"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs.append(f"{dist} {importlib.metadata.version(dist)}")
    try:
        import opuslib_next  # type: ignore[import-untyped]

        fn = opuslib_next.api.libopus.opus_get_version_string
        fn.restype = ctypes.c_char_p
        libs.append(fn().decode())
    except Exception:
        pass
    info["libraries"] = ", ".join(libs)
    return info


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def _key_exchange(r: Result) -> str:
    if r.params.srtp == "dtls":
        return "WebRTC media: ICE-lite and the DTLS-SRTP handshake included"
    return "SDES keys from the SDP"


def _no_media(r: Result) -> str:
    return f"; {r.no_first_media} calls had none by the window" if r.no_first_media else ""


def verdict(r: Result) -> tuple[bool, list[str]]:
    """Whether the issue's target is met, and each shortfall in numbers."""
    problems: list[str] = []
    if r.params.calls < TARGET_CALLS:
        problems.append(f"run with {r.params.calls} calls; the target is {TARGET_CALLS}")
    if r.calls_failed:
        problems.append(f"{r.calls_failed} of {r.params.calls} calls failed to set up")
    for d in (r.m2p, r.p2m):
        if d.lost:
            pct = 100 * d.lost / d.sent if d.sent else 0
            problems.append(f"{d.name}: {d.lost} of {d.sent} packets lost ({pct:.3f} %)")
        p99 = d.latency().get("p99")
        if p99 is None:
            problems.append(f"{d.name}: no latency measured")
        elif p99 >= TARGET_P99_MS:
            over = d.over(TARGET_P99_MS)
            problems.append(
                f"{d.name}: p99 {p99:.2f} ms is {p99 / TARGET_P99_MS:.1f}x the "
                f"{TARGET_P99_MS:g} ms budget; {over} packets "
                f"({100 * over / max(d.received, 1):.1f} %) over it"
            )
    if r.daemon_core_pct >= 90:
        problems.append(
            f"the daemon used {r.daemon_core_pct:.0f} % of its core: saturated, no headroom "
            f"left for latency (at this cost a core 100 % busy would carry "
            f"{capacity(r):.0f} calls; the latency target needs it well below that)"
        )
    if r.socket_drops:
        problems.append(f"the kernel dropped {r.socket_drops} datagrams on the benchmark's sockets")
    if not r.pinned:
        problems.append("not pinned to one core: the one-core condition was not enforced")
    return not problems, problems


def caveats(r: Result) -> list[str]:
    """Conditions that make this run's latency figures less trustworthy."""
    out: list[str] = []
    throttled = r.params.priority == "realtime" and r.daemon_core_pct + r.daemon_wait_pct > 98
    if throttled:
        out.append(
            f"the daemon (SCHED_FIFO) wanted more than its whole core: the kernel's real-time "
            f"throttling (sched_rt_runtime_us) held it to {r.daemon_core_pct:.0f} % and it "
            f"waited {1000 * r.daemon_wait:.0f} ms; it was saturated"
        )
    elif r.daemon_wait_pct >= 1:
        out.append(
            f"the daemon waited {1000 * r.daemon_wait:.0f} ms ({r.daemon_wait_pct:.1f} % of the "
            "window) for its core while other processes ran on it (a shared machine): "
            "latency is inflated by that wait and by the backlog it leaves"
        )
    if r.pacer_late_p99_ms > 3:
        out.append(
            f"the load generator sent late (pacer lateness p99 {r.pacer_late_p99_ms:.1f} ms): "
            "its packets arrived in bursts rather than evenly spread"
        )
    if r.generator_core_pct > 85:
        out.append(f"the load generator used {r.generator_core_pct:.0f} % of its core")
    return out


def capacity(r: Result) -> float:
    """Calls one core would carry at this per-call cost (linear, 100 % busy)."""
    cost = r.cpu_per_call_second
    return 1.0 / cost if cost and not math.isnan(cost) else float("nan")


def gc_text(r: Result) -> str:
    if not r.gc_pauses:
        return "no runs recorded"
    by_gen: dict[int, list[float]] = {}
    for seconds, gen in r.gc_pauses:
        by_gen.setdefault(gen, []).append(seconds * 1000)
    total = sum(sum(v) for v in by_gen.values())
    parts = [f"gen {g}: {len(v)} runs, max {max(v):.1f} ms" for g, v in sorted(by_gen.items())]
    return f"{total:.0f} ms paused in total ({'; '.join(parts)})"


def per_packet_us(r: Result) -> float:
    packets = r.m2p.received + r.p2m.received
    return 1e6 * r.daemon_cpu / packets if packets else float("nan")


def command_args(p: Params) -> str:
    args = f"--calls {p.calls} --seconds {p.seconds:g}"
    if p.instances != 1:
        args = f"--instances {p.instances} " + args
    if p.front != ("direct" if p.instances == 1 else "kamailio"):
        args = f"--front {p.front} " + args
    if p.warmup != 3.0:
        args += f" --warmup {p.warmup:g}"
    if p.opus_complexity is not None:
        args += f" --opus-complexity {p.opus_complexity}"
    if p.engine is not None:
        args += f" --engine {p.engine}"
    if p.priority != "normal":
        args += f" --priority {p.priority}"
    if p.profile:
        args += " --profile"
    if p.log_level != "warning":
        args += f" --log-level {p.log_level}"
    if p.ref is not None:
        args += f" --ref {p.ref}"
    if p.daemon_gc:
        args += f" --daemon-gc {p.daemon_gc}"
    if not p.meta_rtcp:
        args += " --no-meta-rtcp"
    if p.compare:
        args += " --compare"
    if not p.generator_below:
        args += " --generator-same-priority"
    if p.srtp != "sdes":
        args += f" --srtp {p.srtp}"
    return args + impair_args(p)


def _core_text(core: int, use: dict[str, float]) -> str:
    busy = 100 * (1 - use.get("idle", 0) - use.get("iowait", 0))
    parts = [f"core {core}: {busy:.0f} % busy"]
    detail = [
        f"{k} {100 * use[k]:.0f} %" for k in ("user", "system", "softirq", "steal") if use.get(k)
    ]
    return parts[0] + (f" ({', '.join(detail)})" if detail else "")


def _direction_rows(d: DirectionStats) -> list[str]:
    lat = d.latency()
    return [
        f"| {d.name} | {d.sent} | {d.received} | {d.lost} | {_ms(lat.get('p50'))} | "
        f"{_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {_ms(lat.get('p99.9'))} | "
        f"{_ms(lat.get('max'))} | {d.over(TARGET_P99_MS)} |"
    ]


def render_latest(r: Result, info: dict[str, str], commit: str) -> str:
    p = r.params
    nums = summary_numbers(r)
    ok, problems = verdict(r)
    lines = [
        f"## Latest run: {r.started}",
        "",
        f"Command: `python -m bench {command_args(p)}`"
        f" (ramp {p.rate:g} calls/s, warm-up {p.warmup:g} s"
        f"{', py-spy attached' if p.profile else ''}). Code: {commit}."
        f" Media engine: {r.engine or 'not read'}."
        + (
            f" Opus encoder complexity {p.opus_complexity} (not the default)."
            if p.opus_complexity is not None
            else " Gateway defaults (Opus encoder complexity as configured by default)."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "### Result",
        "",
        "| figure | value |",
        "|---|---|",
        f"| calls set up / failed | {r.calls_ok} / {r.calls_failed}"
        + (f" ({'; '.join(f'{n}x {w}' for w, n in r.failures.items())})" if r.failures else "")
        + " |",
        f"| call setup time p50 / p99 (INVITE to 200, 407 round included) | "
        f"{_ms(nums['setup_p50'])} / {_ms(nums['setup_p99'])} ms |",
        f"| call setup to media p50 / p99 (INVITE to the first SRTP from the gateway "
        f"decrypted; {_key_exchange(r)}) | {_ms(nums['media_p50'])} / {_ms(nums['media_p99'])} "
        f"ms{_no_media(r)} |",
        *(
            [
                f"| DTLS handshake at the WhatsApp side p50 / p99 (first ClientHello to keys) "
                f"| {_ms(nums['handshake_p50'])} / {_ms(nums['handshake_p99'])} ms |",
                f"| the gateway's ICE checks answered / dropped (consent included) "
                f"| {r.stun_answered} / {r.stun_dropped} |",
            ]
            if r.params.srtp == "dtls"
            else []
        ),
        *[
            f"| setup phase {name} p50 / p99 | {_ms(percentile(v, 50))} / "
            f"{_ms(percentile(v, 99))} ms |"
            for name, v in r.setup_phases_ms.items()
        ],
        f"| last forwarded packet after the last send | {1000 * r.drain_seconds:.0f} ms |",
        f"| INVITE retransmissions seen by the PBX | {r.pbx_invite_retransmissions} |",
        f"| ramp ({r.calls_ok + r.calls_failed} calls) | {r.ramp_seconds:.1f} s, daemon CPU "
        f"{r.ramp_daemon_cpu:.2f} s ({100 * r.ramp_daemon_cpu / max(r.ramp_seconds, 1e-9):.0f} % "
        f"of its core); forwarding delay at its end {r.backlog_after_ramp_ms:.0f} ms |",
        f"| warm-up until the delay stayed under 20 ms for 1 s | {r.settle_seconds:.1f} s |",
        f"| measurement window | {r.window_seconds:.1f} s, {r.call_seconds:.0f} call-seconds |",
        f"| **daemon CPU per call-second** | **{r.cpu_per_call_second * 1000:.2f} ms** "
        f"({r.daemon_cpu:.2f} s CPU: user {r.daemon_utime:.2f} s, system {r.daemon_stime:.2f} s) |",
        f"| **daemon share of one core** | **{r.daemon_core_pct:.1f} %**"
        f"{' (pinned to core 0)' if r.pinned else ' (not pinned)'} |",
        f"| daemon CPU per forwarded packet (both directions) | {per_packet_us(r):.1f} us |",
        f"| calls one core would carry at this cost (linear) | {capacity(r):.0f} |",
        f"| daemon memory (RSS) idle / with the calls | {r.daemon_rss_idle_kib / 1024:.0f} / "
        f"{r.daemon_rss_kib / 1024:.0f} MiB ("
        f"{(r.daemon_rss_kib - r.daemon_rss_idle_kib) / max(r.calls_ok, 1):.0f} KiB per call) |",
        f"| load generator CPU (its own core) | {r.generator_core_pct:.1f} % of core "
        f"{1 if r.pinned else '?'}; pacer lateness p99 {r.pacer_late_p99_ms:.2f} ms, "
        f"max {r.pacer_late_max_ms:.2f} ms |",
        "| cores in the window (whole machine) | "
        + "; ".join(_core_text(c, u) for c, u in sorted(r.core_use.items()))
        + " |",
        f"| other processes on the daemon's core (from /proc/stat) | "
        f"{r.others_on_daemon_core_pct:.0f} % |",
        f"| daemon runnable but waiting for its core (others running) | "
        f"{1000 * r.daemon_wait:.0f} ms = {r.daemon_wait_pct:.1f} % of the window |",
        f"| daemon's garbage collector in the window | {gc_text(r)} |",
        f"| datagrams dropped by the kernel on the benchmark's sockets | {r.socket_drops} "
        "(system-wide UDP counters: "
        + ", ".join(f"{k} {v}" for k, v in r.udp_drops.items())
        + ") |",
        "",
        "### Packets and added latency (packets sent inside the window)",
        "",
        "Latency: kernel arrival time at the receiving leg minus the time the packet was "
        "handed to `sendto` on the other leg, in ms.",
        "",
        "| direction | sent | received | lost | p50 | p90 | p99 | p99.9 | max | > 5 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *_direction_rows(r.m2p),
        *_direction_rows(r.p2m),
        "",
        "Worst moments (largest added latency per 100 ms of send time, seconds into the "
        "window): "
        + "; ".join(
            f"{d.name}: " + ", ".join(f"{t:.1f} s {ms:.1f} ms" for t, ms in worst_moments(d))
            for d in (r.m2p, r.p2m)
        )
        + ".",
        "",
        "Audio check (call 0, decoded): "
        + "; ".join(f"{k}: {v}" for k, v in r.audio.items())
        + ".",
        f"Gateway keep-alive (silence) frames toward WhatsApp inside the window: "
        f"{r.p2m.gateway_silence}. SRTCP/RTCP reports received: WhatsApp side {r.p2m.rx_rtcp}, "
        f"PBX side {r.m2p.rx_rtcp}; SRTCP receiver reports sent by the WhatsApp side (whole "
        f"run): {r.meta_reports_sent}. Bad packets (auth failures, wrong type): "
        f"{r.p2m.rx_bad + r.m2p.rx_bad}. Unmatched or negative matches: "
        f"{r.p2m.late_or_stray + r.m2p.late_or_stray} / {r.p2m.negative + r.m2p.negative}.",
        f"Teardown: {r.byes_ok} BYEs answered 200, {r.byes_failed} not; {r.pbx_byes} BYEs "
        f"reached the PBX; daemon exit status {r.daemon_exit}.",
        "",
        "### Target",
        "",
        f"Target: one daemon process on one core carries {TARGET_CALLS} concurrent transcoded "
        f"calls with zero loss and p99 added latency under {TARGET_P99_MS:g} ms.",
        "",
        f"**{'Met.' if ok else 'Not met.'}**",
    ]
    lines += [f"- {p}" for p in problems]
    notes = caveats(r)
    if notes:
        lines += ["", "Caveats for this run:", "", *[f"- {n}" for n in notes]]
    if r.notes:
        lines += ["", *[f"Note: {n}" for n in r.notes]]
    if r.daemon_errors:
        lines += ["", "Errors in the daemon's log:", "", "```", *r.daemon_errors, "```"]
    if r.profile_note and not r.profile:
        lines += ["", f"Profile: {r.profile_note}"]
    return "\n".join(lines) + "\n"


def render_profile(r: Result, commit: str) -> str:
    """The py-spy section; kept in docs/benchmarks.md until the next profiled run."""
    p = r.params
    busy = 100 - next((t for name, _, t in r.profile_total if "select" in name), 0.0)
    lines = [
        "## Where the daemon's time goes (latest profiled run)",
        "",
        f"From `python -m bench {command_args(p)}` on {r.started} (code {commit}): "
        f"{r.profile_note}. Percentages are of all samples of the daemon's threads, idle "
        f"(waiting in `select`) included: Python code outside `select` in {busy:.0f} % of "
        "the samples (py-spy sees Python frames; kernel time spent in the `select` call, "
        "such as wake-ups, counts as `select`). "
        f"That run: {r.calls_ok} calls, {r.cpu_per_call_second * 1000:.2f} ms CPU per "
        f"call-second, {r.daemon_core_pct:.0f} % of one core.",
        "",
        "By self time (the function itself, not what it calls):",
        "",
        "| function | self % | total % |",
        "|---|---:|---:|",
        *[f"| `{name}` | {s:.1f} | {t:.1f} |" for name, s, t in r.profile],
    ]
    if r.profile_total:
        lines += [
            "",
            "By inclusive time:",
            "",
            "| function | self % | total % |",
            "|---|---:|---:|",
            *[f"| `{name}` | {s:.1f} | {t:.1f} |" for name, s, t in r.profile_total],
        ]
    return "\n".join(lines) + "\n"


def history_row(r: Result, commit: str) -> str:
    m2p, p2m = r.m2p.latency(), r.p2m.latency()
    ok, _ = verdict(r)
    return (
        f"| {r.started[:16]} | {commit.split(' ')[0]}{'*' if 'uncommitted' in commit else ''} | "
        f"`{command_args(r.params)}` | {r.calls_ok} | "
        f"{r.cpu_per_call_second * 1000:.2f} ms | {r.daemon_core_pct:.0f} % | "
        f"{r.m2p.lost} | {r.p2m.lost} | {_ms(m2p.get('p50'))} / {_ms(m2p.get('p99'))} | "
        f"{_ms(p2m.get('p50'))} / {_ms(p2m.get('p99'))} | {r.others_on_daemon_core_pct:.0f} % | "
        f"{'met' if ok else 'not met'} |"
    )


METHOD = """\
# Benchmarks

Written by `make bench` (`python -m bench`); rerun it to update this page.

How it measures: the gateway daemon runs as its own process from a generated
config (development mode, loopback, logging at warning), pinned to core 0.
The load generator (`bench/`) runs in one process pinned to core 1: it is
WhatsApp (one TLS connection carrying every call's SIP: Meta-shaped INVITE
with a real SDES key, the 407 digest challenge answered, ACK, BYE) and the PBX
(a SIP/UDP stub that answers each INVITE with PCMU at once). Calls ramp up,
then media flows both ways at 50 packets/s per stream: real SRTP/Opus from
the WhatsApp side (a pre-encoded 440 Hz tone, 20 kbit/s, protected per packet
with the offered key), RTP/PCMU from the PBX side (800 Hz), sends spread over
the 20 ms by one 1 ms timer. Like an RTP peer, the WhatsApp side sends an
SRTCP receiver report every 5 s (250 packets) with the loss it saw on the
gateway's stream since the last one; the gateway plans its Opus FEC by these
(`--no-meta-rtcp`: none sent, FEC stays planned as configured). Every call is
transcoded both ways (Opus <-> PCMU, SRTP <-> RTP). After a warm-up, a
window of steady state is measured: the daemon's CPU (/proc: all threads'
run time), packets sent on one leg against packets forwarded to the other
(the k-th sent is the k-th forwarded; the gateway's own keep-alive silence
frames are recognised and left out), and
added latency per packet = kernel receive timestamp (`SO_TIMESTAMPNS`) on the
receiving leg minus the time of `sendto` on the sending leg, same clock, same
process. CPU seconds per call-second = daemon CPU seconds / (calls x window
seconds). The window opens once what the ramp queued up has drained
(forwarded packets under 20 ms old for 1 s, at most 15 s after the ramp).

On a shared machine other work competes for the daemon's core: the report
shows how long the daemon was runnable but waiting for it
(`/proc/<pid>/task/*/schedstat`). `--priority realtime` (SCHED_FIFO for the
daemon and the generator) emulates a dedicated core; the kernel's real-time
throttling then still caps the daemon at 95 % of its core. `--ref HEAD` runs
the daemon from `gateway/` as committed rather than from a working tree that
may be in the middle of an edit. `--profile` samples the daemon with py-spy.
`--srtp dtls`: the WhatsApp side offers Meta's WebRTC media instead of SDES
(ICE-lite, the DTLS server with one certificate for all calls, then the same
SRTP; bench/webrtc.py) and the number's `srtp` is set to match; call setup to
media (INVITE to the first SRTP from the gateway decrypted) then includes ICE
and the handshake. Both modes side by side: "WebRTC mode (DTLS-SRTP) vs SDES".

What one call costs, where the rest of the time goes and what reaching the
target would take: docs/decisions.md, "Media CPU: 200 transcoded calls on one
core". Several instances behind Kamailio (`python -m bench --instances 2
--compare`, issue 7): the "Scale-out" sections at the end.
"""


def write_markdown(path: Path, r: Result) -> None:
    info = machine()
    commit = r.code or git_describe()
    rows: list[str] = []
    profile = render_profile(r, commit) if r.profile else ""
    scale_out: list[str] = []
    if path.exists():
        section = ""
        kept: list[str] = []
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                section = line
            elif section.startswith("## History") and _HISTORY_ROW_RE.match(line):
                rows.append(line)
            if section.startswith("## Where the daemon's time goes"):
                kept.append(line)
            if section and not section.startswith(_WRITTEN_HERE):
                # kept as written: bench.scaleout's and bench.impair's sections, and
                # those written by hand
                scale_out.append(line)
        if not profile and kept:
            profile = "\n".join(kept).rstrip() + "\n"
    rows.append(history_row(r, commit))
    text = "\n".join(
        [
            METHOD,
            render_latest(r, info, commit),
            *([profile] if profile else []),
            "## History",
            "",
            "One row per run, newest last (* = uncommitted changes in gateway/ at the time)."
            " The `--warmup 10` of the rows from 00ec0c6 to 6b496b8 was added by hand: the"
            " recorded command left a non-default warm-up out until c06554c.",
            "",
            HISTORY_HEADER,
            HISTORY_RULE,
            *rows,
            "",
            *(["\n".join(scale_out).rstrip(), ""] if scale_out else []),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def render_stdout(r: Result) -> str:
    commit = r.code or git_describe()
    text = render_latest(r, machine(), commit)
    return text + ("\n" + render_profile(r, commit) if r.profile else "")


def render_engines(results: list[Result]) -> str:
    """Runs of one invocation with different media engines, side by side (stdout)."""
    lines = ["", "Media engines compared (same invocation, back to back):", ""]
    lines.append(
        "| engine | calls up | CPU per call-second | % of one core | p99 W->P / P->W ms | lost |"
    )
    lines.append("|---|---:|---:|---:|---|---:|")
    per_call: dict[str, list[float]] = {}
    for r in results:
        name = r.engine or (r.params.engine or "default")
        per_call.setdefault(name, []).append(1000 * r.cpu_per_call_second)
        lat_m, lat_p = r.m2p.latency(), r.p2m.latency()
        lines.append(
            f"| {name} | {r.calls_ok} | {1000 * r.cpu_per_call_second:.2f} ms | "
            f"{r.daemon_core_pct:.0f} % | {_ms(lat_m.get('p99'))} / {_ms(lat_p.get('p99'))} | "
            f"{r.m2p.lost + r.p2m.lost} |"
        )
    if "native" in per_call and "python" in per_call:
        native = sum(per_call["native"]) / len(per_call["native"])
        python = sum(per_call["python"]) / len(per_call["python"])
        runs = f" (means of {len(per_call['python'])} and {len(per_call['native'])} runs)"
        lines += [
            "",
            f"CPU per call-second, python / native: {python / native:.2f}x"
            + (runs if len(results) > 2 else ""),
        ]
    return "\n".join(lines)
