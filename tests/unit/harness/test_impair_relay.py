"""The impairment relay (tests/peers/impair.py) on real loopback sockets: what it
drops, delays, reorders and duplicates, deterministically by seed."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct

import pytest

from tests.peers.impair import (
    Burst,
    Impairment,
    ImpairmentRelay,
    RelayThread,
    parse_bursts,
)


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 0x1234) + b"x" * 40


def rtcp() -> bytes:
    return struct.pack("!BBHI", 0x81, 201, 1, 0x1234) + b"\0" * 24


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def addr(s: socket.socket) -> tuple[str, int]:
    host, port = s.getsockname()[:2]
    return str(host), int(port)


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(4096))
        except BlockingIOError:
            return out


async def through(
    relay: ImpairmentRelay, packets: list[bytes], *, to_gateway: bool = True, gap: float = 0.0
) -> tuple[list[bytes], socket.socket, socket.socket]:
    """Send ``packets`` through an opened relay one way; what arrived at the far end."""
    meta, gw = udp(), udp()
    relay.front(addr(meta))
    relay.set_gateway(addr(gw))
    src, dst = (meta, gw) if to_gateway else (gw, meta)
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(dst.fileno(), lambda: got.extend(drain(dst)))
    try:
        for p in packets:
            src.sendto(p, relay.address)
            await asyncio.sleep(gap)
        await asyncio.sleep(0.15)
    finally:
        loop.remove_reader(dst.fileno())
    got.extend(drain(dst))
    return got, meta, gw


def seqs(packets: list[bytes]) -> list[int]:
    return [struct.unpack_from("!H", p, 2)[0] for p in packets]


async def test_clean_relay_passes_everything_in_order_both_ways() -> None:
    relay = ImpairmentRelay()
    relay.open()
    try:
        got, meta, gw = await through(relay, [rtp(i) for i in range(50)])
        assert seqs(got) == list(range(50))
        gw.sendto(rtp(7), relay.address)
        await asyncio.sleep(0.05)
        assert seqs(drain(meta)) == [7]
        c = relay.counts
        assert (c["to_gateway"].forwarded, c["to_meta"].forwarded) == (50, 1)
        assert relay.foreign == 0
    finally:
        relay.close()


async def test_packets_from_elsewhere_are_counted_and_dropped() -> None:
    relay = ImpairmentRelay()
    relay.open()
    try:
        _, meta, gw = await through(relay, [])
        stranger = udp()
        stranger.sendto(rtp(1), relay.address)
        await asyncio.sleep(0.05)
        assert drain(meta) == [] and drain(gw) == []
        assert relay.foreign == 1
    finally:
        relay.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_loss_is_about_the_rate_and_the_same_for_a_seed(seed: int) -> None:
    runs = []
    for _ in range(2):
        relay = ImpairmentRelay(Impairment(loss_pct=5, seed=seed))
        relay.open()
        try:
            got, _, _ = await through(relay, [rtp(i) for i in range(1000)], gap=0.0002)
        finally:
            relay.close()
        runs.append(seqs(got))
        assert relay.counts["to_gateway"].lost_random == 1000 - len(got)
    assert runs[0] == runs[1]
    assert 30 <= 1000 - len(runs[0]) <= 70


async def test_bursts_drop_whole_frames_at_stream_times_rtcp_untouched() -> None:
    imp = Impairment(bursts=parse_bursts("2x60@200,1000"))
    relay = ImpairmentRelay(imp)
    relay.open()
    try:
        packets = [rtp(i) for i in range(60)]
        packets.insert(12, rtcp())  # not counted as a frame of the stream
        got, _, _ = await through(relay, packets)
    finally:
        relay.close()
    audio = [p for p in got if p[1] != 201]
    assert len(got) - len(audio) == 1
    missing = sorted(set(range(60)) - set(seqs(audio)))
    assert missing == [10, 11, 12, 50, 51, 52]
    c = relay.counts["to_gateway"]
    assert (c.lost_burst, c.lost_random, c.rtcp) == (6, 0, 1)


async def test_duplicates_and_explicit_reorder() -> None:
    relay = ImpairmentRelay(Impairment(duplicate_pct=10, reorder_pct=10, seed=3))
    relay.open()
    try:
        got, _, _ = await through(relay, [rtp(i) for i in range(300)], gap=0.0005)
    finally:
        relay.close()
    c = relay.counts["to_gateway"]
    s = seqs(got)
    assert len(s) == 300 + c.duplicated and set(s) == set(range(300))
    assert 10 <= c.duplicated <= 55 and 10 <= c.reordered <= 55
    assert c.overtaken == c.reordered  # each held packet left right after its successor
    assert sum(1 for a, b in itertools.pairwise(s) if b < a) >= c.reordered - c.duplicated


async def test_jitter_in_order_and_with_overtaking() -> None:
    for may_reorder in (False, True):
        imp = Impairment(jitter_ms=30, jitter_reorder=may_reorder, seed=5)
        relay = ImpairmentRelay(imp)
        relay.open()
        try:
            got, _, _ = await through(relay, [rtp(i) for i in range(100)], gap=0.002)
        finally:
            relay.close()
        c = relay.counts["to_gateway"]
        assert sorted(seqs(got)) == list(range(100))
        assert c.delayed >= 90
        if may_reorder:
            assert c.overtaken > 5 and seqs(got) != list(range(100))
        else:
            assert c.overtaken == 0 and seqs(got) == list(range(100))


def test_relay_thread_serves_a_caller_without_a_loop() -> None:
    with RelayThread() as t:
        relay = t.relay(Impairment(loss_pct=100), Impairment())
        meta, gw = udp(), udp()
        relay.front(addr(meta))
        relay.set_gateway(addr(gw))
        gw.setblocking(True)
        gw.settimeout(1.0)
        meta.sendto(rtp(1), relay.address)  # lost
        meta.sendto(rtcp(), relay.address)  # RTCP passes
        assert gw.recv(4096)[1] == 201
        meta.setblocking(True)
        meta.settimeout(1.0)
        gw.sendto(rtp(2), relay.address)
        assert seqs([meta.recv(4096)]) == [2]
    assert relay.counts["to_gateway"].lost_random == 1


def test_describe_and_burst_specs() -> None:
    assert parse_bursts("2x60") == (Burst(1000, 60), Burst(3000, 60))
    assert parse_bursts("") == ()
    with pytest.raises(ValueError):
        parse_bursts("2x60@1")
    imp = Impairment(loss_pct=5, bursts=parse_bursts("2x60"), jitter_ms=20)
    assert imp.describe() == "5 % loss, 2 x 60 ms bursts, 20 ms jitter"
    assert Impairment().describe() == "none" and Impairment().clean
    assert ImpairmentRelay(imp).describe() == (
        "Meta->gateway: 5 % loss, 2 x 60 ms bursts, 20 ms jitter; gateway->Meta: none"
    )
