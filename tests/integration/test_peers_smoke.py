"""The peer harness itself, against real peers and WITHOUT the gateway:
baresip 1.0 (WhatsApp-like: SIP/TLS + SDES-SRTP + Opus, or a plain SIP/UDP
PCMU phone) talking straight to Asterisk 22 with config/asterisk, and two
WebRTC-mode baresips (DTLS-SRTP + ICE) calling each other.

Needs the Asterisk chroot (`make asterisk-chroot`, part of `make test`),
baresip (apt baresip-core) and SIPp (apt sip-tester); WAGW_ALLOW_SKIP_PEERS=1
(or WAGW_ALLOW_SKIP_ASTERISK=1) turns a missing one into a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdp import MediaDescription, SessionDescription, parse_sdp
from tests.peers import free_port, require_binary
from tests.peers.asterisk import AsteriskPbx
from tests.peers.audio import assert_tone
from tests.peers.baresip import OPUS, PCMU, Baresip, TracedSip, host_ice_addresses

pytestmark = pytest.mark.integration

CALL_SECONDS = 4.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """PIDs a test started; each must be gone when the test ends."""
    started: list[int] = []
    yield started
    left = [pid for pid in started if _alive(pid)]
    assert not left, f"processes left running: {left}"


def _started(pids: list[int], *peers: AsteriskPbx | Baresip) -> None:
    for peer in peers:
        assert peer.pid is not None
        pids.append(peer.pid)


def _call_and_record(phone: Baresip, uri: str, seconds: float = CALL_SECONDS) -> Path:
    """Dial, stay `seconds` in the call, hang up; the WAV of what was received."""
    phone.dial(uri)
    phone.wait_event("CALL_ESTABLISHED", timeout=10)
    time.sleep(seconds)
    phone.hangup()
    phone.wait_event("CALL_CLOSED", timeout=10)
    recs = phone.recordings("dec")
    assert recs, f"no recording in {phone.rec_dir}"
    return recs[-1]


def test_tls_srtp_opus_caller_hears_asterisk_tone(tmp_path: Path, pids: list[int]) -> None:
    """(a) WhatsApp-like baresip (TLS, SDES-SRTP mandatory, Opus) calls the
    `tone` extension over TLS: it hears 440 Hz well above silence."""
    with (
        AsteriskPbx(wa_emulation=True, log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "wa", user="wa-test", tls=True, codec=OPUS) as wa,
    ):
        _started(pids, pbx, wa)
        wa.dial(f"sip:tone@127.0.0.1:{pbx.ast_tls_port};transport=tls")
        menc = wa.wait_event("CALL_MENC", timeout=10)
        wa.wait_event("CALL_ESTABLISHED", timeout=10)
        time.sleep(1.0)
        stats = pbx.rx("pjsip show channelstats")
        assert "wa-test" in stats and "opus" in stats, stats
        time.sleep(CALL_SECONDS - 1.0)
        wa.hangup()
        wa.wait_event("CALL_CLOSED", timeout=10)
        rec = wa.recordings("dec")[-1]
        log = wa.log_path.read_text()
    assert "srtp" in str(menc).lower() or "SRTP is Enabled" in log, menc
    assert "AES_CM_128_HMAC_SHA1_80" in log
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.0)


def test_udp_pcmu_echo_returns_the_tone(tmp_path: Path, pids: list[int]) -> None:
    """(b) A plain SIP/UDP PCMU phone sends 440 Hz to the `echo` extension
    (through the operator endpoint `wagw`) and hears 440 Hz back."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone", codec=PCMU, audio=440.0) as phone,
    ):
        _started(pids, pbx, phone)
        rec = _call_and_record(phone, f"sip:echo@{pbx.uri_host}")
        assert [n.split()[0] for n in pbx.notices("WAGW-TEST")] == ["ext=echo"]
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.0)


def test_dtmf_from_phone_is_read_by_asterisk(tmp_path: Path, pids: list[int]) -> None:
    """(c) baresip sends 1234 as RFC 4733 events (ctrl_tcp `sndcode`); the
    `dtmf` extension's Read() gets them."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone") as phone,
    ):
        _started(pids, pbx, phone)
        phone.dial(f"sip:dtmf@{pbx.uri_host}")
        phone.wait_event("CALL_ESTABLISHED", timeout=10)
        time.sleep(0.5)  # Read() starts listening after Answer
        phone.send_dtmf("1234")
        result = pbx.wait_dtmf(timeout=15)
        phone.wait_event("CALL_CLOSED", timeout=10)
    assert result.digits == "1234"
    assert result.status == "OK"


def test_dtmf_from_asterisk_reaches_phone(tmp_path: Path, pids: list[int]) -> None:
    """(d) Asterisk originates to endpoint `wagw` (its contact is where the
    gateway listens: a baresip stands in for it here), runs `senddtmf`, and
    baresip reports 1234# received."""
    gw_port = free_port(2)
    with (
        Baresip(tmp_path / "gw", user="wagw", sip_port=gw_port) as gw,
        AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "logs") as pbx,
    ):
        _started(pids, pbx, gw)
        assert pbx.qualify("wagw", timeout=10), pbx.rx("pjsip show contacts")
        pbx.originate("PJSIP/wagw", exten="senddtmf")
        gw.wait_event("CALL_ESTABLISHED", timeout=10)
        digits = gw.wait_dtmf(5, timeout=15)
        gw.wait_event("CALL_CLOSED", timeout=15)
    assert digits == "1234#"


def test_asterisk_records_what_the_phone_sends(tmp_path: Path, pids: list[int]) -> None:
    """The `record-3` extension records 3 s of what arrives: baresip's 440 Hz."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone", audio=440.0) as phone,
    ):
        _started(pids, pbx, phone)
        phone.dial(f"sip:record-3@{pbx.uri_host}")
        phone.wait_event("CALL_ESTABLISHED", timeout=10)
        wav = pbx.wait_recording(timeout=15, copy_to=tmp_path / "asterisk-rec.wav")
        phone.wait_event("CALL_CLOSED", timeout=10)
    assert_tone(wav, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)


# ------------------------------------------------------ WebRTC-mode baresip --
def _sdp_of(messages: list[TracedSip], first_line: str) -> SessionDescription:
    """The SDP of the first traced message whose first line starts so."""
    for msg in messages:
        if msg.first_line.startswith(first_line) and msg.body:
            return parse_sdp(msg.body)
    raise AssertionError(f"no {first_line!r} with a body in {[m.first_line for m in messages]}")


def _attr(sdp: SessionDescription, m: MediaDescription, name: str) -> str | None:
    """A media-level attribute, else the session-level one (baresip puts the
    ICE credentials, setup and fingerprint at session level)."""
    value = m.attribute(name)
    return value if value is not None else sdp.attribute(name)


def test_dtls_ice_baresips_call_each_other(tmp_path: Path, pids: list[int]) -> None:
    """Two WebRTC-mode baresips (SIP/TLS, UDP/TLS/RTP/SAVPF, ICE host
    candidates, rtcp-mux, Opus) call each other: the offer carries what a
    WebRTC answerer needs (ice-ufrag/pwd, a host candidate, a SHA-256
    fingerprint, setup:actpass, rtcp-mux; no ice-lite, no a=crypto), ICE
    completes, the offerer answered with setup:active is the DTLS server,
    the SRTP keys come from DTLS and each side hears the other's tone."""
    with (
        Baresip(tmp_path / "callee", user="biz", tls=True, media="dtls", audio=880.0) as callee,
        Baresip(
            tmp_path / "caller", user="wa-test", tls=True, media="dtls", audio=440.0, sip_trace=True
        ) as caller,
    ):
        _started(pids, callee, caller)
        caller.dial(callee.uri)
        for phone in (caller, callee):
            phone.wait_event("CALL_ESTABLISHED", timeout=10)
            # MENC_EVENT_SECURE: DTLS done, fingerprint verified, SRTP installed
            secure = phone.wait_event("CALL_MENC", timeout=10)
            assert str(secure.get("param", "")).endswith("audio,RTP"), secure
        time.sleep(CALL_SECONDS)
        caller.hangup()
        caller.wait_event("CALL_CLOSED", timeout=10)
        callee.wait_event("CALL_CLOSED", timeout=10)
        heard_by_caller = caller.recordings("dec")[-1]
        heard_by_callee = callee.recordings("dec")[-1]
        traced = caller.traced_sip()
        caller_log = caller.log_path.read_text()
        callee_log = callee.log_path.read_text()

    offer, answer = _sdp_of(traced, "INVITE "), _sdp_of(traced, "SIP/2.0 200")
    m = offer.media[0]
    assert (m.media, m.proto) == ("audio", "UDP/TLS/RTP/SAVPF"), m
    assert any(r.is_("opus", 48000) for r in m.rtpmaps().values()), m
    assert m.has_attribute("rtcp-mux")
    assert not m.has_attribute("crypto")
    assert not (offer.has_attribute("ice-lite") or m.has_attribute("ice-lite"))
    assert len(_attr(offer, m, "ice-ufrag") or "") >= 4
    assert len(_attr(offer, m, "ice-pwd") or "") >= 22
    assert _attr(offer, m, "setup") == "actpass"
    assert re.fullmatch(
        r"SHA-256 (?:[0-9A-F]{2}:){31}[0-9A-F]{2}", _attr(offer, m, "fingerprint") or ""
    )
    candidates = [str(v).split() for v in m.attribute_values("candidate")]
    assert candidates, m
    for _foundation, component, transport, _prio, address, port, typ, kind in candidates:
        assert (component, transport, typ, kind) == ("1", "UDP", "typ", "host")
        assert address in host_ice_addresses() and int(port) == m.port
    assert m.connection is not None and m.connection.address == candidates[0][4]
    a = answer.media[0]
    assert a.proto == "UDP/TLS/RTP/SAVPF" and a.has_attribute("rtcp-mux")
    assert _attr(answer, a, "setup") == "active"

    for log in (caller_log, callee_log):
        assert "ice: audio: connectivity check is complete" in log
        assert "dtls_srtp: verified SHA-256 fingerprint OK" in log
        assert "DTLS-SRTP complete (audio/RTP) Profile=AES_CM_128_HMAC_SHA1_80" in log
    assert "dtls_srtp: media=audio -- start DTLS server" in caller_log  # actpass + active
    assert "dtls_srtp: media=audio -- start DTLS client" in callee_log
    assert_tone(heard_by_callee, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.5)
    assert_tone(heard_by_caller, 880, tolerance=0.02, min_dbfs=-30, skip_seconds=1.5)


# ------------------------------------------------- operator example routing --
# SIPp (UDP) stands in for the gateway: an INVITE carrying the X-WA-* headers
# the gateway adds, to the business number, from 127.0.0.1 (endpoint wagw).
_WA_INVITE_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="wa-headers">
  <send retrans="500">
    <![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:+4915112345678@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:wagw@[local_ip]:[local_port]>
Max-Forwards: 70
X-WA-Call-ID: wacid.TEST[call_number]
X-WA-User: +4915112345678
X-WA-User-Name: Ana Tester
X-WA-Country: DE
%(headers)sX-WA-Business-Number: [service]
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP4 [local_ip]
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
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:+4915112345678@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:wagw@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <pause milliseconds="%(pause_ms)d"/>
  <send retrans="500">
    <![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:+4915112345678@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:wagw@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def _sipp_call(
    tmp_path: Path, pbx: AsteriskPbx, number: str, headers: dict[str, str], pause_ms: int
) -> None:
    scenario = tmp_path / "wa-headers.xml"
    extra = "".join(f"{k}: {v}\n" for k, v in headers.items())
    scenario.write_text(_WA_INVITE_SCENARIO % {"headers": extra, "pause_ms": pause_ms})
    cmd = [
        require_binary("sipp", "sip-tester"),
        "-sf",
        str(scenario),
        "-s",
        number,
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(free_port(2, tcp=False)),
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(tmp_path / "sipp-errors.log"),
        pbx.uri_host,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    errors = tmp_path / "sipp-errors.log"
    assert res.returncode == 0, (res.stdout[-2000:], errors.read_text() if errors.exists() else "")


@pytest.mark.parametrize(
    ("headers", "routes"),
    [
        ({"X-WA-CTA-Payload": "sales"}, ["sales"]),
        ({"X-WA-Deeplink-Payload": "sales"}, ["sales"]),
        ({}, ["ivr", "support"]),
        ({"X-WA-CTA-Payload": "test:echo"}, ["test:echo"]),
    ],
    ids=["cta-sales", "deeplink-sales", "ivr", "test-routing"],
)
def test_operator_dialplan_routes_on_wa_headers(
    tmp_path: Path, headers: dict[str, str], routes: list[str]
) -> None:
    """config/asterisk/extensions.conf [from-whatsapp] reads the X-WA-*
    headers into variables, logs them, and routes: CTA or deep link payload
    "sales" to the sales queue, otherwise the IVR (which falls through to
    support when no digit is pressed). With WAGW_TEST_ROUTING=yes (set by
    AsteriskPbx) a CTA payload "test:<ext>" reaches a [wagw-tests] extension:
    how gateway-through tests pick echo/tone/dtmf/... behind a business number."""
    with AsteriskPbx(log_dir=tmp_path / "logs") as pbx:
        pause_ms = 5000 if "ivr" in routes else 1000  # the IVR waits 3 s for a digit
        _sipp_call(tmp_path, pbx, "+15550001111", headers, pause_ms)
        calls = pbx.notices("WAGW-CALL")
        got_routes = [n.split()[0].removeprefix("route=") for n in pbx.notices("WAGW-ROUTE")]
        got_routes += [n.split()[0].replace("ext=", "test:") for n in pbx.notices("WAGW-TEST")]
    assert len(calls) == 1, calls
    call = calls[0]
    assert call.startswith("exten=+15550001111 wacid=wacid.TEST1 user=+4915112345678 ")
    assert "name=Ana Tester country=DE" in call
    assert f"cta={headers.get('X-WA-CTA-Payload', '')} " in call
    assert f"deeplink={headers.get('X-WA-Deeplink-Payload', '')} " in call
    assert call.endswith("business=+15550001111")
    assert got_routes == routes
