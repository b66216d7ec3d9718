"""What differs between the two peers of a call, Meta and the PBX: a small policy object.

A call is the same machine whichever side called (:mod:`gateway.b2bua.call`);
a :class:`Peer` says what is particular to the side a leg faces: how the
gateway names itself there (Via and Contact host, transport, Meta's own
connection for in-dialog requests), the Allow it advertises (and so whether
UPDATE is answered or refused 405), whether Meta's Record-Route is echoed in
provisional responses too, what never crosses to it (no Warning ever goes to
Meta, and a Reason only when it relays the PBX's failure; re-INVITEs and
UPDATEs never cross at all), how its own failures are mapped for the caller
(:mod:`gateway.b2bua.mapping`), and the texts, statuses and timers of a call
placed toward it. :func:`whatsapp_peer` and
:func:`pbx_peer` build the two. Where Meta's address comes from is here too
(:func:`meta_address`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua import mapping
from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.port import LegAddress
from gateway.config import Config, HostPort
from gateway.sip.headers import split_header_values
from gateway.sip.message import Request, Response
from gateway.sip.transaction import Target
from gateway.sip.uri import UriError
from gateway.sip.via import Via, parse_via


def second_via(req: Request) -> Via | None:
    """The second Via value of ``req`` (None when there is none or it does not parse).

    Only that value is parsed, not every Via (a relayed INVITE may carry many)."""
    seen = 0
    for line in req.headers.lines("Via"):
        for value in split_header_values(line):
            seen += 1
            if seen == 2:
                try:
                    return parse_via(value)
                except UriError:
                    return None
    return None


def meta_address(req: Request, source: Target) -> HostPort:
    """Where a request from Meta came from: the connection's peer over TLS; relayed by a
    trusted proxy (UDP/TCP on proxy_listen), the proxy's record of Meta's address in the
    second Via (received/rport, else sent-by; RFC 3261 18.2.1, RFC 3581), the top Via
    being the proxy's own. Only trusted because the proxy is."""
    if source.transport != "tls":
        via = second_via(req)
        if via is not None:
            host = (via.received or via.host).strip("[]")
            return HostPort(host, via.rport or via.port or 5061)
    return HostPort(source.host, source.port)


@dataclass(frozen=True)
class Failure:
    """A local failure of a call placed toward a peer, as the caller hears it."""

    status: int
    why: str


@dataclass(frozen=True)
class CalleeFailures:
    """What the caller hears when the call placed toward this peer fails locally."""

    no_provisional: Failure  # nothing heard within the INVITE bound
    timeout: Failure  # Timer B (RFC 3261 17.1.1.2)
    unreachable: Failure  # the transport failed
    unroutable_answer: Failure  # a 2xx with no SIP URI to ACK or BYE
    unusable_answer: Failure  # a 2xx whose SDP answer cannot be used
    ended_early: Failure  # a BYE in the early dialog (RFC 3261 section 15)
    no_answer: Failure  # ringing too long (only with a ring timeout)
    auth_refused: int  # our digest answer refused, or the challenge unusable


@dataclass(frozen=True)
class Peer:
    """The policy for one side of a call (see the module docstring)."""

    name: str  # "whatsapp" | "pbx": leg names in records, metrics and ended_by
    prefix: str  # "meta" | "pbx": end reasons and log events ("meta_bye", "pbx_no_ack")
    named: str  # how texts name it: "WhatsApp", "the PBX"
    hung_up: str  # the text of the BYE that relays its hang-up
    via: LegAddress  # how the gateway names itself toward it (Via, Contact)
    allow: str  # Allow in our 2xx and 405s; UPDATE is answered only when listed
    failures: CalleeFailures  # what the caller hears when a call toward it fails here
    conn_id: int | None = None  # its own connection, reused for in-dialog requests
    early_record_route: bool = False  # echo Record-Route in 18x too, not only in the 2xx
    local_failure_reason: bool = False  # a Reason header on our own failures toward it
    forward_warning: bool = False  # the other side's Warning crosses to it
    media_at_admission: bool = False  # as caller: its media starts before the answer
    # -- as the callee ----------------------------------------------------------
    map_failure: Callable[[int], int] = mapping.pbx_failure_to_meta
    failure_text: Callable[[Response], str] = lambda resp: f"answered {resp.status}"
    no_response_event: str = "no_response"  # the log event when our INVITE hears nothing
    invite_timeout: float = 32.0  # nothing heard on our INVITE: give up
    ring_timeout: float | None = None  # ringing bound once it answered provisionally


WHATSAPP_AS_CALLEE = CalleeFailures(
    no_provisional=Failure(mapping.META_UNREACHABLE, "no answer from WhatsApp"),
    timeout=Failure(mapping.META_UNREACHABLE, "WhatsApp timeout"),
    unreachable=Failure(mapping.META_UNREACHABLE, "WhatsApp unreachable (TLS)"),
    unroutable_answer=Failure(502, "WhatsApp answer has no SIP Contact"),
    unusable_answer=Failure(488, "WhatsApp SDP unusable"),
    ended_early=Failure(480, "WhatsApp ended the call"),
    no_answer=Failure(480, "no answer from the WhatsApp user"),
    auth_refused=mapping.META_AUTH_REFUSED,
)

PBX_AS_CALLEE = CalleeFailures(
    no_provisional=Failure(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX did not answer"),
    timeout=Failure(mapping.PBX_NO_ANSWER_TO_INVITE, "PBX timeout"),
    unreachable=Failure(mapping.PBX_TRANSPORT_FAILURE, "PBX unreachable"),
    unroutable_answer=Failure(mapping.pbx_failure_to_meta(502), "PBX answer has no SIP Contact"),
    unusable_answer=Failure(488, "PBX SDP unusable"),
    ended_early=Failure(480, "PBX ended the call"),
    no_answer=Failure(480, "no answer from the PBX"),
    auth_refused=mapping.pbx_failure_to_meta(407),
)


def _meta_failure_text(resp: Response) -> str:
    return mapping.warning_text(resp.headers.get("Warning")) or resp.reason


def _pbx_failure_text(resp: Response) -> str:
    return f"PBX answered {resp.status}"


def whatsapp_peer(
    via: LegAddress,
    *,
    conn_id: int | None = None,
    invite_timeout: float = 32.0,
    ring_timeout: float | None = None,
) -> Peer:
    """Meta: SIP over TLS (or through the proxy), no UPDATE and no session timers
    (docs/whatsapp-sip.md section 5), its Record-Route echoed unchanged and in order in every
    dialog-creating response (section 3); it hears a Reason only when relaying the PBX's."""
    return Peer(
        name="whatsapp",
        prefix="meta",
        named="WhatsApp",
        hung_up="WhatsApp user hung up",
        via=via,
        allow=ALLOW,
        conn_id=conn_id,
        early_record_route=True,
        failures=WHATSAPP_AS_CALLEE,
        map_failure=mapping.meta_failure_to_pbx,
        failure_text=_meta_failure_text,
        no_response_event="meta_no_response",
        invite_timeout=invite_timeout,
        ring_timeout=ring_timeout,
    )


def pbx_peer(via: LegAddress, *, invite_timeout: float = 32.0) -> Peer:
    """The PBX: plain SIP over UDP/TCP; re-INVITE and UPDATE answered locally (Allow lists
    UPDATE); every failure toward it carries a Reason (RFC 3326) and Meta's Warning."""
    return Peer(
        name="pbx",
        prefix="pbx",
        named="the PBX",
        hung_up="PBX hung up",
        via=via,
        allow=ALLOW + ", UPDATE",
        local_failure_reason=True,
        forward_warning=True,
        media_at_admission=True,
        failures=PBX_AS_CALLEE,
        map_failure=mapping.pbx_failure_to_meta,
        failure_text=_pbx_failure_text,
        no_response_event="pbx_no_provisional",
        invite_timeout=invite_timeout,
    )


def pbx_address(cfg: Config) -> LegAddress:
    """How the gateway names itself toward the PBX (sip.advertise, pbx.transport)."""
    adv = cfg.sip_advertise
    return LegAddress(cfg.pbx.transport, adv.host, adv.port)


def whatsapp_address(cfg: Config, transport: str) -> LegAddress:
    """How the gateway names itself toward Meta (Via, Contact): over TLS, the public
    name (whatsapp.advertise or hostname); through the proxy (UDP/TCP), this
    instance's own address on the proxy link, so the proxy reaches it."""
    proxy = cfg.proxy_advertise
    if transport == "tls" or proxy is None:
        wa = cfg.whatsapp.contact_hostport
        return LegAddress("tls", wa.host, wa.port)
    return LegAddress(transport, proxy.host, proxy.port)


def is_meta_target(cfg: Config, target: Target) -> bool:
    """Whether a request we sent to ``target`` went toward Meta (TLS, or the proxy)."""
    out = cfg.whatsapp.outbound_proxy
    if target.transport == "tls":
        return True
    return out is not None and (target.host, target.port) == (out.host, out.port)


def contact_uri(user: str, via: LegAddress) -> str:
    """Our Contact URI on a leg: ``sip:user@host:port;transport=t``."""
    return f"sip:{user}@{via.hostport};transport={via.transport}"
