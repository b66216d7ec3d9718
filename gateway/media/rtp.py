"""RTP packets (RFC 3550 section 5) and the per-stream sender state.

The hot path is :func:`build_rtp` / :meth:`RtpSender.next_packet` (one
``struct.pack`` and one concatenation per packet) and :func:`parse_rtp` (one
``unpack_from`` and one slice in the common case of no CSRC, extension or
padding).
"""

from __future__ import annotations

import secrets
import struct

__all__ = [
    "RtpError",
    "RtpPacket",
    "RtpSender",
    "build_rtp",
    "is_rtcp",
    "parse_rtp",
]

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_HEADER_LEN = 12


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet."""


class RtpPacket:
    """One RTP packet.  ``payload`` has any padding already removed.

    ``padding`` is the number of padding octets (0: none) the packet carried,
    or should carry when serialised.  ``extension`` says whether a header
    extension (RFC 3550 5.3.1) is present; its 16-bit profile-defined value
    and its data (a multiple of 4 octets) are ``extension_profile`` and
    ``extension_data``.
    """

    __slots__ = (
        "csrc",
        "extension",
        "extension_data",
        "extension_profile",
        "marker",
        "padding",
        "payload",
        "payload_type",
        "sequence",
        "ssrc",
        "timestamp",
        "version",
    )

    def __init__(
        self,
        payload_type: int = 0,
        sequence: int = 0,
        timestamp: int = 0,
        ssrc: int = 0,
        payload: bytes = b"",
        marker: bool = False,
        csrc: tuple[int, ...] = (),
        extension_profile: int | None = None,
        extension_data: bytes = b"",
        padding: int = 0,
        version: int = 2,
    ) -> None:
        self.version = version
        self.padding = padding
        self.extension = extension_profile is not None
        self.marker = marker
        self.payload_type = payload_type
        self.sequence = sequence
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc = csrc
        self.extension_profile = extension_profile if extension_profile is not None else 0
        self.extension_data = extension_data
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"RtpPacket(pt={self.payload_type}, seq={self.sequence}, ts={self.timestamp}, "
            f"ssrc={self.ssrc:#010x}, marker={self.marker}, payload={len(self.payload)} bytes)"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RtpPacket):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def serialize(self) -> bytes:
        """The packet on the wire (RFC 3550 5.1)."""
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} out of range")
        if len(self.csrc) > 15:
            raise RtpError("more than 15 CSRCs")
        first = (
            (self.version << 6)
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension else 0)
            | len(self.csrc)
        )
        parts = [
            _HEADER.pack(
                first,
                self.payload_type | (0x80 if self.marker else 0),
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension:
            if len(self.extension_data) % 4:
                raise RtpError("extension data must be a multiple of 4 octets")
            parts.append(_EXT_HEADER.pack(self.extension_profile, len(self.extension_data) // 4))
            parts.append(self.extension_data)
        parts.append(self.payload)
        if self.padding:
            if not 1 <= self.padding <= 255:
                raise RtpError("padding must be 1..255 octets")
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet; raise :class:`RtpError` if it is not one."""
    length = len(data)
    if length < _HEADER_LEN:
        raise RtpError(f"RTP packet too short ({length} bytes)")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    offset = _HEADER_LEN
    end = length
    packet = RtpPacket.__new__(RtpPacket)
    packet.version = 2
    packet.marker = second >= 0x80
    packet.payload_type = second & 0x7F
    packet.sequence = sequence
    packet.timestamp = timestamp
    packet.ssrc = ssrc
    packet.padding = 0
    packet.extension = False
    packet.extension_profile = 0
    packet.extension_data = b""
    packet.csrc = ()
    if first & 0x3F:  # padding, extension or CSRCs: the uncommon path
        cc = first & 0x0F
        if cc:
            offset += 4 * cc
            if offset > end:
                raise RtpError("RTP packet truncated in CSRC list")
            packet.csrc = struct.unpack_from(f"!{cc}I", data, _HEADER_LEN)
        if first & 0x10:
            if offset + 4 > end:
                raise RtpError("RTP packet truncated in extension header")
            profile, words = _EXT_HEADER.unpack_from(data, offset)
            offset += 4
            if offset + 4 * words > end:
                raise RtpError("RTP packet truncated in extension")
            packet.extension = True
            packet.extension_profile = profile
            packet.extension_data = data[offset : offset + 4 * words]
            offset += 4 * words
        if first & 0x20:
            pad = data[-1]
            # RFC 3550 5.1: the count includes itself, so it is at least 1.
            if pad == 0 or offset + pad > end:
                raise RtpError(f"invalid RTP padding length {pad}")
            packet.padding = pad
            end -= pad
    packet.payload = data[offset:end]
    return packet


def build_rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A version-2 RTP packet without CSRC, extension or padding (fast path)."""
    return _HEADER.pack(0x80, pt | 0x80 if marker else pt, seq, ts, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4 demultiplexing of RTP and RTCP on one port.

    RTCP packet types 192-223 occupy the octet where RTP has M + PT, so a
    second octet whose low 7 bits are 64-95 is RTCP (those RTP payload types
    must not be used with rtcp-mux).
    """
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95


class RtpSender:
    """Send-side state of one RTP stream: SSRC, sequence and timestamp space.

    ``sequence`` and ``timestamp`` are those of the *next* packet; both start
    at random values (RFC 3550 5.1) and wrap.  ``timestamp`` is therefore also
    "the stream's current media time", which is what an RFC 4733 event that
    starts now must carry.  ``packets``/``octets`` (payload octets) feed the
    RTCP SR sender info; the ``report_*``/``last_sr_*`` slots belong to
    :mod:`gateway.media.rtcp`.
    """

    __slots__ = (
        "clock_rate",
        "last_sr_ntp",
        "last_sr_time",
        "last_timestamp",
        "octets",
        "packets",
        "report_packets",
        "sequence",
        "ssrc",
        "timestamp",
    )

    def __init__(
        self,
        clock_rate: int,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.clock_rate = clock_rate
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.sequence = secrets.randbits(16) if sequence is None else sequence & 0xFFFF
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        #: RTP timestamp of the last packet sent (for the SR); valid once packets > 0.
        self.last_timestamp = self.timestamp
        self.packets = 0
        self.octets = 0
        self.report_packets = 0
        self.last_sr_ntp = -1
        self.last_sr_time = 0.0

    def next_packet(self, pt: int, payload: bytes, samples: int, marker: bool = False) -> bytes:
        """The next media packet; then advance sequence by 1, timestamp by ``samples``."""
        seq = self.sequence
        ts = self.timestamp
        data = _HEADER.pack(0x80, pt | 0x80 if marker else pt, seq, ts, self.ssrc) + payload
        self.sequence = (seq + 1) & 0xFFFF
        self.timestamp = (ts + samples) & 0xFFFFFFFF
        self.last_timestamp = ts
        self.packets += 1
        self.octets += len(payload)
        return data

    def packet_at(self, pt: int, payload: bytes, timestamp: int, marker: bool = False) -> bytes:
        """A packet with an explicit timestamp in this stream's SSRC and sequence space.

        For RFC 4733 events: only the sequence number advances; the media
        timestamp is left alone.
        """
        seq = self.sequence
        data = (
            _HEADER.pack(0x80, pt | 0x80 if marker else pt, seq, timestamp & 0xFFFFFFFF, self.ssrc)
            + payload
        )
        self.sequence = (seq + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        return data

    def skip(self, samples: int) -> None:
        """Advance the media timestamp without sending (e.g. a paused source)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
