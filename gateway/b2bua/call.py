"""What every B2BUA call does, whichever side called: the shared half of the state machine.

A call has a WhatsApp leg (a dialog with Meta over TLS) and a PBX leg (a plain
SIP dialog), and a media bridge between them. This base class holds what both
directions share: in-dialog requests from either side (BYE ends both legs;
PBX re-INVITE and UPDATE are answered here and never reach Meta, which
answers them 500 and drops the call), the no-media rule, hang-up, timers and
the call record. :mod:`inbound` and :mod:`outbound` add how the call is set up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.legs import (
    LegAddress,
    MediaBridge,
    SipPort,
    TimerHandle,
    dialog_target,
    routable,
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
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction

log = get_logger(__name__)

SDP = "application/sdp"
FORK_REASON = 'SIP;cause=200;text="answered elsewhere"'  # BYE to a fork that answered too


class State(enum.Enum):
    CALLING = "calling"  # INVITE sent on the far leg, no provisional yet
    EARLY = "early"  # the far leg sent a provisional
    CANCELLING = "cancelling"  # the caller cancelled; waiting for the far leg to confirm
    CONFIRMED = "confirmed"  # both legs answered
    ENDED = "ended"


SETUP_STATES = (State.CALLING, State.EARLY)


@dataclass(frozen=True)
class CallLegs:
    """How the gateway addresses itself and the PBX on one call."""

    number: str  # business number, +E.164
    user: str  # WhatsApp user: +E.164 or BSUID
    pbx_via: LegAddress
    wa_via: LegAddress
    media_address: str
    pbx_codecs: tuple[str, ...]
    dtmf_pt: int
    meta_conn_id: int | None = None  # Meta's own connection, reused for in-dialog requests
    meta_source: str | None = None  # Meta's address (through a proxy: from its Via)


class Call:
    direction = "inbound"

    def __init__(
        self,
        key: str,
        legs: CallLegs,
        sip: SipPort,
        bridge: MediaBridge,
        on_end: Callable[[Call, str], None],
    ) -> None:
        self.key = key
        self.legs = legs
        self.sip = sip
        self.bridge = bridge
        self._on_end = on_end
        self.state = State.CALLING
        self.wa_dialog: Dialog | None = None
        self.pbx_dialog: Dialog | None = None
        self.pbx_offer: SessionDescription | None = None  # our latest offer to the PBX
        self.pbx_last_answer: SessionDescription | None = None  # our latest SDP to the PBX
        self.pbx_media: MediaParams | None = None
        self.wa_media: MediaParams | None = None
        self.started = sip.now()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.ended_by = ""  # "whatsapp", "pbx" or "gateway"
        self.final_status: int | None = None
        self._timer: TimerHandle | None = None

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

    # -- events, routed by leg ("whatsapp" or "pbx") ------------------------
    def on_request(self, leg: str, req: Request, tx: ServerTransaction) -> None:
        if leg == "whatsapp":
            self.on_meta_request(req, tx)
        else:
            self.on_pbx_request(req, tx)

    def on_ack(self, leg: str, ack: Request) -> None:
        if leg == "pbx":
            self.on_pbx_ack(ack)

    def on_response(self, leg: str, resp: Response, tx: ClientTransaction, retrans: bool) -> None:
        """A response to a request this call sent on ``leg``."""

    def on_client_timeout(self, leg: str, tx: ClientTransaction) -> None:
        """A request this call sent on ``leg`` timed out (Timer B/F)."""

    def on_client_failure(self, leg: str, tx: ClientTransaction) -> None:
        """A request this call sent on ``leg`` could not be delivered."""

    def on_cancel(self) -> None:
        """The caller cancelled the initial INVITE (the transaction layer answered 200)."""

    def on_ack_timeout(self) -> None:
        """Our 2xx to the caller's INVITE was never ACKed."""

    def on_caller_unreachable(self) -> None:
        """A response to the caller's INVITE could not be delivered (RFC 3261 17.2.4): its
        transaction is gone, so no answer can reach the caller any more."""
        if self.state in SETUP_STATES:
            log.warning("caller_unreachable", call=self.key, direction=self.direction)
            self._cancel_callee()
            self._end("caller_unreachable", "gateway")
        elif self.state is State.CONFIRMED:
            self.on_ack_timeout()  # our 2xx will never be ACKed

    # -- in-dialog requests from Meta ---------------------------------------
    def on_meta_request(self, req: Request, tx: ServerTransaction) -> None:
        if self.wa_dialog is not None and not self.wa_dialog.receive_request(req):
            self.sip.reply(tx, 500, headers=[("Retry-After", "1")])
            return
        method = req.method
        if method == "BYE" and self.state in SETUP_STATES:
            self.sip.reply(tx, 200)
            self._meta_gone_early(req)
        elif method == "BYE":
            self.sip.reply(tx, 200)
            self._meta_bye(req)
            self._bye_pbx("WhatsApp user hung up", _reason_from(req))
            self._end("meta_bye", "whatsapp")
        elif method == "INVITE" and self.state in SETUP_STATES:
            self._reinvite_too_early(tx)
        elif method == "INVITE":
            self._meta_refresh(req, tx)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self.sip.reply(tx, 200)
        else:
            self.sip.reply(tx, 405, headers=[("Allow", ALLOW)])

    def _meta_gone_early(self, req: Request) -> None:
        """A BYE from Meta in an early dialog (RFC 3261 section 15)."""
        self.hangup("WhatsApp user hung up")

    def _meta_bye(self, req: Request) -> None:
        """Hook: Meta's BYE (outbound calls keep x-wa-meta-call-duration)."""

    def _meta_refresh(self, req: Request, tx: ServerTransaction) -> None:
        """Meta never re-INVITEs; if it does, refuse politely."""
        self.sip.reply(tx, 488)

    # -- in-dialog requests from the PBX ------------------------------------
    def on_pbx_request(self, req: Request, tx: ServerTransaction) -> None:
        dialog = self.pbx_dialog
        if dialog is not None and not dialog.receive_request(req):
            self.sip.reply(tx, 500, headers=[("Retry-After", "1")])
            return
        method = req.method
        if method == "BYE" and self.state in SETUP_STATES:
            self.sip.reply(tx, 200)
            self._pbx_gone_early(req)
        elif method == "BYE":
            self.sip.reply(tx, 200)
            self._bye_meta("PBX hung up", _reason_from(req))
            self._end("pbx_bye", "pbx")
        elif method == "INVITE" and self.state in SETUP_STATES:
            self._reinvite_too_early(tx)
        elif method in ("INVITE", "UPDATE"):
            self._answer_pbx_reoffer(req, tx)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self.sip.reply(tx, 200)
        else:
            self.sip.reply(tx, 405, headers=[("Allow", ALLOW + ", UPDATE")])

    def _reinvite_too_early(self, tx: ServerTransaction) -> None:
        """An INVITE in the dialog before the first one has its final response (RFC 3261
        14.2: 500 with Retry-After)."""
        self.sip.reply(tx, 500, headers=[("Retry-After", "1")])

    def _pbx_gone_early(self, req: Request) -> None:
        """A BYE from the PBX in an early dialog (RFC 3261 section 15)."""
        raise NotImplementedError

    def _pbx_contact(self) -> list[tuple[str, str]]:
        dialog = self.pbx_dialog
        return [("Contact", f"<{dialog.local_contact}>")] if dialog and dialog.local_contact else []

    def _pbx_offer(self) -> SessionDescription:
        legs = self.legs
        return make_pbx_offer(
            local_address=legs.media_address,
            local_port=self.bridge.pbx_port,
            codecs=legs.pbx_codecs,
            dtmf_pt=legs.dtmf_pt,
        )

    def _answer_pbx_reoffer(self, req: Request, tx: ServerTransaction) -> None:
        """Hold, unhold, codec change, session refresh: answered here, never sent to Meta."""
        contact = self._pbx_contact()
        if not req.body and req.method == "UPDATE":
            # No offer (a session-timer refresh): a 2xx to UPDATE cannot carry one (RFC 3311).
            self.sip.reply(tx, 200, headers=contact)
            return
        if not req.body:
            # Offer-less re-INVITE: we offer in the 2xx, the PBX answers in the ACK.
            previous = self.pbx_last_answer
            # sendrecv whatever our last answer said: only the PBX holds (RFC 6337 5.3).
            offer = _sendrecv(reoffer(previous)) if previous is not None else self._pbx_offer()
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
                local_address=self.legs.media_address,
                local_port=self.bridge.pbx_port,
                codecs=self.legs.pbx_codecs,
                dtmf_pt=self.legs.dtmf_pt,
                current=self.pbx_media,
                previous=self.pbx_last_answer,
            )
        except (SdpError, NegotiationError) as exc:
            log.warning("pbx_reoffer_rejected", call=self.key, error=str(exc))
            headers = []
            if isinstance(exc, NegotiationError):
                headers.append(exc.warning_header(self.legs.pbx_via.host))
            self.sip.reply(tx, 488, headers=headers)
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
        self._end(f"no_media_{leg}", "gateway")
        self.sip.flush()

    # -- ending -------------------------------------------------------------
    def _bye_pbx(self, why: str, reason: str | None = None) -> None:
        dialog = self.pbx_dialog
        if dialog is None or not self._routable(dialog, "pbx"):
            self.pbx_dialog = None
            return
        headers = [("Reason", reason or f'SIP;cause=200;text="{why}"')]
        bye = dialog.create_request("BYE", headers=headers)
        via = self.legs.pbx_via
        self.sip.send_request(bye, via, dialog_target(dialog, via.transport))
        self.pbx_dialog = None

    def _bye_meta(self, why: str, reason: str | None = None) -> None:
        dialog = self.wa_dialog
        if dialog is None or not self._routable(dialog, "whatsapp"):
            self.wa_dialog = None
            return
        headers = [("Reason", reason or f'SIP;cause=200;text="{why}"')]
        bye = dialog.create_request("BYE", headers=headers)
        # Meta's Contact carries ;ob (RFC 5626): reuse its connection while it is open,
        # else connect to the first route (wa.meta.vc:5061).
        target = dialog_target(dialog, self.legs.wa_via.transport, self.legs.meta_conn_id)
        self.sip.send_request(bye, self.legs.wa_via, target)
        self.wa_dialog = None

    def _routable(self, dialog: Dialog, leg: str) -> bool:
        """Whether a BYE can be routed in ``dialog``; a target refresh may have made it
        unroutable (a Contact that is not a SIP URI): the call must end all the same."""
        if routable(dialog):
            return True
        log.warning("bye_unroutable", call=self.key, leg=leg)
        return False

    def _end(self, reason: str, by: str = "gateway") -> None:
        if self.state is State.ENDED:
            return
        self._disarm()
        self.state = State.ENDED
        self.end_reason = reason
        self.ended_by = by
        self.ended_at = self.sip.now()
        self.bridge.close()
        self._on_end(self, reason)

    def hangup(self, why: str) -> None:
        """End the call from our side (shutdown, drain timeout, admin)."""
        if self.state is State.CONFIRMED:
            self._bye_meta(why)
            self._bye_pbx(why)
        elif self.state in SETUP_STATES:
            self._fail_caller(503, why)
            self._cancel_callee()
        self._end(why, "gateway")

    def _reject_caller(
        self,
        tx: ServerTransaction,
        to_tag: str,
        status: int,
        why: str,
        headers: list[tuple[str, str]],
        phrase: str | None = None,
    ) -> None:
        """Answer the caller's INVITE (``tx``) with a failure while ringing (``phrase``:
        the status line's reason phrase, default the status's own); end the call."""
        if self.state in SETUP_STATES:
            self.sip.reply(tx, status, to_tag=to_tag, reason=phrase, headers=headers)
            self.final_status = status
            log.info("call_failed", call=self.key, status=status, why=why)
        self._end(f"failed_{status}", self.ended_by or "gateway")

    def _fail_caller(self, status: int, why: str) -> None:
        """Answer the caller's INVITE with a failure and end the call."""
        raise NotImplementedError

    def _cancel_callee(self) -> None:
        """CANCEL the INVITE we sent on the far leg."""
        raise NotImplementedError

    def _ack(self, dialog: Dialog | None, resp: Response, via: LegAddress) -> None:
        """ACK a 2xx in ``dialog`` (RFC 3261 13.2.2.4), routed by its route set."""
        if dialog is None:
            return
        ack = dialog.create_ack(resp.cseq.seq)
        self.sip.send_ack(ack, via, dialog_target(dialog, via.transport))

    # -- record -------------------------------------------------------------
    def record(self) -> dict[str, object]:
        """The call record: who, when, how it ended, and media statistics (no secrets)."""
        answered = self.answered_at
        setup = (answered - self.started) if answered is not None else None
        end = self.ended_at if self.ended_at is not None else self.sip.now()
        duration = end - answered if answered is not None else 0.0
        return {
            "call": self.key,
            "direction": self.direction,
            "business_number": self.legs.number,
            "user": self.legs.user,
            "meta_source": self.legs.meta_source,
            "status": self.final_status,
            "end_reason": self.end_reason,
            "ended_by": self.ended_by,
            "setup_seconds": round(setup, 3) if setup is not None else None,
            "duration_seconds": round(duration, 3),
            "wa_media": describe(self.wa_media) if self.wa_media else None,
            "pbx_media": describe(self.pbx_media) if self.pbx_media else None,
            "media": self.bridge.stats(),
        }


def _sendrecv(sdp: SessionDescription) -> SessionDescription:
    """``sdp`` with every direction attribute made sendrecv (in place)."""
    for section in (sdp, *sdp.media):
        section.attributes = [
            ("sendrecv", None) if name.lower() in DIRECTIONS else (name, value)
            for name, value in section.attributes
        ]
    return sdp


def reason_header(cause: int, why: str) -> tuple[str, str]:
    """``Reason: SIP;cause=N;text="..."`` (RFC 3326), the text safe inside the quotes."""
    text = why.replace("\\", "/").replace('"', "'")
    return ("Reason", f'SIP;cause={cause};text="{text}"')


def _reason_from(req: Request) -> str | None:
    """Carry the far side's Reason header (e.g. Q.850 cause) to the other leg."""
    return req.headers.get("Reason")
