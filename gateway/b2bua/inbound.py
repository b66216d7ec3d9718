"""A call from a WhatsApp user to the business: Meta's INVITE in, a plain SIP call to the PBX out.

It never touches sockets: SIP goes through :class:`SipPort`, media through a
:class:`MediaBridge`, time through a :class:`Scheduler`. Policy lives here and
in :mod:`gateway.b2bua.mapping`: which headers cross, how PBX failures map.
What both directions share (in-dialog requests, hang-up, records) is in
:mod:`gateway.b2bua.call`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua import mapping
from gateway.b2bua.call import FORK_REASON, SDP, SETUP_STATES, Call, CallLegs, State, reason_header
from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.port import MediaBridge, SipPort, hang_up_answer, routable, uri_user
from gateway.logging import get_logger
from gateway.sdp.negotiate import MediaParams, NegotiationError, accept_pbx_answer, describe
from gateway.sdp.session import SdpError, SessionDescription, parse_sdp
from gateway.sip.dialog import Dialog
from gateway.sip.ids import new_call_id, new_tag
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction, Target

log = get_logger(__name__)


@dataclass
class InboundSetup:
    """Everything decided before the PBX leg starts (routing, SDP answer toward Meta)."""

    display: str | None  # the WhatsApp user's display name as Meta sent it
    pbx_uri: str  # Request-URI toward the PBX
    pbx_to: str  # To toward the PBX
    pbx_headers: list[tuple[str, str]]
    wa_answer: SessionDescription  # our SDP answer to Meta's offer
    wa_media: MediaParams
    wa_contact: str  # Contact we put in the 2xx to Meta
    pbx_target: Target
    invite_timeout: float


class InboundCall(Call):
    direction = "inbound"

    def __init__(
        self,
        key: str,
        legs: CallLegs,
        setup: InboundSetup,
        wa_tx: ServerTransaction,
        sip: SipPort,
        bridge: MediaBridge,
        on_end: Callable[[Call, str], None],
    ) -> None:
        super().__init__(key, legs, sip, bridge, on_end)
        self.s = setup
        self.wa_tx = wa_tx
        self.wa_request = wa_tx.request
        self.wa_tag = new_tag()
        self.wa_media = setup.wa_media
        self.pbx_tx: ClientTransaction | None = None
        self.pbx_request: Request | None = None
        self._relayed: set[int] = set()

    # -- start --------------------------------------------------------------
    def start(self) -> ClientTransaction:
        s, legs = self.s, self.legs
        offer = self._pbx_offer()
        self.pbx_offer = offer
        self.pbx_last_answer = offer
        req = Request(method="INVITE", uri=s.pbx_uri, body=offer.serialize())
        h = req.headers
        h.add("Max-Forwards", "70")
        display = f'"{_quote(s.display)}" ' if s.display else ""
        via = legs.pbx_via
        h.add("From", f"{display}<sip:{uri_user(legs.user)}@{via.hostport}>;tag={new_tag()}")
        h.add("To", s.pbx_to)
        h.add("Call-ID", new_call_id(via.host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", f"<sip:gw@{via.hostport};transport={via.transport}>")
        h.add("Allow", ALLOW)
        for name, value in s.pbx_headers:
            h.add(name, value)
        h.add("Content-Type", SDP)
        self.pbx_request = req
        self.pbx_tx = self.sip.send_request(req, via, s.pbx_target)
        self._arm(s.invite_timeout, self._on_invite_timeout)
        log.info("pbx_invite", call=self.key, uri=s.pbx_uri, wa_media=describe(s.wa_media))
        return self.pbx_tx

    def _on_invite_timeout(self) -> None:
        if self.state is State.CALLING:
            log.warning("pbx_no_provisional", call=self.key, after=self.s.invite_timeout)
            self._fail_toward_meta(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX did not answer")
            if self.pbx_tx is not None:
                self.sip.cancel(self.pbx_tx)

    # -- Meta side ----------------------------------------------------------
    def on_meta_cancel(self) -> None:
        if self.state in SETUP_STATES:
            self.state = State.CANCELLING
            self.sip.reply(self.wa_tx, 487, to_tag=self.wa_tag)
            self.final_status = 487
            self.ended_by = "whatsapp"
            if self.pbx_tx is not None:
                self.sip.cancel(self.pbx_tx)
            # The PBX's 487 ends the call; if it never comes, end it anyway.
            self._arm(32.0, lambda: self._end("cancelled", "whatsapp"))

    def _meta_gone_early(self, req: Request) -> None:
        # BYE in the early dialog (RFC 3261 section 15): like a CANCEL, the INVITE gets 487.
        self.on_meta_cancel()

    def _pbx_gone_early(self, req: Request) -> None:
        # The callee must not BYE an early dialog (RFC 3261 section 15); if the PBX
        # does, Meta's INVITE still needs its final response.
        self.ended_by = "pbx"
        self._fail_toward_meta(480, "PBX ended the call")
        self._cancel_callee()

    def _meta_refresh(self, req: Request, tx: ServerTransaction) -> None:
        # A session refresh from Meta: answer with the session we have.
        resp = self.sip.response(tx, 200, headers=self._contact_headers())
        resp.body = self.s.wa_answer.serialize()
        resp.headers.add("Content-Type", SDP)
        self.sip.send_response(resp)

    # -- events routed by the call table --------------------------------------
    def on_response(self, leg: str, resp: Response, tx: ClientTransaction, retrans: bool) -> None:
        if leg == "pbx":
            self.on_pbx_response(resp, tx, retrans)

    def on_client_timeout(self, leg: str, tx: ClientTransaction) -> None:
        if leg == "pbx":
            self.on_pbx_timeout(tx)

    def on_client_failure(self, leg: str, tx: ClientTransaction) -> None:
        if leg == "pbx":
            self.on_pbx_transport_failure(tx)

    def on_cancel(self) -> None:
        self.on_meta_cancel()

    def on_ack_timeout(self) -> None:
        self.on_meta_ack_timeout()

    def on_meta_ack_timeout(self) -> None:
        """Our 2xx to Meta was never ACKed (section 10 item 2): end both legs."""
        log.error("meta_ack_missing", call=self.key)
        self._bye_meta("no ACK")
        self._bye_pbx("no ACK from WhatsApp")
        self._end("meta_no_ack")

    # -- PBX side -----------------------------------------------------------
    def on_pbx_response(self, resp: Response, tx: ClientTransaction, retransmission: bool) -> None:
        if tx is not self.pbx_tx:
            return  # responses to our BYEs: nothing to do
        status = resp.status
        if status < 200:
            self._on_pbx_provisional(resp)
        elif status < 300:
            self._on_pbx_answer(resp, retransmission)
        else:
            self._on_pbx_failure(resp)

    def _on_pbx_provisional(self, resp: Response) -> None:
        if self.state is State.CALLING:
            self.state = State.EARLY
            self._disarm()
        if self.state is not State.EARLY or resp.status == 100:
            return
        relay = 183 if resp.status == 183 else 180
        if relay not in self._relayed:
            self._relayed.add(relay)
            # It has our To tag, so it creates an early dialog at Meta (RFC 3261 12.1.1).
            resp = self.sip.response(
                self.wa_tx,
                relay,
                to_tag=self.wa_tag,
                record_route=True,
                headers=self._contact_headers(),
            )
            self.sip.send_response(resp)

    def _on_pbx_answer(self, resp: Response, retransmission: bool) -> None:
        if self.pbx_dialog is not None and (resp.to.tag or "") != self.pbx_dialog.remote_tag:
            self._hang_up_fork(resp, retransmission)
            return
        if self.pbx_dialog is None:
            dialog = Dialog.uac(self.pbx_request or Request(), resp)
            if not routable(dialog):  # neither an ACK nor a BYE can reach the PBX
                if not retransmission and self.state in SETUP_STATES:
                    log.warning("pbx_answer_unroutable", call=self.key)
                    status = mapping.pbx_failure_to_meta(502)
                    self._fail_toward_meta(status, "PBX answer has no SIP Contact")
                return
            self.pbx_dialog = dialog
        self._ack_pbx(resp)
        if retransmission or self.state is State.CONFIRMED:
            return
        if self.state in (State.CANCELLING, State.ENDED):
            # The PBX answered after Meta cancelled: hang it up (section 9.1 race).
            self._bye_pbx("cancelled")
            self._end("cancelled", "whatsapp")
            return
        self._disarm()
        try:
            assert self.pbx_offer is not None
            self.pbx_media = accept_pbx_answer(self.pbx_offer, parse_sdp(resp.body))
        except (SdpError, NegotiationError) as exc:
            log.warning("pbx_sdp_unusable", call=self.key, error=str(exc))
            self._bye_pbx("unusable SDP")
            self._fail_toward_meta(488, "PBX SDP unusable")
            return
        self.bridge.set_pbx(self.pbx_media)
        self._answer_meta()

    def _hang_up_fork(self, resp: Response, retransmission: bool) -> None:
        """Another fork answered as well (RFC 3261 13.2.2.4): ACK its 2xx, then BYE it."""
        request, via = self.pbx_request or Request(), self.legs.pbx_via
        hang_up_answer(self.sip, request, resp, via, retransmission, FORK_REASON)
        if not retransmission:
            log.info("pbx_fork_hung_up", call=self.key)

    def _answer_meta(self) -> None:
        resp = self.sip.response(
            self.wa_tx,
            200,
            to_tag=self.wa_tag,
            record_route=True,  # Meta's Record-Route, unchanged and in order (section 3)
            headers=[*self._contact_headers(), ("Allow", ALLOW)],
        )
        resp.body = self.s.wa_answer.serialize()
        resp.headers.add("Content-Type", SDP)
        self.wa_dialog = Dialog.uas(self.wa_request, self.wa_tag, self.s.wa_contact)
        self.sip.send_response(resp)
        self.state = State.CONFIRMED
        self.final_status = 200
        self.answered_at = self.sip.now()
        # Keys are known and the answer is on its way: the first SRTP packet goes now.
        self.bridge.set_whatsapp(self.s.wa_media)
        if self.pbx_media is not None:
            log.info("call_answered", call=self.key, pbx_media=describe(self.pbx_media))

    def _on_pbx_failure(self, resp: Response) -> None:
        self._disarm()
        if self.state is State.CANCELLING:
            self._end("cancelled", "whatsapp")
            return
        if self.state in SETUP_STATES:
            status = mapping.pbx_failure_to_meta(resp.status)
            self.ended_by = "pbx"
            self._fail_toward_meta(status, f"PBX answered {resp.status}", pbx_status=resp.status)

    def on_pbx_timeout(self, tx: ClientTransaction) -> None:
        if tx is self.pbx_tx and self.state in SETUP_STATES:
            self._fail_toward_meta(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX timeout")
        elif tx is self.pbx_tx and self.state is State.CANCELLING:
            self._end("cancelled", "whatsapp")

    def on_pbx_transport_failure(self, tx: ClientTransaction) -> None:
        if tx is self.pbx_tx and self.state in SETUP_STATES:
            self._fail_toward_meta(mapping.PBX_TRANSPORT_FAILURE, "PBX unreachable")

    # -- helpers ------------------------------------------------------------
    def _contact_headers(self) -> list[tuple[str, str]]:
        return [("Contact", f"<{self.s.wa_contact}>")]

    def _fail_toward_meta(self, status: int, why: str, *, pbx_status: int | None = None) -> None:
        headers = [reason_header(pbx_status, why)] if pbx_status is not None else []
        self._reject_caller(self.wa_tx, self.wa_tag, status, why, headers)

    def _ack_pbx(self, resp: Response) -> None:
        self._ack(self.pbx_dialog, resp, self.legs.pbx_via)

    def _fail_caller(self, status: int, why: str) -> None:
        self._fail_toward_meta(status, why)

    def _cancel_callee(self) -> None:
        if self.pbx_tx is not None:
            self.sip.cancel(self.pbx_tx)

    def record(self) -> dict[str, object]:
        out = super().record()
        out["meta_call_id"] = self.wa_request.call_id
        out["pbx_call_id"] = self.pbx_request.call_id if self.pbx_request else None
        return out


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
