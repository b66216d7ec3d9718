"""The user-agent core: what the gateway answers when no call claims a request.

The call table (:mod:`gateway.b2bua.calls`) hands it every event no call or
admission takes: it answers OPTIONS (the keep-alive PBXs and load balancers
send; 503 + Retry-After while draining), an in-dialog request of no dialog
481 (RFC 3261 12.2.2), and every other request the answer section 8.2
prescribes. It never parses bytes: it sees events from the transaction layer
and replies through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway import __version__
from gateway.logging import get_logger
from gateway.sip.ids import new_tag
from gateway.sip.message import Request, make_response
from gateway.sip.transaction import (
    CancelReceived,
    Event,
    RequestReceived,
    ServerTransaction,
    TransactionManager,
)
from gateway.sip.uri import SipUri, UriError, parse_uri

log = get_logger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
ACCEPT = "application/sdp"
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
IN_DIALOG_METHODS = frozenset({"BYE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"})
INVITE_RETRY_AFTER = 30
DRAIN_RETRY_AFTER = 5


class Endpoint:
    def __init__(
        self,
        manager: TransactionManager,
        clock: Callable[[], float],
        *,
        user_agent: str = f"wa-sip-gateway/{__version__}",
    ) -> None:
        self._manager = manager
        self._clock = clock
        self._ua = user_agent
        # Set by the app on SIGTERM: OPTIONS get 503 + Retry-After, so a SIP load
        # balancer probing with OPTIONS moves traffic to another instance.
        self.draining = False

    def handle(self, event: Event, leg: str) -> None:
        if isinstance(event, RequestReceived):
            if event.tx is not None:
                self._on_request(event.request, event.tx, leg)
        elif isinstance(event, CancelReceived):
            # The INVITE was already answered (503): the CANCEL changes nothing (section 9.2).
            log.debug("sip_cancel", leg=leg, call_id=event.cancel.call_id)
        else:
            log.debug("sip_event", leg=leg, kind=type(event).__name__)

    def reply(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        resp = make_response(tx.request, status, reason, to_tag=new_tag())
        resp.headers.add("Server", self._ua)
        for name, value in headers:
            resp.headers.add(name, value)
        self._manager.send_response(resp, self._clock())

    def _on_request(self, req: Request, tx: ServerTransaction, leg: str) -> None:
        method = req.method
        if method == "ACK":
            return
        problem = self._precheck(req)
        if problem is not None:
            status, extra = problem
            self.reply(tx, status, headers=extra)
            return
        if method == "OPTIONS" and self.draining:
            self.reply(tx, 503, headers=[("Retry-After", str(DRAIN_RETRY_AFTER))])
        elif method == "OPTIONS":
            self.reply(
                tx,
                200,
                headers=[("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", "")],
            )
        elif method == "INVITE":
            if req.to.tag is not None:
                self.reply(tx, 481)
            else:
                log.info("invite_refused", leg=leg, call_id=req.call_id, reason="calls not enabled")
                self.reply(tx, 503, headers=[("Retry-After", str(INVITE_RETRY_AFTER))])
        elif method in IN_DIALOG_METHODS:
            self.reply(tx, 481)
        else:
            self.reply(tx, 405, headers=[("Allow", ALLOW)])

    @staticmethod
    def _precheck(req: Request) -> tuple[int, list[tuple[str, str]]] | None:
        """Section 8.2.1-8.2.3 checks: URI scheme, unknown required extensions."""
        try:
            uri = parse_uri(req.uri)
        except UriError:
            return 400, []
        if not isinstance(uri, SipUri):
            return 416, []
        if req.method != "CANCEL":
            unsupported = unsupported_extensions(req)
            if unsupported:
                return 420, [("Unsupported", ", ".join(unsupported))]
        return None


def unsupported_extensions(req: Request) -> list[str]:
    """Option tags ``req`` requires that the gateway does not support (100rel, timer...);
    a request with any gets 420 and an Unsupported header (RFC 3261 8.2.2.3)."""
    required = [t.strip() for t in req.headers.get_all("Require")]
    return [t for t in required if t and t.lower() not in SUPPORTED_EXTENSIONS]
