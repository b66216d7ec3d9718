"""The refusal of an offer or answer (:class:`NegotiationError`) and the RFC 3261
section 20.43 warning codes it carries; shared by :mod:`gateway.sdp.negotiate` and
:mod:`gateway.sdp.webrtc`."""

from __future__ import annotations

WARN_TRANSPORT = 302  # incompatible transport protocol
WARN_MEDIA_TYPE = 304  # media type not available
WARN_FORMAT = 305  # incompatible media format


class NegotiationError(Exception):
    """An offer or answer the gateway cannot accept; answer ``status`` with ``warning``."""

    def __init__(self, reason: str, status: int = 488, warning: int = WARN_FORMAT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.warning = warning

    def warning_header(self, host: str) -> tuple[str, str]:
        """``Warning: <code> <host> "<reason>"`` for the 488 (RFC 3261 13.3.1.3, 20.43)."""
        return ("Warning", f'{self.warning} {host} "{self.reason.replace(chr(34), chr(39))}"')
