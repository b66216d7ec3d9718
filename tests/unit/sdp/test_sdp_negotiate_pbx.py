"""Tests for gateway.sdp.negotiate on the PBX leg (RTP/AVP, G.711, hold, re-INVITEs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import pytest

from gateway.sdp.negotiate import (
    MediaParams,
    NegotiationError,
    accept_pbx_answer,
    answer_pbx_offer,
    describe,
    make_pbx_offer,
    reoffer,
)
from gateway.sdp.session import SessionDescription, parse_sdp


class _Local(TypedDict):
    local_address: str
    local_port: int


PBX: _Local = {"local_address": "10.0.0.2", "local_port": 20000}

ASTERISK_ANSWER = (
    "v=0\r\no=- 1001 3 IN IP4 192.0.2.10\r\ns=Asterisk\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 14200 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
    "a=maxptime:140\r\na=sendrecv\r\n"
)


def asterisk_offer(
    version: int = 1,
    formats: str = "0 8 101",
    direction: str = "sendrecv",
    address: str = "192.0.2.10",
    port: int = 14200,
) -> SessionDescription:
    return parse_sdp(
        f"v=0\r\no=- 2002 {version} IN IP4 192.0.2.10\r\ns=Asterisk\r\n"
        f"c=IN IP4 {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        f"a=maxptime:150\r\na={direction}\r\n"
    )


def test_make_pbx_offer() -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000, session_id=5)
    assert offer.serialize() == (
        b"v=0\r\no=- 5 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
        b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        b"a=sendrecv\r\na=rtcp-mux\r\n"
    )
    offer = make_pbx_offer(
        local_address="10.0.0.2", local_port=20000, codecs=("PCMA",), dtmf_pt=None, ptime=30
    )
    assert offer.media[0].formats == ["8"] and offer.media[0].ptime == 30
    assert offer.media[0].cryptos() == []
    for bad in ({"codecs": ()}, {"codecs": ("opus",)}, {"dtmf_pt": 8}, {"direction": "x"}):
        with pytest.raises(ValueError):
            make_pbx_offer(local_address="10.0.0.2", local_port=20000, **bad)


def test_accept_asterisk_answer() -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000)
    media = accept_pbx_answer(offer, parse_sdp(ASTERISK_ANSWER))
    assert media == MediaParams(
        remote_address="192.0.2.10",
        remote_port=14200,
        remote_rtcp_port=14201,
        codec="PCMU",
        payload_type=0,
        clock_rate=8000,
        channels=1,
        fmtp={},
        dtmf_payload_type=101,
        dtmf_clock_rate=8000,
        ptime=20,
        maxptime=140,
        direction="sendrecv",
        rtcp_mux=False,
        srtp=None,
    )
    assert describe(media) == "PCMU/8000 pt0 RTP -> 192.0.2.10:14200 rtcp 14201 dtmf101"
    media = accept_pbx_answer(offer, parse_sdp(ASTERISK_ANSWER + "a=rtcp-mux\r\n"))
    assert media.rtcp_mux and media.remote_rtcp_port == 14200


def test_accept_pbx_answer_first_common_format_and_dtmf_number() -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000)
    text = ASTERISK_ANSWER.replace("RTP/AVP 0 101", "RTP/AVP 9 8 0 96").replace(":101", ":96")
    media = accept_pbx_answer(offer, parse_sdp(text))
    assert (media.codec, media.payload_type) == ("PCMA", 8)
    assert (media.dtmf_payload_type, media.recv_dtmf_payload_type) == (96, 101)
    no_dtmf = ASTERISK_ANSWER.replace("RTP/AVP 0 101", "RTP/AVP 0")
    assert accept_pbx_answer(offer, parse_sdp(no_dtmf)).dtmf_payload_type is None


@pytest.mark.parametrize(
    ("change", "direction"),
    [
        (lambda t: t.replace("a=sendrecv", "a=sendonly"), "recvonly"),
        (lambda t: t.replace("a=sendrecv", "a=recvonly"), "sendonly"),
        (lambda t: t.replace("a=sendrecv", "a=inactive"), "inactive"),
        (lambda t: t.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"), "recvonly"),
        (
            lambda t: t.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0").replace(
                "a=sendrecv", "a=recvonly"
            ),
            "inactive",
        ),
    ],
)
def test_accept_pbx_answer_hold(change: Callable[[str], str], direction: str) -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000)
    media = accept_pbx_answer(offer, parse_sdp(change(ASTERISK_ANSWER)))
    assert media.direction == direction


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.replace("m=audio 14200", "m=audio 0"), "rejected"),
        (lambda t: t.replace("RTP/AVP", "RTP/SAVP"), "proto"),
        (lambda t: t.replace("RTP/AVP 0 101", "RTP/AVP 18 101"), "no codec"),
        (lambda t: t.replace("c=IN IP4 192.0.2.10\r\n", ""), "c= line"),
    ],
)
def test_accept_pbx_answer_rejects(change: Callable[[str], str], match: str) -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000)
    with pytest.raises(NegotiationError, match=match):
        accept_pbx_answer(offer, parse_sdp(change(ASTERISK_ANSWER)))


def test_accept_pbx_answer_our_hold_offer() -> None:
    offer = make_pbx_offer(local_address="10.0.0.2", local_port=20000, direction="sendonly")
    text = ASTERISK_ANSWER.replace("a=sendrecv", "a=recvonly")
    assert accept_pbx_answer(offer, parse_sdp(text)).direction == "sendonly"


def test_answer_pbx_invite_then_reinvites() -> None:
    first, media = answer_pbx_offer(asterisk_offer(), **PBX)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("PCMU", 0, 101)
    assert (media.remote_address, media.remote_port, media.direction) == (
        "192.0.2.10",
        14200,
        "sendrecv",
    )
    m = first.media[0]
    assert m.formats == ["0", "101"] and m.fmtp(101) == {"0-16": ""} and not m.rtcp_mux
    assert m.direction(first) == "sendrecv" and m.cryptos() == []
    assert first.origin.sess_version == 1

    # hold (sendonly): we answer recvonly, bump the version, keep the session id
    hold, held = answer_pbx_offer(
        asterisk_offer(2, direction="sendonly"), **PBX, current=media, previous=first
    )
    assert hold.media[0].direction(hold) == "recvonly" and held.direction == "recvonly"
    assert not held.may_send and held.may_receive
    assert hold.origin.sess_id == first.origin.sess_id
    assert hold.origin.sess_version == 2

    # inactive
    off, offp = answer_pbx_offer(
        asterisk_offer(3, direction="inactive"), **PBX, current=held, previous=hold
    )
    assert offp.direction == "inactive" and off.origin.sess_version == 3

    # unhold, at a new address and port
    back, backp = answer_pbx_offer(
        asterisk_offer(4, address="192.0.2.11", port=16000), **PBX, current=offp, previous=off
    )
    assert backp.direction == "sendrecv" and back.origin.sess_version == 4
    assert (backp.remote_address, backp.remote_port) == ("192.0.2.11", 16000)

    # an unchanged refresh keeps the SDP and its version (RFC 3264 section 8)
    same, samep = answer_pbx_offer(
        asterisk_offer(4, address="192.0.2.11", port=16000), **PBX, current=backp, previous=back
    )
    assert same == back and samep == backp

    # codec change: the PBX now offers PCMA only
    change, changep = answer_pbx_offer(
        asterisk_offer(5, formats="8 101"), **PBX, current=backp, previous=back
    )
    assert (changep.codec, changep.payload_type) == ("PCMA", 8)
    assert change.media[0].formats == ["8", "101"] and change.origin.sess_version == 5


def test_answer_pbx_offer_keeps_the_current_codec_while_offered() -> None:
    _, media = answer_pbx_offer(asterisk_offer(formats="8 101"), **PBX)
    assert media.codec == "PCMA"
    _, media = answer_pbx_offer(asterisk_offer(formats="0 8 101"), **PBX, current=media)
    assert media.codec == "PCMA"
    _, media = answer_pbx_offer(asterisk_offer(formats="0 8 101"), **PBX, codecs=("PCMA", "PCMU"))
    assert media.codec == "PCMA"


def test_answer_pbx_offer_rfc2543_hold_and_rtcp_mux() -> None:
    sdp, media = answer_pbx_offer(asterisk_offer(address="0.0.0.0"), **PBX)
    assert media.direction == "recvonly" and sdp.media[0].direction(sdp) == "recvonly"
    offer = asterisk_offer()
    offer.media[0].attributes.append(("rtcp-mux", None))
    sdp, media = answer_pbx_offer(offer, **PBX)
    assert sdp.media[0].rtcp_mux and media.rtcp_mux and media.remote_rtcp_port == 14200


def test_answer_pbx_offer_refusals() -> None:
    with pytest.raises(NegotiationError, match="PCMU, PCMA"):
        answer_pbx_offer(asterisk_offer(formats="9 101"), **PBX)
    with pytest.raises(NegotiationError) as info:
        answer_pbx_offer(asterisk_offer(port=0), **PBX)
    assert info.value.warning == 304
    srtp = parse_sdp(asterisk_offer().serialize().replace(b"RTP/AVP", b"RTP/SAVP"))
    with pytest.raises(NegotiationError) as info:
        answer_pbx_offer(srtp, **PBX)
    assert info.value.warning == 302
    _, media = answer_pbx_offer(asterisk_offer(), **PBX, dtmf_pt=None)
    assert media.dtmf_payload_type is None


def test_reoffer_bumps_the_version_of_a_copy() -> None:
    first = make_pbx_offer(local_address="10.0.0.2", local_port=20000)
    again = reoffer(first)
    assert again.origin.sess_version == first.origin.sess_version + 1
    assert again.origin.sess_id == first.origin.sess_id
    again.media[0].port = 1
    assert first.media[0].port == 20000
    assert accept_pbx_answer(again, parse_sdp(ASTERISK_ANSWER)).codec == "PCMU"


def test_describe_variants() -> None:
    media = MediaParams("2001:db8::1", 5000, 5001, "PCMA", 8, 8000, ptime=30, direction="inactive")
    assert describe(media) == "PCMA/8000 pt8 RTP -> [2001:db8::1]:5000 rtcp 5001 ptime30 inactive"


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("2001:0DB8:0:0::0a", "2001:db8::a"),
        ("192.0.2.10", "192.0.2.10"),
        ("pbx.example.com", "pbx.example.com"),
    ],
)
def test_peer_address_in_the_kernels_form(written: str, canonical: str) -> None:
    """The media source check compares the SDP address with what recvfrom reports:
    an IPv6 literal is compared in its compressed lower-case form."""
    text = asterisk_offer().serialize().decode()
    family = "IP6" if ":" in written else "IP4"
    text = text.replace("c=IN IP4 192.0.2.10", f"c=IN {family} {written}")
    _, media = answer_pbx_offer(parse_sdp(text), **PBX)
    assert media.remote_address == canonical
