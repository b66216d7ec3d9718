"""Meta's WebRTC media mode (ICE-lite + DTLS-SRTP) through the daemon, both call directions.

The Meta emulator in WebRTC mode (tests/emulator/webrtc.py, independent of the
gateway's ICE and DTLS code) is as strict as Meta: it offers ``UDP/TLS/RTP/SAVPF``
with ``a=ice-lite`` and ``a=setup:actpass``, answers only authenticated checks
from the controlling side, fails the call if USE-CANDIDATE never comes, if our
certificate is not our SDP's fingerprint, or if media arrives unencrypted, before
the handshake or from another address. The PBX is Asterisk 22. Audio is measured
as audio both ways; DTMF reaches Asterisk's Read(); faults end both legs with a
Reason and are counted.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import CallResult, MetaServer, UasBehaviour, measure_tone
from tests.integration.harness import GatewayProcess, free_port
from tests.integration.test_inbound_emulator import NUMBER, meta_call, with_asterisk
from tests.integration.test_outbound import PASSWORD, USER, _gateway
from tests.peers.asterisk import AsteriskPbx
from tests.peers.audio import assert_tone

pytestmark = pytest.mark.integration

DTLS_NUMBER = {
    "number": NUMBER,
    "sip_password_file": "secrets/15550001111.password",
    "srtp": "dtls",
}


def _webrtc_ok(result: CallResult) -> None:
    assert result.violations == [], result.describe()
    assert result.media_mode == "webrtc"
    assert result.use_candidate_seen and result.ice_nominated is not None, result.describe()
    assert result.fingerprint_ok is True
    assert result.dtls_profile == "SRTP_AES128_CM_SHA1_80"
    assert result.dtls_handshake_ms is not None


def _outcome(gw: GatewayProcess, outcome: str) -> float:
    return gw.metric("wagw_webrtc_calls_total", outcome=outcome) or 0.0


def _log(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in gw.log_lines() if line.get("event") == event]


# -- users calling the business (Meta offers WebRTC) ----------------------------------


def test_whatsapp_user_hears_asterisk_over_dtls_srtp(tmp_path: Path) -> None:
    """Asterisk Playtones(440) -> gateway (G.711 -> Opus, DTLS-SRTP) -> the user; the
    emulator's tone reaches Asterisk's side too, hangs up, and the record says how."""
    with with_asterisk(tmp_path, "tone") as (gw, pbx):
        result = meta_call(gw, media_mode="webrtc", tone_hz=523.0, talk_seconds=4.0)
        time.sleep(0.5)
        assert pbx.active_channels() == 0
        connected = _log(gw, "webrtc_connected")
        assert _outcome(gw, "connected") == 1.0
        log_text = gw.log_text()
    _webrtc_ok(result)
    # Neither side's ice-pwd is ever logged (SDPs are logged at debug level, masked).
    pwds = re.findall(r"a=ice-pwd:(\S+)", result.offer_sdp + result.answer_sdp)
    assert len(pwds) == 2 and all(p not in log_text for p in pwds)
    assert result.status == 200
    # ICE + DTLS on loopback, then media at once: 200 OK -> first SRTP packet.
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.5
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)
    assert len(connected) == 1 and connected[0]["nominated"].startswith("127.0.0.1:")
    assert connected[0]["suite"] == "AES_CM_128_HMAC_SHA1_80"


def test_asterisk_records_the_whatsapp_user_over_dtls_srtp(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "record-3") as (gw, pbx):
        result = meta_call(
            gw, media_mode="webrtc", tone_hz=523.0, hangup="gateway", talk_seconds=15.0
        )
        wav = pbx.wait_recording(timeout=20, copy_to=tmp_path / "rec.wav")
    _webrtc_ok(result)
    assert result.bye_from == "gateway"
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


def test_dtmf_over_dtls_srtp_reaches_asterisks_read(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "dtmf") as (gw, pbx):
        result = meta_call(
            gw,
            media_mode="webrtc",
            dtmf="2580",
            dtmf_delay=1.0,
            hangup="gateway",
            talk_seconds=15.0,
        )
        dtmf = pbx.wait_dtmf(timeout=10)
    _webrtc_ok(result)
    assert dtmf.digits == "2580"


def test_sdes_only_number_refuses_a_webrtc_offer_with_a_warning(tmp_path: Path) -> None:
    sdes = dict(DTLS_NUMBER, srtp="sdes")
    with with_asterisk(tmp_path, "tone", whatsapp={"numbers": [sdes]}) as (gw, _pbx):
        result = meta_call(gw, media_mode="webrtc")
        # The same number still takes Meta's SDES offers.
        sdes_result = meta_call(gw, talk_seconds=1.0)
    assert result.status == 488
    refusal = "".join(m.text for m in result.messages if m.summary.startswith("488"))
    assert "Warning:" in refusal and "SDES only" in refusal, result.describe()
    assert sdes_result.status == 200


# -- faults: each ends both legs with a Reason, is counted, and leaks nothing ------------


@pytest.mark.parametrize(
    ("fault", "outcome", "why"),
    [
        ("wrong_fingerprint", "fingerprint_mismatch", "DTLS fingerprint mismatch"),
        ("dtls_silent", "dtls_timeout", "DTLS timeout"),
        ("ice_silent", "ice_failed", "ICE"),
    ],
)
def test_webrtc_faults_end_both_legs(tmp_path: Path, fault: str, outcome: str, why: str) -> None:
    with with_asterisk(tmp_path, "tone", media={"dtls_timeout": 3.0}) as (gw, pbx):
        free = gw.metric("wagw_media_ports_free")
        result = meta_call(
            gw, media_mode="webrtc", webrtc_fault=fault, talk_seconds=15.0, hangup="gateway"
        )
        time.sleep(0.5)
        assert pbx.active_channels() == 0  # the PBX leg ended too
        failed = _log(gw, "webrtc_failed")
        counted = {o: _outcome(gw, o) for o in ("ice_unanswered", "ice_failed", outcome)}
        assert not gw.metric("wagw_calls_active", direction="inbound")
        assert gw.metric("wagw_media_ports_free") == free  # both ports given back
    assert result.bye_from == "gateway", result.describe()
    assert result.bye_reason is not None and why in result.bye_reason, result.describe()
    assert len(failed) == 1 and failed[0]["failure"].startswith(why), failed
    if fault == "ice_silent":  # unanswered checks: the agent's own verdict or the deadline
        assert counted["ice_unanswered"] + counted["ice_failed"] == 1.0, counted
    else:
        assert counted[outcome] == 1.0, counted
    # Nothing unencrypted ever left the gateway toward Meta.
    assert not [v for v in result.violations if "unencrypted" in v or "plain" in v]


def test_dtls_flood_on_the_media_port_leaves_the_call_alone(tmp_path: Path) -> None:
    """ClientHello-like datagrams from another port at the call's WhatsApp media port:
    dropped before DTLS, the call's audio unharmed."""
    with with_asterisk(tmp_path, "tone") as (gw, _pbx):

        async def call_and_flood() -> CallResult:
            task = asyncio.create_task(
                asyncio.to_thread(meta_call, gw, media_mode="webrtc", talk_seconds=5.0)
            )
            for _ in range(100):
                await asyncio.sleep(0.05)
                if _log(gw, "webrtc_connected"):
                    break
            # The call's WhatsApp port: the first port of the harness's media range.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                hello = bytes([22, 0xFE, 0xFF]) + bytes(10) + b"\x01" + bytes(200)
                for _ in range(2000):
                    s.sendto(hello, ("127.0.0.1", 40000))
            return await task

        result = asyncio.run(call_and_flood())
        connected = _outcome(gw, "connected")
        foreign = gw.metric("wagw_rtp_foreign_packets_total", leg="whatsapp") or 0.0
    _webrtc_ok(result)
    # The flood reached the call's port and was refused (the socket buffer drops some of a
    # 2,000-datagram burst before the gateway reads it).
    assert foreign >= 500, foreign
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)
    assert connected == 1.0


# -- the business calling users (we offer WebRTC, Meta answers passive) ----------------


async def _outbound(
    tmp_path: Path, exten: str, behaviour: UasBehaviour
) -> tuple[CallResult, Path | None, GatewayProcess]:
    gw_port = free_port()
    pbx = AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast")
    await asyncio.to_thread(pbx.start)
    server = MetaServer({NUMBER: PASSWORD}, behaviour=behaviour)
    await server.start()
    gw = _gateway(
        tmp_path,
        server.port,
        pbx={"address": f"127.0.0.1:{pbx.ast_port}", "listen": f"127.0.0.1:{gw_port}"},
        whatsapp={"numbers": [DTLS_NUMBER]},
    )
    try:
        await asyncio.to_thread(gw.start)
        await asyncio.to_thread(pbx.originate, f"Local/00{USER[1:]}@to-whatsapp", exten=exten)
        result = await server.wait_call(timeout=40)
        wav = None
        if exten.startswith("record"):
            wav = await asyncio.to_thread(
                pbx.wait_recording, timeout=20, copy_to=tmp_path / "rec.wav"
            )
        return result, wav, gw
    finally:
        await asyncio.to_thread(gw.stop)
        await server.close()
        await asyncio.to_thread(pbx.stop)


async def test_asterisk_calls_a_whatsapp_user_over_dtls_srtp(tmp_path: Path) -> None:
    behaviour = UasBehaviour(media_mode="webrtc", tone_hz=523.0, talk_seconds=5.0)
    result, wav, _gw = await _outbound(tmp_path, "record-3", behaviour)
    _webrtc_ok(result)
    assert result.status == 200
    offer = result.invite or ""
    assert "UDP/TLS/RTP/SAVPF" in offer and "a=setup:actpass" in offer
    assert "a=crypto" not in offer
    assert wav is not None
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


async def test_whatsapp_user_hears_asterisk_on_a_call_to_whatsapp_over_dtls(
    tmp_path: Path,
) -> None:
    behaviour = UasBehaviour(media_mode="webrtc", talk_seconds=4.0)
    result, _wav, _gw = await _outbound(tmp_path, "tone", behaviour)
    _webrtc_ok(result)
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)


async def test_dtmf_from_asterisk_reaches_whatsapp_over_dtls(tmp_path: Path) -> None:
    behaviour = UasBehaviour(media_mode="webrtc", hangup="gateway", talk_seconds=None)
    result, _wav, _gw = await _outbound(tmp_path, "senddtmf", behaviour)
    _webrtc_ok(result)
    assert result.dtmf_received == "1234#"
    assert result.bye_from == "gateway"
