"""The media settings a bridge needs, as plain values (the caller builds them from ``media``).

:mod:`gateway.media` never reads the configuration model: the application maps
the ``media`` section of the config onto :class:`MediaSettings` and hands it to
:class:`~gateway.media.bridge.BridgeFactory`. The defaults match the config's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.media.leg import DEFAULT_LATCH_WINDOW

__all__ = ["MediaSettings"]


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Per-bridge settings: the no-media timeout, the Opus complexity, the latching rule,
    the engine."""

    # End the call after this many seconds without media from a leg.
    no_media_timeout: float = 30.0
    # libopus encoder complexity 0-10 toward Meta while Meta reports no loss.
    opus_complexity: int = 1
    # "strict": the PBX leg may learn its source port once within latch_window seconds;
    # "sdp": the SDP's address:port only, never learned.
    latch: Literal["strict", "sdp"] = "strict"
    latch_window: float = DEFAULT_LATCH_WINDOW
    # Meta's WebRTC mode: ICE and the DTLS handshake must be done within this many seconds.
    dtls_timeout: float = 10.0
    # "auto" | "native" | "python" (gateway.media.native.resolve_engine).
    engine: Literal["auto", "native", "python"] = "auto"
