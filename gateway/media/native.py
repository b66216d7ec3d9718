"""The media engine: ``python`` (gateway.media.bridge as it is, the reference) or
``native`` (the same bridge with its per-packet steady state in C).

The native engine is the optional extension :mod:`gateway.media._native` (Cython,
libopus and libsrtp2; setup.py builds it when it can). :class:`NativeBridge` is a
:class:`~gateway.media.bridge.Bridge` whose datagrams go to the extension first:
it takes the steady state of both directions (receive, SRTP unprotect, the RTP
checks and the in-order case, Opus decode / G.711 encode and back, the RTP header,
SRTP protect, send) and hands everything else to the Python bridge unchanged.
There is one copy of every piece of state: the extension reads and writes the
Python engine's own objects (legs, RTP senders, receive statistics, reorder
buffers, codecs); only the SRTP sessions are the extension's (libsrtp2), which the
Python paths use through the same surface as
:class:`~gateway.media.srtp.SrtpContext`. So the slow and the fast path cannot
disagree, and a parity test (tests/unit/media/test_engine_parity.py) checks it.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any, Literal

from gateway.logging import get_logger
from gateway.media.bridge import Bridge
from gateway.transport.rtp import RtpSocket

__all__ = [
    "ENGINES",
    "Engine",
    "NativeBridge",
    "load_native",
    "native_error",
    "resolve_engine",
    "srtp_library",
]

log = get_logger(__name__)

Engine = Literal["auto", "native", "python"]
ENGINES: tuple[Engine, ...] = ("auto", "native", "python")

_native: ModuleType | None = None
_native_error: str | None = None


def load_native() -> ModuleType | None:
    """The extension, or None (the reason in :func:`native_error`)."""
    global _native, _native_error
    if _native is None and _native_error is None:
        try:
            from gateway.media import _native as module
        except ImportError as exc:  # not built (no compiler, no headers) or no libraries
            _native_error = str(exc) or type(exc).__name__
        else:
            _native = module
    return _native


def native_error() -> str | None:
    """Why the extension does not import (None when it does or was not tried)."""
    return _native_error


def resolve_engine(requested: Engine) -> Literal["native", "python"]:
    """The engine to run: ``auto`` is native when the extension imports. A native
    engine that cannot load is the Python engine and one warning line, never a failed
    start."""
    if requested == "python":
        return "python"
    if load_native() is not None:
        return "native"
    log.warning(
        "media_engine_fallback",
        requested=requested,
        engine="python",
        reason=f"native media engine unavailable: {_native_error}",
    )
    return "python"


def srtp_library() -> str:
    """The libsrtp the native engine's sessions run on, for the startup line: pylibsrtp's
    build (OpenSSL; the one the Python engine uses) when its layout matches, else the
    system's libsrtp2 (Debian's, NSS). "" without the extension."""
    module = load_native()
    if module is None:
        return ""
    backend, version = module.srtp_backend()
    return f"{backend} ({version})"


class NativeBridge(Bridge):
    """A :class:`Bridge` whose packets go through the native engine first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """:class:`Bridge`'s arguments, as they are (BridgeFactory passes them)."""
        native = load_native()
        if native is None:
            raise RuntimeError(f"native media engine unavailable: {_native_error}")
        super().__init__(*args, **kwargs)
        self.wa.srtp_factory = native.Srtp
        self.pbx.srtp_factory = native.Srtp
        # The loop's clock is time.monotonic: the extension reads it itself.
        loop_time = self._time
        monotonic = getattr(loop_time, "__func__", None) is asyncio.BaseEventLoop.time
        self._fast = native.Fast(
            self,
            super().on_whatsapp_packet,
            super().on_pbx_packet,
            loop_time,
            monotonic,
        )
        wa_sock, pbx_sock = self.wa.sock, self.pbx.sock
        if isinstance(wa_sock, RtpSocket):
            wa_sock.use_native(self._fast.whatsapp_side, native.poll_round)
        if isinstance(pbx_sock, RtpSocket):
            pbx_sock.use_native(self._fast.pbx_side, native.poll_round)

    def on_whatsapp_packet(self, data: bytes, addr: tuple[str, int]) -> None:
        self._fast.whatsapp(data, addr)

    def on_pbx_packet(self, data: bytes, addr: tuple[str, int]) -> None:
        self._fast.from_pbx(data, addr)

    @property
    def fast_packets(self) -> int:
        """Datagrams the native path took (both directions)."""
        return int(self._fast.fast_packets)

    @property
    def slow_packets(self) -> int:
        """Datagrams handed to the Python bridge."""
        return int(self._fast.slow_packets)
