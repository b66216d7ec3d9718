"""Self-test of the Meta emulator's WebRTC media mode (tests/emulator/webrtc.py), no gateway.

The business side is :class:`~tests.emulator.loopback_webrtc.BusinessWebRtc`: an
ICE controlling agent built on gateway.ice.stun, a pyOpenSSL DTLS client and
SRTP, written apart from the emulator's ICE-lite and DTLS server. A correct
peer gets audio both ways; each strict rule (USE-CANDIDATE, MESSAGE-INTEGRITY,
the ICE role, the certificate fingerprint, SRTP only after the handshake and
only from the nominated address) fails the call when broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass

import pytest

from gateway.ice import stun
from tests.emulator import MetaCaller, MetaServer, UasBehaviour, measure_tone
from tests.emulator.dtls_server import DtlsIdentity, cert_fingerprint, split_srtp_keys
from tests.emulator.loopback import LoopbackUac, LoopbackUas
from tests.emulator.loopback_webrtc import BusinessWebRtc, WebRtcFaults
from tests.emulator.result import CallResult
from tests.emulator.rtp import Codec, MediaScript
from tests.emulator.sdp import build_meta_sdp, parse_sdp
from tests.emulator.webrtc import WEBRTC_FAILED, IceLite, WebRtcEndpoint, demux
from tests.emulator.webrtc_sdp import parse_candidate, read_webrtc

PASSWORD = "s3cret-meta-password"
NUMBERS = {"+15550001111": PASSWORD}


def tone_ok(pcm: bytes, rate: int, hz: float) -> bool:
    freq, level = measure_tone(pcm, rate)
    return abs(freq - hz) <= 0.02 * hz and level > -30.0


def lines(text: str) -> list[str]:
    return text.split("\r\n")


# ---------------------------------------------------------------------------
# SDP


async def test_meta_webrtc_offer_shape() -> None:
    meta = WebRtcEndpoint(CallResult(role="caller"), MediaScript(media_mode="webrtc"))
    port = await meta.open()
    try:
        text = meta.local_sdp(setup="actpass")
        sdp = parse_sdp(text)
        assert sdp.problems == []
        m = sdp.audio()
        assert m is not None
        assert f"m=audio {port} UDP/TLS/RTP/SAVPF 111 126" in lines(text)
        assert m.connection == "127.0.0.1" and "c=IN IP4 127.0.0.1" in lines(text)
        assert ("ice-lite", None) in sdp.attributes
        for line in (
            "a=setup:actpass",
            "a=rtcp-mux",
            "a=rtcp-fb:111 transport-cc",
            "a=group:BUNDLE 0",
            "a=mid:0",
            "a=rtpmap:126 telephone-event/8000",
            "a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
            "sprop-maxcapturerate=16000;useinbandfec=1",
            f"a=ssrc:{meta.ssrc} cname:WhatsAppAudioStream1",
            f"a=fingerprint:sha-256 {cert_fingerprint(meta.identity.cert)}",
        ):
            assert line in lines(text), line
        assert any(x.startswith("a=msid:") for x in lines(text))
        assert m.cryptos == [] and m.attr("ice-ufrag") == [meta.ufrag]
        assert m.attr("ice-pwd") == [meta.pwd] and len(meta.pwd) >= 22
        cands = [parse_candidate(v or "") for v in m.attr("candidate")]
        assert [(c.family, c.type, c.transport) for c in cands] == [
            (4, "host", "UDP"),
            (6, "host", "UDP"),
        ]
        assert (cands[0].address, cands[0].port) == ("127.0.0.1", port)
        assert cands[0].priority > cands[1].priority
        # The IPv6 candidate is a real socket when ::1 works: a check sent there is answered.
        if cands[1].address == "::1":
            assert cands[1].port != 0
        else:
            assert ipaddress.ip_address(cands[1].address) in ipaddress.ip_network("2001:db8::/32")
        assert "a=setup:passive" in lines(meta.local_sdp(setup="passive"))
    finally:
        meta.close()


def _business_answer(**changes: str) -> str:
    """A correct business answer to Meta's offer, with lines replaced or dropped ("")."""
    text = build_meta_sdp(
        address="127.0.0.1",
        port=40000,
        cryptos=[],
        ssrc=7,
        proto="UDP/TLS/RTP/SAVPF",
        mid="0",
        media_attrs=[
            "a=ice-ufrag:gwUF",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            f"a=fingerprint:sha-256 {'AB:' * 31}CD",
            "a=setup:active",
            "a=candidate:1 1 UDP 2130706431 127.0.0.1 40000 typ host",
        ],
    )
    for old, new in changes.items():
        prefix = {"ufrag": "a=ice-ufrag:", "setup": "a=setup:", "fp": "a=fingerprint:"}.get(
            old, old
        )
        text = "\r\n".join(
            new if ln.startswith(prefix) else ln
            for ln in lines(text)
            if new or not ln.startswith(prefix)
        )
    return text


@pytest.mark.parametrize(
    ("answer", "fatal"),
    [
        (_business_answer(), None),
        (_business_answer(setup="a=setup:passive"), "must be the DTLS client"),
        (_business_answer(setup=""), "a=setup:None"),
        (_business_answer(ufrag=""), "no a=ice-ufrag/a=ice-pwd"),
        (_business_answer(fp=""), "no usable a=fingerprint"),
        (_business_answer(**{"a=candidate": ""}), "no UDP a=candidate"),
        (_business_answer(**{"t=0 0": "t=0 0\r\na=ice-lite"}), "a=ice-lite"),
        (_business_answer(**{"m=audio": "m=audio 40000 RTP/SAVP 111 126"}), "proto RTP/SAVP"),
    ],
)
def test_read_business_answer(answer: str, fatal: str | None) -> None:
    sdp = parse_sdp(answer)
    m = sdp.audio()
    assert m is not None
    remote, why, problems = read_webrtc(sdp, m, answer=True, offer_mid="0")
    if fatal is None:
        assert why is None and problems == [] and remote is not None
        assert remote.ufrag == "gwUF" and remote.setup == "active" and not remote.ice_lite
        assert remote.fingerprints == (("sha-256", "AB:" * 31 + "CD"),)
        assert [(c.address, c.port) for c in remote.candidates] == [("127.0.0.1", 40000)]
        assert "abcdefghij" not in repr(remote)  # the ice-pwd stays out of reprs
    else:
        assert remote is None and why is not None and fatal in why, why


def test_read_business_offer_roles_and_soft_problems() -> None:
    offer = _business_answer(setup="a=setup:actpass")
    sdp = parse_sdp(offer)
    m = sdp.audio()
    assert m is not None
    remote, why, problems = read_webrtc(sdp, m, answer=False)
    assert why is None and remote is not None and problems == []
    passive = parse_sdp(_business_answer(setup="a=setup:passive"))
    pm = passive.audio()
    assert pm is not None
    assert "Meta is the DTLS server" in (read_webrtc(passive, pm, answer=False)[1] or "")
    soft = parse_sdp(
        _business_answer(fp="a=fingerprint:sha-256 " + "ab:" * 31 + "cd", **{"a=mid:0": "a=mid:1"})
    )
    sm = soft.audio()
    assert sm is not None
    remote, why, problems = read_webrtc(soft, sm, answer=True, offer_mid="0")
    assert why is None and remote is not None
    assert any("upper-case" in p for p in problems)
    assert any("a=mid:1 is not the offer's a=mid:0" in p for p in problems)


def test_rfc5764_key_layout_and_demux() -> None:
    material = bytes(range(60))  # client key 0-15, server key 16-31, client salt 32-45, ...
    ours, theirs = split_srtp_keys(material, "AES_CM_128_HMAC_SHA1_80", server=True)
    assert ours.key == bytes(range(16, 32)) + bytes(range(46, 60))
    assert theirs.key == bytes(range(16)) + bytes(range(32, 46))
    client, server = split_srtp_keys(bytes(range(56)), "AEAD_AES_128_GCM", server=False)
    assert client.key == bytes(range(16)) + bytes(range(32, 44))
    assert server.key == bytes(range(16, 32)) + bytes(range(44, 56))
    assert [demux(bytes([b])) for b in (0, 3, 4, 19, 20, 63, 64, 127, 128, 191, 192)] == [
        "stun",
        "stun",
        None,
        None,
        "dtls",
        "dtls",
        None,
        None,
        "rtp",
        "rtp",
        None,
    ]
    identity = DtlsIdentity.generate()
    assert identity.fingerprint == cert_fingerprint(identity.cert)
    assert len(identity.fingerprint.split(":")) == 32


# ---------------------------------------------------------------------------
# ICE-lite, sans socket


META_PWD = "MetaPasswordOf24Chars+/x"


def _check(
    *,
    username: str = "metaUF:gwUF",
    key: str | None = META_PWD,
    fingerprint: bool = True,
    controlling: bool = True,
    use_candidate: bool = False,
    priority: bool = True,
) -> tuple[bytes, bytes]:
    msg = stun.binding_request(
        username,
        priority=1234,
        controlling=controlling,
        tie_breaker=99,
        use_candidate=use_candidate,
    )
    if not priority:
        attrs = tuple(a for a in msg.attributes if not isinstance(a, stun.Priority))
        msg = stun.StunMessage(msg.method, msg.cls, msg.transaction_id, attrs)
    return stun.encode(msg, key=key, fingerprint=fingerprint), msg.transaction_id


def test_ice_lite_answers_only_correct_controlling_checks() -> None:
    result = CallResult(role="caller")
    ice = IceLite("metaUF", META_PWD, result)
    ice.remote_ufrag = "gwUF"
    src = ("127.0.0.1", 40000)
    data, txid = _check(use_candidate=False)
    resp, nominated = ice.handle(data, src, 1.0)
    assert resp is not None and not nominated
    parsed = stun.parse(resp)
    assert parsed.fingerprint and parsed.check_integrity(META_PWD)
    assert parsed.message.cls == stun.StunClass.SUCCESS and parsed.message.transaction_id == txid
    xor = parsed.message.get(stun.XorMappedAddress)
    assert xor is not None and (str(xor.address), xor.port) == src
    resp, nominated = ice.handle(_check(use_candidate=True)[0], src, 1.1)
    assert resp is not None and nominated and result.use_candidate_seen
    assert result.violations == [] and result.ice_checks == 2

    def error_of(data: bytes) -> tuple[int | None, bool]:
        out, nom = ice.handle(data, src, 2.0)
        assert not nom
        if out is None:
            return None, False
        p = stun.parse(out)
        err = p.message.get(stun.ErrorCode)
        assert p.message.cls == stun.StunClass.ERROR and err is not None
        return err.code, p.check_integrity(META_PWD)

    assert error_of(_check(username="metaUF:other", use_candidate=True)[0]) == (401, False)
    assert error_of(_check(key="WrongPasswordOf24Chars+/", use_candidate=True)[0]) == (401, False)
    assert error_of(_check(key=None)[0]) == (400, False)
    assert error_of(_check(controlling=False, use_candidate=True)[0]) == (487, True)
    assert error_of(_check(priority=False)[0]) == (400, True)
    assert error_of(_check(fingerprint=False, use_candidate=True)[0]) == (None, False)
    assert len(result.ice_rejected) == 6 and result.ice_checks == 8
    assert any("401 MESSAGE-INTEGRITY" in v for v in result.violations)
    assert any("487 ICE-CONTROLLED" in v for v in result.violations)
    # An indication (keepalive) is not a check; a response to lite Meta is a violation.
    ind = stun.StunMessage(stun.BINDING, stun.StunClass.INDICATION, stun.new_transaction_id())
    assert ice.handle(stun.encode(ind, fingerprint=True), src, 3.0) == (None, False)
    ok = stun.binding_success(
        stun.binding_request("x:y", priority=1, controlling=True, tie_breaker=1),
        ipaddress.ip_address("127.0.0.1"),
        1,
    )
    assert ice.handle(stun.encode(ok, fingerprint=True), src, 3.0) == (None, False)
    assert any("sends no checks" in v for v in result.violations)
    assert result.ice_checks == 8


# ---------------------------------------------------------------------------
# Meta's endpoint against the business peer, on loopback (no SIP)


@dataclass
class Pair:
    meta: CallResult
    business: CallResult
    peer: BusinessWebRtc
    failures: list[str]


async def run_pair(
    faults: WebRtcFaults | None = None,
    *,
    talk: float = 1.0,
    meta_start_delay: float = 0.0,
    profiles: tuple[str, ...] = ("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"),
) -> Pair:
    """Meta's offer, the business answer, ICE + DTLS, then media both ways for ``talk`` s."""
    loop = asyncio.get_running_loop()
    script = MediaScript(
        media_mode="webrtc", ice_timeout=0.6, dtls_timeout=0.6, dtls_profiles=profiles
    )
    meta_result = CallResult(role="caller")
    meta = WebRtcEndpoint(meta_result, script)
    failures: list[str] = []
    meta.on_failure = failures.append
    await meta.open()
    peer = BusinessWebRtc(CallResult(role="business"), MediaScript(tone_hz=600.0), faults)
    await peer.open()
    stop = asyncio.Event()
    tasks: list[asyncio.Future[None]] = []
    try:
        codec, mid = peer.learn(meta.local_sdp(setup="actpass"))
        answer = parse_sdp(peer.local_sdp(setup="active", mid=mid))
        m = answer.audio()
        assert m is not None and meta.accept(answer, m, answer=True, offer_mid="0") is None
        peer.start(codec)  # checks may come before Meta has read the answer
        await asyncio.sleep(meta_start_delay)
        meta.start(Codec("opus", 111, 48000, te_pt=126), m.ssrcs)
        end = loop.time() + 3.0
        while not failures and not peer.ready.is_set() and loop.time() < end:
            await asyncio.sleep(0.02)
        if peer.ready.is_set():
            tasks.append(asyncio.ensure_future(peer.send_loop(stop)))  # business sends first
            end = loop.time() + 2.0
            while not failures and not meta.first_rx.is_set() and loop.time() < end:
                await asyncio.sleep(0.02)
            if meta.first_rx.is_set():
                tasks.append(asyncio.ensure_future(meta.send_loop(stop)))
            end = loop.time() + talk
            while not failures and loop.time() < end:
                await asyncio.sleep(0.02)
        else:  # the failure case: let the timers run out
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        for t in tasks:
            await t
        meta.close()
        peer.close()
    return Pair(meta_result, peer.result, peer, failures)


async def test_correct_business_peer_gets_audio_both_ways() -> None:
    pair = await run_pair(meta_start_delay=0.15)
    r, peer = pair.meta, pair.peer
    assert pair.failures == [] and r.violations == [], r.describe()
    assert r.media_mode == "webrtc" and r.use_candidate_seen and r.ice_rejected == []
    assert peer.transport is not None
    own = peer.transport.get_extra_info("sockname")[:2]
    assert r.ice_nominated == own and peer.mapped == own  # XOR-MAPPED-ADDRESS is the source
    assert r.ice_checks >= 2 and peer.consent_ok >= 1  # consent checks answered after nomination
    assert r.ice_last_consent_at is not None
    assert r.dtls_profile == "SRTP_AES128_CM_SHA1_80" and r.suite == "AES_CM_128_HMAC_SHA1_80"
    assert r.fingerprint_ok is True and peer.meta_fingerprint_ok is True
    assert r.dtls_handshake_ms is not None and 0 < r.dtls_handshake_ms < 1000
    assert (
        r.srtp_auth_failures == 0
        and r.packets_received > 30
        and pair.business.packets_received > 30
    )
    assert tone_ok(r.received_pcm, r.sample_rate, 600.0)
    assert tone_ok(pair.business.received_pcm, pair.business.sample_rate, 440.0)


@pytest.mark.parametrize(
    ("meta_prefers", "client_offers", "chosen"),
    [
        (("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"), None, "SRTP_AEAD_AES_128_GCM"),
        (
            ("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"),
            "SRTP_AEAD_AES_128_GCM",
            "SRTP_AEAD_AES_128_GCM",
        ),
    ],
)
async def test_gcm_profile(
    meta_prefers: tuple[str, ...], client_offers: str | None, chosen: str
) -> None:
    faults = WebRtcFaults() if client_offers is None else WebRtcFaults(profiles=client_offers)
    pair = await run_pair(faults, talk=0.6, profiles=meta_prefers)
    assert pair.failures == [] and pair.meta.violations == [], pair.meta.describe()
    assert pair.meta.dtls_profile == chosen and pair.peer.profile == chosen
    assert pair.meta.suite == "AEAD_AES_128_GCM"
    assert tone_ok(pair.meta.received_pcm, pair.meta.sample_rate, 600.0)


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (WebRtcFaults(use_candidate=False), "no ICE check with USE-CANDIDATE"),
        (WebRtcFaults(wrong_pwd=True), "401 MESSAGE-INTEGRITY does not verify"),
        (WebRtcFaults(controlled=True), "487 ICE-CONTROLLED"),
        (WebRtcFaults(dtls=False), "no DTLS ClientHello within 0.6 s of the ICE nomination"),
        (WebRtcFaults(lie_fingerprint=True), "does not match its SDP a=fingerprint"),
        (WebRtcFaults(plain_rtp=True), "failed SRTP authentication with the DTLS-SRTP keys"),
        (WebRtcFaults(early_rtp=True), "before the DTLS handshake completed"),
        (WebRtcFaults(other_source=True), "not the nominated ICE pair"),
    ],
)
async def test_strict_checks_fail_the_call(faults: WebRtcFaults, reason: str) -> None:
    pair = await run_pair(faults)
    r = pair.meta
    assert len(pair.failures) == 1 and reason in pair.failures[0], (pair.failures, r.describe())
    assert pair.failures[0] in r.violations
    if faults.use_candidate and not faults.wrong_pwd and not faults.controlled:
        assert r.use_candidate_seen and r.ice_nominated is not None
    else:
        assert not r.use_candidate_seen and r.ice_nominated is None and r.ice_checks > 0
    if faults.wrong_pwd or faults.controlled:
        assert pair.peer.errors and set(pair.peer.errors) == {401 if faults.wrong_pwd else 487}
    if faults.lie_fingerprint:
        assert r.fingerprint_ok is False and not pair.peer.ready.is_set()
        assert r.packets_received == 0


async def test_dtls_before_nomination_and_stray_bytes_are_dropped() -> None:
    r = CallResult(role="caller")
    meta = WebRtcEndpoint(r, MediaScript(media_mode="webrtc", ice_timeout=5.0))
    await meta.open()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        sdp = parse_sdp(_business_answer())
        m = sdp.audio()
        assert m is not None and meta.accept(sdp, m, answer=True) is None
        meta.start(Codec("opus", 111, 48000, te_pt=126), [])
        sock.sendto(b"\x16\xfe\xfd" + bytes(10), ("127.0.0.1", meta.port))  # a DTLS record
        sock.sendto(b"\x50hello", ("127.0.0.1", meta.port))  # RFC 7983: nobody's
        for _ in range(50):
            if len(r.violations) >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        sock.close()
        meta.close()
    assert any("DTLS from the gateway before ICE nominated a pair" in v for v in r.violations)
    assert any("first byte 80: neither STUN, DTLS nor RTP/RTCP" in v for v in r.violations)
    assert meta.dtls is not None and meta.dtls.state == "new"


async def test_ipv6_candidate_is_a_real_socket() -> None:
    r = CallResult(role="caller")
    meta = WebRtcEndpoint(r, MediaScript(media_mode="webrtc"))
    await meta.open()
    try:
        v6 = meta.candidates[1]
        if v6.address != "::1":
            pytest.skip("no IPv6 loopback here: the candidate is the documented unreachable one")
        sdp = parse_sdp(_business_answer())
        m = sdp.audio()
        assert m is not None and meta.accept(sdp, m, answer=True) is None
        meta.start(Codec("opus", 111, 48000, te_pt=126), [])
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
            sock.settimeout(2.0)
            msg = stun.binding_request(
                f"{meta.ufrag}:gwUF", priority=1, controlling=True, tie_breaker=5
            )
            sock.sendto(stun.encode(msg, key=meta.pwd, fingerprint=True), ("::1", v6.port))
            data = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)
            own = sock.getsockname()[:2]
        parsed = stun.parse(data)
        xor = parsed.message.get(stun.XorMappedAddress)
        assert parsed.check_integrity(meta.pwd) and xor is not None
        assert (str(xor.address), xor.port) == own
        assert r.ice_checks == 1 and r.violations == []
    finally:
        meta.close()


# ---------------------------------------------------------------------------
# Whole calls: SIP + WebRTC media through MetaCaller and MetaServer


async def test_user_initiated_webrtc_call() -> None:
    script = MediaScript(tone_hz=600.0, dtmf="12", dtmf_delay=0.5)
    async with LoopbackUas(PASSWORD, script=script, webrtc=WebRtcFaults()) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(
            media_mode="webrtc", talk_seconds=2.0, dtmf="5#", dtmf_delay=0.4
        )
        business = await asyncio.wait_for(uas.results.get(), 5)
    assert result.violations == [] and result.ok, result.describe()
    assert result.ladder[-2:] == ["-> BYE", "<- 200 (BYE)"]
    assert " UDP/TLS/RTP/SAVPF 111 126\r\n" in result.invite and "a=ice-lite\r\n" in result.invite
    assert "a=setup:actpass\r\n" in result.offer_sdp and "a=crypto" not in result.offer_sdp
    assert "a=setup:active\r\n" in result.answer_sdp
    assert result.use_candidate_seen and result.fingerprint_ok and result.dtls_profile
    assert result.first_packet_delay is not None and result.first_packet_delay < 1.0
    assert tone_ok(result.received_pcm, result.sample_rate, 600.0)
    assert tone_ok(business.received_pcm, business.sample_rate, 440.0)
    assert result.dtmf_received == "12" and business.dtmf_received == "5#"


@pytest.mark.parametrize(
    ("faults", "reason", "bye"),
    [
        (WebRtcFaults(setup="passive"), "must be the DTLS client", 'text="Not Acceptable Here"'),
        (WebRtcFaults(use_candidate=False), "no ICE check with USE-CANDIDATE", WEBRTC_FAILED),
    ],
)
async def test_user_initiated_webrtc_failures_end_the_call(
    faults: WebRtcFaults, reason: str, bye: str
) -> None:
    async with LoopbackUas(PASSWORD, webrtc=faults, hangup_after=5.0) as uas:
        result = await MetaCaller(uas.address, "+15550001111", PASSWORD).call(
            media_mode="webrtc", ice_timeout=0.8
        )
    assert result.status == 200 and result.failure is not None and reason in result.failure
    assert any(reason in v for v in result.violations)
    assert result.bye_from == "emulator" and result.bye_reason is not None
    assert bye in result.bye_reason
    assert result.packets_sent == 0


async def test_business_initiated_webrtc_call() -> None:
    behaviour = UasBehaviour(media_mode="webrtc", talk_seconds=2.0, tone_hz=700.0)
    async with MetaServer(NUMBERS) as server:
        server.queue_behaviour(behaviour)
        async with LoopbackUac(webrtc=WebRtcFaults(), script=MediaScript(tone_hz=500.0)) as uac:
            business = await uac.call(server.address, password=PASSWORD, talk_seconds=4.0)
        result = await server.wait_call(10)
    assert result.violations == [] and result.ok, result.describe()
    answer = result.answer_sdp
    assert "a=ice-lite\r\n" in answer and "a=setup:passive\r\n" in answer
    assert " UDP/TLS/RTP/SAVPF 111 126\r\n" in answer and "a=mid:0\r\n" in answer
    assert result.use_candidate_seen and result.fingerprint_ok
    assert tone_ok(result.received_pcm, result.sample_rate, 500.0)
    assert tone_ok(business.received_pcm, business.sample_rate, 700.0)
    assert result.bye_from == "emulator"


async def test_business_initiated_sdes_offer_to_a_dtls_number_is_refused() -> None:
    async with MetaServer(NUMBERS) as server:
        server.queue_behaviour(UasBehaviour(media_mode="webrtc"))
        async with LoopbackUac() as uac:  # SDES offer, as before issue 14
            business = await uac.call(server.address, password=PASSWORD)
        result = await server.wait_call(10)
    assert business.status == 403 and result.status == 403
    assert result.reason == "SDP invalid"
    assert any(
        "proto RTP/SAVP (WebRTC media needs UDP/TLS/RTP/SAVPF)" in v for v in result.violations
    )


async def test_business_initiated_fingerprint_mismatch_ends_the_call() -> None:
    behaviour = UasBehaviour(media_mode="webrtc", talk_seconds=3.0)
    async with MetaServer(NUMBERS) as server:
        server.queue_behaviour(behaviour)
        faults = WebRtcFaults(lie_fingerprint=True)
        async with LoopbackUac(webrtc=faults) as uac:
            with contextlib.suppress(TimeoutError):
                await uac.call(server.address, password=PASSWORD, talk_seconds=4.0)
        result = await server.wait_call(10)
    assert result.status == 200 and result.fingerprint_ok is False
    assert result.failure is not None and "does not match its SDP a=fingerprint" in result.failure
    assert result.bye_from == "emulator" and result.bye_reason == WEBRTC_FAILED
