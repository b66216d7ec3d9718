"""A user-space impairment relay for the WhatsApp media leg (no netem here).

One UDP socket on loopback stands between Meta's media (the emulator, or the
bench's load generator) and the gateway's WhatsApp-side media port:

    Meta media  <->  relay (the address Meta's SDP declares)  <->  gateway

Meta's SDP names the relay (:meth:`ImpairmentRelay.front`), so the gateway
latches on, and only accepts, the address Meta declared; the gateway sends
there and the relay passes it on to Meta's real socket. Meta sends to the
relay (its answer's address is given to :meth:`set_gateway`), which passes it
on to the gateway from that same declared address. Packets from Meta's
socket go toward the gateway; packets from the gateway's declared address go
toward Meta; anything else is counted (``foreign``) and dropped.

Each direction has its own :class:`Impairment`: random loss, loss bursts at
given stream times, jitter (uniform or normal delay, in order or allowed to
overtake), explicit reordering (a packet held back behind the next one) and
duplication. Everything random comes from a ``random.Random`` seeded per
direction, with the same draws for every packet, so a run with the same
packets drops, delays and duplicates the same ones. Bursts are placed on the
stream's packet count (packet k is at ``k * frame_ms``), not the wall clock,
so they are deterministic too. RTCP (rtcp-mux, recognised by its packet type)
passes unimpaired unless ``impair_rtcp``; SRTP is not opened.

The relay runs on an asyncio loop: the caller's (``relay.open()`` inside a
coroutine), or its own thread (:class:`RelayThread`), never the daemon's.
:attr:`ImpairmentRelay.counts` says what it did, per direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

__all__ = [
    "Burst",
    "Impairment",
    "ImpairmentRelay",
    "RelayCounts",
    "RelayThread",
    "parse_bursts",
]

Address = tuple[str, int]
TO_GATEWAY = "to_gateway"
TO_META = "to_meta"


@dataclass(frozen=True)
class Burst:
    """Every packet whose stream time (``index * frame_ms``) falls in
    ``[start_ms, start_ms + length_ms)`` is lost."""

    start_ms: float
    length_ms: float


def parse_bursts(
    spec: str, first_ms: float = 1000.0, every_ms: float = 2000.0
) -> tuple[Burst, ...]:
    """``"2x60"``: 2 bursts of 60 ms, the first at ``first_ms`` and then every
    ``every_ms``; ``"2x60@1500,4000"``: at those stream times (ms). ``""``: none."""
    spec = spec.strip()
    if not spec:
        return ()
    m = re.fullmatch(r"(\d+)\s*x\s*(\d+(?:\.\d+)?)(?:@([\d.,\s]+))?", spec)
    if m is None:
        raise ValueError(f"burst spec {spec!r}: expected NxMS or NxMS@T1,T2,...")
    count, length = int(m.group(1)), float(m.group(2))
    if m.group(3):
        starts = [float(v) for v in m.group(3).split(",") if v.strip()]
        if len(starts) != count:
            raise ValueError(f"burst spec {spec!r}: {count} bursts but {len(starts)} times")
    else:
        starts = [first_ms + i * every_ms for i in range(count)]
    return tuple(Burst(s, length) for s in starts)


@dataclass(frozen=True)
class Impairment:
    """What one direction suffers. Percentages are of RTP packets (0-100)."""

    loss_pct: float = 0.0
    bursts: tuple[Burst, ...] = ()
    jitter_ms: float = 0.0  # uniform: delay in [0, jitter_ms]; normal: |N(0, jitter_ms)|
    jitter_dist: Literal["uniform", "normal"] = "uniform"
    jitter_reorder: bool = False  # a delayed packet may be overtaken by the next
    reorder_pct: float = 0.0  # a packet held back and sent right after the next one
    duplicate_pct: float = 0.0  # a packet sent twice
    frame_ms: float = 20.0  # packet spacing, for placing the bursts
    impair_rtcp: bool = False
    seed: int = 1

    @property
    def clean(self) -> bool:
        return not (
            self.loss_pct or self.bursts or self.jitter_ms or self.reorder_pct or self.duplicate_pct
        )

    def describe(self) -> str:
        """One line for reports: ``5 % loss, 2 x 60 ms bursts, 20 ms jitter``."""
        parts: list[str] = []
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g} % loss")
        if self.bursts:
            lengths = {b.length_ms for b in self.bursts}
            if len(lengths) == 1:
                parts.append(f"{len(self.bursts)} x {lengths.pop():g} ms bursts")
            else:
                parts.append(", ".join(f"{b.length_ms:g} ms burst" for b in self.bursts))
        if self.jitter_ms:
            kind = "" if self.jitter_dist == "uniform" else f" {self.jitter_dist}"
            order = ", may reorder" if self.jitter_reorder else ""
            parts.append(f"{self.jitter_ms:g} ms{kind} jitter{order}")
        if self.reorder_pct:
            parts.append(f"{self.reorder_pct:g} % reordered")
        if self.duplicate_pct:
            parts.append(f"{self.duplicate_pct:g} % duplicated")
        return ", ".join(parts) or "none"


@dataclass
class RelayCounts:
    """What one direction of the relay did (RTP packets unless named)."""

    received: int = 0
    forwarded: int = 0  # datagrams sent on, duplicates included
    lost_random: int = 0
    lost_burst: int = 0
    duplicated: int = 0
    reordered: int = 0  # held back behind the next packet (reorder_pct)
    delayed: int = 0  # given a jitter delay above 0
    overtaken: int = 0  # sent after a packet that arrived later (jitter or reorder)
    rtcp: int = 0
    send_errors: int = 0

    @property
    def lost(self) -> int:
        return self.lost_random + self.lost_burst


def _is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95


class _Direction:
    """One direction's impairment state: its draws, pending sends and counts."""

    def __init__(self, name: str, imp: Impairment) -> None:
        self.imp = imp
        self.rng = random.Random(f"{imp.seed}:{name}")
        self.counts = RelayCounts()
        self.index = 0  # RTP packets seen
        self.last_due = 0.0  # in-order jitter: nobody leaves before the one before
        self.held: bytes | None = None  # reorder_pct: waiting for the next packet
        self.held_index = -1
        self.sent_index = -1  # highest arrival index sent on (for ``overtaken``)

    def in_burst(self, index: int) -> bool:
        at = index * self.imp.frame_ms
        return any(b.start_ms <= at < b.start_ms + b.length_ms for b in self.imp.bursts)


class ImpairmentRelay:
    """The relay for one call's WhatsApp media (see the module docstring)."""

    def __init__(
        self,
        to_gateway: Impairment | None = None,
        to_meta: Impairment | None = None,
        *,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.meta: Address | None = None  # Meta's real media socket
        self.gateway: Address | None = None  # the gateway's media address (its SDP)
        self.foreign = 0
        self._dirs = {
            TO_GATEWAY: _Direction(TO_GATEWAY, to_gateway or Impairment()),
            TO_META: _Direction(TO_META, to_meta or Impairment()),
        }
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._timer: asyncio.TimerHandle | None = None  # drains _queue
        self._queue: list[tuple[float, int, _Direction, bytes, Address, int]] = []
        self._queue_count = 0

    # -- set-up ----------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop | None = None) -> Address:
        """Bind on ``host`` and serve on ``loop`` (default: the running loop)."""
        loop = loop or asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((self.host, 0))
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)
        return self.address

    @property
    def address(self) -> Address:
        """The relay's socket: the address Meta's SDP declares."""
        if self._sock is None:
            raise RuntimeError("relay not open")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def front(self, meta_media: Address) -> Address:
        """Meta's media socket is ``meta_media``; returns the address to put in
        Meta's SDP instead (the emulator's hook)."""
        self.meta = meta_media
        return self.address

    def set_gateway(self, gateway_media: Address) -> None:
        """The gateway's media address from its SDP: Meta's packets go there."""
        self.gateway = gateway_media

    @property
    def counts(self) -> dict[str, RelayCounts]:
        return {name: d.counts for name, d in self._dirs.items()}

    def describe(self) -> str:
        a, b = self._dirs[TO_GATEWAY].imp, self._dirs[TO_META].imp
        if a == b:
            return f"both ways: {a.describe()}"
        return f"Meta->gateway: {a.describe()}; gateway->Meta: {b.describe()}"

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    # -- the packets -------------------------------------------------------------
    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data, addr = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP unreachable of an earlier send, etc.
            self.datagram_received(data, (str(addr[0]), int(addr[1])))

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if addr == self.meta:
            if self.gateway is None:
                self.foreign += 1  # nowhere to send yet (Meta waits for the gateway anyway)
                return
            self._impair(self._dirs[TO_GATEWAY], data, self.gateway)
        elif self.meta is not None and (self.gateway is None or addr == self.gateway):
            # Before the answer is known, the gateway's first packets still reach Meta
            # (the emulator keeps them until it has the keys).
            self._impair(self._dirs[TO_META], data, self.meta)
        else:
            self.foreign += 1

    def _impair(self, d: _Direction, data: bytes, dest: Address) -> None:
        imp = d.imp
        c = d.counts
        if _is_rtcp(data) and not imp.impair_rtcp:
            c.rtcp += 1
            self._send(d, data, dest)
            return
        c.received += 1
        index = d.index
        d.index += 1
        rng = d.rng
        # The same draws for every packet, whatever is configured or decided.
        u_loss, u_dup, u_reorder = rng.random(), rng.random(), rng.random()
        u_jitter = rng.random() if imp.jitter_dist == "uniform" else abs(rng.gauss(0.0, 1.0))
        if imp.bursts and d.in_burst(index):
            c.lost_burst += 1
            return
        if u_loss * 100.0 < imp.loss_pct:
            c.lost_random += 1
            return
        copies = 2 if u_dup * 100.0 < imp.duplicate_pct else 1
        if copies == 2:
            c.duplicated += 1
        if d.held is None and u_reorder * 100.0 < imp.reorder_pct:
            c.reordered += 1
            d.held, d.held_index = data, index
            self._later(imp.frame_ms * 3 / 1000.0, lambda: self._release_held(d, dest, index))
            # A duplicate of a held packet goes now: its copy arrives after the next.
            if copies == 2:
                self._deliver(d, data, dest, index)
            return
        delay = u_jitter * imp.jitter_ms / 1000.0
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due = now + delay
        if not imp.jitter_reorder:
            due = max(due, d.last_due)
        d.last_due = due
        if delay > 0:
            c.delayed += 1
        held = d.held
        d.held = None
        for _ in range(copies):
            self._deliver(d, data, dest, index, due)
        if held is not None:  # the held packet follows the one after it
            self._deliver(d, held, dest, d.held_index, due)

    def _release_held(self, d: _Direction, dest: Address, index: int) -> None:
        if d.held is not None and d.held_index == index:  # no next packet came: let it go
            held, d.held = d.held, None
            self._deliver(d, held, dest, d.held_index)

    def _deliver(
        self, d: _Direction, data: bytes, dest: Address, index: int, due: float = 0.0
    ) -> None:
        loop = self._loop
        assert loop is not None
        if due - loop.time() <= 0.0005 and not self._queue:
            self._deliver_now(d, data, dest, index)
            return
        # One queue in due order, ties in the order queued (timers of equal
        # deadlines do not keep theirs), drained by one timer.
        self._queue_count += 1
        heapq.heappush(self._queue, (due, self._queue_count, d, data, dest, index))
        self._arm()

    def _arm(self) -> None:
        loop = self._loop
        assert loop is not None
        if not self._queue:
            return
        due = self._queue[0][0]
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        self._timer = loop.call_at(due, self._drain)

    def _drain(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        limit = loop.time() + 0.0005
        queue = self._queue
        while queue and queue[0][0] <= limit:
            _, _, d, data, dest, index = heapq.heappop(queue)
            self._deliver_now(d, data, dest, index)
        self._arm()

    def _deliver_now(self, d: _Direction, data: bytes, dest: Address, index: int) -> None:
        if index < d.sent_index:
            d.counts.overtaken += 1
        d.sent_index = max(d.sent_index, index)
        self._send(d, data, dest)

    def _send(self, d: _Direction, data: bytes, dest: Address) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(data, dest)
            d.counts.forwarded += 1
        except OSError:
            d.counts.send_errors += 1

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        loop = self._loop
        assert loop is not None
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            assert handle is not None
            self._timers.discard(handle)
            fn()

        handle = loop.call_later(delay, run)
        self._timers.add(handle)


@dataclass
class RelayThread:
    """An asyncio loop in a thread of its own for relays, when the caller's loop is
    busy or not asyncio (the bench's generator):

        with RelayThread() as t:
            relay = t.relay(Impairment(loss_pct=5))
    """

    name: str = "impair-relay"
    relays: list[ImpairmentRelay] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def relay(
        self, to_gateway: Impairment | None = None, to_meta: Impairment | None = None
    ) -> ImpairmentRelay:
        """A relay opened on this thread's loop."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("RelayThread not started")
        relay = ImpairmentRelay(to_gateway, to_meta)

        async def opening() -> None:
            relay.open(loop)

        asyncio.run_coroutine_threadsafe(opening(), loop).result(5.0)
        self.relays.append(relay)
        return relay

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def closing() -> None:
            for relay in self.relays:
                relay.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(closing(), loop).result(5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
