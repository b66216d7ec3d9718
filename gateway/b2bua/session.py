"""The invite session of one leg: offer/answer (RFC 3264) as this gateway does it.

Each leg of a call has one session object, the only place its SDP lives:

- :class:`PbxSession` negotiates with the PBX for the whole call: our offer in
  the INVITE (a call to the PBX) or our answer to its offer (a call from it),
  then every re-INVITE and UPDATE (hold, unhold, codec or address change,
  session refresh) is answered here (RFC 3264 section 8, RFC 3311) and never
  reaches Meta, which answers a re-INVITE 500 and drops the call.
- :class:`WhatsAppSession` holds the one SRTP session with Meta: our answer to
  Meta's offer, or our offer with its SDES keys (RFC 4568) and the answer Meta
  gave. Meta never re-offers; a re-INVITE from it gets the session we have
  (a refresh) when we were the answerer, 488 otherwise.

Sessions never send anything: they return what the leg should answer
(:class:`Reoffer`) and the media parameters the bridge should use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sdp.negotiate import (
    MediaParams,
    NegotiationError,
    accept_pbx_answer,
    accept_whatsapp_answer,
    answer_pbx_offer,
    make_pbx_offer,
    reoffer,
)
from gateway.sdp.session import DIRECTIONS, SdpError, SessionDescription, parse_sdp
from gateway.sip.message import Request

SDP = "application/sdp"


@dataclass(frozen=True)
class Reoffer:
    """How to answer an in-dialog INVITE or UPDATE: ``status``, the SDP of a 2xx (None:
    no body), extra headers (a Warning with a 488), and the media that changed."""

    status: int
    sdp: SessionDescription | None = None
    headers: tuple[tuple[str, str], ...] = ()
    media: MediaParams | None = None
    error: str = ""  # why an offer was refused (logged by the leg)


@dataclass
class PbxSession:
    """Offer/answer with the PBX (plain RTP/AVP, G.711, RFC 4733 telephone-event)."""

    media_address: str
    port: int  # our RTP port toward the PBX
    codecs: tuple[str, ...]
    dtmf_pt: int
    warning_host: str  # the host named in a Warning (RFC 3261 20.43)
    offer: SessionDescription | None = None  # our latest offer
    last: SessionDescription | None = None  # our latest SDP (offer or answer)
    media: MediaParams | None = None  # what the PBX sends and expects

    def make_offer(self) -> SessionDescription:
        """Our offer: in the first INVITE, or in a 2xx to an offer-less re-INVITE."""
        offer = make_pbx_offer(
            local_address=self.media_address,
            local_port=self.port,
            codecs=self.codecs,
            dtmf_pt=self.dtmf_pt,
        )
        self.offer = self.last = offer
        return offer

    def answer(self, body: bytes) -> SessionDescription:
        """Our answer to the PBX's offer ``body`` (raises SdpError or NegotiationError)."""
        answer, media = answer_pbx_offer(
            parse_sdp(body),
            local_address=self.media_address,
            local_port=self.port,
            codecs=self.codecs,
            dtmf_pt=self.dtmf_pt,
            current=self.media,
            previous=self.last,
        )
        self.last, self.media = answer, media
        return answer

    def accept_answer(self, body: bytes) -> MediaParams:
        """The PBX's answer to our offer (raises SdpError or NegotiationError)."""
        assert self.offer is not None
        self.media = accept_pbx_answer(self.offer, parse_sdp(body))
        return self.media

    def reoffer(self, req: Request) -> Reoffer:
        """A re-INVITE or UPDATE from the PBX, answered here (never sent to Meta)."""
        if not req.body and req.method == "UPDATE":
            # No offer (a session-timer refresh): a 2xx to UPDATE cannot carry one (RFC 3311).
            return Reoffer(200)
        if not req.body:
            # Offer-less re-INVITE (RFC 3264 section 8, RFC 6337 5.3): we offer in the 2xx,
            # sendrecv whatever our last SDP said (only the PBX holds); the ACK answers.
            previous = self.last
            offer = _sendrecv(reoffer(previous)) if previous is not None else self.make_offer()
            self.offer = self.last = offer
            return Reoffer(200, offer)
        try:
            answer = self.answer(req.body)
        except (SdpError, NegotiationError) as exc:
            headers = []
            if isinstance(exc, NegotiationError):
                headers.append(exc.warning_header(self.warning_host))
            return Reoffer(488, headers=tuple(headers), error=str(exc))
        return Reoffer(200, answer, media=self.media)

    def on_ack(self, body: bytes) -> MediaParams | None:
        """An ACK from the PBX; after an offer-less re-INVITE it carries the answer
        (raises SdpError or NegotiationError when it cannot be used)."""
        if not body or self.offer is None:
            return None
        self.media = accept_pbx_answer(self.offer, parse_sdp(body))
        return self.media


@dataclass
class WhatsAppSession:
    """The SRTP session with Meta (SDES, Opus; G.711 when configured)."""

    answer: SessionDescription | None = None  # our answer to Meta's offer (Meta called)
    offer: SessionDescription | None = None  # our offer (we called Meta)
    keys: dict[int, bytes] = field(default_factory=dict, repr=False)  # our SDES keys: secret
    media: MediaParams | None = None

    def accept_answer(self, body: bytes) -> MediaParams:
        """Meta's answer to our offer (raises SdpError or NegotiationError)."""
        assert self.offer is not None
        self.media = accept_whatsapp_answer(self.offer, parse_sdp(body), self.keys)
        return self.media

    def reoffer(self, req: Request) -> Reoffer:
        """Meta never re-offers. A re-INVITE is answered with the session we have (a
        refresh) when we answered Meta's offer; otherwise refused politely."""
        if req.method == "INVITE" and self.answer is not None:
            return Reoffer(200, self.answer)
        return Reoffer(488)

    def on_ack(self, body: bytes) -> MediaParams | None:
        return None


Session = PbxSession | WhatsAppSession


def _sendrecv(sdp: SessionDescription) -> SessionDescription:
    """``sdp`` with every direction attribute made sendrecv (in place)."""
    for section in (sdp, *sdp.media):
        section.attributes = [
            ("sendrecv", None) if name.lower() in DIRECTIONS else (name, value)
            for name, value in section.attributes
        ]
    return sdp
