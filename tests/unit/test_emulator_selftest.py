"""Self-test of the Meta emulator (tests/emulator) without the gateway.

The emulator is driven by the loopback business-side peers in
``tests.emulator.loopback``, which behave like a correct gateway (or
misbehave on request), so these tests prove the emulator's TLS, SIP shapes,
digest loop, SRTP + Opus media, RFC 4733 events and its violation detection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import ssl

import numpy as np
import pytest
from cryptography import x509

from tests.emulator import (
    META_WARNINGS,
    CallResult,
    MetaCaller,
    MetaServer,
    UasBehaviour,
    default_tls,
    measure_tone,
)
from tests.emulator.loopback import LoopbackUac, LoopbackUas
from tests.emulator.rtp import MediaScript, g711_decode, g711_encode
from tests.emulator.sdp import build_meta_sdp, new_crypto, parse_sdp

PASSWORD = "s3cret-meta-password"
NUMBERS = {"+15550001111": PASSWORD}


def assert_tone(result: CallResult, hz: float) -> None:
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - hz) <= 0.02 * hz, (freq, result.describe())
    assert level > -30.0, level


def header(text: str, name: str) -> list[str]:
    head = text.split("\r\n\r\n", 1)[0]
    return [
        ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:] if ln.split(":")[0] == name
    ]


# ---------------------------------------------------------------------------
# Pieces


def test_measure_tone_and_g711() -> None:
    rate = 16000
    t = np.arange(rate * 2) / rate
    pcm = (10000 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2")
    freq, level = measure_tone(pcm.tobytes(), rate)
    assert abs(freq - 440.0) < 1.0
    assert math.isclose(level, 20 * math.log10(10000 / math.sqrt(2) / 32768), abs_tol=0.2)
    for law in ("pcmu", "pcma"):
        back = np.frombuffer(g711_decode(g711_encode(pcm, law), law), dtype="<i2")
        assert np.max(np.abs(back.astype(int) - pcm.astype(int))) < 700
    assert measure_tone(b"\x00\x00" * rate, rate)[1] == float("-inf")


def test_sdp_builder_and_strict_parser() -> None:
    crypto = new_crypto(1, "AES_CM_128_HMAC_SHA1_80")
    assert len(crypto.key) == 30
    text = build_meta_sdp(address="127.0.0.1", port=4000, cryptos=[crypto], ssrc=42, g711=[8, 0])
    sdp = parse_sdp(text)
    assert sdp.problems == []
    m = sdp.audio()
    assert m is not None
    assert m.proto == "RTP/SAVP" and m.payload_types == [111, 126, 8, 0]
    assert m.cryptos == [crypto] and m.has("rtcp-mux") and m.ssrcs == [42]
    assert m.rtpmaps[111].name == "opus/48000/2" and m.rtpmaps[126].clock == 8000
    for line in (
        "a=rtcp-mux",
        "a=group:BUNDLE audio",
        "a=mid:audio",
        "a=ptime:20",
        "a=maxptime:20",
        "a=ssrc:42 cname:WhatsAppAudioStream1",
        "a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
        "sprop-maxcapturerate=16000;useinbandfec=1",
    ):
        assert line + "\r\n" in text
    bad = text.replace("\r\n", "\n").replace("a=rtpmap:126 telephone-event/8000\n", "")
    bad = bad.replace(crypto.line().split("inline:")[1], "QUJD")
    problems = parse_sdp(bad).problems
    assert any("CRLF" in p for p in problems)
    assert any("126 has no a=rtpmap" in p for p in problems)
    assert any("must be 30 bytes" in p for p in problems)


def test_certificate_names() -> None:
    tls = default_tls()
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {"wa.meta.vc", "localhost"}
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


# ---------------------------------------------------------------------------
# Role 1: MetaCaller against a well-behaved business UAS


async def test_user_initiated_call_round_trip() -> None:
    uas_script = MediaScript(tone_hz=440.0, dtmf="12#", dtmf_delay=0.6)
    async with LoopbackUas(PASSWORD, script=uas_script) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(
            "+12195550714", tone_hz=440.0, talk_seconds=2.2, dtmf="5*9", dtmf_delay=0.5
        )
        business = await asyncio.wait_for(uas.results.get(), 5)
    assert result.violations == [], result.describe()
    assert result.status == 200 and result.failure is None and result.ok
    assert result.ladder == [
        "-> INVITE", "<- 407 (INVITE)", "-> ACK", "-> INVITE", "<- 100 (INVITE)",
        "<- 200 (INVITE)", "-> ACK", "-> BYE", "<- 200 (BYE)",
    ]  # fmt: skip
    assert len(result.challenges) == 1 and "algorithm=MD5" in result.challenges[0]
    # The INVITE is shaped like Meta's (docs/whatsapp-sip.md section 3).
    invite = result.messages[3].text
    port = uas.address[1]
    assert invite.startswith(f"INVITE sip:+15550001111@127.0.0.1:{port};transport=tls SIP/2.0\r\n")
    rr = header(invite, "Record-Route")
    assert len(rr) == 2 and rr[0].endswith(";transport=tls;lr>") and rr[0] != rr[1]
    assert re.fullmatch(
        r'"12195550714" <sip:\+12195550714@wa\.meta\.vc>;tag=\w+', header(invite, "From")[0]
    )
    assert header(invite, "To") == ["<sip:+15550001111@sip.example.com>"]
    assert re.fullmatch(r"outgoing:wacid\.[A-Za-z0-9+/]+==", header(invite, "Call-ID")[0])
    assert re.fullmatch(
        r"<sip:\+12195550714@127\.0\.0\.1:\d+;transport=tls;ob>;isfocus",
        header(invite, "Contact")[0],
    )
    assert header(invite, "Allow") == ["INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"]
    assert header(invite, "User-Agent") == ["Facebook SipGateway"]
    assert header(invite, "X-FB-External-Domain") == ["wa.meta.vc"]
    assert header(invite, "x-wa-meta-wacid") == [result.wacid]
    assert header(invite, "CSeq") == ["2 INVITE"]
    assert header(invite, "Content-Type") == ["application/sdp"]
    assert header(invite, "Proxy-Authorization")[0].startswith('Digest username="15550001111"')
    assert "m=audio " in invite and " RTP/SAVP 111 126\r\n" in invite
    assert re.search(r"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:[A-Za-z0-9+/]{40}\r\n", invite)
    # Media both ways: SRTP + Opus at 440 Hz, RFC 4733 digits, the business side sent first.
    assert result.codec == "opus/48000/2" and result.suite == "AES_CM_128_HMAC_SHA1_80"
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.5
    assert result.srtp_auth_failures == 0 and result.packets_lost == 0
    assert result.packets_received > 80 and result.packets_sent > 80
    assert_tone(result, 440.0)
    assert_tone(business, 440.0)
    assert result.dtmf_received == "12#" and business.dtmf_received == "5*9"
    assert all(e.ended and e.marker for e in business.dtmf_events)
    assert business.violations == []
    # Meta's BYE.
    assert result.bye_from == "emulator"
    assert business.bye_reason == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    assert business.bye_headers["x-wa-meta-call-duration"].isdigit()


async def test_user_initiated_bsuid_sha256_gateway_hangs_up_through_route_set() -> None:
    async with LoopbackUas(PASSWORD, algorithm="SHA-256", hangup_after=1.0) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(
            "US.13491208655302741918", hangup="gateway", gateway_bye_timeout=5.0
        )
    # No violation: the loopback BYE came via a new TLS connection to the first
    # Record-Route hop, with both Route headers in order and our Contact as Request-URI.
    assert result.violations == [], result.describe()
    assert result.status == 200 and result.bye_from == "gateway"
    assert result.bye_reason == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    assert "algorithm=SHA-256" in result.challenges[0]
    invite = result.invite
    assert header(invite, "From")[0].startswith("<sip:US.13491208655302741918@wa.meta.vc>;tag=")
    assert header(invite, "x_wa_meta_user_id") == ["US.13491208655302741918"]
    assert result.ladder[-2:] == ["<- BYE", "-> 200 (BYE)"]


async def test_user_initiated_detects_missing_record_route_and_silent_gateway() -> None:
    script = MediaScript(send_media=False)
    async with LoopbackUas(PASSWORD, script=script, echo_record_route=False, hangup_after=3) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(
            first_packet_timeout=0.8
        )
    assert result.status == 200
    assert any("Record-Route" in v and "unchanged and in order" in v for v in result.violations)
    assert any("did not send media first" in v for v in result.violations)
    assert result.failure is not None and "no SRTP" in result.failure
    assert result.packets_sent == 0  # Meta never sends first
    assert result.bye_from == "emulator" and result.bye_reason == 'SIP;cause=408;text="RTP Timeout"'


async def test_user_initiated_detects_dtmf_clock_mixup() -> None:
    script = MediaScript(dtmf="7", dtmf_delay=0.6, dtmf_misclock=True)
    async with LoopbackUas(PASSWORD, script=script) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(talk_seconds=1.3)
    assert result.dtmf_received == "7"
    assert any("off the audio stream's timestamps" in v for v in result.violations), (
        result.violations
    )
    assert any("duration counted at 48000" in v for v in result.violations), result.violations


async def test_user_initiated_cancel_before_answer() -> None:
    async with LoopbackUas(PASSWORD, never_answer=True) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(cancel_after=0.3)
        business = await asyncio.wait_for(uas.results.get(), 5)
    assert result.status == 487 and result.violations == [], result.describe()
    assert result.ladder[-4:] == ["-> CANCEL", "<- 200 (CANCEL)", "<- 487 (INVITE)", "-> ACK"]
    assert business.reason == "487 acknowledged"


# ---------------------------------------------------------------------------
# Role 2: MetaServer called by a well-behaved business UAC


async def test_business_initiated_call_round_trip() -> None:
    behaviour = UasBehaviour(talk_seconds=2.0, tone_hz=440.0, dtmf="47", dtmf_delay=0.5)
    async with MetaServer(NUMBERS, behaviour=behaviour) as server:
        uac_script = MediaScript(tone_hz=440.0, dtmf="0#", dtmf_delay=0.5)
        async with LoopbackUac(script=uac_script) as uac:
            business = await uac.call(server.address, password=PASSWORD, talk_seconds=10)
        result = await server.wait_call(5)
    assert result.violations == [] and server.violations == [], result.describe()
    assert result.status == 200 and result.failure is None
    assert result.ladder == [
        "<- INVITE", "-> 100 (INVITE)", "-> 407 (INVITE)", "<- ACK", "<- INVITE",
        "-> 100 (INVITE)", "-> 180 (INVITE)", "-> 200 (INVITE)", "<- ACK", "-> BYE",
        "<- 200 (BYE)",
    ]  # fmt: skip
    chal = result.challenges[0]
    assert chal.startswith('Digest realm="wa.meta.vc", nonce="') and 'qop="auth"' in chal
    assert "opaque=" in chal and "algorithm=MD5" in chal
    ok = next(m.text for m in result.messages if m.summary == "200 (INVITE)")
    assert len(header(ok, "Record-Route")) == 2
    assert re.fullmatch(
        r"<sip:\+12195550714@127\.0\.0\.1:\d+;transport=tls;ob>;isfocus", header(ok, "Contact")[0]
    )
    assert header(ok, "Supported") == ["timer"]
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.5
    assert_tone(result, 440.0)
    assert_tone(business, 440.0)
    assert result.dtmf_received == "0#" and business.dtmf_received == "47"
    assert result.srtp_auth_failures == 0 and business.srtp_auth_failures == 0
    assert result.bye_from == "emulator"
    assert business.bye_reason == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    assert business.bye_headers["x-wa-meta-call-duration"] in ("1", "2")


async def test_business_initiated_reinvite_gets_500_and_gateway_bye() -> None:
    behaviour = UasBehaviour(hangup="gateway", gateway_bye_timeout=5.0)
    async with MetaServer(NUMBERS, behaviour=behaviour) as server:
        async with LoopbackUac() as uac:
            business = await uac.call(
                server.address, password=PASSWORD, reinvite_after=0.3, bye_after=0.8
            )
        result = await server.wait_call(5)
    assert business.reason == "re-INVITE 500"
    assert result.bye_from == "gateway"
    assert [v for v in result.violations if "re-INVITE" not in v] == [], result.violations
    assert any("gateway sent INVITE in the dialog" in v for v in result.violations)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_business_initiated_digest_loop(algorithm: str) -> None:
    behaviour = UasBehaviour(algorithm=algorithm, fail_status=486)
    async with MetaServer(NUMBERS, behaviour=behaviour) as server, LoopbackUac() as uac:
        good = await uac.call(server.address, password=PASSWORD)
        good_result = await server.wait_call(5)
        bad = await uac.call(server.address, password="wrong")
        bad_result = await server.wait_call(5)
    assert good.status == 486 and good_result.violations == [], good_result.describe()
    assert f"algorithm={algorithm}" in good_result.challenges[0]
    assert bad.status == 403
    assert any("bad_response" in v for v in bad_result.violations)
    forbidden = next(m.text for m in bad.messages if m.summary == "403 (INVITE)")
    assert header(forbidden, "Warning") == [f'399 wa.meta.vc "{META_WARNINGS["bad_digest"]}"']


@pytest.mark.parametrize(
    ("kwargs", "behaviour", "status", "violation"),
    [
        ({}, UasBehaviour(fail_status=403, warning="no_permission"), 403, None),
        ({}, UasBehaviour(fail_status=503), 503, None),
        ({"ruri_host": "127.0.0.1"}, UasBehaviour(), 404, "IP address host"),
        ({"from_host": "evil.example.org"}, UasBehaviour(), 403, "From host"),
        (
            {"extra_headers": [("Session-Expires", "1800"), ("Supported", "timer")]},
            UasBehaviour(fail_status=480),
            480,
            "Session-Expires",
        ),
    ],
)
async def test_business_initiated_rejections(
    kwargs: dict[str, object], behaviour: UasBehaviour, status: int, violation: str | None
) -> None:
    async with MetaServer(NUMBERS, behaviour=behaviour) as server:
        async with LoopbackUac() as uac:
            business = await uac.call(server.address, password=PASSWORD, **kwargs)  # type: ignore[arg-type]
        result = await server.wait_call(5)
    assert business.status == status == result.status, result.describe()
    if violation is None:
        assert result.violations == []
    else:
        assert any(violation in v for v in result.violations), result.violations
    if behaviour.warning:
        final = next(m.text for m in business.messages if m.summary == f"{status} (INVITE)")
        assert header(final, "Warning") == [f'399 wa.meta.vc "{META_WARNINGS[behaviour.warning]}"']


async def test_server_rejects_client_offering_alpn() -> None:
    async with MetaServer(NUMBERS) as server:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        ctx.set_alpn_protocols(["sip"])
        reader, writer = await asyncio.open_connection(
            *server.address, ssl=ctx, server_hostname="wa.meta.vc"
        )
        data = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        assert data == b""  # closed on us
        assert server.alpn_rejected == 1
        assert any("ALPN" in v for v in server.violations)
        # Without ALPN the same client is served.
        plain = ssl.create_default_context(cafile=str(server.ca_file))
        reader, writer = await asyncio.open_connection(
            "localhost", server.port, ssl=plain, server_hostname="localhost"
        )
        writer.write(b"\r\n\r\n")  # keep-alive ping -> pong
        assert await asyncio.wait_for(reader.read(2), 5) == b"\r\n"
        writer.close()
        assert server.alpn_rejected == 1
