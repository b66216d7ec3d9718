"""A call from a WhatsApp user to the business: Meta's INVITE in, a plain SIP call to the PBX out.

State machine of one B2BUA call. It never touches sockets: SIP goes through
:class:`SipPort`, media through a :class:`MediaBridge`, time through a
:class:`Scheduler`. Policy lives here and in :mod:`gateway.b2bua.mapping`:
which headers cross, how PBX failures map, and that PBX re-INVITEs and UPDATEs
are answered locally and never reach Meta (Meta answers them 500 and drops).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from gateway.b2bua import mapping
from gateway.b2bua.legs import (
    LegAddress,
    MediaBridge,
    SipPort,
    TimerHandle,
    dialog_target,
)
from gateway.ops.logging import get_logger
from gateway.sdp.negotiate import (
    MediaParams,
    NegotiationError,
    accept_pbx_answer,
    answer_pbx_offer,
    describe,
    make_pbx_offer,
    reoffer,
)
from gateway.sdp.session import DIRECTIONS, SdpError, SessionDescription, parse_sdp
from gateway.sip.dialog import Dialog
from gateway.sip.ids import new_call_id, new_tag
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction, Target

log = get_logger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
SDP = "application/sdp"


class State(enum.Enum):
    CALLING = "calling"  # PBX INVITE sent, no provisional yet
    EARLY = "early"  # PBX sent a provisional
    CANCELLING = "cancelling"  # Meta cancelled; waiting for the PBX to confirm
    CONFIRMED = "confirmed"  # both legs answered
    ENDED = "ended"


@dataclass
class InboundSetup:
    """Everything decided before the PBX leg starts (routing, SDP answer toward Meta)."""

    key: str  # the call's key in logs and records (Meta's wacid)
    number: str  # business number, +E.164
    user: str  # WhatsApp user as Meta sent it (+E.164 or BSUID)
    display: str | None
    pbx_uri: str  # Request-URI toward the PBX
    pbx_to: str  # To toward the PBX
    pbx_headers: list[tuple[str, str]]
    wa_answer: SessionDescription  # our SDP answer to Meta's offer
    wa_media: MediaParams
    wa_contact: str  # Contact we put in the 2xx to Meta
    pbx_via: LegAddress
    pbx_target: Target
    pbx_codecs: tuple[str, ...]
    dtmf_pt: int
    media_address: str
    invite_timeout: float
    meta_source: Target  # where Meta's INVITE came from (connection for in-dialog reuse)
    extra: dict[str, str] = field(default_factory=dict)


class InboundCall:
    def __init__(
        self,
        setup: InboundSetup,
        wa_tx: ServerTransaction,
        sip: SipPort,
        bridge: MediaBridge,
        on_end: Callable[[InboundCall, str], None],
    ) -> None:
        self.s = setup
        self.key = setup.key
        self.sip = sip
        self.bridge = bridge
        self._on_end = on_end
        self.state = State.CALLING
        self.wa_tx = wa_tx
        self.wa_request = wa_tx.request
        self.wa_tag = new_tag()
        self.wa_dialog: Dialog | None = None
        self.pbx_tx: ClientTransaction | None = None
        self.pbx_request: Request | None = None
        self.pbx_dialog: Dialog | None = None
        self.pbx_offer: SessionDescription | None = None
        self.pbx_last_answer: SessionDescription | None = None  # our latest SDP to the PBX
        self.pbx_media: MediaParams | None = None
        self.started = sip.now()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.final_status: int | None = None
        self._timer: TimerHandle | None = None
        self._relayed: set[int] = set()

    # -- start --------------------------------------------------------------
    def start(self) -> ClientTransaction:
        s = self.s
        offer = make_pbx_offer(
            local_address=s.media_address,
            local_port=self.bridge.pbx_port,
            codecs=s.pbx_codecs,
            dtmf_pt=s.dtmf_pt,
        )
        self.pbx_offer = offer
        self.pbx_last_answer = offer
        req = Request(method="INVITE", uri=s.pbx_uri, body=offer.serialize())
        h = req.headers
        h.add("Max-Forwards", "70")
        display = f'"{_quote(s.display)}" ' if s.display else ""
        via = s.pbx_via
        h.add("From", f"{display}<sip:{uri_user(s.user)}@{_hostport(via)}>;tag={new_tag()}")
        h.add("To", s.pbx_to)
        h.add("Call-ID", new_call_id(via.host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", f"<sip:gw@{_hostport(via)};transport={via.transport}>")
        h.add("Allow", ALLOW)
        for name, value in s.pbx_headers:
            h.add(name, value)
        h.add("Content-Type", SDP)
        self.pbx_request = req
        self.pbx_tx = self.sip.send_request(req, via, s.pbx_target)
        self._arm(s.invite_timeout, self._on_invite_timeout)
        log.info("pbx_invite", call=self.key, uri=s.pbx_uri, wa_media=describe(s.wa_media))
        return self.pbx_tx

    # -- timers -------------------------------------------------------------
    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.sip.scheduler.call_later(delay, self._timed(callback))

    def _timed(self, callback: Callable[[], None]) -> Callable[[], None]:
        def fire() -> None:
            self._timer = None
            callback()
            self.sip.flush()

        return fire

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_invite_timeout(self) -> None:
        if self.state is State.CALLING:
            log.warning("pbx_no_provisional", call=self.key, after=self.s.invite_timeout)
            self._fail_toward_meta(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX did not answer")
            if self.pbx_tx is not None:
                self.sip.cancel(self.pbx_tx)

    # -- Meta side ----------------------------------------------------------
    def on_meta_cancel(self) -> None:
        if self.state in (State.CALLING, State.EARLY):
            self.state = State.CANCELLING
            self.sip.reply(self.wa_tx, 487, to_tag=self.wa_tag)
            self.final_status = 487
            if self.pbx_tx is not None:
                self.sip.cancel(self.pbx_tx)
            # The PBX's 487 ends the call; if it never comes, end it anyway.
            self._arm(32.0, lambda: self._end("cancelled"))

    def on_meta_request(self, req: Request, tx: ServerTransaction) -> None:
        if self.wa_dialog is not None and not self.wa_dialog.receive_request(req):
            self.sip.reply(tx, 500, headers=[("Retry-After", "1")])
            return
        method = req.method
        if method == "BYE" and self.state in (State.CALLING, State.EARLY):
            # BYE in the early dialog (RFC 3261 section 15): like a CANCEL, the INVITE gets 487.
            self.sip.reply(tx, 200)
            self.on_meta_cancel()
        elif method == "BYE":
            self.sip.reply(tx, 200)
            self._bye_pbx("Meta hung up")
            self._end("meta_bye")
        elif method == "INVITE":
            # A session refresh from Meta: answer with the session we have.
            resp = self.sip.response(tx, 200, headers=self._contact_headers())
            resp.body = self.s.wa_answer.serialize()
            resp.headers.add("Content-Type", SDP)
            self.sip.send_response(resp)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self.sip.reply(tx, 200)
        else:
            self.sip.reply(tx, 405, headers=[("Allow", ALLOW)])

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
        if self.pbx_dialog is None:
            self.pbx_dialog = Dialog.uac(self.pbx_request or Request(), resp)
        if retransmission or self.state is State.CONFIRMED:
            self._ack_pbx(resp)
            return
        self._ack_pbx(resp)
        if self.state is State.CANCELLING or self.state is State.ENDED:
            # The PBX answered after Meta cancelled: hang it up (section 9.1 race).
            self._bye_pbx("cancelled")
            self._end("cancelled")
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
            self._end("cancelled")
            return
        if self.state in (State.CALLING, State.EARLY):
            status = mapping.pbx_failure_to_meta(resp.status)
            self._fail_toward_meta(status, f"PBX answered {resp.status}", pbx_status=resp.status)

    def on_pbx_timeout(self, tx: ClientTransaction) -> None:
        if tx is self.pbx_tx and self.state in (State.CALLING, State.EARLY):
            self._fail_toward_meta(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX timeout")
        elif tx is self.pbx_tx and self.state is State.CANCELLING:
            self._end("cancelled")

    def on_pbx_transport_failure(self, tx: ClientTransaction) -> None:
        if tx is self.pbx_tx and self.state in (State.CALLING, State.EARLY):
            self._fail_toward_meta(mapping.PBX_TRANSPORT_FAILURE, "PBX unreachable")

    def on_pbx_request(self, req: Request, tx: ServerTransaction) -> None:
        dialog = self.pbx_dialog
        if dialog is not None and not dialog.receive_request(req):
            self.sip.reply(tx, 500, headers=[("Retry-After", "1")])
            return
        method = req.method
        if method == "BYE":
            self.sip.reply(tx, 200)
            self._bye_meta("PBX hung up")
            self._end("pbx_bye")
        elif method in ("INVITE", "UPDATE"):
            self._answer_pbx_reoffer(req, tx)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self.sip.reply(tx, 200)
        else:
            self.sip.reply(tx, 405, headers=[("Allow", ALLOW + ", UPDATE")])

    def _answer_pbx_reoffer(self, req: Request, tx: ServerTransaction) -> None:
        """Hold, unhold, codec change, session refresh: answered here, never sent to Meta."""
        contact = [("Contact", f"<{self.pbx_dialog.local_contact}>")] if self.pbx_dialog else []
        if not req.body and req.method == "UPDATE":
            # No offer (a session-timer refresh): a 2xx to UPDATE cannot carry one (RFC 3311).
            self.sip.reply(tx, 200, headers=contact)
            return
        if not req.body:
            # Offer-less re-INVITE: we offer in the 2xx, the PBX answers in the ACK.
            previous = self.pbx_last_answer
            # sendrecv whatever our last answer said: only the PBX holds (RFC 6337 5.3).
            if previous is not None:
                offer = _sendrecv(reoffer(previous))
            else:
                offer = make_pbx_offer(
                    local_address=self.s.media_address,
                    local_port=self.bridge.pbx_port,
                    codecs=self.s.pbx_codecs,
                    dtmf_pt=self.s.dtmf_pt,
                )
            self.pbx_offer = offer
            self.pbx_last_answer = offer
            resp = self.sip.response(tx, 200, headers=contact)
            resp.body = offer.serialize()
            resp.headers.add("Content-Type", SDP)
            self.sip.send_response(resp)
            return
        try:
            answer, media = answer_pbx_offer(
                parse_sdp(req.body),
                local_address=self.s.media_address,
                local_port=self.bridge.pbx_port,
                codecs=self.s.pbx_codecs,
                dtmf_pt=self.s.dtmf_pt,
                current=self.pbx_media,
                previous=self.pbx_last_answer,
            )
        except (SdpError, NegotiationError) as exc:
            log.warning("pbx_reoffer_rejected", call=self.key, error=str(exc))
            self.sip.reply(tx, 488)
            return
        self.pbx_last_answer = answer
        self.pbx_media = media
        self.bridge.set_pbx(media)
        resp = self.sip.response(tx, 200, headers=contact)
        resp.body = answer.serialize()
        resp.headers.add("Content-Type", SDP)
        self.sip.send_response(resp)
        log.info("pbx_reoffer_answered", call=self.key, method=req.method, media=describe(media))

    def on_pbx_ack(self, ack: Request) -> None:
        """ACK from the PBX; after an offer-less re-INVITE it carries the answer."""
        if ack.body and self.pbx_offer is not None:
            try:
                media = accept_pbx_answer(self.pbx_offer, parse_sdp(ack.body))
            except (SdpError, NegotiationError) as exc:
                log.warning("pbx_ack_sdp_unusable", call=self.key, error=str(exc))
                return
            self.pbx_media = media
            self.bridge.set_pbx(media)

    # -- media --------------------------------------------------------------
    def on_no_media(self, leg: str) -> None:
        if self.state is not State.CONFIRMED:
            return
        log.warning("no_media", call=self.key, leg=leg)
        reason = f'SIP;cause=408;text="no media from {leg}"'
        self._bye_meta("no media", reason)
        self._bye_pbx("no media", reason)
        self._end(f"no_media_{leg}")
        self.sip.flush()

    # -- helpers ------------------------------------------------------------
    def _contact_headers(self) -> list[tuple[str, str]]:
        return [("Contact", f"<{self.s.wa_contact}>")]

    def _fail_toward_meta(self, status: int, why: str, *, pbx_status: int | None = None) -> None:
        if self.state in (State.CALLING, State.EARLY):
            headers: list[tuple[str, str]] = []
            if pbx_status is not None:
                headers.append(("Reason", f'SIP;cause={pbx_status};text="{why}"'))
            self.sip.reply(self.wa_tx, status, to_tag=self.wa_tag, headers=headers)
            self.final_status = status
            log.info("call_failed", call=self.key, status=status, why=why)
        self._end(f"failed_{status}")

    def _ack_pbx(self, resp: Response) -> None:
        dialog = self.pbx_dialog
        if dialog is None:
            return
        ack = dialog.create_ack(resp.cseq.seq)
        self.sip.send_ack(ack, self.s.pbx_via, dialog_target(dialog, self.s.pbx_via.transport))

    def _bye_pbx(self, why: str, reason: str | None = None) -> None:
        dialog = self.pbx_dialog
        if dialog is None:
            return
        headers = [("Reason", reason or f'SIP;cause=200;text="{why}"')]
        bye = dialog.create_request("BYE", headers=headers)
        self.sip.send_request(bye, self.s.pbx_via, dialog_target(dialog, self.s.pbx_via.transport))
        self.pbx_dialog = None

    def _bye_meta(self, why: str, reason: str | None = None) -> None:
        dialog = self.wa_dialog
        if dialog is None:
            return
        headers = [("Reason", reason or f'SIP;cause=200;text="{why}"')]
        bye = dialog.create_request("BYE", headers=headers)
        # Meta's Contact carries ;ob (RFC 5626): reuse its connection while it is open,
        # else connect to the first route (wa.meta.vc:5061).
        target = dialog_target(dialog, "tls", self.s.meta_source.conn_id)
        via = LegAddress("tls", *_host_port(self.s.wa_contact))
        self.sip.send_request(bye, via, target)
        self.wa_dialog = None

    def _end(self, reason: str) -> None:
        if self.state is State.ENDED:
            return
        self._disarm()
        self.state = State.ENDED
        self.end_reason = reason
        self.ended_at = self.sip.now()
        self.bridge.close()
        self._on_end(self, reason)

    def record(self) -> dict[str, object]:
        """The call record: who, when, how it ended, and media statistics (no secrets)."""
        setup = (self.answered_at - self.started) if self.answered_at is not None else None
        duration = (
            (self.ended_at or self.sip.now()) - self.answered_at
            if self.answered_at is not None
            else 0.0
        )
        return {
            "call": self.key,
            "direction": "inbound",
            "business_number": self.s.number,
            "user": self.s.user,
            "meta_call_id": self.wa_request.call_id,
            "pbx_call_id": self.pbx_request.call_id if self.pbx_request else None,
            "status": self.final_status,
            "end_reason": self.end_reason,
            "setup_seconds": round(setup, 3) if setup is not None else None,
            "duration_seconds": round(duration, 3),
            "wa_media": describe(self.s.wa_media),
            "pbx_media": describe(self.pbx_media) if self.pbx_media else None,
            "media": self.bridge.stats(),
        }

    def hangup(self, why: str) -> None:
        """End the call from our side (shutdown, admin)."""
        if self.state is State.CONFIRMED:
            self._bye_meta(why)
            self._bye_pbx(why)
        elif self.state in (State.CALLING, State.EARLY):
            self._fail_toward_meta(503, why)
            if self.pbx_tx is not None:
                self.sip.cancel(self.pbx_tx)
        self._end(why)


def _sendrecv(sdp: SessionDescription) -> SessionDescription:
    """``sdp`` with every direction attribute made sendrecv (in place)."""
    for section in (sdp, *sdp.media):
        section.attributes = [
            ("sendrecv", None) if name.lower() in DIRECTIONS else (name, value)
            for name, value in section.attributes
        ]
    return sdp


def uri_user(user: str) -> str:
    """``user`` (as decoded from Meta's From) escaped for the user part of a SIP URI:
    RFC 3261 section 25.1 ``user``, with ';' escaped too (it would start user parameters)."""
    return quote(user, safe="-_.!~*'()&=+$,?/")


def _hostport(address: LegAddress) -> str:
    """``host:port`` for a URI, an IPv6 host in brackets (RFC 3261 section 25.1)."""
    host = address.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{address.port}"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _host_port(contact: str) -> tuple[str, int]:
    """Host and port of a ``sip:user@host:port;...`` contact URI."""
    rest = contact.split("@", 1)[-1].split(";", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return rest, 5061
    return host, int(port)
