"""Calls from the business to WhatsApp users: PBX -> gateway -> Meta (the emulator as Meta's UAS).

The emulator (MetaServer) is as strict as Meta: it challenges with 407 (MD5 or
SHA-256) and verifies against the number's password, rejects an IP in the
Request-URI, a From host that is not the configured hostname, session timers;
it checks the gateway sends the first SRTP packet and keeps media flowing.
The PBX side is Asterisk 22 (real) or SIPp (to see exactly what the PBX gets).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import (
    META_WARNINGS,
    CallResult,
    MetaServer,
    UasBehaviour,
    default_tls,
    measure_tone,
)
from tests.integration.harness import SIPP, GatewayProcess, free_port
from tests.peers import free_port as free_block  # SIPp binds audio and video RTP pairs
from tests.peers.asterisk import AsteriskPbx
from tests.peers.audio import assert_tone

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"
USER = "+12195550714"


def _gateway(tmp_path: Path, meta_port: int, **overrides: Any) -> GatewayProcess:
    cfg: dict[str, Any] = {
        "whatsapp": {
            "tls": {"ca_file": str(default_tls().ca_file)},
            "meta_proxy": f"localhost:{meta_port}",
            "default_number": NUMBER,
        },
    }
    for key, value in overrides.items():
        cfg.setdefault(key, {}).update(value)
    (tmp_path / "gw").mkdir(exist_ok=True)
    return GatewayProcess(tmp_path / "gw", cfg)


@asynccontextmanager
async def meta_and_gateway(
    tmp_path: Path, behaviour: UasBehaviour | None = None, **overrides: Any
) -> AsyncIterator[tuple[MetaServer, GatewayProcess]]:
    server = MetaServer({NUMBER: PASSWORD}, behaviour=behaviour)
    await server.start()
    gw = _gateway(tmp_path, server.port, **overrides)
    try:
        await asyncio.to_thread(gw.start)
        yield server, gw
    finally:
        await asyncio.to_thread(gw.stop)
        await server.close()


def _clean(result: CallResult) -> None:
    assert result.violations == [], result.describe()


# -- Asterisk originates ------------------------------------------------------------


async def _asterisk_call(
    tmp_path: Path, exten: str, behaviour: UasBehaviour
) -> tuple[CallResult, AsteriskPbx, Path | None]:
    gw_port = free_port()
    pbx = AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast")
    await asyncio.to_thread(pbx.start)
    try:
        async with meta_and_gateway(
            tmp_path,
            behaviour,
            pbx={"address": f"127.0.0.1:{pbx.ast_port}", "listen": f"127.0.0.1:{gw_port}"},
        ) as (server, _gw):
            # Through the shipped dialplan: [to-whatsapp] Dial(PJSIP/+<number>@wagw).
            dest = f"Local/00{USER[1:]}@to-whatsapp"
            await asyncio.to_thread(pbx.originate, dest, exten=exten)
            result = await server.wait_call(timeout=40)
            wav = None
            if exten.startswith("record"):
                wav = await asyncio.to_thread(
                    pbx.wait_recording, timeout=20, copy_to=tmp_path / "rec.wav"
                )
            return result, pbx, wav
    finally:
        await asyncio.to_thread(pbx.stop)


async def test_asterisk_calls_a_whatsapp_user_and_hears_them(tmp_path: Path) -> None:
    """Asterisk Dial -> gateway -> Meta: 407 answered, Meta-shaped INVITE, the gateway
    sends first, what the WhatsApp user says (523 Hz) is recorded at Asterisk."""
    behaviour = UasBehaviour(tone_hz=523.0, talk_seconds=5.0)
    result, _pbx, wav = await _asterisk_call(tmp_path, "record-3", behaviour)
    _clean(result)
    assert result.status == 200
    assert [c for c in result.ladder if "407" in c], result.ladder
    invite = result.invite or ""
    assert invite.startswith(f"INVITE sip:{USER}@wa.meta.vc;transport=tls SIP/2.0")
    assert f"From: <sip:{NUMBER}@sip.example.com>" in invite
    assert "Session-Expires" not in invite and "timer" not in invite.lower()
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.1
    assert wav is not None
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


async def test_whatsapp_user_hears_asterisk_sha256(tmp_path: Path) -> None:
    behaviour = UasBehaviour(algorithm="SHA-256", talk_seconds=4.0)
    result, _pbx, _ = await _asterisk_call(tmp_path, "tone", behaviour)
    _clean(result)
    assert result.status == 200
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - 440) / 440 < 0.02 and level > -30, (freq, level)


async def test_dtmf_from_asterisk_reaches_whatsapp(tmp_path: Path) -> None:
    behaviour = UasBehaviour(hangup="gateway", talk_seconds=None)
    result, _pbx, _ = await _asterisk_call(tmp_path, "senddtmf", behaviour)
    _clean(result)
    assert result.dtmf_received == "1234#"
    assert result.bye_from == "gateway"


async def test_dtmf_from_whatsapp_reaches_asterisk(tmp_path: Path) -> None:
    behaviour = UasBehaviour(dtmf="1470", dtmf_delay=1.5, talk_seconds=None, hangup="gateway")
    gw_port = free_port()
    pbx = AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "ast")
    await asyncio.to_thread(pbx.start)
    try:
        async with meta_and_gateway(
            tmp_path,
            behaviour,
            pbx={"address": f"127.0.0.1:{pbx.ast_port}", "listen": f"127.0.0.1:{gw_port}"},
        ) as (server, _gw):
            await asyncio.to_thread(pbx.originate, f"PJSIP/{USER}@wagw", exten="dtmf")
            dtmf = await asyncio.to_thread(pbx.wait_dtmf, timeout=20)
            result = await server.wait_call(timeout=30)
    finally:
        await asyncio.to_thread(pbx.stop)
    _clean(result)
    assert dtmf.digits == "1470"


# -- SIPp as the PBX: exactly what the PBX receives ---------------------------------

PBX_INVITE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX calls WhatsApp and expects {expect}">
  <send retrans="500">
    <![CDATA[
INVITE sip:{target}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:{target}@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:agent@[local_ip]:[local_port]>
Max-Forwards: 70
{headers}Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
]]>
  </send>
  <recv response="100" optional="true"/>
{middle}
  <recv response="{expect}">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Reason:" assign_to="reason"/>
      <ereg regexp=".*" search_in="hdr" header="Warning:" assign_to="warning"/>
      <log message="REASON=[$reason]"/>
      <log message="WARNING=[$warning]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
ACK sip:{target}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-{ack_back}]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:{target}@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
</scenario>
"""

RING = """  <recv response="180" optional="true"/>
"""

CANCEL_MIDDLE = """  <recv response="180"/>
  <send>
    <![CDATA[
CANCEL sip:{target}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:{target}@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="200"/>
"""


def _sipp_pbx_call(
    tmp_path: Path,
    gw: GatewayProcess,
    expect: int,
    *,
    target: str = USER,
    headers: str = "",
    middle: str = RING,
) -> str:
    """SIPp places one call at the gateway's PBX listener; returns its log (Reason/Warning)."""
    assert SIPP, "sipp (apt package sip-tester) is required"
    scen = tmp_path / f"pbx-{expect}.xml"
    scen.write_text(
        PBX_INVITE.format(
            expect=expect,
            target=target,
            headers=headers,
            middle=middle.format(target=target),
            # the ACK of a non-2xx reuses the INVITE's branch (RFC 3261 17.1.1.3)
            ack_back=6 if "CANCEL" in middle else 4,
        )
    )
    log = tmp_path / f"sipp-{expect}.log"
    proc = subprocess.run(
        [
            SIPP,
            f"127.0.0.1:{gw.ports['pbx_listen']}",
            "-sf",
            str(scen),
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-mp",
            str(free_block(4, tcp=False)),
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-trace_msg",
            "-trace_logs",
            "-log_file",
            str(log),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    trace = "\n".join(p.read_text() for p in tmp_path.glob("*_messages.log"))
    assert proc.returncode == 0, proc.stdout[-1500:] + trace[-3000:]
    return log.read_text() if log.exists() else ""


FAILURES = [
    (400, None, 403),
    (403, "no_permission", 403),
    (403, "limit", 403),
    (403, "host_mismatch", 403),
    (403, "app_not_authorized", 403),
    (403, "duplicate", 403),
    (404, None, 404),
    (408, None, 408),
    (480, None, 480),
    (486, None, 486),
    (503, None, 503),
]


async def test_meta_failures_reach_the_pbx_mapped(tmp_path: Path) -> None:
    """Each failure Meta returns becomes the table's status at the PBX, with a Reason
    header carrying Meta's code and, for 403s, Meta's Warning text."""
    async with meta_and_gateway(tmp_path) as (server, gw):
        for meta_status, warning, pbx_status in FAILURES:
            server.queue_behaviour(UasBehaviour(fail_status=meta_status, warning=warning))
            log = await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, pbx_status)
            assert f"cause={meta_status}" in log, (meta_status, log[-800:])
            if warning:
                assert META_WARNINGS[warning] in log, (warning, log[-800:])
            result = await server.wait_call(timeout=10)
            assert result.violations == [], result.describe()
        records = [line for line in gw.log_lines() if line.get("event") == "call_record"]
    reasons = [r["meta_failure"]["reason"] for r in records if r.get("meta_failure")]
    assert reasons.count("no_permission") == 1 and reasons.count("duplicate") == 1
    assert {"limit", "host_mismatch", "app_not_authorized"} <= set(reasons)


async def test_second_challenge_is_a_failure_not_a_loop(tmp_path: Path) -> None:
    """The number's password at the gateway is not Meta's: Meta's 403 (bad digest) or a
    second challenge ends in 403 at the PBX after exactly one answer."""
    async with meta_and_gateway(tmp_path) as (server, gw):
        gw_pw = gw.workdir / "secrets" / "15550001111.password"
        gw_pw.write_text("a-different-password\n")
        await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, 403)
        result = await server.wait_call(timeout=10)
    assert sum("407" in c for c in result.ladder) == 1, result.ladder


async def test_pbx_cancel_before_answer_cancels_toward_meta(tmp_path: Path) -> None:
    behaviour = UasBehaviour(never_answer=True)
    async with meta_and_gateway(tmp_path, behaviour) as (server, gw):
        await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, 487, middle=CANCEL_MIDDLE)
        result = await server.wait_call(timeout=15)
    assert result.status == 487
    assert any("CANCEL" in c for c in result.ladder), result.ladder
    _clean(result)


@pytest.mark.parametrize(
    ("target", "status"), [("12345", 484), ("not-a-number", 404), ("US.13491208655302741918", 0)]
)
async def test_target_forms(tmp_path: Path, target: str, status: int) -> None:
    """Digits without '+' are normalised, a BSUID is called as is, junk is refused."""
    behaviour = UasBehaviour(fail_status=486)
    async with meta_and_gateway(tmp_path, behaviour) as (server, gw):
        await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, status or 486, target=target)
        if not status:
            result = await server.wait_call(timeout=10)
            assert (result.invite or "").startswith(f"INVITE sip:{target}@wa.meta.vc")


async def test_unknown_business_number_header_is_403(tmp_path: Path) -> None:
    async with meta_and_gateway(tmp_path) as (server, gw):
        headers = "X-WA-Business-Number: +15559990000\n"
        await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, 403, headers=headers)
        assert server.results == []


async def test_meta_unreachable_gives_503_within_the_bound(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, free_port(), whatsapp={"invite_timeout": 2.0})
    await asyncio.to_thread(gw.start)
    try:
        started = time.monotonic()
        await asyncio.to_thread(_sipp_pbx_call, tmp_path, gw, 503)
        assert time.monotonic() - started < 4.0
    finally:
        await asyncio.to_thread(gw.stop)
