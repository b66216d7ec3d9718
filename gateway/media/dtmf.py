"""RFC 4733 telephone-events: payload format and a one-way relay between legs.

An event's packets all carry the RTP timestamp of the event's start, the
first has the marker bit, the duration grows with each update, and the final
(E bit) packet is sent three times (RFC 4733 2.5.1).  The relay re-bases
events from the source leg's timestamp space into the target leg's: each
event gets the target leg's current *audio* timestamp when it starts, which
is what receivers expect (WhatsApp drops digits whose timestamp base is
unrelated to the audio, and wants the 8000 Hz event clock even though Opus
runs at 48000).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

from gateway.media.rtp import RtpPacket

__all__ = [
    "DtmfError",
    "DtmfEvent",
    "DtmfRelay",
    "RelayedPacket",
    "parse_event",
]

_EVENT = struct.Struct("!BBH")
_MAX_DURATION = 0xFFFF

#: Digits by event code (RFC 4733 3.2).
DIGITS = "0123456789*#ABCD"


class DtmfError(ValueError):
    """A telephone-event payload shorter than 4 octets."""


class DtmfEvent(NamedTuple):
    """One RFC 4733 event report (2.3): code, end bit, volume (-dBm0), duration."""

    event: int
    end: bool
    volume: int
    duration: int

    def serialize(self) -> bytes:
        return _EVENT.pack(
            self.event & 0xFF,
            (0x80 if self.end else 0) | (self.volume & 0x3F),
            min(max(self.duration, 0), _MAX_DURATION),
        )

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def parse_event(payload: bytes) -> DtmfEvent:
    """The first event report of a payload (the R bit is ignored)."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload of {len(payload)} octets")
    event, flags, duration = _EVENT.unpack_from(payload)
    return DtmfEvent(event, flags >= 0x80, flags & 0x3F, duration)


#: (payload, target RTP timestamp, marker) for ``RtpSender.packet_at``.
RelayedPacket = tuple[bytes, int, bool]


class DtmfRelay:
    """Relay RFC 4733 events from a source leg to a target leg (one direction).

    Call :meth:`process` with each received telephone-event packet and the
    target sender's current audio timestamp (``RtpSender.timestamp``); send
    what it returns with ``RtpSender.packet_at`` in the target's SSRC and
    sequence space.  An event is identified by its source RTP timestamp:

    * its first packet seen gets the marker bit and pins the event's target
      timestamp; all later packets of the event reuse it;
    * event code, volume and duration are carried unchanged (duration is
      rescaled when ``source_clock`` and ``target_clock``, the legs'
      telephone-event clocks, differ);
    * non-end updates that do not extend the duration (duplicates,
      reordered) are dropped; every end packet (first and retransmissions)
      is forwarded; updates after the end are dropped;
    * a new event while the previous one has no end closes the previous
      one with ``end_repeats`` end packets first (a long event's next
      segment, RFC 4733 2.5.1.3, continues it instead: no end, no marker);
    * packets of events already closed are dropped.

    ``in_progress`` is True from an event's start to its end so the bridge
    can hold back the target's audio meanwhile (RFC 4733 advises against
    sending a tone both as events and as audio).  :meth:`expire` closes an
    event whose end never came (``timeout`` seconds without packets): pass
    ``now`` to :meth:`process`, or leave it out and call :meth:`expire`
    from a periodic tick, which then measures the silence from its own
    first call after the last packet.
    """

    __slots__ = (
        "_duration",
        "_ended",
        "_event",
        "_finished",
        "_last_seen",
        "_source_duration",
        "_source_ts",
        "_target_ts",
        "_volume",
        "dropped",
        "end_repeats",
        "events",
        "forwarded",
        "malformed",
        "source_clock",
        "synthesized_ends",
        "target_clock",
        "timeout",
    )

    def __init__(
        self,
        source_clock: int = 8000,
        target_clock: int = 8000,
        end_repeats: int = 3,
        timeout: float = 1.0,
    ) -> None:
        self.source_clock = source_clock
        self.target_clock = target_clock
        self.end_repeats = end_repeats
        self.timeout = timeout
        self._source_ts: int | None = None
        self._target_ts = 0
        self._event = 0
        self._volume = 0
        self._duration = 0  # last forwarded, target units
        self._source_duration = -1  # last accepted, source units
        self._ended = True
        self._last_seen: float | None = None
        self._finished: deque[int] = deque(maxlen=8)
        self.events = 0
        self.forwarded = 0
        self.dropped = 0
        self.malformed = 0
        self.synthesized_ends = 0

    @property
    def in_progress(self) -> bool:
        return not self._ended

    def _scaled(self, duration: int) -> int:
        if self.source_clock == self.target_clock:
            return duration
        return min(_MAX_DURATION, duration * self.target_clock // self.source_clock)

    def _forward(self, payload: bytes, ev: DtmfEvent, marker: bool) -> list[RelayedPacket]:
        self._volume = ev.volume
        if self.source_clock == self.target_clock:
            self._duration = ev.duration
            out = payload[:4] if len(payload) != 4 else payload
        else:
            self._duration = self._scaled(ev.duration)
            out = DtmfEvent(ev.event, ev.end, ev.volume, self._duration).serialize()
        self.forwarded += 1
        return [(out, self._target_ts, marker)]

    def process(
        self, packet: RtpPacket, target_timestamp: int, now: float | None = None
    ) -> list[RelayedPacket]:
        """What to send on the target leg for one received event packet."""
        payload = packet.payload
        try:
            ev = parse_event(payload)
        except DtmfError:
            self.malformed += 1
            return []
        ts = packet.timestamp
        if ts == self._source_ts:
            self._last_seen = now
            if ev.end:
                self._ended = True
                self._source_duration = max(self._source_duration, ev.duration)
                return self._forward(payload, ev, False)
            if self._ended or ev.duration <= self._source_duration:
                self.dropped += 1
                return []
            self._source_duration = ev.duration
            return self._forward(payload, ev, False)
        if ts in self._finished:
            self.dropped += 1  # a straggler of an event already closed
            return []

        # A new event (or the next segment of a long one).
        out: list[RelayedPacket] = []
        continuation = (
            not self._ended and ev.event == self._event and self._source_duration >= _MAX_DURATION
        )
        if not continuation:
            out = self.close()
        if self._source_ts is not None:
            self._finished.append(self._source_ts)
        self._source_ts = ts
        self._target_ts = target_timestamp & 0xFFFFFFFF
        self._event = ev.event
        self._source_duration = ev.duration
        self._ended = ev.end
        self._last_seen = now
        if not continuation:
            self.events += 1
        out += self._forward(payload, ev, not continuation)
        return out

    def close(self) -> list[RelayedPacket]:
        """End the current event if it has no end yet: ``end_repeats`` end packets."""
        if self._ended:
            return []
        self._ended = True
        self.synthesized_ends += 1
        end = DtmfEvent(self._event, True, self._volume, self._duration).serialize()
        return [(end, self._target_ts, False)] * self.end_repeats

    def expire(self, now: float) -> list[RelayedPacket]:
        """Close an event that has had no packet for ``timeout`` seconds."""
        if self._ended:
            return []
        if self._last_seen is None:
            self._last_seen = now
        elif now - self._last_seen >= self.timeout:
            return self.close()
        return []
