"""RTP sockets on the event loop, a port allocator, and the media clock.

Media is real time: a socket is a plain non-blocking UDP socket watched with
``loop.add_reader``; a readable event drains every queued datagram and hands
each to the bridge synchronously (no asyncio transport/protocol objects, no
queue, no thread). A send that would block drops the packet, which is the
right thing for late audio. One :class:`MediaClock` ticks every 20 ms for all
calls (silence/keep-alive frames, RTCP, no-media checks) instead of a timer
per call.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Callable

from gateway.ops.logging import get_logger

log = get_logger(__name__)

PacketHandler = Callable[[bytes, tuple[str, int]], None]
MAX_DRAIN = 64  # datagrams read per readable event before yielding to the loop


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


class RtpSocket:
    """One bound UDP socket feeding ``handler`` packet by packet."""

    __slots__ = ("_closed", "_fd", "_loop", "_ports", "dropped_sends", "handler", "port", "sock")

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
        self.dropped_sends = 0
        self._closed = False
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        handler = self.handler
        for _ in range(MAX_DRAIN):
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP errors surface here on Linux; nothing to do
            if handler is not None:
                try:
                    handler(data, addr)
                except Exception:
                    log.exception("rtp_handler_error", port=self.port)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, OSError):
            self.dropped_sends += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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
