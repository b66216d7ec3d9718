"""The call table: every SIP event from the stack to the leg it belongs to.

A new INVITE goes to the admission pipeline (:mod:`gateway.b2bua.admission`),
after the checks RFC 3261 puts before anything else (420 for a required
extension, 8.2.2.3; 400 for a dialog nobody could route in, 8.1.1.8). Every
other event finds its call and leg here: requests and ACKs by (Call-ID, our
tag) on the leg they came on, responses, timeouts and transport failures of
our requests by (Call-ID, our From tag), a CANCEL or a lost response by the
caller's INVITE transaction. A 2xx that no call wants is ACKed and hung up;
everything else that no call claims goes to the :class:`Endpoint` (OPTIONS,
out-of-dialog requests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from gateway.b2bua.admission import Admission, CallCounters
from gateway.b2bua.call import Call
from gateway.b2bua.challenge import Challenger
from gateway.b2bua.endpoint import Endpoint, unsupported_extensions
from gateway.b2bua.leg import Leg
from gateway.b2bua.peer import is_meta_target, pbx_address, whatsapp_address
from gateway.b2bua.port import BridgeFactory, SipPort, hang_up_answer, routable
from gateway.config import Config
from gateway.logging import get_logger
from gateway.sip.auth import DigestServer
from gateway.sip.dialog import Dialog
from gateway.sip.digest_throttle import DigestThrottle
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
from gateway.sip.uri import UriError

__all__ = ["CallCounters", "CallManager"]

log = get_logger(__name__)


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
        on_reject: Callable[[str, int], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        throttle: DigestThrottle | None = None,
    ) -> None:
        self.cfg = cfg
        self.sip = sip
        self.endpoint = endpoint
        self.bridges = bridges
        self.digest = digest
        # Digest nonces carry wall-clock time: instances behind one proxy verify each
        # other's (cluster.nonce_secret_file), so the clock must be the same on all.
        self.challenger = Challenger(digest, throttle, wall_clock, cfg.sip.user_agent)
        self.calls: dict[str, Call] = {}  # by key
        # Per business number, the key exchange Meta last offered ("sdes"/"dtls"): what a
        # call to WhatsApp offers when the number's srtp mode is "auto".
        self.srtp_seen: dict[str, Literal["sdes", "dtls"]] = {}
        self._by_local: dict[tuple[str, str], tuple[Call, Leg]] = {}  # (Call-ID, our tag)
        self._by_server_tx: dict[ServerTransaction, Call] = {}  # the caller's INVITE
        self._on_call_end = on_call_end
        self.admission = Admission(self, on_reject)
        self.draining = False  # set by the app on SIGTERM: new calls get 503
        self.pbx_via = pbx_address(cfg)

    @property
    def counters(self) -> CallCounters:
        """Admission refusals by status."""
        return self.admission.counters

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
            if found is not None and found[1].peer.name == leg:  # a dialog of the leg it came on
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
                self.admission.reject(tx, 420, headers, "requires an unsupported extension", leg)
                return
            if not routable(Dialog.uas(req, "", "")):  # RFC 3261 8.1.1.8
                self.admission.reject(tx, 400, [], "no SIP URI in Contact or Record-Route", leg)
                return
            self.admission.admit(req, tx, event.source, leg)
            return
        self.endpoint.handle(event, leg)

    def screen_invite(self, req: Request, source: Target, leg: str) -> Response | None:
        """The stateless answer to a new INVITE from Meta, before any transaction: its 407
        challenge, or the 403 of a source in digest backoff. None for everything else (the
        stateful path), decided by the checks of _on_request and the admission in order."""
        if leg != "whatsapp" or self.draining or len(self.calls) >= self.cfg.limits.max_calls:
            return None
        if unsupported_extensions(req) or not routable(Dialog.uas(req, "", "")):
            return None
        try:
            number = self.admission.business_number(req.parsed_uri)
        except UriError:
            return None
        if number is None or not number.challenge or self.admission.call_key(req) is None:
            return None
        return self.challenger.screen(req, source, number.number)

    def _orphan_response(self, event: ResponseReceived) -> None:
        """A 2xx to an INVITE whose call has ended (it crossed our CANCEL, or the call
        gave up on the far leg): ACK it and hang it up (RFC 3261 sections 9.1 and 15),
        on the leg the INVITE went out on (PBX, or Meta over TLS)."""
        resp, tx = event.response, event.tx
        if tx.method != "INVITE" or not 200 <= resp.status < 300:
            return
        via, leg = self.pbx_via, "pbx"
        if is_meta_target(self.cfg, tx.target):  # an INVITE to Meta (or the proxy toward it)
            via, leg = whatsapp_address(self.cfg, tx.target.transport), "whatsapp"
        reason = 'SIP;cause=487;text="ended"'
        hang_up_answer(self.sip, tx.request, resp, via, event.retransmission, reason)
        if not event.retransmission:
            log.info("late_answer_hung_up", leg=leg, call_id=tx.request.call_id)

    # -- lifecycle ----------------------------------------------------------
    def add(self, call: Call) -> None:
        """A new call: its caller's INVITE and both legs' dialogs find it from now on."""
        self.calls[call.key] = call
        self._by_server_tx[call.caller.tx] = call
        for leg in (call.caller, call.callee):
            self._by_local[(leg.call_id, leg.tag)] = (call, leg)

    def no_media(self, key: str, leg: str, why: str = "") -> None:
        call = self.calls.get(key)
        if call is not None:
            call.on_no_media(leg, why)

    def ended(self, call: Call, reason: str) -> None:
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
