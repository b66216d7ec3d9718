"""Per-leg and per-call media statistics, as read at scrape or record time.

The bridge's fast path keeps its counters as plain ``int`` attributes of
:class:`gateway.media.leg.Leg` and :class:`gateway.media.bridge.Bridge`
(nothing per packet allocates); :meth:`Leg.stats` and :meth:`Bridge.stats` copy
them into these frozen dataclasses when metrics are scraped or a call record is
written. Metrics (:mod:`gateway.ops.metrics`) and records
(:mod:`gateway.ops.records`) read them by attribute, so a misspelled field is a
type error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BridgeStats", "LegStats", "WebRtcStats"]


@dataclass(frozen=True, slots=True)
class LegStats:
    """One leg of a call's media (see :mod:`gateway.media.leg` for the drop counters)."""

    codec: str | None = None  # the negotiated codec's name, None before the leg's SDP
    rx_packets: int = 0  # taken as received from the leg's source
    rx_octets: int = 0  # their RTP payload octets
    tx_packets: int = 0
    lost: int = 0  # RFC 3550 cumulative loss (goes down when duplicates arrive)
    jitter_seconds: float = 0.0  # RFC 3550 interarrival jitter
    bad_packets: int = 0  # from the peer but not its stream, or not decodable
    foreign_packets: int = 0  # from another host, or before the leg's SDP
    relatch_refused: int = 0  # from the peer's host but not the latched port
    srtp_auth_failures: int = 0
    reorder_late: int = 0  # arrived after the reorder buffer gave up on them


@dataclass(frozen=True, slots=True)
class WebRtcStats:
    """How the link came up (or did not), for metrics and the call record."""

    state: str = "new"  # new | checking | connecting | connected | failed | closed
    checks_sent: int = 0  # ICE connectivity and consent checks we sent
    checks_answered: int = 0  # the peer's checks we answered (a full-ICE peer)
    role_conflicts: int = 0
    controlling: bool = True
    nominated: str | None = None  # "host:port" of the selected pair's remote side
    ice_ms: float | None = None  # from start to the nominated pair
    dtls_ms: float | None = None  # the DTLS handshake
    srtp_suite: str | None = None
    dtls_client: bool = True
    failure: str | None = None  # why the link failed


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """One call's media: both legs, passthrough, and the RFC 4733 DTMF relayed."""

    whatsapp: LegStats = LegStats()
    pbx: LegStats = LegStats()
    passthrough: bool = False  # both legs G.711 alike: re-framed, not transcoded
    dtmf_to_pbx: int = 0  # telephone-event packets sent toward the PBX
    dtmf_to_whatsapp: int = 0  # the same toward Meta
    dtmf_events_to_pbx: int = 0  # whole events (digits) relayed toward the PBX
    dtmf_events_to_whatsapp: int = 0
    webrtc: WebRtcStats | None = None  # Meta's WebRTC mode: how ICE and DTLS went

    def leg(self, name: str) -> LegStats:
        """The leg called ``name`` ("whatsapp" or "pbx")."""
        if name == "whatsapp":
            return self.whatsapp
        if name == "pbx":
            return self.pbx
        raise KeyError(name)
