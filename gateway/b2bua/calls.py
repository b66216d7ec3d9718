"""The call table: admits Meta's INVITEs, routes every SIP event to its call.

Admission of a call from WhatsApp, in order: capacity (503 + Retry-After), the
business number in the Request-URI (404), digest (407 challenge, 403 on bad
credentials), the SDP offer (415/488), media ports (503). Then an
:class:`InboundCall` places the PBX leg. Everything a call does not claim goes
to the :class:`Endpoint` (OPTIONS, out-of-dialog requests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua.call import Call, CallLegs
from gateway.b2bua.challenge import Challenger
from gateway.b2bua.context import pbx_context_headers, wacid
from gateway.b2bua.endpoint import Endpoint, unsupported_extensions
from gateway.b2bua.inbound import InboundCall, InboundSetup
from gateway.b2bua.outbound import OutboundCall, OutboundSetup
from gateway.b2bua.peer import meta_address
from gateway.b2bua.port import (
    BridgeFactory,
    LegAddress,
    NoMediaPorts,
    SipPort,
    hang_up_answer,
    routable,
    uri_user,
)
from gateway.b2bua.routing import RateLimiter, RoutingError, normalise_number, whatsapp_user
from gateway.config import Config, NumberConfig
from gateway.logging import get_logger
from gateway.media.srtp import new_key_material
from gateway.sdp.negotiate import (
    MediaParams,
    NegotiationError,
    answer_pbx_offer,
    answer_whatsapp_offer,
    make_whatsapp_offer,
)
from gateway.sdp.session import SdpError, SessionDescription, parse_sdp
from gateway.sip.auth import DigestServer
from gateway.sip.dialog import Dialog
from gateway.sip.digest_throttle import DigestThrottle
from gateway.sip.ids import new_tag
from gateway.sip.message import Request, Response
from gateway.sip.transaction import (
    CancelReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    Target,
    TransactionTimeout,
    TransportFailure,
)
from gateway.sip.uri import SipUri, UriError

log = get_logger(__name__)

OVERLOAD_RETRY_AFTER = 5


@dataclass
class CallCounters:
    """Admission refusals by status (the app turns them into metrics)."""

    rejected: dict[int, int] | None = None

    def reject(self, status: int) -> None:
        if self.rejected is None:
            self.rejected = {}
        self.rejected[status] = self.rejected.get(status, 0) + 1


class CallManager:
    def __init__(
        self,
        cfg: Config,
        sip: SipPort,
        endpoint: Endpoint,
        bridges: BridgeFactory,
        digest: DigestServer,
        *,
        on_call_end: Callable[[Call, str], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        throttle: DigestThrottle | None = None,
    ) -> None:
        self.cfg = cfg
        self.sip = sip
        # Digest nonces carry wall-clock time: instances behind one proxy verify each
        # other's (cluster.nonce_secret_file), so the clock must be the same on all.
        self._wall = wall_clock
        self.endpoint = endpoint
        self.bridges = bridges
        self.digest = digest
        self.challenger = Challenger(digest, throttle, wall_clock, cfg.sip.user_agent)
        self.calls: dict[str, Call] = {}  # by key
        self._by_local: dict[tuple[str, str], tuple[Call, str]] = {}
        self._by_server_tx: dict[ServerTransaction, Call] = {}
        self._rates: dict[str, RateLimiter] = {}
        self._on_call_end = on_call_end
        self.counters = CallCounters()
        self.draining = False  # set by the app on SIGTERM: new calls get 503
        adv = cfg.sip_advertise
        self.pbx_via = LegAddress(cfg.pbx.transport, adv.host, adv.port)
        self.pbx_target = Target(cfg.pbx.transport, cfg.pbx.address.host, cfg.pbx.address.port)

    # -- dispatch -----------------------------------------------------------
    def handle(self, event: Event, leg: str) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event, leg)
        elif isinstance(event, ResponseReceived):
            found = self._by_local.get(_local_key(event.tx.request))
            if found is not None:
                call, call_leg = found
                call.on_response(call_leg, event.response, event.tx, event.retransmission)
            else:
                self._orphan_response(event)
        elif isinstance(event, CancelReceived):
            cancelled = self._by_server_tx.get(event.invite_tx)
            if cancelled is not None:
                cancelled.on_cancel()
        elif isinstance(event, TransactionTimeout):
            self._on_timeout(event)
        elif isinstance(event, TransportFailure):
            if isinstance(event.tx, ClientTransaction):
                found = self._by_local.get(_local_key(event.tx.request))
                if found is not None:
                    found[0].on_client_failure(found[1], event.tx)
            elif (caller := self._by_server_tx.get(event.tx)) is not None:
                caller.on_caller_unreachable()
        else:
            self.endpoint.handle(event, leg)

    def _on_timeout(self, event: TransactionTimeout) -> None:
        tx = event.tx
        if isinstance(tx, ServerTransaction):
            call = self._by_server_tx.get(tx)
            if call is not None and event.timer == "2xx-no-ack":
                call.on_ack_timeout()
            return
        found = self._by_local.get(_local_key(tx.request))
        if found is not None:
            found[0].on_client_timeout(found[1], tx)

    def _on_request(self, event: RequestReceived, leg: str) -> None:
        req, tx = event.request, event.tx
        to_tag = _to_tag(req)
        if to_tag:
            found = self._by_local.get((req.call_id, to_tag))
            if found is not None and found[1] == leg:  # a dialog of the leg it came on
                call, call_leg = found
                if tx is None:
                    if req.method == "ACK":
                        call.on_ack(call_leg, req)
                else:
                    call.on_request(call_leg, req, tx)
                return
        if tx is not None and req.method == "INVITE" and not to_tag:
            unsupported = unsupported_extensions(req)
            if unsupported:  # RFC 3261 8.2.2.3, before anything else is looked at
                headers = [("Unsupported", ", ".join(unsupported))]
                self._reject(tx, 420, headers, "requires an unsupported extension")
                return
            if not routable(Dialog.uas(req, "", "")):  # RFC 3261 8.1.1.8
                self._reject(tx, 400, [], "no SIP URI in Contact or Record-Route")
                return
            if leg == "whatsapp":
                self._admit_inbound(req, tx, event.source)
            else:
                self._admit_outbound(req, tx, event.source)
            return
        self.endpoint.handle(event, leg)

    # -- admission of a call from WhatsApp ----------------------------------
    def _admit_inbound(self, req: Request, tx: ServerTransaction, source: Target) -> None:
        cfg = self.cfg
        if self.draining:
            self._reject(tx, 503, [("Retry-After", str(OVERLOAD_RETRY_AFTER))], "draining")
            return
        if len(self.calls) >= cfg.limits.max_calls:
            self._reject(tx, 503, [("Retry-After", str(OVERLOAD_RETRY_AFTER))], "capacity")
            return
        try:
            ruri = req.parsed_uri
        except UriError:
            self._reject(tx, 416, [], "not a SIP URI")
            return
        number = self._business_number(ruri)
        if number is None:
            self._reject(tx, 404, [], "not a configured business number")
            return
        key = self._call_key(req)
        if key is None:
            self._reject(tx, 482, [], "merged request")
            return
        if number.challenge and not self._authorised(req, tx, number):
            return
        if req.content_type != "application/sdp" or not req.body:
            self._reject(tx, 415 if req.body else 488, [("Accept", "application/sdp")], "no SDP")
            return
        try:
            bridge = self.bridges(key, lambda leg: self._no_media(key, leg))
        except NoMediaPorts:
            self._reject(tx, 503, [("Retry-After", str(OVERLOAD_RETRY_AFTER))], "no media ports")
            return
        try:
            answer, wa_media = answer_whatsapp_offer(
                parse_sdp(req.body),
                local_address=cfg.media.sdp_address,
                local_port=bridge.whatsapp_port,
                allow_g711=cfg.media.g711_passthrough,
                g711_order=tuple(cfg.pbx.codecs),
                new_key=new_key_material,
            )
        except (SdpError, NegotiationError) as exc:
            bridge.close()
            self._reject_sdp(tx, exc, cfg.whatsapp.hostname)
            return
        caller = req.from_.uri
        user = (caller.user_number if isinstance(caller, SipUri) else None) or "anonymous"
        meta_source = str(meta_address(req, source))
        legs = self._legs(number.number, user, source.conn_id, source.transport, meta_source)
        setup = self._setup(req, number.number, user, answer, wa_media, legs.wa_via)
        call = InboundCall(key, legs, setup, tx, self.sip, bridge, self._ended)
        self.calls[key] = call
        self._by_server_tx[tx] = call
        self._by_local[(req.call_id, call.wa_tag)] = (call, "whatsapp")
        pbx_tx = call.start()
        self._by_local[_local_key(pbx_tx.request)] = (call, "pbx")
        log.info("call_admitted", call=key, number=number.number, user=user,
                 meta_source=meta_source, via_proxy=source.transport != "tls")  # fmt: skip

    def _call_key(self, req: Request) -> str | None:
        """A key no live call has: Meta's wacid, made unique when another call carries the
        same one; None for a merged request (RFC 3261 8.2.2.2: the INVITE of a live call
        again, on another branch)."""
        base = key = wacid(req) or req.call_id
        n = 1
        while (other := self.calls.get(key)) is not None:
            if isinstance(other, InboundCall):
                first = other.wa_request
                if first.call_id == req.call_id and first.from_.tag == req.from_.tag:
                    return None
            n += 1
            key = f"{base}#{n}"
        return key

    def _legs(
        self,
        number: str,
        user: str,
        meta_conn_id: int | None,
        wa_transport: str,
        meta_source: str | None = None,
    ) -> CallLegs:
        cfg = self.cfg
        return CallLegs(
            number=number,
            user=user,
            pbx_via=self.pbx_via,
            wa_via=self._wa_via(wa_transport),
            media_address=cfg.media.sdp_address,
            pbx_codecs=tuple(cfg.pbx.codecs),
            dtmf_pt=cfg.pbx.dtmf_payload_type,
            meta_conn_id=meta_conn_id,
            meta_source=meta_source,
        )

    def _wa_via(self, transport: str) -> LegAddress:
        """How the gateway names itself toward Meta (Via, Contact): over TLS, the public
        name (whatsapp.advertise or hostname); through the proxy (UDP/TCP), this
        instance's own address on the proxy link, so the proxy reaches it."""
        proxy = self.cfg.proxy_advertise
        if transport == "tls" or proxy is None:
            wa = self.cfg.whatsapp.contact_hostport
            return LegAddress("tls", wa.host, wa.port)
        return LegAddress(transport, proxy.host, proxy.port)

    def _is_meta_target(self, target: Target) -> bool:
        out = self.cfg.whatsapp.outbound_proxy
        if target.transport == "tls":
            return True
        return out is not None and (target.host, target.port) == (out.host, out.port)

    def _setup(
        self,
        req: Request,
        number: str,
        user: str,
        answer: SessionDescription,
        wa_media: MediaParams,
        wa_via: LegAddress,
    ) -> InboundSetup:
        cfg = self.cfg
        pbx = cfg.pbx.address  # str(): host:port, [v6]:port
        ruser = cfg.pbx.request_uri_user.format(
            number=number, digits=number[1:], user=uri_user(user)
        )
        return InboundSetup(
            display=req.from_.display,
            pbx_uri=f"sip:{ruser}@{pbx}",
            pbx_to=f"<sip:{ruser}@{pbx}>",
            pbx_headers=pbx_context_headers(req, user=user, business_number=number),
            wa_answer=answer,
            wa_media=wa_media,
            wa_contact=_contact(number, wa_via),
            pbx_target=self.pbx_target,
            invite_timeout=cfg.pbx.invite_timeout,
        )

    def _business_number(self, ruri: SipUri) -> NumberConfig | None:
        user = ruri.user_number  # request_uri_user_params (";tgrp=...") are stripped here
        if not user:
            return None
        if not user.startswith("+") and user.isdigit():
            user = "+" + user
        return self.cfg.whatsapp.number(user)

    def _authorised(self, req: Request, tx: ServerTransaction, number: NumberConfig) -> bool:
        """Digest check of Meta's INVITE (whatsapp-sip.md section 3); answers it when not OK."""
        if req.headers.get("Proxy-Authorization") or req.headers.get("Authorization"):
            password = number.read_password()
        else:
            password = None  # not read for an INVITE that only gets its challenge
        verdict = self.challenger.verify(req, tx.source, number.number, password)
        if verdict.status == 0:
            return True
        if verdict.status == 407:
            self._challenge(tx, stale=verdict.stale)
        else:
            self._reject(tx, verdict.status, [], verdict.why)
        return False

    def screen_invite(self, req: Request, source: Target, leg: str) -> Response | None:
        """The stateless answer to a new INVITE from Meta, before any transaction: its 407
        challenge, or the 403 of a source in digest backoff. None for everything else (the
        stateful path), decided by the checks of _on_request and _admit_inbound in order."""
        if leg != "whatsapp" or self.draining or len(self.calls) >= self.cfg.limits.max_calls:
            return None
        if unsupported_extensions(req) or not routable(Dialog.uas(req, "", "")):
            return None
        try:
            number = self._business_number(req.parsed_uri)
        except UriError:
            return None
        if number is None or not number.challenge or self._call_key(req) is None:
            return None
        return self.challenger.screen(req, source, number.number)

    def _reject_sdp(
        self, tx: ServerTransaction, exc: SdpError | NegotiationError, host: str
    ) -> None:
        if isinstance(exc, NegotiationError):
            headers = [exc.warning_header(host)]
            self._reject(tx, exc.status, headers, f"SDP not acceptable: {exc}")
        else:
            self._reject(tx, 400, [], f"bad SDP: {exc}")

    def _challenge(self, tx: ServerTransaction, *, stale: bool) -> None:
        headers = self.challenger.challenge_headers(stale=stale)
        self.sip.reply(tx, 407, to_tag=new_tag(), headers=headers)

    def _reject(
        self, tx: ServerTransaction, status: int, headers: list[tuple[str, str]], why: str
    ) -> None:
        self.counters.reject(status)
        log.info("call_rejected", status=status, why=why, call_id=tx.request.call_id)
        self.sip.reply(tx, status, to_tag=new_tag(), headers=headers)

    def _orphan_response(self, event: ResponseReceived) -> None:
        """A 2xx to an INVITE whose call has ended (it crossed our CANCEL, or the call
        gave up on the far leg): ACK it and hang it up (RFC 3261 sections 9.1 and 15),
        on the leg the INVITE went out on (PBX, or Meta over TLS)."""
        resp, tx = event.response, event.tx
        if tx.method != "INVITE" or not 200 <= resp.status < 300:
            return
        via, leg = self.pbx_via, "pbx"
        if self._is_meta_target(tx.target):  # an INVITE to Meta (or the proxy toward it)
            via, leg = self._wa_via(tx.target.transport), "whatsapp"
        reason = 'SIP;cause=487;text="ended"'
        hang_up_answer(self.sip, tx.request, resp, via, event.retransmission, reason)
        if not event.retransmission:
            log.info("late_answer_hung_up", leg=leg, call_id=tx.request.call_id)

    # -- admission of a call from the PBX to WhatsApp -------------------------
    def _admit_outbound(self, req: Request, tx: ServerTransaction, source: Target) -> None:
        cfg = self.cfg
        retry = [("Retry-After", str(OVERLOAD_RETRY_AFTER))]
        if self.draining:
            self._reject(tx, 503, retry, "draining")
            return
        if len(self.calls) >= cfg.limits.max_calls:
            self._reject(tx, 503, retry, "capacity")
            return
        try:
            ruri = req.parsed_uri
            user = whatsapp_user(ruri.user_number)
        except UriError:
            self._reject(tx, 416, [], "not a SIP URI")
            return
        except RoutingError as exc:
            self._reject(tx, exc.status, [], exc.why)
            return
        number = self._outbound_number(req)
        if number is None:
            self._reject(tx, 403, [], "no configured business number for this call")
            return
        active = sum(
            1
            for c in self.calls.values()
            if c.direction == "outbound" and c.legs.number == number.number
        )
        if active >= number.max_outbound_calls:
            self._reject(tx, 503, retry, f"outbound call cap of {number.number}")
            return
        rate = self._rates.get(number.number)
        if rate is None or rate.rate != number.max_call_rate:  # new, or changed by a reload
            rate = self._rates[number.number] = RateLimiter(number.max_call_rate)
        if not rate.allow(self.sip.now()):
            self._reject(tx, 503, [("Retry-After", "1")], f"call rate of {number.number}")
            return
        if req.content_type != "application/sdp" or not req.body:
            self._reject(tx, 488, [("Accept", "application/sdp")], "INVITE without an SDP offer")
            return
        key = f"out.{req.call_id}"
        if key in self.calls:
            self._reject(tx, 482, [], "merged request")
            return
        try:
            bridge = self.bridges(key, lambda leg: self._no_media(key, leg))
        except NoMediaPorts:
            self._reject(tx, 503, retry, "no media ports")
            return
        wa = cfg.whatsapp
        if wa.outbound_proxy is not None:  # the proxy forwards it to Meta over TLS
            meta_target = Target(wa.proxy_transport, wa.outbound_proxy.host, wa.outbound_proxy.port)
        else:
            meta_target = Target("tls", wa.meta_proxy.host, wa.meta_proxy.port)
        legs = self._legs(number.number, user, None, meta_target.transport)
        try:
            pbx_answer, pbx_media = answer_pbx_offer(
                parse_sdp(req.body),
                local_address=legs.media_address,
                local_port=bridge.pbx_port,
                codecs=legs.pbx_codecs,
                dtmf_pt=legs.dtmf_pt,
            )
            wa_offer, wa_keys = make_whatsapp_offer(
                local_address=legs.media_address,
                local_port=bridge.whatsapp_port,
                g711=legs.pbx_codecs if number.offer_g711 else (),
                new_key=new_key_material,
            )
        except (SdpError, NegotiationError) as exc:
            bridge.close()
            self._reject_sdp(tx, exc, self.pbx_via.host)
            return
        domain = wa.meta_domain
        pbx_via = LegAddress(source.transport, self.pbx_via.host, self.pbx_via.port)
        setup = OutboundSetup(
            meta_uri=f"sip:{uri_user(user)}@{domain};transport=tls",
            meta_to=f"<sip:{uri_user(user)}@{domain}>",
            meta_from=f"<sip:{number.number}@{wa.hostname}>",
            wa_contact=_contact(number.number, legs.wa_via),
            meta_target=meta_target,
            wa_offer=wa_offer,
            wa_keys=wa_keys,
            pbx_answer=pbx_answer,
            pbx_media=pbx_media,
            pbx_contact=f"sip:gw@{pbx_via.hostport};transport={pbx_via.transport}",
            password=number.read_password,
            invite_timeout=wa.invite_timeout,
            ring_timeout=wa.ring_timeout,
        )
        call = OutboundCall(key, legs, setup, tx, self.sip, bridge, self._ended)
        self.calls[key] = call
        self._by_server_tx[tx] = call
        self._by_local[(req.call_id, call.pbx_tag)] = (call, "pbx")
        self._by_local[(call.meta_call_id, call.meta_from_tag)] = (call, "whatsapp")
        call.start()
        log.info("call_admitted", call=key, direction="outbound", number=number.number, user=user)

    def _outbound_number(self, req: Request) -> NumberConfig | None:
        """The business number: the configured header, else the From user when it is a
        configured number, else whatsapp.default_number. A header naming an unknown
        number is refused (None), not replaced by the default."""
        wa = self.cfg.whatsapp
        header = req.headers.get(self.cfg.pbx.business_number_header)
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

    # -- lifecycle ----------------------------------------------------------
    def _no_media(self, key: str, leg: str) -> None:
        call = self.calls.get(key)
        if call is not None:
            call.on_no_media(leg)

    def _ended(self, call: Call, reason: str) -> None:
        if self.calls.get(call.key) is call:
            del self.calls[call.key]
        for tx in [tx for tx, c in self._by_server_tx.items() if c is call]:
            del self._by_server_tx[tx]
        for k in [k for k, v in self._by_local.items() if v[0] is call]:
            del self._by_local[k]
        log.info("call_ended", call=call.key, reason=reason, status=call.final_status)
        log.info("call_record", **call.record())
        if self._on_call_end is not None:
            self._on_call_end(call, reason)

    def hangup_all(self, why: str) -> None:
        for call in list(self.calls.values()):
            call.hangup(why)
        self.sip.flush()


def _to_tag(req: Request) -> str | None:
    try:
        return req.to.tag
    except UriError:
        return None


def _local_key(req: Request) -> tuple[str, str]:
    """(Call-ID, our tag) of a request we sent: From tag is ours."""
    try:
        tag = req.from_.tag or ""
    except UriError:
        tag = ""
    return (req.call_id, tag)


def _contact(user: str, via: LegAddress) -> str:
    return f"sip:{user}@{via.hostport};transport={via.transport}"
