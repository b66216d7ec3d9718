"""SDES-keyed SRTP/SRTCP: every supported suite, tamper and replay, inline keys."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.rtcp import build_report
from gateway.media.rtp import RtpSender, parse_rtp
from gateway.media.srtp import (
    SUITES,
    SrtpAuthError,
    SrtpContext,
    SrtpError,
    SrtpKeyError,
    decode_inline,
    encode_inline,
    material_length,
    new_key_material,
)

EXPECTED_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": (30, 10),  # key||salt octets, SRTP tag octets
    "AES_CM_128_HMAC_SHA1_32": (30, 4),
    "AEAD_AES_128_GCM": (28, 16),
    "AEAD_AES_256_GCM": (44, 16),
}


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    a, b = new_key_material(suite), new_key_material(suite)
    return SrtpContext(suite, a, b), SrtpContext(suite, b, a)


def test_supported_suites() -> None:
    assert set(SUITES) == set(EXPECTED_LENGTHS)
    for suite, (length, _) in EXPECTED_LENGTHS.items():
        assert material_length(suite) == length
        assert len(new_key_material(suite)) == length
    suite = "AES_CM_128_HMAC_SHA1_80"
    assert new_key_material(suite) != new_key_material(suite)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_round_trip_both_directions(suite: str) -> None:
    gateway, meta = pair(suite)
    sender = RtpSender(48000)
    for i in range(20):
        rtp = sender.next_packet(111, bytes([i]) * 60, 960)
        srtp = gateway.protect(rtp)
        assert len(srtp) == len(rtp) + EXPECTED_LENGTHS[suite][1]
        assert srtp[:12] == rtp[:12] and srtp[12:72] != rtp[12:]  # header clear, payload not
        assert meta.unprotect(srtp) == rtp
    back = RtpSender(48000)
    rtp = back.next_packet(111, b"reply", 960)
    assert gateway.unprotect(meta.protect(rtp)) == rtp
    assert gateway.auth_failures == gateway.replays == meta.auth_failures == meta.replays == 0


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_srtcp_round_trip(suite: str) -> None:
    gateway, meta = pair(suite)
    sender = RtpSender(48000)
    sender.next_packet(111, b"x", 960)
    for now in (1.0, 6.0):
        report = build_report(sender, None, now, "gw")
        srtcp = gateway.protect_rtcp(report)
        assert len(srtcp) > len(report) + 4  # E flag + index, then the tag
        assert meta.unprotect_rtcp(srtcp) == report


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_tampered_packet_fails_auth(suite: str) -> None:
    gateway, meta = pair(suite)
    sender = RtpSender(48000)
    srtp = bytearray(gateway.protect(sender.next_packet(111, b"payload" * 8, 960)))
    srtp[20] ^= 0x01
    with pytest.raises(SrtpAuthError) as info:
        meta.unprotect(bytes(srtp))
    assert not info.value.replay
    assert meta.auth_failures == 1
    # The untouched packet still authenticates afterwards.
    srtp[20] ^= 0x01
    assert parse_rtp(meta.unprotect(bytes(srtp))).payload == b"payload" * 8


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_replay_rejected(suite: str) -> None:
    gateway, meta = pair(suite)
    sender = RtpSender(48000)
    srtp = gateway.protect(sender.next_packet(111, b"once", 960))
    meta.unprotect(srtp)
    with pytest.raises(SrtpAuthError) as info:
        meta.unprotect(srtp)
    assert info.value.replay
    assert meta.replays == 1 and meta.auth_failures == 0


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_srtcp_tamper_and_replay(suite: str) -> None:
    gateway, meta = pair(suite)
    sender = RtpSender(8000)
    sender.next_packet(0, b"x", 160)
    srtcp = gateway.protect_rtcp(build_report(sender, None, 1.0, "gw"))
    bad = bytearray(srtcp)
    bad[10] ^= 0x80
    with pytest.raises(SrtpAuthError):
        meta.unprotect_rtcp(bytes(bad))
    meta.unprotect_rtcp(srtcp)
    with pytest.raises(SrtpAuthError) as info:
        meta.unprotect_rtcp(srtcp)
    assert info.value.replay
    assert meta.auth_failures == 1 and meta.replays == 1


def test_wrong_key_fails_auth() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    gateway, _ = pair(suite)
    stranger, _ = pair(suite)
    srtp = gateway.protect(RtpSender(8000).next_packet(0, b"x" * 160, 160))
    with pytest.raises(SrtpAuthError):
        stranger.unprotect(srtp)


@settings(max_examples=200)
@given(st.binary(max_size=1600))
def test_unprotect_raises_only_auth_error(data: bytes) -> None:
    _, meta = pair("AES_CM_128_HMAC_SHA1_80")
    for unprotect in (meta.unprotect, meta.unprotect_rtcp):
        with pytest.raises(SrtpAuthError):
            unprotect(data)


def test_protect_misuse_is_srtp_error_not_auth_error() -> None:
    gateway, _ = pair("AES_CM_128_HMAC_SHA1_80")
    rtp = RtpSender(8000).next_packet(0, b"x", 160)
    gateway.protect(rtp)
    with pytest.raises(SrtpError) as info:
        gateway.protect(rtp)  # same sequence number twice
    assert not isinstance(info.value, SrtpAuthError)
    with pytest.raises(SrtpError):
        gateway.protect(rtp[:12] + bytes(1600))


def test_context_rejects_bad_material() -> None:
    with pytest.raises(SrtpKeyError, match="30 octets"):
        SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes(29), bytes(30))
    with pytest.raises(SrtpKeyError, match="unsupported"):
        SrtpContext("AES_256_CM_HMAC_SHA1_80", bytes(46), bytes(46))
    with pytest.raises(SrtpKeyError):
        new_key_material("F8_128_HMAC_SHA1_80")


# --------------------------------------------------------------- inline keys (RFC 4568 6.1)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_inline_round_trip(suite: str) -> None:
    material = new_key_material(suite)
    text = encode_inline(material, suite)
    assert text.startswith("inline:")
    assert base64.b64decode(text[7:]) == material
    assert decode_inline(text, suite) == material
    assert decode_inline(text) == material


def test_inline_forms() -> None:
    material = bytes(range(30))
    key = base64.b64encode(material).decode()
    suite = "AES_CM_128_HMAC_SHA1_80"
    assert decode_inline(f"inline:{key}|2^31", suite) == material
    assert decode_inline(f"inline:{key}|2^20", suite) == material
    assert decode_inline(f"INLINE:{key}|1048576", suite) == material
    assert decode_inline(f"  inline:{key.rstrip('=')}  ", suite) == material  # padding dropped
    with pytest.raises(SrtpKeyError, match="MKI"):
        decode_inline(f"inline:{key}|2^31|1:1", suite)
    with pytest.raises(SrtpKeyError, match="MKI"):
        decode_inline(f"inline:{key}|1:4", suite)
    with pytest.raises(SrtpKeyError, match="MKI"):
        decode_inline(f"inline:{key}|2^31|1:1;inline:{key}|2^31|2:1", suite)


@pytest.mark.parametrize(
    ("text", "suite", "message"),
    [
        ("inline:" + base64.b64encode(bytes(29)).decode(), "AES_CM_128_HMAC_SHA1_80", "30"),
        ("inline:" + base64.b64encode(bytes(30)).decode(), "AEAD_AES_128_GCM", "28"),
        ("inline:" + base64.b64encode(bytes(30)).decode(), "AEAD_AES_256_GCM", "44"),
        ("inline:" + base64.b64encode(bytes(31)).decode(), None, "no supported suite"),
        ("inline:not*base64!", None, "base64"),
        ("key:" + base64.b64encode(bytes(30)).decode(), None, "inline"),
        (base64.b64encode(bytes(30)).decode(), None, "inline"),
        ("inline:" + base64.b64encode(bytes(30)).decode() + "|forever", None, "lifetime"),
        ("inline:" + base64.b64encode(bytes(30)).decode() + "|2^31|1:1|x", None, "too many"),
    ],
)
def test_inline_errors(text: str, suite: str | None, message: str) -> None:
    with pytest.raises(SrtpKeyError, match=message):
        decode_inline(text, suite)
    assert issubclass(SrtpKeyError, ValueError)


def test_encode_inline_checks_length() -> None:
    with pytest.raises(SrtpKeyError):
        encode_inline(bytes(29))
    with pytest.raises(SrtpKeyError):
        encode_inline(bytes(30), "AEAD_AES_128_GCM")
