"""The media bridge in memory, packet by packet, on a fake clock.

Meta's side is played with real SRTP (keys swapped) and real Opus, the PBX's with
PCMU, so every assertion is on what the bridge actually put on the wire, decrypted
and decoded (fakes in ``bridge_fakes``). Media rules: docs/whatsapp-sip.md section 6.
"""

from __future__ import annotations

import asyncio
import base64
import time
from itertools import pairwise

import pytest

from gateway.media.bridge import EARLY_AUDIO_FRAMES, RTCP_INTERVAL, SILENCE_AFTER, BridgeFactory
from gateway.media.codecs import FEC_COMPLEXITY, OpusCodec, codec_for
from gateway.media.dtmf import parse_event
from gateway.media.rtcp import (
    ReportBlock,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    ntp_timestamp,
)
from gateway.media.rtp import RtpPacket
from gateway.media.settings import MediaSettings
from gateway.media.srtp import new_key_material
from gateway.sdp.negotiate import accept_pbx_answer, answer_whatsapp_offer, make_pbx_offer
from gateway.sdp.session import parse_sdp
from gateway.transport.rtp import MediaClock, PortAllocator, PortsExhausted
from tests.unit.media.bridge_fakes import (
    FRAME,
    META_ADDR,
    META_DTMF_PT,
    META_PORT,
    META_SSRC,
    OPUS_PT,
    PBX_ADDR,
    PBX_DTMF_PT,
    PBX_IP,
    PBX_PORT,
    PBX_SSRC,
    PCMU_PT,
    SUITE,
    Rig,
    frequency,
    level,
    meta_offer_sdp,
    pbx_answer_sdp,
    pbx_params,
    tone_frames,
    wa_g711_params,
    wa_params,
)

U32 = 0xFFFFFFFF

pytestmark = pytest.mark.usefixtures("media_engine")  # both engines (conftest.py)


def steps(packets: list[RtpPacket]) -> tuple[set[int], set[int], set[int]]:
    """(sequence steps, timestamp steps, SSRCs) of consecutive packets."""
    seq = {(b.sequence - a.sequence) & 0xFFFF for a, b in pairwise(packets)}
    ts = {(b.timestamp - a.timestamp) & U32 for a, b in pairwise(packets)}
    return seq, ts, {p.ssrc for p in packets}


def answered(**kwargs: object) -> Rig:
    rig = Rig(**kwargs)  # type: ignore[arg-type]
    rig.answer()
    rig.to_meta()
    return rig


# --------------------------------------------------------------------------- params


def test_params_match_what_negotiation_produces() -> None:
    key = new_key_material(SUITE)
    offer = parse_sdp(meta_offer_sdp(base64.b64encode(key).decode()))
    _, meta = answer_whatsapp_offer(
        offer,
        local_address="203.0.113.10",
        local_port=20000,
        allow_g711=False,
        new_key=new_key_material,
    )
    assert meta.srtp is not None and meta.srtp.remote_key == key
    assert wa_params(srtp=meta.srtp) == meta
    pbx_offer = make_pbx_offer(local_address="203.0.113.10", local_port=20002)
    assert pbx_params() == accept_pbx_answer(pbx_offer, parse_sdp(pbx_answer_sdp()))


# --------------------------------------------------------------------------- sending first


def test_set_whatsapp_sends_the_first_srtp_packet_at_once() -> None:
    rig = Rig()
    rig.set_whatsapp()
    assert len(rig.wa_sock.sent) == 1
    assert rig.wa_sock.sent[0][1] == META_ADDR
    (first,) = rig.to_meta()  # decrypts with Meta's context: authentic
    assert first.payload_type == OPUS_PT and first.payload
    assert rig.meta.decoder.decode(first.payload)  # a real Opus frame
    assert rig.pbx_sock.sent == []


def test_set_pbx_before_set_whatsapp_sends_nothing_to_meta() -> None:
    rig = Rig()
    rig.set_pbx()
    rig.tick(10)
    assert rig.wa_sock.sent == []
    rig.set_whatsapp()
    assert len(rig.to_meta()) == 1


# --------------------------------------------------------------------------- silence filler


def test_silent_pbx_gets_one_opus_silence_frame_per_tick() -> None:
    rig = answered()
    rig.tick(50)
    sent = rig.to_meta()
    assert len(sent) == 50
    seq, ts, ssrcs = steps(sent)
    assert (seq, ts, len(ssrcs)) == ({1}, {960}, 1)
    assert {p.payload_type for p in sent} == {OPUS_PT}
    pcm = rig.meta.decode_pcm(sent)
    assert len(pcm) == 50 * 320 and level(pcm) < -60


def test_filler_starts_only_after_silence_after_and_stops_with_pbx_audio() -> None:
    rig = answered()
    frames = tone_frames(440, 20)
    for pcm in frames[:10]:
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()
    audio = rig.to_meta()
    assert len(audio) == 10  # no filler in between
    quiet_ticks = round(SILENCE_AFTER / FRAME)
    rig.tick(quiet_ticks - 1)
    assert rig.to_meta() == []  # not yet
    rig.tick()
    filler = rig.to_meta()
    assert len(filler) == 1
    rig.tick(5)
    filler += rig.to_meta()
    assert len(filler) == 6
    for pcm in frames[10:]:
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()
    resumed = rig.to_meta()
    assert len(resumed) == 10  # the filler stopped with the first PBX packet
    stream = audio + filler + resumed
    seq, ts, ssrcs = steps(stream)
    assert (seq, ts, len(ssrcs)) == ({1}, {960}, 1)


@pytest.mark.parametrize("direction", ["recvonly", "sendrecv"])
def test_filler_keeps_going_while_the_pbx_holds_or_is_silent(direction: str) -> None:
    rig = answered()
    rig.set_pbx(direction=direction)  # recvonly: the PBX put us on hold
    voice = tone_frames(300, 1)[0]
    ticks = 31 * 50  # 31 s
    for _ in range(ticks):
        rig.from_meta(rig.meta.audio(voice))  # the WhatsApp user keeps talking
        rig.tick()
    sent = rig.to_meta()
    assert len(sent) == ticks
    seq, ts, ssrcs = steps(sent)
    assert (seq, ts, len(ssrcs)) == ({1}, {960}, 1)
    assert "whatsapp" not in rig.no_media
    to_pbx = rig.to_pbx()
    assert len(to_pbx) == (0 if direction == "recvonly" else ticks)


# --------------------------------------------------------------------------- transcoding


def test_pbx_pcmu_tone_reaches_meta_as_opus_at_the_same_pitch() -> None:
    rig = answered()
    for pcm in tone_frames(440, 100):
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()
    sent = rig.to_meta()
    assert len(sent) == 100
    seq, ts, ssrcs = steps(sent)
    assert (seq, ts, ssrcs) == ({1}, {960}, {sent[0].ssrc})
    assert {p.payload_type for p in sent} == {OPUS_PT}
    pcm = rig.meta.decode_pcm(sent)
    assert frequency(pcm[20 * 320 :]) == pytest.approx(440, rel=0.02)
    assert level(pcm[20 * 320 :]) > -15  # a 0.5 full-scale sine: about -9 dBFS


def test_meta_opus_tone_reaches_the_pbx_as_pcmu_at_the_same_pitch() -> None:
    rig = answered()
    for pcm in tone_frames(440, 100):
        rig.from_meta(rig.meta.audio(pcm))
        rig.tick()
    sent = rig.to_pbx()
    assert len(sent) == 100
    seq, ts, ssrcs = steps(sent)
    assert (seq, ts, len(ssrcs)) == ({1}, {160}, 1)
    assert {p.payload_type for p in sent} == {PCMU_PT}
    assert {len(p.payload) for p in sent} == {160}
    pcm = rig.pbx.decode_pcm(sent)
    assert frequency(pcm[20 * 320 :]) == pytest.approx(440, rel=0.02)
    assert level(pcm[20 * 320 :]) > -15
    assert rig.stats("whatsapp")["rx_packets"] == 100
    assert rig.stats("pbx")["tx_packets"] == 100


def test_pbx_30ms_packets_are_reframed_into_20ms_opus_frames() -> None:
    rig = answered(pbx=pbx_params(ptime=30))
    frames = tone_frames(440, 40, frame_bytes=480)  # 240 samples each: 1.2 s
    for i, pcm in enumerate(frames):
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.advance(0.010)  # ticks every 20 ms, the PBX every 30 ms
        if i % 2:
            rig.tick()
        else:
            rig.advance(FRAME)
    sent = rig.to_meta()
    assert len(sent) == 60
    seq, ts, _ = steps(sent)
    assert (seq, ts) == ({1}, {960})
    pcm = rig.meta.decode_pcm(sent)
    assert len(pcm) == 60 * 320
    assert frequency(pcm[10 * 320 :]) == pytest.approx(440, rel=0.02)


def test_early_pbx_audio_is_buffered_and_sent_first() -> None:
    rig = Rig()
    rig.set_pbx()
    frames = tone_frames(440, 10)
    for pcm in frames:
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()
    assert rig.wa_sock.sent == []  # no keys yet
    rig.set_whatsapp()
    sent = rig.to_meta()
    assert len(sent) == 10  # the early audio, not a silence frame first
    seq, ts, _ = steps(sent)
    assert (seq, ts) == ({1}, {960})
    pcm = rig.meta.decode_pcm(sent)
    assert level(pcm[5 * 320 :]) > -15  # tone, not silence
    rig.from_pbx(rig.pbx.audio(tone_frames(440, 1)[0]))
    (later,) = rig.to_meta()
    assert later.sequence == (sent[-1].sequence + 1) & 0xFFFF


def test_early_pbx_audio_buffer_is_bounded_to_the_latest_frames() -> None:
    rig = Rig()
    rig.set_pbx()
    count = EARLY_AUDIO_FRAMES + 40
    # A rising level marks each frame, so what comes out tells which were kept.
    frames = [bytes(320)] * 40 + tone_frames(440, EARLY_AUDIO_FRAMES)
    for pcm in frames:
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()
    assert len(frames) == count
    rig.set_whatsapp()
    sent = rig.to_meta()
    assert len(sent) == EARLY_AUDIO_FRAMES
    pcm = rig.meta.decode_pcm(sent)
    assert level(pcm[5 * 320 :]) > -15  # the newest (tone) frames, the old silence dropped


# --------------------------------------------------------------------------- G.711 passthrough


def test_g711_passthrough_carries_payloads_unchanged_both_ways() -> None:
    rig = answered(wa=wa_g711_params())
    assert rig.bridge.stats().passthrough is True
    payloads = [bytes((i * 7 + j) % 256 for j in range(160)) for i in range(20)]
    for payload in payloads:
        rig.from_pbx(rig.pbx.payload(payload))
        rig.from_meta(rig.meta.payload(payload[::-1]))
        rig.tick()
    to_meta, to_pbx = rig.to_meta(), rig.to_pbx()
    # Byte for byte (no decode/encode), re-keyed into SRTP toward Meta.
    assert [p.payload for p in to_meta] == payloads
    assert [p.payload for p in to_pbx] == [p[::-1] for p in payloads]
    assert {p.payload_type for p in to_meta + to_pbx} == {PCMU_PT}
    assert steps(to_meta)[:2] == ({1}, {160})
    assert steps(to_pbx)[:2] == ({1}, {160})
    wire = [data for data, _ in rig.meta_log[1:]]  # after the first silence frame
    assert len(wire) == 20 and all(p not in data for data, p in zip(wire, payloads, strict=True))


def test_g711_passthrough_reframes_30ms_pbx_packets_to_20ms_for_meta() -> None:
    # Meta's SDP says maxptime:20: a 30 ms PBX stream must not go through as is.
    rig = answered(wa=wa_g711_params(), pbx=pbx_params(ptime=30))
    data = bytes(range(256)) * 15  # 3840 octets: 16 packets of 240, 24 of 160
    for i in range(16):
        rig.from_pbx(rig.pbx.rtp(PCMU_PT, i, 240 * i, data[240 * i : 240 * (i + 1)]))
        rig.advance(0.030)
    sent = rig.to_meta()
    assert {len(p.payload) for p in sent} == {160}
    assert b"".join(p.payload for p in sent) == data
    assert steps(sent)[:2] == ({1}, {160})


def test_g711_passthrough_puts_a_swapped_pair_right_and_keeps_time() -> None:
    rig = answered(wa=wa_g711_params())
    packets = [rig.meta.payload(bytes((i,)) * 160) for i in range(20)]
    for i in [*range(10), 11, 10, *range(12, 20)]:
        rig.from_meta(packets[i])
        rig.tick()
    sent = rig.to_pbx()
    assert [p.payload[0] for p in sent] == list(range(20))
    assert steps(sent)[:2] == ({1}, {160})
    more = [rig.meta.payload(bytes((i,)) * 160) for i in range(20, 30)]
    for i, packet in enumerate(more):
        if i not in (3, 4):  # lost: left to the PBX to conceal, their time kept
            rig.from_meta(packet)
        rig.tick()
    after = rig.to_pbx()
    assert [p.payload[0] for p in after] == [20, 21, 22, 25, 26, 27, 28, 29]
    assert [(p.timestamp - sent[0].timestamp) & U32 for p in after] == [
        160 * i for i in (20, 21, 22, 25, 26, 27, 28, 29)
    ]


# --------------------------------------------------------------------------- DTMF


def talk(rig: Rig, frames: int, side: str = "meta") -> None:
    voice = tone_frames(300, frames)
    for pcm in voice:
        if side == "meta":
            rig.from_meta(rig.meta.audio(pcm))
        else:
            rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()


def test_dtmf_from_meta_is_relayed_to_the_pbx_in_its_own_stream() -> None:
    rig = answered()
    talk(rig, 10)
    audio_before = rig.to_pbx()
    event = rig.meta.dtmf_event(5)  # 3 updates, 3 end packets; pt 126, marker on first
    for packet in event:
        rig.from_meta(packet)
        rig.tick()
    talk(rig, 10)
    sent = rig.to_pbx()
    dtmf = [p for p in sent if p.payload_type == PBX_DTMF_PT]
    audio_after = [p for p in sent if p.payload_type == PCMU_PT]
    assert len(dtmf) == 6 and len(sent) == 16
    assert {p.ssrc for p in dtmf} == {audio_before[0].ssrc}
    assert [p.marker for p in dtmf] == [True] + [False] * 5
    assert len({p.timestamp for p in dtmf}) == 1  # one timestamp per event
    assert dtmf[0].timestamp == (audio_before[-1].timestamp + 160) & U32
    stream = audio_before + sent
    assert steps(stream)[0] == {1}  # one sequence space, no holes
    events = [parse_event(p.payload) for p in dtmf]
    assert {e.event for e in events} == {5}
    assert [e.end for e in events] == [False] * 3 + [True] * 3
    assert [e.duration for e in events] == [160, 320, 480, 640, 640, 640]
    # The audio after the event follows the time the event took; nothing concealed.
    assert len(audio_after) == 10
    assert (audio_after[0].timestamp - audio_before[-1].timestamp) & U32 == 7 * 160
    assert rig.bridge.stats().dtmf_to_pbx == 6
    wa = rig.stats("whatsapp")
    assert wa["lost"] == 0 and wa["jitter_seconds"] == 0.0 and wa["reorder_late"] == 0


def test_dtmf_from_the_pbx_is_relayed_to_meta_inside_srtp() -> None:
    rig = answered()
    talk(rig, 10, side="pbx")
    audio_before = rig.to_meta()
    for packet in rig.pbx.dtmf_event(11):  # '#'
        rig.from_pbx(packet)
    talk(rig, 5, side="pbx")
    sent = rig.to_meta()  # decrypted with Meta's keys
    dtmf = [p for p in sent if p.payload_type == META_DTMF_PT]
    assert len(dtmf) == 6
    assert {p.ssrc for p in sent} == {audio_before[0].ssrc}
    assert steps(audio_before + sent)[0] == {1}
    assert [p.marker for p in dtmf] == [True] + [False] * 5
    # The audio timestamp when the event starts (the 48000 audio clock), durations on
    # the 8000 event clock, unchanged.
    assert {p.timestamp for p in dtmf} == {(audio_before[-1].timestamp + 960) & U32}
    assert [parse_event(p.payload).duration for p in dtmf] == [160, 320, 480, 640, 640, 640]
    assert rig.bridge.stats().dtmf_to_whatsapp == 6
    pbx = rig.stats("pbx")
    assert pbx["lost"] == 0 and pbx["bad_packets"] == 0


def test_dtmf_without_end_packets_is_closed_after_a_second() -> None:
    rig = answered()
    talk(rig, 3)
    for packet in rig.meta.dtmf_event(1)[:2]:  # start and one update; the end is lost
        rig.from_meta(packet)
    rig.to_pbx()
    rig.tick(60)
    ends = [parse_event(p.payload) for p in rig.to_pbx() if p.payload_type == PBX_DTMF_PT]
    assert [(e.event, e.end) for e in ends] == [(1, True)] * 3


# --------------------------------------------------------------------------- loss


def meta_stream(rig: Rig, count: int, freq: float = 440) -> list[bytes]:
    return [rig.meta.audio(pcm) for pcm in tone_frames(freq, count)]


def test_a_gap_from_meta_is_concealed_toward_the_pbx_in_time() -> None:
    rig = answered()
    packets = meta_stream(rig, 30)
    for i, packet in enumerate(packets):
        if i not in (10, 11):
            rig.from_meta(packet)
        rig.tick()
    sent = rig.to_pbx()
    # 28 decoded + 2 concealed: the PBX stream has no hole, and its timestamps stay
    # where Meta's say the audio belongs (160 per 20 ms, nothing counted twice).
    assert len(sent) == 30
    assert steps(sent)[:2] == ({1}, {160})
    pcm = rig.pbx.decode_pcm(sent)
    assert level(pcm[10 * 320 : 12 * 320]) > -30  # concealment, not silence
    assert rig.stats("whatsapp")["lost"] == 2


def test_a_long_gap_is_concealed_up_to_a_cap_then_skipped_in_time() -> None:
    rig = answered()
    packets = meta_stream(rig, 50)
    for i, packet in enumerate(packets):
        if not 10 <= i < 30:
            rig.from_meta(packet)
        rig.tick()
    sent = rig.to_pbx()
    assert len(sent) == 30 + 5  # 30 received, 20 lost of which 5 concealed
    seq, _, _ = steps(sent)
    assert seq == {1}
    # Packet 30 sits where its source timestamp says: 30 frames after packet 0.
    assert (sent[15].timestamp - sent[0].timestamp) & U32 == 30 * 160
    assert (sent[-1].timestamp - sent[0].timestamp) & U32 == 49 * 160


def test_packets_held_behind_a_gap_wait_at_most_two_ticks() -> None:
    # Packet 10 is lost and speech stops after 11 (DTX: nothing more comes). Depth alone
    # would hold 11 until two more packets arrive, here never; the time rule releases it
    # (10 concealed, 11 decoded) at the second tick after it came.
    rig = answered()
    packets = meta_stream(rig, 12)
    for i in range(10):
        rig.from_meta(packets[i])
        rig.tick()
    assert len(rig.to_pbx()) == 10
    rig.from_meta(packets[11])
    rig.tick()
    assert rig.to_pbx() == []  # held: 10 may still come, overtaken
    rig.tick()
    sent = rig.to_pbx()
    assert len(sent) == 2 and steps(sent)[:2] == ({1}, {160})  # concealed 10, then 11
    assert rig.stats("whatsapp")["lost"] == 1
    rig.from_meta(packets[10])  # too late now: its slot has been played
    assert rig.to_pbx() == [] and rig.stats("whatsapp")["reorder_late"] == 1


def test_a_packet_overtaken_within_the_wait_is_put_back_in_order() -> None:
    rig = answered()
    packets = meta_stream(rig, 6)
    for i in (0, 1, 3):
        rig.from_meta(packets[i])
    rig.tick()  # 3 held for 20 ms
    rig.from_meta(packets[2])
    sent = rig.to_pbx()
    assert [p.sequence - sent[0].sequence for p in sent] == [0, 1, 2, 3]
    assert rig.stats("whatsapp")["lost"] == 0


def test_reordered_packets_are_put_right_and_late_ones_dropped() -> None:
    rig = answered()
    packets = meta_stream(rig, 30)
    order = [*range(10), 11, 10, *range(12, 20), *range(21, 30)]  # 20 held back
    for i in order:
        rig.from_meta(packets[i])
        rig.tick()
    sent = rig.to_pbx()
    assert len(sent) == 30 and steps(sent)[:2] == ({1}, {160})  # 20 concealed in place
    rig.from_meta(packets[20])  # too late: its slot has been played
    rig.from_meta(packets[5])  # a replay: refused by SRTP
    assert rig.to_pbx() == []
    stats = rig.stats("whatsapp")
    assert stats["reorder_late"] == 1 and stats["srtp_auth_failures"] == 1


def test_a_restarted_meta_stream_is_followed_through_its_silences() -> None:
    rig = answered()
    talk(rig, 5)
    sender = rig.meta.sender
    sender.sequence = (sender.sequence + 5000) & 0xFFFF  # a new stream: far away in
    sender.timestamp = (sender.timestamp - 10_000_000) & U32  # sequence, behind in time
    talk(rig, 5)
    sender.skip(10 * 960)  # then 200 ms of DTX (nothing sent; sequence unbroken)
    talk(rig, 5)
    sent = rig.to_pbx()
    assert len(sent) == 15 and steps(sent)[0] == {1}
    gaps = [(b.timestamp - a.timestamp) & U32 for a, b in pairwise(sent)]
    assert gaps == [160] * 9 + [11 * 160] + [160] * 4


# --------------------------------------------------------------------------- robustness

CORRUPT_OPUS = b"\x03"  # code 3 without its frame count: opus_decode says invalid


def test_packets_from_anyone_but_the_peer_are_dropped_and_counted() -> None:
    rig = answered()
    rig.from_meta(rig.meta.audio(bytes(320)), ("198.51.100.7", META_PORT))
    rig.from_pbx(rig.pbx.audio(bytes(320)), ("198.51.100.8", PBX_PORT))
    assert rig.to_pbx() == [] and rig.to_meta() == []
    assert rig.stats("whatsapp")["foreign_packets"] == 1
    assert rig.stats("pbx")["foreign_packets"] == 1
    assert rig.stats("whatsapp")["rx_packets"] == rig.stats("pbx")["rx_packets"] == 0


def test_packets_before_a_leg_is_negotiated_are_foreign() -> None:
    rig = Rig()
    rig.from_meta(b"\x80" * 40, META_ADDR)
    rig.from_pbx(rig.pbx.audio(bytes(320)))
    assert rig.stats("whatsapp")["foreign_packets"] == 1
    assert rig.stats("pbx")["foreign_packets"] == 1


def test_bad_srtp_auth_tag_is_dropped_counted_and_the_next_packet_flows() -> None:
    rig = answered()
    good = rig.meta.audio(tone_frames(440, 1)[0])
    forged = good[:-1] + bytes((good[-1] ^ 1,))
    rig.from_meta(forged)
    assert rig.to_pbx() == []
    rig.from_meta(good)  # the genuine one, then the next
    rig.from_meta(rig.meta.audio(tone_frames(440, 1)[0]))
    assert len(rig.to_pbx()) == 2
    stats = rig.stats("whatsapp")
    assert stats["srtp_auth_failures"] == 1 and stats["rx_packets"] == 2


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\x80\x00\x00",
        b"garbage bytes that are not rtp",
        bytes(range(256)) * 4,
        b"\x80\xc8\x00\x40" + bytes(20),  # an SR header claiming more than there is
    ],
    ids=["empty", "1-byte", "truncated-header", "text", "noise", "rtcp-looking"],
)
def test_garbage_never_raises_and_is_counted(data: bytes) -> None:
    rig = answered()
    rig.from_meta(data)
    rig.from_pbx(data)
    wa, pbx = rig.stats("whatsapp"), rig.stats("pbx")
    assert wa["srtp_auth_failures"] + wa["bad_packets"] == 1
    assert pbx["bad_packets"] == 1
    assert rig.to_pbx() == [] and rig.to_meta() == []


def test_truncated_and_unknown_rtp_is_counted() -> None:
    rig = answered()
    truncated = rig.pbx.audio(bytes(320))[:11]
    csrc_claimed = b"\x8f" + rig.pbx.audio(bytes(320))[1:14]  # 15 CSRCs, 2 bytes of them
    rig.from_pbx(truncated)
    rig.from_pbx(csrc_claimed)
    rig.from_pbx(rig.pbx.payload(bytes(160), pt=8))  # PCMA: not what was negotiated
    rig.from_meta(rig.meta.payload(bytes(160), pt=0))  # G.711 on an Opus leg
    rig.from_meta(rig.meta.rtp(OPUS_PT, 1, 1, b"")[:14])  # SRTP-looking, too short
    assert rig.to_pbx() == [] and rig.to_meta() == []
    assert rig.stats("pbx")["bad_packets"] == 3
    wa = rig.stats("whatsapp")
    assert wa["bad_packets"] + wa["srtp_auth_failures"] == 2


def test_corrupt_opus_is_counted_and_the_packets_after_it_still_flow() -> None:
    rig = answered()
    talk(rig, 3)
    rig.to_pbx()
    rig.from_meta(rig.meta.payload(CORRUPT_OPUS))
    talk(rig, 3)
    sent = rig.to_pbx()
    assert len(sent) == 4  # its slot concealed: the PBX's timeline keeps Meta's
    assert steps(sent)[:2] == ({1}, {160})
    assert rig.stats("whatsapp")["bad_packets"] == 1


def test_a_corrupt_frame_released_after_a_gap_does_not_take_the_rest_with_it() -> None:
    rig = answered()
    talk(rig, 3)
    rig.to_pbx()
    voice = tone_frames(300, 4)
    rig.meta.audio(voice[0])  # lost
    rig.from_meta(rig.meta.payload(CORRUPT_OPUS))
    rig.from_meta(rig.meta.audio(voice[2]))
    rig.from_meta(rig.meta.audio(voice[3]))  # the gap is declared: all three released
    sent = rig.to_pbx()
    # One concealed for the gap, one for the corrupt frame, then the two good frames.
    assert len(sent) == 4
    assert steps(sent)[:2] == ({1}, {160})
    assert rig.stats("whatsapp")["bad_packets"] == 1


# --------------------------------------------------------------------------- RTCP


def talk_both(rig: Rig, frames: int) -> None:
    voice = tone_frames(300, frames)
    for pcm in voice:
        rig.from_meta(rig.meta.audio(pcm))
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.tick()


def rtp_before_rtcp(log: list[tuple[bytes, tuple[str, int]]]) -> int:
    """RTP datagrams sent before the first RTCP one in a socket's log."""
    return next(i for i, (data, _) in enumerate(log) if 200 <= data[1] <= 204)


def test_a_report_goes_to_each_leg_every_interval() -> None:
    rig = answered()
    ticks = round(RTCP_INTERVAL / FRAME)
    talk_both(rig, ticks - 5)
    rig.to_meta(), rig.to_pbx()
    assert rig.meta_rtcp == [] and rig.pbx_rtcp == []
    talk_both(rig, 10)
    to_meta = rig.to_meta()
    rig.to_pbx()
    # Meta: SRTCP on the RTP port (rtcp-mux), decrypted with Meta's keys.
    assert len(rig.meta_rtcp) == 1
    assert [addr for data, addr in rig.meta_log if 200 <= data[1] <= 204] == [META_ADDR]
    sr, sdes = rig.meta_rtcp[0]
    assert isinstance(sr, RtcpSenderReport) and isinstance(sdes, RtcpSdes)
    assert sr.ssrc == sdes.chunks[0].ssrc == to_meta[0].ssrc
    assert sr.packet_count == rtp_before_rtcp(rig.meta_log)
    # PBX: plain RTCP to the port after its RTP port (no rtcp-mux answered).
    ((pbx_report, addr),) = rig.pbx_rtcp
    assert addr == (PBX_IP, PBX_PORT + 1)
    pbx_sr = pbx_report[0]
    assert isinstance(pbx_sr, RtcpSenderReport)
    assert pbx_sr.packet_count == rtp_before_rtcp(rig.pbx_log)
    talk_both(rig, ticks)
    rig.to_meta(), rig.to_pbx()
    assert len(rig.meta_rtcp) == len(rig.pbx_rtcp) == 2


def test_report_blocks_name_the_peer_and_echo_its_sender_report() -> None:
    rig = answered()
    talk_both(rig, 20)
    meta_sr = RtcpSenderReport(META_SSRC, ntp_timestamp(1_700_000_000.25), 1, 20, 1000)
    pbx_sr = RtcpSenderReport(PBX_SSRC, ntp_timestamp(1_700_000_100.5), 1, 20, 3200)
    rig.from_meta(rig.meta.rtcp(meta_sr.serialize()))
    rig.from_pbx(pbx_sr.serialize())
    assert rig.stats("whatsapp")["bad_packets"] == rig.stats("pbx")["bad_packets"] == 0
    assert rig.stats("whatsapp")["srtp_auth_failures"] == 0
    talk_both(rig, round(RTCP_INTERVAL / FRAME))
    rig.to_meta(), rig.to_pbx()
    (meta_report,) = rig.meta_rtcp
    ((pbx_report, _),) = rig.pbx_rtcp
    for report, peer_ssrc, sr in (
        (meta_report, META_SSRC, meta_sr),
        (pbx_report, PBX_SSRC, pbx_sr),
    ):
        first = report[0]
        assert isinstance(first, RtcpSenderReport | RtcpReceiverReport)
        (block,) = first.reports
        assert block.ssrc == peer_ssrc  # RFC 3550 6.4.1: the source this block is about
        assert block.lsr == (sr.ntp_timestamp >> 16) & 0xFFFFFFFF
        assert block.dlsr > 0 and block.cumulative_lost == 0


def test_meta_loss_reports_plan_the_opus_fec() -> None:
    rig = answered()
    talk_both(rig, 5)
    codec = rig.bridge.wa.codec
    assert isinstance(codec, OpusCodec)
    ours = rig.to_meta()[0].ssrc
    rig.to_pbx()
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (5, FEC_COMPLEXITY)

    def report(ssrc: int, fraction: int, sender: bool = False) -> bytes:
        block = ReportBlock(ssrc, fraction_lost=fraction)
        if sender:
            return RtcpSenderReport(META_SSRC, 1, 1, 1, 1, [block]).serialize()
        return RtcpReceiverReport(META_SSRC, [block]).serialize()

    # Blocks about another source change nothing, however many.
    for _ in range(3):
        rig.from_meta(rig.meta.rtcp(report(ours ^ 1, 0)))
    assert codec.packet_loss_perc == 5
    # Meta reports no loss on what we send (RR, then SR): FEC off, complexity as set.
    rig.from_meta(rig.meta.rtcp(report(ours, 0)))
    rig.from_meta(rig.meta.rtcp(report(ours, 0, sender=True)))
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (0, 1)
    rig.from_meta(rig.meta.rtcp(report(ours, 13)))  # 5 %
    assert (codec.packet_loss_perc, codec.encoder_complexity) == (6, FEC_COMPLEXITY)
    # A PBX report (G.711 leg) is taken and changes nothing on the Opus side.
    rig.from_pbx(RtcpReceiverReport(PBX_SSRC, [ReportBlock(ours, fraction_lost=0)]).serialize())
    assert codec.packet_loss_perc == 6
    assert rig.stats("whatsapp")["bad_packets"] == rig.stats("pbx")["bad_packets"] == 0
    talk_both(rig, 5)
    assert len(rig.to_meta()) == 5 and len(rig.to_pbx()) == 5


# --------------------------------------------------------------------------- no media


def test_no_media_from_meta_is_reported_once() -> None:
    rig = answered(no_media_timeout=5.0)
    talk_both(rig, 10)
    quiet = 0
    while not rig.no_media:
        rig.from_pbx(rig.pbx.audio(bytes(320)))  # only the PBX keeps sending
        rig.tick()
        quiet += 1
        assert quiet < 1000
    assert rig.no_media == ["whatsapp"]
    assert quiet * FRAME == pytest.approx(5.0, abs=2 * FRAME)
    talk_both(rig, 5)
    rig.tick(500)
    assert rig.no_media == ["whatsapp"]


def test_a_pbx_leg_we_only_send_to_is_not_expected_to_send() -> None:
    rig = answered(pbx=pbx_params(direction="sendonly"), no_media_timeout=5.0)
    voice = tone_frames(300, 1)[0]
    for _ in range(round(12.0 / FRAME)):
        rig.from_meta(rig.meta.audio(voice))
        rig.tick()
    assert rig.no_media == []
    assert len(rig.to_pbx()) == round(12.0 / FRAME)  # and it does get our audio


def test_a_pbx_holding_without_music_is_not_a_dead_call() -> None:
    """The PBX holds (its sendonly, our recvonly) and plays nothing: hold can last."""
    rig = answered(pbx=pbx_params(direction="recvonly"), no_media_timeout=5.0)
    voice = tone_frames(300, 1)[0]
    for _ in range(round(12.0 / FRAME)):
        rig.from_meta(rig.meta.audio(voice))
        rig.tick()
    assert rig.no_media == []
    assert len(rig.to_meta()) >= round(12.0 / FRAME) - 5  # Meta still gets silence frames


def test_a_silent_pbx_that_should_send_is_reported() -> None:
    rig = answered(no_media_timeout=5.0)
    voice = tone_frames(300, 1)[0]
    for _ in range(round(6.0 / FRAME)):
        rig.from_meta(rig.meta.audio(voice))
        rig.tick()
    assert rig.no_media == ["pbx"]


# --------------------------------------------------------------------------- re-INVITEs


def test_pbx_hold_and_resume() -> None:
    rig = answered()
    rig.set_pbx(direction="recvonly")  # the PBX put us on hold: do not send to it
    talk(rig, 10)
    assert rig.to_pbx() == []
    rig.set_pbx(direction="sendrecv")
    talk(rig, 10)
    assert len(rig.to_pbx()) == 10


def test_pbx_hold_leaves_no_hole_in_the_sequence_but_keeps_time() -> None:
    rig = answered()
    talk(rig, 10)
    before = rig.to_pbx()
    rig.set_pbx(direction="recvonly")
    talk(rig, 100)
    rig.set_pbx(direction="sendrecv")
    talk(rig, 10)
    after = rig.to_pbx()
    # RFC 3550 5.1: the sequence number counts packets sent; the timestamp runs on.
    assert steps(before + after)[0] == {1}
    assert (after[0].timestamp - before[-1].timestamp) & U32 == 101 * 160
    assert rig.stats("pbx")["tx_packets"] == 20
    assert rig.bridge.pbx.sender is not None and rig.bridge.pbx.sender.packets == 20


def test_pbx_codec_change_to_pcma() -> None:
    rig = answered()
    talk(rig, 5)
    before = rig.to_pbx()
    rig.set_pbx(codec="PCMA", payload_type=8)
    for pcm in tone_frames(440, 50):
        rig.from_meta(rig.meta.audio(pcm))
        rig.tick()
    after = rig.to_pbx()
    assert {p.payload_type for p in after} == {8}
    assert steps(before + after)[:3] == ({1}, {160}, {before[0].ssrc})
    pcma = codec_for("PCMA")
    pcm = b"".join(pcma.decode(p.payload) for p in after[10:])
    assert frequency(pcm) == pytest.approx(440, rel=0.02)


def test_pbx_reinvite_to_a_new_port_on_the_same_host_is_followed() -> None:
    rig = answered()
    talk(rig, 2)
    rig.set_pbx(remote_port=12000, remote_rtcp_port=12001)  # e.g. media moved to a phone
    talk(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == (PBX_IP, 12000)


# --------------------------------------------------------------------------- close, stats


def test_close_closes_both_sockets_unsubscribes_and_is_idempotent() -> None:
    rig = answered()
    assert len(rig.media_clock.subscribers) == 1
    rig.bridge.close()
    rig.bridge.close()
    assert rig.wa_sock.closes == rig.pbx_sock.closes == 1
    assert rig.media_clock.subscribers == {} and len(rig.media_clock.unsubscribed) == 1
    rig.tick(300)  # a tick already scheduled must not send on closed sockets
    assert rig.wa_sock.sent_after_close == rig.pbx_sock.sent_after_close == 0


def test_close_before_any_sdp() -> None:
    rig = Rig()
    rig.bridge.close()
    assert rig.wa_sock.closes == rig.pbx_sock.closes == 1
    assert rig.bridge.stats().whatsapp.codec is None


def test_stats_count_what_was_sent_and_received() -> None:
    rig = Rig()
    rig.answer()
    meta_in = [rig.meta.audio(pcm) for pcm in tone_frames(440, 30)]
    pbx_in = [rig.pbx.audio(pcm) for pcm in tone_frames(440, 20)]
    for i in range(30):
        rig.from_meta(meta_in[i])
        if i < 20:
            rig.from_pbx(pbx_in[i])
        rig.tick()
    dtmf = rig.meta.dtmf_event(3)
    for packet in dtmf:
        rig.from_meta(packet)
    rig.from_meta(b"junk")
    rig.from_pbx(b"junk")
    rig.from_meta(rig.meta.audio(bytes(320)), ("198.51.100.1", 1))
    to_meta, to_pbx = rig.to_meta(), rig.to_pbx()
    stats = rig.bridge.stats()
    wa, pbx = rig.stats("whatsapp"), rig.stats("pbx")
    assert wa["rx_packets"] == 30 + 6 and pbx["rx_packets"] == 20
    assert pbx["rx_octets"] == 20 * 160
    srtp_overhead = 12 + 10  # RTP header, HMAC-SHA1-80 tag
    assert wa["rx_octets"] == sum(len(d) - srtp_overhead for d in meta_in + dtmf)
    silence = codec_for("opus").silence()
    filler = [p for p in to_meta[21:] if p.payload == silence]
    assert wa["tx_packets"] == len(to_meta) == 1 + 20 + len(filler)  # first, audio, filler
    assert len(filler) >= 7
    assert pbx["tx_packets"] == len(to_pbx) == 30 + 6
    assert (wa["codec"], pbx["codec"]) == ("opus", "PCMU")
    assert wa["lost"] == pbx["lost"] == 0
    assert wa["srtp_auth_failures"] == 1 and pbx["bad_packets"] == 1
    assert wa["foreign_packets"] == 1 and pbx["foreign_packets"] == 0
    assert stats.passthrough is False
    assert stats.dtmf_to_pbx == 6 and stats.dtmf_to_whatsapp == 0


# --------------------------------------------------------------------------- cost


def per_packet_us(
    rig: Rig, handler_name: str, packets: list[bytes], addr: tuple[str, int]
) -> float:
    on_packet = getattr(rig.bridge, handler_name)
    advance = rig.clock.advance
    started = time.perf_counter()
    for data in packets:
        advance(FRAME)
        on_packet(data, addr)
    return (time.perf_counter() - started) / len(packets) * 1e6


def test_per_packet_cost_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a pass/fail figure: the µs per packet for docs (no timing assertion)."""
    count = 5000
    lines = []
    for label, wa in (("Opus<->PCMU", wa_params()), ("PCMU passthrough", wa_g711_params())):
        rig = answered(wa=wa)
        voice = tone_frames(440, 50)
        from_pbx = [rig.pbx.audio(voice[i % 50]) for i in range(count)]
        from_meta = [rig.meta.audio(voice[i % 50]) for i in range(count)]
        pbx_us = per_packet_us(rig, "on_pbx_packet", from_pbx, PBX_ADDR)
        wa_us = per_packet_us(rig, "on_whatsapp_packet", from_meta, META_ADDR)
        assert rig.stats("whatsapp")["tx_packets"] == 1 + count  # the first packet, then these
        assert rig.stats("pbx")["tx_packets"] == count
        lines.append(
            f"{label:17} on_pbx_packet {pbx_us:6.1f} us/packet   "
            f"on_whatsapp_packet {wa_us:6.1f} us/packet   ({count} packets)"
        )
    with capsys.disabled():
        print("\nbridge per-packet cost:\n  " + "\n  ".join(lines))


# --------------------------------------------------------------------------- odds and ends


def test_ports_are_the_sockets_ports() -> None:
    rig = Rig()
    assert (rig.bridge.whatsapp_port, rig.bridge.pbx_port) == (20000, 20002)


def test_authentic_srtp_carrying_malformed_rtp_is_counted() -> None:
    rig = answered()
    padded = bytearray(rig.meta.sender.next_packet(OPUS_PT, b"\x08\x00", 960))
    padded[0] |= 0x20  # P bit, and a last octet of 0: an invalid padding count
    rig.from_meta(rig.meta.srtp.protect(bytes(padded)))
    assert rig.stats("whatsapp")["bad_packets"] == 1
    assert rig.to_pbx() == []


def test_forged_srtcp_is_counted_as_an_auth_failure() -> None:
    rig = answered()
    report = rig.meta.rtcp(RtcpReceiverReport(META_SSRC).serialize())
    rig.from_meta(report[:-1] + bytes((report[-1] ^ 0x55,)))
    assert rig.stats("whatsapp")["srtp_auth_failures"] == 1
    rig.from_meta(report)
    assert rig.stats("whatsapp")["srtp_auth_failures"] == 1


def test_meta_audio_before_the_pbx_answers_goes_nowhere() -> None:
    rig = Rig()
    rig.set_whatsapp()
    talk(rig, 5)
    for packet in rig.meta.dtmf_event(2):
        rig.from_meta(packet)
    assert rig.pbx_sock.sent == []
    assert rig.stats("whatsapp")["rx_packets"] == 11
    rig.set_pbx()
    talk(rig, 5)
    assert len(rig.to_pbx()) == 5


def test_rtcp_only_goes_to_a_negotiated_leg() -> None:
    rig = Rig()
    rig.set_whatsapp()
    rig.tick(round(RTCP_INTERVAL / FRAME) + 5)
    rig.to_meta()
    assert len(rig.meta_rtcp) == 1 and rig.pbx_sock.sent == []


def test_a_tick_already_due_when_closed_does_nothing() -> None:
    rig = answered(no_media_timeout=1.0)
    rig.bridge.close()
    rig.bridge.tick(rig.clock.advance(10.0))  # a clock snapshot taken before the close
    assert rig.wa_sock.sent_after_close == 0 and rig.no_media == []


def test_factory_binds_both_ports_and_gives_them_back_when_the_range_is_full() -> None:
    loop = asyncio.new_event_loop()
    try:
        ports = PortAllocator("127.0.0.1", 47100, 47199)
        clock = MediaClock(loop)
        cfg = MediaSettings(no_media_timeout=7.0, opus_complexity=1)
        bridge = BridgeFactory(loop, ports, clock, cfg)("call-9", lambda leg: None)
        assert bridge.whatsapp_port % 2 == bridge.pbx_port % 2 == 0
        assert bridge.whatsapp_port != bridge.pbx_port and ports.in_use == 2
        bridge.close()
        assert ports.in_use == 0
        one = PortAllocator("127.0.0.1", 47200, 47201)  # room for one socket, not two
        with pytest.raises(PortsExhausted):
            BridgeFactory(loop, one, clock, cfg)("call-10", lambda leg: None)
        assert one.in_use == 0
        clock.close()
    finally:
        loop.close()


def test_early_pbx_audio_in_passthrough_reaches_meta_unchanged() -> None:
    rig = Rig(wa=wa_g711_params())
    rig.set_pbx()
    # Held as PCM until Meta's keys are known, so re-encoded: 0x7f and 0xff are both
    # mu-law zero and only 0xff comes back; every other octet is itself again.
    ramp = bytes(range(256)).replace(b"\x7f", b"\xff")
    payloads = [ramp[:160], ramp[96:]]
    for payload in payloads:
        rig.from_pbx(rig.pbx.payload(payload))
    rig.set_whatsapp()
    assert [p.payload for p in rig.to_meta()] == payloads


def test_dtmf_toward_a_pbx_without_telephone_event_is_dropped_quietly() -> None:
    rig = answered(pbx=pbx_params(dtmf_payload_type=None, dtmf_clock_rate=None))
    talk(rig, 2)
    for packet in rig.meta.dtmf_event(7):
        rig.from_meta(packet)
    talk(rig, 2)
    assert {p.payload_type for p in rig.to_pbx()} == {PCMU_PT}
    assert rig.bridge.stats().dtmf_to_pbx == 0
