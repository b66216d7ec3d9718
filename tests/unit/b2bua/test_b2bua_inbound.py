"""B2BUA calls from WhatsApp to the PBX, in memory with a fake clock (no sockets).

Every test drives a real TransactionManager/CallManager through
tests/unit/b2bua_fakes.py and asserts on the SIP messages that would go on the
wire (serialised and parsed back). Meta's side is shaped after docs/whatsapp-sip.md
sections 3, 5, 6 and 10; the PBX side after Asterisk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.b2bua import mapping
from gateway.b2bua.call import State
from gateway.sdp.session import parse_sdp
from gateway.sip.message import Request, Response
from gateway.sip.transaction import Target
from gateway.sip.uri import parse_address
from tests.unit.b2bua.b2bua_fakes import (
    BSUID,
    BUSINESS,
    HOSTNAME,
    MEDIA_ADDRESS,
    META_RR,
    META_SDP_AVP,
    META_SDP_NO_CRYPTO,
    META_SOURCE,
    PBX_CONTACT,
    PBX_HOST,
    PBX_PORT,
    USER,
    WEBRTC_LOCAL,
    FakeBridgeFactory,
    Flow,
    Harness,
    Sent,
    meta_ack,
    meta_cancel,
    meta_invite,
    pbx_ack,
    pbx_sdp,
    request_of,
    response_to,
)
from tests.unit.sdp.test_sdp_webrtc import meta_lines  # Meta's WebRTC offer, section 7

PBX_TARGET = Target("udp", PBX_HOST, PBX_PORT)
META_FIRST_HOP = Target("tls", "wa.meta.vc", 5061, META_SOURCE.conn_id)
META_CONTACT_URI = f"sip:{USER}@wa.meta.vc;transport=tls;ob"


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def only(items: list[Sent] | list[Request] | list[Response]) -> Sent | Request | Response:
    assert len(items) == 1, items
    return items[0]


def to_meta(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if s.target.host != PBX_HOST]


def to_pbx(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if s.target.host == PBX_HOST]


def statuses(sent: list[Sent]) -> list[int]:
    return [s.message.status for s in sent if isinstance(s.message, Response)]


def methods(sent: list[Sent]) -> list[str]:
    return [s.message.method for s in sent if isinstance(s.message, Request)]


def final_to_meta(sent: list[Sent]) -> Response:
    finals = [r for r in Harness.responses(to_meta(sent)) if r.status >= 200]
    assert len(finals) == 1, finals
    return finals[0]


def header_names(msg: Request | Response) -> list[str]:
    return [name for name, _ in msg.headers]


def assert_gone(h: Harness, flow: Flow) -> None:
    assert flow.call.state is State.ENDED
    assert flow.call.key not in h.calls.calls
    assert flow.call not in h.calls._by_server_tx.values()
    assert all(v[0] is not flow.call for v in h.calls._by_local.values())
    assert flow.bridge.closed == 1


def answered(h: Harness, **invite: object) -> Flow:
    flow = h.start_call(**invite)
    h.answer(flow)
    return flow


# =========================================================================== admission


def test_unknown_number_is_404_and_nothing_reaches_the_pbx(h: Harness) -> None:
    h.from_meta(meta_invite(number="+15550009999", ruri_params=";tgrp=wacall"))
    sent = h.sent()
    assert statuses(sent) == [100, 404]
    resp = final_to_meta(sent)
    assert resp.to.tag
    assert to_pbx(sent) == []
    assert h.bridges.bridges == []
    assert h.calls.calls == {}
    assert h.calls.counters.rejected == {404: 1}


@pytest.mark.parametrize(
    "params", ["", ";tgrp=wacall", ";tgrp=wacall;trunk-context=byoc.example.com"]
)
def test_request_uri_user_params_are_ignored(h: Harness, params: str) -> None:
    flow = h.start_call(ruri_params=params)
    assert f"{BUSINESS}{params}@" in flow.invite.uri
    assert flow.pbx_invite.headers.get("X-WA-Business-Number") == BUSINESS
    assert flow.pbx_invite.uri == f"sip:{BUSINESS}@{PBX_HOST}:{PBX_PORT}"


def test_request_uri_user_without_plus_is_the_business_number(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        {
            "whatsapp": {
                "numbers": [
                    {"number": BUSINESS, "sip_password_file": "wa.pass", "challenge": False}
                ]
            }
        },
    )
    h.from_meta(meta_invite(number=BUSINESS[1:]))
    sent = h.sent()
    assert methods(to_pbx(sent)) == ["INVITE"]


def test_challenge_without_credentials(h: Harness) -> None:
    h.from_meta(meta_invite())
    sent = h.sent()
    assert statuses(sent) == [100, 407]
    resp = final_to_meta(sent)
    challenges = resp.headers.get_all("Proxy-Authenticate")
    assert challenges and all(f'realm="{HOSTNAME}"' in c for c in challenges)
    assert "qop=" in challenges[0] and "nonce=" in challenges[0]
    assert resp.to.tag
    assert sent[-1].target == META_SOURCE  # back on Meta's connection
    assert to_pbx(sent) == [] and h.bridges.bridges == [] and h.calls.calls == {}


@pytest.mark.parametrize("username", [BUSINESS[1:], BUSINESS])
def test_correct_credentials_admit_the_call(h: Harness, username: str) -> None:
    sent = h.challenge_and_retry({}, username=username)
    assert statuses(to_meta(sent)) == [100]  # no final yet: the PBX is being called
    invite = only(h.requests(to_pbx(sent), "INVITE"))
    assert isinstance(invite, Request)
    assert len(h.calls.calls) == 1 and len(h.bridges.bridges) == 1


def test_wrong_password_is_403(h: Harness) -> None:
    sent = h.challenge_and_retry({}, password="not-the-password")
    assert statuses(sent) == [100, 403]
    assert to_pbx(sent) == [] and h.calls.calls == {} and h.bridges.bridges == []


def test_wrong_username_is_403(h: Harness) -> None:
    sent = h.challenge_and_retry({}, username="15550009999")
    assert statuses(sent) == [100, 403]
    assert to_pbx(sent) == []


def test_password_file_missing_is_403(h: Harness, tmp_path: Path) -> None:
    (tmp_path / "wa.pass").unlink()
    sent = h.challenge_and_retry({})
    assert statuses(sent) == [100, 403]


def test_replayed_credentials_are_not_accepted_twice(h: Harness) -> None:
    """The same Proxy-Authorization on a new INVITE (new Call-ID) is a replay: challenged again."""
    h.from_meta(meta_invite())
    challenge = final_to_meta(h.sent()).headers.get("Proxy-Authenticate")
    assert challenge is not None
    uri = request_of(meta_invite()).uri
    auth = h.credentials(challenge, uri)
    h.from_meta(meta_invite(auth=auth))
    assert methods(to_pbx(h.sent())) == ["INVITE"]
    h.from_meta(meta_invite(auth=auth))
    sent = h.sent()
    assert to_pbx(sent) == []
    assert final_to_meta(sent).status in (403, 407)


def test_stale_nonce_is_challenged_again_with_stale_true(h: Harness) -> None:
    first = meta_invite()
    h.from_meta(first)
    challenge = final_to_meta(h.sent()).headers.get("Proxy-Authenticate")
    assert challenge is not None
    h.advance(h.digest.nonce_ttl + 1)
    h.sent()
    uri = request_of(first).uri
    h.from_meta(meta_invite(auth=h.credentials(challenge, uri)))
    sent = h.sent()
    resp = final_to_meta(sent)
    assert resp.status == 407
    assert "stale=true" in (resp.headers.get("Proxy-Authenticate") or "").lower()
    assert to_pbx(sent) == []


def test_credentials_in_authorization_are_accepted(h: Harness) -> None:
    first = meta_invite()
    h.from_meta(first)
    challenge = final_to_meta(h.sent()).headers.get("Proxy-Authenticate")
    assert challenge is not None
    auth = h.credentials(challenge, request_of(first).uri)
    h.from_meta(meta_invite(extra=[("Authorization", auth)]))
    assert methods(to_pbx(h.sent())) == ["INVITE"]


def test_invite_retransmission_is_one_call(h: Harness) -> None:
    first = meta_invite()
    h.from_meta(first)
    challenge = final_to_meta(h.sent()).headers.get("Proxy-Authenticate")
    assert challenge is not None
    invite = meta_invite(auth=h.credentials(challenge, request_of(first).uri), branch="z9hG4bKre1")
    h.from_meta(invite)
    assert methods(to_pbx(h.sent())) == ["INVITE"]
    h.from_meta(invite)  # the same INVITE again (same branch): a retransmission
    sent = h.sent()
    assert statuses(sent) == [100] and to_pbx(sent) == []
    assert len(h.calls.calls) == 1 and len(h.bridges.bridges) == 1


def test_capacity_503_with_retry_after(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"limits": {"max_calls": 2}})
    first = h.start_call()
    h.start_call()
    h.from_meta(meta_invite())
    sent = h.sent()
    assert statuses(sent) == [100, 503]
    resp = final_to_meta(sent)
    assert resp.headers.get("Retry-After") is not None
    assert int(resp.headers.get("Retry-After") or "0") > 0
    assert to_pbx(sent) == [] and len(h.bridges.bridges) == 2
    # Capacity frees up when a call ends.
    h.pbx_reply(first, 486)
    h.start_call()
    assert len(h.calls.calls) == 2


def test_no_media_ports_is_503(h: Harness) -> None:
    h.bridges.exhausted = True
    sent = h.challenge_and_retry({})
    assert statuses(sent) == [100, 503]
    assert final_to_meta(sent).headers.get("Retry-After")
    assert to_pbx(sent) == [] and h.calls.calls == {}


@pytest.mark.parametrize("sdp", [META_SDP_NO_CRYPTO, META_SDP_AVP], ids=["no-crypto", "avp"])
def test_offer_without_sdes_is_488(h: Harness, sdp: str) -> None:
    sent = h.challenge_and_retry({"sdp": sdp})
    assert statuses(sent) == [100, 488]
    assert to_pbx(sent) == [] and h.calls.calls == {}
    assert [b.closed for b in h.bridges.bridges] == [1]  # ports given back


def test_offer_without_sdp(h: Harness) -> None:
    sent = h.challenge_and_retry({"sdp": None})
    assert statuses(sent) == [100, 488]
    assert final_to_meta(sent).headers.get("Accept") == "application/sdp"
    assert to_pbx(sent) == [] and h.bridges.bridges == []


def test_offer_with_other_content_type_is_415(h: Harness) -> None:
    sent = h.challenge_and_retry({"content_type": "application/json", "sdp": '{"x": 1}'})
    assert statuses(sent) == [100, 415]
    assert final_to_meta(sent).headers.get("Accept") == "application/sdp"


def test_garbage_sdp_is_rejected_and_ports_given_back(h: Harness) -> None:
    sent = h.challenge_and_retry({"sdp": "this is not sdp\r\n"})
    assert final_to_meta(sent).status in (400, 488)
    assert to_pbx(sent) == [] and [b.closed for b in h.bridges.bridges] == [1]


def test_bsuid_caller(h: Harness) -> None:
    flow = h.start_call(user=BSUID, display=None)
    inv = flow.pbx_invite
    assert inv.from_.uri.user == BSUID  # type: ignore[union-attr]
    assert inv.from_.display is None
    assert inv.headers.get("X-WA-User") == BSUID
    assert str(flow.pbx_invite.from_.uri) == f"sip:{BSUID}@127.0.0.1:5090"


# =========================================================================== the PBX INVITE


@pytest.mark.parametrize(
    ("template", "user_part"),
    [
        ("{number}", BUSINESS),
        ("{digits}", BUSINESS[1:]),
        ("{user}", USER),
        ("wa-{digits}", "wa-" + BUSINESS[1:]),
    ],
)
def test_pbx_request_uri_template(tmp_path: Path, template: str, user_part: str) -> None:
    h = Harness(tmp_path, {"pbx": {"request_uri_user": template}})
    flow = h.start_call()
    inv = flow.pbx_invite
    assert inv.uri == f"sip:{user_part}@{PBX_HOST}:{PBX_PORT}"
    assert inv.to.uri.user == user_part  # type: ignore[union-attr]


def test_pbx_invite_from_and_headers(h: Harness) -> None:
    flow = h.start_call(display="12195550714")
    inv = flow.pbx_invite
    assert inv.from_.display == "12195550714"
    assert inv.from_.uri.user == USER  # type: ignore[union-attr]
    assert inv.from_.tag
    assert inv.cseq.seq == 1 and inv.cseq.method == "INVITE"
    assert inv.top_via.transport.upper() == "UDP"
    assert (inv.top_via.host, inv.top_via.port) == ("127.0.0.1", 5090)
    contact = inv.contact
    assert contact is not None and contact.uri.host == "127.0.0.1"  # type: ignore[union-attr]
    assert inv.call_id != flow.invite.call_id  # a new dialog, not Meta's Call-ID
    assert inv.headers.get("X-WA-Call-ID") == flow.call.key
    assert flow.call.key.startswith("wacid.")
    assert inv.headers.get("X-WA-User") == USER
    assert inv.headers.get("X-WA-User-ID") == "106540352242922"
    assert inv.headers.get("X-WA-User-Name") == "Jane Doe"  # from x-wa-meta_user-name
    assert inv.headers.get("X-WA-Country") == "US"
    assert inv.headers.get("X-WA-Business-Number") == BUSINESS
    # Meta's own headers do not cross.
    names = [n.lower() for n in header_names(inv)]
    assert not any(n.startswith("x-wa-meta") for n in names)
    assert "x-fb-external-domain" not in names and "record-route" not in names
    assert "proxy-authorization" not in names


def test_pbx_invite_display_name_with_quotes_is_escaped(h: Harness) -> None:
    flow = h.start_call(display='Jane \\"JD\\" Doe')
    assert flow.pbx_invite.from_.display == 'Jane "JD" Doe'


def test_context_values_are_sanitised(h: Harness) -> None:
    evil = '{"cta":"<script>"}\\x\x01 end'
    folded = "first\r\n X-Evil: 1"  # a folded line: one value, never a new header
    flow = h.start_call(
        extra=[("x-wa-meta-cta-payload", evil), ("X-WA-Meta-Deeplink_Payload", folded)]
    )
    inv = flow.pbx_invite
    cta = inv.headers.get("X-WA-CTA-Payload")
    assert cta is not None
    assert not any(c in cta for c in '"<>\\\r\n\x01')
    assert "cta" in cta and "script" in cta
    deeplink = inv.headers.get("X-WA-Deeplink-Payload")
    assert deeplink is not None and "\r" not in deeplink and "\n" not in deeplink
    assert "X-Evil" not in inv.headers
    raw = inv.to_bytes()
    assert b"\r\nX-Evil" not in raw


def test_context_values_are_bounded(h: Harness) -> None:
    flow = h.start_call(extra=[("x-wa-meta-cta-payload", "A" * 5000)])
    value = flow.pbx_invite.headers.get("X-WA-CTA-Payload") or ""
    assert 0 < len(value) <= 256


def test_only_present_context_headers_are_sent(h: Harness) -> None:
    flow = h.start_call(context=False)
    names = [n for n in header_names(flow.pbx_invite) if n.upper().startswith("X-WA-")]
    assert sorted(names) == ["X-WA-Business-Number", "X-WA-Call-ID", "X-WA-User"]
    # Without x-wa-meta-wacid the key comes from Meta's Call-ID (outgoing:wacid.X).
    assert flow.call.key.startswith("wacid.")
    assert flow.pbx_invite.headers.get("X-WA-Call-ID") == flow.call.key


@pytest.mark.parametrize(
    ("sent_user", "decoded"),
    [
        ("%3Cevil%3E", "<evil>"),
        ("a%20b", "a b"),
        ("x%0D%0AX-Evil%3A%201", "x\r\nX-Evil: 1"),
        ("%40host", "@host"),
        ("a%3Bb", "a;b"),
        (BSUID, BSUID),
        (USER, USER),
    ],
)
def test_escaped_caller_user_stays_escaped_toward_the_pbx(
    tmp_path: Path, sent_user: str, decoded: str
) -> None:
    """The From user is percent-decoded when read; it must be escaped again when put in
    the PBX INVITE's From and Request-URI ({user}), or the INVITE is malformed."""
    h = Harness(tmp_path, {"pbx": {"request_uri_user": "{user}"}})
    flow = h.start_call(user=sent_user)  # the INVITE is parsed back from its bytes
    inv = flow.pbx_invite
    assert inv.from_.uri.user_number == decoded  # type: ignore[union-attr]
    assert inv.parsed_uri.user_number == decoded
    assert inv.to.uri.user_number == decoded  # type: ignore[union-attr]
    assert "X-Evil" not in inv.headers
    if sent_user in (BSUID, USER):
        assert inv.from_.uri.user == sent_user  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("codecs", "formats"), [(["PCMU", "PCMA"], ["0", "8", "101"]), (["PCMA"], ["8", "101"])]
)
def test_pbx_offer(tmp_path: Path, codecs: list[str], formats: list[str]) -> None:
    h = Harness(tmp_path, {"pbx": {"codecs": codecs}})
    flow = h.start_call()
    assert flow.pbx_invite.content_type == "application/sdp"
    sdp = parse_sdp(flow.pbx_invite.body)
    m = only(sdp.media)  # type: ignore[arg-type]
    assert m.proto == "RTP/AVP"  # type: ignore[union-attr]
    assert m.formats == formats  # type: ignore[union-attr]
    assert m.port == flow.bridge.pbx_port  # type: ignore[union-attr]
    assert sdp.connection is not None and sdp.connection.address == MEDIA_ADDRESS
    rtpmaps = dict((v or "").split(" ", 1) for v in m.attribute_values("rtpmap"))  # type: ignore[union-attr]
    assert rtpmaps["101"] == "telephone-event/8000"
    assert m.attribute("crypto") is None  # type: ignore[union-attr]


def test_ipv6_pbx_and_advertise(tmp_path: Path) -> None:
    """IPv6 hosts are bracketed in every URI the gateway builds (RFC 3261 25.1)."""
    h = Harness(
        tmp_path,
        {
            "pbx": {
                "address": "[::1]:5080",
                "listen": "[::1]:5090",
                "trusted_networks": ["::1/128"],
            },
            "whatsapp": {"advertise": "[2001:db8::5]:5061"},
        },
    )
    sent = h.challenge_and_retry({})
    out = only(h.requests(sent, "INVITE"))
    assert isinstance(out, Request)
    target = next(s.target for s in sent if isinstance(s.message, Request))
    assert target == Target("udp", "::1", 5080)
    assert out.uri == f"sip:{BUSINESS}@[::1]:5080"
    assert str(out.to.uri) == f"sip:{BUSINESS}@[::1]:5080"
    assert out.from_.uri.host == "[::1]"  # type: ignore[union-attr]
    assert out.contact is not None and str(out.contact.uri) == "sip:gw@[::1]:5090;transport=udp"
    assert out.top_via.host == "[::1]"
    call = next(iter(h.calls.calls.values()))
    flow = Flow(call.caller.request, call, out, call.bridge)  # type: ignore[arg-type]
    v6_contact = f"<sip:{BUSINESS}@[::1]:5080>"
    sent = h.pbx_reply(flow, 200, contact=v6_contact)
    ack = next(s for s in sent if isinstance(s.message, Request))
    assert ack.request.method == "ACK" and ack.target == Target("udp", "::1", 5080)
    ok = h.responses(sent, 200)[0]
    assert ok.contact is not None
    assert str(ok.contact.uri) == f"sip:{BUSINESS}@[2001:db8::5]:5061;transport=tls"
    flow.answered = ok
    h.from_meta(meta_ack(flow))
    h.sent()
    bye = only(h.requests(h.pbx_in_dialog(flow, "BYE"), "BYE"))
    assert isinstance(bye, Request)
    assert bye.top_via.host == "[2001:db8::5]" and bye.top_via.port == 5061


# =========================================================================== progress


def test_180_relayed_once_with_the_to_tag_of_the_200(h: Harness) -> None:
    flow = h.start_call()
    assert statuses(to_meta(h.pbx_reply(flow, 100))) == []
    ringing = to_meta(h.pbx_reply(flow, 180))
    assert statuses(ringing) == [180]
    assert statuses(to_meta(h.pbx_reply(flow, 180))) == []  # retransmitted/repeated
    assert statuses(to_meta(h.pbx_reply(flow, 181))) == []
    ok = to_meta(h.pbx_reply(flow, 200))
    assert statuses(ok) == [200]
    tag_180 = ringing[0].response.to.tag
    assert tag_180 and tag_180 == ok[0].response.to.tag


def test_183_relayed_as_183(h: Harness) -> None:
    flow = h.start_call()
    sent = to_meta(h.pbx_reply(flow, 183))
    assert statuses(sent) == [183]
    assert sent[0].response.to.tag == flow.call.whatsapp.tag
    assert flow.call.state is State.EARLY


def test_100_from_the_pbx_is_not_relayed(h: Harness) -> None:
    flow = h.start_call()
    assert h.pbx_reply(flow, 100) == []
    assert flow.call.state is State.EARLY


def test_provisional_responses_to_meta_are_dialog_creating(h: Harness) -> None:
    """A 180 with a To tag creates an early dialog at Meta: it carries Contact and
    Meta's Record-Route (RFC 3261 section 12.1.1)."""
    flow = h.start_call()
    ringing = only(to_meta(h.pbx_reply(flow, 180))).response  # type: ignore[union-attr]
    assert ringing.headers.lines("Record-Route") == list(META_RR)
    assert ringing.contact is not None
    assert str(ringing.contact.uri) == f"sip:{BUSINESS}@{HOSTNAME}:5061;transport=tls"
    session = only(to_meta(h.pbx_reply(flow, 183))).response  # type: ignore[union-attr]
    assert session.headers.lines("Record-Route") == list(META_RR)
    assert session.contact is not None


# =========================================================================== answer


def test_answer(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    other_contact = f"<sip:{BUSINESS}@{PBX_HOST}:5070;transport=udp>"
    sent = h.pbx_reply(flow, 200, contact=other_contact)
    # ACK to the PBX, to the Contact of its 200, CSeq 1 ACK, before answering Meta.
    assert [type(s.message).__name__ for s in sent] == ["Request", "Response"]
    ack = sent[0].request
    assert ack.method == "ACK"
    assert ack.uri == f"sip:{BUSINESS}@{PBX_HOST}:5070;transport=udp"
    assert sent[0].target == Target("udp", PBX_HOST, 5070)
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.call_id == flow.pbx_invite.call_id
    assert ack.to.tag == flow.pbx_to_tag
    assert ack.top_via.branch != flow.pbx_invite.top_via.branch  # 2xx ACK: new transaction
    # 200 to Meta: Record-Route unchanged and in order, our Contact, an SDES answer.
    ok = sent[1].response
    assert sent[1].target == META_SOURCE
    assert ok.status == 200
    assert ok.headers.lines("Record-Route") == list(META_RR)
    contact = ok.contact
    assert contact is not None
    assert str(contact.uri) == f"sip:{BUSINESS}@{HOSTNAME}:5061;transport=tls"
    assert ok.to.tag == flow.call.whatsapp.tag
    assert ok.cseq.seq == flow.invite.cseq.seq
    answer = parse_sdp(ok.body)
    m = answer.media[0]
    assert m.proto == "RTP/SAVP" and m.port == flow.bridge.whatsapp_port
    crypto = m.attribute("crypto") or ""
    assert crypto.startswith("1 AES_CM_128_HMAC_SHA1_80 inline:")
    assert "opus/48000/2" in " ".join(v or "" for v in m.attribute_values("rtpmap"))
    # Media: the PBX side first, then Meta's (the gateway sends first once keys are known).
    assert flow.bridge.order() == ["pbx", "whatsapp"]
    assert flow.bridge.last("pbx").remote_port == 10000
    wa = flow.bridge.last("whatsapp")
    assert wa.srtp is not None and wa.srtp.remote_key == bytes(range(1, 31))
    assert (wa.remote_address, wa.remote_port) == ("57.144.219.49", 3480)
    assert flow.call.state is State.CONFIRMED


def test_answer_contact_uses_whatsapp_advertise(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"whatsapp": {"advertise": "gw.example.net:5071"}})
    flow = h.start_call()
    h.answer(flow)
    assert flow.answered is not None and flow.answered.contact is not None
    assert str(flow.answered.contact.uri) == f"sip:{BUSINESS}@gw.example.net:5071;transport=tls"


def test_meta_ack_ends_2xx_retransmissions(h: Harness) -> None:
    flow = h.start_call()
    h.answer(flow, ack=False)
    h.advance(0.5)
    assert statuses(h.sent()) == [200]  # 13.3.1.4: retransmitted until ACKed
    h.from_meta(meta_ack(flow))
    assert h.sent() == []
    h.advance(64 * 0.5 + 5)
    assert h.sent() == []
    assert flow.call.state is State.CONFIRMED
    assert flow.bridge.closed == 0


def test_2xx_never_acked_hangs_up_both_legs(h: Harness) -> None:
    flow = h.start_call()
    h.answer(flow, ack=False)
    h.advance(64 * 0.5 - 0.01)
    sent = h.sent()
    assert set(statuses(sent)) == {200} and methods(sent) == []
    h.advance(0.02)
    sent = h.sent()
    byes = h.requests(sent, "BYE")
    assert len(byes) == 2
    assert {s.target.host for s in sent if isinstance(s.message, Request)} == {
        "wa.meta.vc",
        PBX_HOST,
    }
    assert flow.call.end_reason == "meta_no_ack"
    assert_gone(h, flow)


def test_pbx_sdp_unusable_fails_the_call(h: Harness) -> None:
    flow = h.start_call()
    sent = h.pbx_reply(flow, 200, sdp=pbx_sdp(codecs=((18, "G729"),)))
    assert methods(to_pbx(sent)) == ["ACK", "BYE"]
    assert final_to_meta(sent).status == 488
    assert_gone(h, flow)


def test_pbx_200_retransmission_is_acked_again(h: Harness) -> None:
    flow = h.start_call()
    h.answer(flow)
    sent = h.pbx_reply(flow, 200)
    assert methods(sent) == ["ACK"] and statuses(sent) == []
    assert flow.bridge.order() == ["pbx", "whatsapp"]


def test_second_fork_answering_is_acked_and_hung_up(h: Harness) -> None:
    """Two 2xx with different To tags (a forking proxy in front of the PBX): the second
    dialog gets its own ACK and a BYE (RFC 3261 13.2.2.4); the call stays on the first."""
    flow = answered(h)
    fork_contact = f"<sip:{BUSINESS}@{PBX_HOST}:5070>"
    sent = h.pbx_reply(flow, 200, to_tag="fork-2", contact=fork_contact)
    assert to_meta(sent) == []
    ack, bye = h.requests(sent)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    for req in (ack, bye):
        assert req.to.tag == "fork-2"
        assert req.uri == f"sip:{BUSINESS}@{PBX_HOST}:5070"
    assert [s.target for s in sent] == [Target("udp", PBX_HOST, 5070)] * 2
    # Its retransmission is ACKed again, without another BYE.
    assert methods(h.pbx_reply(flow, 200, to_tag="fork-2", contact=fork_contact)) == ["ACK"]
    assert flow.call.state is State.CONFIRMED
    assert flow.bridge.order() == ["pbx", "whatsapp"]
    # The first dialog is untouched: a BYE from Meta goes to it.
    bye = only(h.requests(to_pbx(h.meta_in_dialog(flow, "BYE")), "BYE"))
    assert isinstance(bye, Request) and bye.to.tag == flow.pbx_to_tag


# =========================================================================== BYE


def test_bye_from_meta(h: Harness) -> None:
    flow = answered(h)
    sent = h.meta_in_dialog(flow, "BYE")
    ok = only(h.responses(to_meta(sent)))
    assert isinstance(ok, Response) and ok.status == 200 and ok.cseq.method == "BYE"
    bye = only(to_pbx(sent))
    assert isinstance(bye, Sent)
    req = bye.request
    assert req.method == "BYE"
    assert req.uri == parse_address(PBX_CONTACT).uri.__str__()
    assert bye.target == PBX_TARGET
    assert (req.cseq.seq, req.cseq.method) == (2, "BYE")
    assert req.call_id == flow.pbx_invite.call_id
    assert req.from_.tag == flow.pbx_invite.from_.tag and req.to.tag == flow.pbx_to_tag
    assert "Route" not in req.headers
    assert req.headers.get("Reason")
    assert flow.call.end_reason == "meta_bye"
    assert_gone(h, flow)
    assert h.ended == [(flow.call, "meta_bye")]
    # The PBX's 200 to our BYE is absorbed.
    h.from_pbx(response_to(req, 200, to_tag=None))
    assert h.sent() == []


def test_bye_from_the_pbx(h: Harness) -> None:
    flow = answered(h)
    sent = h.pbx_in_dialog(flow, "BYE")
    ok = only(h.responses(to_pbx(sent)))
    assert isinstance(ok, Response) and ok.status == 200
    bye = only(to_meta(sent))
    assert isinstance(bye, Sent)
    req = bye.request
    assert req.method == "BYE"
    assert req.headers.lines("Route") == list(META_RR)
    assert req.uri == META_CONTACT_URI
    # To the first route (wa.meta.vc:5061), reusing Meta's connection while it is open.
    assert (bye.target.transport, bye.target.host, bye.target.port) == ("tls", "wa.meta.vc", 5061)
    assert bye.target.conn_id == META_SOURCE.conn_id
    assert req.call_id == flow.invite.call_id
    assert req.from_.tag == flow.call.whatsapp.tag
    assert req.to.tag == flow.invite.from_.tag
    assert req.cseq.method == "BYE"
    assert req.top_via.transport.upper() == "TLS"
    assert req.top_via.host == HOSTNAME
    assert flow.call.end_reason == "pbx_bye"
    assert_gone(h, flow)


def test_bye_for_an_ended_call_is_481(h: Harness) -> None:
    flow = answered(h)
    h.meta_in_dialog(flow, "BYE")
    sent = h.meta_in_dialog(flow, "BYE")
    assert statuses(sent) == [481]


def test_meta_bye_in_early_dialog_ends_both_legs(h: Harness) -> None:
    """RFC 3261 15: the caller may BYE an early dialog; the UAS answers the INVITE 487
    and the PBX leg is cancelled, nothing is left behind."""
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    early = Response(status=180)
    early.headers.add("To", f"<sip:{BUSINESS}@{HOSTNAME}>;tag={flow.call.whatsapp.tag}")
    early.headers.add("Contact", f"<sip:{BUSINESS}@{HOSTNAME}:5061;transport=tls>")
    flow.answered = early
    sent = h.meta_in_dialog(flow, "BYE")
    assert 200 in statuses(to_meta(sent))
    assert 487 in statuses(to_meta(sent))
    assert methods(to_pbx(sent)) == ["CANCEL"]
    h.from_pbx(response_to(flow.pbx_invite, 487, to_tag=flow.pbx_to_tag))
    assert methods(to_pbx(h.sent())) == ["ACK"]
    assert_gone(h, flow)
    h.drain_timers()
    assert len(h.manager) == 0


# =========================================================================== CANCEL


def test_cancel_from_meta_before_answer(h: Harness) -> None:
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.from_meta(meta_cancel(flow.invite))
    sent = h.sent()
    meta = h.responses(to_meta(sent))
    assert [(r.status, r.cseq.method) for r in meta] == [(200, "CANCEL"), (487, "INVITE")]
    assert meta[1].to.tag == flow.call.whatsapp.tag
    cancel = only(h.requests(to_pbx(sent)))
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL"
    assert cancel.uri == flow.pbx_invite.uri
    assert cancel.top_via.branch == flow.pbx_invite.top_via.branch
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert flow.call.state is State.CANCELLING
    # The PBX confirms: 200 to the CANCEL, 487 to the INVITE (which the manager ACKs).
    h.from_pbx(response_to(cancel, 200, to_tag=None))
    h.from_pbx(response_to(flow.pbx_invite, 487, to_tag=flow.pbx_to_tag))
    sent = h.sent()
    assert methods(sent) == ["ACK"] and to_meta(sent) == []
    assert flow.call.end_reason == "cancelled"
    assert flow.call.final_status == 487
    assert_gone(h, flow)


def test_cancel_before_any_pbx_response_waits_for_a_provisional(h: Harness) -> None:
    flow = h.start_call()
    h.from_meta(meta_cancel(flow.invite))
    sent = h.sent()
    assert statuses(to_meta(sent)) == [200, 487]
    assert to_pbx(sent) == []  # RFC 3261 9.1: no CANCEL before a provisional
    sent = h.pbx_reply(flow, 100)
    assert methods(to_pbx(sent)) == ["CANCEL"]
    assert to_meta(sent) == []
    h.from_pbx(response_to(flow.pbx_invite, 487, to_tag=flow.pbx_to_tag))
    assert methods(h.sent()) == ["ACK"]
    assert_gone(h, flow)


def test_pbx_answers_after_cancel(h: Harness) -> None:
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.from_meta(meta_cancel(flow.invite))
    h.sent()
    sent = h.pbx_reply(flow, 200)  # the race of RFC 3261 section 9.1
    assert methods(to_pbx(sent)) == ["ACK", "BYE"]
    bye = h.requests(to_pbx(sent), "BYE")[0]
    assert bye.to.tag == flow.pbx_to_tag and bye.cseq.seq == 2
    assert to_meta(sent) == []  # Meta already has its 487
    assert flow.bridge.order() == []
    assert_gone(h, flow)  # at once: nothing is left to wait for
    assert methods(h.pbx_reply(flow, 200)) == ["ACK"]  # a retransmission: ACK only
    h.from_pbx(response_to(bye, 200, to_tag=None))
    assert h.sent() == []


def test_cancel_after_answer_changes_nothing(h: Harness) -> None:
    flow = answered(h)
    h.from_meta(meta_cancel(flow.invite))
    sent = h.sent()
    assert [r.cseq.method for r in h.responses(sent)] == ["CANCEL"]
    assert to_pbx(sent) == [] and flow.call.state is State.CONFIRMED


# =========================================================================== PBX failures

UNKNOWN = [301, 302, 420, 422, 499, 501, 580, 599, 604, 606, 699]


@pytest.mark.parametrize("pbx_status", sorted(set(mapping.PBX_TO_META) | set(UNKNOWN)))
def test_pbx_failure_mapping(h: Harness, pbx_status: int) -> None:
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    sent = h.pbx_reply(flow, pbx_status, sdp=None)
    assert methods(to_pbx(sent)) == ["ACK"]  # the manager ACKs the non-2xx
    resp = final_to_meta(sent)
    assert resp.status == mapping.pbx_failure_to_meta(pbx_status)
    if pbx_status in mapping.PBX_TO_META:
        assert resp.status == mapping.PBX_TO_META[pbx_status]
    assert resp.status != 503
    assert resp.to.tag == flow.call.whatsapp.tag
    assert f"cause={pbx_status}" in (resp.headers.get("Reason") or "")
    assert flow.call.final_status == resp.status
    assert_gone(h, flow)


def test_pbx_503_is_not_503_toward_meta(h: Harness) -> None:
    flow = h.start_call()
    sent = h.pbx_reply(flow, 503, extra=[("Retry-After", "60")])
    resp = final_to_meta(sent)
    assert resp.status == 480
    assert resp.headers.get("Retry-After") is None


def test_pbx_silent_within_invite_timeout_is_408_and_cancel(h: Harness) -> None:
    flow = h.start_call()
    h.advance(h.cfg.pbx.invite_timeout - 0.01)
    sent = h.sent()
    assert to_meta(sent) == []
    assert set(methods(sent)) == {"INVITE"}  # Timer A retransmissions over UDP
    h.advance(0.02)
    sent = h.sent()
    assert final_to_meta(sent).status == 408
    assert methods(sent) == []  # no CANCEL before a provisional (RFC 3261 9.1)
    assert_gone(h, flow)
    # RFC 3261 9.1: the CANCEL waits for a provisional; then it goes at once.
    sent = h.pbx_reply(flow, 100)
    assert methods(to_pbx(sent)) == ["CANCEL"]
    h.from_pbx(response_to(flow.pbx_invite, 487, to_tag=flow.pbx_to_tag))
    assert methods(h.sent()) == ["ACK"]
    h.drain_timers()
    assert len(h.manager) == 0


def test_pbx_answers_after_our_invite_timeout(h: Harness) -> None:
    """The 200 that crosses our CANCEL after the invite timeout: ACK it and BYE it, or
    the PBX leg stays up with nobody on the other side."""
    flow = h.start_call()
    h.advance(h.cfg.pbx.invite_timeout + 0.1)
    assert final_to_meta(h.sent()).status == 408
    h.pbx_reply(flow, 100)  # releases the deferred CANCEL
    sent = h.pbx_reply(flow, 200)
    assert methods(to_pbx(sent)) == ["ACK", "BYE"]
    assert to_meta(sent) == []
    ack, bye = h.requests(sent)
    assert ack.uri == bye.uri == str(parse_address(PBX_CONTACT).uri)
    assert (ack.cseq.seq, bye.cseq.seq) == (1, 2)
    assert bye.to.tag == flow.pbx_to_tag and bye.call_id == flow.pbx_invite.call_id
    # A retransmission of the 200 is ACKed again, without a second BYE.
    assert methods(h.pbx_reply(flow, 200)) == ["ACK"]
    h.from_pbx(response_to(bye, 200, to_tag=None))
    h.drain_timers()
    h.sent()
    assert len(h.manager) == 0


def test_pbx_silent_then_timer_b(h: Harness) -> None:
    flow = h.start_call()
    h.drain_timers()
    h.sent()
    assert [r.status for r in h.responses(to_meta(h.log)) if r.status >= 200] == [407, 408]
    assert_gone(h, flow)
    assert len(h.manager) == 0
    assert h.scheduler.pending == 0


def test_pbx_unreachable_is_480(h: Harness) -> None:
    flow = h.start_call()
    h.transport_error(PBX_TARGET)
    sent = h.sent()
    assert final_to_meta(sent).status == mapping.PBX_TRANSPORT_FAILURE == 480
    assert to_pbx(sent) == []
    assert_gone(h, flow)


# =========================================================================== PBX re-INVITE / UPDATE


def _reinvite(h: Harness, flow: Flow, direction: str | None, version: int) -> list[Sent]:
    sdp = pbx_sdp(direction, version=version) if direction else None
    sent = h.pbx_in_dialog(flow, "INVITE", sdp=sdp)
    return sent


def test_hold_and_unhold_answered_locally(h: Harness) -> None:
    flow = answered(h)
    calls_before = len(flow.bridge.calls)
    sent = _reinvite(h, flow, "sendonly", 2)
    assert to_meta(sent) == []  # docs/whatsapp-sip.md section 5: never toward Meta
    ok = h.responses(sent, 200)[0]
    assert ok.cseq.method == "INVITE" and ok.contact is not None
    answer = parse_sdp(ok.body)
    assert answer.media[0].direction(answer) == "recvonly"
    assert answer.media[0].port == flow.bridge.pbx_port
    assert flow.bridge.calls[calls_before:][0][0] == "pbx"
    assert flow.bridge.last("pbx").direction == "recvonly"
    h.from_pbx(pbx_ack(flow, flow.pbx_cseq))
    assert h.sent() == []
    # Unhold.
    sent = _reinvite(h, flow, "sendrecv", 3)
    assert to_meta(sent) == []
    answer = parse_sdp(h.responses(sent, 200)[0].body)
    assert answer.media[0].direction(answer) == "sendrecv"
    assert flow.bridge.last("pbx").direction == "sendrecv"
    assert [leg for leg, _ in flow.bridge.calls].count("whatsapp") == 1
    assert flow.call.state is State.CONFIRMED


def test_reinvite_with_new_address(h: Harness) -> None:
    flow = answered(h)
    sent = h.pbx_in_dialog(flow, "INVITE", sdp=pbx_sdp(port=12000, version=2))
    assert statuses(sent) == [100, 200]
    assert flow.bridge.last("pbx").remote_port == 12000


def test_offerless_reinvite(h: Harness) -> None:
    flow = answered(h)
    sent = _reinvite(h, flow, None, 0)
    assert to_meta(sent) == []
    ok = h.responses(sent, 200)[0]
    offer = parse_sdp(ok.body)
    assert offer.media[0].proto == "RTP/AVP"
    assert offer.media[0].direction(offer) == "sendrecv"
    before = len(flow.bridge.calls)
    h.from_pbx(pbx_ack(flow, flow.pbx_cseq, sdp=pbx_sdp(port=14000, version=3)))
    assert h.sent() == []
    assert len(flow.bridge.calls) == before + 1
    assert flow.bridge.last("pbx").remote_port == 14000


def test_offerless_reinvite_after_hold_offers_sendrecv(h: Harness) -> None:
    """RFC 6337 5.3: the side that did not put the call on hold offers sendrecv in its
    offer for an offer-less re-INVITE (else the PBX's resume keeps the call on hold)."""
    flow = answered(h)
    _reinvite(h, flow, "sendonly", 2)
    h.from_pbx(pbx_ack(flow, flow.pbx_cseq))
    sent = _reinvite(h, flow, None, 0)
    offer = parse_sdp(h.responses(sent, 200)[0].body)
    assert offer.media[0].direction(offer) == "sendrecv"
    h.from_pbx(pbx_ack(flow, flow.pbx_cseq, sdp=pbx_sdp("sendrecv", version=3)))
    assert flow.bridge.last("pbx").direction == "sendrecv"


def test_update_answered_locally(h: Harness) -> None:
    flow = answered(h)
    sent = h.pbx_in_dialog(flow, "UPDATE", sdp=pbx_sdp("sendonly", version=2))
    assert to_meta(sent) == []
    ok = only(h.responses(sent))
    assert isinstance(ok, Response) and ok.status == 200 and ok.cseq.method == "UPDATE"
    answer = parse_sdp(ok.body)
    assert answer.media[0].direction(answer) == "recvonly"
    assert flow.bridge.last("pbx").direction == "recvonly"


def test_update_without_sdp_is_a_plain_200(h: Harness) -> None:
    """A session-timer refresh UPDATE carries no offer: the 200 carries no SDP
    (RFC 3311 section 5.2: an answer only to an offer; an UPDATE's 2xx is no offer)."""
    flow = answered(h)
    calls_before = len(flow.bridge.calls)
    sent = h.pbx_in_dialog(flow, "UPDATE", extra=[("Session-Expires", "1800;refresher=uac")])
    ok = only(h.responses(sent))
    assert isinstance(ok, Response) and ok.status == 200
    assert ok.body == b"" and ok.content_type is None
    assert to_meta(sent) == []
    assert len(flow.bridge.calls) == calls_before


def test_reinvite_with_lower_cseq_is_500(h: Harness) -> None:
    flow = answered(h)
    h.pbx_in_dialog(flow, "INVITE", sdp=pbx_sdp(version=2))
    h.from_pbx(pbx_ack(flow, flow.pbx_cseq))
    h.sent()
    sent = h.pbx_in_dialog(flow, "INVITE", cseq=flow.pbx_cseq - 1, sdp=pbx_sdp(version=3))
    resp = h.responses(sent)[-1]
    assert resp.status == 500
    assert resp.headers.get("Retry-After") is not None
    assert to_meta(sent) == []


def test_unusable_reoffer_is_488_and_the_call_stays(h: Harness) -> None:
    flow = answered(h)
    sent = h.pbx_in_dialog(flow, "INVITE", sdp=pbx_sdp(codecs=((18, "G729"),), version=2))
    assert h.responses(sent)[-1].status == 488
    assert flow.call.state is State.CONFIRMED


def test_pbx_options_and_unknown_in_dialog(h: Harness) -> None:
    flow = answered(h)
    assert statuses(h.pbx_in_dialog(flow, "OPTIONS")) == [200]
    sent = h.pbx_in_dialog(flow, "MESSAGE")
    assert statuses(sent) == [405]
    assert "UPDATE" in (h.responses(sent)[0].headers.get("Allow") or "")


# =========================================================================== media


def test_no_media_hangs_up_both_legs_with_reason(h: Harness) -> None:
    flow = answered(h)
    flushes = h.flushes
    flow.bridge.on_no_media("whatsapp")
    sent = h.sent()
    byes = h.requests(sent, "BYE")
    assert len(byes) == 2
    for bye in byes:
        reason = bye.headers.get("Reason") or ""
        assert "cause=408" in reason and "whatsapp" in reason
    assert {s.target.host for s in sent} == {"wa.meta.vc", PBX_HOST}
    assert h.flushes > flushes
    assert flow.call.end_reason == "no_media_whatsapp"
    assert_gone(h, flow)


def test_no_media_before_answer_is_ignored(h: Harness) -> None:
    flow = h.start_call()
    flow.bridge.on_no_media("pbx")
    assert h.sent() == []
    assert flow.call.state is State.CALLING


def test_hangup_all(h: Harness) -> None:
    up = answered(h)
    ringing = h.start_call()
    h.pbx_reply(ringing, 180)
    h.calls.hangup_all("shutdown")
    sent = h.sent()
    assert h.calls.calls == {}
    assert len(h.requests(to_pbx(sent), "BYE")) == 1
    assert len(h.requests(to_meta(sent), "BYE")) == 1
    assert 503 in statuses(to_meta(sent))  # the ringing one: "try another instance"
    assert methods(to_pbx(sent)).count("CANCEL") == 1
    assert up.bridge.closed == 1 and ringing.bridge.closed == 1


def test_hangup_while_ringing_then_pbx_answers(h: Harness) -> None:
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.calls.hangup_all("shutdown")
    sent = h.sent()
    assert final_to_meta(sent).status == 503
    assert methods(to_pbx(sent)) == ["CANCEL"]
    assert_gone(h, flow)
    sent = h.pbx_reply(flow, 200)  # crossed our CANCEL
    assert methods(to_pbx(sent)) == ["ACK", "BYE"] and to_meta(sent) == []


# =========================================================================== the tables


def test_duplicate_wacid_does_not_corrupt_the_call_table(h: Harness) -> None:
    """Two INVITEs (different Call-IDs) carrying the same x-wa-meta-wacid: both calls
    stay tracked, each ends on its own, nothing is left in the tables."""
    wacid = "wacid.HBgLDUPLICATE"
    a = h.start_call(wacid=wacid, call_id="outgoing:wacid.A")
    b = h.start_call(wacid=wacid, call_id="outgoing:wacid.B")
    assert a.call is not b.call
    assert len(h.calls.calls) == 2
    h.pbx_reply(a, 486)
    assert len(h.calls.calls) == 1
    assert b.call in h.calls.calls.values()
    h.pbx_reply(b, 486)
    assert h.calls.calls == {} and h.calls._by_local == {} and h.calls._by_server_tx == {}


def test_merged_request_is_482(h: Harness) -> None:
    """The same INVITE again on a new branch (RFC 3261 8.2.2.2): 482, the call goes on."""
    flow = h.start_call()
    again = meta_invite(
        call_id=flow.invite.call_id,
        from_tag=flow.invite.from_.tag,
        wacid=flow.call.key,
        cseq=flow.invite.cseq.seq,
        auth=flow.invite.headers.get("Proxy-Authorization"),
    )
    h.from_meta(again)
    sent = h.sent()
    assert final_to_meta(sent).status == 482
    assert to_pbx(sent) == []
    assert list(h.calls.calls.values()) == [flow.call]
    h.answer(flow)
    assert flow.call.state is State.CONFIRMED


def test_many_calls_leave_nothing_behind(h: Harness) -> None:
    ends = ["meta_bye", "pbx_bye", "cancel", "busy"]
    h.reparse = False  # the messages are checked elsewhere; here only the tables matter
    for i in range(3000):
        flow = h.start_call()
        how = ends[i % len(ends)]
        if how == "meta_bye":
            h.answer(flow)
            h.meta_in_dialog(flow, "BYE")
        elif how == "pbx_bye":
            h.answer(flow)
            h.pbx_in_dialog(flow, "BYE")
        elif how == "cancel":
            h.pbx_reply(flow, 180)
            h.from_meta(meta_cancel(flow.invite))
            h.sent()
            h.from_pbx(response_to(flow.pbx_invite, 487, to_tag=flow.pbx_to_tag))
        else:
            h.pbx_reply(flow, 486)
        h.sent()
        assert flow.call.state is State.ENDED, how
        h.advance(0.01)
        h.sent()
    assert h.calls.calls == {}
    assert h.calls._by_local == {}
    assert h.calls._by_server_tx == {}
    assert len(h.ended) == 3000
    assert h.bridges.open == []
    h.drain_timers()
    h.sent()
    assert len(h.manager) == 0
    assert h.manager._accepted == {} and h.manager._server_r == {}
    assert h.manager.next_deadline() is None
    assert h.scheduler.pending == 0


# =========================================================================== WebRTC mode (issue 14)


def _webrtc_offer() -> str:
    return "\r\n".join(meta_lines()) + "\r\n"


def test_metas_webrtc_offer_is_answered_and_remembered_for_calls_to_whatsapp(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, bridges=FakeBridgeFactory(webrtc=WEBRTC_LOCAL))
    flow = h.start_call(sdp=_webrtc_offer())
    assert h.calls.srtp_seen[BUSINESS] == "dtls"  # what an "auto" call to WhatsApp offers
    sent = h.answer(flow)
    ok = [s.response for s in sent if isinstance(s.message, Response) and s.response.status == 200]
    text = ok[0].body.decode()
    assert "UDP/TLS/RTP/SAVPF" in text and "a=setup:active" in text and "a=ice-lite" not in text
    assert "a=ice-ufrag:gwUfrag1" in text and f"a=fingerprint:sha-256 {WEBRTC_LOCAL[2][1]}" in text
    media = flow.bridge.last("whatsapp")
    assert media.webrtc is not None and media.srtp is None and media.webrtc.dtls_client


def test_an_sdes_number_refuses_metas_webrtc_offer_with_a_warning(tmp_path: Path) -> None:
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "srtp": "sdes"}]
    h = Harness(tmp_path, {"whatsapp": {"numbers": numbers}}, bridges=FakeBridgeFactory())
    sent = h.challenge_and_retry({"sdp": _webrtc_offer()})
    refusal = [s.response for s in sent if isinstance(s.message, Response)][-1]
    assert refusal.status == 488
    assert "SDES only" in (refusal.headers.get("Warning") or "")
    assert h.calls.calls == {} and BUSINESS not in h.calls.srtp_seen
