"""What an inbound stream connection may cost, decided before it costs anything (sans-IO).

A TCP or TLS connection is accepted as plain TCP; the source goes through the
listener's access list and :class:`ConnectionGuard` (total connections,
connections per source IP, TLS handshakes in flight) before any TLS record is
read or written, so a refused source never gets a ServerHello and costs no
private-key operation. An admitted connection then lives by a
:class:`StreamClock`: a handshake deadline, a deadline for its first complete
message, a deadline for each message from its first byte until it is whole,
and an idle timeout reset by complete messages and RFC 5626 CRLF pings only
(bytes alone do not keep a connection). The asyncio side is
:mod:`gateway.transport.stream`; the counters here are read by the metrics
collector at scrape time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "CLOSE_REASONS",
    "HANDSHAKE_RESULTS",
    "REFUSALS",
    "ConnectionGuard",
    "ConnectionLimits",
    "ConnectionStats",
    "StreamClock",
]

REFUSALS = ("source", "total", "per_source", "handshakes")
"""Why a connection was refused at accept: not allowed, or which cap was full."""
CLOSE_REASONS = (
    "handshake_timeout",
    "first_message_timeout",
    "message_timeout",
    "idle_timeout",
    "write_buffer",
)
"""Why the gateway closed a connection it had admitted."""
HANDSHAKE_RESULTS = ("started", "completed", "failed", "timeout")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps and deadlines for stream connections (``sip.connections`` in the config)."""

    max_connections: int = 1024  # inbound TCP/TLS connections in all, every listener
    max_per_source: int = 16  # inbound connections from one source IP
    max_handshakes: int = 64  # TLS handshakes in flight
    handshake_timeout: float = 5.0  # accept -> TLS handshake done
    first_message_timeout: float = 15.0  # accept -> first complete SIP message
    message_timeout: float = 10.0  # first byte of a message -> the message is whole
    idle_timeout: float = 300.0  # no complete message or CRLF ping for this long
    max_write_buffer: int = 262_144  # bytes queued toward a peer that does not read
    read_budget: int = 16  # messages handled per read before the loop gets a turn


@dataclass
class ConnectionStats:
    """Plain counters (the metrics collector reads them; no metrics import here)."""

    open: Counter[tuple[str, str]] = field(default_factory=Counter)  # (leg, tcp|tls): gauge
    handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (leg, result)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (leg, refusal)
    closed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (leg, close reason)


class ConnectionGuard:
    """Admission of inbound stream connections: total, per source and handshake caps.

    :meth:`admit` either counts the connection in (and returns None) or names the
    cap that is full; every admitted connection must be :meth:`release`\\ d once,
    and a TLS one's handshake ended with :meth:`handshake_over` once (or released
    while still handshaking).
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.handshaking = 0
        self._per_source: dict[str, int] = {}

    def admit(self, host: str, *, tls: bool) -> str | None:
        limits = self.limits
        if self.total >= limits.max_connections:
            return "total"
        if self._per_source.get(host, 0) >= limits.max_per_source:
            return "per_source"
        if tls and self.handshaking >= limits.max_handshakes:
            return "handshakes"
        self.total += 1
        self._per_source[host] = self._per_source.get(host, 0) + 1
        if tls:
            self.handshaking += 1
        return None

    def handshake_over(self) -> None:
        self.handshaking -= 1

    def release(self, host: str, *, handshaking: bool) -> None:
        self.total -= 1
        if handshaking:
            self.handshaking -= 1
        left = self._per_source.get(host, 0) - 1
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)

    def from_source(self, host: str) -> int:
        return self._per_source.get(host, 0)


class StreamClock:
    """When one inbound connection must be closed, from what it has done so far.

    Times are the caller's clock (the event loop's). :meth:`received` is told,
    after each read, how many complete messages and pings it held and how many
    bytes of an unfinished message are left; :meth:`expired` names the deadline
    passed, if any.
    """

    __slots__ = ("_limits", "first_until", "handshake_until", "idle_since", "message_since")

    def __init__(self, limits: ConnectionLimits, now: float, *, handshake: bool) -> None:
        self._limits = limits
        self.handshake_until: float | None = now + limits.handshake_timeout if handshake else None
        self.first_until: float | None = now + limits.first_message_timeout
        self.message_since: float | None = None  # first byte of the unfinished message
        self.idle_since = now

    def handshake_done(self) -> None:
        self.handshake_until = None

    def received(self, now: float, messages: int, pings: int, buffered: int) -> None:
        if messages:
            self.first_until = None  # a ping is not a first message
        if messages or pings:
            self.idle_since = now
            self.message_since = now if buffered else None
        elif not buffered:
            self.message_since = None
        elif self.message_since is None:
            self.message_since = now

    def expired(self, now: float) -> str | None:
        if self.handshake_until is not None:
            return "handshake_timeout" if now >= self.handshake_until else None
        limits = self._limits
        if self.message_since is not None and now - self.message_since >= limits.message_timeout:
            return "message_timeout"
        if self.first_until is not None and now >= self.first_until:
            return "first_message_timeout"
        if now - self.idle_since >= limits.idle_timeout:
            return "idle_timeout"
        return None
