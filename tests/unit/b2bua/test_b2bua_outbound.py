"""B2BUA calls from the PBX to WhatsApp users, in memory with a fake clock (no sockets).

A PBX INVITE (UDP, G.711 + telephone-event) reaches the gateway's PBX leg; the
gateway places a Meta-shaped INVITE (docs/whatsapp-sip.md sections 4 and 5) toward
``whatsapp.meta_proxy``. Every test drives a real TransactionManager/CallManager
through tests/unit/b2bua_fakes.py (``OutboundHarness``) and asserts on the SIP
messages that would go on the wire, serialised and parsed back. Meta is played
by the test: it challenges with a real :class:`DigestServer` (realm wa.meta.vc,
qop=auth, opaque) and checks the gateway's answer with it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from gateway.b2bua import mapping
from gateway.b2bua.call import State
from gateway.sdp.session import parse_sdp
from gateway.sip.auth import VerifyResult, parse_credentials
from gateway.sip.message import REASON_PHRASES, Request, Response
from gateway.sip.transaction import Target
from tests.emulator import META_WARNINGS
from tests.unit.b2bua.b2bua_fakes import (
    BSUID,
    BUSINESS,
    HOSTNAME,
    MEDIA_ADDRESS,
    META_KEY,
    META_RR_ANSWER,
    META_SDP,
    META_SDP_NO_CRYPTO,
    META_TO_TAG,
    PASSWORD,
    PBX_AGENT,
    PBX_HOST,
    PBX_PORT,
    USER,
    WEBRTC_LOCAL,
    FakeBridgeFactory,
    OutboundHarness,
    OutFlow,
    Sent,
    meta_response,
    pbx_cancel,
    pbx_invite,
    pbx_out_request,
    pbx_sdp,
    response_of,
    response_to,
)

OTHER = "+17015550000"  # a second configured business number
PBX_TARGET = Target("udp", PBX_HOST, PBX_PORT)
META_DEFAULT_TARGET = Target("tls", "wa.meta.vc", 5061)
META_CONTACT_URI = f"sip:{USER}@wa.meta.vc;transport=tls;ob"
META_ROUTE = list(reversed(META_RR_ANSWER))
GW_PBX_CONTACT = "sip:gw@127.0.0.1:5090;transport=udp"
TWO_NUMBERS = [
    {"number": BUSINESS, "sip_password_file": "wa.pass"},
    {"number": OTHER, "sip_password_file": "wa.pass"},
]


@pytest.fixture
def h(tmp_path: Path) -> OutboundHarness:
    return OutboundHarness(tmp_path)


# --------------------------------------------------------------------------- helpers


def statuses(sent: list[Sent]) -> list[int]:
    return [s.message.status for s in sent if isinstance(s.message, Response)]


def methods(sent: list[Sent]) -> list[str]:
    return [s.message.method for s in sent if isinstance(s.message, Request)]


def one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def final_to_pbx(h: OutboundHarness, sent: list[Sent]) -> Response:
    finals = [r for r in h.responses(h.to_pbx(sent)) if r.status >= 200]
    assert len(finals) == 1, finals
    return finals[0]


def meta_requests(h: OutboundHarness, sent: list[Sent], method: str | None = None) -> list[Sent]:
    return [
        s
        for s in h.to_meta(sent)
        if isinstance(s.message, Request) and (method is None or s.message.method == method)
    ]


def assert_gone(h: OutboundHarness, flow: OutFlow) -> None:
    call = flow.call
    assert call.state is State.ENDED
    assert call.key not in h.calls.calls
    assert call not in h.calls._by_server_tx.values()
    assert all(v[0] is not call for v in h.calls._by_local.values())
    assert flow.bridge.closed == 1


def rejected(h: OutboundHarness, target: str = USER, **kwargs: Any) -> Response:
    """A PBX INVITE the gateway refuses at admission: nothing reaches Meta."""
    before = len(h.calls.calls)
    h.from_pbx(pbx_invite(target, **kwargs))
    sent = h.sent()
    assert h.to_meta(sent) == [], [s.message for s in sent]
    assert len(h.calls.calls) == before
    resp = final_to_pbx(h, sent)
    assert resp.to.tag
    return resp


def offer_key(invite: Request, tag: int = 1) -> bytes:
    """Our SDES key for crypto ``tag`` in the offer we sent Meta."""
    for crypto in parse_sdp(invite.body).media[0].cryptos():
        if crypto.tag == tag:
            inline = crypto.to_value().split("inline:", 1)[1].split("|", 1)[0].split(" ", 1)[0]
            return base64.b64decode(inline)
    raise AssertionError(f"no crypto tag {tag}")


def rtpmaps(body: bytes) -> list[str]:
    media = parse_sdp(body).media[0]
    return [f"{m.encoding}/{m.clock_rate}" for m in media.rtpmaps().values()]


def answered(h: OutboundHarness, target: str = USER, **kwargs: Any) -> OutFlow:
    flow = h.place_call(target, **kwargs)
    h.connect(flow)
    return flow


# =========================================================================== the INVITE to Meta


def test_meta_invite_shape(h: OutboundHarness) -> None:
    flow = h.place_call()
    sent = flow.sent_at_start
    # The PBX gets 100 Trying (transaction layer) and nothing else yet.
    assert statuses(h.to_pbx(sent)) == [100]
    inv = flow.meta_invite
    assert inv.uri == f"sip:{USER}@wa.meta.vc;transport=tls"
    assert flow.meta_target == META_DEFAULT_TARGET
    assert str(inv.from_.uri) == f"sip:{BUSINESS}@{HOSTNAME}"
    assert inv.from_.tag
    assert str(inv.to.uri) == f"sip:{USER}@wa.meta.vc" and inv.to.tag is None
    contact = inv.contact
    assert contact is not None
    assert str(contact.uri) == f"sip:{BUSINESS}@{HOSTNAME}:5061;transport=tls"
    via = inv.top_via
    assert (via.transport.upper(), via.host, via.port) == ("TLS", HOSTNAME, 5061)
    assert (inv.cseq.seq, inv.cseq.method) == (1, "INVITE")
    assert inv.headers.get("Max-Forwards") == "70"
    assert inv.call_id and inv.call_id != flow.pbx_invite.call_id
    # No session timers, no UPDATE toward Meta (section 5), nothing of the PBX's copied.
    for name in ("Session-Expires", "Min-SE", "Require", "Record-Route", "Route"):
        assert name not in inv.headers, name
    assert "timer" not in (inv.headers.get("Supported") or "").lower()
    allow = [m.strip() for m in (inv.headers.get("Allow") or "").split(",")]
    assert "INVITE" in allow and "BYE" in allow and "UPDATE" not in allow
    assert inv.headers.get("User-Agent") == "wa-sip-gateway/test"
    # SDES offer: Opus + telephone-event/8000, no G.711 unless configured, crypto lines.
    assert inv.content_type == "application/sdp"
    sdp = parse_sdp(inv.body)
    m = sdp.media[0]
    assert m.proto == "RTP/SAVP" and m.port == flow.bridge.whatsapp_port
    conn = m.effective_connection(sdp)
    assert conn is not None and conn.address == MEDIA_ADDRESS
    assert rtpmaps(inv.body) == ["opus/48000", "telephone-event/8000"]
    cryptos = m.cryptos()
    assert [c.tag for c in cryptos] == [1, 2]
    assert cryptos[0].suite == "AES_CM_128_HMAC_SHA1_80"
    assert len(offer_key(inv)) == 30
    # The PBX's offer is known: the bridge has the PBX side (early audio is buffered).
    assert flow.bridge.order() == ["pbx"]
    pbx = flow.bridge.last("pbx")
    assert (pbx.remote_address, pbx.remote_port, pbx.codec) == (PBX_HOST, 10000, "PCMU")
    assert flow.call.state is State.CALLING


def test_request_uri_uses_meta_domain_even_when_meta_proxy_is_an_ip(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"meta_proxy": "157.240.19.1:5061"}})
    flow = h.place_call()
    assert flow.meta_invite.uri == f"sip:{USER}@wa.meta.vc;transport=tls"
    assert str(flow.meta_invite.to.uri) == f"sip:{USER}@wa.meta.vc"
    assert flow.meta_target == Target("tls", "157.240.19.1", 5061)


def test_meta_domain_is_configurable(tmp_path: Path) -> None:
    cfg = {"whatsapp": {"meta_domain": "wa.example.test", "meta_proxy": "127.0.0.1:15061"}}
    h = OutboundHarness(tmp_path, cfg)
    flow = h.place_call()
    assert flow.meta_invite.uri == f"sip:{USER}@wa.example.test;transport=tls"
    assert flow.meta_target == Target("tls", "127.0.0.1", 15061)


def test_contact_and_via_use_whatsapp_advertise(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"advertise": "gw.example.net:5071"}})
    inv = h.place_call().meta_invite
    contact = inv.contact
    assert contact is not None
    assert str(contact.uri) == f"sip:{BUSINESS}@gw.example.net:5071;transport=tls"
    assert (inv.top_via.host, inv.top_via.port) == ("gw.example.net", 5071)
    # From stays at the configured SIP server hostname (Meta: mismatch gives 403).
    assert str(inv.from_.uri) == f"sip:{BUSINESS}@{HOSTNAME}"


def test_g711_offered_only_when_the_number_enables_it(tmp_path: Path) -> None:
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "offer_g711": True}]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    maps = rtpmaps(h.place_call().meta_invite.body)
    assert set(maps) == {"PCMU/8000", "PCMA/8000", "opus/48000", "telephone-event/8000"}
    assert maps.index("PCMU/8000") < maps.index("opus/48000")  # G.711 preferred: no transcoding


def test_g711_answer_from_meta_is_used(tmp_path: Path) -> None:
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "offer_g711": True}]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    flow = h.place_call()
    key = base64.b64encode(META_KEY).decode()
    answer = (
        "v=0\r\no=- 1 1 IN IP4 57.144.219.49\r\ns=-\r\nc=IN IP4 57.144.219.49\r\nt=0 0\r\n"
        "m=audio 3480 RTP/SAVP 0 126\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\na=sendrecv\r\n"
    )
    h.meta_challenges(flow)
    sent = h.meta_reply(flow, 200, sdp=answer)
    assert final_to_pbx(h, sent).status == 200
    assert flow.bridge.last("whatsapp").codec == "PCMU"


# =========================================================================== who is called


@pytest.mark.parametrize(
    ("dialled", "user"),
    [
        (USER, USER),
        (USER[1:], USER),
        ("00" + USER[1:], USER),
        ("+4915123456789", "+4915123456789"),
        (BSUID, BSUID),
    ],
    ids=["e164", "digits", "00-prefix", "de-mobile", "bsuid"],
)
def test_target_forms(h: OutboundHarness, dialled: str, user: str) -> None:
    flow = h.place_call(dialled)
    assert flow.meta_invite.uri == f"sip:{user}@wa.meta.vc;transport=tls"
    assert str(flow.meta_invite.to.uri) == f"sip:{user}@wa.meta.vc"
    assert flow.call.info.user == user


@pytest.mark.parametrize(
    ("dialled", "status"),
    [
        ("not-a-number", 404),
        ("agent", 404),
        ("+1-219-555", 404),
        ("12345", 484),
        ("+1234567", 484),
        ("1234567890123456", 484),
        ("0012345", 484),
    ],
)
def test_unusable_targets_are_refused(h: OutboundHarness, dialled: str, status: int) -> None:
    assert rejected(h, dialled).status == status


# =========================================================================== business number


def test_business_number_from_the_configured_header(tmp_path: Path) -> None:
    cfg = {"whatsapp": {"numbers": TWO_NUMBERS, "default_number": OTHER}}
    h = OutboundHarness(tmp_path, cfg)
    flow = h.place_call(headers=[("X-WA-Business-Number", BUSINESS)])
    assert str(flow.meta_invite.from_.uri) == f"sip:{BUSINESS}@{HOSTNAME}"
    assert flow.call.info.number == BUSINESS
    # The routing header stays on the PBX side.
    assert "X-WA-Business-Number" not in flow.meta_invite.headers


def test_business_number_header_digits_are_normalised(tmp_path: Path) -> None:
    cfg = {"whatsapp": {"numbers": TWO_NUMBERS, "default_number": OTHER}}
    h = OutboundHarness(tmp_path, cfg)
    flow = h.place_call(headers=[("x-wa-business-number", " " + BUSINESS[1:] + " ")])
    assert flow.call.info.number == BUSINESS


def test_business_number_header_name_is_configurable(tmp_path: Path) -> None:
    cfg = {
        "whatsapp": {"numbers": TWO_NUMBERS, "default_number": OTHER},
        "pbx": {"business_number_header": "X-Caller-Business"},
    }
    h = OutboundHarness(tmp_path, cfg)
    assert h.place_call(headers=[("X-Caller-Business", BUSINESS)]).call.info.number == BUSINESS


@pytest.mark.parametrize("value", ["+15559990000", "garbage", ""])
def test_unknown_business_number_header_is_403_not_the_default(
    h: OutboundHarness, value: str
) -> None:
    assert h.cfg.whatsapp.default_number == BUSINESS
    assert rejected(h, headers=[("X-WA-Business-Number", value)]).status == 403


def test_business_number_from_the_from_user(tmp_path: Path) -> None:
    cfg = {"whatsapp": {"numbers": TWO_NUMBERS, "default_number": BUSINESS}}
    h = OutboundHarness(tmp_path, cfg)
    flow = h.place_call(from_user=OTHER)
    assert str(flow.meta_invite.from_.uri) == f"sip:{OTHER}@{HOSTNAME}"
    flow = h.place_call(from_user=OTHER[1:])
    assert flow.call.info.number == OTHER


def test_unconfigured_from_user_falls_back_to_the_default(tmp_path: Path) -> None:
    cfg = {"whatsapp": {"numbers": TWO_NUMBERS, "default_number": OTHER}}
    h = OutboundHarness(tmp_path, cfg)
    assert h.place_call(from_user="+15559990000").call.info.number == OTHER
    assert h.place_call(from_user=PBX_AGENT).call.info.number == OTHER


def test_no_business_number_at_all_is_403(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"default_number": None}})
    assert h.cfg.whatsapp.default_number is None
    assert rejected(h).status == 403
    # The From user alone is enough when it is configured.
    assert h.place_call(from_user=BUSINESS).call.info.number == BUSINESS


# =========================================================================== digest toward Meta


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_407_is_answered_once(tmp_path: Path, algorithm: str) -> None:
    h = OutboundHarness(tmp_path, meta_algorithm=algorithm)
    flow = h.place_call()
    first = flow.meta_invite
    sent = h.meta_challenges(flow)
    assert h.to_pbx(sent) == []  # the challenge is the gateway's business
    ack, again = (s.request for s in meta_requests(h, sent))
    # The 407 is ACKed hop-by-hop (same branch, To of the 407).
    assert ack.method == "ACK" and (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.top_via.branch == first.top_via.branch and ack.to.tag == "meta-407"
    # Exactly one new INVITE: CSeq+1, same Call-ID and From tag, a new branch.
    assert again.method == "INVITE"
    assert (again.cseq.seq, again.cseq.method) == (2, "INVITE")
    assert again.call_id == first.call_id
    assert again.from_.tag == first.from_.tag
    assert again.to.tag is None
    assert again.top_via.branch != first.top_via.branch
    assert again.uri == first.uri and again.body == first.body
    value = again.headers.get("Proxy-Authorization")
    assert value is not None and "Authorization" not in again.headers
    creds = parse_credentials(value)
    assert creds.username == BUSINESS[1:]
    assert creds.realm == "wa.meta.vc"
    assert creds.uri == first.uri
    assert creds.algorithm == algorithm
    assert creds.qop == "auth" and creds.nc == 1 and creds.cnonce
    assert creds.opaque == "meta-opaque-1"
    now = h.scheduler.time()
    assert h.meta_digest.verify(creds, "INVITE", again.uri, PASSWORD, now) is VerifyResult.OK
    assert flow.call.callee.challenges == 1
    assert len(h.manager.pop_outgoing()) == 0


def test_401_is_answered_with_authorization(h: OutboundHarness) -> None:
    flow = h.place_call()
    sent = h.meta_challenges(flow, status=401)
    again = meta_requests(h, sent, "INVITE")[0].request
    assert "Proxy-Authorization" not in again.headers
    creds = parse_credentials(again.headers.get("Authorization") or "")
    now = h.scheduler.time()
    assert h.meta_digest.verify(creds, "INVITE", again.uri, PASSWORD, now) is VerifyResult.OK


@pytest.mark.parametrize("status", [407, 401])
def test_second_challenge_is_403_not_a_loop(h: OutboundHarness, status: int) -> None:
    flow = h.place_call()
    h.meta_challenges(flow, status=status)
    answered_invite = flow.meta_invite
    sent = h.meta_challenges(flow, status=status)
    assert methods(h.to_meta(sent)) == ["ACK"]  # no third INVITE
    assert flow.meta_invite is answered_invite
    resp = final_to_pbx(h, sent)
    assert resp.status == 403
    assert resp.to.tag == flow.call.pbx.tag
    reason = resp.headers.get("Reason") or ""
    assert reason.startswith("SIP;cause=") and "credentials" in reason
    assert flow.call.meta_failure is not None
    assert flow.call.meta_failure["code"] == status
    assert flow.call.meta_failure["reason"] == "bad_digest"
    assert flow.call.final_status == 403
    assert_gone(h, flow)


def test_stale_second_challenge_gets_one_more_try(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    sent = h.meta_challenges(flow, stale=True)
    again = one(meta_requests(h, sent, "INVITE")).request
    assert (again.cseq.seq, again.cseq.method) == (3, "INVITE")
    creds = parse_credentials(again.headers.get("Proxy-Authorization") or "")
    now = h.scheduler.time()
    assert h.meta_digest.verify(creds, "INVITE", again.uri, PASSWORD, now) is VerifyResult.OK
    assert h.to_pbx(sent) == []
    # A stale nonce once more is a failure: the password is not the problem we can fix.
    sent = h.meta_challenges(flow, stale=True)
    assert methods(h.to_meta(sent)) == ["ACK"]
    assert final_to_pbx(h, sent).status == 403


def test_stale_then_answer_connects(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_challenges(flow, stale=True)
    sent = h.meta_reply(flow, 200)
    assert final_to_pbx(h, sent).status == 200
    ack = one(meta_requests(h, sent, "ACK")).request
    assert ack.cseq.seq == 3


def test_missing_password_is_403_without_a_retry(h: OutboundHarness, tmp_path: Path) -> None:
    (tmp_path / "wa.pass").unlink()
    flow = h.place_call()
    sent = h.meta_challenges(flow)
    assert methods(h.to_meta(sent)) == ["ACK"]
    assert final_to_pbx(h, sent).status == 403
    assert PASSWORD not in repr(flow.call.record())
    assert_gone(h, flow)


def test_unusable_challenge_is_403(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.from_meta(
        meta_response(
            flow.meta_invite,
            407,
            to_tag="x",
            extra=[("Proxy-Authenticate", 'Digest realm="wa.meta.vc", nonce="n", algorithm=AKAv1')],
        )
    )
    sent = h.sent()
    assert methods(h.to_meta(sent)) == ["ACK"]
    assert final_to_pbx(h, sent).status == 403
    assert_gone(h, flow)


def test_password_never_on_the_wire(h: OutboundHarness) -> None:
    flow = answered(h)
    h.meta_out(flow, "BYE")
    for sent in h.log:
        assert PASSWORD.encode() not in sent.message.to_bytes()


# =========================================================================== provisional and answer


def test_180_and_183_relayed_once_each_with_our_to_tag(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    assert h.to_pbx(h.meta_reply(flow, 100)) == []  # the PBX already had 100 Trying
    assert flow.call.state is State.EARLY
    sent = h.meta_reply(flow, 180)
    ring = one(h.responses(h.to_pbx(sent)))
    assert ring.status == 180
    assert ring.to.tag == flow.call.pbx.tag
    assert ring.contact is not None and str(ring.contact.uri) == GW_PBX_CONTACT
    assert ring.call_id == flow.pbx_invite.call_id
    assert h.to_meta(sent) == []
    assert h.meta_reply(flow, 180) == []  # once
    sent = h.meta_reply(flow, 183)
    early = one(h.responses(h.to_pbx(sent)))
    assert early.status == 183 and early.to.tag == flow.call.pbx.tag
    assert h.meta_reply(flow, 183) == []
    assert h.meta_reply(flow, 181) == []  # another 18x is "ringing" again: already said


def test_answer(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    sent = h.meta_reply(flow, 200)
    # ACK to Meta: end to end, through Meta's route set, to its Contact.
    ack_sent = one(meta_requests(h, sent))
    ack = ack_sent.request
    assert ack.method == "ACK"
    assert ack.uri == META_CONTACT_URI
    assert ack.headers.lines("Route") == META_ROUTE
    assert ack_sent.target == META_DEFAULT_TARGET  # the first route: wa.meta.vc:5061 over TLS
    assert (ack.cseq.seq, ack.cseq.method) == (2, "ACK")
    assert ack.call_id == flow.meta_invite.call_id
    assert ack.from_.tag == flow.meta_invite.from_.tag
    assert ack.to.tag == META_TO_TAG
    assert ack.top_via.transport.upper() == "TLS"
    assert ack.top_via.branch != flow.meta_invite.top_via.branch  # 2xx ACK: new transaction
    assert "Proxy-Authorization" not in ack.headers
    # Media: the PBX side first (at the INVITE), then Meta's from its SDES answer.
    assert flow.bridge.order() == ["pbx", "whatsapp"]
    wa = flow.bridge.last("whatsapp")
    assert (wa.remote_address, wa.remote_port, wa.codec) == ("57.144.219.49", 3480, "opus")
    assert wa.srtp is not None
    assert wa.srtp.remote_key == META_KEY
    assert wa.srtp.local_key == offer_key(flow.meta_invite, wa.srtp.tag)
    assert wa.dtmf_payload_type == 126
    # 200 to the PBX: our To tag (that of the 180), a Contact, our G.711 answer.
    ok = final_to_pbx(h, sent)
    assert ok.status == 200
    assert ok.to.tag == flow.call.pbx.tag
    assert ok.contact is not None and str(ok.contact.uri) == GW_PBX_CONTACT
    assert ok.cseq.seq == 1 and ok.call_id == flow.pbx_invite.call_id
    answer = parse_sdp(ok.body)
    m = answer.media[0]
    assert m.proto == "RTP/AVP" and m.port == flow.bridge.pbx_port
    conn = m.effective_connection(answer)
    assert conn is not None and conn.address == MEDIA_ADDRESS
    assert rtpmaps(ok.body)[0] == "PCMU/8000" and "telephone-event/8000" in rtpmaps(ok.body)
    assert "crypto" not in ok.body.decode()
    assert flow.call.state is State.CONFIRMED
    assert flow.call.answered_at == h.scheduler.time()
    # The PBX ACKs: nothing more is sent, and our 2xx is no longer retransmitted.
    flow.answered = ok
    flow.meta_ok = response_to_meta_ok(flow)
    h.from_pbx(pbx_out_request(flow, "ACK", 1))
    assert h.sent() == []
    h.advance(40)
    assert h.sent() == []
    assert flow.call.state is State.CONFIRMED
    assert flow.bridge.closed == 0


def response_to_meta_ok(flow: OutFlow) -> Response:
    return response_of(meta_response(flow.meta_invite, 200, sdp=META_SDP))


def test_answer_without_any_provisional(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    sent = h.meta_reply(flow, 200)
    assert statuses(h.to_pbx(sent)) == [200]
    assert methods(h.to_meta(sent)) == ["ACK"]


def test_meta_200_retransmission_is_acked_again(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.meta_reply(flow, 200)
    assert methods(sent) == ["ACK"] and statuses(sent) == []
    assert flow.bridge.order() == ["pbx", "whatsapp"]


def test_meta_answer_without_challenge(h: OutboundHarness) -> None:
    flow = h.place_call()
    sent = h.meta_reply(flow, 200)
    assert final_to_pbx(h, sent).status == 200
    assert one(meta_requests(h, sent)).request.cseq.seq == 1


def test_unusable_meta_sdp_is_bye_and_488(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    sent = h.meta_reply(flow, 200, sdp=META_SDP_NO_CRYPTO)
    assert methods(h.to_meta(sent)) == ["ACK", "BYE"]
    assert final_to_pbx(h, sent).status == 488
    assert "whatsapp" not in flow.bridge.order()
    assert_gone(h, flow)


def test_2xx_to_the_pbx_never_acked_hangs_up_both_legs(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.connect(flow, ack=False)
    h.advance(64 * 0.5 + 1)
    sent = h.sent()
    assert methods(h.to_meta(sent)) == ["BYE"]
    assert "BYE" in methods(h.to_pbx(sent))
    assert flow.call.end_reason == "pbx_no_ack"
    assert_gone(h, flow)


# =========================================================================== BYE


def test_bye_from_meta(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.meta_out(flow, "BYE", duration="37")
    ok = one(h.responses(h.to_meta(sent)))
    assert ok.status == 200 and ok.cseq.method == "BYE"
    bye_sent = one(h.to_pbx(sent))
    bye = bye_sent.request
    assert bye.method == "BYE"
    assert bye.uri == f"sip:{PBX_AGENT}@{PBX_HOST}:{PBX_PORT}"  # the PBX's Contact
    assert bye_sent.target == PBX_TARGET
    assert bye.call_id == flow.pbx_invite.call_id
    assert bye.from_.tag == flow.call.pbx.tag
    assert bye.to.tag == flow.pbx_invite.from_.tag
    assert (bye.cseq.seq, bye.cseq.method) == (1, "BYE")
    assert bye.headers.get("Reason") == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    call = flow.call
    assert call.meta_call_duration == "37"
    record = call.record()
    assert record["meta_call_duration"] == "37"
    assert record["direction"] == "outbound"
    assert record["business_number"] == BUSINESS and record["user"] == USER
    assert record["meta_call_id"] == flow.meta_invite.call_id
    assert record["pbx_call_id"] == flow.pbx_invite.call_id
    assert record["status"] == 200 and record["meta_failure"] is None
    assert call.end_reason == "meta_bye" and call.ended_by == "whatsapp"
    assert [(c.key, why) for c, why in h.ended] == [(call.key, "meta_bye")]
    assert_gone(h, flow)
    # The PBX's 200 to our BYE is absorbed.
    h.from_pbx(response_to(bye, 200, to_tag=None))
    assert h.sent() == []


def test_bye_from_the_pbx(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.pbx_out(flow, "BYE")
    ok = one(h.responses(h.to_pbx(sent)))
    assert ok.status == 200 and ok.cseq.method == "BYE"
    bye_sent = one(meta_requests(h, sent))
    bye = bye_sent.request
    assert bye.method == "BYE"
    assert bye.uri == META_CONTACT_URI
    assert bye.headers.lines("Route") == META_ROUTE
    assert bye_sent.target == META_DEFAULT_TARGET
    assert (bye.cseq.seq, bye.cseq.method) == (3, "BYE")  # after INVITE 1 and 2
    assert bye.call_id == flow.meta_invite.call_id
    assert bye.from_.tag == flow.meta_invite.from_.tag
    assert bye.to.tag == META_TO_TAG
    assert bye.top_via.transport.upper() == "TLS" and bye.top_via.host == HOSTNAME
    assert "Proxy-Authorization" not in bye.headers
    assert flow.call.end_reason == "pbx_bye" and flow.call.ended_by == "pbx"
    assert_gone(h, flow)
    h.from_meta(meta_response(bye, 200))
    assert h.sent() == []


def test_meta_options_in_dialog(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.meta_out(flow, "OPTIONS")
    assert statuses(sent) == [200] and h.to_pbx(sent) == []
    assert flow.call.state is State.CONFIRMED


def test_meta_reinvite_is_refused_and_the_call_stays(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.meta_out(flow, "INVITE")
    assert [s for s in statuses(sent) if s >= 200] == [488]
    assert h.to_pbx(sent) == []
    assert flow.call.state is State.CONFIRMED


def test_no_media_hangs_up_both_legs(h: OutboundHarness) -> None:
    flow = answered(h)
    flow.bridge.on_no_media("pbx")
    sent = h.sent()
    assert methods(h.to_meta(sent)) == ["BYE"] and methods(h.to_pbx(sent)) == ["BYE"]
    assert "cause=408" in (meta_requests(h, sent)[0].request.headers.get("Reason") or "")
    assert flow.call.end_reason == "no_media_pbx"
    assert_gone(h, flow)


def test_media_setup_failure_hangs_up_both_legs_with_the_reason(h: OutboundHarness) -> None:
    """WebRTC mode: the bridge reports why the WhatsApp leg's media never came up."""
    flow = answered(h)
    flow.bridge.on_no_media("whatsapp", "DTLS fingerprint mismatch")
    sent = h.sent()
    assert methods(h.to_meta(sent)) == ["BYE"] and methods(h.to_pbx(sent)) == ["BYE"]
    reason = meta_requests(h, sent)[0].request.headers.get("Reason") or ""
    assert reason == 'SIP;cause=488;text="whatsapp media: DTLS fingerprint mismatch"'
    assert flow.call.end_reason == "media_failed_whatsapp"
    assert_gone(h, flow)


# =========================================================================== srtp mode (issue 14)


def _numbers(srtp: str) -> dict[str, Any]:
    return {
        "whatsapp": {
            "numbers": [{"number": BUSINESS, "sip_password_file": "wa.pass", "srtp": srtp}]
        }
    }


def _is_webrtc(body: bytes) -> bool:
    text = body.decode()
    return "UDP/TLS/RTP/SAVPF" in text and "a=crypto" not in text


def test_a_dtls_number_offers_webrtc_media_to_meta(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, _numbers("dtls"), bridges=FakeBridgeFactory(webrtc=WEBRTC_LOCAL))
    text = h.place_call().meta_invite.body.decode()
    assert _is_webrtc(text.encode())
    assert "a=setup:actpass" in text and "a=ice-ufrag:gwUfrag1" in text
    assert f"a=fingerprint:sha-256 {WEBRTC_LOCAL[2][1]}" in text and "a=ice-lite" not in text
    assert "a=candidate:" in text and "a=rtcp-mux" in text


def test_auto_offers_what_meta_last_offered_on_the_number(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, _numbers("auto"), bridges=FakeBridgeFactory(webrtc=WEBRTC_LOCAL))
    assert not _is_webrtc(h.place_call().meta_invite.body)  # nothing seen yet: SDES
    h.calls.srtp_seen[BUSINESS] = "dtls"  # a call from WhatsApp offered DTLS
    assert _is_webrtc(h.place_call().meta_invite.body)
    h.calls.srtp_seen[BUSINESS] = "sdes"
    assert not _is_webrtc(h.place_call().meta_invite.body)


# =========================================================================== PBX re-INVITE / UPDATE


def test_pbx_hold_and_resume_are_answered_locally(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.pbx_out(flow, "INVITE", sdp=pbx_sdp("sendonly", version=2))
    assert h.to_meta(sent) == []  # Meta answers re-INVITE 500 and drops the call
    ok = final_to_pbx(h, sent)
    assert ok.status == 200 and ok.cseq.method == "INVITE"
    assert ok.contact is not None and str(ok.contact.uri) == GW_PBX_CONTACT
    assert parse_sdp(ok.body).media[0].direction() == "recvonly"
    assert flow.bridge.last("pbx").direction == "recvonly"
    h.from_pbx(pbx_out_request(flow, "ACK", flow.pbx_cseq))
    assert h.sent() == []
    sent = h.pbx_out(flow, "INVITE", sdp=pbx_sdp("sendrecv", version=3))
    assert h.to_meta(sent) == []
    assert parse_sdp(final_to_pbx(h, sent).body).media[0].direction() == "sendrecv"
    assert flow.bridge.last("pbx").direction == "sendrecv"
    assert flow.call.state is State.CONFIRMED


def test_pbx_session_refresh_update_is_answered_locally(h: OutboundHarness) -> None:
    flow = answered(h)
    sent = h.pbx_out(flow, "UPDATE")
    assert statuses(sent) == [200] and h.to_meta(sent) == []
    sent = h.pbx_out(flow, "INVITE")  # offer-less re-INVITE: we offer in the 200
    ok = final_to_pbx(h, sent)
    assert ok.status == 200 and ok.body
    assert h.to_meta(sent) == []


# =========================================================================== Meta failures

Case = tuple[int, str | None, str | None]  # Meta's code, warning label, warning text
WARNING_CASES: list[Case] = [(403, key, text) for key, text in sorted(META_WARNINGS.items())]
PLAIN_CASES: list[Case] = [(code, None, None) for code in sorted(mapping.META_TO_PBX)]


@pytest.mark.parametrize(
    ("code", "label", "text"),
    PLAIN_CASES + WARNING_CASES,
    ids=[f"{c}" for c, _, _ in PLAIN_CASES] + [f"403-{k}" for _, k, _ in WARNING_CASES],
)
def test_meta_failure_reaches_the_pbx_mapped(
    h: OutboundHarness, code: int, label: str | None, text: str | None
) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    warning = f'399 wa.meta.vc "{text}"' if text else None
    extra = [("Warning", warning)] if warning else []
    sent = h.meta_reply(flow, code, extra=extra)
    # The failure is ACKed toward Meta (same branch as the INVITE).
    ack = one(meta_requests(h, sent)).request
    assert ack.method == "ACK" and ack.top_via.branch == flow.meta_invite.top_via.branch
    resp = final_to_pbx(h, sent)
    assert resp.status == mapping.META_TO_PBX[code]
    assert resp.to.tag == flow.call.pbx.tag  # the tag of the 180 it already had
    reason = resp.headers.get("Reason") or ""
    assert reason.startswith(f"SIP;cause={code};text=")
    if warning:
        assert resp.headers.get("Warning") == warning
        assert text is not None and text.replace('"', "'") in reason
        assert resp.reason == text  # the status line says it too (FreeSWITCH keeps only that)
    else:
        assert "Warning" not in resp.headers
        assert resp.reason == REASON_PHRASES[resp.status]
    failure = flow.call.meta_failure
    assert failure is not None
    assert failure["code"] == code
    assert failure["reason"] == (label or "none")
    assert failure["warning"] == text
    assert flow.call.final_status == resp.status
    assert flow.call.ended_by == "whatsapp"
    assert flow.call.record()["meta_failure"] == failure
    assert_gone(h, flow)
    # The PBX ACKs our failure; nothing else happens.
    h.from_pbx(response_to_ack(flow, resp))
    assert h.sent() == []


def response_to_ack(flow: OutFlow, resp: Response) -> bytes:
    inv = flow.pbx_invite
    lines = [
        f"ACK {inv.uri} SIP/2.0",
        f"Via: {inv.headers.lines('Via')[0]}",
        "Max-Forwards: 70",
        f"From: {inv.headers.get('From')}",
        f"To: {resp.headers.get('To')}",
        f"Call-ID: {inv.call_id}",
        "CSeq: 1 ACK",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_the_403_reasons_are_told_apart(h: OutboundHarness) -> None:
    labels = []
    for text in META_WARNINGS.values():
        flow = h.place_call()
        h.meta_reply(flow, 403, extra=[("Warning", f'399 wa.meta.vc "{text}"')])
        assert flow.call.meta_failure is not None
        labels.append(flow.call.meta_failure["reason"])
    assert labels == list(META_WARNINGS)


@pytest.mark.parametrize(("code", "pbx"), [(302, 480), (405, 480), (500, 502), (600, 603)])
def test_meta_failure_outside_the_table(h: OutboundHarness, code: int, pbx: int) -> None:
    flow = h.place_call()
    sent = h.meta_reply(flow, code)
    resp = final_to_pbx(h, sent)
    assert resp.status == pbx
    assert (resp.headers.get("Reason") or "").startswith(f"SIP;cause={code};")
    assert_gone(h, flow)


def test_meta_warning_as_reason_phrase_is_one_clean_line(h: OutboundHarness) -> None:
    flow = h.place_call()
    warning = '399 wa.meta.vc "No approved\tcall permission ' + "x" * 200 + '"'
    resp = final_to_pbx(h, h.meta_reply(flow, 403, extra=[("Warning", warning)]))
    assert resp.reason.startswith("No approved call permission xxx")
    assert len(resp.reason) == 100 and resp.reason.isprintable()


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (None, None),
        ("", None),
        (" \x01 ", None),
        ("a\r\nb", "a b"),
        ("  spaced   out ", "spaced out"),
    ],
)
def test_reason_phrase(text: str | None, phrase: str | None) -> None:
    assert mapping.reason_phrase(text) == phrase


def test_quotes_in_meta_warning_do_not_break_the_reason(h: OutboundHarness) -> None:
    flow = h.place_call()
    warning = '399 wa.meta.vc "the "quoted" part"'
    resp = final_to_pbx(h, h.meta_reply(flow, 403, extra=[("Warning", warning)]))
    reason = resp.headers.get("Reason") or ""
    assert reason.count('"') == 2, reason


# =========================================================================== Meta silent or gone


def test_no_response_from_meta_within_invite_timeout_is_503(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 3.0}})
    flow = h.place_call()
    h.advance(2.99)
    assert h.sent() == []  # TLS: no retransmissions, and still waiting
    h.advance(0.02)
    sent = h.sent()
    resp = final_to_pbx(h, sent)
    assert resp.status == 503
    assert (resp.headers.get("Reason") or "").startswith("SIP;cause=503;")
    assert h.to_meta(sent) == []  # CANCEL waits for a provisional (RFC 3261 9.1)
    assert_gone(h, flow)
    # Meta wakes up: the pending CANCEL goes out, its 487 is ACKed; the PBX hears nothing.
    sent = h.meta_reply(flow, 180)
    cancel = one(meta_requests(h, sent)).request
    assert cancel.method == "CANCEL" and cancel.top_via.branch == flow.meta_invite.top_via.branch
    h.from_meta(meta_response(cancel, 200))
    sent = h.meta_reply(flow, 487)
    assert methods(sent) == ["ACK"] and h.to_pbx(sent) == []


def test_invite_timeout_restarts_after_the_challenge(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 3.0}})
    flow = h.place_call()
    h.advance(2.5)
    h.meta_challenges(flow)
    h.advance(2.5)
    assert h.sent() == []
    h.advance(0.6)
    assert final_to_pbx(h, h.sent()).status == 503


def test_a_provisional_stops_the_invite_timeout(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 3.0}})
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.advance(20)
    assert h.to_pbx(h.sent()) == []
    assert flow.call.state is State.EARLY


def test_ringing_is_bounded_by_ring_timeout(tmp_path: Path) -> None:
    """The user's phone rings on and on: 480 to the PBX and CANCEL toward Meta."""
    h = OutboundHarness(tmp_path, {"whatsapp": {"ring_timeout": 30.0}})
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.sent()
    h.advance(29.9)
    assert h.to_pbx(h.sent()) == []
    h.advance(0.2)
    sent = h.sent()
    assert final_to_pbx(h, sent).status == 480
    assert [s.request.method for s in meta_requests(h, sent)] == ["CANCEL"]
    assert_gone(h, flow)


def test_meta_answers_after_our_invite_timeout(tmp_path: Path) -> None:
    """The PBX already has its 503; Meta's late 200 is ACKed and hung up on the WhatsApp
    leg, over TLS like everything toward Meta."""
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 3.0}})
    flow = h.place_call()
    h.advance(3.1)
    assert final_to_pbx(h, h.sent()).status == 503
    sent = h.meta_reply(flow, 200)
    assert h.to_pbx(sent) == []
    reqs = [s.request for s in meta_requests(h, sent)]
    assert [r.method for r in reqs] == ["ACK", "BYE"]
    for req in reqs:
        assert req.headers.lines("Route") == META_ROUTE
        assert req.to.tag == META_TO_TAG
        assert req.top_via.transport.upper() == "TLS"
        assert req.top_via.host == HOSTNAME


def test_timer_b_before_invite_timeout(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 60.0}}, t1=0.5)
    flow = h.place_call()
    h.advance(64 * 0.5 + 0.1)
    assert final_to_pbx(h, h.sent()).status == 503
    assert_gone(h, flow)


def test_meta_unreachable_is_503(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.transport_error(h.meta_target)
    sent = h.sent()
    resp = final_to_pbx(h, sent)
    assert resp.status == 503
    assert (resp.headers.get("Reason") or "").startswith("SIP;cause=503;")
    assert h.to_meta(sent) == []
    assert_gone(h, flow)


def test_meta_connection_lost_after_the_challenge_is_503(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.transport_error(h.meta_target)
    assert final_to_pbx(h, h.sent()).status == 503
    assert_gone(h, flow)


def test_pbx_transport_error_does_not_touch_the_setup(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.transport_error(Target("udp", "192.0.2.99", 5060))
    assert h.sent() == []
    assert flow.call.state is State.CALLING


# =========================================================================== CANCEL


def test_pbx_cancel_after_meta_rings(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    sent = h.sent()
    pbx = h.responses(h.to_pbx(sent))
    assert [(r.status, r.cseq.method) for r in pbx] == [(200, "CANCEL"), (487, "INVITE")]
    assert pbx[1].to.tag == flow.call.pbx.tag
    cancel = one(meta_requests(h, sent)).request
    assert cancel.method == "CANCEL"
    assert cancel.uri == flow.meta_invite.uri
    assert cancel.top_via.branch == flow.meta_invite.top_via.branch
    assert (cancel.cseq.seq, cancel.cseq.method) == (2, "CANCEL")
    assert cancel.from_.tag == flow.meta_invite.from_.tag and cancel.to.tag is None
    assert flow.call.state is State.CANCELLING
    # Meta confirms: 200 to the CANCEL, 487 to the INVITE (ACKed); nothing more to the PBX.
    h.from_meta(meta_response(cancel, 200))
    sent = h.meta_reply(flow, 487)
    assert methods(h.to_meta(sent)) == ["ACK"] and h.to_pbx(sent) == []
    assert flow.call.final_status == 487
    assert flow.call.end_reason == "cancelled" and flow.call.ended_by == "pbx"
    assert_gone(h, flow)


def test_pbx_cancel_before_meta_responds(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    sent = h.sent()
    assert statuses(h.to_pbx(sent)) == [200, 487]
    assert h.to_meta(sent) == []  # RFC 3261 9.1: not before a provisional
    sent = h.meta_reply(flow, 100)
    assert methods(h.to_meta(sent)) == ["CANCEL"]
    sent = h.meta_reply(flow, 487)
    assert methods(h.to_meta(sent)) == ["ACK"] and h.to_pbx(sent) == []
    assert_gone(h, flow)


def test_pbx_cancel_while_meta_challenges(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    assert statuses(h.to_pbx(h.sent())) == [200, 487]
    sent = h.meta_challenges(flow)
    assert methods(h.to_meta(sent)) == ["ACK"]  # no new INVITE for a cancelled call
    assert h.to_pbx(sent) == []
    assert_gone(h, flow)


def test_meta_200_racing_the_cancel_is_acked_and_hung_up(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    cancel = one(meta_requests(h, h.sent())).request
    h.from_meta(meta_response(cancel, 200))
    sent = h.meta_reply(flow, 200)
    reqs = [s.request for s in meta_requests(h, sent)]
    assert [r.method for r in reqs] == ["ACK", "BYE"]
    for req in reqs:
        assert req.uri == META_CONTACT_URI
        assert req.headers.lines("Route") == META_ROUTE
        assert req.to.tag == META_TO_TAG
    assert h.to_pbx(sent) == []  # it already has its 487
    assert flow.call.final_status == 487
    assert_gone(h, flow)


def test_meta_200_retransmitted_after_the_cancel_race(h: OutboundHarness) -> None:
    """Meta retransmits its 200 (our ACK was lost): ACK it again, over TLS, no second BYE."""
    flow = h.place_call()
    h.meta_reply(flow, 180)
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    h.sent()
    h.meta_reply(flow, 200)
    sent = h.meta_reply(flow, 200)
    ack = one(meta_requests(h, sent)).request
    assert ack.method == "ACK" and ack.uri == META_CONTACT_URI
    assert ack.top_via.transport.upper() == "TLS" and ack.top_via.host == HOSTNAME
    assert h.to_pbx(sent) == []


def test_cancelled_call_ends_even_if_meta_never_confirms(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_reply(flow, 180)
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    h.sent()
    h.advance(33)
    assert_gone(h, flow)


def test_cancel_after_answer_changes_nothing(h: OutboundHarness) -> None:
    flow = answered(h)
    h.from_pbx(pbx_cancel(flow.pbx_invite))
    sent = h.sent()
    assert h.to_meta(sent) == []
    assert all(s != 487 for s in statuses(sent))
    assert flow.call.state is State.CONFIRMED


# =========================================================================== admission limits


def test_max_outbound_calls_per_number(tmp_path: Path) -> None:
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "max_outbound_calls": 2}]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    first = h.place_call()
    h.place_call()
    resp = rejected(h)
    assert resp.status == 503 and resp.headers.get("Retry-After")
    assert h.calls.counters.rejected == {503: 1}
    # One ends: room again.
    h.meta_reply(first, 486)
    h.place_call()


def test_max_outbound_calls_counts_per_number(tmp_path: Path) -> None:
    numbers = [
        {"number": BUSINESS, "sip_password_file": "wa.pass", "max_outbound_calls": 1},
        {"number": OTHER, "sip_password_file": "wa.pass", "max_outbound_calls": 1},
    ]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    h.place_call()
    assert rejected(h).status == 503
    h.place_call(from_user=OTHER)


def test_inbound_calls_do_not_count_against_the_outbound_cap(tmp_path: Path) -> None:
    numbers = [
        {
            "number": BUSINESS,
            "sip_password_file": "wa.pass",
            "max_outbound_calls": 1,
            "challenge": False,
        }
    ]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    h.start_call()  # from WhatsApp
    h.place_call()


def test_max_call_rate_within_one_second(tmp_path: Path) -> None:
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "max_call_rate": 2}]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    h.place_call()
    h.advance(0.5)
    h.place_call()
    h.advance(0.49)
    resp = rejected(h)
    assert resp.status == 503 and resp.headers.get("Retry-After") == "1"
    h.advance(0.01)  # the first attempt is now one second old: out of the window
    h.place_call()
    assert rejected(h).status == 503  # the second and third are within the window
    h.advance(1.0)
    h.place_call()


def test_global_max_calls(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, {"limits": {"max_calls": 1}})
    h.place_call()
    resp = rejected(h)
    assert resp.status == 503 and resp.headers.get("Retry-After")


def test_draining_refuses_new_calls(h: OutboundHarness) -> None:
    h.calls.draining = True
    resp = rejected(h)
    assert resp.status == 503 and resp.headers.get("Retry-After")


def test_no_media_ports_is_503(h: OutboundHarness) -> None:
    h.bridges.exhausted = True
    assert rejected(h).status == 503


def test_pbx_invite_without_sdp_is_488(h: OutboundHarness) -> None:
    resp = rejected(h, sdp=None)
    assert resp.status == 488
    assert resp.headers.get("Accept") == "application/sdp"
    assert h.bridges.open == []


def test_pbx_offer_without_a_usable_codec_is_refused(h: OutboundHarness) -> None:
    resp = rejected(h, sdp=pbx_sdp(codecs=((18, "G729"),)))
    assert resp.status == 488
    assert h.bridges.open == []


def test_garbage_pbx_sdp_is_400_and_ports_given_back(h: OutboundHarness) -> None:
    assert rejected(h, sdp="this is not SDP").status == 400
    assert h.bridges.open == []


def test_pbx_invite_retransmission_is_one_call(h: OutboundHarness) -> None:
    data = pbx_invite()
    h.from_pbx(data)
    h.sent()
    h.from_pbx(data)
    sent = h.sent()
    assert h.to_meta(sent) == [] and statuses(sent) == [100]
    assert len(h.calls.calls) == 1


def test_merged_pbx_invite_is_482(h: OutboundHarness) -> None:
    flow = h.place_call()
    req = flow.pbx_invite
    again = pbx_invite(call_id=req.call_id, from_tag=req.from_.tag)
    h.from_pbx(again)
    sent = h.sent()
    assert final_to_pbx(h, sent).status == 482 and h.to_meta(sent) == []
    assert flow.call.state is State.CALLING


# =========================================================================== hang-up by the gateway


def test_hangup_all_during_setup_and_in_a_call(h: OutboundHarness) -> None:
    ringing = h.place_call()
    h.meta_reply(ringing, 180)
    talking = answered(h)
    h.calls.hangup_all("shutdown")
    sent = h.sent()
    assert (
        final_to_pbx(h, [s for s in sent if s.message.call_id == ringing.pbx_invite.call_id]).status
        == 503
    )
    to_meta = {s.request.call_id: s.request.method for s in meta_requests(h, sent)}
    assert to_meta == {
        ringing.meta_invite.call_id: "CANCEL",
        talking.meta_invite.call_id: "BYE",
    }
    assert "BYE" in methods(
        [s for s in h.to_pbx(sent) if s.message.call_id == talking.pbx_invite.call_id]
    )
    assert h.calls.calls == {}


def test_many_calls_leave_nothing_behind(h: OutboundHarness) -> None:
    h.reparse = False
    for i in range(30):
        h.advance(0.2)  # under max_call_rate (10/s)
        flow = h.place_call()
        if i % 3 == 0:
            h.connect(flow)
            h.pbx_out(flow, "BYE")
        elif i % 3 == 1:
            h.meta_reply(flow, 480)
        else:
            h.meta_reply(flow, 180)
            h.from_pbx(pbx_cancel(flow.pbx_invite))
            h.sent()
            h.meta_reply(flow, 487)
    assert h.calls.calls == {}
    assert h.calls._by_local == {} and h.calls._by_server_tx == {}
    assert h.bridges.open == []
    h.drain_timers()
    assert len(h.manager) == 0


# =========================================================================== more edges


def test_invite_timeout_after_100_then_challenge(tmp_path: Path) -> None:
    """Meta sends 100 Trying before its 407 (as a proxy does): the re-sent INVITE is a new
    transaction, and no response to it within invite_timeout is still a 503 in time."""
    h = OutboundHarness(tmp_path, {"whatsapp": {"invite_timeout": 3.0}})
    flow = h.place_call()
    h.meta_reply(flow, 100)
    h.meta_challenges(flow)
    h.advance(3.1)
    assert final_to_pbx(h, h.sent()).status == 503
    assert_gone(h, flow)


def test_pbx_record_route_is_kept_on_the_pbx_leg(h: OutboundHarness) -> None:
    rr = ("<sip:192.0.2.5:5060;lr>", "<sip:192.0.2.6:5060;lr>")
    flow = h.place_call(record_route=rr)
    sent = h.connect(flow)
    ok = final_to_pbx(h, sent)
    assert ok.headers.lines("Record-Route") == list(rr)
    assert "Record-Route" not in flow.meta_invite.headers  # never toward Meta
    sent = h.meta_out(flow, "BYE")
    bye_sent = one(h.to_pbx(sent))
    assert bye_sent.request.headers.lines("Route") == list(rr)
    assert (bye_sent.target.host, bye_sent.target.port) == ("192.0.2.5", 5060)


def test_second_meta_2xx_with_another_to_tag_gets_its_own_ack_and_bye(h: OutboundHarness) -> None:
    """RFC 3261 13.2.2.4: a 2xx from another fork is ACKed in its own dialog and hung up;
    the call stays on the first."""
    flow = answered(h)
    sent = h.meta_reply(flow, 200, to_tag="meta-fork-2")
    reqs = [s.request for s in meta_requests(h, sent)]
    assert [r.method for r in reqs] == ["ACK", "BYE"]
    assert all(r.to.tag == "meta-fork-2" for r in reqs)
    assert h.to_pbx(sent) == []
    assert flow.call.state is State.CONFIRMED
    bye = one(meta_requests(h, h.pbx_out(flow, "BYE"))).request
    assert bye.to.tag == META_TO_TAG


@pytest.mark.parametrize("require", ["100rel", "timer", "precondition, 100rel"])
def test_pbx_invite_requiring_an_extension_is_420(h: OutboundHarness, require: str) -> None:
    """RFC 3261 8.2.2.3: the gateway supports no extension; a PBX that requires one
    (100rel, timer) learns so, and nothing reaches Meta."""
    resp = rejected(h, headers=[("Require", require)])
    assert resp.status == 420
    assert resp.headers.get("Unsupported") == require
    assert h.bridges.open == []


def test_pbx_invite_merely_supporting_extensions_is_fine(h: OutboundHarness) -> None:
    flow = h.place_call(headers=[("Supported", "100rel, timer, replaces")])
    assert "Require" not in flow.meta_invite.headers
