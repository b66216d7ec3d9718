"""RTP port allocation (gateway/transport/rtp.py PortAllocator), with real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections.abc import Callable, Iterator

import pytest

from gateway.transport.rtp import MediaClock, PortAllocator, PortsExhausted, RtpSocket

HOST = "127.0.0.1"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_range(size: int) -> tuple[int, int]:
    """[low, high] (low even) whose ports are all free now; below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(21000, 32000 - size, 2)
        high = low + size
        if all(_bindable(p) for p in range(low, high + 1)):
            return low, high
    pytest.skip("no free UDP port block on 127.0.0.1")


@contextlib.contextmanager
def holding(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for s in sockets:
            s.close()


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_even_ports_in_range() -> None:
    low, high = free_range(10)
    ports = PortAllocator(HOST, low, high)
    assert ports.available == 5 and ports.in_use == 0
    with holding([ports.bind() for _ in range(5)]) as socks:
        got = [port_of(s) for s in socks]
        assert got == list(range(low, high, 2))
        assert all(p % 2 == 0 for p in got)
        # RTCP on port+1 (a PBX without rtcp-mux) stays inside the range too.
        assert all(low <= p and p + 1 <= high for p in got)
        assert ports.in_use == 5 and ports.available == 0
        assert all(not s.getblocking() for s in socks)
        assert all(s.getsockname()[0] == HOST for s in socks)


def test_odd_low_starts_at_the_next_even_port() -> None:
    low, high = free_range(8)
    ports = PortAllocator(HOST, low + 1, high)
    with holding([ports.bind()]) as socks:
        assert port_of(socks[0]) == low + 2


def test_exhaustion_raises() -> None:
    low, high = free_range(6)
    ports = PortAllocator(HOST, low, high)
    with holding([ports.bind() for _ in range(3)]):
        with pytest.raises(PortsExhausted):
            ports.bind()
        assert ports.in_use == 3


def test_release_returns_the_port() -> None:
    low, high = free_range(4)
    ports = PortAllocator(HOST, low, high)
    a = ports.bind()
    b = ports.bind()
    with holding([b]):
        with pytest.raises(PortsExhausted):
            ports.bind()
        port = port_of(a)
        a.close()
        ports.release(port)
        assert ports.in_use == 1 and ports.available == 1
        with holding([ports.bind()]) as again:
            assert port_of(again[0]) == port


def test_release_is_idempotent_and_ignores_strangers() -> None:
    low, high = free_range(4)
    ports = PortAllocator(HOST, low, high)
    sock = ports.bind()
    port = port_of(sock)
    sock.close()
    ports.release(port)
    ports.release(port)
    ports.release(1)
    ports.release(high + 2)
    assert ports.in_use == 0
    assert ports.available == 2  # no duplicate entries


def test_port_held_by_another_socket_is_skipped() -> None:
    low, high = free_range(6)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((HOST, low))
    with holding([squatter]):
        ports = PortAllocator(HOST, low, high)
        with holding([ports.bind(), ports.bind()]) as socks:
            assert sorted(port_of(s) for s in socks) == [low + 2, low + 4]
            with pytest.raises(PortsExhausted):
                ports.bind()  # the held one is tried again, still held
            assert ports.in_use == 2
    # Once the squatter is gone, the port is usable again.
    with holding([ports.bind()]) as socks:
        assert port_of(socks[0]) == low


def test_many_bind_release_cycles_leave_nothing_in_use() -> None:
    low, high = free_range(8)
    ports = PortAllocator(HOST, low, high)
    live: list[socket.socket] = []
    seen: set[int] = set()
    rng = random.Random(4)
    for _ in range(5000):
        if live and (len(live) == 4 or rng.random() < 0.5):
            sock = live.pop(rng.randrange(len(live)))
            port = port_of(sock)
            sock.close()
            ports.release(port)
        else:
            sock = ports.bind()
            seen.add(port_of(sock))
            live.append(sock)
        assert ports.in_use == len(live)
        assert ports.in_use + ports.available == 4
    for sock in live:
        port = port_of(sock)
        sock.close()
        ports.release(port)
    assert ports.in_use == 0 and ports.available == 4
    assert seen == set(range(low, high, 2))


async def test_rtp_socket_close_gives_the_port_back() -> None:
    low, high = free_range(4)
    ports = PortAllocator(HOST, low, high)
    loop = asyncio.get_running_loop()
    for _ in range(5000):
        a = RtpSocket(loop, ports)
        b = RtpSocket(loop, ports)
        assert {a.port, b.port} == {low, low + 2}
        with pytest.raises(PortsExhausted):
            RtpSocket(loop, ports)
        a.close()
        b.close()
        a.close()  # twice is harmless
    assert ports.in_use == 0 and ports.available == 2


async def test_rtp_socket_receives_and_sends() -> None:
    low, high = free_range(4)
    ports = PortAllocator(HOST, low, high)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
    rtp = RtpSocket(loop, ports, lambda data, addr: got.put_nowait((data, addr)))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.setblocking(False)
    try:
        peer.sendto(b"\x80\x00hello", (HOST, rtp.port))
        data, addr = await asyncio.wait_for(got.get(), 2.0)
        assert data == b"\x80\x00hello" and addr[1] == port_of(peer)
        rtp.sendto(b"back", addr)
        reply = await asyncio.wait_for(loop.sock_recv(peer, 100), 2.0)
        assert reply == b"back"
    finally:
        peer.close()
        rtp.close()
    assert ports.in_use == 0


# -- the shared media clock -------------------------------------------------------------


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """time() and call_at() of an event loop, on a clock moved by run_until()."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(when, callback)
        self.handles.append(handle)
        return handle

    def live(self) -> list[_Handle]:
        return [h for h in self.handles if not h.cancelled]

    def run_until(self, end: float) -> None:
        while True:
            due = sorted((h for h in self.live() if h.when <= end), key=lambda h: h.when)
            if not due:
                break
            handle = due[0]
            self.now = max(self.now, handle.when)
            handle.cancelled = True  # fired
            handle.callback()
        self.now = end


def clock_on(loop: FakeLoop) -> MediaClock:
    return MediaClock(loop, interval=0.020)  # type: ignore[arg-type]


def test_media_clock_ticks_every_interval_and_stops_when_idle() -> None:
    loop = FakeLoop()
    clock = clock_on(loop)
    ticks: list[float] = []
    token = clock.subscribe(ticks.append)
    loop.run_until(loop.now + 1.0)
    assert len(ticks) == 50
    clock.unsubscribe(token)
    assert loop.live() == []
    loop.run_until(loop.now + 1.0)
    assert len(ticks) == 50


def test_media_clock_resubscribe_inside_a_tick_keeps_one_timer() -> None:
    """The last call ends and a new one starts within the same tick: still one tick
    per interval, not two timer chains."""
    loop = FakeLoop()
    clock = clock_on(loop)
    ticks: list[float] = []
    state: dict[str, int] = {}

    def ending(now: float) -> None:
        clock.unsubscribe(state["first"])
        clock.subscribe(ticks.append)

    state["first"] = clock.subscribe(ending)
    loop.run_until(loop.now + 0.021)  # the first tick swaps the subscribers
    start = len(ticks)
    loop.run_until(loop.now + 1.0)
    assert len(ticks) - start == 50
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(ticks[start:])}
    assert gaps == {0.02}
    assert len(loop.live()) == 1
