"""One benchmark run: start the daemon (or N instances behind Kamailio), ramp the calls
up, measure a steady window, tear down."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import impair, media
from bench.daemon import (
    BUSINESS_NUMBER,
    HOSTNAME,
    SIP_PASSWORD,
    CpuSample,
    autogroup_nice,
    export_ref,
    read_core_times,
    read_cpu,
    read_socket_drops,
    read_udp_counters,
    set_priority,
)
from bench.gateways import Gateways
from bench.loadgen import SLOTS, Call, MetaCaller, MetaLink, Pacer, PbxStub
from bench.placement import Placement, pin_self, place
from bench.profile import PySpy
from bench.result import FrontResult, InstanceResult, Params, Result
from bench.stats import percentile
from bench.webrtc import MetaWebRtc
from gateway.media.dtls import DtlsCertificate

SETTLED_MS = 20.0  # the warm-up ends once forwarded packets are this fresh for 1 s


def _build(
    p: Params, placement: Placement, workdir: Path, pbx: tuple[str, int], result: Result
) -> Gateways:
    overrides: dict[str, Any] = {}
    if p.opus_complexity is not None:
        overrides.setdefault("media", {})["opus_complexity"] = p.opus_complexity
    if p.engine is not None:
        overrides.setdefault("media", {})["engine"] = p.engine
    source: Path | None = None
    if p.ref is not None:
        source = workdir / "src"
        sha = export_ref(p.ref, source)
        result.code = f"{sha} (gateway/ as committed, --ref {p.ref})"
    else:
        result.code = git_describe()
    return Gateways.build(
        workdir,
        instances=p.instances,
        front=p.front,
        placement=placement,
        pbx_address=pbx,
        calls=p.calls,
        priority=p.priority,
        log_level=p.log_level,
        source=source,
        gc_mode=p.daemon_gc,
        overrides=overrides,
        srtp=p.srtp,
    )


def _count_calls(calls: list[Call], gw: Gateways, result: Result) -> None:
    """Calls set up or failed, set-up times and phases, calls per instance."""
    phases = result.setup_phases_ms
    for call in calls:
        if call.failure is None and call.answered_at is not None:
            result.calls_ok += 1
            result.setup_ms.append(1000 * (call.answered_at - call.invite_at))
            if call.gw_wa_addr is not None:
                which = gw.instance_of(call.gw_wa_addr[1])
                if which >= 0:
                    result.instances[which].calls += 1
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


def _count_media_setup(calls: list[Call], result: Result) -> None:
    """INVITE -> first SRTP from the gateway decrypted, and its phases after the 2xx (in
    WebRTC mode: ICE, the DTLS handshake, the first media). Taken after the warm-up, when
    every call that works has had its first media."""
    phases = result.setup_phases_ms
    for call in calls:
        if call.failure is not None or call.answered_at is None:
            continue
        w = call.webrtc
        if call.first_media_at is None:
            result.no_first_media += 1
            continue
        result.media_setup_ms.append(1000 * (call.first_media_at - call.invite_at))
        if w is None:
            steps = [("200 to WhatsApp -> first SRTP from the gateway", call.answered_at)]
        else:
            if w.dtls is not None and w.dtls.handshake_seconds is not None:
                result.handshake_ms.append(1000 * w.dtls.handshake_seconds)
            if w.nominated_at is None or w.keyed_at is None:
                continue
            steps = [
                ("200 to WhatsApp -> ICE nominated (USE-CANDIDATE answered)", call.answered_at),
                ("ICE nominated -> DTLS keys (ClientHello wait + handshake)", w.nominated_at),
                ("DTLS keys -> first SRTP from the gateway", w.keyed_at),
            ]
        ends = [t for _, t in steps[1:]] + [call.first_media_at]
        for (name, a), b in zip(steps, ends, strict=True):
            phases.setdefault(name, []).append(1000 * (b - a))


async def _run(p: Params, result: Result, workdir: Path, placement: Placement) -> None:
    loop = asyncio.get_running_loop()
    calls_by_wacid: dict[str, Call] = {}
    stub = PbxStub(calls_by_wacid).open(loop)
    gw = _build(p, placement, workdir, stub.address, result)
    result.instances = [
        InstanceResult(d.name, d.core if result.pinned else None) for d in gw.daemons
    ]
    if gw.front is not None:
        result.front = FrontResult()
    link: MetaLink | None = None
    pacer = Pacer(loop)
    calls: list[Call] = []
    spy: PySpy | None = None
    m0 = m1 = 0.0
    relays = impair.RelayThread() if impair.wanted(p) else None
    try:
        if relays is not None:
            relays.start()
        await loop.run_in_executor(None, gw.start)
        for inst, d, sample in zip(result.instances, gw.daemons, gw.cpu(), strict=True):
            inst.pid, inst.rss_idle_kib = d.pid, sample.rss_kib
        result.engine = ",".join(sorted({d.media_engine() for d in gw.daemons}))
        if gw.front is not None and result.front is not None:
            result.front.processes = len(gw.front.pids)
        link = MetaLink(gw.meta_address, HOSTNAME)
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

        # WebRTC mode: one certificate for every call of the WhatsApp side, as Meta's edge
        certificate = DtlsCertificate.generate() if p.srtp == "dtls" else None
        pacer.start()
        cpu_before_ramp = gw.cpu()
        front0 = gw.front.cpu() if gw.front is not None else None
        t_ramp = loop.time()
        tasks: list[asyncio.Task[None]] = []
        for i in range(p.calls):
            webrtc = MetaWebRtc(certificate) if certificate is not None else None
            call = Call(i, silence, keep_audio=(i == 0), meta_rtcp=p.meta_rtcp, webrtc=webrtc)
            if relays is not None:
                call.relay = relays.relay(*impair.both_ways(p, i))
            calls.append(call)
            calls_by_wacid[call.wacid] = call
            tasks.append(loop.create_task(caller.place(call, on_answer, p.setup_timeout)))
            delay = t_ramp + (i + 1) / p.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
        result.ramp_seconds = loop.time() - t_ramp
        result.pbx_invite_retransmissions = stub.retransmissions
        our_ports = gw.ports() | {stub.address[1]}
        for call in calls:
            our_ports.add(call.meta_sock.getsockname()[1])
            our_ports.add(call.pbx_sock.getsockname()[1])
            if call.relay is not None:
                our_ports.add(call.relay.address[1])
        _count_calls(calls, gw, result)
        if not result.calls_ok:
            raise RuntimeError(f"no call was set up: {result.failures}")

        for inst, a, b in zip(result.instances, cpu_before_ramp, gw.cpu(), strict=True):
            inst.ramp_cpu = b.total - a.total
        if gw.front is not None and result.front is not None and front0 is not None:
            result.front.ramp_cpu = gw.front.cpu().total - front0.total
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
            if _current_delay_ms(calls) < SETTLED_MS + impair.added_delay_ms(p):
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
                + ("" if p.front == "direct" else ", or the load generator is short of CPU")
            )
        result.settle_seconds = loop.time() - t_settle
        _count_media_setup(calls, result)
        # -- the measurement window ------------------------------------------
        if p.profile:
            spy_core = min(placement.others) if result.pinned and placement.others else None
            spy = PySpy(gw.daemons[0].pid, p.seconds, workdir, spy_core)
            result.profile_note = spy.start()
        lateness_from = len(pacer.lateness)
        cpu0: list[CpuSample] = gw.cpu()
        f0 = gw.front.cpu() if gw.front is not None else None
        cores0, udp0 = read_core_times(), read_udp_counters()
        drops0 = read_socket_drops(our_ports)
        gen0, genw0 = time.process_time(), read_cpu(os.getpid()).wait_ns
        w0, m0 = time.time_ns(), time.monotonic()
        await asyncio.sleep(p.seconds)
        w1, m1 = time.time_ns(), time.monotonic()
        gen1, genw1 = time.process_time(), read_cpu(os.getpid()).wait_ns
        cpu1 = gw.cpu()
        f1 = gw.front.cpu() if gw.front is not None else None
        cores1, udp1 = read_core_times(), read_udp_counters()
        result.window_seconds = (w1 - w0) / 1e9
        if abs(result.window_seconds - (m1 - m0)) > 0.01 * p.seconds:
            result.notes.append(
                f"the window lasted {result.window_seconds:.2f} s by the wall clock and "
                f"{m1 - m0:.2f} s by the monotonic clock: the wall clock was adjusted"
            )
        if result.window_seconds > 1.1 * p.seconds:
            result.notes.append(
                f"the window lasted {result.window_seconds:.1f} s instead of {p.seconds:g} s: "
                "the load generator's event loop was held up (starved of CPU)"
            )
        for inst, a, b in zip(result.instances, cpu0, cpu1, strict=True):
            inst.window_seconds = result.window_seconds
            inst.cpu = b.total - a.total
            inst.wait = (b.wait_ns - a.wait_ns) / 1e9
            inst.slices = b.slices - a.slices
            inst.utime, inst.stime = b.utime - a.utime, b.stime - a.stime
            inst.rss_kib = b.rss_kib
        if result.front is not None and f0 is not None and f1 is not None:
            result.front.cpu = f1.total - f0.total
            result.front.wait = (f1.wait_ns - f0.wait_ns) / 1e9
        result.generator_cpu = gen1 - gen0
        result.generator_wait = (genw1 - genw0) / 1e9
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
            if call.webrtc is not None:
                result.stun_answered += call.webrtc.stun_answered
                result.stun_dropped += call.webrtc.stun_dropped
        for call in calls:
            if call.answered_at is not None and call.failure is None:
                result.m2p.add(call.m2p, w0, w1, call.index)
                result.p2m.add(call.p2m, w0, w1, call.index)
                which = gw.instance_of(call.gw_wa_addr[1]) if call.gw_wa_addr else -1
                if which >= 0:
                    result.instances[which].m2p.add(call.m2p, w0, w1, call.index)
                    result.instances[which].p2m.add(call.p2m, w0, w1, call.index)
        _check_audio(calls, result)
        if relays is not None:
            result.relay_counts = impair.sum_counts(relays.relays)

        # -- hang up ------------------------------------------------------------
        f_hangup = gw.front.cpu() if gw.front is not None else None
        byes = []
        for call in calls:
            byes.append(loop.create_task(caller.hangup(call)))
            await asyncio.sleep(1 / max(p.rate * 2, 1))
        await asyncio.gather(*byes)
        await asyncio.sleep(0.3)
        if gw.front is not None and result.front is not None and f_hangup is not None:
            result.front.hangup_cpu = gw.front.cpu().total - f_hangup.total
            result.front.alive_at_end = gw.front.alive()
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
        if relays is not None:
            relays.stop()
        for call in calls:
            with contextlib.suppress(Exception):
                loop.remove_reader(call.meta_sock.fileno())
                loop.remove_reader(call.pbx_sock.fileno())
            call.close()
        if result.front is not None and gw.front is not None:
            result.front.errors = gw.front.errors()
        exits = await loop.run_in_executor(None, gw.stop)
        for inst, code in zip(result.instances, exits, strict=True):
            inst.exit = code
        result.sum_instances()
        if m0 and m1:
            result.gc_pauses = [
                (dur, g) for d in gw.daemons for t, dur, g in d.gc_pauses() if m0 <= t <= m1
            ]
        stub.close()
        several = len(gw.daemons) > 1
        result.daemon_errors = [
            f"{d.name}: {line}" if several else line
            for d in gw.daemons
            for line in d.log_text().splitlines()
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


def _priority_note(p: Params, placement: Placement, generator: str) -> str:
    if p.instances == 1 and p.front == "direct":
        return f"priority {p.priority}: daemon and load generator each {generator}"
    if p.priority != "realtime":
        return f"priority {p.priority}: instances, Kamailio and load generator each {generator}"
    return (
        f"priority realtime: each instance SCHED_FIFO {placement.instance_rt}, Kamailio's "
        f"processes SCHED_FIFO {placement.front_rt}, load generator {generator}"
    )


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
    placement = place(p.instances, p.pin, p.generator_below)
    result.pinned = pin_self(placement)
    result.placement = placement.describe(p.front != "direct")
    result.generator_rt = placement.generator_rt
    old_autogroup = autogroup_nice()
    if p.priority != "normal":
        try:
            mine = set_priority(p.priority, 0, placement.generator_rt)
        except (OSError, PermissionError) as exc:
            raise RuntimeError(f"cannot set priority {p.priority}: {exc}") from exc
        result.notes.append(_priority_note(p, placement, mine))
    if p.pin and not result.pinned:
        result.notes.append("not pinned: the machine lacks two cores for this process")
    workdir = Path(tempfile.mkdtemp(prefix="wagw-bench-"))
    try:
        asyncio.run(_run(p, result, workdir, placement))
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
        "media_p50": percentile(r.media_setup_ms, 50),
        "media_p99": percentile(r.media_setup_ms, 99),
        "handshake_p50": percentile(r.handshake_ms, 50),
        "handshake_p99": percentile(r.handshake_ms, 99),
        "m2p": r.m2p.latency(),
        "p2m": r.p2m.latency(),
    }
