"""RTP sockets on the event loop, a port allocator, and the media clock.

Media is real time: a socket is a plain non-blocking UDP socket; each datagram
goes to the bridge synchronously (no asyncio transport/protocol objects, no
queue, no thread). All RTP sockets of a loop sit in one epoll set of their own
(:class:`MediaPoller`), which is the only thing the loop watches for them: a
loop pass then costs one ``epoll_wait`` for every ready socket and one
``recvfrom`` per datagram, instead of a selector key, a handle and a context
run per socket plus a ``recvfrom`` that fails with EAGAIN to end each drain.
A send that would block drops the packet, which is the right thing for late
audio. One :class:`MediaClock` ticks every 20 ms for all calls
(silence/keep-alive frames, RTCP, no-media checks) instead of a timer per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns

from gateway.logging import get_logger

log = get_logger(__name__)

PacketHandler = Callable[[bytes, tuple[str, int]], None]
# One poller round in native code: (epoll fd, sockets by fd, log a handler's error by port).
NativeRound = Callable[[int, "dict[int, RtpSocket]", Callable[[int], None]], None]
MAX_DRAIN = 64  # datagrams read per readable event before yielding to the loop
POLL_EVENTS = 1024  # ready sockets taken per epoll_wait (the rest in the next round)


FRAME_BOUNDS_NS = (5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000)


FRAME_SAMPLE = 4  # time one received packet in this many


class FrameTimes:
    """Time spent handling a received packet (decrypt, transcode, send), one packet in
    :data:`FRAME_SAMPLE`, in fixed buckets of plain ints. Two clock reads and a bisect
    cost about 370 ns here (11 us is the cheapest packet), so sampling keeps the cost
    near 100 ns a packet. The metrics collector reads it at scrape time
    (``wagw_media_frame_seconds``)."""

    __slots__ = ("bounds", "counts", "skip", "sum_ns")

    def __init__(self, bounds: tuple[int, ...] = FRAME_BOUNDS_NS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: above the largest bound
        self.sum_ns = 0
        self.skip = 0  # packets to let through untimed before the next sample

    def sample(self, handler: PacketHandler, data: bytes, addr: tuple[str, int], port: int) -> None:
        """Handle the packet due for a sample and count the time it took; the next
        :data:`FRAME_SAMPLE` - 1 go through untimed (the receive loops' fast path)."""
        self.skip = FRAME_SAMPLE - 1
        start = perf_counter_ns()
        try:
            handler(data, addr)
        except Exception:
            log.exception("rtp_handler_error", port=port)
        spent = perf_counter_ns() - start
        self.counts[bisect_left(self.bounds, spent)] += 1
        self.sum_ns += spent

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in ns, packets at or under it), ending with (inf, all)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((float(bound), running))
        out.append((float("inf"), running + self.counts[-1]))
        return out


class PortsExhausted(Exception):
    """No free even port in the configured range."""


class PortAllocator:
    """Even ports from ``[low, high]``; RTCP rides on the same port (rtcp-mux) or port+1."""

    def __init__(self, address: str, low: int, high: int) -> None:
        self.address = address
        start = low + (low % 2)
        self._free: deque[int] = deque(range(start, high, 2))
        self._used: set[int] = set()
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)

    def bind(self) -> socket.socket:
        """A non-blocking UDP socket bound to the next free even port."""
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((self.address, port))
            except OSError as exc:
                sock.close()
                self._free.append(port)  # someone else holds it now; try it again later
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                continue
            self._used.add(port)
            return sock
        raise PortsExhausted(f"no free RTP port in range on {self.address}")

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)


class MediaPoller:
    """The RTP sockets of one loop in an epoll set of their own, watched by the loop
    as a single reader.

    When the set is readable, one ``epoll_wait(0)`` lists the ready sockets and
    each gets exactly one ``recvfrom`` (a socket with more queued stays ready:
    level-triggered), then the loop runs its timers and other readers (SIP)
    before the next round. So every call's next packet comes before any call's
    second: a flooded socket gets its turn like the others and no more. Only
    where ``select.epoll`` is missing does each socket get its own reader
    (:meth:`RtpSocket._readable`, draining up to :data:`MAX_DRAIN`).
    """

    __slots__ = ("_ep", "_fd", "_loop", "_sockets", "native_round")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop's registry below holds the poller
        self._ep = select.epoll()
        self._fd = self._ep.fileno()
        self._sockets: dict[int, RtpSocket] = {}
        # The native media engine's round (gateway.media.native): the same round in C,
        # handing each datagram to its socket's ``fast`` path or else its handler.
        self.native_round: NativeRound | None = None
        loop.add_reader(self._fd, self._ready)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> MediaPoller:
        """The loop's poller, made when its first socket opens."""
        poller = _POLLERS.get(loop)
        if poller is None:
            poller = _POLLERS[loop] = cls(loop)
        return poller

    def register(self, sock: RtpSocket) -> None:
        self._ep.register(sock._fd, select.EPOLLIN)
        self._sockets[sock._fd] = sock

    def unregister(self, sock: RtpSocket) -> None:
        if self._sockets.pop(sock._fd, None) is None:
            return
        with contextlib.suppress(OSError):  # already gone from the set
            self._ep.unregister(sock._fd)
        if not self._sockets:  # the last call ended: nothing left to watch
            loop = self._loop()
            if loop is not None:
                loop.remove_reader(self._fd)
                if _POLLERS.get(loop) is self:
                    del _POLLERS[loop]
            self._ep.close()

    def _ready(self) -> None:
        sockets = self._sockets
        if self.native_round is not None:
            self.native_round(self._fd, sockets, self._handler_error)
            return
        for fd, _ in self._ep.poll(0, POLL_EVENTS):
            rtp = sockets.get(fd)
            if rtp is None:
                continue  # closed by a packet handled earlier in this round
            try:
                data, addr = rtp.sock.recvfrom(2048)
            except OSError:
                continue  # EAGAIN after all, or an ICMP error surfacing: nothing to do
            handler = rtp.handler
            if handler is None:
                continue
            timing = rtp.timing
            if timing is None:
                try:
                    handler(data, addr)
                except Exception:
                    log.exception("rtp_handler_error", port=rtp.port)
            elif timing.skip:
                timing.skip -= 1
                try:
                    handler(data, addr)
                except Exception:
                    log.exception("rtp_handler_error", port=rtp.port)
            else:
                timing.sample(handler, data, addr, rtp.port)

    @staticmethod
    def _handler_error(port: int) -> None:
        log.exception("rtp_handler_error", port=port)


_HAVE_EPOLL = hasattr(select, "epoll")
_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaPoller] = (
    weakref.WeakKeyDictionary()
)


class RtpSocket:
    """One bound UDP socket feeding ``handler`` packet by packet."""

    __slots__ = (
        "_closed",
        "_fd",
        "_loop",
        "_poller",
        "_ports",
        "dropped_sends",
        "fast",
        "handler",
        "port",
        "sock",
        "timing",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ports: PortAllocator,
        handler: PacketHandler | None = None,
    ) -> None:
        self.sock = ports.bind()
        self.port: int = self.sock.getsockname()[1]
        self._loop = loop
        self._ports = ports
        self._fd = self.sock.fileno()
        self.handler = handler
        self.timing: FrameTimes | None = None  # set by the owner to time each packet
        self.fast: object = None  # the native engine's path for this socket (use_native)
        self.dropped_sends = 0
        self._closed = False
        self._poller: MediaPoller | None = None
        if _HAVE_EPOLL:
            self._poller = MediaPoller.of(loop)
            self._poller.register(self)
        else:
            loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        """Drain up to :data:`MAX_DRAIN` datagrams (a reader of its own, without epoll)."""
        recv = self.sock.recvfrom
        handler = self.handler
        timing = self.timing
        for _ in range(MAX_DRAIN):
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors surface here on Linux; nothing to do
            if handler is None:
                continue
            if timing is None or timing.skip:
                if timing is not None:
                    timing.skip -= 1
                try:
                    handler(data, addr)
                except Exception:
                    log.exception("rtp_handler_error", port=self.port)
                continue
            timing.sample(handler, data, addr, self.port)

    def use_native(self, fast: object, native_round: NativeRound) -> None:
        """Datagrams go to ``fast`` (the native engine's per-call path) in rounds run by
        ``native_round``; without epoll, the handler (the engine's Python entry) only."""
        self.fast = fast
        if self._poller is not None:
            self._poller.native_round = native_round

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:  # BlockingIOError (full buffer) included: late audio is dropped
            self.dropped_sends += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.fast = None  # the native path refers back to the call
        if self._poller is not None:
            self._poller.unregister(self)
        else:
            self._loop.remove_reader(self._fd)
        self.sock.close()
        self._ports.release(self.port)


Tickable = Callable[[float], None]


class MediaClock:
    """A 20 ms tick shared by all calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.020) -> None:
        self._loop = loop
        self._interval = interval
        self._subscribers: dict[int, Tickable] = {}
        self._next_id = 0
        self._handle: asyncio.TimerHandle | None = None
        self._next_at = 0.0
        self._ticking = False  # inside _tick: it re-arms (or not) once the subscribers ran
        self.max_lag = 0.0

    def subscribe(self, tick: Tickable) -> int:
        self._next_id += 1
        self._subscribers[self._next_id] = tick
        if self._handle is None and not self._ticking:
            self._next_at = self._loop.time() + self._interval
            self._handle = self._loop.call_at(self._next_at, self._tick)
        return self._next_id

    def unsubscribe(self, token: int) -> None:
        self._subscribers.pop(token, None)
        if not self._subscribers and self._handle is not None and not self._ticking:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self._loop.time()
        self.max_lag = max(self.max_lag, now - self._next_at)
        self._ticking = True
        try:
            for tick in list(self._subscribers.values()):
                try:
                    tick(now)
                except Exception:
                    log.exception("media_tick_error")
        finally:
            self._ticking = False
        if not self._subscribers:
            self._handle = None
            return
        # Fixed cadence; if the loop fell far behind, skip ahead instead of bursting.
        self._next_at += self._interval
        if self._next_at < now - 5 * self._interval:
            self._next_at = now + self._interval
        self._handle = self._loop.call_at(self._next_at, self._tick)

    def close(self) -> None:
        self._subscribers.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
