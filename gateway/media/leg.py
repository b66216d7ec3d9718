"""One side of a call's media bridge, and the rule for where its packets may come from.

Strict latching (docs/decisions.md, "Media latching"), in the spirit of Asterisk's
``strictrtp`` and rtpengine's strict source:

* A leg takes packets from one source, its SDP's ``address:port``, and sends there.
  The receive paths compare the datagram's address with :attr:`Leg.source` (one tuple
  comparison); everything else goes through :meth:`Leg.admit`.
* A leg with a learning window (the PBX leg: symmetric RTP, for a PBX behind NAT)
  may move that source once, early: within ``window`` seconds of the answer (Meta's,
  on a call to WhatsApp: the PBX sends nothing while it rings) or of a renegotiation
  that moves the media, and only while nothing has been taken from the SDP's source
  yet, :data:`PROBATION` RTP packets in sequence (one SSRC, the leg's audio or
  telephone-event payload type) from one other port of the SDP's host make that port
  the source and the destination. Learning packets are dropped.
* After that the source holds: packets from the peer's host but another port are
  dropped before anything reads them, counted (``relatch_refused``) and logged at most
  once per :data:`REFUSAL_LOG_INTERVAL` per leg. Packets from any other host are
  ``rx_foreign``. Only a renegotiation to a new address or port (or one arriving
  while nothing was learned) opens a new window; a session refresh keeps the latch.
* RTCP comes from the source (rtcp-mux) or, without rtcp-mux, from the SDP's RTCP
  port or the source's port + 1.
* The WhatsApp leg has no window: Meta's SDP address:port only.
"""

from __future__ import annotations

from gateway.logging import get_logger
from gateway.media.codecs import AudioCodec, codec_for
from gateway.media.jitter import ReorderBuffer
from gateway.media.rtcp import ReceiveStats
from gateway.media.rtp import RtpPacket, RtpSender
from gateway.media.srtp import SrtpContext, SrtpFactory, SrtpSession
from gateway.media.stats import LegStats
from gateway.sdp.negotiate import MediaParams
from gateway.transport.rtp import RtpSocket

log = get_logger(__name__)

PROBATION = 3  # in-sequence packets from one other port of the SDP host that latch it
DEFAULT_LATCH_WINDOW = 10.0  # seconds after the answer/renegotiation the PBX leg may latch
REFUSAL_LOG_INTERVAL = 30.0  # at most one relatch_refused line per leg this often

Address = tuple[str, int]


class Leg:
    """One side of the bridge: socket, peer, codec, RTP/RTCP state and counters."""

    __slots__ = (
        "_candidate",
        "_learned",
        "_log_after",
        "_rx_mark",
        "codec",
        "dtmf_pt",
        "key",
        "last_rx",
        "learn_until",
        "media",
        "name",
        "plain",
        "pt",
        "receiving",
        "relatch_refused",
        "remote",
        "reorder",
        "rtcp_remote",
        "rtcp_sources",
        "rx",
        "rx_auth_failures",
        "rx_bad",
        "rx_dtmf_pt",
        "rx_foreign",
        "rx_octets",
        "rx_packets",
        "rx_pt",
        "samples",
        "sender",
        "sending",
        "sock",
        "source",
        "srtp",
        "srtp_factory",
        "tx_packets",
        "window",
    )

    def __init__(
        self, name: str, sock: RtpSocket, *, key: str = "", window: float = 0.0, plain: bool = True
    ) -> None:
        self.name = name
        # False: never send unprotected (the WhatsApp leg: in WebRTC mode it has no SRTP
        # context until the DTLS handshake ends, and nothing may leave before that).
        self.plain = plain
        self.key = key  # the call, for log lines
        self.sock = sock
        self.window = window  # learning window in seconds; 0: the SDP's source only
        self.media: MediaParams | None = None
        self.codec: AudioCodec | None = None
        self.pt = self.rx_pt = -1
        self.dtmf_pt: int | None = None
        self.rx_dtmf_pt: int | None = None
        self.sending = True
        self.remote: Address | None = None  # where we send RTP
        self.source: Address | None = None  # the only address RTP is taken from
        self.rtcp_remote: Address | None = None
        self.rtcp_sources: tuple[Address, ...] = ()  # RTCP also taken from these
        self.learn_until = 0.0
        self._learned = False
        self._candidate: tuple[Address, int, int, int] | None = None  # addr, ssrc, seq, count
        self._rx_mark = 0  # rx_packets when the window opened
        self._log_after = 0.0
        self.srtp: SrtpSession | None = None
        # Makes the leg's SRTP sessions: the engine's (the native engine: its own, which
        # its fast path can use); DTLS-SRTP keys given later should go through it too.
        self.srtp_factory: SrtpFactory = SrtpContext
        self.sender: RtpSender | None = None
        self.rx: ReceiveStats | None = None
        self.reorder: ReorderBuffer[RtpPacket] = ReorderBuffer(3)
        self.samples = 160
        self.rx_packets = self.rx_octets = self.rx_bad = self.rx_foreign = 0
        self.rx_auth_failures = self.tx_packets = self.relatch_refused = 0
        self.last_rx = 0.0
        self.receiving = True  # the peer is expected to send (not on hold/inactive)

    def configure(self, media: MediaParams, complexity: int, now: float) -> None:
        previous = self.media
        same_codec = previous is not None and previous.codec == media.codec
        self.media = media
        self.pt = media.payload_type  # what we send with (the remote's number)
        self.rx_pt = media.recv_payload_type or media.payload_type  # what we receive (ours)
        self.dtmf_pt = media.dtmf_payload_type
        self.rx_dtmf_pt = media.recv_dtmf_payload_type
        sdp = (media.remote_address, media.remote_port)
        # A latched source survives an SDP that repeats the old one (session refresh),
        # not one that moves the media (re-INVITE to another port or host).
        moved = previous is None or (previous.remote_address, previous.remote_port) != sdp
        if moved or not self._held():
            self.remote = self.source = sdp
            self._learned = False
            self._candidate = None
            self._rx_mark = self.rx_packets
            self.learn_until = now + self.window if self.window > 0 else 0.0
        self._rtcp_addresses()
        # The no-media rule applies only to a stream both ways: a PBX that holds the call
        # (sendonly/inactive) may well send nothing (no music on hold) for minutes.
        self.receiving = media.direction == "sendrecv"
        self.sending = media.may_send
        if not same_codec or self.codec is None:
            if media.codec.lower() == "opus":
                self.codec = codec_for("opus", **media.fmtp, complexity=complexity)
            else:
                self.codec = codec_for(media.codec)
            self.samples = self.codec.samples_per_frame
        if self.sender is None:
            self.sender = RtpSender(media.clock_rate)
            self.rx = ReceiveStats(media.clock_rate)
        if media.srtp is not None and self.srtp is None:
            srtp = media.srtp
            self.srtp = self.srtp_factory(srtp.suite, srtp.local_key, srtp.remote_key)

    def _rtcp_addresses(self) -> None:
        media, source = self.media, self.source
        assert media is not None and source is not None
        if media.rtcp_mux:
            self.rtcp_remote = self.remote
            self.rtcp_sources = ()
        else:
            self.rtcp_remote = (media.remote_address, media.remote_rtcp_port)
            self.rtcp_sources = (self.rtcp_remote, (source[0], source[1] + 1))

    def answered(self, now: float) -> None:
        """The call is answered (a PBX's offer may wait for Meta's answer for a minute,
        and sends nothing meanwhile): a window not yet used starts again from now."""
        if self.window > 0 and not self._held():
            self.learn_until = now + self.window
            self._candidate = None

    def _held(self) -> bool:
        """The source is settled: learned, or the SDP's source has delivered audio."""
        return self._learned or self.rx_packets > self._rx_mark

    # -- packets not from the source (the slow path) -------------------------
    def admit(
        self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int], now: float
    ) -> bool:
        """A datagram whose address is not :attr:`source`: True when it is the leg's all
        the same (an IPv6 address tuple, RTCP from the RTCP port, the packet that ends
        learning); otherwise counted, and False: drop it unread."""
        source = self.source
        if source is None or addr[0] != source[0]:
            self.rx_foreign += 1  # not the peer's host, or the leg is not negotiated yet
            return False
        peer = (addr[0], addr[1])
        if peer == source:
            return True  # the kernel's IPv6 address tuple has flow info and scope
        if len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:  # RTCP
            if peer in self.rtcp_sources:
                return True
        elif self.window > 0 and now < self.learn_until and not self._held():
            return self._probation(data, peer)
        self.relatch_refused += 1
        if now >= self._log_after:
            self._log_after = now + REFUSAL_LOG_INTERVAL
            log.warning(
                "rtp_relatch_refused",
                call=self.key,
                leg=self.name,
                source=f"{peer[0]}:{peer[1]}",
                latched=f"{source[0]}:{source[1]}",
                refused=self.relatch_refused,
            )
        return False

    def _probation(self, data: bytes, peer: Address) -> bool:
        pt = data[1] & 0x7F if len(data) >= 12 and data[0] >> 6 == 2 else -1
        if pt < 0 or (pt != self.rx_pt and pt != self.rx_dtmf_pt):
            self.rx_bad += 1  # not this stream's RTP: it does not count toward a latch
            return False
        seq = int.from_bytes(data[2:4], "big")
        ssrc = int.from_bytes(data[8:12], "big")
        count = 1
        candidate = self._candidate
        if candidate is not None:
            addr, last_ssrc, last_seq, seen = candidate
            if addr == peer and last_ssrc == ssrc and (last_seq + 1) & 0xFFFF == seq:
                count = seen + 1
        if count < PROBATION:
            self._candidate = (peer, ssrc, seq, count)
            return False
        self._candidate = None
        self._learned = True
        sdp = self.source
        self.remote = self.source = peer
        self._rtcp_addresses()
        log.info(
            "rtp_latched",
            call=self.key,
            leg=self.name,
            source=f"{peer[0]}:{peer[1]}",
            sdp=f"{sdp[0]}:{sdp[1]}" if sdp else None,
        )
        return True

    # -- sending and stats ----------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.remote is None or not self.sending:
            sender = self.sender
            if sender is not None:
                # Not sent (on hold): RFC 3550 5.1 sequence numbers and the SR counts are
                # of packets sent, so give this one's back; its time has passed all the same.
                sender.sequence = (sender.sequence - 1) & 0xFFFF
                sender.packets -= 1
                sender.octets -= len(data) - 12  # every packet here has a bare 12-octet header
            return
        if self.srtp is not None:
            data = self.srtp.protect(data)
        elif not self.plain:
            return
        self.sock.sendto(data, self.remote)
        self.tx_packets += 1

    def can_send(self) -> bool:
        """Whether a packet may leave now: with SRTP keys, or on a plain RTP leg."""
        return self.plain or self.srtp is not None

    def stats(self) -> LegStats:
        """The counters now, as a :class:`gateway.media.stats.LegStats` (read time only)."""
        rx = self.rx
        return LegStats(
            codec=self.media.codec if self.media else None,
            rx_packets=self.rx_packets,
            rx_octets=self.rx_octets,
            tx_packets=self.tx_packets,
            lost=rx.lost if rx else 0,
            jitter_seconds=round(rx.jitter_seconds, 6) if rx else 0.0,
            bad_packets=self.rx_bad,
            foreign_packets=self.rx_foreign,
            relatch_refused=self.relatch_refused,
            srtp_auth_failures=self.rx_auth_failures,
            reorder_late=self.reorder.late,
        )
