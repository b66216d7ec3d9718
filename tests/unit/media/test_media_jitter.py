"""ReorderBuffer: in order, reordering, loss markers, late packets, wrap, reset."""

from __future__ import annotations

import random

import pytest

from gateway.media.jitter import Lost, ReorderBuffer


def run(buf: ReorderBuffer[int], seqs: list[int]) -> list[int | Lost[int]]:
    out: list[int | Lost[int]] = []
    for seq in seqs:
        out += buf.push(seq, seq)
    return out


def test_in_order_is_released_at_once() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    for seq in range(100, 200):
        assert buf.push(seq, seq) == [seq]
    assert len(buf) == 0 and buf.expected == 200
    assert (buf.late, buf.lost, buf.duplicates, buf.reordered) == (0, 0, 0, 0)


def test_swapped_pair_is_put_back_in_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert buf.push(1, 1) == [1]
    assert buf.push(3, 3) == []
    assert buf.peek() == 3
    assert buf.push(2, 2) == [2, 3]
    assert buf.push(4, 4) == [4]
    assert buf.reordered == 1 and buf.lost == 0


def test_loss_declared_when_depth_packets_wait() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert run(buf, [1, 3, 4]) == [1]
    out = buf.push(5, 5)
    assert out == [Lost(1, 3), 3, 4, 5]
    lost = out[0]
    assert isinstance(lost, Lost) and lost.count == 1 and lost.next == 3
    assert buf.lost == 1
    assert buf.push(2, 2) == []  # too late now
    assert buf.late == 1


def test_burst_loss_and_a_second_gap_inside_the_window() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert run(buf, [10, 15, 17]) == [10]
    assert buf.push(18, 18) == [Lost(4, 15), 15]  # 11..14 lost; 16 may still come
    assert buf.push(16, 16) == [16, 17, 18]
    assert buf.lost == 4


def test_depth_one_reports_immediately() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(1)
    assert run(buf, [1, 3]) == [1, Lost(1, 3), 3]


def test_zero_depth_passthrough() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(0)
    assert run(buf, [1, 2, 4, 3, 5]) == [1, 2, Lost(1, 4), 4, 5]
    assert buf.late == 1 and buf.lost == 1 and len(buf) == 0


def test_duplicates_dropped() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert run(buf, [1, 2, 2, 4, 4]) == [1, 2]
    assert buf.late == 1 and buf.duplicates == 1
    assert buf.push(3, 3) == [3, 4]


def test_wrap_around() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    seqs = [65533, 65534, 0, 65535, 1, 3, 4, 5]
    assert run(buf, seqs) == [65533, 65534, 65535, 0, 1, Lost(1, 3), 3, 4, 5]
    assert buf.push(65535, 65535) == []  # before the wrap: late, not a jump
    assert buf.late == 1 and buf.resets == 0


def test_reset_on_big_jump_forward_and_back() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert run(buf, [100, 102]) == [100]
    assert buf.push(30000, 30000) == [102, 30000]  # held item released, no loss reported
    assert buf.resets == 1 and buf.lost == 0
    assert buf.push(30001, 30001) == [30001]
    assert buf.push(5, 5) == [5]  # far behind: a restarted stream, not a late packet
    assert buf.resets == 2 and buf.expected == 6


def test_flush_releases_with_gaps() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(5)
    assert run(buf, [1, 3, 6]) == [1]
    assert buf.flush() == [Lost(1, 3), 3, Lost(2, 6), 6]
    assert len(buf) == 0 and buf.expected == 7 and buf.lost == 3
    assert buf.flush() == []
    assert buf.push(7, 7) == [7]


def test_first_packet_and_peek_empty() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(3)
    assert buf.peek() is None and buf.expected is None
    assert buf.push(40000, "a") == ["a"]
    with pytest.raises(ValueError):
        ReorderBuffer(-1)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_random_reordering_and_loss_releases_in_order(depth: int) -> None:
    rnd = random.Random(depth)
    sent = [(60000 + i) & 0xFFFF for i in range(3000)]
    dropped = set(rnd.sample(range(1, 3000), 150))
    arrivals = [i for i in range(3000) if i not in dropped]
    for k in range(1, len(arrivals) - 1):  # swap neighbours now and then (reorder < depth)
        if rnd.random() < 0.05:
            arrivals[k], arrivals[k + 1] = arrivals[k + 1], arrivals[k]
    buf: ReorderBuffer[int] = ReorderBuffer(depth)
    out: list[int | Lost[int]] = []
    for i in arrivals:
        out += buf.push(sent[i], i)
    out += buf.flush()
    # Items come out strictly increasing; items + lost counts cover every index once.
    items = [x for x in out if not isinstance(x, Lost)]
    assert items == sorted(items)
    covered = len(items) + sum(x.count for x in out if isinstance(x, Lost))
    assert covered == 3000 and buf.lost == 3000 - len(items)
    assert len(items) + buf.late == len(arrivals)  # each arrival released or counted late
    if depth > 1:
        assert buf.late == 0  # neighbour swaps are within the window
    # every Lost marker is followed by the item it names
    for k, x in enumerate(out):
        if isinstance(x, Lost):
            assert out[k + 1] == x.next


def test_skip_consumes_sequence_numbers_without_items() -> None:
    # RFC 4733 events share the audio sequence space: not losses.
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert buf.push(1, 1) == [1]
    assert buf.skip(2) == []
    assert buf.skip(3) == []
    assert buf.push(4, 4) == [4]
    assert buf.lost == 0
    # out of order around a skipped one
    assert buf.push(7, 7) == []
    assert buf.peek() == 7
    assert buf.skip(6) == []
    assert buf.peek() == 7
    assert buf.push(5, 5) == [5, 7]
    # a gap followed by a skipped one: Lost names no item to take FEC from
    assert buf.skip(9) == []
    assert buf.push(10, 10) == []
    assert buf.push(11, 11) == [Lost(1, None), 10, 11]
    assert buf.lost == 1
    assert buf.skip(11) == [] and buf.late == 1
    assert buf.skip(12) == []
    assert buf.push(13, 13) == [13]


def test_skip_with_zero_depth_flush_and_reset() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(0)
    assert buf.skip(1) == []
    assert buf.skip(3) == [Lost(1)]
    assert buf.push(4, 4) == [4]
    buf3: ReorderBuffer[int] = ReorderBuffer(3)
    assert buf3.push(1, 1) == [1]
    assert buf3.skip(3) == []
    assert buf3.push(5, 5) == []
    assert buf3.flush() == [Lost(1), Lost(1, 5), 5]
    assert buf3.skip(9000) == [] and buf3.resets == 1 and buf3.expected == 9001


def test_take_in_order_is_the_push_fast_path_without_a_list() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(3)
    assert not buf.take_in_order(10)  # nothing expected yet: the caller pushes
    assert buf.push(10, "a") == ["a"]
    assert buf.take_in_order(11) and buf.expected == 12
    assert not buf.take_in_order(13)  # a gap: unchanged, pushed instead
    assert buf.expected == 12 and len(buf) == 0
    assert buf.push(13, "c") == [] and len(buf) == 1
    assert not buf.take_in_order(12)  # something is held: the slow path releases both
    assert buf.push(12, "b") == ["b", "c"]
    assert buf.take_in_order(0xFFFF) is False
    wrap: ReorderBuffer[str] = ReorderBuffer(3)
    wrap.push(0xFFFF, "x")
    assert wrap.take_in_order(0) and wrap.expected == 1
