"""A call from a WhatsApp user to the business: Meta is the caller, the PBX the callee.

What is particular to this direction, once :mod:`gateway.b2bua.admission` has
admitted Meta's INVITE: the business number is in the Request-URI, Meta may
be challenged (:mod:`gateway.b2bua.challenge`), we answer Meta's SDES offer
at once (docs/whatsapp-sip.md section 3) and offer plain RTP to the PBX, and the
PBX's INVITE carries the caller's display name and Meta's call context as
X-WA-* headers (:mod:`gateway.b2bua.context`). The call itself is the one
machine of :mod:`gateway.b2bua.call`.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.b2bua.call import Call, CallInfo
from gateway.b2bua.context import pbx_context_headers
from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.leg import InviteSpec, UacLeg, UasLeg
from gateway.b2bua.peer import contact_uri, pbx_address, pbx_peer, whatsapp_address, whatsapp_peer
from gateway.b2bua.port import MediaBridge, SipPort, local_webrtc, uri_user
from gateway.b2bua.session import PbxSession, WhatsAppSession
from gateway.config import Config
from gateway.media.srtp import new_key_material
from gateway.sdp.negotiate import answer_whatsapp_offer
from gateway.sdp.session import parse_sdp
from gateway.sip.ids import new_call_id
from gateway.sip.message import Request
from gateway.sip.transaction import ServerTransaction, Target
from gateway.sip.uri import SipUri


def caller_user(req: Request) -> str:
    """The WhatsApp user in Meta's From (+E.164 or a BSUID), else ``anonymous``."""
    caller = req.from_.uri
    return (caller.user_number if isinstance(caller, SipUri) else None) or "anonymous"


def build(
    cfg: Config,
    key: str,
    info: CallInfo,
    tx: ServerTransaction,
    source: Target,
    sip: SipPort,
    bridge: MediaBridge,
    on_end: Callable[[Call, str], None],
) -> Call:
    """The call for Meta's INVITE ``tx``; raises SdpError or NegotiationError when Meta's
    offer cannot be answered."""
    req = tx.request
    number = cfg.whatsapp.number(info.number)
    mode = number.srtp if number is not None else "auto"
    answer, wa_media = answer_whatsapp_offer(
        parse_sdp(req.body),
        local_address=cfg.media.sdp_address,
        local_port=bridge.whatsapp_port,
        allow_g711=cfg.media.g711_passthrough,
        g711_order=tuple(cfg.pbx.codecs),
        new_key=new_key_material,
        srtp_mode=mode,
        local_webrtc=local_webrtc(cfg, bridge) if mode != "sdes" else None,
        number=info.number,
    )
    wa_via = whatsapp_address(cfg, source.transport)
    meta = whatsapp_peer(wa_via, conn_id=source.conn_id)
    caller = UasLeg(
        key,
        meta,
        sip,
        WhatsAppSession(answer=answer, media=wa_media),
        contact_uri(info.number, wa_via),
        tx,
        answer,
    )
    pbx_via = pbx_address(cfg)
    pbx = pbx_peer(pbx_via, invite_timeout=cfg.pbx.invite_timeout)
    session = PbxSession(
        cfg.media.sdp_address,
        bridge.pbx_port,
        tuple(cfg.pbx.codecs),
        cfg.pbx.dtmf_payload_type,
        pbx_via.host,
    )
    where = cfg.pbx.address  # str(): host:port, [v6]:port
    ruser = cfg.pbx.request_uri_user.format(
        number=info.number, digits=info.number[1:], user=uri_user(info.user)
    )
    display = f'"{_quote(req.from_.display)}" ' if req.from_.display else ""
    spec = InviteSpec(
        uri=f"sip:{ruser}@{where}",
        from_=f"{display}<sip:{uri_user(info.user)}@{pbx_via.hostport}>",
        to=f"<sip:{ruser}@{where}>",
        contact=f"sip:gw@{pbx_via.hostport};transport={pbx_via.transport}",
        target=Target(cfg.pbx.transport, where.host, where.port),
        headers=[
            ("Allow", ALLOW),
            *pbx_context_headers(req, user=info.user, business_number=info.number),
        ],
    )
    call_id = new_call_id(pbx_via.host)
    callee = UacLeg(key, pbx, sip, session, spec, call_id, session.make_offer())
    return Call(key, info, caller, callee, sip, bridge, on_end)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
