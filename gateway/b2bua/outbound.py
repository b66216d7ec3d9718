"""A call from the business to a WhatsApp user: the PBX's INVITE in, an INVITE to Meta out.

whatsapp-sip.md section 4: Request-URI ``sip:+E164@wa.meta.vc;transport=tls``
(never an IP), From the business number at the configured SIP hostname, no
session timers, an SDES offer with Opus (and G.711 when configured). Meta
challenges with 407: we answer once with the number's SIP password (username
without '+'); a second challenge is a failure, not a loop. Meta's failures
reach the PBX mapped (:data:`mapping.META_TO_PBX`) with a Reason header and
Meta's Warning text. The gateway sends the first SRTP packet as soon as Meta's
answer gives the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.b2bua import mapping
from gateway.b2bua.call import FORK_REASON, SDP, SETUP_STATES, Call, CallLegs, State, reason_header
from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.legs import MediaBridge, SipPort, hang_up_answer, routable
from gateway.ops.logging import get_logger
from gateway.sdp.negotiate import MediaParams, NegotiationError, accept_whatsapp_answer, describe
from gateway.sdp.session import SdpError, SessionDescription, parse_sdp
from gateway.sip.auth import (
    AuthParseError,
    UnsupportedChallenge,
    answer_challenge,
    parse_challenge,
    select_challenge,
)
from gateway.sip.dialog import Dialog
from gateway.sip.ids import new_call_id, new_tag
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction, Target

log = get_logger(__name__)


@dataclass
class OutboundSetup:
    meta_uri: str  # sip:+E164@wa.meta.vc;transport=tls
    meta_to: str
    meta_from: str  # <sip:+BUSINESS@hostname> (no tag)
    wa_contact: str  # our Contact toward Meta
    meta_target: Target  # where the INVITE goes (whatsapp.meta_proxy)
    wa_offer: SessionDescription
    wa_keys: dict[int, bytes] = field(repr=False)  # our SDES keys by crypto tag: secret
    pbx_answer: SessionDescription  # our SDP answer to the PBX's offer
    pbx_media: MediaParams
    pbx_contact: str  # our Contact toward the PBX
    password: Callable[[], str | None]  # the number's Meta SIP password, read when needed
    invite_timeout: float
    ring_timeout: float = 120.0


class OutboundCall(Call):
    direction = "outbound"

    def __init__(
        self,
        key: str,
        legs: CallLegs,
        setup: OutboundSetup,
        pbx_tx: ServerTransaction,
        sip: SipPort,
        bridge: MediaBridge,
        on_end: Callable[[Call, str], None],
    ) -> None:
        super().__init__(key, legs, sip, bridge, on_end)
        self.s = setup
        self.pbx_tx = pbx_tx
        self.pbx_request = pbx_tx.request
        self.pbx_tag = new_tag()
        self.pbx_media = setup.pbx_media
        self.pbx_last_answer = setup.pbx_answer
        self.meta_tx: ClientTransaction | None = None
        self.meta_request: Request | None = None
        self.meta_call_id = new_call_id(legs.wa_via.host)
        self.meta_from_tag = new_tag()
        self.challenges = 0
        self.meta_failure: dict[str, object] | None = None
        self.meta_call_duration: str | None = None
        self._relayed: set[int] = set()

    # -- start --------------------------------------------------------------
    def start(self) -> ClientTransaction:
        self.bridge.set_pbx(self.s.pbx_media)  # early PBX audio is buffered, not lost
        return self._send_invite(1, ())

    def _send_invite(self, cseq: int, auth: tuple[tuple[str, str], ...]) -> ClientTransaction:
        s = self.s
        req = Request(method="INVITE", uri=s.meta_uri, body=s.wa_offer.serialize())
        h = req.headers
        h.add("Max-Forwards", "70")
        h.add("From", f"{s.meta_from};tag={self.meta_from_tag}")
        h.add("To", s.meta_to)
        h.add("Call-ID", self.meta_call_id)
        h.add("CSeq", f"{cseq} INVITE")
        h.add("Contact", f"<{s.wa_contact}>")
        h.add("Allow", ALLOW)  # no UPDATE, no session timers toward Meta (section 5)
        for name, value in auth:
            h.add(name, value)
        h.add("Content-Type", SDP)
        self.meta_request = req
        self.meta_tx = self.sip.send_request(req, self.legs.wa_via, s.meta_target)
        self._arm(s.invite_timeout, self._on_invite_timeout)
        return self.meta_tx

    def _on_ring_timeout(self) -> None:
        if self.state is State.EARLY:
            log.info("meta_ring_timeout", call=self.key, after=self.s.ring_timeout)
            self._fail_toward_pbx(480, "no answer from the WhatsApp user")
            self._cancel_callee()

    def _on_invite_timeout(self) -> None:
        if self.state is State.CALLING:
            log.warning("meta_no_response", call=self.key, after=self.s.invite_timeout)
            self._fail_toward_pbx(mapping.META_UNREACHABLE, "no answer from WhatsApp")
            if self.meta_tx is not None:
                self.sip.cancel(self.meta_tx)

    # -- responses from Meta ------------------------------------------------
    def on_response(self, leg: str, resp: Response, tx: ClientTransaction, retrans: bool) -> None:
        if leg != "whatsapp" or tx is not self.meta_tx:
            return  # responses to our BYEs
        status = resp.status
        if status < 200:
            self._on_meta_provisional(resp)
        elif status < 300:
            self._on_meta_answer(resp, retrans)
        elif status in (401, 407) and self.state in SETUP_STATES:
            self._on_meta_challenge(resp)
        else:
            self._on_meta_failure(resp)

    def _on_meta_provisional(self, resp: Response) -> None:
        if self.state is State.CALLING:
            self.state = State.EARLY
            # Meta is there; now only the user may take long. Bound the ringing too.
            self._arm(self.s.ring_timeout, self._on_ring_timeout)
        if self.state is not State.EARLY or resp.status == 100:
            return
        relay = 183 if resp.status == 183 else 180  # the WhatsApp user's phone is ringing
        if relay not in self._relayed:
            self._relayed.add(relay)
            self.sip.reply(self.pbx_tx, relay, to_tag=self.pbx_tag, headers=self._pbx_contact_h())

    def _on_meta_challenge(self, resp: Response) -> None:
        self._disarm()
        header = "Proxy-Authenticate" if resp.status == 407 else "WWW-Authenticate"
        try:
            challenge = select_challenge([parse_challenge(v) for v in resp.headers.lines(header)])
        except (AuthParseError, UnsupportedChallenge, ValueError) as exc:
            log.warning("meta_challenge_unusable", call=self.key, error=str(exc))
            self._fail_toward_pbx(mapping.META_AUTH_REFUSED, "unusable challenge from WhatsApp")
            return
        # One answer per call; a stale nonce (RFC 7616 3.3) earns one more try.
        if self.challenges >= (2 if challenge.stale else 1):
            self._note_meta_failure(resp, "bad_digest")
            self._fail_toward_pbx(mapping.META_AUTH_REFUSED, "WhatsApp refused our credentials")
            return
        password = self.s.password()
        if password is None:
            log.error("sip_password_missing", number=self.legs.number)
            self._fail_toward_pbx(mapping.META_AUTH_REFUSED, "SIP password missing")
            return
        self.challenges += 1
        creds = answer_challenge(
            challenge, "INVITE", self.s.meta_uri, self.legs.number.lstrip("+"), password
        )
        auth_header = "Proxy-Authorization" if resp.status == 407 else "Authorization"
        cseq = resp.cseq.seq + 1  # the same dialog attempt, CSeq + 1 (RFC 3261 22.2)
        # A new transaction with nothing heard on it yet (Meta may send 100 before its
        # 407): invite_timeout guards it again.
        self.state = State.CALLING
        self._send_invite(cseq, ((auth_header, creds.to_header()),))

    def _on_meta_answer(self, resp: Response, retrans: bool) -> None:
        if self.wa_dialog is not None and (resp.to.tag or "") != self.wa_dialog.remote_tag:
            self._hang_up_fork(resp, retrans)
            return
        if self.wa_dialog is None:
            # Meta's Record-Route (reversed) is the route set, its Contact the target.
            dialog = Dialog.uac(self.meta_request or Request(), resp)
            if not routable(dialog):  # neither an ACK nor a BYE can reach Meta
                if not retrans and self.state in SETUP_STATES:
                    log.warning("meta_answer_unroutable", call=self.key)
                    self._fail_toward_pbx(502, "WhatsApp answer has no SIP Contact")
                return
            self.wa_dialog = dialog
        self._ack_meta(resp)
        if retrans or self.state is State.CONFIRMED:
            return
        if self.state in (State.CANCELLING, State.ENDED):
            self._bye_meta("cancelled")  # answered after the PBX cancelled (9.1 race)
            self._end("cancelled", "pbx")
            return
        self._disarm()
        try:
            media = accept_whatsapp_answer(self.s.wa_offer, parse_sdp(resp.body), self.s.wa_keys)
        except (SdpError, NegotiationError) as exc:
            log.warning("meta_sdp_unusable", call=self.key, error=str(exc))
            self._bye_meta("unusable SDP")
            self._fail_toward_pbx(488, "WhatsApp SDP unusable")
            return
        self.wa_media = media
        # Meta expects the business side to send first: keys are known, send now.
        self.bridge.set_whatsapp(media)
        self._answer_pbx()
        log.info("call_answered", call=self.key, wa_media=describe(media))

    def _hang_up_fork(self, resp: Response, retrans: bool) -> None:
        """Another fork answered as well (RFC 3261 13.2.2.4): ACK its 2xx, then BYE it."""
        request, via = self.meta_request or Request(), self.legs.wa_via
        hang_up_answer(self.sip, request, resp, via, retrans, FORK_REASON)
        if not retrans:
            log.info("meta_fork_hung_up", call=self.key)

    def _answer_pbx(self) -> None:
        resp = self.sip.response(
            self.pbx_tx,
            200,
            to_tag=self.pbx_tag,
            record_route=True,
            headers=[*self._pbx_contact_h(), ("Allow", ALLOW + ", UPDATE")],
        )
        resp.body = self.s.pbx_answer.serialize()
        resp.headers.add("Content-Type", SDP)
        self.pbx_dialog = Dialog.uas(self.pbx_request, self.pbx_tag, self.s.pbx_contact)
        self.sip.send_response(resp)
        self.state = State.CONFIRMED
        self.final_status = 200
        self.answered_at = self.sip.now()

    def _on_meta_failure(self, resp: Response) -> None:
        self._disarm()
        if self.state is State.CANCELLING:
            self._end("cancelled", "pbx")
            return
        if self.state not in SETUP_STATES:
            return
        warning = resp.headers.get("Warning")
        self._note_meta_failure(resp, mapping.meta_warning_reason(warning))
        status = mapping.meta_failure_to_pbx(resp.status)
        text = mapping.warning_text(warning) or resp.reason
        self.ended_by = "whatsapp"
        self._fail_toward_pbx(status, text, meta_status=resp.status, warning=warning)

    def _note_meta_failure(self, resp: Response, reason: str) -> None:
        self.meta_failure = {
            "code": resp.status,
            "reason": reason,
            "warning": mapping.warning_text(resp.headers.get("Warning")),
        }

    def on_client_timeout(self, leg: str, tx: ClientTransaction) -> None:
        if tx is self.meta_tx and self.state in SETUP_STATES:
            self._fail_toward_pbx(mapping.META_UNREACHABLE, "WhatsApp timeout")
        elif tx is self.meta_tx and self.state is State.CANCELLING:
            self._end("cancelled", "pbx")

    def on_client_failure(self, leg: str, tx: ClientTransaction) -> None:
        if tx is self.meta_tx and self.state in SETUP_STATES:
            self._fail_toward_pbx(mapping.META_UNREACHABLE, "WhatsApp unreachable (TLS)")

    # -- PBX side -----------------------------------------------------------
    def on_cancel(self) -> None:
        """CANCEL from the PBX before the answer: 487 to it, CANCEL toward Meta."""
        if self.state in SETUP_STATES:
            self.state = State.CANCELLING
            self.sip.reply(self.pbx_tx, 487, to_tag=self.pbx_tag)
            self.final_status = 487
            self.ended_by = "pbx"
            if self.meta_tx is not None:
                self.sip.cancel(self.meta_tx)
            self._arm(32.0, lambda: self._end("cancelled", "pbx"))

    def on_ack_timeout(self) -> None:
        """Our 2xx to the PBX was never ACKed: end both legs."""
        log.error("pbx_ack_missing", call=self.key)
        self._bye_meta("no ACK from the PBX")
        self._bye_pbx("no ACK")
        self._end("pbx_no_ack")

    def _pbx_gone_early(self, req: Request) -> None:
        # The caller may BYE an early dialog (RFC 3261 section 15): like a CANCEL,
        # its INVITE gets 487 (15.1.2) and the INVITE to Meta is cancelled.
        self.on_cancel()

    def _meta_bye(self, req: Request) -> None:
        self.meta_call_duration = req.headers.get("x-wa-meta-call-duration")

    def _meta_gone_early(self, req: Request) -> None:
        self._fail_toward_pbx(480, "WhatsApp ended the call")
        self._cancel_callee()

    # -- helpers ------------------------------------------------------------
    def _pbx_contact_h(self) -> list[tuple[str, str]]:
        return [("Contact", f"<{self.s.pbx_contact}>")]

    def _fail_toward_pbx(
        self,
        status: int,
        why: str,
        *,
        meta_status: int | None = None,
        warning: str | None = None,
    ) -> None:
        cause = meta_status if meta_status is not None else status
        headers = [reason_header(cause, why)]
        if warning:
            headers.append(("Warning", warning))
        # Meta's reason also as the reason phrase: a PBX that keeps nothing else of a
        # failure (FreeSWITCH 1.10: ${sip_invite_failure_phrase}) still sees it.
        phrase = mapping.reason_phrase(mapping.warning_text(warning))
        self._reject_caller(self.pbx_tx, self.pbx_tag, status, why, headers, phrase)

    def _ack_meta(self, resp: Response) -> None:
        self._ack(self.wa_dialog, resp, self.legs.wa_via)

    def _fail_caller(self, status: int, why: str) -> None:
        self._fail_toward_pbx(status, why)

    def _cancel_callee(self) -> None:
        if self.meta_tx is not None:
            self.sip.cancel(self.meta_tx)

    def record(self) -> dict[str, object]:
        out = super().record()
        out["meta_call_id"] = self.meta_call_id
        out["pbx_call_id"] = self.pbx_request.call_id
        out["meta_failure"] = self.meta_failure
        out["meta_call_duration"] = self.meta_call_duration
        return out
