"""Tests for gateway.sdp.session and gateway.sdp.crypto (SDP model, parser, serialiser)."""

from __future__ import annotations

import base64
import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sdp.crypto import Crypto, KeyParam, parse_crypto, redact_attribute, redact_sdp_text
from gateway.sdp.session import (
    MAX_SDP_SIZE,
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RtcpAttribute,
    RtpMap,
    SdpError,
    SessionDescription,
    Ssrc,
    Timing,
    parse_sdp,
)

KEY = bytes(range(1, 31))  # 30 bytes: AES_CM_128 master key || salt
KEY_B64 = base64.b64encode(KEY).decode()

OPUS_FMTP = (
    "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;"
    "useinbandfec=1"
)
META_OFFER = f"""v=0
o=- 1714576843 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE audio
a=msid-semantic: WMS WhatsAppAudioStream1
m=audio 3480 RTP/SAVP 111 126
c=IN IP4 57.144.219.49
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=sendrecv
a=mid:audio
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}
a=rtpmap:111 opus/48000/2
a=fmtp:111 {OPUS_FMTP}
a=rtpmap:126 telephone-event/8000
a=ptime:20
a=maxptime:20
a=msid:WhatsAppAudioStream1 WhatsAppAudioStream1-audio
a=ssrc:1823432671 cname:WhatsAppAudioStream1
"""


def _sdp(body: str) -> str:
    return "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n" + body


# ---------------------------------------------------------------------------
# Parsing Meta's offer and the helpers


def test_meta_offer_parses_with_every_helper() -> None:
    sdp = parse_sdp(META_OFFER)
    assert sdp.origin == Origin("-", "1714576843", 2, "IN", "IP4", "127.0.0.1")
    assert sdp.session_name == "-"
    assert sdp.timing == [Timing(0, 0)]
    assert sdp.connection is None
    assert sdp.groups() == [("BUNDLE", ["audio"])]
    (m,) = sdp.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 3480, "RTP/SAVP", ["111", "126"])
    assert m.rtpmaps() == {
        111: RtpMap(111, "opus", 48000, 2),
        126: RtpMap(126, "telephone-event", 8000, 1),
    }
    assert m.fmtp(111) == {
        "maxaveragebitrate": "20000",
        "maxplaybackrate": "16000",
        "minptime": "20",
        "sprop-maxcapturerate": "16000",
        "useinbandfec": "1",
    }
    assert m.fmtp(126) == {}
    assert m.direction(sdp) == "sendrecv"
    assert m.rtcp_mux
    assert m.rtcp == RtcpAttribute(9, "IN", "IP4", "0.0.0.0")
    assert (m.ptime, m.maxptime, m.mid) == (20, 20, "audio")
    assert m.ssrcs() == [Ssrc(1823432671, "cname", "WhatsAppAudioStream1")]
    assert m.effective_connection(sdp) == Connection("IN", "IP4", "57.144.219.49")
    (crypto,) = m.cryptos()
    assert (crypto.tag, crypto.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    assert crypto.key_params[0].key_bytes() == KEY
    assert m.attribute("msid") == "WhatsAppAudioStream1 WhatsAppAudioStream1-audio"
    assert m.attribute("rtcp-mux") == ""
    assert m.attribute("nope") is None


def test_crlf_lf_and_trailing_blank_lines_are_equivalent() -> None:
    lf = parse_sdp(META_OFFER)
    assert parse_sdp(META_OFFER.replace("\n", "\r\n")) == lf
    assert parse_sdp(META_OFFER.encode() + b"\r\n\r\n") == lf
    assert parse_sdp(META_OFFER.rstrip("\n")) == lf  # no final line end


def test_static_payload_types_are_implied_and_rtpmap_wins() -> None:
    sdp = parse_sdp(
        _sdp(
            "m=audio 4000 RTP/AVP 0 8 18 101 96 abc\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:18 foo/16000\r\n"
            "a=rtpmap:55 bar/8000\r\n"
        )
    )
    maps = sdp.media[0].rtpmaps()
    assert maps[0] == RtpMap(0, "PCMU", 8000)
    assert maps[8] == RtpMap(8, "PCMA", 8000)
    assert maps[18] == RtpMap(18, "foo", 16000)
    assert maps[101].is_("TELEPHONE-EVENT", 8000)
    assert 96 not in maps and 55 not in maps  # no rtpmap; not in the m= line
    assert sdp.media[0].payload_types() == [0, 8, 18, 101, 96]


def test_fmtp_bare_items_and_case() -> None:
    sdp = parse_sdp(
        _sdp(
            "m=audio 4000 RTP/AVP 101 111\r\na=fmtp:101 0-16\r\n"
            "a=fmtp:111 MaxAverageBitrate = 12000 ; useinbandfec=1;\r\n"
        )
    )
    m = sdp.media[0]
    assert m.fmtp(101) == {"0-16": ""}
    assert m.fmtp(111) == {"maxaveragebitrate": "12000", "useinbandfec": "1"}
    assert m.fmtp_value(101) == "0-16"
    assert m.fmtp(0) == {}


@pytest.mark.parametrize(
    ("session_attr", "media_attr", "expected"),
    [
        ("", "", "sendrecv"),
        ("a=sendonly\r\n", "", "sendonly"),
        ("a=sendonly\r\n", "a=recvonly\r\n", "recvonly"),
        ("", "a=inactive\r\n", "inactive"),
    ],
)
def test_direction_media_level_then_session_level(
    session_attr: str, media_attr: str, expected: str
) -> None:
    sdp = parse_sdp(_sdp(session_attr + "m=audio 4000 RTP/AVP 0\r\n" + media_attr))
    assert sdp.media[0].direction(sdp) == expected
    assert sdp.media[0].direction() == (media_attr[2:-2] or "sendrecv")


def test_session_connection_is_the_fallback() -> None:
    sdp = parse_sdp(
        _sdp(
            "c=IN IP4 192.0.2.7\r\nm=audio 4000 RTP/AVP 0\r\n"
            "m=audio 4002 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\n"
        )
    )
    assert sdp.media[0].effective_connection(sdp) == Connection("IN", "IP4", "192.0.2.7")
    assert sdp.media[1].effective_connection(sdp) == Connection("IN", "IP6", "2001:db8::1")
    assert sdp.media[0].effective_connection() is None


def test_multicast_and_fqdn_connections() -> None:
    sdp = parse_sdp(
        _sdp(
            "c=IN IP4 224.2.1.1/127/3\r\nm=audio 4000/2 RTP/AVP 0\r\n"
            "c=IN IP6 ff15::101/3\r\nm=audio 0 RTP/AVP 0\r\n"
            "c=IN IP4 media.example.com\r\n"
        )
    )
    assert sdp.connection == Connection("IN", "IP4", "224.2.1.1", 127, 3)
    assert sdp.media[0].connection == Connection("IN", "IP6", "ff15::101", None, 3)
    assert sdp.media[0].port_count == 2
    assert sdp.media[1].connection == Connection("IN", "IP4", "media.example.com")
    assert parse_sdp(sdp.serialize()) == sdp
    assert b"c=IN IP4 224.2.1.1/127/3\r\n" in sdp.serialize()


def test_ptime_rtcp_and_ssrc_are_liberal() -> None:
    sdp = parse_sdp(
        _sdp(
            "m=audio 4000 RTP/AVP 0\r\na=ptime:20.0\r\na=maxptime:x\r\n"
            "a=rtcp:4001\r\na=ssrc:bad cname:x\r\na=ssrc:5 label\r\n"
        )
    )
    m = sdp.media[0]
    assert (m.ptime, m.maxptime, m.rtcp) == (20, None, RtcpAttribute(4001))
    assert m.ssrcs() == [Ssrc(5, "label", None)]
    assert not m.rtcp_mux and m.mid is None


def test_unknown_attributes_keep_order_and_values() -> None:
    body = "m=audio 4000 RTP/AVP 0\r\na=x-foo\r\na=x-bar:\r\na=x-baz: a:b \r\na= spaced :v\r\n"
    m = parse_sdp(_sdp(body)).media[0]
    assert m.attributes == [("x-foo", None), ("x-bar", ""), ("x-baz", " a:b "), ("spaced", "v")]


# ---------------------------------------------------------------------------
# a=crypto (RFC 4568 section 9.1)


def test_crypto_with_lifetime_mki_several_keys_and_session_params() -> None:
    value = (
        f"5 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}|2^20|1:4;inline:{KEY_B64}|2:4 "
        "FEC_ORDER=FEC_SRTP WSH=64"
    )
    crypto = parse_crypto(value)
    assert crypto.tag == 5 and crypto.suite == "AES_CM_128_HMAC_SHA1_32"
    assert crypto.key_params == (
        KeyParam("inline", KEY_B64, "2^20", "1:4"),
        KeyParam("inline", KEY_B64, None, "2:4"),
    )
    assert crypto.session_params == ("FEC_ORDER=FEC_SRTP", "WSH=64")
    assert crypto.to_value() == value
    assert parse_crypto("1 X inline:QUJD|1048576").key_params[0].lifetime == "1048576"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1 AES_CM_128_HMAC_SHA1_80",
        "x AES_CM_128_HMAC_SHA1_80 inline:QUJD",
        "1234567890 AES_CM_128_HMAC_SHA1_80 inline:QUJD",
        "1 AES_CM_128_HMAC_SHA1_80 inline:",
        "1 AES_CM_128_HMAC_SHA1_80 inline:QU!D",
        "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD|1:4|2^20",
        "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD|2^20|2^20",
        "1 AES_CM_128_HMAC_SHA1_80 QUJD",
    ],
)
def test_malformed_crypto_is_rejected_and_skipped(value: str) -> None:
    with pytest.raises(ValueError):
        parse_crypto(value)
    sdp = parse_sdp(
        _sdp(
            f"m=audio 4000 RTP/SAVP 0\r\na=crypto:{value}\r\n"
            f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}\r\n"
        )
    )
    assert [c.tag for c in sdp.media[0].cryptos()] == [2]


def test_key_bytes_accepts_missing_padding() -> None:
    key28 = bytes(28)
    text = base64.b64encode(key28).decode()
    assert text.endswith("=")
    assert KeyParam("inline", text.rstrip("=")).key_bytes() == key28


def test_no_repr_or_str_shows_key_material() -> None:
    sdp = parse_sdp(META_OFFER + "k=clear:topsecret\r\na=key-mgmt:mikey AQEsecret\r\n")
    crypto = sdp.media[0].cryptos()[0]
    for text in (
        repr(crypto),
        str(crypto),
        repr(crypto.key_params[0]),
        str(crypto.key_params),
        repr(sdp),
        str(sdp),
        repr(sdp.media[0]),
        str(sdp.media),
    ):
        assert KEY_B64 not in text
        assert "topsecret" not in text and "AQEsecret" not in text
    assert "inline:***" in repr(crypto)
    assert "inline:***" in repr(sdp)
    assert KEY_B64 in sdp.serialize().decode()  # the wire still carries it


def test_redact_helpers() -> None:
    value = f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20|1:4;inline:{KEY_B64} WSH=64"
    assert redact_attribute("crypto", value) == (
        "1 AES_CM_128_HMAC_SHA1_80 inline:***|2^20|1:4;inline:*** WSH=64"
    )
    assert redact_attribute("Crypto", "1 X foo:secret") == "1 X foo:***"
    assert redact_attribute("key-mgmt", "mikey xyz") == "***"
    assert redact_attribute("rtpmap", "0 PCMU/8000") == "0 PCMU/8000"
    redacted = redact_sdp_text(META_OFFER.replace("\n", "\r\n") + "k=base64:c2VjcmV0\r\n")
    assert KEY_B64 not in redacted and "c2VjcmV0" not in redacted
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:***\r\n" in redacted
    assert "a=rtpmap:111 opus/48000/2\r\n" in redacted


def test_crypto_model_is_immutable_and_hashable() -> None:
    crypto = Crypto(1, "AES_CM_128_HMAC_SHA1_80", (KeyParam("inline", KEY_B64),))
    assert hash(crypto) == hash(parse_crypto(crypto.to_value()))


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must start with v="),
        ("o=- 1 1 IN IP4 1.2.3.4\r\n", "must start with v="),
        ("v=1\r\n", "version 0"),
        ("v=0\r\no=- 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n", "o=: expected 6 fields"),
        ("v=0\r\no=- 1 x IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n", "sess-version"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n", "missing s="),
        ("v=0\r\ns=-\r\nt=0 0\r\n", "missing o="),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n", "missing t="),
        (_sdp("t=now 0\r\n"), "t= start"),
        (_sdp("t=0\r\n"), "t=: expected"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nr=7d 1h 0\r\nt=0 0\r\n", "r= before any t="),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n", "before the first m="),
        (_sdp("m=audio 70000 RTP/AVP 0\r\n"), "m= port"),
        (_sdp("m=audio -1 RTP/AVP 0\r\n"), "m= port"),
        (_sdp("m=audio 4000/0 RTP/AVP 0\r\n"), "port count"),
        (_sdp("m=audio 4000\r\n"), "m=: expected"),
        (_sdp("m=audio \uff14\uff10\uff10\uff10 RTP/AVP 0\r\n"), "m= port"),  # non-ASCII digits
        (_sdp("c=IN IP4\r\n"), "c=: expected"),
        (_sdp("c=IN IP4 999.1.1.1\r\n"), "bad IP4 address"),
        (_sdp("c=IN IP6 1.2.3.4.5::\r\n"), "bad IP6 address"),
        (_sdp("c=IN IP4 224.2.1.1/300\r\n"), "c= ttl"),
        (_sdp("c=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.5\r\n"), "more than one c="),
        (_sdp("b=AS\r\n"), "b=: expected"),
        (_sdp("b=AS:lots\r\n"), "b= bandwidth"),
        (_sdp("x=unknown\r\n"), "unknown line type x="),
        (_sdp("m=audio 1 RTP/AVP 0\r\nt=0 0\r\n"), "not allowed in a media section"),
        (_sdp("v=0\r\n"), "more than one v="),
        (_sdp("o=- 1 1 IN IP4 192.0.2.1\r\n"), "more than one o="),
        (_sdp("s=again\r\n"), "more than one s="),
        (_sdp("garbage\r\n"), "not '<type>=<value>'"),
        (_sdp("A=b\r\n"), "not '<type>=<value>'"),
        (_sdp("a=x\0y\r\n"), "stray CR or NUL"),
        (_sdp("a=x\ry\r\n"), "stray CR or NUL"),
    ],
)
def test_malformed_sdp_is_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason.replace("*", r"\*")):
        parse_sdp(text)


def test_limits() -> None:
    with pytest.raises(SdpError, match="larger than"):
        parse_sdp(_sdp("a=x:" + "y" * MAX_SDP_SIZE + "\r\n"))
    with pytest.raises(SdpError, match="larger than"):
        parse_sdp(_sdp("a=x:" + "é" * (MAX_SDP_SIZE // 2) + "\r\n"))  # 2 bytes each
    with pytest.raises(SdpError, match="larger than"):
        parse_sdp(b"v=0\r\n" + b" " * MAX_SDP_SIZE)
    with pytest.raises(SdpError, match="more than 64 media"):
        parse_sdp(_sdp("m=audio 0 RTP/AVP 0\r\n" * 65))
    parse_sdp(_sdp("m=audio 0 RTP/AVP 0\r\n" * 64))
    with pytest.raises(SdpError, match="more than 512 attributes"):
        parse_sdp(_sdp("a=x\r\n" * 513))
    parse_sdp(_sdp("a=x\r\n" * 512))


def test_encoding_errors() -> None:
    with pytest.raises(SdpError, match="not UTF-8"):
        parse_sdp(_sdp("s=\xff\r\n").encode("latin-1"))
    with pytest.raises(SdpError, match="UTF-8"):
        parse_sdp(_sdp("i=\ud800\r\n"))
    assert parse_sdp(_sdp("i=Grüße\r\n").encode()).extra == [("i", "Grüße")]


# ---------------------------------------------------------------------------
# Serialisation


def test_serialize_orders_lines_per_rfc_8866() -> None:
    sdp = SessionDescription(
        origin=Origin("-", "42", 7, "IN", "IP4", "192.0.2.1"),
        connection=Connection("IN", "IP4", "192.0.2.1"),
        bandwidths=[Bandwidth("AS", 64)],
        attributes=[("group", "BUNDLE a")],
        extra=[("k", "prompt"), ("z", "0 0"), ("e", "a@example.com"), ("i", "info")],  # any order
        media=[
            MediaDescription(
                "audio",
                4000,
                "RTP/AVP",
                ["0"],
                attributes=[("sendonly", None)],
                extra=[("k", "prompt"), ("i", "voice")],
            )
        ],
    )
    assert sdp.serialize() == (
        b"v=0\r\no=- 42 7 IN IP4 192.0.2.1\r\ns=-\r\ni=info\r\ne=a@example.com\r\n"
        b"c=IN IP4 192.0.2.1\r\nb=AS:64\r\nt=0 0\r\nz=0 0\r\nk=prompt\r\na=group:BUNDLE a\r\n"
        b"m=audio 4000 RTP/AVP 0\r\ni=voice\r\nk=prompt\r\na=sendonly\r\n"
    )
    parsed = parse_sdp(sdp.serialize())
    assert parsed.extra == [("i", "info"), ("e", "a@example.com"), ("z", "0 0"), ("k", "prompt")]
    assert parsed.media[0].extra == [("i", "voice"), ("k", "prompt")]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.attributes.append(("x", "evil\r\na=crypto:1 X inline:AAAA")),
        lambda s: setattr(s, "session_name", "line\nbreak"),
        lambda s: s.attributes.append(("bad:name", None)),
        lambda s: setattr(s.origin, "username", "two words"),
        lambda s: setattr(s.origin, "sess_id", ""),
        lambda s: s.media.append(MediaDescription("audio", 1, "RTP/AVP", ["0 1"])),
    ],
)
def test_serialize_refuses_text_that_would_break_lines(mutate: object) -> None:
    sdp = SessionDescription(origin=Origin("-", "1", 1))
    assert callable(mutate)
    mutate(sdp)
    with pytest.raises(SdpError):
        sdp.serialize()


# ---------------------------------------------------------------------------
# Properties

_token = st.text(string.ascii_letters + string.digits + "-._+!", min_size=1, max_size=12)
_text = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]), max_size=30)
_value = _text.filter(lambda v: bool(v.strip()))
_ip4 = st.ip_addresses(v=4).map(str)
_ip6 = st.ip_addresses(v=6).map(str)
_conn = st.one_of(
    st.builds(Connection, st.just("IN"), st.just("IP4"), _ip4),
    st.builds(Connection, st.just("IN"), st.just("IP6"), _ip6),
    st.builds(
        Connection,
        st.just("IN"),
        st.just("IP4"),
        _ip4,
        st.integers(0, 255),
        st.one_of(st.none(), st.integers(1, 9)),
    ),
)
_bandwidths = st.lists(
    st.builds(Bandwidth, st.sampled_from(["AS", "CT", "TIAS"]), st.integers(0, 10**9)), max_size=2
)
_attr_name = _token.filter(lambda n: ":" not in n)
_attributes = st.lists(st.tuples(_attr_name, st.one_of(st.none(), _text)), max_size=8)
_media = st.builds(
    MediaDescription,
    media=st.sampled_from(["audio", "video", "application"]),
    port=st.integers(0, 65535),
    proto=st.sampled_from(["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udp"]),
    formats=st.lists(st.one_of(st.integers(0, 127).map(str), _token), max_size=5),
    port_count=st.integers(1, 4),
    connection=st.one_of(st.none(), _conn),
    bandwidths=_bandwidths,
    attributes=_attributes,
    extra=st.lists(st.tuples(st.sampled_from("ik"), _text), max_size=2),
)
_sessions = st.builds(
    SessionDescription,
    origin=st.builds(
        Origin,
        _token,
        st.integers(0, 2**64).map(str),
        st.integers(0, 2**63),
        st.just("IN"),
        st.sampled_from(["IP4", "IP6"]),
        _token,
    ),
    session_name=_text,
    connection=st.one_of(st.none(), _conn),
    bandwidths=_bandwidths,
    timing=st.lists(
        st.builds(
            Timing, st.integers(0, 2**40), st.integers(0, 2**40), st.lists(_value, max_size=2)
        ),
        min_size=1,
        max_size=2,
    ),
    attributes=_attributes,
    media=st.lists(_media, max_size=4),
    extra=st.lists(st.tuples(st.sampled_from("iuepzk"), _text), max_size=4),
)


@settings(max_examples=300)
@given(_sessions)
def test_serialize_then_parse_round_trips(sdp: SessionDescription) -> None:
    # e=/p= and i=/u= keep their relative order only within the RFC's line groups
    sdp.extra = [e for kind in "iuepzk" for e in sdp.extra if e[0] == kind]
    for m in sdp.media:
        m.extra = [e for kind in "ik" for e in m.extra if e[0] == kind]
    data = sdp.serialize()
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    assert parse_sdp(data) == sdp
    assert parse_sdp(data.decode().replace("\r\n", "\n")) == sdp


@given(st.text(max_size=400))
def test_parse_never_raises_anything_but_sdp_error_on_text(text: str) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(text)


@given(st.binary(max_size=400))
def test_parse_never_raises_anything_but_sdp_error_on_bytes(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(data)


_line_kinds = st.sampled_from([*"vosiuepcbtrzkam", "x", "", "a=crypto:", "a=rtpmap:"])
_sdp_like = st.lists(
    st.tuples(
        _line_kinds,
        st.sampled_from(["=", "", " = "]),
        st.one_of(
            _text,
            st.sampled_from(
                [
                    "0",
                    "- 1 1 IN IP4 1.2.3.4",
                    "0 0",
                    "audio 4000 RTP/SAVP 111 0",
                    "IN IP4 0.0.0.0",
                    "IN IP6 ::1/2",
                    "AS:64",
                    "111 opus/48000/2",
                    f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31|1:4",
                    "sendonly",
                    "rtcp:9 IN IP4 0.0.0.0",
                    "fmtp:111 a=b;c",
                    "ssrc:1 cname:x",
                    "ptime:20.5",
                ]
            ),
        ),
    ),
    max_size=30,
).map(
    lambda ls: (
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"
        + "".join(f"{k}{eq}{v}\r\n" if len(k) == 1 else f"{k}{v}\r\n" for k, eq, v in ls)
    )
)


@settings(max_examples=500)
@given(_sdp_like)
def test_sdp_like_text_parses_or_fails_cleanly_and_reparses_stably(text: str) -> None:
    try:
        sdp = parse_sdp(text)
    except SdpError:
        return
    again = parse_sdp(sdp.serialize())
    assert again == sdp
    for m in sdp.media:  # the helpers never raise either
        m.rtpmaps(), m.cryptos(), m.ssrcs(), m.direction(sdp), m.rtcp, m.ptime, m.mid
        for pt in m.payload_types():
            m.fmtp(pt)
    sdp.groups()
    repr(sdp)
