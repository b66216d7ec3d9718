"""FreeSWITCH 1.10 as the PBX, with the shipped config/freeswitch: real peers only.

Calls from WhatsApp: the strict Meta emulator (MetaCaller) -> the gateway ->
FreeSWITCH's wagw profile -> from-whatsapp. Calls to WhatsApp: FreeSWITCH
``originate loopback/00<number>/to-whatsapp`` (the shipped dialplan bridges to
sofia/gateway/whatsapp) -> the gateway -> the emulator as Meta (MetaServer).
The emulator counts every re-INVITE/UPDATE that reaches Meta as a violation, so
FreeSWITCH's own re-INVITEs (hold, bridge, session refresh) must stay on the
PBX leg. Tones are measured as audio (frequency within 2 %, level above
-30 dBFS).

Needs a build from scripts/build-freeswitch.sh named by WAGW_FREESWITCH; skipped
(with that reason) without one. The 5-minute call is marked slow and runs too.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import CallResult, MetaCaller, MetaServer, UasBehaviour, default_tls
from tests.emulator.rtp import measure_tone
from tests.integration.harness import GatewayProcess, free_port
from tests.peers.audio import analyse_wav, assert_tone
from tests.peers.freeswitch import ENV, FreeSwitchPbx

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get(ENV),
        reason=f"{ENV} not set: build FreeSWITCH with scripts/build-freeswitch.sh SRC_DIR PREFIX "
        f"and export {ENV}=PREFIX",
    ),
]

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"  # what GatewayProcess writes for NUMBER
USER = "+12195550714"
AGENT = {"wagw_sales_target": "loopback/agent-660/wagw-tests"}  # the IVR's bridge target


def _gateway(tmp_path: Path, **overrides: Any) -> GatewayProcess:
    cfg: dict[str, Any] = {"whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}}}
    for key, value in overrides.items():
        cfg.setdefault(key, {}).update(value)
    (tmp_path / "gw").mkdir(exist_ok=True)
    return GatewayProcess(tmp_path / "gw", cfg)


def _clean(result: CallResult) -> None:
    assert result.violations == [], result.describe()


def _tail_tone(result: CallResult, seconds: float) -> tuple[float, float]:
    """Frequency and level of the last `seconds` the WhatsApp side heard."""
    pcm = result.received_pcm[-int(seconds * result.sample_rate) * 2 :]
    return measure_tone(pcm, result.sample_rate, skip=0.0)


def _assert_tone(measured: tuple[float, float], hz: float) -> None:
    freq, level = measured
    assert abs(freq - hz) / hz < 0.02 and level > -30, (freq, level)


def _figures(**values: Any) -> None:
    """One line of measured values for docs/freeswitch.md (pytest -rA shows it)."""
    shown = {k: f"{v:.1f}" if isinstance(v, float) else v for k, v in values.items()}
    print("FIGURES " + " ".join(f"{k}={v}" for k, v in shown.items()))


def _reoffers(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [line for line in gw.log_lines() if line.get("event") == "pbx_reoffer_answered"]


# -- calls from WhatsApp ------------------------------------------------------------
@contextmanager
def inbound(
    tmp_path: Path,
    *,
    transport: str = "udp",
    profile_params: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
    request_uri_user: str = "{number}",
) -> Iterator[tuple[GatewayProcess, FreeSwitchPbx]]:
    gw_port = free_port()
    with ExitStack() as stack:
        fs = stack.enter_context(
            FreeSwitchPbx(
                gw_port=gw_port,
                log_dir=tmp_path / "fs",
                profile_params=profile_params,
                variables=variables,
            )
        )
        gw = _gateway(
            tmp_path,
            pbx={
                "address": f"127.0.0.1:{fs.sip_port}",
                "transport": transport,
                "listen": f"127.0.0.1:{gw_port}",
                "request_uri_user": request_uri_user,
            },
        )
        stack.callback(gw.stop)
        gw.start()
        yield gw, fs


def meta_call(gw: GatewayProcess, **kwargs: Any) -> CallResult:
    caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
    return asyncio.run(caller.call(**kwargs))


def _test_route(ext: str) -> dict[str, str]:
    return {"x-wa-meta-cta-payload": f"test:{ext}"}


def test_context_reaches_the_dialplan_and_the_ivr_gets_dtmf(tmp_path: Path) -> None:
    """x-wa-meta-* -> X-WA-* -> ${sip_h_X-WA-...} in from-whatsapp, written to FreeSWITCH's
    log by the dialplan and read back; '1' pressed on WhatsApp reaches play_and_get_digits,
    the IVR bridges to sales (an agent leg playing 660 Hz) and WhatsApp hears it."""
    headers = {
        "x-wa-meta-wacid": "wacid.HBgLFSTEST==",
        "X-WA-META-USER-NAME": "Ana Tester",
        "x-wa-meta_user_country_code": "DE",
    }
    with inbound(tmp_path, variables=AGENT) as (_gw, fs):
        result = meta_call(
            _gw, caller=USER, headers=headers, dtmf="1", dtmf_delay=2.0, talk_seconds=7.0
        )
        calls = fs.notices("WAGW-CALL")
        ivr = fs.notices("WAGW-IVR")
        routes = [fs.fields(n)["route"] for n in fs.notices("WAGW-ROUTE")]
        agents = fs.notices("WAGW-TEST")
    _clean(result)
    assert result.status == 200
    assert len(calls) == 1, calls
    line = calls[0]
    assert f"exten={NUMBER} wacid=wacid.HBgLFSTEST== user={USER} name=Ana Tester " in line
    assert "country=DE cta= deeplink= " in line and line.endswith(f"business={NUMBER}")
    assert [fs.fields(n)["digits"] for n in ivr] == ["1"]
    assert routes == ["ivr", "sales"]
    # the agent's leg got the context through the bridge (export)
    assert any("ext=agent " in a and "wacid=wacid.HBgLFSTEST==" in a for a in agents), agents
    heard = _tail_tone(result, 2.5)
    _figures(digits="1", routes="+".join(routes), agent_hz=heard[0], agent_dbfs=heard[1])
    _assert_tone(heard, 660)


def test_tone_from_freeswitch_reaches_whatsapp(tmp_path: Path) -> None:
    with inbound(tmp_path) as (gw, _fs):
        result = meta_call(gw, headers=_test_route("tone"), talk_seconds=4.0)
    _clean(result)
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.1
    heard = measure_tone(result.received_pcm, result.sample_rate, skip=1.0)
    _figures(hz=heard[0], dbfs=heard[1], first_packet_ms=result.first_packet_delay * 1000)
    _assert_tone(heard, 440)


def test_tone_from_whatsapp_reaches_freeswitch(tmp_path: Path) -> None:
    with inbound(tmp_path) as (gw, fs):
        result = meta_call(
            gw,
            headers=_test_route("record-3"),
            tone_hz=523.0,
            talk_seconds=8.0,
            hangup="gateway",
        )
        wav = fs.wait_recording(timeout=10, copy_to=tmp_path / "fs-rec.wav")
    _clean(result)
    assert result.bye_from == "gateway"
    freq, dbfs = analyse_wav(wav, skip_seconds=0.5)
    _figures(hz=freq, dbfs=dbfs)
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


TRACE = {"sip-trace": "yes"}  # sofia-sip logs "send/recv N bytes to/from tcp/[ip]:port"


def test_inbound_over_tcp(tmp_path: Path) -> None:
    with inbound(tmp_path, transport="tcp", profile_params=TRACE) as (gw, fs):
        result = meta_call(gw, headers=_test_route("tone"), talk_seconds=3.0)
        log = fs.log_text()
    _clean(result)
    invites = re.findall(r"recv \d+ bytes from (\w+)/\S+ at \S+\n-+\n\s*INVITE ", log)
    assert invites and set(invites) == {"tcp"}, invites
    heard = measure_tone(result.received_pcm, result.sample_rate, skip=1.0)
    _figures(hz=heard[0], dbfs=heard[1])
    _assert_tone(heard, 440)


def test_a_number_the_dialplan_does_not_route_is_refused(tmp_path: Path) -> None:
    with inbound(tmp_path, request_uri_user="+15559999999") as (gw, fs):
        result = meta_call(gw)
        calls = fs.notices("WAGW-CALL")
    assert calls == []
    assert result.status == 404, result.describe()


# -- FreeSWITCH's own re-INVITEs ----------------------------------------------------
def _park_uuid(fs: FreeSwitchPbx) -> str:
    line = fs.wait_notice("WAGW-TEST", timeout=15)[0]
    return fs.fields(line)["uuid"]


def test_hold_and_bridge_reinvites_stay_on_the_pbx_leg(tmp_path: Path) -> None:
    """uuid_hold / hold off / a media renegotiation / a transfer into a bridge to another
    leg: FreeSWITCH re-INVITEs the gateway, the gateway answers, Meta sees none of it,
    and the audio goes on (the agent's 660 Hz at the end)."""
    with inbound(tmp_path) as (gw, fs):

        async def scenario() -> CallResult:
            caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
            call = asyncio.create_task(caller.call(headers=_test_route("park"), talk_seconds=16.0))
            uuid = await asyncio.to_thread(_park_uuid, fs)
            for cmd in (f"uuid_hold {uuid}", f"uuid_hold off {uuid}", f"uuid_media_reneg {uuid}"):
                await asyncio.sleep(1.5)
                out = await asyncio.to_thread(fs.api, cmd)
                assert out.startswith("+OK"), (cmd, out)
            await asyncio.sleep(1.5)
            out = await asyncio.to_thread(
                fs.api, f"uuid_transfer {uuid} bridge-agent-660 XML wagw-tests"
            )
            assert out.startswith("+OK"), out
            return await call

        result = asyncio.run(scenario())
        reoffers = _reoffers(gw)
    _clean(result)
    assert result.status == 200 and result.bye_from == "emulator"
    assert len(reoffers) >= 3, reoffers  # hold, unhold, renegotiation (the bridge: none)
    heard = _tail_tone(result, 3.0)
    _figures(
        reoffers=len(reoffers),
        directions=",".join(r["media"].split()[-1] for r in reoffers),
        agent_hz=heard[0],
        agent_dbfs=heard[1],
        max_gap_ms=result.max_media_gap * 1000,
    )
    _assert_tone(heard, 660)
    assert result.max_media_gap < 0.5, result.max_media_gap


def test_session_refresh_with_timers_on_by_mistake(tmp_path: Path) -> None:
    """enable-timer=true, session-timeout=90 (the lowest RFC 4028 allows): FreeSWITCH
    refreshes the session on the PBX leg; Meta never sees it, the call stays up."""
    params = {"enable-timer": "true", "session-timeout": "90", "minimum-session-expires": "90"}
    with inbound(tmp_path, profile_params=params) as (gw, _fs):
        result = meta_call(gw, headers=_test_route("tone"), talk_seconds=60.0)
        reoffers = _reoffers(gw)
        invites = [ln for ln in gw.log_lines() if ln.get("event") == "sip_in"]
    _clean(result)
    assert result.bye_from == "emulator" and result.duration() >= 59.0
    assert reoffers, f"no session refresh from FreeSWITCH in 60 s ({len(invites)} sip_in)"
    heard = _tail_tone(result, 3.0)
    _figures(refreshes=len(reoffers), method=reoffers[0]["method"], hz=heard[0], dbfs=heard[1])
    _assert_tone(heard, 440)


# -- calls to WhatsApp ---------------------------------------------------------------
@asynccontextmanager
async def outbound(
    tmp_path: Path,
    behaviour: UasBehaviour,
    *,
    transport: str = "udp",
    profile_params: dict[str, str] | None = None,
) -> AsyncIterator[tuple[MetaServer, GatewayProcess, FreeSwitchPbx]]:
    gw_port = free_port()
    fs = FreeSwitchPbx(
        gw_port=gw_port,
        log_dir=tmp_path / "fs",
        transport=transport,
        profile_params=profile_params,
    )
    server = MetaServer({NUMBER: PASSWORD}, behaviour=behaviour)
    await server.start()
    gw: GatewayProcess | None = None
    try:
        await asyncio.to_thread(fs.start)
        gw = _gateway(
            tmp_path,
            whatsapp={"meta_proxy": f"localhost:{server.port}", "default_number": NUMBER},
            pbx={"address": f"127.0.0.1:{fs.sip_port}", "listen": f"127.0.0.1:{gw_port}"},
        )
        await asyncio.to_thread(gw.start)
        yield server, gw, fs
    finally:
        if gw is not None:
            await asyncio.to_thread(gw.stop)
        await asyncio.to_thread(fs.stop)
        await server.close()


def _dial(fs: FreeSwitchPbx, exten: str, number: str = USER) -> str:
    """Through the shipped dialplan: to-whatsapp bridges to sofia/gateway/whatsapp.
    Blocks until answered ("+OK <uuid>") or failed ("-ERR <cause>"): a failure's prompt
    is early media, which would otherwise count as an answer for originate."""
    return fs.originate(f"{{ignore_early_media=true}}loopback/00{number[1:]}/to-whatsapp", exten)


async def test_freeswitch_calls_whatsapp_audio_both_ways(tmp_path: Path) -> None:
    behaviour = UasBehaviour(tone_hz=523.0, talk_seconds=7.0)
    async with outbound(tmp_path, behaviour) as (server, _gw, fs):
        answered = asyncio.create_task(asyncio.to_thread(_dial, fs, "tone-record-5"))
        result = await server.wait_call(timeout=40)
        assert (await answered).startswith("+OK"), await answered
        wav = await asyncio.to_thread(fs.wait_recording, timeout=10, copy_to=tmp_path / "r.wav")
        out = fs.notices("WAGW-OUT")
    _clean(result)
    assert result.status == 200
    invite = result.invite or ""
    assert invite.startswith(f"INVITE sip:{USER}@wa.meta.vc;transport=tls SIP/2.0")
    assert f"From: <sip:{NUMBER}@sip.example.com>" in invite
    assert out and f"target={USER} from={NUMBER}" in out[0]
    assert result.first_packet_delay is not None and result.first_packet_delay < 0.1
    heard = measure_tone(result.received_pcm, result.sample_rate, skip=1.0)
    recorded = analyse_wav(wav, skip_seconds=0.5)
    _figures(
        to_whatsapp_hz=heard[0],
        to_whatsapp_dbfs=heard[1],
        to_freeswitch_hz=recorded[0],
        to_freeswitch_dbfs=recorded[1],
        first_packet_ms=result.first_packet_delay * 1000,
    )
    _assert_tone(heard, 440)
    assert_tone(wav, 523, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


async def test_freeswitch_calls_whatsapp_over_tcp(tmp_path: Path) -> None:
    behaviour = UasBehaviour(talk_seconds=4.0)
    async with outbound(tmp_path, behaviour, transport="tcp", profile_params=TRACE) as (
        server,
        _gw,
        fs,
    ):
        answered = asyncio.create_task(asyncio.to_thread(_dial, fs, "tone"))
        result = await server.wait_call(timeout=40)
        await answered
        log = fs.log_text()
    _clean(result)
    assert result.status == 200
    invites = re.findall(r"send \d+ bytes to (\w+)/\S+ at \S+\n-+\n\s*INVITE sip:\+", log)
    assert invites and set(invites) == {"tcp"}, invites
    heard = measure_tone(result.received_pcm, result.sample_rate, skip=1.0)
    _figures(hz=heard[0], dbfs=heard[1])
    _assert_tone(heard, 440)


async def test_dtmf_from_freeswitch_reaches_whatsapp(tmp_path: Path) -> None:
    behaviour = UasBehaviour(hangup="gateway", talk_seconds=None)
    async with outbound(tmp_path, behaviour) as (server, _gw, fs):
        answered = asyncio.create_task(asyncio.to_thread(_dial, fs, "senddtmf"))
        result = await server.wait_call(timeout=40)
        await answered
    _clean(result)
    _figures(digits=result.dtmf_received, events=len(result.dtmf_events))
    assert result.dtmf_received == "1234#"
    assert result.bye_from == "gateway"


async def test_metas_403_reason_is_the_hangup_cause_freeswitch_logs(tmp_path: Path) -> None:
    behaviour = UasBehaviour(fail_status=403, warning="no_permission")
    async with outbound(tmp_path, behaviour) as (server, _gw, fs):
        answered = asyncio.create_task(asyncio.to_thread(_dial, fs, "tone"))
        result = await server.wait_call(timeout=40)
        reply = await answered
        failed = await asyncio.to_thread(fs.wait_notice, "WAGW-OUT-FAILED", timeout=10)
        heard = await asyncio.to_thread(fs.wait_notice, "WAGW-OUT-HEARD", timeout=10)
        log = fs.log_text()
    assert result.status == 403
    assert reply == "-ERR CALL_REJECTED", reply
    f = failed[0]
    _figures(originate=reply.replace(" ", "_"), line=f.replace(" ", "|"))
    assert f"target={USER} cause=CALL_REJECTED sip=403 " in f, f
    assert f.endswith("reason=No approved call permission from the recipient"), f
    assert "prompt=rejected cause=CALL_REJECTED" in heard[0]
    # FreeSWITCH's own hangup line for the leg toward the gateway
    assert re.search(rf"Hangup sofia/wagw/{re.escape(USER)}\S* \[\w+\] \[CALL_REJECTED\]", log)


# -- a long call ---------------------------------------------------------------------
@pytest.mark.slow
async def test_five_minute_calls_with_default_session_timers(tmp_path: Path) -> None:
    """FreeSWITCH's session-timer defaults (enable-timer on, no session-timeout set)
    instead of the shipped "off": one call from WhatsApp and one to WhatsApp, both
    5 minutes, both stay up with audio to the end and nothing reaching Meta."""
    seconds = 300.0
    params = {"enable-timer": "true"}
    behaviour = UasBehaviour(tone_hz=523.0, talk_seconds=seconds, media_timeout=20.0)
    async with outbound(tmp_path, behaviour, profile_params=params) as (server, gw, fs):
        started = time.monotonic()
        answered = asyncio.create_task(asyncio.to_thread(_dial, fs, "tone-660"))
        caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
        from_wa = asyncio.create_task(
            caller.call(headers=_test_route("tone"), talk_seconds=seconds, media_timeout=20.0)
        )
        to_wa = await server.wait_call(timeout=seconds + 60)
        inbound_result = await from_wa
        await answered
        elapsed = time.monotonic() - started
        reoffers = _reoffers(gw)
    for result in (to_wa, inbound_result):
        _clean(result)
        assert result.status == 200
        assert result.duration() >= seconds - 1, result.duration()
        assert result.max_media_gap < 1.0, result.max_media_gap
    assert elapsed >= seconds
    _assert_tone(_tail_tone(inbound_result, 3.0), 440)
    _assert_tone(_tail_tone(to_wa, 3.0), 660)
    print(
        f"5-minute calls: {len(reoffers)} re-offers answered by the gateway; "
        f"lost {inbound_result.packets_lost}/{to_wa.packets_lost} packets"
    )
