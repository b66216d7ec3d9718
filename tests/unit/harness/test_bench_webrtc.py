"""bench/webrtc.py: the load generator's Meta side in WebRTC mode (python -m bench --srtp dtls).

Its offer must be one the gateway answers in DTLS mode (and its SDES offer one it answers
in SDES mode only); its ICE-lite answer must satisfy the gateway's own ICE agent and
nothing else; and, against the gateway's WebRTC link on a fake clock, the two sides must
come out with mirrored DTLS-SRTP keys.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from bench.report import write_markdown
from bench.result import Params, Result
from bench.webrtc import MetaWebRtc, ice_lite_answer, meta_offer
from gateway.ice.agent import IceAgent, Nominated, new_credentials
from gateway.ice.stun import StunClass, XorMappedAddress, binding_request, encode, parse
from gateway.media.dtls import DtlsCertificate
from gateway.media.srtp import SrtpContext, encode_inline
from gateway.media.webrtc import WebRtcLink
from gateway.sdp import parse_sdp
from gateway.sdp.errors import NegotiationError
from gateway.sdp.negotiate import MediaParams, answer_whatsapp_offer
from gateway.sdp.webrtc import LocalWebRtc, SrtpMode

GW = ("127.0.0.1", 40000)
META_PORT = 31000
META = ("127.0.0.1", META_PORT)
UFRAG, PWD = "MetaUfrg", "meta-password-24-chars-x"
GW_UFRAG = "GwUfrag1"
SUITE = "AES_CM_128_HMAC_SHA1_80"
CERT_GW = DtlsCertificate.generate()
CERT_META = DtlsCertificate.generate()


def _check(
    pwd: str = PWD, user: str = f"{UFRAG}:{GW_UFRAG}", fingerprint: bool = True
) -> tuple[bytes, bytes]:
    msg = binding_request(user, priority=1, controlling=True, tie_breaker=7, use_candidate=True)
    return encode(msg, key=pwd, fingerprint=fingerprint), msg.transaction_id


def _answer(offer: bytes, mode: SrtpMode = "dtls") -> tuple[bytes, LocalWebRtc, MediaParams]:
    ufrag, pwd = new_credentials()
    local = LocalWebRtc(ufrag, pwd, CERT_GW.fingerprint, GW[0], GW[1])
    answer, params = answer_whatsapp_offer(
        parse_sdp(offer),
        local_address=GW[0],
        local_port=GW[1],
        allow_g711=False,
        new_key=lambda suite: os.urandom(30),
        srtp_mode=mode,
        local_webrtc=local,
    )
    return answer.serialize(), local, params


def test_ice_lite_answer_is_a_signed_success_with_the_source_address() -> None:
    check, tid = _check(fingerprint=True)
    response, nominated = ice_lite_answer(check, GW, UFRAG, PWD, GW_UFRAG)
    assert response is not None and nominated
    parsed = parse(response)
    assert parsed.message.cls == StunClass.SUCCESS and parsed.message.transaction_id == tid
    assert parsed.fingerprint and parsed.check_integrity(PWD)
    assert not parsed.check_integrity("some-other-password-xxxx")
    assert parsed.message.get(XorMappedAddress) == XorMappedAddress(
        ipaddress.ip_address(GW[0]), GW[1]
    )
    # the remote ufrag is not checked while the 2xx has not been read yet
    assert ice_lite_answer(check, GW, UFRAG, PWD, None)[0] is not None


@pytest.mark.parametrize(
    "check",
    [
        _check(fingerprint=False)[0],  # RFC 8445 7.2.2: FINGERPRINT required
        _check(pwd="wrong-password-24-chars-x", fingerprint=True)[0],
        _check(user=f"Someone:{GW_UFRAG}", fingerprint=True)[0],
        _check(user=f"{UFRAG}:Another", fingerprint=True)[0],
        _check(user=UFRAG, fingerprint=True)[0],
        b"\x00\x01\x00\x00junk",
    ],
    ids=["no-fingerprint", "bad-integrity", "not-our-ufrag", "not-their-ufrag", "no-colon", "junk"],
)
def test_ice_lite_answer_drops_what_is_not_an_authenticated_check(check: bytes) -> None:
    assert ice_lite_answer(check, GW, UFRAG, PWD, GW_UFRAG) == (None, False)


def test_ice_lite_answer_nominates_for_the_gateways_ice_agent() -> None:
    agent = IceAgent(
        local_ufrag=GW_UFRAG,
        local_pwd="gw-password-24-chars-xxx",
        remote_ufrag=UFRAG,
        remote_pwd=PWD,
        remote_candidates=[(*META, 2130706431)],
        local_family=4,
    )
    agent.start(0.0)
    answered = 0
    for data, to in agent.pop_datagrams():
        assert to == META
        response, _ = ice_lite_answer(data, GW, UFRAG, PWD, GW_UFRAG)
        assert response is not None
        answered += 1
        agent.receive(response, META, 0.01)
    assert answered and agent.selected == META
    assert any(isinstance(e, Nominated) and e.address == META for e in agent.pop_events())


def test_the_dtls_offer_is_metas_shape_and_the_gateway_answers_it() -> None:
    w = MetaWebRtc(CERT_META)
    offer = meta_offer(META_PORT, 1234, ice=w.ice_params())
    text = offer.decode()
    for line in (
        "a=ice-lite",
        f"m=audio {META_PORT} UDP/TLS/RTP/SAVPF 111 126",
        f"a=ice-ufrag:{w.ufrag}",
        "a=setup:actpass",
        f"a=fingerprint:sha-256 {CERT_META.fingerprint[1]}",
        f"a=candidate:1 1 UDP 2130706431 127.0.0.1 {META_PORT} typ host",
        "a=rtcp-mux",
        "a=rtcp-fb:111 transport-cc",
    ):
        assert f"\r\n{line}\r\n" in text, line
    assert "a=crypto" not in text
    _, _, params = _answer(offer)
    webrtc = params.webrtc
    assert webrtc is not None
    assert webrtc.ice_lite and webrtc.dtls_client and webrtc.setup == "actpass"
    assert webrtc.fingerprints == (CERT_META.fingerprint,) and webrtc.port == META_PORT
    with pytest.raises(NegotiationError):  # a number in SDES mode refuses it
        _answer(offer, "sdes")


def test_the_sdes_offer_is_answered_in_sdes_mode_only() -> None:
    key = os.urandom(30)
    offer = meta_offer(META_PORT, 1234, crypto=f"{SUITE} {encode_inline(key, SUITE)}")
    assert b"RTP/SAVP 111 126" in offer and b"ice" not in offer
    _, _, params = _answer(offer, "sdes")
    assert params.srtp is not None and params.srtp.remote_key == key
    with pytest.raises(NegotiationError):
        _answer(offer, "dtls")
    with pytest.raises(ValueError):
        meta_offer(META_PORT, 1, crypto="x", ice=("a", "b", ("sha-256", "AA")))


def test_against_the_gateways_link_both_sides_key_the_same_srtp() -> None:
    """The gateway's WebRTC leg (ICE controlling + DTLS client) and the load generator's
    Meta side, datagrams passed by hand on a fake clock; then one SRTP packet each way."""
    w = MetaWebRtc(CERT_META)
    answer, local, params = _answer(meta_offer(META_PORT, 1, ice=w.ice_params()))
    now = 0.0
    assert params.webrtc is not None
    link = WebRtcLink(
        params.webrtc,
        local_ufrag=local.ufrag,
        local_pwd=local.pwd,
        certificate=CERT_GW,
        family=4,
        now=now,
    )
    assert w.accept_answer(answer, now) == GW
    for _ in range(50):
        now += 0.02
        out = link.pop_datagrams()
        for data, to in out:
            assert to == META
            for back, dest in w.receive(data, GW, now):
                assert dest == GW
                link.receive(0 if back[0] < 4 else 1, back, META, now)
        link.tick(now)
        if link.state == "connected" and w.keys is not None:
            break
    assert link.state == "connected" and w.nominated == GW and w.keyed_at is not None
    assert w.stun_answered >= 1 and w.stun_dropped == 0
    assert w.dtls is not None and w.dtls.handshake_seconds is not None
    assert link.keys is not None and w.keys is not None
    gw, meta = SrtpContext(*link.keys), SrtpContext(*w.keys)
    rtp = bytes([0x80, 111, 0, 1]) + bytes(8) + b"opus"
    assert meta.unprotect(gw.protect(rtp)) == rtp
    assert gw.unprotect(meta.protect(rtp)) == rtp
    assert "pwd=***" in repr(w) and w.pwd not in repr(w)


def test_accept_answer_refuses_an_sdes_answer() -> None:
    w = MetaWebRtc(CERT_META)
    sdes = meta_offer(META_PORT, 1, crypto=f"{SUITE} {encode_inline(os.urandom(30), SUITE)}")
    with pytest.raises(ValueError, match="UDP/TLS/RTP/SAVPF"):
        w.accept_answer(sdes, 0.0)


def test_the_report_keeps_sections_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text(
        "# Benchmarks\n\nold intro\n\n## Latest run: x\n\nold\n\n## History\n\n"
        "## WebRTC mode (DTLS-SRTP) vs SDES\n\nby hand, kept\n"
    )
    r = Result(Params(calls=2, seconds=1, srtp="dtls"), started="2026-12-10 00:00:00 UTC")
    write_markdown(path, r)
    text = path.read_text()
    assert "## WebRTC mode (DTLS-SRTP) vs SDES\n\nby hand, kept" in text
    assert "old intro" not in text and "--srtp dtls" in text
