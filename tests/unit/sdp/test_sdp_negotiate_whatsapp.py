"""Tests for gateway.sdp.negotiate on the WhatsApp leg (SDES-SRTP, Opus, G.711 passthrough)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TypedDict

import pytest

from gateway.media.srtp import new_key_material
from gateway.sdp.negotiate import (
    SUITE_KEY_LENGTHS,
    SUITE_PREFERENCE,
    MediaParams,
    NegotiationError,
    SrtpParams,
    accept_whatsapp_answer,
    answer_direction,
    answer_whatsapp_offer,
    describe,
    make_whatsapp_offer,
)
from gateway.sdp.session import Connection, SessionDescription, parse_sdp

META_KEY = os.urandom(30)  # a real AES_CM_128 master key || salt
META_KEY_B64 = base64.b64encode(META_KEY).decode()
OPUS_FMTP = (
    "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;"
    "useinbandfec=1"
)


class _Local(TypedDict):
    local_address: str
    local_port: int


LOCAL: _Local = {"local_address": "203.0.113.5", "local_port": 40000}


def meta_offer(
    crypto: str = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{META_KEY_B64}\n",
    formats: str = "111 126",
    proto: str = "RTP/SAVP",
    direction: str = "sendrecv",
    extra: str = "",
) -> SessionDescription:
    """Meta's offer on a user-initiated call (docs/whatsapp-sip.md section 6)."""
    return parse_sdp(
        "v=0\n"
        "o=- 1714576843 2 IN IP4 127.0.0.1\n"
        "s=-\n"
        "t=0 0\n"
        "a=group:BUNDLE audio\n"
        "a=msid-semantic: WMS WhatsAppAudioStream1\n"
        f"m=audio 3480 {proto} {formats}\n"
        "c=IN IP4 57.144.219.49\n"
        "a=rtcp:9 IN IP4 0.0.0.0\n"
        "a=rtcp-mux\n"
        f"a={direction}\n"
        "a=mid:audio\n"
        f"{crypto}"
        "a=rtpmap:111 opus/48000/2\n"
        f"a=fmtp:111 {OPUS_FMTP}\n"
        "a=rtpmap:126 telephone-event/8000\n"
        "a=ptime:20\n"
        "a=maxptime:20\n"
        "a=msid:WhatsAppAudioStream1 WhatsAppAudioStream1-audio\n"
        "a=ssrc:1823432671 cname:WhatsAppAudioStream1\n" + extra
    )


def answer(
    offer: SessionDescription, *, allow_g711: bool = False, **kw: object
) -> tuple[SessionDescription, MediaParams]:
    kwargs: dict[str, object] = {
        **LOCAL,
        "allow_g711": allow_g711,
        "new_key": new_key_material,
        **kw,
    }
    return answer_whatsapp_offer(offer, **kwargs)  # type: ignore[arg-type]


def crypto_line(tag: int, suite: str, key: bytes | None = None, tail: str = "") -> str:
    key = key if key is not None else os.urandom(SUITE_KEY_LENGTHS.get(suite, 30))
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}{tail}\n"


# ---------------------------------------------------------------------------
# Answering Meta's offer


def test_answer_to_meta_offer() -> None:
    offer = meta_offer()
    sdp, media = answer(offer)
    assert parse_sdp(sdp.serialize()) == sdp
    text = sdp.serialize().decode()
    assert "c=IN IP4 203.0.113.5\r\n" in text
    assert "a=group:BUNDLE audio\r\n" in text
    (m,) = sdp.media
    assert (m.port, m.proto, m.formats) == (40000, "RTP/SAVP", ["111", "126"])
    assert m.rtpmaps()[111].is_("opus", 48000) and m.rtpmaps()[111].channels == 2
    assert m.rtpmaps()[126].is_("telephone-event", 8000)
    assert m.fmtp(126) == {"0-16": ""}
    assert m.fmtp(111)["useinbandfec"] == "1" and m.fmtp(111)["minptime"] == "10"
    assert (m.ptime, m.mid, m.rtcp_mux, m.direction(sdp)) == (20, "audio", True, "sendrecv")
    (crypto,) = m.cryptos()
    assert (crypto.tag, crypto.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    local_key = crypto.key_params[0].key_bytes()
    assert len(local_key) == 30 and local_key != META_KEY
    assert media == MediaParams(
        remote_address="57.144.219.49",
        remote_port=3480,
        remote_rtcp_port=3480,
        codec="opus",
        payload_type=111,
        clock_rate=48000,
        channels=2,
        fmtp={
            "maxaveragebitrate": "20000",
            "maxplaybackrate": "16000",
            "minptime": "20",
            "sprop-maxcapturerate": "16000",
            "useinbandfec": "1",
        },
        dtmf_payload_type=126,
        dtmf_clock_rate=8000,
        ptime=20,
        maxptime=20,
        direction="sendrecv",
        rtcp_mux=True,
        srtp=SrtpParams("AES_CM_128_HMAC_SHA1_80", local_key, META_KEY, 1),
    )
    assert media.recv_payload_type == 111 and media.recv_dtmf_payload_type == 126
    assert media.may_send and media.may_receive
    assert sdp.origin.sess_id != offer.origin.sess_id


def test_answer_key_and_session_id_are_fresh_each_time() -> None:
    first, a = answer(meta_offer())
    second, b = answer(meta_offer())
    assert a.srtp is not None and b.srtp is not None
    assert a.srtp.local_key != b.srtp.local_key
    assert first.origin.sess_id != second.origin.sess_id


def test_answer_uses_the_new_key_callback_and_session_id() -> None:
    calls: list[str] = []

    def new_key(suite: str) -> bytes:
        calls.append(suite)
        return bytes(30)

    sdp, _ = answer(meta_offer(), new_key=new_key, session_id=42)
    assert calls == ["AES_CM_128_HMAC_SHA1_80"]
    assert sdp.origin.sess_id == "42"
    assert f"inline:{base64.b64encode(bytes(30)).decode()}" in sdp.serialize().decode()
    with pytest.raises(ValueError, match="returned 16 bytes"):
        answer(meta_offer(), new_key=lambda suite: bytes(16))


def test_answer_echoes_the_offer_tag() -> None:
    sdp, media = answer(meta_offer(crypto=crypto_line(7, "AES_CM_128_HMAC_SHA1_80", META_KEY)))
    assert sdp.media[0].cryptos()[0].tag == 7
    assert media.srtp is not None and media.srtp.tag == 7 and media.srtp.remote_key == META_KEY


@pytest.mark.parametrize(
    ("lines", "suite", "tag"),
    [
        ([(1, "AES_CM_128_HMAC_SHA1_32")], "AES_CM_128_HMAC_SHA1_32", 1),
        ([(1, "AEAD_AES_128_GCM")], "AEAD_AES_128_GCM", 1),
        ([(4, "AEAD_AES_256_GCM")], "AEAD_AES_256_GCM", 4),
        (
            [
                (1, "AEAD_AES_256_GCM"),
                (2, "AES_CM_128_HMAC_SHA1_32"),
                (3, "AES_CM_128_HMAC_SHA1_80"),
            ],
            "AES_CM_128_HMAC_SHA1_80",
            3,
        ),
        ([(1, "AEAD_AES_256_GCM"), (2, "AEAD_AES_128_GCM")], "AEAD_AES_128_GCM", 2),
        (
            [(1, "F8_128_HMAC_SHA1_80"), (2, "AES_CM_128_HMAC_SHA1_32")],
            "AES_CM_128_HMAC_SHA1_32",
            2,
        ),
        ([(9, "aes_cm_128_hmac_sha1_80")], "AES_CM_128_HMAC_SHA1_80", 9),  # ABNF: any case
    ],
)
def test_suite_choice(lines: list[tuple[int, str]], suite: str, tag: int) -> None:
    keys = {t: os.urandom(SUITE_KEY_LENGTHS.get(s.upper(), 30)) for t, s in lines}
    offer = meta_offer(crypto="".join(crypto_line(t, s, keys[t]) for t, s in lines))
    sdp, media = answer(offer)
    (crypto,) = sdp.media[0].cryptos()
    assert (crypto.tag, crypto.suite) == (tag, suite)
    assert len(crypto.key_params[0].key_bytes()) == SUITE_KEY_LENGTHS[suite]
    assert media.srtp is not None
    assert (media.srtp.suite, media.srtp.tag, media.srtp.remote_key) == (suite, tag, keys[tag])
    assert len(media.srtp.local_key) == SUITE_KEY_LENGTHS[suite]


def test_suite_table() -> None:
    assert SUITE_PREFERENCE[0] == "AES_CM_128_HMAC_SHA1_80"
    assert [SUITE_KEY_LENGTHS[s] for s in SUITE_PREFERENCE] == [30, 30, 28, 44]


@pytest.mark.parametrize(
    "crypto",
    [
        "",  # no crypto at all
        crypto_line(1, "AES_CM_128_HMAC_SHA1_80", tail="|2^31|1:4"),  # MKI only
        crypto_line(1, "AES_CM_128_HMAC_SHA1_80", tail="|1:1"),
        crypto_line(1, "F8_128_HMAC_SHA1_80"),  # unknown suite only
        crypto_line(1, "AES_CM_128_HMAC_SHA1_80", os.urandom(28)),  # wrong key length
        crypto_line(1, "AEAD_AES_256_GCM", os.urandom(30)),
        crypto_line(1, "AES_CM_128_HMAC_SHA1_80", tail=" UNENCRYPTED_SRTP"),  # RFC 4568 6.3
        crypto_line(1, "AES_CM_128_HMAC_SHA1_80", tail=" KDR=10"),
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:not!base64\n",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 mikey:AAAA\n",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{META_KEY_B64};inline:{META_KEY_B64}\n",
    ],
)
def test_no_acceptable_crypto_is_488(crypto: str) -> None:
    with pytest.raises(NegotiationError) as info:
        answer(meta_offer(crypto=crypto))
    assert info.value.status == 488
    assert "crypto" in info.value.reason


def test_acceptable_session_params_and_lifetime() -> None:
    line = crypto_line(1, "AES_CM_128_HMAC_SHA1_80", META_KEY, "|2^31 WSH=64 FEC_ORDER=FEC_SRTP")
    _, media = answer(meta_offer(crypto=line))
    assert media.srtp is not None and media.srtp.remote_key == META_KEY


def test_mki_line_is_skipped_for_a_plain_one() -> None:
    lines = crypto_line(1, "AES_CM_128_HMAC_SHA1_80", tail="|1:4") + crypto_line(
        2, "AES_CM_128_HMAC_SHA1_32", META_KEY
    )
    _, media = answer(meta_offer(crypto=lines))
    assert media.srtp is not None and (media.srtp.tag, media.srtp.remote_key) == (2, META_KEY)


def test_plain_rtp_offer_is_488() -> None:
    with pytest.raises(NegotiationError) as info:
        answer(meta_offer(proto="RTP/AVP"))
    assert (info.value.status, info.value.warning) == (488, 302)
    with pytest.raises(NegotiationError) as info:
        answer(meta_offer(proto="UDP/TLS/RTP/SAVPF"))
    assert info.value.status == 488


def test_offer_without_audio_is_488() -> None:
    offer = meta_offer()
    offer.media[0].media = "video"
    with pytest.raises(NegotiationError) as info:
        answer(offer)
    assert info.value.warning == 304


def test_offer_without_a_usable_codec_is_488() -> None:
    with pytest.raises(NegotiationError, match="codec"):
        answer(meta_offer(formats="9 126"))
    with pytest.raises(NegotiationError, match="codec"):
        answer(meta_offer(formats="8 0 126"), allow_g711=False)


@pytest.mark.parametrize(
    ("formats", "order", "codec", "pt"),
    [
        ("111 8 0 126", ("PCMA", "PCMU"), "PCMA", 8),
        ("111 8 0 126", ("PCMU", "PCMA"), "PCMU", 0),
        ("111 0 126", ("PCMA", "PCMU"), "PCMU", 0),
        ("111 126", ("PCMA", "PCMU"), "opus", 111),
        ("0 126", ("pcma", "pcmu"), "PCMU", 0),
    ],
)
def test_g711_passthrough_when_allowed(
    formats: str, order: tuple[str, ...], codec: str, pt: int
) -> None:
    sdp, media = answer(meta_offer(formats=formats), allow_g711=True, g711_order=order)
    assert (media.codec, media.payload_type) == (codec, pt)
    assert sdp.media[0].formats == [str(pt), "126"]
    if codec != "opus":
        assert media.clock_rate == 8000 and media.channels == 1 and media.fmtp == {}
        assert sdp.media[0].fmtp(pt) == {}
        assert f"a=rtpmap:{pt} {codec}/8000\r\n" in sdp.serialize().decode()


def test_g711_offered_but_not_allowed_gives_opus() -> None:
    _, media = answer(meta_offer(formats="8 0 111 126"), allow_g711=False)
    assert (media.codec, media.payload_type, media.clock_rate) == ("opus", 111, 48000)


def test_bad_g711_order_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        answer(meta_offer(), allow_g711=True, g711_order=("G729",))


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_direction_mapping(offered: str, answered: str) -> None:
    assert answer_direction(offered) == answered
    sdp, media = answer(meta_offer(direction=offered))
    assert sdp.media[0].direction(sdp) == answered
    assert media.direction == answered


def test_session_level_direction_applies() -> None:
    offer = meta_offer()
    offer.media[0].attributes.remove(("sendrecv", None))
    offer.attributes.append(("sendonly", None))
    _, media = answer(offer)
    assert media.direction == "recvonly" and not media.may_send


def test_no_mid_no_bundle_and_no_rtcp_mux() -> None:
    offer = meta_offer()
    offer.attributes = []
    offer.media[0].attributes = [
        a for a in offer.media[0].attributes if a[0] not in ("mid", "rtcp-mux", "rtcp")
    ]
    sdp, media = answer(offer)
    assert sdp.attributes == [] and sdp.media[0].mid is None and not sdp.media[0].rtcp_mux
    assert not media.rtcp_mux and media.remote_rtcp_port == 3481
    offer.media[0].attributes.append(("rtcp", "5000 IN IP4 57.144.219.49"))
    assert answer(offer)[1].remote_rtcp_port == 5000


def test_mid_without_bundle_group() -> None:
    offer = meta_offer()
    offer.attributes = []
    sdp, _ = answer(offer)
    assert sdp.media[0].mid == "audio" and sdp.groups() == []


def test_other_streams_are_rejected_with_port_zero() -> None:
    offer = meta_offer()
    offer = parse_sdp(
        offer.serialize().decode().replace("m=audio", "m=video 9 RTP/SAVP 96\r\nm=audio", 1)
    )
    sdp, media = answer(offer)
    assert [(m.media, m.port) for m in sdp.media] == [("video", 0), ("audio", 40000)]
    assert sdp.media[0].formats == ["96"] and sdp.media[0].attributes == []
    assert media.remote_port == 3480


def test_savp_chosen_over_an_avp_alternative() -> None:
    text = meta_offer().serialize().decode()
    offer = parse_sdp(text.replace("m=audio", "m=audio 4000 RTP/AVP 0\r\nm=audio", 1))
    sdp, _ = answer(offer)
    assert [m.port for m in sdp.media] == [0, 40000]


def test_missing_connection_is_488() -> None:
    offer = meta_offer()
    offer.media[0].connection = None
    with pytest.raises(NegotiationError, match="c= line"):
        answer(offer)


def test_hold_address_in_offer_means_we_do_not_send() -> None:
    offer = meta_offer()
    offer.media[0].connection = Connection("IN", "IP4", "0.0.0.0")
    sdp, media = answer(offer)
    assert media.direction == "recvonly"
    assert sdp.media[0].direction(sdp) == "recvonly"


def test_ipv6_local_address() -> None:
    sdp, _ = answer(meta_offer(), local_address="2001:db8::5")
    assert sdp.connection == Connection("IN", "IP6", "2001:db8::5")
    assert sdp.origin.addrtype == "IP6"


def test_bad_local_arguments() -> None:
    with pytest.raises(ValueError):
        answer(meta_offer(), local_port=0)
    with pytest.raises(ValueError):
        answer(meta_offer(), local_address="")


def test_ptime_follows_the_remote_within_limits() -> None:
    offer = meta_offer()
    attrs = offer.media[0].attributes
    attrs[attrs.index(("ptime", "20"))] = ("ptime", "40")
    attrs[attrs.index(("maxptime", "20"))] = ("maxptime", "60")
    assert answer(offer)[1].ptime == 40
    attrs[attrs.index(("ptime", "40"))] = ("ptime", "30")  # not an Opus frame size
    assert answer(offer)[1].ptime == 20
    attrs[attrs.index(("maxptime", "60"))] = ("maxptime", "10")
    assert answer(offer)[1].ptime == 10


# ---------------------------------------------------------------------------
# Business-initiated calls: our offer, Meta's answer


def meta_answer(offer: SessionDescription, tag: int, key: bytes, formats: str = "111 126") -> str:
    suite = {c.tag: c.suite for c in offer.media[0].cryptos()}[tag]
    return (
        "v=0\r\no=- 99 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        f"m=audio 3480 RTP/SAVP {formats}\r\nc=IN IP4 57.144.219.49\r\n"
        "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\na=sendrecv\r\n"
        f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}\r\n"
        f"a=rtpmap:111 opus/48000/2\r\na=fmtp:111 {OPUS_FMTP}\r\n"
        "a=rtpmap:126 telephone-event/8000\r\na=ptime:20\r\n"
    )


def test_make_whatsapp_offer() -> None:
    offer, keys = make_whatsapp_offer(**LOCAL, new_key=new_key_material, session_id=7)
    assert parse_sdp(offer.serialize()) == offer
    (m,) = offer.media
    assert (m.port, m.proto, m.formats) == (40000, "RTP/SAVP", ["111", "126"])
    assert m.rtcp_mux and m.ptime == 20 and m.direction(offer) == "sendrecv"
    assert m.fmtp(126) == {"0-16": ""}
    assert [(c.tag, c.suite) for c in m.cryptos()] == [
        (1, "AES_CM_128_HMAC_SHA1_80"),
        (2, "AES_CM_128_HMAC_SHA1_32"),
    ]
    assert {c.tag: c.key_params[0].key_bytes() for c in m.cryptos()} == keys
    assert keys[1] != keys[2] and all(len(k) == 30 for k in keys.values())
    assert offer.origin.sess_id == "7"


def test_make_whatsapp_offer_with_g711_lists_it_first() -> None:
    offer, keys = make_whatsapp_offer(
        **LOCAL,
        g711=("PCMA", "PCMU"),
        opus_pt=100,
        dtmf_pt=101,
        new_key=new_key_material,
        suites=SUITE_PREFERENCE,
    )
    m = offer.media[0]
    assert m.formats == ["8", "0", "100", "101"]
    assert [c.tag for c in m.cryptos()] == [1, 2, 3, 4]
    assert [len(keys[t]) for t in (1, 2, 3, 4)] == [30, 30, 28, 44]
    for bad in ({"opus_pt": 8}, {"dtmf_pt": 111}, {"suites": ()}, {"suites": ("NULL",)}):
        with pytest.raises(ValueError):
            make_whatsapp_offer(**LOCAL, new_key=new_key_material, **bad)


def test_accept_whatsapp_answer() -> None:
    offer, keys = make_whatsapp_offer(**LOCAL, new_key=new_key_material)
    remote_key = os.urandom(30)
    media = accept_whatsapp_answer(offer, parse_sdp(meta_answer(offer, 2, remote_key)), keys)
    assert media.srtp == SrtpParams("AES_CM_128_HMAC_SHA1_32", keys[2], remote_key, 2)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("opus", 111, 126)
    assert media.fmtp["maxaveragebitrate"] == "20000"
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "57.144.219.49",
        3480,
        3480,
    )
    assert media.rtcp_mux and media.direction == "sendrecv"
    assert describe(media) == (
        "opus/48000 pt111 SRTP AES_CM_128_HMAC_SHA1_32 -> 57.144.219.49:3480 rtcp-mux dtmf126"
    )


def test_accept_whatsapp_answer_g711_and_other_payload_numbers() -> None:
    offer, keys = make_whatsapp_offer(**LOCAL, g711=("PCMA",), new_key=new_key_material)
    media = accept_whatsapp_answer(
        offer, parse_sdp(meta_answer(offer, 1, bytes(30), "8 126")), keys
    )
    assert (media.codec, media.payload_type, media.clock_rate) == ("PCMA", 8, 8000)
    text = meta_answer(offer, 1, bytes(30), "112 127").replace(":111 ", ":112 ")
    text = text.replace(":126 ", ":127 ")
    media = accept_whatsapp_answer(offer, parse_sdp(text), keys)
    assert (media.payload_type, media.recv_payload_type) == (112, 111)
    assert (media.dtmf_payload_type, media.recv_dtmf_payload_type) == (127, 126)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("a=crypto:1 ", "a=crypto:5 "),  # a tag we did not offer
        lambda t: t.replace("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"),  # wrong suite
        lambda t: t.replace("m=audio 3480", "m=audio 0"),  # rejected
        lambda t: t.replace("RTP/SAVP", "RTP/AVP"),
        lambda t: t.replace("111 126", "9 126"),  # no codec we offered
        lambda t: t + "m=video 0 RTP/SAVP 96\r\n",  # m= line count differs
        lambda t: "\r\n".join(ln for ln in t.split("\r\n") if not ln.startswith("a=crypto")),
    ],
)
def test_accept_whatsapp_answer_rejects(mutate: Callable[[str], str]) -> None:
    offer, keys = make_whatsapp_offer(**LOCAL, new_key=new_key_material)
    with pytest.raises(NegotiationError):
        accept_whatsapp_answer(offer, parse_sdp(mutate(meta_answer(offer, 1, bytes(30)))), keys)


# ---------------------------------------------------------------------------
# Nothing secret in what may be logged


def test_keys_never_appear_in_repr_or_describe() -> None:
    sdp, media = answer(meta_offer())
    assert media.srtp is not None
    local_b64 = base64.b64encode(media.srtp.local_key).decode()
    for text in (repr(media), str(media), repr(media.srtp), describe(media), repr(sdp), str(sdp)):
        assert META_KEY_B64 not in text and local_b64 not in text
        assert repr(META_KEY) not in text and repr(media.srtp.local_key) not in text
    assert local_b64 in sdp.serialize().decode()
    assert describe(media) == (
        "opus/48000 pt111 SRTP AES_CM_128_HMAC_SHA1_80 -> 57.144.219.49:3480 rtcp-mux dtmf126"
    )
