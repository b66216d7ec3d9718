"""The RTP sockets' shared epoll set: one datagram per ready socket per round."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.transport.rtp import (
    _POLLERS,
    FRAME_SAMPLE,
    FrameTimes,
    MediaPoller,
    PortAllocator,
    RtpSocket,
)

HOST = "127.0.0.1"


@pytest.fixture(params=["python", "native"], autouse=True)
def poller_round(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the poller's Python round and with the native engine's round
    (gateway.media._native.poll_round: the same round in C, issue 12)."""
    if request.param == "native":
        from gateway.media.native import load_native, native_error

        module = load_native()
        if module is None:
            pytest.skip(f"native media engine not built: {native_error()}")
        init = MediaPoller.__init__

        def native_init(self: MediaPoller, loop: asyncio.AbstractEventLoop) -> None:
            init(self, loop)
            self.native_round = module.poll_round

        monkeypatch.setattr(MediaPoller, "__init__", native_init)
    return str(request.param)


def _free_range(count: int) -> tuple[int, int]:
    """``count`` even ports that are free now (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        base = probe.getsockname()[1] & ~1
    low = 40000 + base % 20000
    low -= low % 2
    return low, low + 2 * count


async def _settle() -> None:
    await asyncio.sleep(0.02)  # loopback delivery is immediate; leave the loop room


async def test_each_round_reads_one_datagram_per_ready_socket() -> None:
    loop = asyncio.get_running_loop()
    ports = PortAllocator(HOST, *_free_range(8))
    got: list[tuple[int, bytes]] = []
    a = RtpSocket(loop, ports, lambda data, addr: got.append((1, data)))
    b = RtpSocket(loop, ports, lambda data, addr: got.append((2, data)))
    poller = MediaPoller.of(loop)
    assert _POLLERS[loop] is poller and a._poller is b._poller is poller
    loop.remove_reader(poller._fd)  # drive the rounds by hand
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(3):
            tx.sendto(b"a%d" % i, (HOST, a.port))
        tx.sendto(b"b0", (HOST, b.port))
        await _settle()
        poller._ready()
        assert sorted(got) == [(1, b"a0"), (2, b"b0")]  # the queue of a waits its turn
        poller._ready()
        poller._ready()
        assert [data for n, data in got if n == 1] == [b"a0", b"a1", b"a2"]
        poller._ready()  # nothing ready: nothing read, nothing raised
        assert len(got) == 4
    loop.add_reader(poller._fd, poller._ready)
    a.close()
    b.close()
    assert loop not in _POLLERS  # the last socket took the set with it


async def test_the_loop_delivers_everything_and_a_socket_closed_mid_round_is_skipped() -> None:
    loop = asyncio.get_running_loop()
    ports = PortAllocator(HOST, *_free_range(8))
    got: list[bytes] = []
    socks: list[RtpSocket] = []

    def closing(data: bytes, addr: tuple[str, int]) -> None:
        got.append(data)
        for s in socks:
            s.close()  # a call ends on this packet: both of its sockets go

    socks.append(RtpSocket(loop, ports, closing))
    socks.append(RtpSocket(loop, ports, closing))
    keep = RtpSocket(loop, ports, lambda data, addr: got.append(data))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for s in socks:
            tx.sendto(b"x", (HOST, s.port))
        for i in range(5):
            tx.sendto(b"k%d" % i, (HOST, keep.port))
        for _ in range(10):
            await _settle()
            if len(got) >= 6:
                break
    assert got.count(b"x") == 1  # the second socket was closed before its turn
    assert [d for d in got if d != b"x"] == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert MediaPoller.of(loop)._sockets == {keep._fd: keep}
    keep.close()
    assert ports.in_use == 0 and loop not in _POLLERS


async def test_frame_times_in_the_poller_sample_one_packet_in_four() -> None:
    loop = asyncio.get_running_loop()
    ports = PortAllocator(HOST, *_free_range(4))
    seen: list[bytes] = []
    sock = RtpSocket(loop, ports, lambda data, addr: seen.append(data))
    times = FrameTimes()
    sock.timing = times
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(40):
            tx.sendto(b"y" * 60, (HOST, sock.port))
        for _ in range(20):
            await _settle()
            if len(seen) == 40:
                break
    sock.close()
    assert len(seen) == 40
    assert sum(times.counts) == 40 // FRAME_SAMPLE and times.sum_ns > 0
