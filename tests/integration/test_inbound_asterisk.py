"""Calls from a WhatsApp-like user through the gateway to Asterisk 22: real peers only.

baresip plays the WhatsApp user (SIP/TLS, SDES-SRTP, Opus, answering the
gateway's digest challenge with the business number's SIP password); Asterisk
with config/asterisk is the PBX. Audio is checked as audio (frequency and
level) in both directions, and DTMF both ways.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import GatewayProcess
from tests.peers import free_port
from tests.peers.asterisk import AsteriskPbx
from tests.peers.audio import assert_tone
from tests.peers.baresip import OPUS, Baresip, host_ice_addresses

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"  # what GatewayProcess writes for NUMBER


@contextmanager
def call_path(
    tmp_path: Path, extension: str, *, audio: float | None = None, media: str = "sdes"
) -> Iterator[tuple[GatewayProcess, AsteriskPbx, Baresip]]:
    """Asterisk, the gateway routing every call to ``extension``, a WhatsApp-like baresip
    (``media="dtls"``: WebRTC media, DTLS-SRTP and full ICE, as Meta's default mode)."""
    gw_port = free_port()
    with ExitStack() as stack:
        pbx = stack.enter_context(AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast"))
        cfg: dict[str, Any] = {
            "pbx": {
                "address": f"127.0.0.1:{pbx.ast_port}",
                "listen": f"127.0.0.1:{gw_port}",
                "request_uri_user": extension,
            }
        }
        if media == "dtls":
            # baresip's ice module never offers 127.0.0.1 (tests/peers/baresip.py): the
            # gateway's media sits on the host address its candidate has (traffic to an
            # address of this host stays on lo).
            cfg["media"] = {"address": ice_address()}
        gw = GatewayProcess(tmp_path / "gw", cfg)
        (tmp_path / "gw").mkdir()
        stack.callback(gw.stop)
        gw.start()
        wa = stack.enter_context(
            Baresip(
                tmp_path / "wa",
                user="wa",
                tls=True,
                codec=OPUS,
                audio=audio,
                extra_account_params=f"auth_user={NUMBER[1:]};auth_pass={PASSWORD}",
                media=media,
            )
        )
        yield gw, pbx, wa


def ice_address() -> str:
    found = host_ice_addresses()
    if not found:
        pytest.fail("no IPv4 address but 127.0.0.1: baresip's ice module offers no candidate")
    return found[0]


def _dial(gw: GatewayProcess, wa: Baresip) -> None:
    wa.dial(f"sip:{NUMBER}@127.0.0.1:{gw.ports['tls']};transport=tls")
    wa.wait_event("CALL_ESTABLISHED", timeout=15)


def test_whatsapp_user_hears_the_pbx(tmp_path: Path) -> None:
    """Asterisk Playtones(440) -> gateway (G.711 -> Opus, RTP -> SRTP) -> baresip."""
    with call_path(tmp_path, "tone") as (gw, _pbx, wa):
        _dial(gw, wa)
        time.sleep(4.0)
        wa.hangup()
        wa.wait_event("CALL_CLOSED", timeout=10)
        rec = wa.recordings("dec")[-1]
        assert gw.metric("wagw_sip_requests_total", leg="whatsapp", method="BYE") == 1.0
        gw.check_media_engine()
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.0)


def test_pbx_hears_the_whatsapp_user(tmp_path: Path) -> None:
    """baresip 523 Hz -> gateway (SRTP -> RTP, Opus -> G.711) -> Asterisk Record()."""
    with call_path(tmp_path, "record-3", audio=523.0) as (gw, pbx, wa):
        _dial(gw, wa)
        wav = pbx.wait_recording(timeout=20, copy_to=tmp_path / "asterisk-rec.wav")
        wa.wait_event("CALL_CLOSED", timeout=10)  # Asterisk hangs up after recording
        gw.check_media_engine()
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


def test_dtmf_from_whatsapp_reaches_the_ivr(tmp_path: Path) -> None:
    """RFC 4733 digits pressed on the WhatsApp side arrive in Asterisk's Read()."""
    with call_path(tmp_path, "dtmf") as (gw, pbx, wa):
        _dial(gw, wa)
        time.sleep(1.0)
        wa.send_dtmf("1234")
        result = pbx.wait_dtmf(timeout=20)
    assert result.digits == "1234"
    assert result.status == "OK"


def test_dtmf_from_the_pbx_reaches_whatsapp(tmp_path: Path) -> None:
    """Asterisk SendDTMF(1234#) -> gateway -> RFC 4733 events in the SRTP stream to baresip."""
    with call_path(tmp_path, "senddtmf") as (gw, _pbx, wa):
        _dial(gw, wa)
        digits = wa.wait_dtmf(5, timeout=20)
    assert digits == "1234#"


# -- Meta's WebRTC mode with an independent peer: baresip's dtls_srtp and ice modules ----


def test_dtls_ice_whatsapp_user_hears_the_pbx(tmp_path: Path) -> None:
    """baresip offers UDP/TLS/RTP/SAVPF with full ICE (it checks us and claims the
    controlling role too: a role conflict, RFC 8445 7.3.1.1) and DTLS actpass; the
    gateway answers setup:active and Asterisk's 440 Hz reaches baresip."""
    with call_path(tmp_path, "tone", media="dtls") as (gw, _pbx, wa):
        _dial(gw, wa)
        time.sleep(5.0)
        wa.hangup()
        wa.wait_event("CALL_CLOSED", timeout=10)
        rec = wa.recordings("dec")[-1]
        connected = [e for e in gw.log_lines() if e.get("event") == "webrtc_connected"]
    assert len(connected) == 1, gw.log_text()[-3000:]
    assert connected[0]["nominated"].startswith(ice_address())
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=2.0)


def test_dtls_ice_pbx_hears_the_whatsapp_user(tmp_path: Path) -> None:
    with call_path(tmp_path, "record-3", audio=523.0, media="dtls") as (gw, pbx, wa):
        _dial(gw, wa)
        wav = pbx.wait_recording(timeout=20, copy_to=tmp_path / "asterisk-rec.wav")
        wa.wait_event("CALL_CLOSED", timeout=10)
        assert gw.metric("wagw_webrtc_calls_total", outcome="connected") == 1.0
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=1.5)
