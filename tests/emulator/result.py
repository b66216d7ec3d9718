"""What one emulated call observed: :class:`CallResult`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SipRecord:
    """One SIP message as sent (``->``) or received (``<-``) by the emulator."""

    direction: str  # "->" sent by the emulator, "<-" received from the gateway
    at: float  # loop.time()
    summary: str  # "INVITE", "407 (INVITE)"
    text: str  # the whole message


@dataclass
class DtmfEvent:
    """One RFC 4733 event received."""

    digit: str
    event: int
    timestamp: int
    duration: int = 0  # final duration field (8000 Hz units)
    ended: bool = False
    marker: bool = False
    packets: int = 0


@dataclass
class CallResult:
    """Everything the emulator saw on one call; tests assert ``violations == []``.

    ``status`` is the final response to the (last) INVITE, None when there was
    none. ``failure`` says why the call did not go as scripted (None when it
    did); Meta-rule breaches by the gateway are in ``violations``.
    """

    role: str  # "caller" (user-initiated, emulator = UAC) or "server" (emulator = UAS)
    call_id: str = ""
    wacid: str = ""
    status: int | None = None
    reason: str = ""
    failure: str | None = None
    messages: list[SipRecord] = field(default_factory=list)
    challenges: list[str] = field(default_factory=list)  # challenge header values
    invite: str = ""  # the (last) INVITE text
    offer_sdp: str = ""
    answer_sdp: str = ""
    suite: str | None = None
    codec: str | None = None  # "opus/48000/2", "pcmu/8000", ...
    payload_type: int | None = None
    te_payload_type: int | None = None
    connected_at: float | None = None  # loop.time() of the 200 OK
    ended_at: float | None = None
    first_packet_delay: float | None = None  # seconds from the 200 OK to the first SRTP packet
    received_pcm: bytes = b""  # decoded audio, 16-bit signed little-endian mono
    sample_rate: int = 48000
    dtmf_received: str = ""
    dtmf_events: list[DtmfEvent] = field(default_factory=list)
    dtmf_sent: str = ""
    packets_sent: int = 0
    packets_received: int = 0  # valid SRTP (RTP) packets
    rtcp_sent: int = 0
    rtcp_received: int = 0
    srtp_auth_failures: int = 0
    srtcp_auth_failures: int = 0
    srtp_replay_failures: int = 0
    packets_lost: int = 0  # by sequence-number gaps
    max_media_gap: float = 0.0  # longest silence between received packets after the first
    remote_ssrc: int | None = None
    bye_from: str | None = None  # "emulator" | "gateway"
    bye_headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> value
    bye_reason: str | None = None
    tls_version: str | None = None
    # WebRTC media mode (docs/whatsapp-sip.md 7; tests/emulator/webrtc.py). ``failure``
    # says why WebRTC media failed (ICE, DTLS, fingerprint, unencrypted media).
    media_mode: str = "sdes"  # "webrtc": ICE-lite + DTLS-SRTP
    ice_checks: int = 0  # STUN Binding requests received from the gateway
    ice_rejected: list[str] = field(default_factory=list)  # why each rejected check was
    use_candidate_seen: bool = False  # a valid check with USE-CANDIDATE was answered
    ice_nominated: tuple[str, int] | None = None  # the gateway's address of the nominated pair
    ice_last_consent_at: float | None = None  # loop.time() of the last valid check after it
    dtls_handshake_ms: float | None = None  # first ClientHello -> handshake done
    dtls_profile: str | None = None  # "SRTP_AES128_CM_SHA1_80" | "SRTP_AEAD_AES_128_GCM"
    fingerprint_ok: bool | None = None  # gateway's certificate vs its SDP a=fingerprint
    violations: list[str] = field(default_factory=list)

    @property
    def ladder(self) -> list[str]:
        """``["-> INVITE", "<- 407 (INVITE)", "-> ACK", ...]``."""
        return [f"{m.direction} {m.summary}" for m in self.messages]

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.failure is None and not self.violations

    def duration(self) -> float:
        if self.connected_at is None or self.ended_at is None:
            return 0.0
        return self.ended_at - self.connected_at

    def violation(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    def describe(self) -> str:
        """A printable summary for assertion messages."""
        lines = [
            f"{self.role} call {self.call_id}: status={self.status} failure={self.failure}",
            *(f"  {x}" for x in self.ladder),
            f"  codec={self.codec} suite={self.suite} first_packet_delay={self.first_packet_delay}",
            f"  rtp sent={self.packets_sent} received={self.packets_received} "
            f"lost={self.packets_lost} auth_failures={self.srtp_auth_failures} "
            f"dtmf={self.dtmf_received!r}",
            *(
                [
                    f"  webrtc: checks={self.ice_checks} rejected={len(self.ice_rejected)} "
                    f"use_candidate={self.use_candidate_seen} nominated={self.ice_nominated} "
                    f"dtls={self.dtls_profile} {self.dtls_handshake_ms} ms "
                    f"fingerprint_ok={self.fingerprint_ok}"
                ]
                if self.media_mode == "webrtc"
                else []
            ),
            *(f"  VIOLATION: {v}" for v in self.violations),
        ]
        return "\n".join(lines)
