"""Strict latching on both media legs (gateway/media/leg.py, docs/decisions.md).

The PBX leg takes RTP from its SDP's address:port, or learns one other port of the
PBX's host once, early (a PBX behind NAT), and then holds: a packet from another port
of that host is dropped unread and counted, and neither moves where the caller's audio
goes nor reaches Meta. The WhatsApp leg takes Meta's SDP address:port only.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.config import MediaConfig
from gateway.media.bridge import RTCP_INTERVAL, BridgeFactory
from gateway.media.leg import DEFAULT_LATCH_WINDOW, PROBATION, REFUSAL_LOG_INTERVAL
from gateway.media.rtcp import RtcpReceiverReport, RtcpSenderReport
from gateway.media.rtp import build_rtp
from gateway.media.settings import MediaSettings
from gateway.transport.rtp import MediaClock, PortAllocator
from tests.unit.media.bridge_fakes import (
    FRAME,
    META_ADDR,
    META_IP,
    META_PORT,
    META_SSRC,
    PBX_ADDR,
    PBX_IP,
    PBX_PORT,
    PBX_SSRC,
    PCMU_PT,
    Rig,
    frequency,
    pbx_params,
    tone_frames,
)

SPOOF = (PBX_IP, 31000)  # the PBX's host, another port: an attacker, or the PBX's NAT
NAT = (PBX_IP, 40000)

pytestmark = pytest.mark.usefixtures("media_engine")  # both engines (conftest.py)


def answered(**kwargs: object) -> Rig:
    rig = Rig(**kwargs)  # type: ignore[arg-type]
    rig.answer()
    rig.to_meta()
    return rig


def from_pbx(rig: Rig, frames: int, addr: tuple[str, int] = PBX_ADDR, hz: float = 300) -> None:
    for pcm in tone_frames(hz, frames):
        rig.from_pbx(rig.pbx.audio(pcm), addr)
        rig.tick()


def from_meta(rig: Rig, frames: int, hz: float = 440) -> None:
    for pcm in tone_frames(hz, frames):
        rig.from_meta(rig.meta.audio(pcm))
        rig.tick()


def destinations(rig: Rig) -> set[tuple[str, int]]:
    """Where the bridge sent RTP toward the PBX (RTCP goes to the SDP's RTCP port)."""
    return {addr for data, addr in rig.pbx_sock.sent if not 200 <= data[1] <= 204}


def spoof_packet(rig: Rig, seq: int = 7, pt: int = PCMU_PT) -> bytes:
    """A valid RTP header with the PBX's payload type, someone else's SSRC, a loud tone."""
    return build_rtp(
        pt, seq, 160 * seq, 0x0BADF00D, rig.pbx.encoder.encode(tone_frames(1000, 1)[0])
    )


# --------------------------------------------------------------------------- PBX leg


def test_the_first_packet_from_the_sdp_address_latches_and_a_second_source_is_refused() -> None:
    rig = answered()
    from_pbx(rig, 3)
    received = dict(rig.stats("pbx"))
    meta_before = len(rig.wa_sock.sent)
    rig.from_pbx(spoof_packet(rig), SPOOF)  # one packet, as issue 11 finding 3
    assert len(rig.wa_sock.sent) == meta_before  # not decoded: nothing of it toward Meta
    from_meta(rig, 50)
    to_pbx = rig.to_pbx()
    assert destinations(rig) == {PBX_ADDR}  # no audio to the spoofer; the PBX keeps all
    assert len(to_pbx) == 50
    pcm = rig.pbx.decode_pcm(to_pbx[10:])
    assert frequency(pcm) == pytest.approx(440, rel=0.02)
    stats = rig.stats("pbx")
    assert stats["relatch_refused"] == 1
    assert (stats["rx_packets"], stats["rx_octets"]) == (
        received["rx_packets"],
        received["rx_octets"],
    )
    assert stats["bad_packets"] == stats["foreign_packets"] == 0


def test_a_refused_source_is_refused_whatever_it_sends() -> None:
    rig = answered()
    from_pbx(rig, 2)
    for data in (spoof_packet(rig), b"\x00junk", rig.pbx.rtp(99, 1, 1, b"xx"), b""):
        rig.from_pbx(data, SPOOF)
    rig.from_pbx(RtcpReceiverReport(0x0BADF00D).serialize(), SPOOF)
    from_meta(rig, 3)
    assert destinations(rig) == {PBX_ADDR}
    stats = rig.stats("pbx")
    assert stats["relatch_refused"] == 5 and stats["bad_packets"] == 0
    assert stats["rx_packets"] == 2


def test_the_pbx_audio_still_reaches_meta_while_a_spoofer_sends() -> None:
    rig = answered()
    frames = tone_frames(523, 60)
    for i, pcm in enumerate(frames):
        rig.from_pbx(rig.pbx.audio(pcm))
        rig.from_pbx(spoof_packet(rig, seq=100 + i), SPOOF)  # a 1 kHz tone, every frame
        rig.tick()
    to_meta = rig.to_meta()
    audio = [p for p in to_meta if p.payload != rig.meta.encoder.silence()]
    assert len(audio) >= 59
    pcm = rig.meta.decode_pcm(audio[10:])
    assert frequency(pcm) == pytest.approx(523, rel=0.02)
    assert rig.stats("pbx")["relatch_refused"] == 60 and rig.stats("pbx")["rx_packets"] == 60


def test_junk_from_the_pbx_host_is_not_counted_as_received() -> None:
    rig = answered()
    rig.from_pbx(b"\x00garbage")  # from the SDP address itself, before any audio
    rig.from_pbx(rig.pbx.rtp(99, 1, 1, b"xx"))  # RTP, not this stream's payload type
    rig.from_pbx(rig.pbx.rtp(99, 2, 2, bytes(160)))  # the same through the fast path's test
    stats = rig.stats("pbx")
    assert (stats["rx_packets"], stats["rx_octets"], stats["bad_packets"]) == (0, 0, 3)
    # Not the PBX's stream: none of it settles the source either.
    from_pbx(rig, PROBATION, NAT)
    from_meta(rig, 1)
    assert rig.pbx_sock.sent[-1][1] == NAT
    assert rig.stats("pbx")["rx_packets"] == 1  # the packet that ended probation


def test_a_pbx_behind_nat_is_learned_after_probation_then_held() -> None:
    rig = answered()
    from_pbx(rig, PROBATION - 1, NAT)
    from_meta(rig, 1)
    assert destinations(rig) == {PBX_ADDR}  # still learning: the SDP's address
    assert rig.stats("pbx")["rx_packets"] == 0  # learning packets are dropped
    silence = rig.meta.encoder.silence()
    assert {p.payload for p in rig.to_meta()} == {silence}  # only filler meanwhile
    from_pbx(rig, 1, NAT)  # in sequence with the others: learned
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT
    assert rig.stats("pbx")["rx_packets"] == 1
    rig.from_pbx(rig.pbx.audio(bytes(320)))  # now even the SDP's port is another source
    from_pbx(rig, PROBATION, SPOOF)
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT
    assert rig.stats("pbx")["relatch_refused"] == 1 + PROBATION


def test_probation_wants_one_source_in_sequence() -> None:
    rig = answered()
    rig.from_pbx(spoof_packet(rig, seq=10), SPOOF)
    rig.from_pbx(rig.pbx.audio(bytes(320)), NAT)
    rig.from_pbx(spoof_packet(rig, seq=11), SPOOF)  # in sequence, but NAT came between
    rig.from_pbx(spoof_packet(rig, seq=13), SPOOF)  # out of sequence
    rig.from_pbx(spoof_packet(rig, seq=20), SPOOF)
    from_meta(rig, 2)
    assert destinations(rig) == {PBX_ADDR}
    assert rig.stats("pbx")["rx_packets"] == 0


def test_the_sdp_address_sending_first_ends_learning() -> None:
    rig = answered()
    from_pbx(rig, 1, NAT)
    from_pbx(rig, 1)  # the SDP's address: taken at once, the source is settled
    from_pbx(rig, PROBATION, NAT)
    from_meta(rig, 2)
    assert destinations(rig) == {PBX_ADDR}
    assert rig.stats("pbx")["relatch_refused"] == PROBATION


def test_learning_ends_with_its_window() -> None:
    rig = answered()
    rig.advance(DEFAULT_LATCH_WINDOW + FRAME)  # a PBX silent that long after its answer
    from_pbx(rig, PROBATION + 2, NAT)
    from_meta(rig, 2)
    assert destinations(rig) == {PBX_ADDR}
    assert rig.stats("pbx")["relatch_refused"] == PROBATION + 2
    from_pbx(rig, 2)  # the SDP's address is the leg's all along
    assert rig.stats("pbx")["rx_packets"] == 2


def test_without_a_window_only_the_sdp_address_counts() -> None:
    rig = answered()
    rig.bridge.pbx.window = 0.0  # media.latch: sdp
    rig.set_pbx(remote_port=PBX_PORT + 100)  # a fresh start with the window closed
    from_pbx(rig, PROBATION + 1, NAT)
    from_meta(rig, 2)
    assert destinations(rig) - {PBX_ADDR} == {(PBX_IP, PBX_PORT + 100)}
    assert rig.stats("pbx")["relatch_refused"] == PROBATION + 1


def test_a_renegotiation_to_a_new_port_relatches() -> None:
    rig = answered()
    from_pbx(rig, 2)
    rig.set_pbx(remote_port=12000, remote_rtcp_port=12001)  # media moved to a phone
    new = (PBX_IP, 12000)
    from_pbx(rig, 2, new)
    rig.from_pbx(rig.pbx.audio(bytes(320)))  # the old port: gone with its SDP
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == new
    assert rig.stats("pbx")["relatch_refused"] == 1 and rig.stats("pbx")["rx_packets"] == 4


def test_a_renegotiation_opens_a_new_learning_window() -> None:
    rig = answered()
    from_pbx(rig, 2)
    rig.advance(DEFAULT_LATCH_WINDOW * 2)
    rig.set_pbx(remote_port=12000, remote_rtcp_port=12001)
    from_pbx(rig, PROBATION, NAT)  # the new stream comes through a NAT
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT


def test_a_session_refresh_keeps_the_latch() -> None:
    rig = answered()
    from_pbx(rig, PROBATION, NAT)
    rig.set_pbx()  # a session refresh: the same SDP
    rig.set_pbx(direction="sendonly")  # hold, same address
    rig.set_pbx()  # resume
    from_pbx(rig, 2, NAT)
    rig.from_pbx(rig.pbx.audio(bytes(320)))
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT
    assert rig.stats("pbx")["relatch_refused"] == 1


def test_a_refresh_before_anything_was_learned_reopens_learning() -> None:
    rig = answered()
    rig.advance(DEFAULT_LATCH_WINDOW * 2)  # answered on hold: nothing to learn from
    rig.set_pbx()  # resumed with the same SDP
    from_pbx(rig, PROBATION, NAT)
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT


def test_on_a_call_to_whatsapp_the_window_starts_at_metas_answer() -> None:
    rig = Rig()
    rig.set_pbx()  # the PBX's offer: its media is known at once, it sends after the answer
    rig.advance(DEFAULT_LATCH_WINDOW * 3)  # Meta rings for 30 s
    rig.set_whatsapp()  # Meta's 200
    rig.to_meta()
    from_pbx(rig, PROBATION, NAT)
    from_meta(rig, 2)
    assert rig.pbx_sock.sent[-1][1] == NAT
    rig.advance(DEFAULT_LATCH_WINDOW * 3)
    rig.set_whatsapp()  # the answer only counts once
    from_pbx(rig, 1, SPOOF)
    assert rig.stats("pbx")["relatch_refused"] == 1


def test_dtmf_takes_part_in_probation() -> None:
    rig = answered()
    rig.from_pbx(rig.pbx.audio(bytes(320)), NAT)
    for packet in rig.pbx.dtmf_event(4):
        rig.from_pbx(packet, NAT)
    from_meta(rig, 1)
    assert rig.pbx_sock.sent[-1][1] == NAT


def test_rtcp_comes_from_the_rtcp_port_or_the_source_port_plus_one() -> None:
    rig = answered()  # Asterisk's answer: no rtcp-mux, RTCP on its port + 1
    from_pbx(rig, 2)
    report = RtcpSenderReport(PBX_SSRC, 1 << 32, 1234, 2, 320).serialize()
    rig.from_pbx(report, (PBX_IP, PBX_PORT + 1))
    assert rig.bridge.pbx.rx is not None and rig.bridge.pbx.rx.last_sr_ntp != 0
    rig.from_pbx(report, SPOOF)
    rig.from_pbx(report, (PBX_IP, SPOOF[1] + 1))
    assert rig.stats("pbx")["relatch_refused"] == 2
    assert rig.stats("pbx")["bad_packets"] == 0


def test_rtcp_with_mux_follows_a_learned_source() -> None:
    rig = answered(pbx=pbx_params(rtcp_mux=True, remote_rtcp_port=PBX_PORT))
    for pcm in tone_frames(300, round(RTCP_INTERVAL / FRAME) + 5):
        rig.from_pbx(rig.pbx.audio(pcm), NAT)
        rig.tick()
    rig.to_pbx()
    assert [addr for _, addr in rig.pbx_rtcp] == [NAT]


def test_an_ipv6_source_in_the_kernels_form_is_the_source() -> None:
    rig = Rig(pbx=pbx_params(remote_address="2001:db8::50"))
    rig.answer()
    rig.from_pbx(rig.pbx.audio(bytes(320)), ("2001:db8::50", PBX_PORT, 0, 0))  # type: ignore[arg-type]
    rig.from_pbx(rig.pbx.audio(bytes(320)), ("2001:db8::50", 31000, 0, 0))  # type: ignore[arg-type]
    stats = rig.stats("pbx")
    assert (stats["rx_packets"], stats["relatch_refused"], stats["foreign_packets"]) == (1, 1, 0)


def test_a_refusal_is_logged_once_per_interval() -> None:
    rig = answered()
    from_pbx(rig, 1)
    with capture_logs() as logs:
        for i in range(20):
            rig.from_pbx(spoof_packet(rig, seq=i), SPOOF)
        rig.advance(REFUSAL_LOG_INTERVAL)
        rig.from_pbx(spoof_packet(rig, seq=30), SPOOF)
    lines = [e for e in logs if e["event"] == "rtp_relatch_refused"]
    assert [(e["leg"], e["source"], e["latched"], e["refused"]) for e in lines] == [
        ("pbx", f"{PBX_IP}:31000", f"{PBX_IP}:{PBX_PORT}", 1),
        ("pbx", f"{PBX_IP}:31000", f"{PBX_IP}:{PBX_PORT}", 21),
    ]
    assert lines[0]["call"] == "call-1" and lines[0]["log_level"] == "warning"


# --------------------------------------------------------------------------- WhatsApp leg


def test_meta_from_another_port_of_its_address_is_refused_unread() -> None:
    rig = answered()
    rig.from_meta(rig.meta.audio(tone_frames(440, 1)[0]), (META_IP, META_PORT + 2))
    forged = rig.meta.audio(bytes(320))
    rig.from_meta(forged[:-1] + bytes((forged[-1] ^ 1,)), (META_IP, META_PORT + 4))
    rig.from_meta(rig.meta.rtcp(RtcpReceiverReport(META_SSRC).serialize()), (META_IP, 9))
    assert rig.to_pbx() == []
    stats = rig.stats("whatsapp")
    assert stats["relatch_refused"] == 3
    assert stats["rx_packets"] == stats["srtp_auth_failures"] == stats["bad_packets"] == 0
    from_meta(rig, 3)  # Meta's own address still flows, and nothing moved
    assert len(rig.to_pbx()) == 3
    assert {addr for _, addr in rig.wa_sock.sent} == {META_ADDR}


def test_meta_packets_of_another_payload_type_are_bad_not_received() -> None:
    rig = answered()
    rig.from_meta(rig.meta.payload(b"\x08\x00", pt=96))
    stats = rig.stats("whatsapp")
    assert (stats["rx_packets"], stats["rx_octets"], stats["bad_packets"]) == (0, 0, 1)
    assert rig.to_pbx() == []


def test_the_whatsapp_leg_never_learns() -> None:
    rig = answered()
    other = (META_IP, META_PORT + 2)
    for pcm in tone_frames(440, PROBATION + 2):
        rig.from_meta(rig.meta.audio(pcm), other)
    rig.tick(3)
    assert {addr for _, addr in rig.wa_sock.sent} == {META_ADDR}
    assert rig.stats("whatsapp")["relatch_refused"] == PROBATION + 2


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("latch", "window"), [("strict", 4.0), ("sdp", 0.0)])
def test_the_factory_passes_the_configured_rule(latch: str, window: float) -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = MediaClock(loop)
        cfg = MediaSettings(latch=latch, latch_window=4.0)  # type: ignore[arg-type]
        bridge = BridgeFactory(loop, PortAllocator("127.0.0.1", 47300, 47399), clock, cfg)(
            "call-2", lambda leg: None
        )
        assert (bridge.pbx.window, bridge.wa.window) == (window, 0.0)
        bridge.close()
        clock.close()
    finally:
        loop.close()


def test_config_defaults_and_bounds() -> None:
    cfg = MediaConfig()
    assert (cfg.latch, cfg.latch_window) == ("strict", DEFAULT_LATCH_WINDOW)
    for bad in ({"latch": "off"}, {"latch_window": 0}, {"latch_window": 61}):
        with pytest.raises(ValueError):
            MediaConfig(**bad)  # type: ignore[arg-type]


def test_the_media_settings_default_like_the_config() -> None:
    from gateway.app import media_settings

    assert MediaSettings() == media_settings(MediaConfig())
