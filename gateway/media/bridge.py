"""The per-call media bridge: WhatsApp leg (SRTP, Opus or G.711) <-> PBX leg (RTP, G.711).

Packet by packet on the event loop: receive, (decrypt), parse, reorder,
decode, encode, (encrypt), send. No thread hop, no per-frame queue. Where both
legs share a codec (G.711 passthrough) the payload is only re-framed and
re-keyed. A shared 20 ms media clock calls :meth:`Bridge.tick` for what is not
driven by arriving packets: the first packet toward Meta and silence while
the PBX sends nothing (Meta drops calls after 20 s without media from the
business side), RTCP reports, and the no-media timeout.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping

from gateway.ice.agent import new_credentials
from gateway.logging import get_logger
from gateway.media.codecs import PCM_FRAME_BYTES, CodecError
from gateway.media.dtls import DtlsCertificate
from gateway.media.dtmf import DtmfRelay
from gateway.media.jitter import Lost
from gateway.media.leg import DEFAULT_LATCH_WINDOW, Leg
from gateway.media.rtcp import RtcpReceiverReport, RtcpSenderReport, build_report, parse_rtcp
from gateway.media.rtp import RtpError, RtpPacket, parse_rtp
from gateway.media.settings import MediaSettings
from gateway.media.srtp import SrtpAuthError
from gateway.media.stats import BridgeStats
from gateway.media.webrtc import DTLS, STUN, WebRtcLink, demux
from gateway.sdp.negotiate import MediaParams
from gateway.transport.rtp import (
    FrameTimes,
    MediaClock,
    PortAllocator,
    PortsExhausted,
    RtpSocket,
)

log = get_logger(__name__)

SILENCE_AFTER = 0.060  # PBX quiet this long: fill toward Meta with silence frames
EARLY_AUDIO_FRAMES = 25  # PBX audio kept (500 ms) until the WhatsApp leg can send
RTCP_INTERVAL = 5.0
# Packets held behind a gap from Meta are released, the gap concealed, once the first
# has waited this long (the media clock's next tick): at most 40 ms of added delay,
# not the reorder buffer's depth in packets (60 ms), nor until speech resumes after DTX.
REORDER_WAIT = 0.030

# The RTP header after its first octet (M+PT, sequence, timestamp, SSRC): the fast
# path reads it straight from a packet whose first octet is 0x80 (version 2, no
# padding, extension or CSRC), the steady state of both legs.
_RTP_REST = struct.Struct("!BHII")


class Bridge:
    """One call's media. Created with both sockets bound; configured as SDP arrives."""

    def __init__(
        self,
        key: str,
        wa_sock: RtpSocket,
        pbx_sock: RtpSocket,
        clock: MediaClock,
        loop_time: Callable[[], float],
        on_no_media: Callable[[str, str], None],
        *,
        no_media_timeout: float = 30.0,
        opus_complexity: int = 1,
        latch_window: float = DEFAULT_LATCH_WINDOW,
        certificate: DtlsCertificate | None = None,
        dtls_timeout: float = 10.0,
    ) -> None:
        self.key = key
        # Strict latching (gateway/media/leg.py): Meta's SDP address only; the PBX's
        # source port may be learned once, within latch_window (0: its SDP's only).
        self.wa = Leg("whatsapp", wa_sock, key=key, plain=False)
        self.pbx = Leg("pbx", pbx_sock, key=key, window=latch_window)
        wa_sock.handler = self.on_whatsapp_packet
        pbx_sock.handler = self.on_pbx_packet
        self._time = loop_time
        self._on_no_media = on_no_media
        self._timeout = no_media_timeout
        self._complexity = opus_complexity
        self._clock = clock
        self._tick_token = clock.subscribe(self.tick)
        self._wa_ready = False
        self._passthrough = False
        self._early: deque[bytes] = deque(maxlen=EARLY_AUDIO_FRAMES)
        self._pcm_in = bytearray()  # PBX audio not yet a whole 20 ms frame
        self._g711_in = bytearray()  # the same for passthrough, still G.711
        self._last_pbx_audio = 0.0
        self._next_rtcp = loop_time() + RTCP_INTERVAL
        self._no_media_reported = False
        self._wa_src_ts: int | None = None
        self._held_since: float | None = None  # when the reorder buffer began holding
        self._to_pbx_dtmf = DtmfRelay()
        self._to_wa_dtmf = DtmfRelay()
        self.dtmf_to_pbx = 0
        self.dtmf_to_wa = 0
        self._closed = False
        # Meta's WebRTC mode (gateway/media/webrtc.py): our ICE credentials are in our SDP
        # before Meta's is known; the link exists once Meta's SDP says WebRTC.
        self._certificate = certificate
        self._dtls_timeout = dtls_timeout
        self._ice_credentials: tuple[str, str] | None = None
        self.link: WebRtcLink | None = None

    # -- MediaBridge interface ---------------------------------------------
    @property
    def whatsapp_port(self) -> int:
        return self.wa.sock.port

    @property
    def pbx_port(self) -> int:
        return self.pbx.sock.port

    def local_webrtc(self) -> tuple[str, str, tuple[str, str]]:
        """Our ICE ufrag and pwd and DTLS fingerprint, for an SDP in WebRTC mode."""
        if self._certificate is None:
            raise RuntimeError("no DTLS certificate: WebRTC media is not configured")
        if self._ice_credentials is None:
            self._ice_credentials = new_credentials()
        ufrag, pwd = self._ice_credentials
        return ufrag, pwd, self._certificate.fingerprint

    def set_whatsapp(self, params: MediaParams) -> None:
        now = self._time()
        self.wa.configure(params, self._complexity, now)
        self._update_passthrough()
        self.wa.last_rx = now
        if params.webrtc is not None and self.link is None:
            self._start_link(params, now)
        if self.link is not None and self.wa.srtp is None:
            return  # ready (and sending first) once DTLS has given the SRTP keys
        self._whatsapp_ready(now)

    def _start_link(self, params: MediaParams, now: float) -> None:
        assert params.webrtc is not None and self._certificate is not None
        ufrag, pwd, _ = self.local_webrtc()
        self.link = WebRtcLink(
            params.webrtc,
            local_ufrag=ufrag,
            local_pwd=pwd,
            certificate=self._certificate,
            family=6 if self.wa.sock.sock.family == socket.AF_INET6 else 4,
            now=now,
            timeout=self._dtls_timeout,
        )
        self._send_link()

    def _send_link(self) -> None:
        link = self.link
        assert link is not None
        for data, addr in link.pop_datagrams():
            self.wa.sock.sendto(data, addr)

    def _on_link(self, now: float) -> None:
        """After the link moved: send what it has, and act on connected or failed."""
        link = self.link
        assert link is not None
        self._send_link()
        wa = self.wa
        if link.state == "connected" and wa.srtp is None and link.keys is not None:
            keys = link.keys
            wa.srtp = wa.srtp_factory(keys.suite, keys.local, keys.remote)
            if link.selected is not None:
                wa.remote = wa.source = link.selected  # the nominated pair only
            wa.last_rx = now
            log.info("webrtc_connected", call=self.key, **link.log_fields())
            self._whatsapp_ready(now)
        elif link.state == "failed" and not self._no_media_reported:
            self._no_media_reported = True
            log.warning("webrtc_failed", call=self.key, **link.log_fields())
            self._on_no_media(self.wa.name, link.failure or "WebRTC media failed")

    def _whatsapp_ready(self, now: float) -> None:
        if not self._wa_ready:
            self._wa_ready = True
            self.pbx.answered(now)  # a call to WhatsApp: the PBX's window starts now
            # Meta expects the business side to send first: early PBX audio, else silence.
            if self._early:
                while self._early:
                    self._pcm_to_whatsapp(self._early.popleft())
            else:
                self._silence_to_whatsapp()

    def set_pbx(self, params: MediaParams) -> None:
        now = self._time()
        self.pbx.configure(params, self._complexity, now)
        self._update_passthrough()
        self.pbx.last_rx = now

    def stats(self) -> BridgeStats:
        """Both legs' counters and the DTMF relayed, copied now (scrape or record time)."""
        return BridgeStats(
            whatsapp=self.wa.stats(),
            pbx=self.pbx.stats(),
            passthrough=self._passthrough,
            webrtc=self.link.stats() if self.link is not None else None,
            dtmf_to_pbx=self.dtmf_to_pbx,
            dtmf_to_whatsapp=self.dtmf_to_wa,
            dtmf_events_to_pbx=self._to_pbx_dtmf.events,
            dtmf_events_to_whatsapp=self._to_wa_dtmf.events,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._clock.unsubscribe(self._tick_token)
        if self.link is not None:
            self.link.close()
            self._send_link()  # DTLS close_notify
        self.wa.sock.close()
        self.pbx.sock.close()

    def _update_passthrough(self) -> None:
        wa, pbx = self.wa.media, self.pbx.media
        self._passthrough = (
            wa is not None and pbx is not None and wa.codec.upper() == pbx.codec.upper()
        )

    # -- WhatsApp -> PBX ----------------------------------------------------
    def on_whatsapp_packet(self, data: bytes, addr: tuple[str, int]) -> None:
        wa = self.wa
        link = self.link
        if link is not None and data and data[0] < 128:
            kind = demux(data[0])
            if kind in (STUN, DTLS):
                now = self._time()
                if not link.receive(kind, data, (addr[0], addr[1]), now):
                    wa.rx_foreign += 1  # not ICE's, or DTLS not from the nominated pair
                self._on_link(now)
            else:
                wa.rx_bad += 1
            return
        if addr != wa.source and not wa.admit(data, addr, self._time()):
            return  # not Meta's SDP address:port: counted, never decrypted
        srtp = wa.srtp
        if srtp is None:
            wa.rx_foreign += 1
            return
        now = self._time()
        if len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:  # RTCP (is_rtcp, inline)
            try:
                self._on_rtcp(wa, srtp.unprotect_rtcp(data), now)
            except SrtpAuthError:
                wa.rx_auth_failures += 1
            return
        try:
            plain = srtp.unprotect(data)
        except SrtpAuthError:
            wa.rx_auth_failures += 1
            return
        self._whatsapp_rtp(plain, now)

    def _whatsapp_rtp(self, plain: bytes, now: float) -> None:
        """An authentic RTP packet from Meta, decrypted (the native engine hands over
        here what it decrypted but does not take itself)."""
        wa = self.wa
        if len(plain) > 12 and plain[0] == 0x80:
            # Fast path, the steady state: plain audio, in sequence, transcoded. The
            # same steps as below without an RtpPacket, a release list or a re-frame.
            second, seq, ts, ssrc = _RTP_REST.unpack_from(plain, 1)
            pt = second & 0x7F
            pbx = self.pbx
            sender = pbx.sender
            if (
                pt == wa.rx_pt
                and pt != wa.rx_dtmf_pt
                and sender is not None
                and not self._passthrough
                and wa.reorder.take_in_order(seq)
            ):
                payload = plain[12:]
                wa.rx_packets += 1
                wa.rx_octets += len(payload)
                wa.last_rx = now
                rx = wa.rx
                assert rx is not None
                rx.ssrc = ssrc
                rx.received(seq, ts, now)
                last = self._wa_src_ts
                if last is not None and (ts - last) & 0xFFFFFFFF == wa.samples:
                    self._wa_src_ts = ts  # the next frame: no gap to carry over
                else:
                    self._follow_source_clock(ts)
                codec_in = wa.codec
                codec_out = pbx.codec
                assert codec_in is not None and codec_out is not None
                try:
                    pcm = codec_in.decode(payload)
                except CodecError:
                    wa.rx_bad += 1
                    pcm = codec_in.conceal()
                pbx.send(sender.next_packet(pbx.pt, codec_out.encode(pcm), pbx.samples))
                return
        try:
            packet = parse_rtp(plain)
        except RtpError:
            wa.rx_bad += 1
            return
        pt = packet.payload_type
        if pt != wa.rx_pt and pt != wa.rx_dtmf_pt:
            wa.rx_bad += 1  # not this stream's: not received, and no report is about it
            return
        wa.rx_packets += 1
        wa.rx_octets += len(packet.payload)
        wa.last_rx = now
        assert wa.rx is not None
        wa.rx.ssrc = packet.ssrc  # our report blocks are about this source
        if pt == wa.rx_dtmf_pt:
            # Events share the audio's sequence space but not its clock (8000 vs 48000):
            # count them without touching the jitter estimate or the loss detector.
            wa.rx.received_sequence(packet.sequence)
            wa.reorder.skip(packet.sequence)
        else:
            wa.rx.received(packet.sequence, packet.timestamp, now)
        pbx = self.pbx
        sender = pbx.sender
        if sender is None:
            return  # PBX side not answered yet: nothing to send to
        if pt == wa.rx_dtmf_pt:
            if pbx.dtmf_pt is not None:
                for payload, ts, marker in self._to_pbx_dtmf.process(packet, sender.timestamp):
                    pbx.send(sender.packet_at(pbx.dtmf_pt, payload, ts, marker))
                    self.dtmf_to_pbx += 1
            return
        self._release_to_pbx(wa.reorder.push(packet.sequence, packet))
        # What the reorder buffer holds waits at most REORDER_WAIT (tick): after a loss
        # the next packets are not held for the buffer's depth, nor forever before DTX.
        if len(wa.reorder):
            if self._held_since is None:
                self._held_since = now
        else:
            self._held_since = None

    def _release_to_pbx(self, items: list[RtpPacket | Lost[RtpPacket]]) -> None:
        """Send what the WhatsApp leg's reorder buffer released, in order: decoded and
        transcoded, a gap concealed (Opus FEC from the packet after it, else PLC)."""
        if not items:
            return
        pbx = self.pbx
        sender = pbx.sender
        assert sender is not None
        if self._passthrough:
            # In sequence order too (the in-order case releases at once); a gap is left
            # to the PBX to conceal, only its time is carried over.
            for item in items:
                if not isinstance(item, Lost):
                    self._follow_source_clock(item.timestamp)
                    pbx.send(sender.next_packet(pbx.pt, item.payload, len(item.payload)))
            return
        wa = self.wa
        codec_in = wa.codec
        codec_out = pbx.codec
        assert codec_in is not None and codec_out is not None
        concealed = 0
        for item in items:
            if isinstance(item, Lost):
                # Opus in-band FEC in the packet after a gap rebuilds only the frame just
                # before it; earlier ones of a longer gap are concealed by PLC.
                count = min(item.count, 5)
                following = item.next.payload if item.next is not None else None
                for i in range(count):
                    pcm = codec_in.conceal(following if i == count - 1 else None)
                    pbx.send(sender.next_packet(pbx.pt, codec_out.encode(pcm), pbx.samples))
                concealed += count
                continue
            # In release order, after the frames that stood in for a gap: only the
            # rest of the gap (DTX, a gap longer than concealment) skips time.
            self._follow_source_clock(item.timestamp, concealed)
            concealed = 0
            try:
                pcm = codec_in.decode(item.payload)
            except CodecError:
                wa.rx_bad += 1  # a corrupt frame: concealed in its slot, the next decodes
                pcm = codec_in.conceal()
            pbx.send(sender.next_packet(pbx.pt, codec_out.encode(pcm), pbx.samples))

    def _follow_source_clock(self, ts: int, sent: int = 0) -> None:
        """Carry gaps of the WhatsApp stream (DTX) into the PBX stream's timestamps;
        ``sent`` frames (concealment) have already filled part of the gap."""
        last = self._wa_src_ts
        self._wa_src_ts = ts
        if last is None or self.pbx.sender is None:
            return
        per_frame = self.wa.samples
        delta = (ts - last) & 0xFFFFFFFF
        if per_frame * (1 + sent) < delta < per_frame * 250:
            missing = delta - per_frame * (1 + sent)
            rate_ratio = (self.wa.media.clock_rate if self.wa.media else 48000) // 8000
            self.pbx.sender.skip(missing // max(rate_ratio, 1))

    # -- PBX -> WhatsApp ----------------------------------------------------
    def on_pbx_packet(self, data: bytes, addr: tuple[str, int]) -> None:
        pbx = self.pbx
        if addr != pbx.source and not pbx.admit(data, addr, self._time()):
            return  # not the PBX's (latched) source: counted, never decoded or followed
        now = self._time()
        if len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:  # RTCP (is_rtcp, inline)
            self._on_rtcp(pbx, data, now)
            return
        if len(data) > 12 and data[0] == 0x80:
            # Fast path, the steady state: plain audio to transcode (the same steps as
            # below without an RtpPacket; a whole 20 ms frame skips the re-frame buffer).
            second, seq, ts, ssrc = _RTP_REST.unpack_from(data, 1)
            pt = second & 0x7F
            if pt == pbx.rx_pt and pt != pbx.rx_dtmf_pt and not self._passthrough:
                payload = data[12:]
                pbx.rx_packets += 1
                pbx.rx_octets += len(payload)
                pbx.last_rx = now
                rx = pbx.rx
                codec_in = pbx.codec
                assert rx is not None and codec_in is not None
                rx.ssrc = ssrc
                rx.received(seq, ts, now)
                self._last_pbx_audio = now
                pcm = codec_in.decode(payload)
                if len(pcm) == PCM_FRAME_BYTES and not self._pcm_in:
                    if self._wa_ready:
                        self._pcm_to_whatsapp(pcm)
                    else:
                        self._early.append(pcm)
                    return
                self._reframe_to_whatsapp(pcm)
                return
        try:
            packet = parse_rtp(data)
        except RtpError:
            pbx.rx_bad += 1
            return
        pt = packet.payload_type
        if pt != pbx.rx_pt and pt != pbx.rx_dtmf_pt:
            pbx.rx_bad += 1  # not this stream's: not received
            return
        pbx.rx_packets += 1
        pbx.rx_octets += len(packet.payload)
        pbx.last_rx = now
        assert pbx.rx is not None
        pbx.rx.ssrc = packet.ssrc
        wa = self.wa
        if pt == pbx.rx_dtmf_pt:
            pbx.rx.received_sequence(packet.sequence)
            sender = wa.sender
            if self._wa_ready and sender is not None and wa.dtmf_pt is not None:
                for payload, ts, marker in self._to_wa_dtmf.process(packet, sender.timestamp):
                    wa.send(sender.packet_at(wa.dtmf_pt, payload, ts, marker))
                    self.dtmf_to_wa += 1
            return
        pbx.rx.received(packet.sequence, packet.timestamp, now)
        self._last_pbx_audio = now
        if self._passthrough and self._wa_ready and wa.sender is not None:
            # G.711 is one octet per sample: re-frame to Meta's 20 ms (maxptime 20).
            size = wa.samples
            payload = packet.payload
            if len(payload) == size and not self._g711_in:
                wa.send(wa.sender.next_packet(wa.pt, payload, size))
                return
            pending = self._g711_in
            pending += payload
            while len(pending) >= size:
                wa.send(wa.sender.next_packet(wa.pt, bytes(pending[:size]), size))
                del pending[:size]
            return
        codec_in = pbx.codec
        assert codec_in is not None
        self._reframe_to_whatsapp(codec_in.decode(packet.payload))

    def _reframe_to_whatsapp(self, pcm: bytes) -> None:
        # Re-frame to 20 ms whatever the PBX's ptime (Opus cannot encode 30 ms of 8 kHz
        # through this path, and Meta asks for 20 ms).
        buf = self._pcm_in
        buf += pcm
        while len(buf) >= PCM_FRAME_BYTES:
            frame = bytes(buf[:PCM_FRAME_BYTES])
            del buf[:PCM_FRAME_BYTES]
            if self._wa_ready:
                self._pcm_to_whatsapp(frame)
            else:
                self._early.append(frame)

    def _pcm_to_whatsapp(self, pcm: bytes) -> None:
        wa = self.wa
        codec = wa.codec
        sender = wa.sender
        if codec is None or sender is None:
            return
        wa.send(sender.next_packet(wa.pt, codec.encode(pcm), wa.samples))

    def _silence_to_whatsapp(self) -> None:
        wa = self.wa
        codec = wa.codec
        sender = wa.sender
        if codec is None or sender is None:
            return
        wa.send(sender.next_packet(wa.pt, codec.silence(), wa.samples))

    # -- RTCP and the clock -------------------------------------------------
    def _on_rtcp(self, leg: Leg, data: bytes, now: float) -> None:
        try:
            packets = parse_rtcp(data)
        except ValueError:
            leg.rx_bad += 1
            return
        leg.last_rx = now
        for p in packets:
            if isinstance(p, RtcpSenderReport) and leg.rx is not None:
                leg.rx.sender_report(p, now)
            if isinstance(p, (RtcpSenderReport, RtcpReceiverReport)):
                sender, codec = leg.sender, leg.codec
                for block in p.reports:
                    # The peer's loss on what we send: the encoder plans FEC by it.
                    if sender is not None and codec is not None and block.ssrc == sender.ssrc:
                        codec.peer_loss(block.fraction_lost)

    def tick(self, now: float) -> None:
        if self._closed:
            return
        link = self.link
        if link is not None and link.state != "failed":
            link.tick(now)
            self._on_link(now)
        # Keep media flowing toward Meta whatever the PBX does (hold, silence, IVR pauses).
        if self._wa_ready and now - self._last_pbx_audio >= SILENCE_AFTER:
            self._silence_to_whatsapp()
        # The rest runs for every call 50 times a second: cheap tests first.
        held = self._held_since
        if held is not None and now - held >= REORDER_WAIT:
            self._held_since = None
            if self.pbx.sender is not None:
                self._release_to_pbx(self.wa.reorder.flush())
        if self._to_pbx_dtmf.in_progress or self._to_wa_dtmf.in_progress:
            self._expire_dtmf(now)
        if now >= self._next_rtcp:
            self._next_rtcp = now + RTCP_INTERVAL
            self._send_rtcp(now)
        if not self._no_media_reported:
            timeout = self._timeout
            if now - self.wa.last_rx > timeout or now - self.pbx.last_rx > timeout:
                self._check_no_media(now)  # a leg is quiet: does the rule apply to it?

    def _expire_dtmf(self, now: float) -> None:
        """Close an event whose end packets never came (RFC 4733 end lost in transit)."""
        for relay, leg in ((self._to_pbx_dtmf, self.pbx), (self._to_wa_dtmf, self.wa)):
            if not relay.in_progress or leg.sender is None or leg.dtmf_pt is None:
                continue
            for payload, ts, marker in relay.expire(now):
                leg.send(leg.sender.packet_at(leg.dtmf_pt, payload, ts, marker))

    def _send_rtcp(self, now: float) -> None:
        for leg in (self.wa, self.pbx):
            if leg.sender is None or leg.rtcp_remote is None or not leg.can_send():
                continue
            report = build_report(leg.sender, leg.rx, now, f"wagw-{self.key[:32]}")
            if leg.srtp is not None:
                report = leg.srtp.protect_rtcp(report)
                leg.sock.sendto(report, leg.remote or leg.rtcp_remote)
            elif leg.media is not None and leg.media.rtcp_mux and leg.remote is not None:
                leg.sock.sendto(report, leg.remote)  # with RTP, latched address included
            else:
                leg.sock.sendto(report, leg.rtcp_remote)

    def _check_no_media(self, now: float) -> None:
        if self._no_media_reported:
            return
        for leg in (self.wa, self.pbx):
            if leg.media is None or not leg.receiving:
                continue
            if now - leg.last_rx > self._timeout:
                self._no_media_reported = True
                self._on_no_media(leg.name, "")  # "": no media for the timeout
                return


class BridgeFactory:
    """Makes bridges with both sockets bound from the configured port range."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ports: PortAllocator,
        clock: MediaClock,
        settings: MediaSettings,
        frame_times: Mapping[str, FrameTimes] | None = None,
        certificate: DtlsCertificate | None = None,
    ) -> None:
        self._certificate = certificate  # the DTLS certificate of WebRTC mode, None: SDES only
        self._loop = loop
        self._ports = ports
        self._clock = clock
        self._settings = settings
        # Per-packet processing time by the leg a packet arrives on (metrics).
        self._frame_times = frame_times or {}
        from gateway.media import native  # it builds on this module

        #: The engine the bridges run: "native" or "python" (media.engine resolved).
        self.engine = native.resolve_engine(settings.engine)
        self._bridge: type[Bridge] = native.NativeBridge if self.engine == "native" else Bridge

    def __call__(self, key: str, on_no_media: Callable[[str, str], None]) -> Bridge:
        """A bridge with both ports bound; raises PortsExhausted when the range is full."""
        wa_sock = RtpSocket(self._loop, self._ports)  # PortsExhausted propagates
        try:
            pbx_sock = RtpSocket(self._loop, self._ports)
        except PortsExhausted:
            wa_sock.close()
            raise
        wa_sock.timing = self._frame_times.get("whatsapp")
        pbx_sock.timing = self._frame_times.get("pbx")
        return self._bridge(
            key,
            wa_sock,
            pbx_sock,
            self._clock,
            self._loop.time,
            on_no_media,
            no_media_timeout=self._settings.no_media_timeout,
            opus_complexity=self._settings.opus_complexity,
            latch_window=self._settings.latch_window if self._settings.latch == "strict" else 0.0,
            certificate=self._certificate,
            dtls_timeout=self._settings.dtls_timeout,
        )
