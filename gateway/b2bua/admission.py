"""One admission pipeline for a new INVITE, from either side.

In order, whichever side called: capacity (draining or the call limit: 503 +
Retry-After), then the route of the caller's side (who the call is for and on
behalf of which business number; from Meta also its digest: 407 challenge,
403 on bad credentials), an SDP offer in the INVITE (415/488 + Accept), media
ports (503), the offer answered (488 + Warning, or 400). Then the call is
built (:mod:`gateway.b2bua.inbound` or :mod:`gateway.b2bua.outbound`) and
started. Every refusal is counted in :class:`CallCounters` where it is decided.

The route of a call from WhatsApp: the business number in the Request-URI
(416, 404), not the INVITE of a live call again (482, RFC 3261 8.2.2.2), the
digest. Of a call from the PBX: the WhatsApp user in the Request-URI (416,
484, 404), the business number (a header, the From user, the default: 403),
the number's outbound call cap and call rate (503), not a merged request (482).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.b2bua import inbound, outbound
from gateway.b2bua.call import CallInfo
from gateway.b2bua.context import wacid
from gateway.b2bua.peer import meta_address
from gateway.b2bua.port import NoMediaPorts
from gateway.b2bua.routing import RateLimiter, RoutingError, normalise_number, whatsapp_user
from gateway.config import NumberConfig
from gateway.logging import get_logger
from gateway.sdp.negotiate import NegotiationError
from gateway.sdp.session import SdpError
from gateway.sip.ids import new_tag
from gateway.sip.message import Request
from gateway.sip.transaction import ServerTransaction, Target
from gateway.sip.uri import SipUri, UriError

if TYPE_CHECKING:
    from gateway.b2bua.calls import CallManager

log = get_logger(__name__)

OVERLOAD_RETRY_AFTER = 5
RETRY = [("Retry-After", str(OVERLOAD_RETRY_AFTER))]


@dataclass
class CallCounters:
    """Admission refusals by status (metrics count them as decided, through on_reject)."""

    rejected: dict[int, int] | None = None

    def reject(self, status: int) -> None:
        if self.rejected is None:
            self.rejected = {}
        self.rejected[status] = self.rejected.get(status, 0) + 1


class Refused(Exception):
    """A new INVITE refused with ``status`` (counted); ``answered``: already answered."""

    def __init__(self, status: int, why: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.headers = headers or []


class Answered(Exception):
    """The INVITE was answered on the way (a digest challenge): nothing more to do."""


@dataclass(frozen=True)
class Route:
    """What the caller's side decided: the call's key, who it is for, the number."""

    key: str
    info: CallInfo
    number: NumberConfig


class Admission:
    def __init__(
        self, manager: CallManager, on_reject: Callable[[str, int], None] | None = None
    ) -> None:
        self.manager = manager
        self.counters = CallCounters()
        self._on_reject = on_reject  # (direction, status) of each refused INVITE: metrics
        self._rates: dict[str, RateLimiter] = {}

    # -- the pipeline ---------------------------------------------------------
    def admit(self, req: Request, tx: ServerTransaction, source: Target, leg: str) -> None:
        """Admit a new INVITE that came on ``leg`` ("whatsapp" or "pbx"), or answer it."""
        manager = self.manager
        cfg = manager.cfg
        try:
            if manager.draining:
                raise Refused(503, "draining", RETRY)
            if len(manager.calls) >= cfg.limits.max_calls:
                raise Refused(503, "capacity", RETRY)
            if leg == "whatsapp":
                route = self._from_whatsapp(req, tx, source)
            else:
                route = self._from_pbx(req)
            if req.content_type != "application/sdp" or not req.body:
                # No offer: 488. A body that is not SDP: 415 from Meta (RFC 3261 21.4.13);
                # the PBX has always had 488 for both.
                status = 415 if req.body and leg == "whatsapp" else 488
                raise Refused(status, "no SDP offer", [("Accept", "application/sdp")])
        except Refused as no:
            self.reject(tx, no.status, no.headers, no.why, leg)
            return
        except Answered:
            return
        key = route.key
        try:
            bridge = manager.bridges(key, lambda leg, why: manager.no_media(key, leg, why))
        except NoMediaPorts:
            self.reject(tx, 503, RETRY, "no media ports", leg)
            return
        try:
            if leg == "whatsapp":
                call = inbound.build(
                    cfg, key, route.info, tx, source, manager.sip, bridge, manager.ended
                )
            else:
                call = outbound.build(
                    cfg,
                    key,
                    route.info,
                    route.number,
                    tx,
                    source,
                    manager.sip,
                    bridge,
                    manager.ended,
                    manager.srtp_seen.get(route.info.number),
                )
        except (SdpError, NegotiationError) as exc:
            bridge.close()
            host = cfg.whatsapp.hostname if leg == "whatsapp" else manager.pbx_via.host
            self._reject_sdp(tx, exc, host, leg)
            return
        manager.add(call)
        call.start()
        if leg == "whatsapp":
            # What Meta offers on a number tells a call to it which key exchange to offer.
            wa_media = call.whatsapp.media
            if wa_media is not None:
                dtls = wa_media.webrtc is not None
                manager.srtp_seen[route.info.number] = "dtls" if dtls else "sdes"
            log.info(
                "call_admitted",
                call=key,
                number=route.info.number,
                user=route.info.user,
                meta_source=route.info.meta_source,
                via_proxy=source.transport != "tls",
            )
        else:
            log.info(
                "call_admitted",
                call=key,
                direction="outbound",
                number=route.info.number,
                user=route.info.user,
            )

    def reject(
        self,
        tx: ServerTransaction,
        status: int,
        headers: list[tuple[str, str]],
        why: str,
        leg: str,
    ) -> None:
        """Refuse a new INVITE that came on ``leg``: counted, logged, answered."""
        self.counters.reject(status)
        if self._on_reject is not None:
            self._on_reject("inbound" if leg == "whatsapp" else "outbound", status)
        log.info("call_rejected", status=status, why=why, call_id=tx.request.call_id)
        self.manager.sip.reply(tx, status, to_tag=new_tag(), headers=headers)

    def _reject_sdp(
        self, tx: ServerTransaction, exc: SdpError | NegotiationError, host: str, leg: str
    ) -> None:
        if isinstance(exc, NegotiationError):
            headers = [exc.warning_header(host)]
            self.reject(tx, exc.status, headers, f"SDP not acceptable: {exc}", leg)
        else:
            self.reject(tx, 400, [], f"bad SDP: {exc}", leg)

    # -- the route of a call from WhatsApp ------------------------------------
    def _from_whatsapp(self, req: Request, tx: ServerTransaction, source: Target) -> Route:
        try:
            ruri = req.parsed_uri
        except UriError:
            raise Refused(416, "not a SIP URI") from None
        number = self.business_number(ruri)
        if number is None:
            raise Refused(404, "not a configured business number")
        key = self.call_key(req)
        if key is None:
            raise Refused(482, "merged request")
        if number.challenge:
            self._authorise(req, tx, number)
        meta_source = str(meta_address(req, source))
        return Route(key, CallInfo(number.number, inbound.caller_user(req), meta_source), number)

    def business_number(self, ruri: SipUri) -> NumberConfig | None:
        """The business number Meta's Request-URI names (user params like ;tgrp stripped)."""
        user = ruri.user_number
        if not user:
            return None
        if not user.startswith("+") and user.isdigit():
            user = "+" + user
        return self.manager.cfg.whatsapp.number(user)

    def call_key(self, req: Request) -> str | None:
        """A key no live call has: Meta's wacid, made unique when another call carries the
        same one; None for a merged request (RFC 3261 8.2.2.2: the INVITE of a live call
        again, on another branch)."""
        calls = self.manager.calls
        base = key = wacid(req) or req.call_id
        n = 1
        while (other := calls.get(key)) is not None:
            first = other.caller.request
            if first.call_id == req.call_id and first.from_.tag == req.from_.tag:
                return None
            n += 1
            key = f"{base}#{n}"
        return key

    def _authorise(self, req: Request, tx: ServerTransaction, number: NumberConfig) -> None:
        """Digest check of Meta's INVITE (docs/whatsapp-sip.md section 3): returns when it
        passes, else answers it (407 challenge: Answered; 403/400: Refused)."""
        if req.headers.get("Proxy-Authorization") or req.headers.get("Authorization"):
            password = number.read_password()
        else:
            password = None  # not read for an INVITE that only gets its challenge
        challenger = self.manager.challenger
        verdict = challenger.verify(req, tx.source, number.number, password)
        if verdict.status == 0:
            return
        if verdict.status == 407:
            headers = challenger.challenge_headers(stale=verdict.stale)
            self.manager.sip.reply(tx, 407, to_tag=new_tag(), headers=headers)
            raise Answered
        raise Refused(verdict.status, verdict.why)

    # -- the route of a call from the PBX ---------------------------------------
    def _from_pbx(self, req: Request) -> Route:
        try:
            user = whatsapp_user(req.parsed_uri.user_number)
        except UriError:
            raise Refused(416, "not a SIP URI") from None
        except RoutingError as exc:
            raise Refused(exc.status, exc.why) from None
        number = self.outbound_number(req)
        if number is None:
            raise Refused(403, "no configured business number for this call")
        mine = (c for c in self.manager.calls.values() if c.info.number == number.number)
        active = sum(1 for c in mine if c.direction == "outbound")
        if active >= number.max_outbound_calls:
            raise Refused(503, f"outbound call cap of {number.number}", RETRY)
        rate = self._rates.get(number.number)
        if rate is None or rate.rate != number.max_call_rate:  # new, or changed by a reload
            rate = self._rates[number.number] = RateLimiter(number.max_call_rate)
        if not rate.allow(self.manager.sip.now()):
            raise Refused(503, f"call rate of {number.number}", [("Retry-After", "1")])
        key = f"out.{req.call_id}"
        if key in self.manager.calls:
            raise Refused(482, "merged request")
        return Route(key, CallInfo(number.number, user), number)

    def outbound_number(self, req: Request) -> NumberConfig | None:
        """The business number: the configured header, else the From user when it is a
        configured number, else whatsapp.default_number. A header naming an unknown
        number is refused (None), not replaced by the default."""
        cfg = self.manager.cfg
        wa = cfg.whatsapp
        header = req.headers.get(cfg.pbx.business_number_header)
        if header is not None:
            named = normalise_number(header)
            return wa.number(named) if named else None
        try:
            from_uri = req.from_.uri
        except UriError:
            from_uri = None
        if isinstance(from_uri, SipUri):
            named = normalise_number(from_uri.user_number)
            entry = wa.number(named) if named else None
            if entry is not None:
                return entry
        return wa.number(wa.default_number) if wa.default_number else None
