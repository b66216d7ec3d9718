"""Meta-side media for the emulator: SRTP (pylibsrtp), Opus (opuslib_next), G.711, RFC 4733.

One UDP socket per call, RTP and SRTCP multiplexed on it (rtcp-mux). The
endpoint never sends before it has received a valid SRTP packet from the
gateway (Meta expects the business side to send first); the call decides when
to start :meth:`MediaEndpoint.send_loop` using :attr:`MediaEndpoint.first_rx`.
Everything checked on the receive side is recorded on the :class:`CallResult`.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import struct
import time
from dataclasses import dataclass

import numpy as np
import opuslib_next  # type: ignore[import-untyped]
import pylibsrtp
from numpy.typing import NDArray

from tests.emulator.result import CallResult, DtmfEvent
from tests.emulator.sdp import CNAME, Crypto

EVENT_CHARS = "0123456789*#ABCD"
_DIGIT_EVENT = {c: i for i, c in enumerate(EVENT_CHARS)}


@dataclass
class MediaScript:
    """What the emulator does with media on one call (both roles)."""

    tone_hz: float | None = 440.0  # None: send Opus/G.711 silence
    tone_level_dbfs: float = -10.0  # peak level of the sine
    talk_seconds: float | None = 3.0  # emulator hangs up this long after media starts
    send_media: bool = True
    dtmf: str = ""  # digits sent as RFC 4733 events
    dtmf_delay: float = 1.0  # seconds after our media starts
    dtmf_duration: float = 0.1
    dtmf_gap: float = 0.1
    media_timeout: float = 20.0  # Meta drops the call after this long without gateway media
    first_packet_timeout: float = 5.0  # no SRTP from the gateway within this: call failure
    first_packet_max_delay: float = 1.0  # later than this after the 200 OK: violation
    decode_rate: int = 48000  # rate of CallResult.received_pcm for Opus (8000 for G.711)
    encode_rate: int = 48000  # Opus encoder input rate: 48000 or 16000
    dtmf_ts_tolerance: float = 0.25  # seconds an event timestamp may be off the audio clock
    rtcp_interval: float = 2.0
    # What the user says instead of the tone: 16-bit mono PCM at encode_rate (Opus) or
    # 8000 (G.711), sent once from the start of our media, then silence.
    source_pcm: bytes | None = None
    # Opus in-band FEC as WhatsApp clients send it (Meta's fmtp has useinbandfec=1):
    # LBRR planned for opus_loss_perc % loss; opus_fec=False sends none.
    opus_fec: bool = True
    opus_loss_perc: int = 10
    # Fault injection for the emulator's self-tests (a broken business side):
    dtmf_misclock: bool = False  # event timestamps/durations counted at 48000 Hz
    # Meta's media mode for the number (docs/whatsapp-sip.md 6 and 7): "sdes" (SDES-SRTP)
    # or "webrtc" (ICE-lite + DTLS-SRTP, tests/emulator/webrtc.py).
    media_mode: str = "sdes"
    ice_timeout: float = 10.0  # webrtc: no valid check with USE-CANDIDATE by then: call failed
    # webrtc, Meta misbehaving (for the gateway's fault tests): "wrong_fingerprint" (the SDP
    # names another certificate), "ice_silent" (checks never answered), "dtls_silent"
    # (ClientHellos never answered); "" behaves.
    webrtc_fault: str = ""
    dtls_timeout: float = 10.0  # webrtc: handshake not done this long after nomination: failed
    # webrtc: use_srtp profiles Meta accepts, in its order of preference.
    dtls_profiles: tuple[str, ...] = ("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM")


@dataclass
class Codec:
    """The negotiated audio codec and events payload type."""

    name: str  # "opus", "pcmu", "pcma"
    pt: int
    clock: int
    te_pt: int | None = None
    te_clock: int = 8000
    bitrate: int = 20000  # Opus bitrate we send at (the peer's maxaveragebitrate)

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp units per 20 ms."""
        return self.clock // 50


# ---------------------------------------------------------------------------
# G.711 (ITU-T G.711, the Sun reference algorithm), vectorised with tables


def _ulaw_decode_one(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def _alaw_decode_one(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


_ULAW_DEC = np.array([_ulaw_decode_one(i) for i in range(256)], dtype=np.int16)
_ALAW_DEC = np.array([_alaw_decode_one(i) for i in range(256)], dtype=np.int16)


def _encoder_table(dec: NDArray[np.int16]) -> NDArray[np.uint8]:
    """int16 (offset by 32768) -> code whose decoded value is nearest."""
    order = np.argsort(dec, kind="stable")
    values = dec[order].astype(np.int32)
    x = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    left, right = values[idx - 1], values[idx]
    pick = np.where(np.abs(x - left) <= np.abs(right - x), idx - 1, idx)
    return order[pick].astype(np.uint8)


_ULAW_ENC = _encoder_table(_ULAW_DEC)
_ALAW_ENC = _encoder_table(_ALAW_DEC)


def g711_encode(pcm: NDArray[np.int16], law: str) -> bytes:
    table = _ULAW_ENC if law == "pcmu" else _ALAW_ENC
    return table[pcm.astype(np.int32) + 32768].tobytes()


def g711_decode(data: bytes, law: str) -> bytes:
    table = _ULAW_DEC if law == "pcmu" else _ALAW_DEC
    return table[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


# ---------------------------------------------------------------------------
# Tone measurement


def measure_tone(pcm: bytes, rate: int, skip: float = 0.5) -> tuple[float, float]:
    """Dominant frequency (Hz) and RMS level (dBFS, full-scale sine = -3 dB) of ``pcm``.

    ``pcm`` is 16-bit signed little-endian mono; the first ``skip`` seconds
    (codec start-up, jitter) are ignored. Returns (0.0, -inf) for no signal.
    """
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)[int(skip * rate) :]
    if len(x) < rate // 20:
        return 0.0, float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    if rms == 0.0:
        return 0.0, float("-inf")
    dbfs = 20.0 * math.log10(rms / 32768.0)
    spec = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    k = int(np.argmax(spec[1:])) + 1
    delta = 0.0
    if 1 <= k < len(spec) - 1:
        a, b, c = (math.log(max(float(v), 1e-12)) for v in spec[k - 1 : k + 2])
        denom = a - 2 * b + c
        if denom != 0:
            delta = 0.5 * (a - c) / denom
    return (k + delta) * rate / len(x), dbfs


# ---------------------------------------------------------------------------
# RTP helpers


@dataclass
class RtpPacket:
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    off = 12 + 4 * cc
    if data[0] & 0x10:  # header extension
        if len(data) < off + 4:
            return None
        (ext_words,) = struct.unpack_from("!H", data, off + 2)
        off += 4 + 4 * ext_words
    end = len(data)
    if data[0] & 0x20:  # padding
        end -= data[-1]
    if off > end:
        return None
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return RtpPacket(bool(data[1] & 0x80), data[1] & 0x7F, seq, ts, ssrc, data[off:end])


def build_rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 4: RTCP packet types 192-223 in the second octet."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _ntp_now() -> tuple[int, int]:
    t = time.time() + 2208988800
    return int(t) & 0xFFFFFFFF, int((t % 1) * 2**32) & 0xFFFFFFFF


def build_rtcp_sr(ssrc: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    ntp_hi, ntp_lo = _ntp_now()
    sr = struct.pack(
        "!BBHIIIIII",
        0x80,
        200,
        6,
        ssrc,
        ntp_hi,
        ntp_lo,
        rtp_ts & 0xFFFFFFFF,
        packets & 0xFFFFFFFF,
        octets & 0xFFFFFFFF,
    )
    cname = CNAME.encode()
    chunk = struct.pack("!IBB", ssrc, 1, len(cname)) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
    return sr + sdes


def _srtp_session(crypto: Crypto, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=crypto.key, ssrc_type=kind, srtp_profile=crypto.profile)
    )


# ---------------------------------------------------------------------------
# The endpoint


def opus_encoder(rate: int, bitrate: int, script: MediaScript) -> opuslib_next.Encoder:
    """Opus as a WhatsApp client encodes: VOIP, voice, in-band FEC per ``script``."""
    encoder = opuslib_next.Encoder(rate, 1, opuslib_next.APPLICATION_VOIP)
    encoder.bitrate = bitrate
    encoder.signal = opuslib_next.SIGNAL_VOICE
    encoder.inband_fec = 1 if script.opus_fec else 0
    encoder.packet_loss_perc = script.opus_loss_perc if script.opus_fec else 0
    return encoder


class MediaEndpoint(asyncio.DatagramProtocol):
    """One call's media socket on the Meta side."""

    def __init__(self, result: CallResult, script: MediaScript) -> None:
        self.result = result
        self.script = script
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.ssrc = secrets.randbits(32)
        self.codec: Codec | None = None
        self.remote: tuple[str, int] | None = None
        self.declared_remote_ssrcs: list[int] = []
        self.first_rx = asyncio.Event()
        self.first_rx_at: float | None = None
        self.ready_at: float | None = None  # webrtc: when DTLS keyed SRTP (None: at the answer)
        self.last_rx_at: float | None = None
        self._tx: pylibsrtp.Session | None = None
        self._rx: pylibsrtp.Session | None = None
        self._early: list[tuple[bytes, tuple[str, int], float]] = []
        self._decoder: opuslib_next.Decoder | None = None
        self._pcm = bytearray()
        # receive-side sequence / timestamp state
        self._base_seq: int | None = None
        self._max_ext_seq = 0
        self._received = 0
        self._last_audio: tuple[int, int, int, float] | None = None  # seq, ts, ticks, arrival
        self._event: DtmfEvent | None = None
        self._event_first_at = 0.0
        self._source_warned = False
        self._bytes_sent = 0

    # -- setup ---------------------------------------------------------------
    async def open(self, host: str = "127.0.0.1") -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    def configure(
        self,
        *,
        tx: Crypto,
        rx: Crypto,
        remote: tuple[str, int],
        codec: Codec,
        declared_remote_ssrcs: list[int] | None = None,
    ) -> None:
        """Keys and peer are known (answer received or sent): process what arrived early."""
        self._tx = _srtp_session(tx, outbound=True)
        self._rx = _srtp_session(rx, outbound=False)
        self.remote = remote
        self.codec = codec
        self.declared_remote_ssrcs = declared_remote_ssrcs or []
        r = self.result
        r.codec = {"opus": "opus/48000/2", "pcmu": "pcmu/8000", "pcma": "pcma/8000"}[codec.name]
        r.payload_type, r.te_payload_type = codec.pt, codec.te_pt
        if codec.name == "opus":
            self._decoder = opuslib_next.Decoder(self.script.decode_rate, 1)
            r.sample_rate = self.script.decode_rate
        else:
            r.sample_rate = 8000
        early, self._early = self._early, []
        for data, addr, at in early:
            self._process(data, addr, at)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.result.received_pcm = bytes(self._pcm)
        self.result.packets_lost = self.lost

    @property
    def lost(self) -> int:
        if self._base_seq is None:
            return 0
        return max(0, self._max_ext_seq - self._base_seq + 1 - self._received)

    # -- receive -------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = asyncio.get_running_loop().time()
        if self._rx is None:
            if len(self._early) < 500:
                self._early.append((data, addr, now))
            return
        self._process(data, addr, now)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable before the gateway's socket exists, etc.

    def _process(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        r = self.result
        assert self._rx is not None
        if is_rtcp(data):
            try:
                self._rx.unprotect_rtcp(data)
            except pylibsrtp.Error:
                r.srtcp_auth_failures += 1
                r.violation("SRTCP packet from the gateway failed authentication")
                return
            r.rtcp_received += 1
            return
        try:
            plain = self._rx.unprotect(data)
        except pylibsrtp.Error as exc:
            if "replay" in str(exc) or "too old" in str(exc):
                r.srtp_replay_failures += 1
            else:
                r.srtp_auth_failures += 1
                r.violation("SRTP packet from the gateway failed authentication")
            return
        pkt = parse_rtp(plain)
        if pkt is None:
            r.violation("malformed RTP packet inside SRTP")
            return
        if self.remote is not None and addr != self.remote and not self._source_warned:
            self._source_warned = True
            r.violation(
                f"gateway sends RTP from {addr[0]}:{addr[1]} but its SDP says "
                f"{self.remote[0]}:{self.remote[1]} (not symmetric RTP)"
            )
        if self.first_rx_at is None:
            self.first_rx_at = now
            self.first_rx.set()
        elif self.last_rx_at is not None:
            r.max_media_gap = max(r.max_media_gap, now - self.last_rx_at)
        self.last_rx_at = now
        r.packets_received += 1
        if r.remote_ssrc is None:
            r.remote_ssrc = pkt.ssrc
            if self.declared_remote_ssrcs and pkt.ssrc not in self.declared_remote_ssrcs:
                r.violation(
                    f"gateway RTP SSRC {pkt.ssrc} is not the a=ssrc it declared "
                    f"{self.declared_remote_ssrcs}"
                )
        elif pkt.ssrc != r.remote_ssrc:
            r.violation(
                f"gateway RTP SSRC changed from {r.remote_ssrc} to {pkt.ssrc} (PT {pkt.pt})"
            )
        self._track_seq(pkt.seq)
        codec = self.codec
        assert codec is not None
        if pkt.pt == codec.pt:
            self._audio(pkt, now)
        elif codec.te_pt is not None and pkt.pt == codec.te_pt:
            self._dtmf(pkt, now)
        else:
            hint = " (looks like a telephone-event)" if len(pkt.payload) == 4 else ""
            r.violation(f"gateway sent RTP payload type {pkt.pt} that was not negotiated{hint}")

    def _track_seq(self, seq: int) -> None:
        if self._base_seq is None:
            self._base_seq = self._max_ext_seq = seq
            self._received = 1
            return
        self._received += 1
        max_seq = self._max_ext_seq & 0xFFFF
        delta = (seq - max_seq) & 0xFFFF
        if delta == 0:
            self._received -= 1  # duplicate
            return
        if delta < 0x8000:
            if delta > 100:
                self.result.violation(
                    f"RTP sequence jumped by {delta} (events must share the audio sequence space)"
                )
            self._max_ext_seq += delta

    def _audio(self, pkt: RtpPacket, now: float) -> None:
        r = self.result
        codec = self.codec
        assert codec is not None
        if codec.name == "opus":
            assert self._decoder is not None
            try:
                pcm = self._decoder.decode(pkt.payload, self.script.decode_rate * 120 // 1000)
            except opuslib_next.OpusError as exc:
                r.violation(f"undecodable Opus packet from the gateway: {exc}")
                return
            ticks = (len(pcm) // 2) * 48000 // self.script.decode_rate
            rate = self.script.decode_rate
        else:
            pcm = g711_decode(pkt.payload, codec.name)
            ticks = len(pkt.payload)
            rate = 8000
        if ticks > codec.clock * 20 // 1000:
            r.violation(
                f"gateway packet carries {ticks * 1000 // codec.clock} ms of audio (maxptime 20)"
            )
        last = self._last_audio
        if last is not None:
            lseq, lts, lticks, _ = last
            dts = (pkt.ts - lts) & 0xFFFFFFFF
            if pkt.seq == (lseq + 1) & 0xFFFF and dts != lticks:
                r.violation(
                    f"RTP timestamp advanced {dts} over a {lticks}-tick packet "
                    f"({codec.name} RTP clock is {codec.clock}: {codec.frame_ticks} per 20 ms)"
                )
            if 0 < dts < 0x80000000 and dts > lticks:  # a gap: keep the timeline
                missing = min(dts - lticks, codec.clock) * rate // codec.clock
                self._pcm += b"\x00\x00" * missing
        self._last_audio = (pkt.seq, pkt.ts, ticks, now)
        self._pcm += pcm

    def _dtmf(self, pkt: RtpPacket, now: float) -> None:
        r = self.result
        codec = self.codec
        assert codec is not None
        if len(pkt.payload) < 4:
            r.violation(f"telephone-event packet of {len(pkt.payload)} bytes")
            return
        event, flags = pkt.payload[0], pkt.payload[1]
        duration = pkt.payload[2] << 8 | pkt.payload[3]
        end = bool(flags & 0x80)
        ev = self._event
        if ev is None or ev.timestamp != pkt.ts:
            digit = EVENT_CHARS[event] if event < len(EVENT_CHARS) else f"<{event}>"
            ev = DtmfEvent(digit, event, pkt.ts, marker=pkt.marker)
            self._event, self._event_first_at = ev, now
            r.dtmf_events.append(ev)
            r.dtmf_received += digit
            if not pkt.marker:
                r.violation(f"first packet of telephone-event {digit!r} lacks the marker bit")
            last = self._last_audio
            if last is not None:
                _, lts, _, lat = last
                expected = lts + round((now - lat) * codec.clock)
                off = ((pkt.ts - expected + 2**31) % 2**32) - 2**31
                if abs(off) > self.script.dtmf_ts_tolerance * codec.clock:
                    r.violation(
                        f"telephone-event {digit!r} timestamp {pkt.ts} is {off} ticks "
                        f"({off / codec.clock:+.2f} s) off the audio stream's timestamps "
                        "(48000/8000 clock mix-up or unrelated timestamp base)"
                    )
        elif event != ev.event:
            r.violation("telephone-event changed event code within one event timestamp")
        ev.packets += 1
        ev.duration = max(ev.duration, duration)
        if end and not ev.ended:
            ev.ended = True
            span = now - self._event_first_at
            seconds = ev.duration / codec.te_clock
            if seconds > 2.5 * (span + 0.05) + 0.05:
                r.violation(
                    f"telephone-event {ev.digit!r} duration {ev.duration} is "
                    f"{seconds:.2f} s at {codec.te_clock} Hz but took {span:.2f} s "
                    "(duration counted at 48000 Hz?)"
                )

    # -- send ----------------------------------------------------------------
    async def send_loop(self, stop: asyncio.Event) -> None:
        """Send 20 ms packets (tone or silence, RFC 4733 digits) until ``stop`` is set."""
        codec, tx, transport = self.codec, self._tx, self.transport
        assert codec is not None and tx is not None and transport is not None
        assert self.remote is not None
        s = self.script
        r = self.result
        loop = asyncio.get_running_loop()
        seq = secrets.randbits(16)
        ts = secrets.randbits(32)
        ticks = codec.frame_ticks
        enc_rate = s.encode_rate if codec.name == "opus" else 8000
        n = enc_rate // 50
        encoder: opuslib_next.Encoder | None = None
        if codec.name == "opus":
            encoder = opus_encoder(enc_rate, codec.bitrate, s)
        source = np.frombuffer(s.source_pcm, dtype="<i2") if s.source_pcm is not None else None
        amp = 32767 * 10 ** (s.tone_level_dbfs / 20)
        sample = 0
        start = loop.time()
        next_at = start
        last_rtcp = start
        digits = list(s.dtmf) if codec.te_pt is not None else []
        next_digit_at = start + s.dtmf_delay
        ev_digit: str | None = None
        ev_ts = 0
        ev_tick = 0
        ev_ticks = max(1, round(s.dtmf_duration / 0.02))
        first = True
        while not stop.is_set():
            now = loop.time()
            if ev_digit is None and digits and now >= next_digit_at:
                ev_digit, ev_ts, ev_tick = digits.pop(0), ts, 0
                if s.dtmf_misclock:  # an 8000-clock counter next to a 48000 audio clock
                    ev_ts = (ts - round((now - start) * (codec.clock - 8000))) & 0xFFFFFFFF
                r.dtmf_sent += ev_digit
            if ev_digit is not None:
                te_rate = 48000 if s.dtmf_misclock else codec.te_clock
                dur = (min(ev_tick, ev_ticks) + 1) * (te_rate // 50)
                ending = ev_tick >= ev_ticks
                flags = (0x80 if ending else 0) | 10  # E bit, volume -10 dBm0
                payload = struct.pack("!BBH", _DIGIT_EVENT[ev_digit], flags, dur)
                assert codec.te_pt is not None
                pkt = build_rtp(codec.te_pt, seq, ev_ts, self.ssrc, payload, marker=ev_tick == 0)
                ev_tick += 1
                if ev_tick >= ev_ticks + 3:  # three end packets
                    ev_digit = None
                    next_digit_at = now + s.dtmf_gap
            else:
                if source is not None:
                    pcm = np.zeros(n, dtype=np.int16)
                    chunk = source[sample : sample + n]
                    pcm[: len(chunk)] = chunk
                elif s.tone_hz:
                    t = (sample + np.arange(n)) / enc_rate
                    pcm = (amp * np.sin(2 * np.pi * s.tone_hz * t)).astype(np.int16)
                else:
                    pcm = np.zeros(n, dtype=np.int16)
                sample += n
                if encoder is not None:
                    payload = encoder.encode(pcm.astype("<i2").tobytes(), n)
                else:
                    payload = g711_encode(pcm, codec.name)
                pkt = build_rtp(codec.pt, seq, ts, self.ssrc, payload, marker=first)
                first = False
            transport.sendto(tx.protect(pkt), self.remote)
            r.packets_sent += 1
            self._bytes_sent += len(pkt) - 12
            seq = (seq + 1) & 0xFFFF
            ts = (ts + ticks) & 0xFFFFFFFF
            if now - last_rtcp >= s.rtcp_interval:
                last_rtcp = now
                sr = build_rtcp_sr(self.ssrc, ts, r.packets_sent, self._bytes_sent)
                transport.sendto(tx.protect_rtcp(sr), self.remote)
                r.rtcp_sent += 1
            next_at += 0.02
            delay = next_at - loop.time()
            if delay < -0.2:  # fell far behind (loaded machine): resynchronise
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))
