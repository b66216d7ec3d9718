"""RFC 4733 telephone-events: payload format and the one-way relay."""

from __future__ import annotations

import pytest

from gateway.media.dtmf import DtmfError, DtmfEvent, DtmfRelay, RelayedPacket, parse_event
from gateway.media.rtp import RtpPacket, RtpSender, parse_rtp

TE_PT = 101


def event_packet(
    seq: int,
    ts: int,
    event: int,
    duration: int,
    end: bool = False,
    volume: int = 10,
    marker: bool = False,
) -> RtpPacket:
    payload = DtmfEvent(event, end, volume, duration).serialize()
    return RtpPacket(TE_PT, seq, ts, 0x5050, payload, marker)


def decoded(out: list[RelayedPacket]) -> list[tuple[DtmfEvent, int, bool]]:
    return [(parse_event(payload), ts, marker) for payload, ts, marker in out]


def test_event_payload_format() -> None:
    ev = DtmfEvent(event=11, end=True, volume=10, duration=800)
    assert ev.serialize() == bytes((11, 0x80 | 10, 0x03, 0x20))
    assert parse_event(ev.serialize()) == ev
    assert ev.digit == "#"
    assert DtmfEvent(16, False, 0, 0).digit is None  # flash
    assert parse_event(bytes((5, 0x40 | 7, 0, 160))) == DtmfEvent(5, False, 7, 160)  # R ignored
    assert parse_event(bytes((1, 0x0A, 0, 160, 9, 9, 9, 9))).event == 1  # first report only
    assert DtmfEvent(1, False, 0, 70000).serialize()[2:] == b"\xff\xff"
    with pytest.raises(DtmfError):
        parse_event(b"\x01\x02\x03")


def test_full_event_one_timestamp_marker_first_duplicates_dropped() -> None:
    relay = DtmfRelay()
    target_ts = 900_000
    src_ts = 123_456
    arrivals = [
        (event_packet(1, src_ts, 5, 160, marker=True), True),
        (event_packet(2, src_ts, 5, 320), True),
        (event_packet(2, src_ts, 5, 320), False),  # duplicate
        (event_packet(3, src_ts, 5, 480), True),
        (event_packet(2, src_ts, 5, 320), False),  # reordered, older
        (event_packet(4, src_ts, 5, 800, end=True), True),
        (event_packet(5, src_ts, 5, 800, end=True), True),  # retransmission
        (event_packet(6, src_ts, 5, 800, end=True), True),  # retransmission
        (event_packet(3, src_ts, 5, 640), False),  # update after the end
    ]
    forwarded: list[tuple[DtmfEvent, int, bool]] = []
    progress = []
    for packet, expect_forward in arrivals:
        out = relay.process(packet, target_ts, now=0.0)
        assert bool(out) == expect_forward
        forwarded += decoded(out)
        progress.append(relay.in_progress)
        target_ts += 960  # the target's audio clock keeps running (48 kHz)
    assert {ts for _, ts, _ in forwarded} == {900_000}
    assert [marker for _, _, marker in forwarded] == [True] + [False] * 5
    assert [ev.duration for ev, _, _ in forwarded] == [160, 320, 480, 800, 800, 800]
    assert [ev.end for ev, _, _ in forwarded] == [False] * 3 + [True] * 3
    assert {(ev.event, ev.volume) for ev, _, _ in forwarded} == {(5, 10)}
    assert progress == [True] * 5 + [False] * 4
    assert (relay.events, relay.forwarded, relay.dropped) == (1, 6, 3)


def test_payload_forwarded_unchanged_with_equal_clocks() -> None:
    relay = DtmfRelay()
    packet = RtpPacket(TE_PT, 1, 10, 1, bytes((9, 0x40 | 0x20, 1, 0)))  # R bit set
    [(payload, _, _)] = relay.process(packet, 0)
    assert payload == packet.payload


def test_new_event_closes_unterminated_one() -> None:
    relay = DtmfRelay()
    relay.process(event_packet(1, 1000, 1, 160), 50_000)
    relay.process(event_packet(2, 1000, 1, 320), 50_960)
    # The end of digit 1 was lost; digit 2 starts.
    out = decoded(relay.process(event_packet(3, 1800, 2, 160), 55_000))
    assert out[:3] == [(DtmfEvent(1, True, 10, 320), 50_000, False)] * 3
    assert out[3] == (DtmfEvent(2, False, 10, 160), 55_000, True)
    assert relay.in_progress and relay.synthesized_ends == 1 and relay.events == 2
    # A straggler of digit 1 is dropped, even its end.
    assert relay.process(event_packet(4, 1000, 1, 480, end=True), 56_000) == []
    # Digit 2 continues with its own timestamp.
    assert decoded(relay.process(event_packet(5, 1800, 2, 320, end=True), 57_000)) == [
        (DtmfEvent(2, True, 10, 320), 55_000, False)
    ]
    assert not relay.in_progress


def test_new_event_after_a_terminated_one_emits_no_extra_end() -> None:
    relay = DtmfRelay()
    relay.process(event_packet(1, 1000, 1, 400, end=True), 1)
    out = relay.process(event_packet(2, 2000, 2, 160), 2)
    assert len(out) == 1 and out[0][2] is True


def test_end_only_event_gets_marker() -> None:
    relay = DtmfRelay()
    out = decoded(relay.process(event_packet(7, 4000, 3, 800, end=True), 99))
    assert out == [(DtmfEvent(3, True, 10, 800), 99, True)]
    assert not relay.in_progress
    out = decoded(relay.process(event_packet(8, 4000, 3, 800, end=True), 1099))
    assert out == [(DtmfEvent(3, True, 10, 800), 99, False)]


def test_clock_scaling() -> None:
    relay = DtmfRelay(source_clock=8000, target_clock=48000)
    out = decoded(relay.process(event_packet(1, 0, 4, 160), 7))
    assert out[0][0].duration == 960
    out = decoded(relay.process(event_packet(2, 0, 4, 20000), 7))
    assert out[0][0].duration == 0xFFFF  # clamped
    down = DtmfRelay(source_clock=48000, target_clock=8000)
    assert decoded(down.process(event_packet(1, 0, 4, 960, end=True), 7))[0][0].duration == 160


def test_long_event_next_segment_continues_without_end_or_marker() -> None:
    # RFC 4733 2.5.1.3: at 0xFFFF the sender starts a new segment with a new timestamp.
    relay = DtmfRelay()
    relay.process(event_packet(1, 0, 0, 160), 1000)
    relay.process(event_packet(2, 0, 0, 0xFFFF), 2000)
    out = decoded(relay.process(event_packet(3, 0xFFFF, 0, 160), 3000))
    assert out == [(DtmfEvent(0, False, 10, 160), 3000, False)]
    assert relay.in_progress and relay.events == 1 and relay.synthesized_ends == 0


def test_expire_closes_event_with_now() -> None:
    relay = DtmfRelay(timeout=1.0)
    relay.process(event_packet(1, 0, 9, 160), 5, now=10.0)
    relay.process(event_packet(2, 0, 9, 320), 5, now=10.05)
    assert relay.expire(10.5) == []
    out = decoded(relay.expire(11.1))
    assert out == [(DtmfEvent(9, True, 10, 320), 5, False)] * 3
    assert not relay.in_progress and relay.expire(20.0) == []
    assert relay.process(event_packet(3, 0, 9, 480), 5, now=20.0) == []  # closed: dropped


def test_expire_without_now_measures_from_ticks() -> None:
    relay = DtmfRelay(timeout=0.5)
    relay.process(event_packet(1, 0, 9, 160), 5)
    assert relay.expire(100.0) == []  # first tick after the packet stamps it
    relay.process(event_packet(2, 0, 9, 320), 5)  # a packet re-arms
    assert relay.expire(100.4) == []
    assert relay.expire(100.8) == []
    assert len(relay.expire(100.9)) == 3


def test_malformed_payload_is_counted_and_ignored() -> None:
    relay = DtmfRelay()
    assert relay.process(RtpPacket(TE_PT, 1, 1, 1, b"\x01"), 0) == []
    assert relay.malformed == 1 and not relay.in_progress


def test_relay_output_sent_in_target_sequence_space() -> None:
    target = RtpSender(48000, ssrc=0xCAFE, sequence=100, timestamp=48_000)
    relay = DtmfRelay()
    target.next_packet(111, b"audio", 960)
    sent = []
    for seq, (duration, end) in enumerate([(160, False), (320, False), (480, True)]):
        for payload, ts, marker in relay.process(
            event_packet(seq, 777, 1, duration, end), target.timestamp
        ):
            sent.append(parse_rtp(target.packet_at(TE_PT, payload, ts, marker)))
        target.next_packet(111, b"audio", 960)
    assert [p.sequence for p in sent] == [101, 103, 105]
    assert {p.timestamp for p in sent} == {48_960}
    assert {p.ssrc for p in sent} == {0xCAFE}
    assert [p.marker for p in sent] == [True, False, False]
