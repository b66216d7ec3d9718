"""RTP packets (RFC 3550 5.1), the sender's sequence/timestamp space, RFC 5761 demux."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.rtp import RtpError, RtpPacket, RtpSender, build_rtp, is_rtcp, parse_rtp


def test_minimal_packet_round_trip() -> None:
    packet = RtpPacket(
        payload_type=111,
        sequence=1234,
        timestamp=567890,
        ssrc=0xDEADBEEF,
        payload=b"opus",
        marker=True,
    )
    data = packet.serialize()
    assert data[:12] == struct.pack("!BBHII", 0x80, 0x80 | 111, 1234, 567890, 0xDEADBEEF)
    assert data[12:] == b"opus"
    parsed = parse_rtp(data)
    assert parsed == packet
    assert parsed.version == 2 and parsed.marker and not parsed.extension and parsed.padding == 0


def test_csrc_extension_padding_round_trip() -> None:
    packet = RtpPacket(
        payload_type=0,
        sequence=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        payload=b"\xff" * 160,
        csrc=(10, 20, 0xFFFFFFFF),
        extension_profile=0xBEDE,
        extension_data=b"\x10\xaa\x00\x00",
        padding=3,
    )
    data = packet.serialize()
    first = data[0]
    assert first & 0x20 and first & 0x10 and first & 0x0F == 3
    assert len(data) == 12 + 12 + 4 + 4 + 160 + 3
    assert data[-1] == 3
    parsed = parse_rtp(data)
    assert parsed == packet
    assert parsed.csrc == (10, 20, 0xFFFFFFFF)
    assert parsed.extension and parsed.extension_profile == 0xBEDE
    assert parsed.extension_data == b"\x10\xaa\x00\x00"
    assert parsed.payload == b"\xff" * 160  # padding stripped
    assert parsed.padding == 3


def test_padding_only_packet_strips_padding() -> None:
    data = build_rtp(8, 1, 2, 3, b"abcd") + b"\x00\x00\x00\x04"
    data = bytes((data[0] | 0x20,)) + data[1:]
    assert parse_rtp(data).payload == b"abcd"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x80\x00" + bytes(9), "too short"),
        (b"\x40" + bytes(11), "version 1"),
        (b"\x00" + bytes(11), "version 0"),
        (b"\x82" + bytes(11) + bytes(4), "CSRC"),  # CC=2, only one CSRC present
        (b"\x90" + bytes(11) + b"\x00\x00", "extension header"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "extension"),
        (b"\xa0" + bytes(11) + b"ab\x00", "padding length 0"),
        (b"\xa0" + bytes(11) + b"ab\x09", "padding length 9"),
    ],
)
def test_invalid_packets(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        parse_rtp(data)
    assert issubclass(RtpError, ValueError)


def test_serialize_rejects_bad_fields() -> None:
    with pytest.raises(RtpError):
        RtpPacket(payload_type=128).serialize()
    with pytest.raises(RtpError):
        RtpPacket(extension_profile=1, extension_data=b"abc").serialize()
    with pytest.raises(RtpError):
        RtpPacket(csrc=tuple(range(16))).serialize()


@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    ext=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12))),
    padding=st.integers(0, 255),
    payload=st.binary(max_size=200),
)
def test_round_trip_property(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: bool,
    csrc: tuple[int, ...],
    ext: tuple[int, bytes] | None,
    padding: int,
    payload: bytes,
) -> None:
    ext_profile, ext_data = (None, b"") if ext is None else (ext[0], ext[1].ljust(12, b"\0"))
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker, csrc, ext_profile, ext_data, padding)
    assert parse_rtp(packet.serialize()) == packet


@given(st.binary(max_size=64))
def test_parse_raises_only_rtp_error(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        parse_rtp(data)


def test_build_rtp_matches_serialize() -> None:
    fast = build_rtp(111, 7, 960, 42, b"x", marker=True)
    assert fast == RtpPacket(111, 7, 960, 42, b"x", marker=True).serialize()
    assert build_rtp(0, 7, 960, 42, b"x")[1] == 0


def test_is_rtcp_demux() -> None:
    for pt in range(192, 224):  # RFC 5761 4: RTCP packet types 192-223
        assert is_rtcp(bytes((0x80, pt, 0, 1)))
    for pt in (0, 8, 111, 126, 127):
        assert not is_rtcp(build_rtp(pt, 1, 1, 1, b""))
        assert not is_rtcp(build_rtp(pt, 1, 1, 1, b"", marker=True))
    assert not is_rtcp(b"\x80")


def test_sender_advances_and_wraps() -> None:
    sender = RtpSender(48000, ssrc=0x1234, sequence=65534, timestamp=0xFFFFFFFF - 959)
    first = parse_rtp(sender.next_packet(111, b"a", 960, marker=True))
    second = parse_rtp(sender.next_packet(111, b"bc", 960))
    third = parse_rtp(sender.next_packet(111, b"def", 960))
    assert [p.sequence for p in (first, second, third)] == [65534, 65535, 0]
    assert [p.timestamp for p in (first, second, third)] == [0xFFFFFFFF - 959, 0, 960]
    assert first.marker and not second.marker
    assert {p.ssrc for p in (first, second, third)} == {0x1234}
    assert sender.packets == 3 and sender.octets == 6
    assert sender.sequence == 1 and sender.timestamp == 1920
    assert sender.last_timestamp == 960


def test_sender_packet_at_shares_sequence_space_only() -> None:
    sender = RtpSender(48000, ssrc=5, sequence=10, timestamp=1000)
    sender.next_packet(111, b"audio", 960)
    event = parse_rtp(sender.packet_at(126, b"\x01\x0a\x00\xa0", 1960, marker=True))
    assert (event.sequence, event.timestamp, event.marker, event.ssrc) == (11, 1960, True, 5)
    assert sender.timestamp == 1960  # media time untouched
    assert parse_rtp(sender.next_packet(111, b"audio", 960)).sequence == 12
    assert sender.packets == 3


def test_sender_random_start() -> None:
    senders = [RtpSender(8000) for _ in range(8)]
    assert len({s.ssrc for s in senders}) > 1
    assert len({s.sequence for s in senders}) > 1
    assert len({s.timestamp for s in senders}) > 1
    s = senders[0]
    before = s.timestamp
    s.skip(160)
    assert s.timestamp == (before + 160) & 0xFFFFFFFF
