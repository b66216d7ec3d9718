"""RTCP (RFC 3550 section 6): SR, RR, SDES, BYE; reception statistics.

Packets are built and parsed as compound packets (6.1).  The per-packet cost
that matters is :meth:`ReceiveStats.received`, which implements appendix A.1
(sequence validation) and A.8 (interarrival jitter) with plain attribute
arithmetic; everything else runs once per report interval.

Times: ``now``/``arrival`` are seconds on the caller's clock (any monotonic
clock); DLSR and round-trip times come from differences of it.  The NTP
timestamp in an SR comes from ``wallclock`` (Unix seconds) when given, else
from ``now``; RFC 3550 wants wallclock there, but only its difference to the
echo (LSR) matters to the peer for round-trip times.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.media.rtp import RtpSender

__all__ = [
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "ReceiveStats",
    "ReportBlock",
    "RtcpBye",
    "RtcpError",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "SdesChunk",
    "build_report",
    "ntp_timestamp",
    "parse_rtcp",
    "round_trip_time",
    "serialize_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203

SDES_END = 0
SDES_CNAME = 1

_COMMON = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction|lost, ext seq, jitter, lsr, dlsr
_U32 = struct.Struct("!I")

_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_RTP_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_MIN_SEQUENTIAL = 2


class RtcpError(ValueError):
    """A datagram that is not a valid (compound) RTCP packet."""


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 6.4.1)."""

    ssrc: int
    fraction_lost: int = 0  # 8-bit fixed point, lost/expected * 256
    cumulative_lost: int = 0  # signed 24-bit
    highest_sequence: int = 0  # extended highest sequence number received
    jitter: int = 0  # timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def serialize(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(slots=True)
class RtcpSenderReport:
    """SR (RFC 3550 6.4.1)."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        _check_count(self.reports)
        body = _SENDER_INFO.pack(
            self.ssrc,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        ) + b"".join(block.serialize() for block in self.reports)
        return _packet(RTCP_SR, len(self.reports), body)


@dataclass(slots=True)
class RtcpReceiverReport:
    """RR (RFC 3550 6.4.2)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        _check_count(self.reports)
        body = _U32.pack(self.ssrc) + b"".join(block.serialize() for block in self.reports)
        return _packet(RTCP_RR, len(self.reports), body)


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: an SSRC and its (item type, value) pairs."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class RtcpSdes:
    """SDES (RFC 3550 6.5)."""

    chunks: list[SdesChunk] = field(default_factory=list)

    def serialize(self) -> bytes:
        _check_count(self.chunks)
        parts = []
        for chunk in self.chunks:
            raw = bytearray(_U32.pack(chunk.ssrc))
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise RtcpError("SDES item type 1..255 and value up to 255 octets")
                raw += bytes((kind, len(value))) + value
            # 6.5: the item list ends with at least one null octet, padded to 32 bits.
            raw += bytes(4 - len(raw) % 4)
            parts.append(bytes(raw))
        return _packet(RTCP_SDES, len(self.chunks), b"".join(parts))


@dataclass(slots=True)
class RtcpBye:
    """BYE (RFC 3550 6.6)."""

    sources: list[int] = field(default_factory=list)
    reason: str | None = None

    def serialize(self) -> bytes:
        _check_count(self.sources)
        body = b"".join(_U32.pack(ssrc) for ssrc in self.sources)
        if self.reason is not None:
            text = self.reason.encode("utf-8")[:255]
            raw = bytes((len(text),)) + text
            body += raw + bytes(-len(raw) % 4)
        return _packet(RTCP_BYE, len(self.sources), body)


@dataclass(slots=True)
class RtcpUnknown:
    """Any other packet type (APP, RTPFB, PSFB, XR...), kept raw."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        if len(self.body) % 4:
            raise RtcpError("RTCP body must be a multiple of 4 octets")
        return _packet(self.packet_type, self.count, self.body)


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown


def _check_count(items: Sequence[object]) -> None:
    if len(items) > 31:
        raise RtcpError("at most 31 report blocks / chunks / sources per packet")


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    return _COMMON.pack(0x80 | count, packet_type, len(body) // 4) + body


def serialize_rtcp(packets: Sequence[RtcpPacket]) -> bytes:
    """A compound packet: the packets back to back."""
    return b"".join(packet.serialize() for packet in packets)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 6.1); raise :class:`RtcpError`."""
    packets: list[RtcpPacket] = []
    offset = 0
    total = len(data)
    if total < 4:
        raise RtcpError(f"RTCP packet too short ({total} bytes)")
    while offset < total:
        if offset + 4 > total:
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = _COMMON.unpack_from(data, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 + 4 * words
        if end > total:
            raise RtcpError("RTCP packet length exceeds the datagram")
        count = first & 0x1F
        body_end = end
        if first & 0x20:
            pad = data[end - 1]
            if pad == 0 or offset + 4 + pad > end:
                raise RtcpError(f"invalid RTCP padding length {pad}")
            body_end = end - pad
        packets.append(_parse_one(data, packet_type, count, offset + 4, body_end))
        offset = end
    return packets


def _parse_one(data: bytes, packet_type: int, count: int, start: int, end: int) -> RtcpPacket:
    if packet_type == RTCP_SR:
        if start + 24 * count + _SENDER_INFO.size > end:
            raise RtcpError("truncated SR")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
        blocks_at = start + _SENDER_INFO.size
        blocks = [ReportBlock.parse(data, blocks_at + 24 * i) for i in range(count)]
        return RtcpSenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks)
    if packet_type == RTCP_RR:
        if start + 4 + 24 * count > end:
            raise RtcpError("truncated RR")
        (ssrc,) = _U32.unpack_from(data, start)
        blocks = [ReportBlock.parse(data, start + 4 + 24 * i) for i in range(count)]
        return RtcpReceiverReport(ssrc, blocks)
    if packet_type == RTCP_SDES:
        return RtcpSdes(_parse_sdes_chunks(data, count, start, end))
    if packet_type == RTCP_BYE:
        if start + 4 * count > end:
            raise RtcpError("truncated BYE")
        sources = [_U32.unpack_from(data, start + 4 * i)[0] for i in range(count)]
        reason = None
        at = start + 4 * count
        if at < end:
            length = data[at]
            if at + 1 + length > end:
                raise RtcpError("truncated BYE reason")
            reason = data[at + 1 : at + 1 + length].decode("utf-8", "replace")
        return RtcpBye(sources, reason)
    return RtcpUnknown(packet_type, count, data[start:end])


def _parse_sdes_chunks(data: bytes, count: int, start: int, end: int) -> list[SdesChunk]:
    chunks = []
    at = start
    for _ in range(count):
        if at + 4 > end:
            raise RtcpError("truncated SDES chunk")
        chunk = SdesChunk(_U32.unpack_from(data, at)[0])
        at += 4
        while True:
            if at >= end:
                raise RtcpError("SDES chunk without terminating null item")
            kind = data[at]
            if kind == SDES_END:
                at += 4 - (at - start) % 4  # skip the null octet(s) to the 32-bit boundary
                break
            if at + 2 > end or at + 2 + data[at + 1] > end:
                raise RtcpError("truncated SDES item")
            length = data[at + 1]
            chunk.items.append((kind, data[at + 2 : at + 2 + length]))
            at += 2 + length
        chunks.append(chunk)
    return chunks


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (RFC 3550 4) for a Unix time in seconds."""
    value = int((unix_time + _NTP_UNIX_OFFSET) * 4294967296.0)
    return value & 0xFFFFFFFFFFFFFFFF


class ReceiveStats:
    """Reception statistics of one source (RFC 3550 appendix A.1, A.3, A.8).

    Call :meth:`received` for every RTP packet of the source (after SRTP), or
    :meth:`received_sequence` for packets whose timestamps are on another
    clock (RFC 4733 events sharing the SSRC) so they do not skew the jitter.
    """

    __slots__ = (
        "bad_seq",
        "base_seq",
        "clock_rate",
        "cycles",
        "duplicates",
        "expected_prior",
        "initialised",
        "jitter",
        "last_sr_ntp",
        "last_sr_time",
        "last_transit",
        "max_seq",
        "probation",
        "received_count",
        "received_prior",
        "ssrc",
    )

    def __init__(self, clock_rate: int, ssrc: int = 0) -> None:
        self.clock_rate = clock_rate
        self.ssrc = ssrc
        self.initialised = False
        self.probation = _MIN_SEQUENTIAL
        self.base_seq = 0
        self.max_seq = 0
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received_count = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.duplicates = 0
        self.jitter = 0.0  # timestamp units, A.8 running estimate
        self.last_transit: float | None = None
        self.last_sr_ntp = 0  # middle 32 bits of the peer's last SR, 0: none yet
        self.last_sr_time = 0.0

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received_count = 0
        self.received_prior = 0
        self.expected_prior = 0

    def received_sequence(self, seq: int) -> bool:
        """A.1 ``update_seq``: account one packet; False if it is not (yet) valid."""
        if not self.initialised:
            self.initialised = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self.probation = _MIN_SEQUENTIAL
        max_seq = self.max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if self.probation:
            # Source is not valid until MIN_SEQUENTIAL packets in sequence.
            if seq == (max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received_count += 1
                    return True
            else:
                self.probation = _MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < _MAX_DROPOUT:
            # In order, with permissible gap.
            if seq < max_seq:
                self.cycles += _RTP_SEQ_MOD  # sequence number wrapped
            elif udelta == 0:
                self.duplicates += 1  # still counted as received, as in A.1
            self.max_seq = seq
        elif udelta <= _RTP_SEQ_MOD - _MAX_MISORDER:
            # The sequence number made a very large jump.
            if seq == self.bad_seq:
                # Two sequential packets: assume the other side restarted
                # without telling us, so just re-sync.
                self._init_seq(seq)
                self.last_transit = None
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet (received counts it, as in A.1,
        # so cumulative lost can go negative)
        self.received_count += 1
        return True

    def received(self, seq: int, ts: int, arrival: float) -> bool:
        """Account one packet and update the A.8 jitter; returns validity (A.1)."""
        if not self.received_sequence(seq):
            return False
        # A.8: transit time in timestamp units; only differences matter, so
        # the arrival clock's origin is irrelevant.  The difference is taken
        # modulo 2^32 so RTP timestamp wrap does not look like a huge jump.
        transit = arrival * self.clock_rate - ts
        last = self.last_transit
        self.last_transit = transit
        if last is not None:
            d = (transit - last + 2147483648.0) % 4294967296.0 - 2147483648.0
            if d < 0:
                d = -d
            self.jitter += (d - self.jitter) * 0.0625
        return True

    def sender_report(self, report: RtcpSenderReport, now: float) -> None:
        """Remember the peer's SR for LSR/DLSR in our next report block."""
        self.last_sr_ntp = (report.ntp_timestamp >> 16) & 0xFFFFFFFF
        self.last_sr_time = now

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """A.3: packets expected since the source became valid."""
        if not self.initialised or self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """A.3: cumulative packets lost (negative with duplicates)."""
        return self.expected - self.received_count if self.expected else 0

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    def report_block(self, now: float) -> ReportBlock:
        """A report block for this source; starts a new interval for fraction lost."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received_count - self.received_prior
        self.received_prior = self.received_count
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        dlsr = 0
        if self.last_sr_ntp:
            dlsr = int((now - self.last_sr_time) * 65536.0) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            cumulative_lost=max(-0x800000, min(0x7FFFFF, self.lost)),
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=self.last_sr_ntp,
            dlsr=dlsr,
        )


def build_report(
    sender: RtpSender | None,
    stats: ReceiveStats | None,
    now: float,
    cname: str,
    *,
    ssrc: int | None = None,
    wallclock: float | None = None,
    bye: bool = False,
    reason: str | None = None,
) -> bytes:
    """A compound report: SR if ``sender`` sent media since the last report, else RR;
    then SDES CNAME (6.1 requires it in every compound packet); then BYE if asked.

    ``ssrc`` is our SSRC when there is no ``sender``.  Reception stats add one
    report block once the source is valid.  Building an SR records its NTP
    timestamp and ``now`` on the sender, for :func:`round_trip_time`.
    """
    if sender is not None:
        our_ssrc = sender.ssrc
    elif ssrc is not None:
        our_ssrc = ssrc
    else:
        raise ValueError("build_report needs a sender or an ssrc")
    blocks = [stats.report_block(now)] if stats is not None and stats.expected else []
    packets: list[RtcpPacket] = []
    if sender is not None and sender.packets != sender.report_packets:
        sender.report_packets = sender.packets
        ntp = ntp_timestamp(now if wallclock is None else wallclock)
        sender.last_sr_ntp = (ntp >> 16) & 0xFFFFFFFF
        sender.last_sr_time = now
        packets.append(
            RtcpSenderReport(
                our_ssrc,
                ntp,
                # RTP time of the last packet sent: within one packet time of
                # "now" on a live stream, which is all an audio-only peer needs.
                sender.last_timestamp,
                sender.packets,
                sender.octets,
                blocks,
            )
        )
    else:
        packets.append(RtcpReceiverReport(our_ssrc, blocks))
    packets.append(RtcpSdes([SdesChunk(our_ssrc, [(SDES_CNAME, cname.encode("utf-8"))])]))
    if bye:
        packets.append(RtcpBye([our_ssrc], reason))
    return serialize_rtcp(packets)


def round_trip_time(block: ReportBlock, sender: RtpSender, now: float) -> float | None:
    """RTT from a report block that echoes our last SR (6.4.1), else None."""
    if block.lsr == 0 or block.lsr != sender.last_sr_ntp:
        return None
    rtt = now - sender.last_sr_time - block.dlsr / 65536.0
    return max(rtt, 0.0)
