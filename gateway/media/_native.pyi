"""Types of the native media engine (gateway/media/_native.pyx, built by setup.py)."""

from collections.abc import Callable
from typing import Any

from gateway.transport.rtp import RtpSocket

class Srtp:
    suite: str
    auth_failures: int
    replays: int
    def __init__(self, suite: str, local_material: bytes, remote_material: bytes) -> None: ...
    def protect(self, rtp: bytes) -> bytes: ...
    def protect_rtcp(self, rtcp: bytes) -> bytes: ...
    def unprotect(self, srtp: bytes) -> bytes: ...
    def unprotect_rtcp(self, srtcp: bytes) -> bytes: ...

class FastSide:
    core: Fast
    side: int

class Fast:
    fast_packets: int
    slow_packets: int
    whatsapp_side: FastSide
    pbx_side: FastSide
    def __init__(
        self,
        bridge: Any,
        slow_wa: Callable[[bytes, tuple[str, int]], None],
        slow_pbx: Callable[[bytes, tuple[str, int]], None],
        time: Callable[[], float],
        monotonic: bool,
    ) -> None: ...
    def whatsapp(self, data: bytes, addr: tuple[str, int]) -> None: ...
    def from_pbx(self, data: bytes, addr: tuple[str, int]) -> None: ...

def poll_round(
    epfd: int, sockets: dict[int, RtpSocket], on_error: Callable[[int], None]
) -> None: ...
