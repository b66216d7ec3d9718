"""Fakes for the media bridge tests: sockets, clocks, both far ends, and a call rig.

The :class:`~gateway.media.bridge.Bridge` runs unchanged; around it:

* :class:`FakeSocket` has the :class:`~gateway.transport.rtp.RtpSocket` surface the
  bridge uses (``port``, ``handler``, ``sendto``, ``close``) and records what is sent;
* :class:`FakeClock` is the loop's ``time()``, advanced by hand;
* :class:`FakeMediaClock` is the shared 20 ms :class:`~gateway.transport.rtp.MediaClock`
  (``subscribe``/``unsubscribe``) with a ``tick(now)`` the test calls;
* :class:`MetaPeer` plays Meta's media edge with a real :class:`SrtpContext` (the
  bridge's keys swapped) and real Opus, :class:`PbxPeer` an Asterisk with PCMU;
* :class:`Rig` wires one call together and reads back what the bridge sent, decrypted
  and parsed, so the tests assert on real packets.

:func:`wa_params` and :func:`pbx_params` build :class:`MediaParams` the way
``gateway.sdp.negotiate`` does for Meta's offer and an Asterisk answer (a test checks
they still match).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gateway.media.bridge import Bridge
from gateway.media.codecs import PCM_FRAME_BYTES, AudioCodec, codec_for
from gateway.media.dtmf import DtmfEvent
from gateway.media.native import NativeBridge
from gateway.media.rtcp import RtcpPacket, parse_rtcp
from gateway.media.rtp import RtpPacket, RtpSender, build_rtp, is_rtcp, parse_rtp
from gateway.media.srtp import SrtpContext, new_key_material
from gateway.media.tone import measure, sine_pcm
from gateway.sdp.negotiate import MediaParams, SrtpParams

SUITE = "AES_CM_128_HMAC_SHA1_80"
META_IP, META_PORT = "57.144.219.49", 3480
META_ADDR = (META_IP, META_PORT)
PBX_IP, PBX_PORT = "192.0.2.50", 10000
PBX_ADDR = (PBX_IP, PBX_PORT)
WA_LOCAL_PORT, PBX_LOCAL_PORT = 20000, 20002
T0 = 1000.0  # the loop clock's origin: any monotonic value
#: The engine a Rig's bridge runs (conftest.py's media_engine fixture sets it per test).
ENGINE = "python"
FRAME = 0.020
META_SSRC, PBX_SSRC = 0xAAAAAAAA, 0x5EED0001
OPUS_PT, META_DTMF_PT = 111, 126
PCMU_PT, PBX_DTMF_PT = 0, 101
META_FMTP = {
    "maxaveragebitrate": "20000",
    "maxplaybackrate": "16000",
    "minptime": "20",
    "sprop-maxcapturerate": "16000",
    "useinbandfec": "1",
}


# --------------------------------------------------------------------------- media params


def meta_offer_sdp(key_b64: str) -> str:
    """Meta's offer as docs/whatsapp-sip.md section 6 shows it."""
    return (
        "v=0\r\no=- 1730000000 1 IN IP4 57.144.219.49\r\ns=-\r\n"
        f"c=IN IP4 {META_IP}\r\nt=0 0\r\na=group:BUNDLE audio\r\n"
        f"m=audio {META_PORT} RTP/SAVP 111 126\r\n"
        "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\na=sendrecv\r\na=mid:audio\r\n"
        f"a=crypto:1 {SUITE} inline:{key_b64}\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 " + ";".join(f"{k}={v}" for k, v in META_FMTP.items()) + "\r\n"
        "a=rtpmap:126 telephone-event/8000\r\na=ptime:20\r\na=maxptime:20\r\n"
        "a=ssrc:2863311530 cname:WhatsAppAudioStream1\r\n"
    )


def pbx_answer_sdp() -> str:
    """Asterisk's answer: PCMU, telephone-event 101, no rtcp-mux."""
    return (
        f"v=0\r\no=- 1000 1 IN IP4 {PBX_IP}\r\ns=Asterisk\r\nc=IN IP4 {PBX_IP}\r\n"
        f"t=0 0\r\nm=audio {PBX_PORT} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        "a=maxptime:150\r\na=sendrecv\r\n"
    )


def remake(params: MediaParams, **changes: Any) -> MediaParams:
    """``params`` with ``changes``; the ``recv_*`` numbers follow the sending ones unless
    given (as MediaParams defaults them), where ``dataclasses.replace`` would keep them."""
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if "payload_type" in changes:
        fields["recv_payload_type"] = None
    if "dtmf_payload_type" in changes:
        fields["recv_dtmf_payload_type"] = None
    fields.update(changes)
    return MediaParams(**fields)


def wa_params(**changes: Any) -> MediaParams:
    """The WhatsApp leg as ``answer_whatsapp_offer`` makes it from Meta's offer
    (docs/whatsapp-sip.md section 6): Opus/48000 pt 111, telephone-event/8000 pt 126,
    rtcp-mux, SDES AES_CM_128_HMAC_SHA1_80 with fresh keys both ways."""
    base = MediaParams(
        remote_address=META_IP,
        remote_port=META_PORT,
        remote_rtcp_port=META_PORT,
        codec="opus",
        payload_type=OPUS_PT,
        clock_rate=48000,
        channels=2,
        fmtp=dict(META_FMTP),
        dtmf_payload_type=META_DTMF_PT,
        dtmf_clock_rate=8000,
        ptime=20,
        maxptime=20,
        direction="sendrecv",
        rtcp_mux=True,
        srtp=SrtpParams(SUITE, new_key_material(SUITE), new_key_material(SUITE), 1),
    )
    return remake(base, **changes)


def wa_g711_params(**changes: Any) -> MediaParams:
    """The WhatsApp leg when Meta offered (and we chose) PCMU: passthrough."""
    return wa_params(
        codec="PCMU", payload_type=PCMU_PT, clock_rate=8000, channels=1, fmtp={}, **changes
    )


def pbx_params(**changes: Any) -> MediaParams:
    """The PBX leg as ``accept_pbx_answer`` makes it from an Asterisk answer: PCMU pt 0,
    telephone-event pt 101, RTCP on port + 1 (no rtcp-mux), plain RTP."""
    base = MediaParams(
        remote_address=PBX_IP,
        remote_port=PBX_PORT,
        remote_rtcp_port=PBX_PORT + 1,
        codec="PCMU",
        payload_type=PCMU_PT,
        clock_rate=8000,
        channels=1,
        fmtp={},
        dtmf_payload_type=PBX_DTMF_PT,
        dtmf_clock_rate=8000,
        ptime=20,
        maxptime=150,
        direction="sendrecv",
        rtcp_mux=False,
        srtp=None,
    )
    return remake(base, **changes)


# --------------------------------------------------------------------------- fakes


class FakeSocket:
    """What the bridge uses of an RtpSocket; ``sent`` records (data, addr)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler: Callable[[bytes, tuple[str, int]], None] | None = None
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closes = 0
        self.sent_after_close = 0

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closes:
            self.sent_after_close += 1
        self.sent.append((bytes(data), addr))

    def close(self) -> None:
        self.closes += 1

    def deliver(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram arrives. Unlike RtpSocket, exceptions are not swallowed."""
        assert self.handler is not None, "no handler installed"
        self.handler(data, addr)


class FakeClock:
    """The event loop's ``time()``."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeMediaClock:
    """The shared media clock: subscribers are ticked when the test says so."""

    def __init__(self) -> None:
        self.subscribers: dict[int, Callable[[float], None]] = {}
        self.unsubscribed: list[int] = []
        self._next = 0

    def subscribe(self, tick: Callable[[float], None]) -> int:
        self._next += 1
        self.subscribers[self._next] = tick
        return self._next

    def unsubscribe(self, token: int) -> None:
        self.unsubscribed.append(token)
        self.subscribers.pop(token, None)

    def tick(self, now: float) -> None:
        for tick in list(self.subscribers.values()):
            tick(now)


# --------------------------------------------------------------------------- far ends


def tone_frames(freq: float, count: int, frame_bytes: int = PCM_FRAME_BYTES) -> list[bytes]:
    """``count`` consecutive frames of one continuous sine (8 kHz, 16-bit)."""
    pcm = sine_pcm(freq, count * frame_bytes / 16)
    return [pcm[i * frame_bytes : (i + 1) * frame_bytes] for i in range(count)]


def dtmf_payloads(digit: int, updates: int = 3, step: int = 160) -> list[bytes]:
    """An RFC 4733 event as a sender emits it: ``updates`` growing reports, then the
    final report three times (2.5.1.4)."""
    out = [DtmfEvent(digit, False, 10, step * (i + 1)).serialize() for i in range(updates)]
    end = DtmfEvent(digit, True, 10, step * (updates + 1)).serialize()
    return out + [end] * 3


class _Peer:
    """A far end: its own RTP stream, an encoder for what it sends, a decoder for
    what it receives (separate codec instances, as on two machines)."""

    def __init__(self, codec: str, rate: int, pt: int, dtmf_pt: int, ssrc: int, **fmtp: Any):
        self.pt = pt
        self.dtmf_pt = dtmf_pt
        self.sender = RtpSender(rate, ssrc=ssrc, sequence=40000, timestamp=123456)
        self.encoder: AudioCodec = codec_for(codec, **fmtp)
        self.decoder: AudioCodec = codec_for(codec, **fmtp)
        self.samples = self.encoder.samples_per_frame

    def wrap(self, rtp: bytes) -> bytes:
        return rtp

    def audio(self, pcm: bytes) -> bytes:
        """The next audio packet carrying ``pcm`` (20 ms unless said otherwise)."""
        samples = self.samples * len(pcm) // PCM_FRAME_BYTES
        return self.wrap(self.sender.next_packet(self.pt, self.encoder.encode(pcm), samples))

    def payload(self, payload: bytes, pt: int | None = None) -> bytes:
        """The next packet of the stream with a given payload (and payload type)."""
        return self.wrap(
            self.sender.next_packet(self.pt if pt is None else pt, payload, self.samples)
        )

    def rtp(self, pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
        """A packet with explicit fields in this peer's SSRC."""
        return self.wrap(
            build_rtp(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, self.sender.ssrc, payload, marker)
        )

    def dtmf_event(self, digit: int, updates: int = 3) -> list[bytes]:
        """An RFC 4733 event in the audio's SSRC and sequence space, on the 8000 clock
        for its durations, timestamped with the audio's current time. The audio clock
        runs on by one frame per packet (sent 20 ms apart, audio paused meanwhile)."""
        start = self.sender.timestamp
        packets = []
        for i, payload in enumerate(dtmf_payloads(digit, updates)):
            packets.append(self.wrap(self.sender.packet_at(self.dtmf_pt, payload, start, i == 0)))
            self.sender.skip(self.samples)
        return packets

    def decode_pcm(self, packets: list[RtpPacket]) -> bytes:
        return b"".join(self.decoder.decode(p.payload) for p in packets)


class MetaPeer(_Peer):
    """Meta's media edge: SRTP keyed with the bridge's keys swapped, Opus as Meta's
    fmtp asks (or PCMU when the leg negotiated G.711)."""

    def __init__(self, params: MediaParams) -> None:
        assert params.srtp is not None
        if params.codec == "opus":
            super().__init__(
                "opus", 48000, params.payload_type, META_DTMF_PT, META_SSRC, bitrate=20000, fec=True
            )
        else:
            super().__init__(params.codec, 8000, params.payload_type, META_DTMF_PT, META_SSRC)
        srtp = params.srtp
        self.srtp = SrtpContext(srtp.suite, srtp.remote_key, srtp.local_key)

    def wrap(self, rtp: bytes) -> bytes:
        return self.srtp.protect(rtp)

    def rtcp(self, rtcp: bytes) -> bytes:
        return self.srtp.protect_rtcp(rtcp)

    def open(self, data: bytes) -> RtpPacket:
        return parse_rtp(self.srtp.unprotect(data))

    def open_rtcp(self, data: bytes) -> list[RtcpPacket]:
        return parse_rtcp(self.srtp.unprotect_rtcp(data))


class PbxPeer(_Peer):
    """An Asterisk-like PBX: plain RTP, PCMU, telephone-event 101."""

    def __init__(self) -> None:
        super().__init__("PCMU", 8000, PCMU_PT, PBX_DTMF_PT, PBX_SSRC)

    def open(self, data: bytes) -> RtpPacket:
        return parse_rtp(data)

    def open_rtcp(self, data: bytes) -> list[RtcpPacket]:
        return parse_rtcp(data)


# --------------------------------------------------------------------------- the rig


class Rig:
    """One call's bridge between a :class:`MetaPeer` and a :class:`PbxPeer`.

    ``to_meta()``/``to_pbx()`` return the RTP packets the bridge sent since the last
    call, decrypted (Meta) and parsed; RTCP goes to ``meta_rtcp``/``pbx_rtcp``.
    Each datagram's destination is kept next to it in ``*_log``.
    """

    def __init__(
        self,
        *,
        wa: MediaParams | None = None,
        pbx: MediaParams | None = None,
        no_media_timeout: float = 30.0,
        opus_complexity: int = 1,  # the gateway default (media.opus_complexity)
        engine: str | None = None,  # "python" or "native"; None: ENGINE
    ) -> None:
        self.engine = engine or ENGINE
        self.clock = FakeClock()
        self.media_clock = FakeMediaClock()
        self.wa_sock = FakeSocket(WA_LOCAL_PORT)
        self.pbx_sock = FakeSocket(PBX_LOCAL_PORT)
        self.no_media: list[str] = []
        bridge_class = NativeBridge if self.engine == "native" else Bridge
        self.bridge = bridge_class(
            "call-1",
            self.wa_sock,  # type: ignore[arg-type]
            self.pbx_sock,  # type: ignore[arg-type]
            self.media_clock,  # type: ignore[arg-type]
            self.clock.time,
            lambda leg, why: self.no_media.append(leg),
            no_media_timeout=no_media_timeout,
            opus_complexity=opus_complexity,
        )
        self.wa_media = wa or wa_params()
        self.pbx_media = pbx or pbx_params()
        self.meta = MetaPeer(self.wa_media)
        self.pbx = PbxPeer()
        self.meta_log: list[tuple[bytes, tuple[str, int]]] = []
        self.pbx_log: list[tuple[bytes, tuple[str, int]]] = []
        self.meta_rtcp: list[list[RtcpPacket]] = []
        self.pbx_rtcp: list[tuple[list[RtcpPacket], tuple[str, int]]] = []
        self._meta_seen = self._pbx_seen = 0

    # -- driving
    def set_whatsapp(self, **changes: Any) -> None:
        if changes:
            self.wa_media = remake(self.wa_media, **changes)
        self.bridge.set_whatsapp(self.wa_media)

    def set_pbx(self, **changes: Any) -> None:
        if changes:
            self.pbx_media = remake(self.pbx_media, **changes)
        self.bridge.set_pbx(self.pbx_media)

    def answer(self) -> None:
        """Both legs negotiated: PBX first (its 200), then Meta's keys are applied."""
        self.set_pbx()
        self.set_whatsapp()

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.media_clock.tick(self.clock.advance(FRAME))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def from_meta(self, data: bytes, addr: tuple[str, int] = META_ADDR) -> None:
        self.wa_sock.deliver(data, addr)

    def from_pbx(self, data: bytes, addr: tuple[str, int] = PBX_ADDR) -> None:
        self.pbx_sock.deliver(data, addr)

    # -- reading back
    def to_meta(self) -> list[RtpPacket]:
        new = self.wa_sock.sent[self._meta_seen :]
        self._meta_seen = len(self.wa_sock.sent)
        self.meta_log += new
        out = []
        for data, _addr in new:
            if is_rtcp(data):
                self.meta_rtcp.append(self.meta.open_rtcp(data))
            else:
                out.append(self.meta.open(data))
        return out

    def to_pbx(self) -> list[RtpPacket]:
        new = self.pbx_sock.sent[self._pbx_seen :]
        self._pbx_seen = len(self.pbx_sock.sent)
        self.pbx_log += new
        out = []
        for data, addr in new:
            if is_rtcp(data):
                self.pbx_rtcp.append((self.pbx.open_rtcp(data), addr))
            else:
                out.append(self.pbx.open(data))
        return out

    def stats(self, leg: str) -> dict[str, Any]:
        """One leg's LegStats as a dict (the latching tests compare several fields)."""
        return dataclasses.asdict(self.bridge.stats().leg(leg))


def frequency(pcm: bytes) -> float:
    return measure(pcm, 8000)[0]


def level(pcm: bytes) -> float:
    return measure(pcm, 8000)[1]
