"""A call from the business to a WhatsApp user: the PBX is the caller, Meta the callee.

docs/whatsapp-sip.md section 4: Request-URI ``sip:+E164@wa.meta.vc;transport=tls``
(never an IP), From the business number at the configured SIP hostname, no
session timers, an SDES offer with Opus (and G.711 when configured). Meta
challenges with 407: the callee's leg answers once with the number's SIP
password (username without '+'); a second challenge is a failure, not a loop.
Meta's failures reach the PBX mapped (:data:`mapping.META_TO_PBX`) with a
Reason header and Meta's Warning text. The gateway sends the first SRTP packet
as soon as Meta's answer gives the keys. The call itself is the one machine of
:mod:`gateway.b2bua.call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from gateway.b2bua.call import Call, CallInfo
from gateway.b2bua.endpoint import ALLOW
from gateway.b2bua.leg import InviteSpec, UacLeg, UasLeg
from gateway.b2bua.peer import contact_uri, pbx_address, pbx_peer, whatsapp_address, whatsapp_peer
from gateway.b2bua.port import LegAddress, MediaBridge, SipPort, local_webrtc, uri_user
from gateway.b2bua.session import PbxSession, WhatsAppSession
from gateway.config import Config, NumberConfig
from gateway.media.srtp import new_key_material
from gateway.sdp.negotiate import make_whatsapp_offer
from gateway.sip.ids import new_call_id
from gateway.sip.transaction import ServerTransaction, Target


def meta_target(cfg: Config) -> Target:
    """Where an INVITE to Meta goes: whatsapp.meta_proxy over TLS, or the outbound proxy
    (which forwards it to Meta over TLS)."""
    wa = cfg.whatsapp
    if wa.outbound_proxy is not None:
        return Target(wa.proxy_transport, wa.outbound_proxy.host, wa.outbound_proxy.port)
    return Target("tls", wa.meta_proxy.host, wa.meta_proxy.port)


def build(
    cfg: Config,
    key: str,
    info: CallInfo,
    number: NumberConfig,
    tx: ServerTransaction,
    source: Target,
    sip: SipPort,
    bridge: MediaBridge,
    on_end: Callable[[Call, str], None],
    last_offered: Literal["sdes", "dtls"] | None = None,
) -> Call:
    """The call for the PBX's INVITE ``tx``; raises SdpError or NegotiationError when the
    PBX's offer cannot be answered."""
    req = tx.request
    pbx_via = pbx_address(cfg)
    session = PbxSession(
        cfg.media.sdp_address,
        bridge.pbx_port,
        tuple(cfg.pbx.codecs),
        cfg.pbx.dtmf_payload_type,
        pbx_via.host,
    )
    answer = session.answer(req.body)
    # Meta's srtp_key_exchange_protocol governs both directions: the number's mode, or
    # for "auto" what Meta last offered on it (``last_offered``), else SDES.
    dtls = number.outbound_srtp(last_offered) == "dtls"
    wa_offer, wa_keys = make_whatsapp_offer(
        local_address=cfg.media.sdp_address,
        local_port=bridge.whatsapp_port,
        g711=tuple(cfg.pbx.codecs) if number.offer_g711 else (),
        new_key=new_key_material,
        local_webrtc=local_webrtc(cfg, bridge) if dtls else None,
    )
    # Our Contact toward the PBX names the transport its INVITE came on.
    seen = LegAddress(source.transport, pbx_via.host, pbx_via.port)
    contact = f"sip:gw@{seen.hostport};transport={seen.transport}"
    caller = UasLeg(key, pbx_peer(pbx_via), sip, session, contact, tx, answer)
    wa = cfg.whatsapp
    target = meta_target(cfg)
    wa_via = whatsapp_address(cfg, target.transport)
    meta = whatsapp_peer(wa_via, invite_timeout=wa.invite_timeout, ring_timeout=wa.ring_timeout)
    user = uri_user(info.user)
    spec = InviteSpec(
        uri=f"sip:{user}@{wa.meta_domain};transport=tls",
        from_=f"<sip:{info.number}@{wa.hostname}>",
        to=f"<sip:{user}@{wa.meta_domain}>",
        contact=contact_uri(info.number, wa_via),
        target=target,
        headers=[("Allow", ALLOW)],  # no UPDATE, no session timers toward Meta (section 5)
        password=number.read_password,
        number=info.number,
    )
    wa_session = WhatsAppSession(offer=wa_offer, keys=wa_keys)
    call_id = new_call_id(wa_via.host)
    callee = UacLeg(key, meta, sip, wa_session, spec, call_id, wa_offer)
    return Call(key, info, caller, callee, sip, bridge, on_end)
