"""Audio codecs behind one small interface.

Every codec decodes to, and encodes from, 16-bit mono PCM at 8000 Hz in the
machine's byte order (little-endian on every platform we run on), 160
samples (320 octets) per 20 ms: the PBX leg's G.711 rate, so a call never
resamples.  ``clock_rate`` and ``samples_per_frame`` are RTP-side figures:
Opus always runs its RTP clock at 48000 (RFC 7587 4.1) whatever the audio
bandwidth, so a 20 ms Opus frame advances the timestamp by 960.

Opus goes through libopus (loaded by opuslib-next) with private ctypes
prototypes and preallocated buffers on the per-frame path; opuslib-next's own
``encode``/``decode`` allocate a ctypes array and a Python list per call.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from typing import Any, Protocol

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12, removed in 3.13 where the audioop-lts
    # distribution provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "PCM_FRAME_BYTES",
    "PCM_RATE",
    "AudioCodec",
    "CodecError",
    "OpusCodec",
    "PcmaCodec",
    "PcmuCodec",
    "codec_for",
]

PCM_RATE = 8000
PCM_FRAME_SAMPLES = 160
PCM_FRAME_BYTES = 2 * PCM_FRAME_SAMPLES


class CodecError(ValueError):
    """A payload the codec cannot decode, PCM it cannot encode, or an unknown codec."""


class AudioCodec(Protocol):
    """One direction-agnostic codec instance per call leg (it holds the
    decoder state for what the leg receives and the encoder state for what
    it sends)."""

    @property
    def name(self) -> str:
        """The SDP encoding name (``opus``, ``PCMU``, ``PCMA``)."""
        ...

    @property
    def clock_rate(self) -> int:
        """RTP clock rate."""
        ...

    @property
    def samples_per_frame(self) -> int:
        """RTP timestamp increment per 20 ms frame."""
        ...

    def decode(self, payload: bytes) -> bytes:
        """PCM (8 kHz, 16-bit mono) for one RTP payload; :class:`CodecError` if corrupt."""
        ...

    def encode(self, pcm: bytes) -> bytes:
        """One RTP payload for a PCM frame (normally 20 ms = 320 octets)."""
        ...

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        """PCM standing in for one lost packet; ``next_payload`` is the packet
        after the gap when it has already arrived (Opus decodes its in-band
        FEC).  Call it before :meth:`decode` of that next packet."""
        ...

    def silence(self) -> bytes:
        """An encoded 20 ms silence payload (to keep media flowing)."""
        ...

    def peer_loss(self, fraction_lost: int) -> None:
        """The peer's RTCP report on what we send: loss in the last interval as a
        fraction of 256 (RFC 3550 6.4.1). Opus plans its FEC by it; G.711 ignores it."""
        ...


# --------------------------------------------------------------------------- G.711


class _G711:
    """Shared G.711 logic: audioop conversion, repeat-and-attenuate concealment."""

    __slots__ = ("_last", "_losses")

    clock_rate = 8000
    samples_per_frame = 160
    #: Consecutive lost frames concealed by repeating the last one, each 6 dB
    #: quieter; after that, silence.
    max_repeats = 3

    def __init__(self) -> None:
        self._last: bytes | None = None
        self._losses = 0

    def peer_loss(self, fraction_lost: int) -> None:
        pass  # nothing to adapt: G.711 has no redundancy to turn on

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        last = self._last
        self._losses += 1
        if last is None:
            return bytes(PCM_FRAME_BYTES)
        if self._losses > self.max_repeats:
            return bytes(len(last))
        return audioop.mul(last, 2, 0.5**self._losses)


class PcmuCodec(_G711):
    """G.711 mu-law (RTP payload type 0)."""

    __slots__ = ()
    name = "PCMU"
    _SILENCE = b"\xff" * 160  # mu-law of 0

    def decode(self, payload: bytes) -> bytes:
        pcm = audioop.ulaw2lin(payload, 2)
        self._last = pcm
        self._losses = 0
        return pcm

    def encode(self, pcm: bytes) -> bytes:
        return audioop.lin2ulaw(pcm, 2)

    def silence(self) -> bytes:
        return self._SILENCE


class PcmaCodec(_G711):
    """G.711 A-law (RTP payload type 8)."""

    __slots__ = ()
    name = "PCMA"
    _SILENCE = b"\xd5" * 160  # A-law of 0

    def decode(self, payload: bytes) -> bytes:
        pcm = audioop.alaw2lin(payload, 2)
        self._last = pcm
        self._losses = 0
        return pcm

    def encode(self, pcm: bytes) -> bytes:
        return audioop.lin2alaw(pcm, 2)

    def silence(self) -> bytes:
        return self._SILENCE


# --------------------------------------------------------------------------- Opus

_MAX_PACKET = 4000  # > 3 * 1275 + 7 (a 60 ms packet)
_MAX_DECODE_SAMPLES = 960  # 120 ms at 8 kHz, the longest Opus packet

#: Encoder complexity while FEC is planned (the peer reports loss, or has not
#: reported yet). libopus 1.3 codes no LBRR (in-band FEC) at complexity 0-1 at
#: 20 kbit/s, whatever ``packet_loss_perc`` says: measured, decoding the next
#: packet's FEC then gives exactly what PLC gives (docs/decisions.md).
FEC_COMPLEXITY = 3
#: Consecutive loss-free reports after which FEC is planned no more (one lossy
#: report turns it back on at once).
FEC_OFF_AFTER_CLEAN_REPORTS = 2


class _Opus:
    """libopus entry points with our own ctypes prototypes (opuslib-next's
    objects own the encoder/decoder state and do the one-off CTLs)."""

    def __init__(self) -> None:
        import opuslib_next  # type: ignore[import-untyped]

        self.module: Any = opuslib_next
        lib: ctypes.CDLL = opuslib_next.api.libopus
        # lib["name"] makes a fresh function object, so these prototypes do
        # not disturb the ones opuslib-next set on lib.opus_encode etc.
        encode = lib["opus_encode"]
        encode.argtypes = (
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int32,
        )
        encode.restype = ctypes.c_int32
        decode = lib["opus_decode"]
        decode.argtypes = (
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        )
        decode.restype = ctypes.c_int
        self.encode = encode
        self.decode = decode
        # The per-frame calls: no argtypes, so ctypes converts nothing (about 0.25 us
        # a call): the codec passes a c_void_p, bytes, ctypes arrays and small ints,
        # which ctypes hands over as pointer, pointer, pointer and C int as they are.
        self.encode_frame = lib["opus_encode"]
        self.encode_frame.restype = ctypes.c_int32
        self.decode_frame = lib["opus_decode"]
        self.decode_frame.restype = ctypes.c_int


@functools.cache
def _opus() -> _Opus:
    # Loaded on first use: a G.711-only deployment does not need libopus.
    return _Opus()


@functools.cache
def _opus_silence() -> bytes:
    opus = _opus()
    encoder = opus.module.Encoder(PCM_RATE, 1, opus.module.APPLICATION_VOIP)
    out = (ctypes.c_char * _MAX_PACKET)()
    zeros = bytes(PCM_FRAME_BYTES)
    payload = b""
    for _ in range(5):  # past the encoder's start-up frames
        n = opus.encode(encoder.encoder_state, zeros, PCM_FRAME_SAMPLES, out, _MAX_PACKET)
        payload = ctypes.string_at(out, n)
    return payload


class OpusCodec:
    """Opus (RFC 6716, RTP per RFC 7587): mono, 20 ms, application VOIP.

    Encodes from and decodes to 8 kHz directly (libopus resamples
    internally), so the encoder produces narrowband audio: all a G.711 PBX
    leg carries.  ``bitrate`` is the peer's ``maxaveragebitrate`` and
    ``fec`` its ``useinbandfec``; ``packet_loss_perc`` is the loss the
    encoder plans FEC for (FEC is only emitted when it is above 0) until the
    peer's RTCP reports say otherwise (:meth:`peer_loss`): loss reported sets
    it to that loss, :data:`FEC_OFF_AFTER_CLEAN_REPORTS` loss-free reports in
    a row set it to 0.  ``complexity`` is the encoder's complexity while no
    FEC is planned; while it is, at least :data:`FEC_COMPLEXITY`.  At 20
    kbit/s FEC takes bits from the audio itself, so it costs quality on a
    clean path as well as encoder time (docs/decisions.md).
    """

    __slots__ = (
        "_clean_reports",
        "_conceal_samples",
        "_decode_frame",
        "_decoder",
        "_decoder_ptr",
        "_decoder_state",
        "_encode_frame",
        "_encoder",
        "_encoder_ptr",
        "_encoder_state",
        "_out",
        "_out_view",
        "_pcm",
        "_pcm_view",
        "bitrate",
        "complexity",
        "fec",
        "packet_loss_perc",
    )

    name = "opus"
    clock_rate = 48000
    samples_per_frame = 960

    def __init__(
        self,
        bitrate: int = 20000,
        complexity: int = 1,
        fec: bool = True,
        packet_loss_perc: int = 5,
    ) -> None:
        opus = _opus()
        module = opus.module
        self.bitrate = bitrate
        self.fec = fec
        self.complexity = complexity
        self.packet_loss_perc = packet_loss_perc
        self._clean_reports = 0
        try:
            encoder = module.Encoder(PCM_RATE, 1, module.APPLICATION_VOIP)
            encoder.bitrate = bitrate
            encoder.complexity = self.encoder_complexity
            encoder.signal = module.SIGNAL_VOICE
            encoder.inband_fec = 1 if fec else 0
            encoder.packet_loss_perc = packet_loss_perc
            decoder = module.Decoder(PCM_RATE, 1)
        except module.OpusError as exc:
            raise CodecError(f"Opus setup failed: {exc}") from None
        self._encoder: Any = encoder  # keeps the state alive; it frees it
        self._decoder: Any = decoder
        self._encoder_state: Any = encoder.encoder_state
        self._decoder_state: Any = decoder.decoder_state
        self._out = (ctypes.c_char * _MAX_PACKET)()
        self._pcm = (ctypes.c_int16 * _MAX_DECODE_SAMPLES)()
        # Per frame: the states' addresses as c_void_p, prototype-free calls, and the
        # results copied out through a memoryview (string_at costs a Python call).
        self._encoder_ptr = ctypes.cast(self._encoder_state, ctypes.c_void_p)
        self._decoder_ptr = ctypes.cast(self._decoder_state, ctypes.c_void_p)
        self._encode_frame = opus.encode_frame
        self._decode_frame = opus.decode_frame
        self._out_view = memoryview(self._out)
        self._pcm_view = memoryview(self._pcm).cast("B")
        self._conceal_samples = PCM_FRAME_SAMPLES

    @property
    def encoder_complexity(self) -> int:
        """The complexity the encoder runs at now."""
        if self.fec and self.packet_loss_perc > 0:
            return max(self.complexity, FEC_COMPLEXITY)
        return self.complexity

    def peer_loss(self, fraction_lost: int) -> None:
        if fraction_lost > 0:
            self._clean_reports = 0
            # The fraction of 256 as a percentage, rounded up: any loss plans some FEC.
            perc = min(100, -(-fraction_lost * 100 // 256))
        else:
            self._clean_reports += 1
            if self._clean_reports < FEC_OFF_AFTER_CLEAN_REPORTS:
                return
            perc = 0
        if perc == self.packet_loss_perc:
            return
        complexity = self.encoder_complexity
        self.packet_loss_perc = perc
        try:
            self._encoder.packet_loss_perc = perc
            if self.encoder_complexity != complexity:
                self._encoder.complexity = self.encoder_complexity
        except _opus().module.OpusError as exc:
            raise CodecError(f"Opus encoder setting failed: {exc}") from None

    def decode(self, payload: bytes) -> bytes:
        if not payload:
            raise CodecError("empty Opus payload")
        if type(payload) is not bytes:
            payload = bytes(payload)  # the prototype-free call takes bytes as char *
        n = self._decode_frame(
            self._decoder_ptr, payload, len(payload), self._pcm, _MAX_DECODE_SAMPLES, 0
        )
        if n < 0:
            raise CodecError(f"Opus decode failed ({n})")
        self._conceal_samples = n
        return self._pcm_view[: 2 * n].tobytes()

    def encode(self, pcm: bytes) -> bytes:
        if type(pcm) is not bytes:
            pcm = bytes(pcm)
        n = self._encode_frame(self._encoder_ptr, pcm, len(pcm) >> 1, self._out, _MAX_PACKET)
        if n < 0:
            raise CodecError(f"Opus encode failed ({n}) for {len(pcm)} octets of PCM")
        return self._out_view[:n].tobytes()

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        opus = _opus()
        samples = self._conceal_samples
        n = -1
        if next_payload:
            # The next packet's LBRR data re-creates the lost frame (libopus
            # falls back to PLC itself when the packet carries none).
            n = opus.decode(
                self._decoder_state, next_payload, len(next_payload), self._pcm, samples, 1
            )
        if n < 0:
            n = opus.decode(self._decoder_state, None, 0, self._pcm, samples, 0)
            if n < 0:
                return bytes(2 * samples)
        return ctypes.string_at(self._pcm, 2 * n)

    def silence(self) -> bytes:
        return _opus_silence()


# --------------------------------------------------------------------------- lookup

_OPUS_MIN_BITRATE = 6000
_OPUS_MAX_BITRATE = 510000


def _fmtp_int(params: dict[str, str | int | bool], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return None  # a peer's malformed fmtp value: fall back to the default


def codec_for(name: str, **fmtp: str | int | bool) -> AudioCodec:
    """A codec for an SDP encoding name, honouring the peer's fmtp parameters.

    Opus: ``maxaveragebitrate`` (clamped to 6000-510000) sets the bitrate
    (default 20000), ``useinbandfec`` (default 0, RFC 7587 6.1) switches
    FEC; other fmtp parameters are ignored (we send mono, never DTX).  Our
    own settings can be given too and take precedence: ``bitrate``,
    ``complexity``, ``fec``, ``packet_loss_perc`` (the :class:`OpusCodec`
    arguments).  Pass hyphenated keys as ``**{"sprop-maxcapturerate": "16000"}``.
    Unknown names raise :class:`CodecError`.
    """
    key = name.strip().lower()
    if key == "pcmu":
        return PcmuCodec()
    if key == "pcma":
        return PcmaCodec()
    if key == "opus":
        params = {k.lower(): v for k, v in fmtp.items()}
        bitrate = _fmtp_int(params, "bitrate")
        if bitrate is None:
            bitrate = _fmtp_int(params, "maxaveragebitrate")
        if bitrate is None:
            bitrate = 20000
        fec = _fmtp_int(params, "fec")
        if fec is None:
            fec = _fmtp_int(params, "useinbandfec")
        complexity = _fmtp_int(params, "complexity")
        loss = _fmtp_int(params, "packet_loss_perc")
        return OpusCodec(
            bitrate=max(_OPUS_MIN_BITRATE, min(_OPUS_MAX_BITRATE, bitrate)),
            complexity=1 if complexity is None else max(0, min(10, complexity)),
            fec=fec == 1,
            packet_loss_perc=5 if loss is None else max(0, min(100, loss)),
        )
    raise CodecError(f"unsupported codec {name!r}")
