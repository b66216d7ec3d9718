"""RTCP (RFC 3550 6): SR/RR/SDES/BYE build and parse, reception statistics on a fake clock."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.rtcp import (
    ReceiveStats,
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    build_report,
    ntp_timestamp,
    parse_rtcp,
    round_trip_time,
    serialize_rtcp,
)
from gateway.media.rtp import RtpSender, is_rtcp

FRAME = 0.02


def feed(stats: ReceiveStats, seqs: list[int], *, step: int = 160, t0: float = 100.0,
         ts0: int = 5000, jitter: dict[int, float] | None = None) -> None:  # fmt: skip
    """Packets sent every 20 ms with timestamps step apart; arrival = send time (+ jitter)."""
    jitter = jitter or {}
    base = seqs[0]
    for seq in seqs:
        index = (seq - base) & 0xFFFF
        stats.received(seq, (ts0 + index * step) & 0xFFFFFFFF,
                       t0 + index * FRAME + jitter.get(index, 0.0))  # fmt: skip


# --------------------------------------------------------------- packets


def test_sr_round_trip() -> None:
    block = ReportBlock(ssrc=7, fraction_lost=25, cumulative_lost=-3, highest_sequence=70000,
                        jitter=123, lsr=0x12345678, dlsr=65536)  # fmt: skip
    sr = RtcpSenderReport(1, 0x0123456789ABCDEF, 4000, 10, 1600, [block])
    data = sr.serialize()
    assert len(data) == 4 + 24 + 24
    assert data[0] == 0x81 and data[1] == 200
    assert struct.unpack("!H", data[2:4])[0] == len(data) // 4 - 1
    assert is_rtcp(data)
    assert parse_rtcp(data) == [sr]


def test_rr_sdes_bye_compound_round_trip() -> None:
    packets = [
        RtcpReceiverReport(9, [ReportBlock(1), ReportBlock(2, 255, 0x7FFFFF, 5, 6, 7, 8)]),
        RtcpSdes([SdesChunk(9, [(1, b"gw@example"), (6, b"tool")]), SdesChunk(10, [(1, b"x")])]),
        RtcpBye([9, 10], "call ended"),
        RtcpUnknown(204, 1, b"\x00\x00\x00\x09name\x00\x00\x00\x00"),
    ]
    data = serialize_rtcp(packets)
    assert len(data) % 4 == 0
    parsed = parse_rtcp(data)
    assert parsed == packets
    sdes = parsed[1]
    assert isinstance(sdes, RtcpSdes)
    assert sdes.chunks[0].cname == "gw@example"
    assert SdesChunk(1).cname is None


@pytest.mark.parametrize("cname_length", range(0, 9))
def test_sdes_chunk_padding(cname_length: int) -> None:
    sdes = RtcpSdes([SdesChunk(1, [(1, b"c" * cname_length)])])
    data = sdes.serialize()
    assert len(data) % 4 == 0
    body = data[8:]
    assert body[2 + cname_length] == 0  # null item terminates the list
    assert parse_rtcp(data) == [sdes]


def test_bye_without_reason_and_padding_in_packet() -> None:
    bye = RtcpBye([1])
    assert parse_rtcp(bye.serialize()) == [bye]
    # A padded BYE (P bit): the padding count is the last octet.
    raw = bytes((0xA1, 203, 0, 2)) + struct.pack("!I", 1) + b"\x00\x00\x00\x04"
    assert parse_rtcp(raw) == [RtcpBye([1])]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\xc8",
        b"\x40\xc9\x00\x01" + bytes(4),  # version 1
        b"\x81\xc9\x00\x01" + bytes(4),  # RR claims a block it does not have
        b"\x80\xc9\x00\x05" + bytes(4),  # length beyond datagram
        b"\x81\xc8\x00\x06" + bytes(24),  # SR too short for its block
        b"\x81\xca\x00\x01" + bytes(4),  # SDES chunk without items/terminator
        b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x09ab",  # SDES item overruns
        b"\x82\xcb\x00\x01" + bytes(4),  # BYE claims 2 sources
        b"\x81\xcb\x00\x02" + bytes(4) + b"\x09abc",  # BYE reason overruns
        b"\xa0\xc9\x00\x01" + b"\x00\x00\x00\x00",  # padding count 0
    ],
)
def test_invalid_rtcp(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(data)


@given(st.binary(max_size=80))
def test_parse_raises_only_rtcp_error(data: bytes) -> None:
    with contextlib.suppress(RtcpError):
        parse_rtcp(b"\x80" + data)


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert ntp_timestamp(0.5) & 0xFFFFFFFF == 0x80000000


# --------------------------------------------------------------- reception statistics (A.1/A.3/A.8)


def test_probation_then_counts() -> None:
    stats = ReceiveStats(8000)
    assert stats.received(100, 0, 0.0) is False  # first packet: on probation
    assert stats.expected == 0
    assert stats.received(101, 160, 0.02) is True
    feed(stats, list(range(102, 200)), ts0=320, t0=0.04)
    assert stats.expected == 99 and stats.received_count == 99 and stats.lost == 0


def test_probation_restarts_on_out_of_sequence() -> None:
    stats = ReceiveStats(8000)
    stats.received(100, 0, 0.0)
    assert stats.received(300, 0, 0.02) is False
    assert stats.received(301, 0, 0.04) is True
    assert stats.expected == 1


def test_loss_and_fraction_lost_per_interval() -> None:
    stats = ReceiveStats(8000, ssrc=77)
    seqs = [s for s in range(1000, 1100) if s % 10 != 5]  # 10 lost out of 100
    feed(stats, seqs)
    # counted from 1001: the first packet only ends probation (A.1)
    assert stats.expected == 99 and stats.lost == 10
    block = stats.report_block(now=200.0)
    assert block.ssrc == 77
    assert block.cumulative_lost == 10
    assert block.fraction_lost == (10 << 8) // 99
    assert block.highest_sequence == 1099
    # next interval: no loss
    feed(stats, list(range(1100, 1150)), ts0=5000 + 100 * 160, t0=102.0)
    block = stats.report_block(now=205.0)
    assert block.fraction_lost == 0 and block.cumulative_lost == 10


def test_reorder_and_duplicates_are_not_loss() -> None:
    stats = ReceiveStats(8000)
    seqs = list(range(10, 60))
    seqs[20], seqs[21] = seqs[21], seqs[20]
    seqs.insert(30, seqs[29])  # a duplicate
    for i, seq in enumerate(seqs):
        stats.received(seq, 5000 + (seq - 10) * 160, 1.0 + i * FRAME)
    assert stats.expected == 49  # from the second packet (end of probation)
    assert stats.lost == -1  # A.3: duplicates make it negative
    assert stats.duplicates == 1
    assert stats.report_block(2.0).fraction_lost == 0


def test_sequence_wrap_extends_cycles() -> None:
    stats = ReceiveStats(48000)
    seqs = [(65500 + i) & 0xFFFF for i in range(100)]
    del seqs[50]  # one lost right after the wrap
    feed(stats, seqs, step=960)
    assert stats.cycles == 65536
    assert stats.extended_max == 65536 + seqs[-1]
    assert stats.expected == 99 and stats.lost == 1
    assert stats.report_block(10.0).highest_sequence == 65536 + 99 - 36


def test_large_jump_resyncs_after_two_sequential_packets() -> None:
    stats = ReceiveStats(8000)
    feed(stats, list(range(0, 50)))
    assert stats.received(40000, 0, 5.0) is False  # bad_seq noted
    assert stats.received(40001, 160, 5.02) is True  # restart assumed
    assert stats.base_seq == 40001
    assert stats.expected == 1


def test_jitter_zero_for_perfect_arrivals_and_wrap() -> None:
    stats = ReceiveStats(8000)
    feed(stats, list(range(0, 200)), ts0=0xFFFFFFFF - 160 * 100)  # RTP timestamp wraps midway
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_estimate_converges() -> None:
    # Alternate arrivals 0 / +4 ms late: |D| is 32 timestamp units each packet.
    stats = ReceiveStats(8000)
    feed(stats, list(range(0, 400)), jitter={i: 0.004 for i in range(400) if i % 2})
    assert stats.jitter == pytest.approx(32.0, rel=0.01)
    assert stats.jitter_seconds == pytest.approx(0.004, rel=0.01)
    assert stats.report_block(50.0).jitter == 31 or stats.report_block(50.0).jitter == 32


def test_jitter_ignores_event_packets_fed_as_sequence_only() -> None:
    stats = ReceiveStats(48000)
    feed(stats, list(range(0, 10)), step=960)
    stats.received_sequence(10)  # a telephone-event packet: other clock
    stats.received(11, 5000 + 11 * 960, 100.0 + 11 * FRAME)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    assert stats.lost == 0


# --------------------------------------------------------------- reports


def test_build_report_rr_then_sr_with_lsr_dlsr() -> None:
    sender = RtpSender(48000, ssrc=0xAAAA, timestamp=1000)
    stats = ReceiveStats(48000, ssrc=0xBBBB)
    feed(stats, list(range(0, 50)), step=960)
    # Nothing sent yet: RR + SDES.
    packets = parse_rtcp(build_report(sender, stats, now=110.0, cname="gw"))
    rr, sdes = packets
    assert isinstance(rr, RtcpReceiverReport) and rr.ssrc == 0xAAAA
    assert rr.reports[0].ssrc == 0xBBBB and rr.reports[0].lsr == 0
    assert isinstance(sdes, RtcpSdes) and sdes.chunks[0].cname == "gw"
    # The peer's SR arrives; we send media; the next report is an SR echoing it.
    peer_sr = RtcpSenderReport(0xBBBB, ntp_timestamp(1_700_000_000.25), 0, 1, 1)
    stats.sender_report(peer_sr, now=111.0)
    for _ in range(3):
        sender.next_packet(111, b"x" * 40, 960)
    sr, sdes = parse_rtcp(build_report(sender, stats, now=112.5, cname="gw", wallclock=1.7e9))
    assert isinstance(sr, RtcpSenderReport)
    assert (sr.ssrc, sr.packet_count, sr.octet_count) == (0xAAAA, 3, 120)
    assert sr.rtp_timestamp == 1000 + 2 * 960
    assert sr.ntp_timestamp == ntp_timestamp(1.7e9)
    block = sr.reports[0]
    assert block.lsr == (peer_sr.ntp_timestamp >> 16) & 0xFFFFFFFF
    assert block.dlsr == int(1.5 * 65536)
    # Nothing sent since: back to RR.
    assert isinstance(parse_rtcp(build_report(sender, stats, 117.0, "gw"))[0], RtcpReceiverReport)


def test_round_trip_time_from_echo() -> None:
    sender = RtpSender(8000, ssrc=1)
    sender.next_packet(0, b"x", 160)
    sr = parse_rtcp(build_report(sender, None, now=50.0, cname="gw"))[0]
    assert isinstance(sr, RtcpSenderReport) and sr.reports == []
    lsr = (sr.ntp_timestamp >> 16) & 0xFFFFFFFF
    block = ReportBlock(ssrc=1, lsr=lsr, dlsr=int(0.25 * 65536))
    assert round_trip_time(block, sender, now=50.4) == pytest.approx(0.15, abs=1e-4)
    assert round_trip_time(ReportBlock(ssrc=1), sender, now=50.4) is None


def test_build_report_without_sender_and_bye() -> None:
    data = build_report(None, None, now=1.0, cname="gw", ssrc=42, bye=True, reason="bye")
    rr, sdes, bye = parse_rtcp(data)
    assert rr == RtcpReceiverReport(42, [])
    assert isinstance(sdes, RtcpSdes)
    assert bye == RtcpBye([42], "bye")
    with pytest.raises(ValueError):
        build_report(None, None, now=1.0, cname="gw")
