"""The call table: admits Meta's INVITEs, routes every SIP event to its call.

Admission of a call from WhatsApp, in order: capacity (503 + Retry-After), the
business number in the Request-URI (404), digest (407 challenge, 403 on bad
credentials), the SDP offer (415/488), media ports (503). Then an
:class:`InboundCall` places the PBX leg. Everything a call does not claim goes
to the :class:`Endpoint` (OPTIONS, out-of-dialog requests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua.context import pbx_context_headers, wacid
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.inbound import InboundCall, InboundSetup, uri_user
from gateway.b2bua.legs import (
    BridgeFactory,
    LegAddress,
    NoMediaPorts,
    SipPort,
    dialog_target,
)
from gateway.media.srtp import new_key_material
from gateway.ops.config import Config, NumberConfig
from gateway.ops.logging import get_logger
from gateway.sdp.negotiate import MediaParams, NegotiationError, answer_whatsapp_offer
from gateway.sdp.session import SdpError, SessionDescription, parse_sdp
from gateway.sip.auth import (
    AuthParseError,
    DigestServer,
    VerifyResult,
    parse_credentials,
)
from gateway.sip.dialog import Dialog
from gateway.sip.ids import new_tag
from gateway.sip.message import Request
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
    """Plain counters read by the metrics collector."""

    attempts: int = 0
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
        on_call_end: Callable[[InboundCall, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sip = sip
        self.endpoint = endpoint
        self.bridges = bridges
        self.digest = digest
        self.calls: dict[str, InboundCall] = {}  # by key
        self._by_local: dict[tuple[str, str], tuple[InboundCall, str]] = {}
        self._by_server_tx: dict[ServerTransaction, InboundCall] = {}
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
            if found is not None and found[1] == "pbx":
                found[0].on_pbx_response(event.response, event.tx, event.retransmission)
            elif found is None:
                self._orphan_response(event)
        elif isinstance(event, CancelReceived):
            call = self._by_server_tx.get(event.invite_tx)
            if call is not None:
                call.on_meta_cancel()
        elif isinstance(event, TransactionTimeout):
            self._on_timeout(event)
        elif isinstance(event, TransportFailure):
            if isinstance(event.tx, ClientTransaction):
                found = self._by_local.get(_local_key(event.tx.request))
                if found is not None and found[1] == "pbx":
                    found[0].on_pbx_transport_failure(event.tx)
        else:
            self.endpoint.handle(event, leg)

    def _on_timeout(self, event: TransactionTimeout) -> None:
        tx = event.tx
        if isinstance(tx, ServerTransaction):
            call = self._by_server_tx.get(tx)
            if call is not None and event.timer == "2xx-no-ack":
                call.on_meta_ack_timeout()
            return
        found = self._by_local.get(_local_key(tx.request))
        if found is not None and found[1] == "pbx":
            found[0].on_pbx_timeout(tx)

    def _on_request(self, event: RequestReceived, leg: str) -> None:
        req, tx = event.request, event.tx
        to_tag = _to_tag(req)
        if to_tag:
            found = self._by_local.get((req.call_id, to_tag))
            if found is not None:
                call, call_leg = found
                if tx is None:
                    if call_leg == "pbx" and req.method == "ACK":
                        call.on_pbx_ack(req)
                elif call_leg == "pbx":
                    call.on_pbx_request(req, tx)
                else:
                    call.on_meta_request(req, tx)
                return
        if tx is not None and req.method == "INVITE" and not to_tag and leg == "whatsapp":
            self._admit_inbound(req, tx, event.source)
            return
        self.endpoint.handle(event, leg)

    # -- admission of a call from WhatsApp ----------------------------------
    def _admit_inbound(self, req: Request, tx: ServerTransaction, source: Target) -> None:
        cfg = self.cfg
        self.counters.attempts += 1
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
        except SdpError as exc:
            bridge.close()
            self._reject(tx, 400, [], f"bad SDP: {exc}")
            return
        except NegotiationError as exc:
            bridge.close()
            self._reject(tx, exc.status, [], f"SDP not acceptable: {exc}")
            return
        setup = self._setup(req, number.number, key, answer, wa_media, source)
        call = InboundCall(setup, tx, self.sip, bridge, self._ended)
        self.calls[key] = call
        self._by_server_tx[tx] = call
        self._by_local[(req.call_id, call.wa_tag)] = (call, "whatsapp")
        pbx_tx = call.start()
        self._by_local[_local_key(pbx_tx.request)] = (call, "pbx")
        log.info("call_admitted", call=key, number=number.number, user=setup.user)

    def _call_key(self, req: Request) -> str | None:
        """A key no live call has: Meta's wacid, made unique when another call carries the
        same one; None for a merged request (RFC 3261 8.2.2.2: the INVITE of a live call
        again, on another branch)."""
        base = key = wacid(req) or req.call_id
        n = 1
        while (other := self.calls.get(key)) is not None:
            first = other.wa_request
            if first.call_id == req.call_id and first.from_.tag == req.from_.tag:
                return None
            n += 1
            key = f"{base}#{n}"
        return key

    def _setup(
        self,
        req: Request,
        number: str,
        key: str,
        answer: SessionDescription,
        wa_media: MediaParams,
        source: Target,
    ) -> InboundSetup:
        cfg = self.cfg
        caller = req.from_
        user = (caller.uri.user_number if isinstance(caller.uri, SipUri) else None) or "anonymous"
        pbx = cfg.pbx.address  # str(): host:port, [v6]:port
        ruser = cfg.pbx.request_uri_user.format(
            number=number, digits=number[1:], user=uri_user(user)
        )
        return InboundSetup(
            key=key,
            number=number,
            user=user,
            display=caller.display,
            pbx_uri=f"sip:{ruser}@{pbx}",
            pbx_to=f"<sip:{ruser}@{pbx}>",
            pbx_headers=pbx_context_headers(req, user=user, business_number=number),
            wa_answer=answer,
            wa_media=wa_media,
            wa_contact=f"sip:{number}@{cfg.whatsapp.contact_hostport};transport=tls",
            pbx_via=self.pbx_via,
            pbx_target=self.pbx_target,
            pbx_codecs=tuple(cfg.pbx.codecs),
            dtmf_pt=cfg.pbx.dtmf_payload_type,
            media_address=cfg.media.sdp_address,
            invite_timeout=cfg.pbx.invite_timeout,
            meta_source=source,
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
        value = req.headers.get("Proxy-Authorization") or req.headers.get("Authorization")
        if value is None:
            self._challenge(tx, stale=False)
            return False
        try:
            creds = parse_credentials(value)
        except AuthParseError:
            self._reject(tx, 400, [], "malformed Proxy-Authorization")
            return False
        digits = number.number[1:]
        if creds.username not in (digits, number.number):
            self._reject(tx, 403, [], "digest username is not the business number")
            return False
        password = number.read_password()
        if password is None:
            log.error("sip_password_missing", number=number.number)
            self._reject(tx, 403, [], "SIP password missing")
            return False
        result = self.digest.verify(creds, "INVITE", req.uri, password, self.sip.now())
        if result is VerifyResult.OK:
            return True
        if result in (VerifyResult.STALE, VerifyResult.INVALID_NONCE):
            self._challenge(tx, stale=result is VerifyResult.STALE)
            return False
        self._reject(tx, 403, [], f"digest {result.value}")
        return False

    def _challenge(self, tx: ServerTransaction, *, stale: bool) -> None:
        challenges = self.digest.challenge(self.sip.now(), stale=stale)
        headers = [("Proxy-Authenticate", c.to_header()) for c in challenges]
        self.sip.reply(tx, 407, to_tag=new_tag(), headers=headers)

    def _reject(
        self, tx: ServerTransaction, status: int, headers: list[tuple[str, str]], why: str
    ) -> None:
        self.counters.reject(status)
        log.info("call_rejected", status=status, why=why, call_id=tx.request.call_id)
        self.sip.reply(tx, status, to_tag=new_tag(), headers=headers)

    def _orphan_response(self, event: ResponseReceived) -> None:
        """A 2xx to a PBX INVITE whose call has ended (it crossed our CANCEL, or the call
        gave up on the PBX): ACK it and hang it up (RFC 3261 sections 9.1 and 15)."""
        resp, tx = event.response, event.tx
        if tx.method != "INVITE" or not 200 <= resp.status < 300:
            return
        dialog = Dialog.uac(tx.request, resp)
        target = dialog_target(dialog, self.pbx_via.transport)
        self.sip.send_ack(dialog.create_ack(resp.cseq.seq), self.pbx_via, target)
        if not event.retransmission:
            log.info("pbx_late_answer_hung_up", call_id=tx.request.call_id)
            bye = dialog.create_request("BYE", headers=[("Reason", 'SIP;cause=487;text="ended"')])
            self.sip.send_request(bye, self.pbx_via, target)

    # -- lifecycle ----------------------------------------------------------
    def _no_media(self, key: str, leg: str) -> None:
        call = self.calls.get(key)
        if call is not None:
            call.on_no_media(leg)

    def _ended(self, call: InboundCall, reason: str) -> None:
        if self.calls.get(call.key) is call:
            del self.calls[call.key]
        self._by_server_tx.pop(call.wa_tx, None)
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
