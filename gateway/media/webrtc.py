"""The WhatsApp leg in Meta's WebRTC media mode: ICE, then DTLS-SRTP, on the leg's one port.

Meta is ICE-lite and offers ``a=setup:actpass`` (docs/whatsapp-sip.md section 7):
the gateway is the CONTROLLING agent (it sends the checks, with USE-CANDIDATE) and
the DTLS client. A :class:`WebRtcLink` ties the two sans-IO cores together for one
call, on the bridge's WhatsApp socket:

* datagrams are told apart by their first octet (RFC 7983): STUN goes to the
  :class:`gateway.ice.agent.IceAgent`, DTLS to the :class:`gateway.media.dtls.DtlsEndpoint`,
  RTP and RTCP to the bridge's SRTP path once the handshake gave it keys;
* the pair ICE nominates becomes the leg's only source and destination (strict latching,
  :mod:`gateway.media.leg`); before that, STUN is taken from Meta's candidates only, DTLS
  from the address its checks succeeded with;
* the DTLS client starts once a pair is nominated; the server (when Meta's answer makes
  us passive) waits for the peer's ClientHello;
* a link that has not connected in ``timeout`` seconds, a certificate whose fingerprint
  is not the SDP's, or consent lost (RFC 7675) fails the link with a reason the call
  ends both legs with.

Nothing here reads the clock or owns a socket: the bridge passes ``now`` and sends
what :meth:`WebRtcLink.pop_datagrams` returns, and its 20 ms media clock drives the
retransmission timers through :meth:`WebRtcLink.tick`.
"""

from __future__ import annotations

from gateway.ice.agent import ConsentLost, IceAgent, IceFailed, Nominated
from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, SrtpKeys
from gateway.media.stats import WebRtcStats
from gateway.sdp.webrtc import WebRtcParams

__all__ = ["WebRtcLink", "demux"]

Address = tuple[str, int]

STUN, DTLS, RTP = 0, 1, 2


def demux(first: int) -> int:
    """RFC 7983 section 7: 0-3 STUN, 20-63 DTLS, 128-191 RTP/RTCP; anything else -1."""
    if first < 4:
        return STUN
    if 20 <= first <= 63:
        return DTLS
    if 128 <= first <= 191:
        return RTP
    return -1


class WebRtcLink:
    """ICE + DTLS-SRTP of one call's WhatsApp leg (see the module docstring)."""

    def __init__(
        self,
        params: WebRtcParams,
        *,
        local_ufrag: str,
        local_pwd: str,
        certificate: DtlsCertificate,
        family: int,
        now: float,
        timeout: float = 10.0,
    ) -> None:
        remote = [
            (c.address, c.port, c.priority)
            for c in params.candidates
            if c.component == 1 and c.transport.upper() == "UDP"
        ]
        self.params = params
        self.ice = IceAgent(
            local_ufrag=local_ufrag,
            local_pwd=local_pwd,
            remote_ufrag=params.ice_ufrag,
            remote_pwd=params.ice_pwd,
            remote_candidates=remote,
            local_family=family,
            controlling=params.ice_controlling,
            remote_lite=params.ice_lite,
        )
        self.dtls = DtlsEndpoint(
            certificate,
            client=params.dtls_client,
            remote_fingerprints=params.fingerprints,
            timeout=timeout,
        )
        # STUN is taken from the peer's candidates (and, for a full-ICE peer's checks,
        # from the addresses it checks from: the agent validates them by integrity).
        self.candidates = frozenset((c[0], c[1]) for c in remote)
        self.lite = params.ice_lite
        self.started = now
        self.deadline = now + timeout
        self.state = "checking"
        self.failure: str | None = None
        self.selected: Address | None = None
        self.keys: SrtpKeys | None = None
        self._ice_at: float | None = None
        self._out: list[tuple[bytes, Address]] = []
        self.ice.start(now)
        if not params.dtls_client:
            self.dtls.start(now)  # the server: ready for the peer's ClientHello
        self._collect()

    # -- packets -------------------------------------------------------------
    def receive(self, kind: int, data: bytes, addr: Address, now: float) -> bool:
        """A STUN or DTLS datagram from ``addr`` (the bridge has demultiplexed it); False
        when it was not the link's (the bridge counts it as foreign)."""
        if self.state in ("failed", "closed"):
            return False
        if kind == STUN:
            # An ICE-lite peer (Meta) never checks us and answers from its candidates: STUN
            # from anywhere else is refused before its integrity is computed. A full peer
            # may check from addresses not in its SDP (peer-reflexive): the agent decides.
            if self.lite and addr not in self.candidates:
                return False
            taken = self.ice.receive(data, addr, now)
        else:
            # DTLS only over the pair ICE nominated: anything else never reaches OpenSSL.
            taken = self.selected is not None and addr == self.selected
            if taken:
                self.dtls.receive(data, now)
        self._advance(now)
        return taken

    def tick(self, now: float) -> None:
        """The media clock: ICE and DTLS retransmissions, the overall deadline."""
        if self.state in ("failed", "closed"):
            return
        due = self.ice.next_timeout()
        if due is not None and now >= due:
            self.ice.handle_timeout(now)
        due = self.dtls.next_timeout()
        if due is not None and now >= due and self.dtls.state == "handshaking":
            self.dtls.handle_timeout(now)
        if self.state != "connected" and now >= self.deadline:
            self._fail("ICE checks unanswered" if self.selected is None else "DTLS timeout")
            return
        self._advance(now)

    def pop_datagrams(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        if self.state == "closed":
            return
        if self.state == "connected" and self.selected is not None:
            self.dtls.close()
            self._collect()
        self.ice.close()
        self.state = "closed"

    def stats(self) -> WebRtcStats:
        ice = self.ice
        return WebRtcStats(
            state=self.state,
            checks_sent=ice.checks_sent,
            checks_answered=ice.requests_answered,
            role_conflicts=ice.role_conflicts,
            controlling=ice.controlling,
            nominated=f"{self.selected[0]}:{self.selected[1]}" if self.selected else None,
            ice_ms=(
                round((self._ice_at - self.started) * 1000, 1) if self._ice_at is not None else None
            ),
            dtls_ms=(
                round(self.dtls.handshake_seconds * 1000, 1)
                if self.dtls.handshake_seconds is not None
                else None
            ),
            srtp_suite=self.keys.suite if self.keys else None,
            dtls_client=self.params.dtls_client,
            failure=self.failure,
        )

    def log_fields(self) -> dict[str, object]:
        """What the ``webrtc_connected``/``webrtc_failed`` log lines say (no secrets)."""
        stats = self.stats()
        return {
            "nominated": stats.nominated,
            "ice_ms": stats.ice_ms,
            "dtls_ms": stats.dtls_ms,
            "suite": stats.srtp_suite,
            "checks_sent": stats.checks_sent,
            "controlling": stats.controlling,
            "role_conflicts": stats.role_conflicts,
            "failure": stats.failure,
        }

    # -- state ---------------------------------------------------------------
    def _advance(self, now: float) -> None:
        for event in self.ice.pop_events():
            if isinstance(event, Nominated):
                first = self.selected is None
                self.selected = event.address
                if first:
                    self._ice_at = now
                    if self.state == "checking":
                        self.state = "connecting"
                    if self.params.dtls_client and self.dtls.state == "new":
                        self.dtls.start(now)
            elif isinstance(event, IceFailed):
                self._fail(f"ICE failed: {event.reason}")
                return
            elif isinstance(event, ConsentLost):
                self._fail("ICE consent lost")
                return
        dtls = self.dtls
        if dtls.state == "failed":
            self._fail(f"DTLS {dtls.failure or 'failed'}")
            return
        if dtls.state == "connected" and self.keys is None:
            self.keys = dtls.keys
            self.state = "connected"
        self._collect()

    def _collect(self) -> None:
        self._out.extend(self.ice.pop_datagrams())
        if self.selected is not None:
            self._out.extend((d, self.selected) for d in self.dtls.pop_datagrams())

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure = reason
        self._collect()
