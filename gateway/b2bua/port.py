"""What a call needs from the world, as small interfaces (so calls are testable in memory).

:class:`SipPort` wraps the transaction manager with the few operations a call
performs: reply, send a request on a leg, send an ACK, flush. :class:`Scheduler`
is the clock and timers. :class:`MediaBridge` is the per-call media relay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from gateway.config import Config
from gateway.media.stats import BridgeStats
from gateway.netaddr import hostport
from gateway.sdp.negotiate import MediaParams
from gateway.sdp.webrtc import LocalWebRtc
from gateway.sip.dialog import Dialog
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    Target,
    TransactionManager,
    add_via,
)
from gateway.sip.uri import SipUri
from gateway.transport.rtp import PortsExhausted

NoMediaPorts = PortsExhausted  # the media port range is exhausted


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class MediaBridge(Protocol):
    """One call's media relay between the WhatsApp leg (SRTP) and the PBX leg (RTP)."""

    @property
    def whatsapp_port(self) -> int: ...

    @property
    def pbx_port(self) -> int: ...

    def set_whatsapp(self, params: MediaParams) -> None:
        """Meta's side is known (address, codec, keys): start sending at once (Meta expects
        the business side to send first), with silence until the PBX has audio."""

    def set_pbx(self, params: MediaParams) -> None:
        """The PBX's side is known or changed (answer, re-INVITE: hold, codec, address)."""

    def local_webrtc(self) -> tuple[str, str, tuple[str, str]]:
        """Our ICE ufrag, pwd and DTLS fingerprint for a WebRTC-mode SDP toward Meta."""

    def stats(self) -> BridgeStats: ...

    def close(self) -> None: ...


def local_webrtc(cfg: Config, bridge: MediaBridge) -> LocalWebRtc | None:
    """Our side of a WebRTC-mode SDP toward Meta (ICE credentials, DTLS fingerprint, host
    candidate), or None when the bridge has no DTLS certificate (SDES only)."""
    try:
        ufrag, pwd, fingerprint = bridge.local_webrtc()
    except RuntimeError:
        return None
    return LocalWebRtc(ufrag, pwd, fingerprint, cfg.media.sdp_address, bridge.whatsapp_port)


BridgeFactory = Callable[[str, Callable[[str, str], None]], MediaBridge]
"""(call key, on_no_media(leg, why)) -> a bridge with both ports allocated; raises
NoMediaPorts. ``why`` is empty for no media within the timeout, else what failed in
WebRTC setup."""


@dataclass(frozen=True)
class LegAddress:
    """How this gateway names itself on one leg (Via, Contact)."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def hostport(self) -> str:
        """``host:port`` for a URI, an IPv6 host in brackets (RFC 3261 section 25.1)."""
        return hostport(self.host, self.port)


class SipPort:
    """The transaction manager plus what a call needs to use it."""

    def __init__(
        self,
        manager: TransactionManager,
        scheduler: Scheduler,
        flush: Callable[[], None],
        user_agent: str,
    ) -> None:
        self.manager = manager
        self.scheduler = scheduler
        self.flush = flush
        self.user_agent = user_agent

    def now(self) -> float:
        return self.scheduler.time()

    def response(
        self,
        tx: ServerTransaction,
        status: int,
        *,
        to_tag: str | None = None,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        record_route: bool = False,
    ) -> Response:
        resp = make_response(tx.request, status, reason, to_tag=to_tag, record_route=record_route)
        resp.headers.add("Server", self.user_agent)
        for name, value in headers:
            resp.headers.add(name, value)
        return resp

    def reply(
        self,
        tx: ServerTransaction,
        status: int,
        *,
        to_tag: str | None = None,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(self.response(tx, status, to_tag=to_tag, reason=reason, headers=headers))

    def send_response(self, resp: Response) -> None:
        self.manager.send_response(resp, self.now())

    def send_request(self, req: Request, via: LegAddress, target: Target) -> ClientTransaction:
        add_via(req, via.transport.upper(), via.host, via.port)
        if "User-Agent" not in req.headers:
            req.headers.add("User-Agent", self.user_agent)
        return self.manager.send_request(req, target, self.now())

    def send_ack(self, ack: Request, via: LegAddress, target: Target) -> None:
        add_via(ack, via.transport.upper(), via.host, via.port)
        self.manager.send_stateless(ack, target)

    def cancel(self, tx: ClientTransaction) -> None:
        self.manager.cancel(tx, self.now())


def uri_user(user: str) -> str:
    """``user`` (as decoded from Meta's From) escaped for the user part of a SIP URI:
    RFC 3261 section 25.1 ``user``, with ';' escaped too (it would start user parameters)."""
    return quote(user, safe="-_.!~*'()&=+$,?/")


def target_for(uri: SipUri, default_transport: str, conn_id: int | None = None) -> Target:
    """Where to send a request whose next hop is ``uri`` (RFC 3263 without DNS SRV)."""
    transport = (uri.transport or default_transport).lower()
    if uri.scheme == "sips":
        transport = "tls"
    port = uri.port or (5061 if transport == "tls" else 5060)
    host = uri.host[1:-1] if uri.host.startswith("[") else uri.host
    maddr = uri.param("maddr")
    return Target(transport, maddr or host, port, conn_id)


def dialog_target(dialog: Dialog, default_transport: str, conn_id: int | None = None) -> Target:
    return target_for(dialog.next_hop(), default_transport, conn_id)


def hang_up_answer(
    sip: SipPort,
    request: Request,
    resp: Response,
    via: LegAddress,
    retransmission: bool,
    reason: str,
) -> None:
    """A 2xx to our INVITE that no call wants (another fork, or a call already over):
    ACK it (RFC 3261 13.2.2.4) and, the first time, BYE its dialog (section 15)."""
    dialog = Dialog.uac(request, resp)
    if not routable(dialog):
        return  # nowhere to send either
    target = dialog_target(dialog, via.transport)
    sip.send_ack(dialog.create_ack(resp.cseq.seq), via, target)
    if not retransmission:
        bye = dialog.create_request("BYE", headers=[("Reason", reason)])
        sip.send_request(bye, via, target)


def routable(dialog: Dialog) -> bool:
    """Whether requests in ``dialog`` can be routed: its first route, or else its remote
    target (the peer's Contact), is a SIP URI (RFC 3261 8.1.1.8 and 12.1.1 require it)."""
    try:
        dialog.next_hop()
    except ValueError:
        return False
    return True
