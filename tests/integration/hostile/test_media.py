"""Media: one spoofed RTP packet from the PBX's host, another port (issue 11 finding 3).

The daemon runs as a process between the strict Meta emulator (caller, a 440 Hz tone)
and Asterisk (the shipped config's ``echo`` extension: what Asterisk receives comes
back, so the tone at the emulator proves the PBX kept receiving). Mid-call a new
socket on 127.0.0.1 sends ONE RTP packet (valid header, the PBX's payload type PCMU,
a 1 kHz tone) to the gateway's PBX-side media port, then listens. Strict latching
(gateway/media/leg.py): nothing ever reaches the spoofer, the PBX keeps its full rate,
the echoed tone measures right at the far end, and the refusal is counted in /metrics
and the call record. The figures are printed (``-s``) for the before/after note.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.media.codecs import codec_for
from gateway.media.rtp import build_rtp, parse_rtp
from gateway.media.tone import sine_pcm
from tests.emulator import CallResult, MetaCaller, default_tls, measure_tone
from tests.integration.harness import GatewayProcess, free_port
from tests.peers import free_port as free_block
from tests.peers import release_ports
from tests.peers.asterisk import AsteriskPbx

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"
PCMU = 0
TALK_SECONDS = 8.0  # the emulator hangs up this long after its media starts
LISTEN_SECONDS = 2.5  # the spoofer listens this long after its one packet
TAIL_SECONDS = 3.0  # the far end's audio measured over the call's last seconds
MEDIA_PORTS = 10


@dataclass
class Attack:
    wa_port: int = 0
    pbx_port: int = 0
    sent_at: float = 0.0
    spoofer_packets: int = 0  # datagrams the gateway sent to the spoofer
    spoofer_pcm: bytes = b""  # their PCMU payloads, decoded (8 kHz)
    pbx_rx_rate: float = 0.0  # packets/s the gateway got back from Asterisk's echo
    gateway_to_pbx_rate: float = 0.0  # packets/s the gateway sent toward the PBX
    refused: float | None = None  # wagw_rtp_relatch_refused_total{leg="pbx"}
    notes: list[str] = field(default_factory=list)


def _metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    value = gw.metric(name, **labels)
    return 0.0 if value is None else value


def _bound_ports(low: int, count: int) -> list[int]:
    """Even ports of the media range someone holds (the gateway: WhatsApp, then PBX)."""
    held = []
    for port in range(low + low % 2, low + count, 2):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                held.append(port)
        finally:
            probe.close()
    return held


def _spoof(gw: GatewayProcess, media_low: int) -> Attack:
    """Wait for echoed audio, send one packet from a new port, listen, read the figures."""
    out = Attack()
    deadline = time.monotonic() + 20.0
    while _metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="rx") < 50:  # 1 s of echo
        if time.monotonic() > deadline:
            out.notes.append("no echo from Asterisk within 20 s")
            return out
        time.sleep(0.1)
    held = _bound_ports(media_low, MEDIA_PORTS)
    assert len(held) == 2, held  # one call: its WhatsApp port, then its PBX port
    out.wa_port, out.pbx_port = held
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        spoofer.bind(("127.0.0.1", 0))
        payload = codec_for("PCMU").encode(sine_pcm(1000.0, 20))
        packet = build_rtp(PCMU, 4242, 4242 * 160, 0x0BADF00D, payload)
        spoofer.sendto(packet, ("127.0.0.1", out.pbx_port))
        out.sent_at = time.monotonic()
        time.sleep(0.5)
        rx0 = _metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="rx")
        tx0 = _metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="tx")
        t0 = time.monotonic()
        spoofer.settimeout(0.1)
        decoder = codec_for("PCMU")
        pcm = bytearray()
        end = out.sent_at + LISTEN_SECONDS
        while time.monotonic() < end:
            try:
                data, _ = spoofer.recvfrom(2048)
            except TimeoutError:
                continue
            out.spoofer_packets += 1
            try:
                rtp = parse_rtp(data)
            except ValueError:
                continue
            if rtp.payload_type == PCMU:
                pcm += decoder.decode(rtp.payload)
        out.spoofer_pcm = bytes(pcm)
        elapsed = time.monotonic() - t0
        rx1 = _metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="rx")
        tx1 = _metric(gw, "wagw_rtp_packets_total", leg="pbx", direction="tx")
        out.pbx_rx_rate = (rx1 - rx0) / elapsed
        out.gateway_to_pbx_rate = (tx1 - tx0) / elapsed
        out.refused = gw.metric("wagw_rtp_relatch_refused_total", leg="pbx")
    finally:
        spoofer.close()
    return out


@contextmanager
def _echo_call_path(tmp_path: Path) -> Iterator[tuple[GatewayProcess, int]]:
    gw_port = free_port()
    block = free_block(MEDIA_PORTS + 1, tcp=False, low=20000, high=29990)
    media_low = block + block % 2  # the range starts on an even port
    with ExitStack() as stack:
        stack.callback(release_ports, block, MEDIA_PORTS + 1)
        pbx = stack.enter_context(AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast"))
        (tmp_path / "gw").mkdir()
        cfg = {
            "whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}},
            "pbx": {
                "address": f"127.0.0.1:{pbx.ast_port}",
                "listen": f"127.0.0.1:{gw_port}",
                "request_uri_user": "echo",
            },
            "media": {"port_range": [media_low, media_low + MEDIA_PORTS - 1]},
            "records": {"path": str(tmp_path / "calls.jsonl")},
        }
        gw = GatewayProcess(tmp_path / "gw", cfg)
        stack.callback(gw.stop)
        gw.start()
        yield gw, media_low


def _far_end(result: CallResult) -> tuple[float, float]:
    """Frequency and level of the call's last TAIL_SECONDS at the emulator (the echo)."""
    rate = result.sample_rate
    tail = result.received_pcm[-int((TAIL_SECONDS + 0.3) * rate) * 2 :]
    return measure_tone(tail[: -int(0.3 * rate) * 2], rate, skip=0.0)


def test_one_spoofed_packet_from_another_port_of_the_pbx_host_gets_no_audio(
    tmp_path: Path,
) -> None:
    with _echo_call_path(tmp_path) as (gw, media_low):

        async def scenario() -> tuple[CallResult, Attack]:
            caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
            call = asyncio.create_task(caller.call(tone_hz=440.0, talk_seconds=TALK_SECONDS))
            attack = await asyncio.to_thread(_spoof, gw, media_low)
            return await call, attack

        result, attack = asyncio.run(asyncio.wait_for(scenario(), 60.0))
        time.sleep(0.5)  # the call record is written as the call ends
        log = gw.log_lines()
    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    freq, level = _far_end(result)
    spoof_freq, spoof_level = measure_tone(attack.spoofer_pcm, 8000, skip=0.0)
    print(
        f"\nspoofed RTP: spoofer got {attack.spoofer_packets} packets "
        f"(decoded {len(attack.spoofer_pcm) / 16000:.2f} s, {spoof_freq:.0f} Hz "
        f"{spoof_level:.1f} dBFS); after the spoof the PBX leg sent "
        f"{attack.gateway_to_pbx_rate:.1f} packets/s (to its latched address) and got "
        f"{attack.pbx_rx_rate:.1f}/s "
        f"back from Asterisk's echo; far end (last {TAIL_SECONDS:.0f} s) {freq:.1f} Hz "
        f"{level:.1f} dBFS; relatch_refused metric {attack.refused}; {attack.notes}"
    )
    assert attack.notes == []
    assert result.status == 200 and result.violations == [], result.describe()
    assert f"m=audio {attack.wa_port} " in result.answer_sdp  # the ports were told apart
    assert attack.spoofer_packets == 0  # no audio (nor anything else) reached the spoofer
    assert attack.pbx_rx_rate >= 45.0 and attack.gateway_to_pbx_rate >= 45.0  # 50/s
    assert abs(freq - 440.0) / 440.0 < 0.02 and level > -30.0, (freq, level)
    assert attack.refused == 1
    refusals = [line for line in log if line.get("event") == "rtp_relatch_refused"]
    assert len(refusals) == 1 and refusals[0]["leg"] == "pbx", refusals
    assert len(records) == 1
    pbx = records[0]["legs"]["pbx"]
    assert (pbx["relatch_refused"], pbx["bad_packets"], pbx["foreign_packets"]) == (1, 0, 0)
