"""One benchmark run: start the daemon, ramp the calls up, measure a steady window, tear down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import media
from bench.daemon import (
    BUSINESS_NUMBER,
    HOSTNAME,
    SIP_PASSWORD,
    CpuSample,
    Daemon,
    autogroup_nice,
    export_ref,
    read_core_times,
    read_cpu,
    read_socket_drops,
    read_udp_counters,
    set_priority,
)
from bench.loadgen import SLOTS, Call, MetaCaller, MetaLink, Pacer, PbxStub
from bench.profile import PySpy
from bench.stats import DirectionStats, percentile

SETTLED_MS = 20.0  # the warm-up ends once forwarded packets are this fresh for 1 s
DAEMON_CORE = 0
GENERATOR_CORE = 1


@dataclass
class Params:
    calls: int = 200
    seconds: float = 20.0
    rate: float = 40.0  # new calls per second during the ramp
    warmup: float = 3.0  # seconds of media at least, after the ramp, before the window opens
    settle_max: float = 15.0  # and at most, waiting for the daemon to work off the ramp
    pin: bool = True
    profile: bool = False
    keep: bool = False
    setup_timeout: float = 15.0
    opus_complexity: int | None = None  # None: the gateway's default
    priority: str = "normal"  # of the daemon and the generator: normal, high, realtime
    log_level: str = "warning"  # the daemon's
    wait_quiet: float = 0.0  # wait up to this long for other work on the machine to calm down
    ref: str | None = None  # run the daemon from gateway/ at this git ref (default: working tree)
    daemon_gc: str = ""  # experiment: "threshold=A,B,C" for the daemon's collector
    meta_rtcp: bool = True  # Meta's side sends RTCP receiver reports every 5 s


@dataclass
class Result:
    params: Params
    started: str = ""
    daemon_pid: int = 0
    pinned: bool = False
    calls_ok: int = 0
    calls_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    setup_ms: list[float] = field(default_factory=list)
    setup_phases_ms: dict[str, list[float]] = field(default_factory=dict)
    pbx_invite_retransmissions: int = 0
    meta_reports_sent: int = 0  # SRTCP receiver reports from the WhatsApp side, whole run
    ramp_seconds: float = 0.0
    ramp_daemon_cpu: float = 0.0
    backlog_after_ramp_ms: float = 0.0
    settle_seconds: float = 0.0
    window_seconds: float = 0.0
    daemon_cpu: float = 0.0  # seconds in the window
    daemon_utime: float = 0.0
    daemon_wait: float = 0.0  # seconds runnable but not running: the CPU was someone else's
    daemon_stime: float = 0.0
    daemon_rss_idle_kib: int = 0
    daemon_rss_kib: int = 0
    generator_cpu: float = 0.0
    core_use: dict[int, dict[str, float]] = field(default_factory=dict)  # fraction per column
    udp_drops: dict[str, int] = field(default_factory=dict)  # system-wide counters
    socket_drops: int = 0  # on the benchmark's own sockets (daemon media, generator)
    m2p: DirectionStats = field(default_factory=lambda: DirectionStats("WhatsApp -> PBX"))
    p2m: DirectionStats = field(default_factory=lambda: DirectionStats("PBX -> WhatsApp"))
    drain_seconds: float = 0.0  # from the last send to the last forwarded audio packet
    pacer_late_p99_ms: float = 0.0
    pacer_late_max_ms: float = 0.0
    audio: dict[str, str] = field(default_factory=dict)
    byes_ok: int = 0
    byes_failed: int = 0
    pbx_byes: int = 0
    gateway_byes: int = 0
    daemon_exit: int | None = None
    gc_pauses: list[tuple[float, int]] = field(default_factory=list)  # in the window: (s, gen)
    daemon_errors: list[str] = field(default_factory=list)
    profile: list[tuple[str, float, float]] = field(default_factory=list)  # fn, self%, total%
    profile_total: list[tuple[str, float, float]] = field(default_factory=list)
    profile_note: str = ""
    notes: list[str] = field(default_factory=list)
    code: str = ""  # what the daemon ran: commit, and whether the working tree differed

    @property
    def call_seconds(self) -> float:
        return self.calls_ok * self.window_seconds

    @property
    def cpu_per_call_second(self) -> float:
        return self.daemon_cpu / self.call_seconds if self.call_seconds else float("nan")

    @property
    def daemon_core_pct(self) -> float:
        return 100 * self.daemon_cpu / self.window_seconds if self.window_seconds else 0.0

    @property
    def others_on_daemon_core_pct(self) -> float:
        """Busy time of the daemon's core not spent in the daemon or in interrupts: others."""
        use = self.core_use.get(DAEMON_CORE)
        if not use or not self.pinned:
            return 0.0
        busy = sum(v for k, v in use.items() if k not in ("idle", "iowait", "irq", "softirq"))
        return max(0.0, 100 * busy - self.daemon_core_pct)

    @property
    def daemon_wait_pct(self) -> float:
        """Share of the window the daemon was ready to run but another task had its core."""
        return 100 * self.daemon_wait / self.window_seconds if self.window_seconds else 0.0

    @property
    def generator_core_pct(self) -> float:
        return 100 * self.generator_cpu / self.window_seconds if self.window_seconds else 0.0


def _pin_self(pin: bool) -> bool:
    if not pin or not hasattr(os, "sched_setaffinity"):
        return False
    cores = os.sched_getaffinity(0)
    if DAEMON_CORE not in cores or GENERATOR_CORE not in cores:
        return False
    os.sched_setaffinity(0, {GENERATOR_CORE})
    return True


def _media_range(calls: int) -> tuple[int, int]:
    """An even port range below the ephemeral range, 2 ports per call (even ports only used)."""
    size = 4 * calls + 400
    low = 20000 + 2 * random.randrange(0, (12000 - size) // 2) if size < 12000 else 10000
    return low, low + size


async def _run(p: Params, result: Result, workdir: Path) -> None:
    loop = asyncio.get_running_loop()
    calls_by_wacid: dict[str, Call] = {}
    _, stub = await loop.create_datagram_endpoint(
        lambda: PbxStub(calls_by_wacid), local_addr=("127.0.0.1", 0)
    )
    overrides: dict[str, Any] = {}
    if p.opus_complexity is not None:
        overrides["media"] = {"opus_complexity": p.opus_complexity}
    media_ports = _media_range(p.calls)
    source: Path | None = None
    if p.ref is not None:
        source = workdir / "src"
        sha = export_ref(p.ref, source)
        result.code = f"{sha} (gateway/ as committed, --ref {p.ref})"
    else:
        result.code = git_describe()
    daemon = Daemon(
        workdir,
        pbx_address=stub.address,
        max_calls=max(p.calls + 10, 200),
        core=DAEMON_CORE if result.pinned else None,
        media_ports=media_ports,
        overrides=overrides,
        priority=p.priority,
        log_level=p.log_level,
        source=source,
        gc_mode=p.daemon_gc,
    )
    link: MetaLink | None = None
    pacer = Pacer(loop)
    calls: list[Call] = []
    spy: PySpy | None = None
    m0 = m1 = 0.0
    try:
        await loop.run_in_executor(None, daemon.start)
        result.daemon_pid = daemon.pid
        result.daemon_rss_idle_kib = read_cpu(daemon.pid).rss_kib
        link = MetaLink(daemon.tls_address, HOSTNAME)
        await link.connect()
        caller = MetaCaller(link, BUSINESS_NUMBER, SIP_PASSWORD, HOSTNAME)
        opus, pcmu, silence = (
            media.opus_tone_frames(),
            media.pcmu_tone_frames(),
            media.opus_silence(),
        )

        def on_answer(call: Call) -> None:
            call.opus, call.pcmu, call.poll = opus, pcmu, pacer.poll
            loop.add_reader(call.meta_sock.fileno(), call.meta_readable)
            loop.add_reader(call.pbx_sock.fileno(), call.pbx_readable)
            pacer.add(call.index % SLOTS, call.send_meta)
            pacer.add((call.index + SLOTS // 2) % SLOTS, call.send_pbx)

        pacer.start()
        cpu_before_ramp = read_cpu(daemon.pid)
        t_ramp = loop.time()
        tasks: list[asyncio.Task[None]] = []
        for i in range(p.calls):
            call = Call(i, silence, keep_audio=(i == 0), meta_rtcp=p.meta_rtcp)
            calls.append(call)
            calls_by_wacid[call.wacid] = call
            tasks.append(loop.create_task(caller.place(call, on_answer, p.setup_timeout)))
            delay = t_ramp + (i + 1) / p.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
        result.ramp_seconds = loop.time() - t_ramp
        result.pbx_invite_retransmissions = stub.retransmissions
        our_ports = set(range(media_ports[0], media_ports[1] + 1))
        our_ports |= {daemon.ports["pbx_listen"], stub.address[1]}
        for call in calls:
            our_ports.add(call.meta_sock.getsockname()[1])
            our_ports.add(call.pbx_sock.getsockname()[1])
        phases = result.setup_phases_ms
        for call in calls:
            if call.failure is None and call.answered_at is not None:
                result.calls_ok += 1
                result.setup_ms.append(1000 * (call.answered_at - call.invite_at))
                if call.challenged_at is not None and call.pbx_invite_at is not None:
                    for name, a, b in (
                        ("INVITE -> 407", call.invite_at, call.challenged_at),
                        ("407 -> INVITE at the PBX", call.challenged_at, call.pbx_invite_at),
                        ("PBX 200 -> 200 to WhatsApp", call.pbx_invite_at, call.answered_at),
                    ):
                        phases.setdefault(name, []).append(1000 * (b - a))
            else:
                result.calls_failed += 1
                why = call.failure or "unknown"
                result.failures[why] = result.failures.get(why, 0) + 1
        if not result.calls_ok:
            raise RuntimeError(f"no call was set up: {result.failures}")

        ramp_cpu = read_cpu(daemon.pid)
        result.ramp_daemon_cpu = ramp_cpu.total - cpu_before_ramp.total
        result.backlog_after_ramp_ms = _current_delay_ms(calls)
        # The generator must not pause itself inside the window: no cyclic GC there
        # (the objects it allocates per packet are freed by reference counting).
        gc.collect()
        gc.freeze()
        gc.disable()
        # Steady state: the warm-up lasts until what the ramp queued up has drained.
        t_settle = loop.time()
        await asyncio.sleep(p.warmup)
        calm_since: float | None = None
        while loop.time() - t_settle < p.settle_max:
            now = loop.time()
            if _current_delay_ms(calls) < SETTLED_MS:
                calm_since = calm_since or now
                if now - calm_since >= 1.0:
                    break
            else:
                calm_since = None
            await asyncio.sleep(0.1)
        else:
            result.notes.append(
                f"the daemon had not caught up {p.settle_max:g} s after the ramp (current "
                f"delay {_current_delay_ms(calls):.0f} ms): it cannot keep up with this load"
            )
        result.settle_seconds = loop.time() - t_settle
        # -- the measurement window ------------------------------------------
        if p.profile:
            spy = PySpy(daemon.pid, p.seconds, workdir, GENERATOR_CORE if result.pinned else None)
            result.profile_note = spy.start()
        lateness_from = len(pacer.lateness)
        cpu0: CpuSample = read_cpu(daemon.pid)
        cores0, udp0 = read_core_times(), read_udp_counters()
        drops0 = read_socket_drops(our_ports)
        gen0 = time.process_time()
        w0, m0 = time.time_ns(), time.monotonic()
        await asyncio.sleep(p.seconds)
        w1, m1 = time.time_ns(), time.monotonic()
        gen1 = time.process_time()
        cpu1 = read_cpu(daemon.pid)
        cores1, udp1 = read_core_times(), read_udp_counters()
        result.window_seconds = (w1 - w0) / 1e9
        result.daemon_cpu = cpu1.total - cpu0.total
        result.daemon_wait = (cpu1.wait_ns - cpu0.wait_ns) / 1e9
        result.daemon_utime = cpu1.utime - cpu0.utime
        result.daemon_stime = cpu1.stime - cpu0.stime
        result.daemon_rss_kib = cpu1.rss_kib
        result.generator_cpu = gen1 - gen0
        for core, cols1 in cores1.items():
            cols0 = cores0.get(core, cols1)
            total = sum(cols1.values()) - sum(cols0.values())
            if total > 0:
                result.core_use[core] = {k: (v - cols0[k]) / total for k, v in cols1.items()}
        result.udp_drops = {
            k: udp1[k] - udp0.get(k, 0)
            for k in ("InErrors", "RcvbufErrors", "SndbufErrors")
            if k in udp1
        }
        late = np.asarray(pacer.lateness[lateness_from:]) * 1000
        if late.size:
            result.pacer_late_p99_ms = float(np.percentile(late, 99))
            result.pacer_late_max_ms = float(late.max())
        gc.enable()
        if spy is not None:
            result.profile, result.profile_note = await loop.run_in_executor(None, spy.finish)
            result.profile_total = spy.by_total

        # -- stop sending, let the last packets arrive, analyse ---------------
        pacer.stop()
        result.drain_seconds = await _drain(calls)
        result.socket_drops = read_socket_drops(our_ports) - drops0
        result.meta_reports_sent = sum(call.rr_sent for call in calls)
        for call in calls:
            if call.answered_at is not None and call.failure is None:
                result.m2p.add(call.m2p, w0, w1, call.index)
                result.p2m.add(call.p2m, w0, w1, call.index)
        _check_audio(calls, result)

        # -- hang up ------------------------------------------------------------
        byes = []
        for call in calls:
            byes.append(loop.create_task(caller.hangup(call)))
            await asyncio.sleep(1 / max(p.rate * 2, 1))
        await asyncio.gather(*byes)
        await asyncio.sleep(0.3)
        for call in calls:
            if call.answered_at is None:
                continue
            if call.bye_status == 200:
                result.byes_ok += 1
            elif not call.gateway_bye:
                result.byes_failed += 1
            result.pbx_byes += int(call.pbx_bye)
            result.gateway_byes += int(call.gateway_bye)
    finally:
        gc.enable()
        pacer.stop()
        if spy is not None:
            spy.kill()
        if link is not None:
            await link.close()
        for call in calls:
            with contextlib.suppress(Exception):
                loop.remove_reader(call.meta_sock.fileno())
                loop.remove_reader(call.pbx_sock.fileno())
            call.close()
        result.daemon_exit = await loop.run_in_executor(None, daemon.stop)
        if m0 and m1:
            result.gc_pauses = [(d, g) for t, d, g in daemon.gc_pauses() if m0 <= t <= m1]
        stub_transport = stub.transport
        if stub_transport is not None:
            stub_transport.close()
        result.daemon_errors = [
            line
            for line in daemon.log_text().splitlines()
            if '"error"' in line or "Traceback" in line
        ][:20]


def _current_delay_ms(calls: list[Call]) -> float:
    """How late the most recently forwarded packets are, worst call and direction (ms).

    The n-th audio packet received matches the n-th sent (no loss assumed here), so
    arrival of the last one minus the send time of its match is the current delay.
    """
    worst = 0.0
    for c in calls:
        for d in (c.m2p, c.p2m):
            n = d.audio_rx
            if n and n <= len(d.send_ns) and d.rx_ns:
                last_audio = len(d.rx_kind) - 1
                while last_audio > 0 and d.rx_kind[last_audio]:
                    last_audio -= 1
                worst = max(worst, (d.rx_ns[last_audio] - d.send_ns[n - 1]) / 1e6)
            elif len(d.send_ns) > 25 and not n:
                worst = max(worst, (time.time_ns() - d.send_ns[0]) / 1e6)
    return worst


async def _drain(calls: list[Call], quiet: float = 0.5, limit: float = 10.0) -> float:
    """After the last send: wait until no forwarded audio has arrived for ``quiet`` seconds
    (late packets count with their latency, not as lost); at most ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    start = last_change = loop.time()
    seen = -1
    while loop.time() - start < limit:
        count = sum(c.m2p.audio_rx + c.p2m.audio_rx for c in calls)
        if count != seen:
            seen, last_change = count, loop.time()
        elif loop.time() - last_change >= quiet:
            break
        await asyncio.sleep(0.05)
    return last_change - start


def _check_audio(calls: list[Call], result: Result) -> None:
    """Decode what call 0 received on each side: the other side's tone must be there."""
    c0 = next((c for c in calls if c.index == 0 and c.answered_at is not None), None)
    if c0 is None:
        return
    checks = (
        ("WhatsApp -> PBX", c0.m2p.keep, media.decode_pcmu, 8000, media.META_TONE_HZ),
        ("PBX -> WhatsApp", c0.p2m.keep, media.decode_opus, 16000, media.PBX_TONE_HZ),
    )
    for name, keep, decode, rate, want in checks:
        if not keep:
            result.audio[name] = "nothing received"
            continue
        pcm = decode(keep[-100:])
        hz, dbfs = media.dominant_hz(pcm, rate)
        ok = abs(hz - want) < 15 and dbfs > -30
        verdict = "ok" if ok else "WRONG"
        result.audio[name] = f"{verdict}: {hz:.0f} Hz at {dbfs:.1f} dBFS (sent {want:.0f} Hz)"


def machine_busy(seconds: float = 2.0) -> float:
    """Fraction of all cores busy over ``seconds`` (whatever runs: this is a shared machine)."""
    a = read_core_times()
    time.sleep(seconds)
    b = read_core_times()
    busy = total = 0.0
    for core, cols in b.items():
        before = a.get(core, cols)
        delta = {k: v - before[k] for k, v in cols.items()}
        total += sum(delta.values())
        busy += sum(delta.values()) - delta["idle"] - delta["iowait"]
    return busy / total if total else 0.0


def wait_quiet(limit: float, threshold: float = 0.15) -> tuple[float, float]:
    """Wait up to ``limit`` seconds for the machine to be under ``threshold`` busy;
    (seconds waited, last busy fraction)."""
    start = time.monotonic()
    busy = machine_busy()
    while busy > threshold and time.monotonic() - start < limit:
        busy = machine_busy()
    return time.monotonic() - start, busy


def run(p: Params) -> Result:
    result = Result(params=p, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if p.wait_quiet > 0:
        waited, busy = wait_quiet(p.wait_quiet)
        result.notes.append(
            f"waited {waited:.0f} s for a quiet machine; {100 * busy:.0f} % of the cores were "
            "busy with other work just before the run"
        )
        result.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    else:
        result.notes.append(
            f"{100 * machine_busy(1.0):.0f} % of the cores were busy with other work just "
            "before the run"
        )
    result.pinned = _pin_self(p.pin)
    old_autogroup = autogroup_nice()
    if p.priority != "normal":
        try:
            result.notes.append(
                f"priority {p.priority}: daemon and load generator each {set_priority(p.priority)}"
            )
        except (OSError, PermissionError) as exc:
            raise RuntimeError(f"cannot set priority {p.priority}: {exc}") from exc
    if p.pin and not result.pinned:
        result.notes.append("not pinned: the machine lacks cores 0 and 1 for this process")
    workdir = Path(tempfile.mkdtemp(prefix="wagw-bench-"))
    try:
        asyncio.run(_run(p, result, workdir))
    finally:
        if p.priority == "high" and old_autogroup is not None:
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as fh:
                fh.write(str(old_autogroup))  # our session's autogroup is shared: put it back
        if p.keep:
            print(f"workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def git_describe() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{' + uncommitted changes in gateway/' if dirty else ''}"


def summary_numbers(r: Result) -> dict[str, Any]:
    """The figures the report and the history table use."""
    return {
        "setup_p50": percentile(r.setup_ms, 50),
        "setup_p99": percentile(r.setup_ms, 99),
        "m2p": r.m2p.latency(),
        "p2m": r.p2m.latency(),
    }
