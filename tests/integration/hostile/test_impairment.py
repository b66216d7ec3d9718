"""Audio under packet loss on the WhatsApp media leg, measured with PESQ (ITU-T P.862).

The daemon runs as a process; the Meta emulator calls it through the impairment
relay (tests/peers/impair.py), whose address is the one Meta's SDP declares; the
PBX is an in-process UDP peer (tests/peers/rtp_pbx.py) that records the PCMU it
receives and plays a reference back. WhatsApp sends 8 s of a speech-like signal
(P.501 style, tests/peers/audio.py) as Opus with in-band FEC (as WhatsApp
clients do); the PBX's recording is scored against it, narrowband. The calls run
at the same time, one relay each:

* clean path;
* 5 % random loss, Meta -> gateway (seeded: the same packets every run);
* the same loss with the emulator sending no FEC (the gateway has PLC only);
* 2 bursts of 60 ms (3 packets each) at 2.5 s and 5.5 s;
* 30 ms of uniform jitter, packets overtaking each other (the gateway's reorder
  buffer puts them right; the PBX here records by timestamp, so the jitter itself
  is not heard, only what the reorder buffer gave up as late);
* 5 % random loss both ways, for the reverse direction's figure: the PBX's
  reference as the emulator decodes it (the emulator conceals nothing: gaps
  are silence, so this scores the loss itself, not the gateway).

The bars come from measurements with margin (docs/benchmarks.md, "Audio under
impairment"): the 5 % figure with FEC must stay close to the clean one and
clearly above the FEC-less one, so a broken FEC or PLC path fails here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import CallResult, MetaCaller, default_tls
from tests.integration.harness import GatewayProcess
from tests.peers.audio import pesq_nb, speech_like
from tests.peers.impair import Impairment, ImpairmentRelay, parse_bursts
from tests.peers.rtp_pbx import RtpPbx

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"
SECONDS = 8.0
SEED = 11

LOSS5 = Impairment(loss_pct=5, seed=SEED)
BURSTS = Impairment(bursts=parse_bursts("2x60@2500,5500"))


@dataclass
class Condition:
    name: str
    to_gateway: Impairment
    to_meta: Impairment = field(default_factory=Impairment)
    fec: bool = True


CONDITIONS = (
    Condition("clean", Impairment()),
    Condition("loss5", LOSS5),
    Condition("loss5-nofec", LOSS5, fec=False),
    Condition("bursts", BURSTS),
    Condition("loss5-both", LOSS5, to_meta=Impairment(loss_pct=5, seed=SEED + 1)),
    Condition("jitter", Impairment(jitter_ms=30, jitter_reorder=True, seed=SEED)),
)


@dataclass
class Scored:
    condition: Condition
    result: CallResult
    relay: ImpairmentRelay
    to_pbx: float = 0.0  # PESQ of what the PBX recorded
    to_meta: float = 0.0  # PESQ of what the emulator decoded


async def _run(gw: GatewayProcess, pbx: RtpPbx, reference_48k: bytes) -> list[Scored]:
    relays = [ImpairmentRelay(c.to_gateway, c.to_meta) for c in CONDITIONS]
    for relay in relays:
        relay.open()
    try:
        async with MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD) as caller:

            async def one(c: Condition, relay: ImpairmentRelay) -> CallResult:
                return await caller.call(
                    source_pcm=reference_48k,
                    opus_fec=c.fec,
                    talk_seconds=SECONDS + 1.5,
                    decode_rate=8000,
                    media_relay=relay,
                )

            results = await asyncio.gather(
                *(one(c, r) for c, r in zip(CONDITIONS, relays, strict=True))
            )
    finally:
        for relay in relays:
            relay.close()
    return [Scored(c, r, relay) for c, r, relay in zip(CONDITIONS, results, relays, strict=True)]


def test_speech_through_loss_and_bursts_with_opus_fec(tmp_path: Path) -> None:
    started = time.monotonic()
    reference_8k = speech_like(8000, SECONDS, seed=SEED)
    reference_48k = speech_like(48000, SECONDS, seed=SEED)
    pbx = RtpPbx(play_pcm=reference_8k)

    async def main() -> list[Scored]:
        pbx.open()
        cfg: dict[str, Any] = {
            "whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}},
            "pbx": {"address": f"{pbx.address[0]}:{pbx.address[1]}"},
        }
        (tmp_path / "gw").mkdir()
        gw = GatewayProcess(tmp_path / "gw", cfg)
        try:
            await asyncio.to_thread(gw.start)
            return await _run(gw, pbx, reference_48k)
        finally:
            await asyncio.to_thread(gw.stop)
            pbx.close()

    scored = asyncio.run(main())
    lines = []
    for s in scored:
        r = s.result
        assert r.violations == [], f"{s.condition.name}: {r.describe()}"
        call = pbx.calls[r.wacid]
        s.to_pbx = pesq_nb(reference_8k, call.recorded_pcm)
        s.to_meta = pesq_nb(reference_8k, r.received_pcm)
        counts = s.relay.counts
        assert s.relay.foreign == 0
        lines.append(
            f"{s.condition.name}: to PBX {s.to_pbx:.2f}, to WhatsApp {s.to_meta:.2f} "
            f"(lost {counts['to_gateway'].lost}/{counts['to_gateway'].received} "
            f"Meta->gateway, {counts['to_meta'].lost}/{counts['to_meta'].received} back, "
            f"{counts['to_gateway'].overtaken} overtaken)"
        )
    report = "\n".join(lines)
    print(report)
    by = {s.condition.name: s for s in scored}
    clean, loss, nofec, bursts = (by[k].to_pbx for k in ("clean", "loss5", "loss5-nofec", "bursts"))
    # The relay did what it was asked to (the seeded pattern: the same every run).
    c = by["loss5"].relay.counts["to_gateway"]
    assert 0.025 < c.lost_random / c.received < 0.08, report
    assert by["bursts"].relay.counts["to_gateway"].lost_burst == 6, report
    assert by["clean"].relay.counts["to_gateway"].lost == 0, report
    # Bars (measured figures in docs/benchmarks.md, with margin).
    assert clean >= 3.8, report
    assert loss >= clean - 0.35, report  # FEC + PLC keep 5 % loss close to clean
    assert loss >= nofec + 0.2, report  # and FEC is what does it
    assert bursts >= clean - 0.4, report
    assert by["jitter"].relay.counts["to_gateway"].overtaken > 20, report
    assert by["jitter"].to_pbx >= clean - 0.1, report  # reordering put right
    assert by["clean"].to_meta >= 3.5, report  # PBX -> WhatsApp, G.711 -> Opus, clean
    assert time.monotonic() - started < 60, report
