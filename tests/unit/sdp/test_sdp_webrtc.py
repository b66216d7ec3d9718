"""Tests for gateway.sdp.webrtc and WebRTC media (ICE + DTLS-SRTP) in gateway.sdp.negotiate:
Meta's WebRTC offer (docs/whatsapp-sip.md section 7) answered, our WebRTC offer and Meta's
answer, the number's srtp mode, and every refusal."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

import pytest

from gateway.media.srtp import new_key_material
from gateway.sdp.crypto import redact_sdp_text
from gateway.sdp.negotiate import (
    MediaParams,
    NegotiationError,
    accept_whatsapp_answer,
    answer_whatsapp_offer,
    describe,
    make_whatsapp_offer,
)
from gateway.sdp.session import SdpError, SessionDescription, parse_sdp
from gateway.sdp.webrtc import (
    IceCandidate,
    LocalWebRtc,
    SrtpMode,
    host_priority,
    parse_candidate,
    parse_fingerprint,
    remote_webrtc,
)

NUMBER = "+15550001111"
META_V4, META_V6 = "57.144.219.49", "2a03:2880:f23c:120:face:b00c:0:7260"
META_UFRAG, META_PWD = "Wq5C", "GmV8l2Pd3kYt9uRs0bXhQz1A"
META_FP = ":".join(f"{b:02X}" for b in hashlib.sha256(b"meta certificate").digest())
OUR_FP = ":".join(f"{b:02X}" for b in hashlib.sha256(b"our certificate").digest())
OUR_UFRAG, OUR_PWD = "k7Rz+Q2/", "Zp3vXn8Lq0Ws5Tb2Yc7Md4Ha"
LOCAL = LocalWebRtc(OUR_UFRAG, OUR_PWD, ("sha-256", OUR_FP), "203.0.113.5", 40000)
LOCAL_V6 = LocalWebRtc(OUR_UFRAG, OUR_PWD, ("sha-256", OUR_FP), "2001:db8::5", 40000)
HOST_PRIORITY = 2130706431  # (126 << 24) | (65535 << 8) | (256 - 1): what browsers put


def meta_lines() -> list[str]:
    """Meta's offer in WebRTC mode, as section 7 describes it (ice-lite, one IPv4 and one
    IPv6 host candidate, actpass, a SHA-256 fingerprint, transport-cc, BUNDLE/mid/msid/ssrc)."""
    return [
        "v=0",
        f"o=- 1714576843 2 IN IP4 {META_V4}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE audio",
        "a=msid-semantic: WMS WhatsAppAudioStream1",
        "a=ice-lite",
        "m=audio 3480 UDP/TLS/RTP/SAVPF 111 126",
        f"c=IN IP4 {META_V4}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2113937151 {META_V6} 3480 typ host generation 0",
        f"a=candidate:0 1 udp 2122260223 {META_V4} 3480 typ host generation 0",
        f"a=ice-ufrag:{META_UFRAG}",
        f"a=ice-pwd:{META_PWD}",
        f"a=fingerprint:sha-256 {META_FP}",
        "a=setup:actpass",
        "a=mid:audio",
        "a=sendrecv",
        "a=msid:WhatsAppAudioStream1 WhatsAppAudioStream1-audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
        "sprop-maxcapturerate=16000;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000",
        "a=ptime:20",
        "a=maxptime:20",
        "a=ssrc:1823432671 cname:WhatsAppAudioStream1",
        "a=ssrc:1823432671 msid:WhatsAppAudioStream1 WhatsAppAudioStream1-audio",
    ]


def meta_offer(edit: Callable[[list[str]], list[str]] = lambda lines: lines) -> SessionDescription:
    return parse_sdp("\r\n".join(edit(meta_lines())) + "\r\n")


def without(*prefixes: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [ln for ln in lines if not ln.startswith(prefixes)]


def replacing(old: str, new: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [ln.replace(old, new) for ln in lines]


def answer(
    offer: SessionDescription,
    *,
    mode: SrtpMode = "auto",
    local: LocalWebRtc | None = LOCAL,
    address: str = "203.0.113.5",
) -> tuple[SessionDescription, MediaParams]:
    return answer_whatsapp_offer(
        offer,
        local_address=address,
        local_port=40000,
        allow_g711=False,
        new_key=new_key_material,
        srtp_mode=mode,
        local_webrtc=local,
        number=NUMBER,
    )


def refusal(offer: SessionDescription, **kw: object) -> NegotiationError:
    with pytest.raises(NegotiationError) as info:
        answer(offer, **kw)  # type: ignore[arg-type]
    assert info.value.status == 488
    return info.value


# ---------------------------------------------------------------------------
# Candidates


def test_parse_candidate_host_ipv4_and_ipv6() -> None:
    v4 = parse_candidate(f"0 1 udp 2122260223 {META_V4} 3480 typ host generation 0")
    assert v4 == IceCandidate(
        "0", 1, "UDP", 2122260223, META_V4, 3480, "host", (("generation", "0"),)
    )
    assert (v4.family, v4.to_sdp()) == (
        4,
        f"0 1 UDP 2122260223 {META_V4} 3480 typ host generation 0",
    )
    v6 = parse_candidate("1 1 UDP 2113937151 2A03:2880:F23C:0120:FACE:B00C:0:7260 3480 typ host")
    assert (v6.address, v6.family, v6.extensions) == (META_V6, 6, ())
    assert parse_candidate(v6.to_sdp()) == v6


def test_parse_candidate_srflx_with_related_address_and_fqdn() -> None:
    value = "a+/9 1 UDP 1686052607 198.51.100.7 61000 typ srflx raddr 10.0.0.2 rport 5000 x y"
    cand = parse_candidate(value)
    assert (cand.type, cand.extensions) == (
        "srflx",
        (("raddr", "10.0.0.2"), ("rport", "5000"), ("x", "y")),
    )
    assert cand.to_sdp() == value
    fqdn = parse_candidate("1 1 UDP 1 host.example.com 9 TYP HOST")
    assert (fqdn.address, fqdn.family, fqdn.type) == ("host.example.com", None, "host")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1 1 UDP 1 192.0.2.1 3480 typ",  # no type
        "1 1 UDP 1 192.0.2.1 3480 typ host generation",  # a name without a value
        "1 1 UDP 1 192.0.2.1 3480 type host",
        "x_y 1 UDP 1 192.0.2.1 3480 typ host",  # '_' is no ice-char
        f"{'a' * 33} 1 UDP 1 192.0.2.1 3480 typ host",  # foundation longer than 32
        "1 0 UDP 1 192.0.2.1 3480 typ host",
        "1 257 UDP 1 192.0.2.1 3480 typ host",
        "1 1 UDP 0 192.0.2.1 3480 typ host",
        f"1 1 UDP {2**31} 192.0.2.1 3480 typ host",
        "1 1 UDP 1 192.0.2.1 65536 typ host",
        "1 1 UDP 1 192.0.2.999 3480 typ host",
        "1 1 UDP 1 192.0.2.1 3480 typ host raddr 1.2.3",
        "1 1 UDP 1 192.0.2.1 3480 typ host rport 99999",
        "1 1 U(P 1 192.0.2.1 3480 typ host",
    ],
)
def test_parse_candidate_rejects(value: str) -> None:
    with pytest.raises(SdpError, match="candidate"):
        parse_candidate(value)


def test_host_priority() -> None:
    assert host_priority() == HOST_PRIORITY
    assert host_priority(2) == HOST_PRIORITY - 1
    assert host_priority(1, 0) == 126 * 2**24 + 255
    for bad in ({"component": 0}, {"component": 257}, {"local_pref": 65536}, {"local_pref": -1}):
        with pytest.raises(ValueError):
            host_priority(**bad)


def test_parse_fingerprint() -> None:
    assert parse_fingerprint(f"SHA-256 {META_FP.lower()}") == ("sha-256", META_FP)
    sha1 = ":".join(["AB"] * 20)
    assert parse_fingerprint(f"sha-1 {sha1}") == ("sha-1", sha1)
    for bad in (
        f"md5 {META_FP}",  # not an RFC 8122 hash
        f"sha-256 {META_FP[:-3]}",  # 31 bytes
        f"sha-384 {META_FP}",  # a SHA-256 length
        "sha-256 AB:CD:XY",
        f"sha-256{META_FP}",
        f"sha-256 {META_FP} extra",
    ):
        assert parse_fingerprint(bad) is None


def test_local_webrtc_checks_and_hides_its_password() -> None:
    assert LOCAL.candidate() == IceCandidate(
        "1", 1, "UDP", HOST_PRIORITY, "203.0.113.5", 40000, "host"
    )
    assert OUR_PWD not in repr(LOCAL) and OUR_UFRAG in repr(LOCAL)
    good = {
        "ufrag": OUR_UFRAG,
        "pwd": OUR_PWD,
        "fingerprint": ("sha-256", OUR_FP),
        "address": "203.0.113.5",
        "port": 40000,
    }
    for bad in (
        {"ufrag": "abc"},
        {"ufrag": "ab_cd"},
        {"pwd": OUR_PWD[:21]},
        {"pwd": OUR_PWD[:-1] + "="},
        {"fingerprint": ("sha-256", OUR_FP.lower())},
        {"fingerprint": ("md5", OUR_FP)},
        {"address": "gw.example.com"},
        {"port": 0},
    ):
        with pytest.raises(ValueError):
            LocalWebRtc(**{**good, **bad})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Answering Meta's WebRTC offer


def test_answer_to_meta_webrtc_offer() -> None:
    offer = meta_offer()
    sdp, media = answer(offer)
    assert parse_sdp(sdp.serialize()) == sdp
    text = sdp.serialize().decode()
    assert "c=IN IP4 203.0.113.5\r\n" in text and "a=group:BUNDLE audio\r\n" in text
    assert "ice-lite" not in text  # we are a full agent
    assert "crypto" not in text and "rtcp-fb" not in text  # no transport-cc here
    (m,) = sdp.media
    assert (m.port, m.proto, m.formats) == (40000, "UDP/TLS/RTP/SAVPF", ["111", "126"])
    assert m.rtpmaps()[111].is_("opus", 48000) and m.rtpmaps()[126].is_("telephone-event", 8000)
    assert (m.mid, m.rtcp_mux, m.direction(sdp)) == ("audio", True, "sendrecv")
    assert m.attribute("ice-ufrag") == OUR_UFRAG and m.attribute("ice-pwd") == OUR_PWD
    assert m.attribute("fingerprint") == f"sha-256 {OUR_FP}"
    assert m.attribute("setup") == "active"  # we are the DTLS client, as Meta expects
    (cand,) = [parse_candidate(v or "") for v in m.attribute_values("candidate")]
    assert (cand.address, cand.port, cand.priority, cand.type, cand.transport) == (
        "203.0.113.5",
        40000,
        host_priority(),
        "host",
        "UDP",
    )
    assert media.srtp is None and media.webrtc is not None
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("opus", 111, 126)
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        META_V4,
        3480,
        3480,
    )
    assert media.rtcp_mux and media.may_send
    rtc = media.webrtc
    assert (rtc.ice_ufrag, rtc.ice_pwd, rtc.ice_lite) == (META_UFRAG, META_PWD, True)
    assert [(c.address, c.port, c.priority) for c in rtc.candidates] == [
        (META_V4, 3480, 2122260223)  # the IPv6 candidate is ignored: our socket is IPv4
    ]
    assert rtc.fingerprints == (("sha-256", META_FP),)
    assert (rtc.setup, rtc.dtls_client, rtc.ice_controlling) == ("actpass", True, True)
    assert describe(media) == (
        f"opus/48000 pt111 DTLS-SRTP client -> {META_V4}:3480 rtcp-mux dtmf126"
    )


def test_meta_reads_our_answer_back() -> None:
    """Our answer read as Meta (the offerer, actpass) would: our credentials, candidate and
    fingerprint, and Meta the DTLS server (we are active)."""
    sdp, _ = answer(meta_offer())
    back = remote_webrtc(sdp, sdp.media[0], local_family=4, answer=True)
    assert (back.ice_ufrag, back.ice_pwd, back.ice_lite) == (OUR_UFRAG, OUR_PWD, False)
    assert back.candidates == (LOCAL.candidate(),)
    assert back.fingerprints == (("sha-256", OUR_FP),)
    assert (back.setup, back.dtls_client) == ("active", False)


def test_ipv6_media_address_uses_metas_ipv6_candidate() -> None:
    sdp, media = answer(meta_offer(), local=LOCAL_V6, address="2001:db8::5")
    assert media.webrtc is not None
    assert [c.address for c in media.webrtc.candidates] == [META_V6]
    assert (media.remote_address, media.remote_port) == (META_V6, 3480)
    assert sdp.connection is not None and sdp.connection.addrtype == "IP6"
    assert parse_candidate(sdp.media[0].attribute("candidate") or "").address == "2001:db8::5"


def test_candidates_ordered_by_priority_and_only_usable_ones_kept() -> None:
    extra = [
        "a=candidate:5 1 udp 100 192.0.2.10 4000 typ host",
        "a=candidate:6 1 udp 2130706431 192.0.2.11 4001 typ host",
        "a=candidate:7 2 udp 2130706430 192.0.2.12 4002 typ host",  # RTCP component
        "a=candidate:8 1 tcp 2130706429 192.0.2.13 4003 typ host tcptype passive",
        "a=candidate:9 1 udp 2130706428 192.0.2.14 0 typ host",  # port 0
        "a=candidate:10 1 udp 2130706427 meta.example.com 4005 typ host",  # FQDN
        "a=candidate:bad",
    ]
    _, media = answer(meta_offer(lambda lines: lines + extra))
    assert media.webrtc is not None
    assert [c.address for c in media.webrtc.candidates] == ["192.0.2.11", META_V4, "192.0.2.10"]
    assert (media.remote_address, media.remote_port) == ("192.0.2.11", 4001)


def test_session_level_ice_and_dtls_attributes() -> None:
    moved = ("a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=setup", "a=ice-lite")

    def to_session(lines: list[str]) -> list[str]:
        kept = [ln for ln in lines if not ln.startswith(moved)]
        at = kept.index("a=group:BUNDLE audio")
        return kept[:at] + [ln for ln in lines if ln.startswith(moved)] + kept[at:]

    offer = meta_offer(to_session)
    assert offer.media[0].attribute("ice-pwd") is None and offer.attribute("ice-pwd") == META_PWD
    _, media = answer(offer)
    assert media.webrtc is not None
    assert (media.webrtc.ice_ufrag, media.webrtc.ice_pwd) == (META_UFRAG, META_PWD)
    assert media.webrtc.fingerprints == (("sha-256", META_FP),)
    assert (media.webrtc.setup, media.webrtc.ice_lite) == ("actpass", True)


def test_media_level_values_win_over_session_level() -> None:
    other_fp = ":".join(["01"] * 32)
    session = ["a=ice-ufrag:SESS", "a=ice-pwd:" + "s" * 22, f"a=fingerprint:sha-256 {other_fp}"]

    def add(lines: list[str]) -> list[str]:
        at = lines.index("a=group:BUNDLE audio")
        return lines[:at] + session + lines[at:]

    _, media = answer(meta_offer(add))
    assert media.webrtc is not None
    assert (media.webrtc.ice_ufrag, media.webrtc.ice_pwd) == (META_UFRAG, META_PWD)
    assert media.webrtc.fingerprints == (("sha-256", META_FP),)


def test_media_level_ice_lite_and_a_full_peer() -> None:
    lite = meta_offer(lambda ls: [ln for ln in ls if ln != "a=ice-lite"] + ["a=ice-lite"])
    assert lite.attribute("ice-lite") is None
    rtc = answer(lite)[1].webrtc
    assert rtc is not None and rtc.ice_lite
    _, full = answer(meta_offer(without("a=ice-lite")))
    assert full.webrtc is not None and not full.webrtc.ice_lite
    assert full.webrtc.ice_controlling  # we claim it anyway; ICE settles a conflict


@pytest.mark.parametrize(
    ("setup", "ours", "client"),
    [("actpass", "active", True), ("passive", "active", True), ("active", "passive", False)],
)
def test_setup_roles(setup: str, ours: str, client: bool) -> None:
    sdp, media = answer(meta_offer(replacing("a=setup:actpass", f"a=setup:{setup}")))
    assert sdp.media[0].attribute("setup") == ours
    assert media.webrtc is not None and media.webrtc.dtls_client is client


def test_several_fingerprints_unknown_ones_skipped() -> None:
    sha512 = ":".join(["EE"] * 64)
    extra = [f"a=fingerprint:md5 {':'.join(['AA'] * 16)}", f"a=fingerprint:SHA-512 {sha512}"]
    _, media = answer(meta_offer(lambda lines: lines + extra))
    assert media.webrtc is not None
    assert media.webrtc.fingerprints == (("sha-256", META_FP), ("sha-512", sha512))


def test_g711_in_a_webrtc_offer_when_allowed() -> None:
    offer = meta_offer(replacing("SAVPF 111 126", "SAVPF 8 111 126"))
    sdp, media = answer_whatsapp_offer(
        offer,
        local_address="203.0.113.5",
        local_port=40000,
        allow_g711=True,
        new_key=new_key_material,
        local_webrtc=LOCAL,
    )
    assert (media.codec, sdp.media[0].formats) == ("PCMA", ["8", "126"])
    assert media.webrtc is not None


# ---------------------------------------------------------------------------
# Refusals: what is missing, named


@pytest.mark.parametrize(
    ("prefixes", "named"),
    [
        (("a=ice-ufrag",), "a=ice-ufrag"),
        (("a=ice-pwd",), "a=ice-pwd"),
        (("a=fingerprint",), "a=fingerprint"),
        (("a=setup",), "a=setup"),
        (("a=candidate",), "a=candidate"),
        (("a=rtcp-mux",), "a=rtcp-mux"),
        (("a=ice-pwd", "a=fingerprint"), "a=ice-pwd, a=fingerprint"),
    ],
)
def test_webrtc_offer_missing_attributes_is_488(prefixes: tuple[str, ...], named: str) -> None:
    error = refusal(meta_offer(without(*prefixes)))
    assert error.reason == f"WebRTC offer without {named}"
    host, value = error.warning_header("gw.example.com")
    assert (host, value) == ("Warning", f'305 gw.example.com "WebRTC offer without {named}"')


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            replacing(f"a=ice-pwd:{META_PWD}", "a=ice-pwd:short"),
            "malformed a=ice-ufrag or a=ice-pwd",
        ),
        (replacing(f"a=ice-ufrag:{META_UFRAG}", "a=ice-ufrag:a_b!"), "malformed a=ice-ufrag"),
        (replacing("sha-256 ", "md5 "), "no usable a=fingerprint"),
        (replacing(META_FP, META_FP[:-3]), "no usable a=fingerprint"),
        (replacing("a=setup:actpass", "a=setup:holdconn"), "a=setup:holdconn"),
        (replacing("a=setup:actpass", "a=setup:bogus"), "a=setup:bogus"),
        (without("a=candidate:0"), "no UDP candidate for IPv4"),  # only the IPv6 one left
        (lambda ls: [ln.replace(" udp ", " tcp ") for ln in ls], "no UDP candidate for IPv4"),
        (lambda ls: [ln.replace(":0 1 udp", ":0 2 udp") for ln in ls], "no UDP candidate"),
        (replacing("a=candidate:0 1 udp 2122260223", "a=candidate:0 1 udp 0"), "no UDP cand"),
    ],
)
def test_unusable_webrtc_offer_is_488(edit: Callable[[list[str]], list[str]], reason: str) -> None:
    error = refusal(meta_offer(edit))
    assert error.reason.startswith("WebRTC offer ") and reason in error.reason
    assert META_PWD not in error.reason


def test_offer_of_ipv4_only_to_an_ipv6_socket_is_488() -> None:
    error = refusal(meta_offer(without("a=candidate:1")), local=LOCAL_V6, address="2001:db8::5")
    assert "no UDP candidate for IPv6" in error.reason


def test_sdes_only_number_refuses_a_dtls_offer() -> None:
    error = refusal(meta_offer(), mode="sdes")
    assert error.warning == 302
    assert error.reason == (
        f"number {NUMBER} accepts SDES only (srtp: sdes); Meta offered DTLS (UDP/TLS/RTP/SAVPF)"
    )


def test_dtls_only_number_refuses_an_sdes_offer() -> None:
    key = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40
    sdes = meta_offer(lambda ls: [ln.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVP") for ln in ls] + [key])
    error = refusal(sdes, mode="dtls")
    assert error.warning == 302
    assert error.reason == (
        f"number {NUMBER} accepts DTLS-SRTP only (srtp: dtls); Meta offered SDES (RTP/SAVP)"
    )
    # the same offer in auto mode is answered with SDES, without any ICE or DTLS lines
    sdp, media = answer(sdes, mode="auto")
    assert media.srtp is not None and media.webrtc is None
    text = sdp.serialize().decode()
    assert "a=crypto:1 " in text and not re.search(r"a=(ice|fingerprint|setup|candidate)", text)


def test_auto_without_local_webrtc_refuses_a_dtls_offer() -> None:
    error = refusal(meta_offer(), local=None)
    assert error.warning == 302 and "DTLS-SRTP is not available" in error.reason


def test_dtls_mode_without_local_webrtc_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="local_webrtc"):
        answer(meta_offer(), mode="dtls", local=None)


def test_dtls_mode_answers_the_dtls_offer() -> None:
    _, media = answer(meta_offer(), mode="dtls")
    assert media.webrtc is not None and media.srtp is None


@pytest.mark.parametrize(("mode", "chosen"), [("sdes", 1), ("dtls", 0), ("auto", 0)])
def test_offer_with_both_kinds_picks_the_modes(mode: SrtpMode, chosen: int) -> None:
    key = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40
    second = [
        "m=audio 3482 RTP/SAVP 111",
        f"c=IN IP4 {META_V4}",
        "a=rtpmap:111 opus/48000/2",
        key,
    ]
    sdp, media = answer(meta_offer(lambda lines: lines + second), mode=mode)
    assert [m.port for m in sdp.media] == [40000 if i == chosen else 0 for i in (0, 1)]
    assert (media.webrtc is not None) is (chosen == 0)


@pytest.mark.parametrize(
    ("mode", "wanted"),
    [
        ("sdes", "RTP/SAVP"),
        ("dtls", "UDP/TLS/RTP/SAVPF"),
        ("auto", "RTP/SAVP or UDP/TLS/RTP/SAVPF"),
    ],
)
def test_plain_rtp_offer_still_refused_in_every_mode(mode: SrtpMode, wanted: str) -> None:
    error = refusal(meta_offer(replacing("UDP/TLS/RTP/SAVPF", "RTP/AVP")), mode=mode)
    assert (error.warning, error.reason) == (302, f"no {wanted} audio stream offered")


def test_secrets_stay_out_of_reprs_and_logs() -> None:
    sdp, media = answer(meta_offer())
    for text in (repr(media), repr(media.webrtc), describe(media), repr(sdp), repr(LOCAL)):
        assert META_PWD not in text and OUR_PWD not in text
    assert META_UFRAG in repr(media.webrtc)
    wire = sdp.serialize().decode()
    assert OUR_PWD in wire
    redacted = redact_sdp_text(wire) + redact_sdp_text("\r\n".join(meta_lines()))
    assert OUR_PWD not in redacted and META_PWD not in redacted
    assert "a=ice-pwd:***" in redacted and f"a=ice-ufrag:{OUR_UFRAG}" in redacted


# ---------------------------------------------------------------------------
# Business-initiated calls in DTLS mode: our offer, Meta's answer


def our_offer(**kw: object) -> SessionDescription:
    offer, keys = make_whatsapp_offer(
        local_address="203.0.113.5",
        local_port=40000,
        new_key=new_key_material,
        local_webrtc=LOCAL,
        session_id=7,
        **kw,  # type: ignore[arg-type]
    )
    assert keys == {}  # the keys come from the DTLS handshake
    return offer


def meta_answer_lines(setup: str = "passive") -> list[str]:
    return [
        "v=0",
        f"o=- 99 2 IN IP4 {META_V4}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE audio",
        "a=ice-lite",
        "m=audio 3480 UDP/TLS/RTP/SAVPF 111 126",
        f"c=IN IP4 {META_V4}",
        f"a=candidate:0 1 udp 2122260223 {META_V4} 3480 typ host generation 0",
        f"a=candidate:1 1 udp 2113937151 {META_V6} 3480 typ host generation 0",
        f"a=ice-ufrag:{META_UFRAG}",
        f"a=ice-pwd:{META_PWD}",
        f"a=fingerprint:sha-256 {META_FP}",
        f"a=setup:{setup}",
        "a=mid:audio",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 maxaveragebitrate=20000;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000",
        "a=ptime:20",
        "a=ssrc:99 cname:WhatsAppAudioStream1",
    ]


def meta_answer(lines: list[str]) -> SessionDescription:
    return parse_sdp("\r\n".join(lines) + "\r\n")


def test_make_whatsapp_webrtc_offer() -> None:
    offer = our_offer()
    assert parse_sdp(offer.serialize()) == offer
    text = offer.serialize().decode()
    assert "ice-lite" not in text and "crypto" not in text
    assert "a=group:BUNDLE audio\r\n" in text
    (m,) = offer.media
    assert (m.port, m.proto, m.formats) == (40000, "UDP/TLS/RTP/SAVPF", ["111", "126"])
    assert m.rtpmaps()[111].is_("opus", 48000) and m.rtpmaps()[126].is_("telephone-event", 8000)
    assert (m.mid, m.rtcp_mux, m.direction(offer)) == ("audio", True, "sendrecv")
    assert m.attribute("setup") == "actpass"
    assert (m.attribute("ice-ufrag"), m.attribute("ice-pwd")) == (OUR_UFRAG, OUR_PWD)
    assert m.attribute("fingerprint") == f"sha-256 {OUR_FP}"
    assert parse_candidate(m.attribute("candidate") or "") == LOCAL.candidate()
    # Meta, answering it, reads our parameters (and would take the passive role)
    seen = remote_webrtc(offer, m, local_family=4, answer=False)
    assert (seen.ice_ufrag, seen.setup, seen.candidates) == (
        OUR_UFRAG,
        "actpass",
        (LOCAL.candidate(),),
    )


def test_make_whatsapp_webrtc_offer_with_g711() -> None:
    m = our_offer(g711=("PCMA",)).media[0]
    assert m.formats == ["8", "111", "126"] and m.proto == "UDP/TLS/RTP/SAVPF"


@pytest.mark.parametrize(("setup", "client"), [("passive", True), ("active", False)])
def test_accept_meta_webrtc_answer(setup: str, client: bool) -> None:
    offer = our_offer()
    media = accept_whatsapp_answer(offer, meta_answer(meta_answer_lines(setup)), {})
    assert media.srtp is None and media.webrtc is not None
    rtc = media.webrtc
    assert (rtc.ice_ufrag, rtc.ice_pwd, rtc.ice_lite, rtc.setup) == (
        META_UFRAG,
        META_PWD,
        True,
        setup,
    )
    assert (rtc.dtls_client, rtc.ice_controlling) == (client, True)
    assert [c.address for c in rtc.candidates] == [META_V4]  # our candidate is IPv4
    assert rtc.fingerprints == (("sha-256", META_FP),)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("opus", 111, 126)
    assert (media.remote_address, media.remote_port, media.rtcp_mux) == (META_V4, 3480, True)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (without("a=fingerprint"), "WebRTC answer without a=fingerprint"),
        (without("a=setup"), "WebRTC answer without a=setup"),
        (without("a=ice-ufrag", "a=candidate"), "WebRTC answer without a=ice-ufrag, a=candidate"),
        (replacing("a=setup:passive", "a=setup:actpass"), "a=setup:actpass; expected active"),
        (replacing("UDP/TLS/RTP/SAVPF", "RTP/SAVP"), "answer proto RTP/SAVP"),
        (without("a=candidate:0"), "no UDP candidate for IPv4"),
    ],
)
def test_accept_meta_webrtc_answer_refusals(
    edit: Callable[[list[str]], list[str]], reason: str
) -> None:
    with pytest.raises(NegotiationError) as info:
        accept_whatsapp_answer(our_offer(), meta_answer(edit(meta_answer_lines())), {})
    assert reason in info.value.reason


def test_sdes_offer_is_not_accepted_with_a_webrtc_answer() -> None:
    offer, keys = make_whatsapp_offer(
        local_address="203.0.113.5", local_port=40000, new_key=new_key_material
    )
    with pytest.raises(NegotiationError, match="answer proto UDP/TLS/RTP/SAVPF"):
        accept_whatsapp_answer(offer, meta_answer(meta_answer_lines()), keys)


def test_random_credentials_round_trip() -> None:
    """Any valid ufrag/pwd (the ICE agent makes them from secrets) survives the SDP."""
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    ufrag = "".join(chars[b % 64] for b in os.urandom(8))
    pwd = "".join(chars[b % 64] for b in os.urandom(24))
    local = LocalWebRtc(ufrag, pwd, ("sha-256", OUR_FP), "203.0.113.5", 40002)
    offer, _ = make_whatsapp_offer(
        local_address="203.0.113.5", local_port=40002, new_key=new_key_material, local_webrtc=local
    )
    back = remote_webrtc(parse_sdp(offer.serialize()), offer.media[0], local_family=4, answer=False)
    assert (back.ice_ufrag, back.ice_pwd) == (ufrag, pwd)
