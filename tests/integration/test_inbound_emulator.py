"""Calls from WhatsApp through the gateway, with the Meta emulator as strict as Meta.

The emulator (tests/emulator) records every deviation from Meta's rules as a
violation: Record-Route not echoed, gateway not sending first, media gaps,
re-INVITE/UPDATE toward Meta, bad DTMF clocks, bad SRTP. The PBX is Asterisk
(real) or SIPp (scripted, for hold and CANCEL races).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import CallResult, MetaCaller, default_tls, measure_tone
from tests.integration.harness import SIPP, GatewayProcess, free_port
from tests.peers import free_port as free_block  # SIPp binds audio and video RTP pairs
from tests.peers.asterisk import AsteriskPbx

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"


def _gateway(tmp_path: Path, pbx_address: str, **overrides: Any) -> GatewayProcess:
    cfg: dict[str, Any] = {
        "whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}},
        "pbx": {"address": pbx_address},
    }
    for key, value in overrides.items():
        cfg.setdefault(key, {}).update(value)
    (tmp_path / "gw").mkdir(exist_ok=True)
    return GatewayProcess(tmp_path / "gw", cfg)


@contextmanager
def with_asterisk(
    tmp_path: Path, extension: str = "{number}", **overrides: Any
) -> Iterator[tuple[GatewayProcess, AsteriskPbx]]:
    gw_port = free_port()
    with ExitStack() as stack:
        pbx = stack.enter_context(AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast"))
        pbx_cfg = {"listen": f"127.0.0.1:{gw_port}", "request_uri_user": extension}
        pbx_cfg.update(overrides.pop("pbx", {}))
        gw = _gateway(tmp_path, f"127.0.0.1:{pbx.ast_port}", pbx=pbx_cfg, **overrides)
        stack.callback(gw.stop)
        gw.start()
        yield gw, pbx


def meta_call(gw: GatewayProcess, password: str = PASSWORD, **kwargs: Any) -> CallResult:
    caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, password)
    return asyncio.run(caller.call(**kwargs))


def _clean(result: CallResult) -> None:
    assert result.violations == [], result.describe()


def test_call_to_asterisk_meets_metas_rules(tmp_path: Path) -> None:
    """Digest challenge answered, Record-Route echoed, gateway sends first (<100 ms),
    PBX tone heard by the WhatsApp user, our BYE ends the PBX leg."""
    with with_asterisk(tmp_path, "tone") as (gw, pbx):
        result = meta_call(gw, tone_hz=523.0, talk_seconds=3.0)
        time.sleep(0.5)
        assert pbx.active_channels() == 0
        gw.check_media_engine()
    _clean(result)
    assert result.status == 200
    assert [c for c in result.ladder if "407" in c], result.ladder
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.1
    assert result.suite == "AES_CM_128_HMAC_SHA1_80"
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)
    assert result.srtp_auth_failures == 0


@pytest.mark.parametrize(
    ("caller", "cta", "route"),
    [("+12195550714", "sales", "sales"), ("US.13491208655302741918", "", "ivr")],
    ids=["e164-cta-sales", "bsuid-ivr"],
)
def test_meta_context_reaches_the_dialplan(
    tmp_path: Path, caller: str, cta: str, route: str
) -> None:
    """x-wa-meta-* headers become X-WA-* headers the shipped dialplan routes on."""
    headers = {
        "x-wa-meta-wacid": "wacid.HBgLTEST123==",
        "X-WA-META-USER-NAME": "Ana Tester",
        "x-wa-meta_user_country_code": "DE",
    }
    if cta:
        headers["x-wa-meta-cta-payload"] = cta
    with with_asterisk(tmp_path) as (gw, pbx):
        result = meta_call(gw, caller=caller, headers=headers, talk_seconds=2.0)
        calls = pbx.notices("WAGW-CALL")
        routes = [n.split()[0].removeprefix("route=") for n in pbx.notices("WAGW-ROUTE")]
    _clean(result)
    assert len(calls) == 1, calls
    line = calls[0]
    assert f"exten={NUMBER} wacid=wacid.HBgLTEST123== user={caller} " in line
    assert "name=Ana Tester country=DE" in line
    assert f"cta={cta} " in line and line.endswith(f"business={NUMBER}")
    assert routes[0] == route


def test_pbx_hangs_up_and_dtmf_reaches_whatsapp(tmp_path: Path) -> None:
    """Asterisk sends 1234# then hangs up: RFC 4733 events at 8000 Hz reach the WhatsApp
    side, and the gateway's BYE travels Meta's route set."""
    with with_asterisk(tmp_path, "senddtmf") as (gw, _pbx):
        result = meta_call(gw, hangup="gateway", talk_seconds=15.0)
    _clean(result)
    assert result.bye_from == "gateway"
    assert result.dtmf_received == "1234#"


def test_dtmf_from_whatsapp_reaches_asterisk(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "dtmf") as (gw, pbx):
        result = meta_call(gw, dtmf="2580", dtmf_delay=1.0, hangup="gateway", talk_seconds=15.0)
        dtmf = pbx.wait_dtmf(timeout=10)
    _clean(result)
    assert dtmf.digits == "2580"


def test_wrong_password_is_refused(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "tone") as (gw, pbx):
        result = meta_call(gw, password="wrong-password")
        assert pbx.notices("WAGW-TEST") == []
    assert result.status == 403


def test_unknown_business_number_is_404(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "tone") as (gw, _pbx):
        caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), "+15559999999", PASSWORD)
        result = asyncio.run(caller.call())
    assert result.status == 404


def test_over_the_call_limit_gets_503_with_retry_after(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "tone", limits={"max_calls": 1}) as (gw, _pbx):

        async def both() -> list[CallResult]:
            first = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
            second = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
            task = asyncio.create_task(first.call(talk_seconds=3.0))
            await asyncio.sleep(1.5)
            refused = await second.call()
            return [await task, refused]

        ok, refused = asyncio.run(both())
    _clean(ok)
    assert ok.status == 200
    assert refused.status == 503
    final = [m.text for m in refused.messages if m.text.startswith("SIP/2.0 503")]
    assert final and "\r\nRetry-After: " in final[-1]


def test_pbx_down_answers_meta_within_the_bound(tmp_path: Path) -> None:
    """Nothing listens at pbx.address: Meta gets a final answer after pbx.invite_timeout."""
    dead = free_port()
    gw = _gateway(tmp_path, f"127.0.0.1:{dead}", pbx={"invite_timeout": 2.0})
    try:
        gw.start()
        started = time.monotonic()
        result = meta_call(gw, answer_timeout=10.0)
        elapsed = time.monotonic() - started
    finally:
        gw.stop()
    assert result.status in (408, 480)
    assert elapsed < 4.0


def test_g711_passthrough_when_meta_offers_it(tmp_path: Path) -> None:
    with with_asterisk(tmp_path, "tone", media={"g711_passthrough": True}) as (gw, _pbx):
        result = meta_call(gw, offer_g711=True, talk_seconds=3.0)
    _clean(result)
    assert result.codec in ("pcmu/8000", "pcma/8000")
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)


# -- SIPp as a scripted PBX ---------------------------------------------------------

_PBX_ANSWER = """
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" assign_to="remote_from"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" assign_to="orig_to"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="remote_contact"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:pbx@[local_ip]:[local_port]>
Content-Length: 0

]]>
  </send>
"""

HOLD_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX answers, holds, unholds, hangs up">
{_PBX_ANSWER}
  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:pbx@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=pbx 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <pause milliseconds="1000"/>
  <send retrans="500">
    <![CDATA[
INVITE [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$orig_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: 101 INVITE
Contact: <sip:pbx@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=pbx 1 2 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendonly
]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="a=recvonly" search_in="body" check_it="true" assign_to="held"/>
    </action>
  </recv>
  <Reference variables="held"/>
  <send>
    <![CDATA[
ACK [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$orig_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: 101 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <pause milliseconds="3000"/>
  <send retrans="500">
    <![CDATA[
BYE [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$orig_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: 102 BYE
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="200"/>
</scenario>
"""

CANCEL_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX rings until cancelled">
{_PBX_ANSWER}
  <Reference variables="remote_from,orig_to,remote_contact"/>
  <recv request="CANCEL"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: 1 INVITE
Content-Length: 0

]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


@contextmanager
def sipp_pbx(tmp_path: Path, scenario: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    assert SIPP, "sipp (apt package sip-tester) is required"
    port = free_port()
    scen = tmp_path / "pbx.xml"
    scen.write_text(scenario)
    proc = subprocess.Popen(
        [
            SIPP,
            "-sf",
            str(scen),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "1",
            "-mp",
            str(free_block(4, tcp=False)),
            "-timeout",
            "40s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-trace_msg",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _sipp_done(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    trace = "\n".join(p.read_text() for p in tmp_path.glob("*_messages.log"))
    assert proc.returncode == 0, out[-2000:] + trace[-4000:]


@pytest.mark.parametrize("media_mode", ["sdes", "webrtc"])
def test_pbx_hold_is_answered_locally_and_meta_keeps_getting_media(
    tmp_path: Path, media_mode: str
) -> None:
    """re-INVITE sendonly from the PBX: 200 recvonly from the gateway, nothing toward Meta
    (the emulator answers a re-INVITE with 500 and records a violation), and Opus keeps
    flowing to Meta while the PBX sends nothing; in SDES and in WebRTC (DTLS) mode."""
    with sipp_pbx(tmp_path, HOLD_SCENARIO) as (port, proc):
        gw = _gateway(tmp_path, f"127.0.0.1:{port}")
        try:
            gw.start()
            result = meta_call(
                gw, hangup="gateway", talk_seconds=20.0, send_media=True, media_mode=media_mode
            )
        finally:
            gw.stop()
        _sipp_done(proc, tmp_path)
    _clean(result)
    assert result.bye_from == "gateway"
    assert result.max_media_gap is not None and result.max_media_gap < 0.2
    connected = (result.ended_at or 0) - (result.connected_at or 0)
    assert result.packets_received >= 0.8 * connected / 0.020


def test_cancel_before_answer_cancels_the_pbx(tmp_path: Path) -> None:
    with sipp_pbx(tmp_path, CANCEL_SCENARIO) as (port, proc):
        gw = _gateway(tmp_path, f"127.0.0.1:{port}")
        try:
            gw.start()
            result = meta_call(gw, cancel_after=1.0)
        finally:
            gw.stop()
        _sipp_done(proc, tmp_path)
    _clean(result)
    assert result.status == 487
