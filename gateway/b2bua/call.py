"""A call: two legs and the media bridge between them, whichever side called.

The caller's leg is a :class:`~gateway.b2bua.leg.UasLeg`, the callee's a
:class:`~gateway.b2bua.leg.UacLeg`; a call from WhatsApp has Meta as the
caller and the PBX as the callee, a call to WhatsApp the other way round, and
this one machine runs both. It links the legs: it relays ringing, turns the
callee's answer into the caller's 2xx, maps the callee's failures for the
caller (each leg's :class:`~gateway.b2bua.peer.Peer` says how), carries a
CANCEL or a BYE from one leg to the other, and owns the one timer of the call
and its record. In-dialog requests that are not BYE are answered by the leg
they arrive on and never cross (Meta answers a re-INVITE 500 and drops the
call).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua import mapping
from gateway.b2bua.leg import Leg, UacLeg, UasLeg
from gateway.b2bua.peer import CalleeFailures, Failure
from gateway.b2bua.port import MediaBridge, SipPort, TimerHandle
from gateway.logging import get_logger
from gateway.sdp.negotiate import MediaParams, NegotiationError, describe
from gateway.sdp.session import SdpError
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ClientTransaction, ServerTransaction

log = get_logger(__name__)

CANCEL_WAIT = 32.0  # the callee's 487 after our CANCEL: at most 64*T1 (RFC 3261 9.1)


class State(enum.Enum):
    CALLING = "calling"  # INVITE sent on the callee's leg, no provisional yet
    EARLY = "early"  # the callee sent a provisional
    CANCELLING = "cancelling"  # the caller cancelled; waiting for the callee to confirm
    CONFIRMED = "confirmed"  # both legs answered
    ENDED = "ended"


SETUP_STATES = (State.CALLING, State.EARLY)


@dataclass(frozen=True)
class CallInfo:
    """Who a call is between (for the record)."""

    number: str  # business number, +E.164
    user: str  # WhatsApp user: +E.164 or BSUID
    meta_source: str | None = None  # Meta's address (through a proxy: from its Via)


class Call:
    """Links the caller's leg, the callee's leg and the bridge (see the module docstring)."""

    def __init__(
        self,
        key: str,
        info: CallInfo,
        caller: UasLeg,
        callee: UacLeg,
        sip: SipPort,
        bridge: MediaBridge,
        on_end: Callable[[Call, str], None],
    ) -> None:
        self.key = key
        self.info = info
        self.caller = caller
        self.callee = callee
        self.sip = sip
        self.bridge = bridge
        self._on_end = on_end
        self.direction = "inbound" if caller.peer.name == "whatsapp" else "outbound"
        self.state = State.CALLING
        self.started = sip.now()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.ended_by = ""  # "whatsapp", "pbx" or "gateway"
        self.final_status: int | None = None
        self.meta_failure: dict[str, object] | None = None  # Meta's refusal of our INVITE
        self.meta_call_duration: str | None = None  # from Meta's BYE
        self._timer: TimerHandle | None = None

    @property
    def whatsapp(self) -> Leg:
        """The leg facing Meta."""
        return self.caller if self.caller.peer.name == "whatsapp" else self.callee

    @property
    def pbx(self) -> Leg:
        """The leg facing the PBX."""
        return self.callee if self.caller.peer.name == "whatsapp" else self.caller

    @property
    def _failures(self) -> CalleeFailures:
        return self.callee.peer.failures

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

    # -- start --------------------------------------------------------------
    def start(self) -> ClientTransaction:
        """Place the callee's INVITE; the PBX's media starts at once when it called
        (its early audio is buffered, not lost)."""
        caller, callee = self.caller, self.callee
        if caller.peer.media_at_admission and caller.media is not None:
            self._set_media(caller, caller.media)
        self._send_invite()
        field = "wa_media" if caller.peer.name == "whatsapp" else "pbx_media"
        log.info(
            f"{callee.peer.prefix}_invite",
            call=self.key,
            uri=callee.spec.uri,
            **{field: describe(caller.media) if caller.media else None},
        )
        assert callee.tx is not None
        return callee.tx

    def _send_invite(self, cseq: int = 1, auth: tuple[tuple[str, str], ...] = ()) -> None:
        self.callee.send_invite(cseq, auth)
        self._arm(self.callee.peer.invite_timeout, self._on_invite_timeout)

    def _on_invite_timeout(self) -> None:
        if self.state is State.CALLING:
            failure = self._failures.no_provisional
            peer = self.callee.peer
            log.warning(peer.no_response_event, call=self.key, after=peer.invite_timeout)
            self._fail_caller(failure.status, failure.why)
            self.callee.cancel()

    def _on_ring_timeout(self) -> None:
        if self.state is State.EARLY:
            log.info(
                f"{self.callee.peer.prefix}_ring_timeout",
                call=self.key,
                after=self.callee.peer.ring_timeout,
            )
            self._fail(self._failures.no_answer)
            self.callee.cancel()

    # -- events, routed by the call table -------------------------------------
    def on_request(self, leg: Leg, req: Request, tx: ServerTransaction) -> None:
        """An in-dialog request on ``leg``; only a BYE crosses to the other leg."""
        if not leg.accepts(req, tx):
            return
        if req.method != "BYE":
            media = leg.answer_in_dialog(req, tx, setup=self.state in SETUP_STATES)
            if media is not None:
                self._set_media(leg, media)
            return
        self.sip.reply(tx, 200)
        if self.state in SETUP_STATES and leg is self.caller:
            # The caller may BYE an early dialog (RFC 3261 section 15): like a CANCEL, its
            # INVITE gets 487 (15.1.2) and ours is cancelled.
            self.on_cancel()
        elif self.state in SETUP_STATES:
            # The callee must not BYE an early dialog (section 15); if it does, the
            # caller's INVITE still needs its final response.
            self.ended_by = leg.peer.name
            self._fail(self._failures.ended_early)
            self.callee.cancel()
        else:
            if leg.peer.name == "whatsapp":
                self.meta_call_duration = req.headers.get("x-wa-meta-call-duration")
            self._other(leg).bye(leg.peer.hung_up, req.headers.get("Reason"))
            self._end(f"{leg.peer.prefix}_bye", leg.peer.name)

    def on_ack(self, leg: Leg, ack: Request) -> None:
        media = leg.on_ack(ack)
        if media is not None:
            self._set_media(leg, media)

    def on_response(self, leg: Leg, resp: Response, tx: ClientTransaction, retrans: bool) -> None:
        """A response to a request this call sent on ``leg``: only the callee's INVITE
        matters (responses to our BYEs need nothing)."""
        if leg is not self.callee or tx is not self.callee.tx:
            return
        status = resp.status
        if status < 200:
            self._on_provisional(resp)
        elif status < 300:
            self._on_answer(resp, retrans)
        elif status in (401, 407) and self.state in SETUP_STATES and self.callee.spec.password:
            self._on_challenge(resp)
        else:
            self._on_failure(resp)

    def on_client_timeout(self, leg: Leg, tx: ClientTransaction) -> None:
        """Timer B on the callee's INVITE (RFC 3261 17.1.1.2)."""
        if leg is not self.callee or tx is not self.callee.tx:
            return
        if self.state in SETUP_STATES:
            self._fail(self._failures.timeout)
        elif self.state is State.CANCELLING:
            self._end("cancelled", self.caller.peer.name)

    def on_client_failure(self, leg: Leg, tx: ClientTransaction) -> None:
        """The callee's INVITE could not be delivered (RFC 3261 17.1.4)."""
        if leg is self.callee and tx is self.callee.tx and self.state in SETUP_STATES:
            self._fail(self._failures.unreachable)

    def on_cancel(self) -> None:
        """The caller cancelled its INVITE (the transaction layer answered the CANCEL 200):
        487 to the INVITE (RFC 3261 9.2), CANCEL toward the callee; the callee's 487 ends
        the call, and if it never comes the call ends all the same."""
        if self.state in SETUP_STATES:
            self.state = State.CANCELLING
            self.caller.reject(487, [])
            self.final_status = 487
            self.ended_by = self.caller.peer.name
            self.callee.cancel()
            self._arm(CANCEL_WAIT, lambda: self._end("cancelled", self.caller.peer.name))

    def on_ack_timeout(self) -> None:
        """Our 2xx to the caller was never ACKed (RFC 3261 13.3.1.4): end both legs."""
        caller = self.caller.peer
        log.error(f"{caller.prefix}_ack_missing", call=self.key)
        why = {self.caller: "no ACK", self.callee: f"no ACK from {caller.named}"}
        self._bye_both(why[self.whatsapp], why[self.pbx])
        self._end(f"{caller.prefix}_no_ack")

    def on_caller_unreachable(self) -> None:
        """A response to the caller's INVITE could not be delivered (RFC 3261 17.2.4): its
        transaction is gone, so no answer can reach the caller any more."""
        if self.state in SETUP_STATES:
            log.warning("caller_unreachable", call=self.key, direction=self.direction)
            self.callee.cancel()
            self._end("caller_unreachable", "gateway")
        elif self.state is State.CONFIRMED:
            self.on_ack_timeout()  # our 2xx will never be ACKed

    def on_no_media(self, leg: str, why: str = "") -> None:
        """The bridge gave up on ``leg``: no media for the timeout (``why`` empty), or its
        media could not be set up (``why`` says how, in WebRTC mode: ICE unanswered, DTLS
        timeout or fingerprint mismatch, consent lost). Both dialogs end with a Reason
        saying which."""
        if self.state is not State.CONFIRMED:
            return
        if not why:
            log.warning("no_media", call=self.key, leg=leg)
            reason = f'SIP;cause=408;text="no media from {leg}"'
            self._bye_both("no media", "no media", reason)
            self._end(f"no_media_{leg}", "gateway")
        else:
            log.warning("media_failed", call=self.key, leg=leg, why=why)
            text = why.replace('"', "'")
            reason = f'SIP;cause=488;text="{leg} media: {text}"'
            self._bye_both("media failed", "media failed", reason)
            self._end(f"media_failed_{leg}", "gateway")
        self.sip.flush()

    # -- the callee's INVITE --------------------------------------------------
    def _on_provisional(self, resp: Response) -> None:
        if self.state is State.CALLING:
            self.state = State.EARLY
            ring = self.callee.peer.ring_timeout
            if ring is not None:  # the callee is there; bound the ringing too
                self._arm(ring, self._on_ring_timeout)
            else:
                self._disarm()
        if self.state is State.EARLY and resp.status != 100:
            self.caller.provisional(resp.status)

    def _on_challenge(self, resp: Response) -> None:
        self._disarm()
        refused = self.callee.answer_challenge(resp)
        if refused is None:
            # A new transaction with nothing heard on it yet (a 100 may precede the 407):
            # the INVITE bound guards it again.
            self.state = State.CALLING
            self._arm(self.callee.peer.invite_timeout, self._on_invite_timeout)
            return
        why, bad_credentials = refused
        if bad_credentials:
            self._note_failure(resp, "bad_digest")
        self._fail_caller(self._failures.auth_refused, why)

    def _on_answer(self, resp: Response, retrans: bool) -> None:
        callee = self.callee
        taken = callee.take_answer(resp, retrans)
        if taken == "unroutable" and not retrans and self.state in SETUP_STATES:
            log.warning(f"{callee.peer.prefix}_answer_unroutable", call=self.key)
            self._fail(self._failures.unroutable_answer)
        if taken != "ours" or retrans or self.state is State.CONFIRMED:
            return
        if self.state in (State.CANCELLING, State.ENDED):
            # The callee answered after the caller cancelled (RFC 3261 9.1 race): hang up.
            callee.bye("cancelled")
            self._end("cancelled", self.caller.peer.name)
            return
        self._disarm()
        try:
            media = callee.session.accept_answer(resp.body)
        except (SdpError, NegotiationError) as exc:
            log.warning(f"{callee.peer.prefix}_sdp_unusable", call=self.key, error=str(exc))
            callee.bye("unusable SDP")
            self._fail(self._failures.unusable_answer)
            return
        self._set_media(callee, media)
        self._answer_caller()
        field = "wa_media" if callee.peer.name == "whatsapp" else "pbx_media"
        log.info("call_answered", call=self.key, **{field: describe(media)})

    def _answer_caller(self) -> None:
        caller = self.caller
        caller.answer()
        self.state = State.CONFIRMED
        self.final_status = 200
        self.answered_at = self.sip.now()
        if not caller.peer.media_at_admission and caller.media is not None:
            # Keys are known and the answer is on its way: Meta expects the business side
            # to send first, so the first SRTP packet goes now.
            self._set_media(caller, caller.media)

    def _on_failure(self, resp: Response) -> None:
        self._disarm()
        if self.state is State.CANCELLING:
            self._end("cancelled", self.caller.peer.name)
            return
        if self.state not in SETUP_STATES:
            return
        peer = self.callee.peer
        warning = resp.headers.get("Warning")
        self._note_failure(resp, mapping.meta_warning_reason(warning))
        self.ended_by = peer.name
        self._fail_caller(
            peer.map_failure(resp.status),
            peer.failure_text(resp),
            cause=resp.status,
            warning=warning,
        )

    def _note_failure(self, resp: Response, reason: str) -> None:
        if self.callee.peer.name == "whatsapp":
            self.meta_failure = {
                "code": resp.status,
                "reason": reason,
                "warning": mapping.warning_text(resp.headers.get("Warning")),
            }

    # -- ending -------------------------------------------------------------
    def _fail(self, failure: Failure) -> None:
        self._fail_caller(failure.status, failure.why)

    def _fail_caller(
        self, status: int, why: str, *, cause: int | None = None, warning: str | None = None
    ) -> None:
        """Answer the caller's INVITE with a failure while it rings, and end the call. A
        Reason (RFC 3326) names the callee's status, or ours where this side hears it."""
        peer = self.caller.peer
        headers = []
        phrase = None
        if cause is not None or peer.local_failure_reason:
            headers.append(reason_header(cause if cause is not None else status, why))
        if warning and peer.forward_warning:
            headers.append(("Warning", warning))
            # Meta's reason also as the reason phrase: a PBX that keeps nothing else of a
            # failure (FreeSWITCH 1.10: ${sip_invite_failure_phrase}) still sees it.
            phrase = mapping.reason_phrase(mapping.warning_text(warning))
        if self.state in SETUP_STATES:
            self.caller.reject(status, headers, phrase)
            self.final_status = status
            log.info("call_failed", call=self.key, status=status, why=why)
        self._end(f"failed_{status}", self.ended_by or "gateway")

    def _other(self, leg: Leg) -> Leg:
        return self.callee if leg is self.caller else self.caller

    def _set_media(self, leg: Leg, media: MediaParams) -> None:
        if leg.peer.name == "whatsapp":
            self.bridge.set_whatsapp(media)
        else:
            self.bridge.set_pbx(media)

    def _bye_both(self, wa_why: str, pbx_why: str, reason: str | None = None) -> None:
        """BYE both dialogs, Meta's first."""
        self.whatsapp.bye(wa_why, reason)
        self.pbx.bye(pbx_why, reason)

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
            self._bye_both(why, why)
        elif self.state in SETUP_STATES:
            self._fail_caller(503, why)
            self.callee.cancel()
        self._end(why, "gateway")

    # -- record -------------------------------------------------------------
    def record(self) -> dict[str, object]:
        """The call record: who, when, how it ended, and media statistics (no secrets)."""
        answered = self.answered_at
        setup = (answered - self.started) if answered is not None else None
        end = self.ended_at if self.ended_at is not None else self.sip.now()
        duration = end - answered if answered is not None else 0.0
        wa_media, pbx_media = self.whatsapp.media, self.pbx.media
        out: dict[str, object] = {
            "call": self.key,
            "direction": self.direction,
            "business_number": self.info.number,
            "user": self.info.user,
            "meta_source": self.info.meta_source,
            "status": self.final_status,
            "end_reason": self.end_reason,
            "ended_by": self.ended_by,
            "setup_seconds": round(setup, 3) if setup is not None else None,
            "duration_seconds": round(duration, 3),
            "wa_media": describe(wa_media) if wa_media else None,
            "pbx_media": describe(pbx_media) if pbx_media else None,
            "media": self.bridge.stats(),
            "meta_call_id": self.whatsapp.call_id,
            "pbx_call_id": self.pbx.call_id,
        }
        if self.callee.peer.name == "whatsapp":  # only a call to WhatsApp has these
            out["meta_failure"] = self.meta_failure
            out["meta_call_duration"] = self.meta_call_duration
        return out


def reason_header(cause: int, why: str) -> tuple[str, str]:
    """``Reason: SIP;cause=N;text="..."`` (RFC 3326), the text safe inside the quotes."""
    text = why.replace("\\", "/").replace('"', "'")
    return ("Reason", f'SIP;cause={cause};text="{text}"')
