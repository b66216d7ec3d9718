"""Review findings in the B2BUA: BYE on an early dialog (RFC 3261 section 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.b2bua.call import State
from gateway.b2bua.session import WhatsAppSession
from gateway.sip.ids import new_branch
from gateway.sip.message import Request, Response
from gateway.sip.transaction import Target
from tests.unit.b2bua_fakes import (
    BUSINESS,
    META_SDP_NO_CRYPTO,
    PBX_HOST,
    PBX_PORT,
    Harness,
    OutboundHarness,
    meta_invite,
    meta_request,
    meta_response,
    pbx_invite,
    pbx_request,
    pbx_sdp,
)


@pytest.fixture
def h(tmp_path: Path) -> OutboundHarness:
    return OutboundHarness(tmp_path)


def _early_bye_from_pbx(invite: Request, to_tag: str, method: str = "BYE") -> bytes:
    lines = [
        f"{method} sip:gw@127.0.0.1:5090 SIP/2.0",
        f"Via: SIP/2.0/UDP {PBX_HOST}:{PBX_PORT};rport;branch={new_branch()}",
        "Max-Forwards: 70",
        f"From: {invite.headers.get('From')}",
        f"To: {invite.headers.get('To')};tag={to_tag}",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.cseq.seq + 1} {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_pbx_bye_on_the_early_dialog_cancels_toward_meta(h: OutboundHarness) -> None:
    """The caller may BYE an early dialog (RFC 3261 15): the PBX's INVITE gets 487 (15.1.2)
    and the INVITE to Meta is cancelled, or the WhatsApp user's phone rings on."""
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.from_pbx(_early_bye_from_pbx(flow.pbx_invite, flow.call.pbx.tag))
    sent = h.sent()
    pbx = [s.message for s in h.to_pbx(sent) if isinstance(s.message, Response)]
    assert sorted((r.status, r.cseq.method) for r in pbx) == [(200, "BYE"), (487, "INVITE")]
    meta = [s.message for s in h.to_meta(sent) if isinstance(s.message, Request)]
    assert [m.method for m in meta] == ["CANCEL"]
    assert flow.call.state is State.CANCELLING
    h.from_meta(meta_response(meta[0], 200))
    h.meta_reply(flow, 487)
    assert flow.call.state is State.ENDED
    assert flow.call.key not in h.calls.calls


def test_pbx_bye_on_an_early_inbound_call_still_answers_meta(tmp_path: Path) -> None:
    """A PBX that BYEs while ringing (not allowed of a callee, RFC 3261 15): Meta's INVITE
    gets a final response (480, not 503) instead of staying unanswered forever."""
    h = Harness(tmp_path)
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.pbx_in_dialog(flow, "BYE")
    sent = h.log
    finals = [
        s.message
        for s in sent
        if isinstance(s.message, Response)
        and s.message.cseq.method == "INVITE"
        and s.message.status >= 200
        and s.message.call_id == flow.invite.call_id
        and s.message.cseq.seq == flow.invite.cseq.seq
    ]
    assert [r.status for r in finals] == [480]
    assert flow.call.state is State.ENDED
    assert flow.call.key not in h.calls.calls


# A 2xx or INVITE whose Contact is not a SIP URI (RFC 3261 8.1.1.8 / 12.1.1 require one):
# no ACK, BYE or in-dialog request can be routed to it.
TEL_CONTACT = "<tel:+15550001111>"


def test_pbx_2xx_with_a_non_sip_contact_fails_the_call_toward_meta(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.pbx_reply(flow, 200, contact=TEL_CONTACT, sdp=pbx_sdp())
    finals = [
        s.message
        for s in h.log
        if isinstance(s.message, Response)
        and s.message.cseq.method == "INVITE"
        and s.message.status >= 200
        and s.message.call_id == flow.invite.call_id
        and s.message.cseq.seq == flow.invite.cseq.seq
    ]
    assert [r.status for r in finals] == [480]
    assert flow.call.state is State.ENDED
    assert flow.bridge.closed == 1


def test_meta_2xx_with_a_non_sip_contact_fails_the_call_toward_the_pbx(
    h: OutboundHarness,
) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    sent = h.meta_reply(flow, 200, contact=TEL_CONTACT, record_route=())
    finals = [r for r in h.responses(h.to_pbx(sent)) if r.status >= 200]
    assert [r.status for r in finals] == [502]
    assert flow.call.state is State.ENDED
    assert flow.bridge.closed == 1


def test_pbx_invite_with_a_non_sip_contact_is_400(h: OutboundHarness) -> None:
    data = pbx_invite().replace(b"Contact: <sip:", b"Contact: <tel:+1555;x=", 1)
    h.from_pbx(data)
    sent = h.sent()
    assert [r.status for r in h.responses(sent) if r.status >= 200] == [400]
    assert h.to_meta(sent) == [] and h.calls.calls == {}


def test_meta_invite_with_a_non_sip_contact_is_400(tmp_path: Path) -> None:
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
    data = meta_invite().replace(b"Contact: <sip:", b"Contact: <tel:+1555;x=", 1)
    data = b"".join(line for line in data.splitlines(keepends=True) if b"Record-Route" not in line)
    h.from_meta(data)
    sent = h.sent()
    assert [r.status for r in h.responses(sent) if r.status >= 200] == [400]
    assert h.calls.calls == {}


def test_outbound_setup_repr_hides_our_sdes_keys(h: OutboundHarness) -> None:
    flow = h.place_call()
    session = flow.call.whatsapp.session
    assert isinstance(session, WhatsAppSession)
    text = repr(session)
    for key in session.keys.values():
        assert repr(key) not in text and key.hex() not in text


def test_offer_refused_with_488_says_why_in_a_warning(tmp_path: Path) -> None:
    """RFC 3261 13.3.1.3: a 488 to an offer SHOULD carry a Warning saying why."""
    h = Harness(tmp_path)
    sent = h.challenge_and_retry({"sdp": META_SDP_NO_CRYPTO})
    [resp] = [r for r in h.responses(sent) if r.status == 488]
    warning = resp.headers.get("Warning") or ""
    assert warning.startswith("305 sip.example.com ") and "crypto" in warning


def test_pbx_reoffer_refused_with_488_says_why_in_a_warning(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.connect(flow)
    sent = h.pbx_out(flow, "INVITE", sdp=pbx_sdp(codecs=((18, "G729"),), version=2))
    [resp] = [r for r in h.responses(sent) if r.status == 488]
    warning = resp.headers.get("Warning") or ""
    assert warning.startswith("305 ") and "offered" in warning


def test_late_pbx_2xx_with_a_non_sip_contact_is_dropped_quietly(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    flow = h.start_call()
    h.advance(h.cfg.pbx.invite_timeout + 0.1)  # no provisional: 408 to Meta, call over
    assert flow.call.state is State.ENDED
    h.sent()
    h.pbx_reply(flow, 200, contact=TEL_CONTACT, sdp=pbx_sdp())  # raised ValueError
    assert [s for s in h.sent() if isinstance(s.message, Request)] == []


def test_in_dialog_request_is_matched_on_the_leg_it_arrived_on(tmp_path: Path) -> None:
    """The PBX dialog's ids arriving from the WhatsApp side (or the reverse) are no dialog
    of that leg: 481, the call goes on (a Meta-side peer cannot hang up or re-INVITE the
    PBX leg by replaying its Call-ID and tags)."""
    h = Harness(tmp_path)
    flow = h.start_call()
    h.answer(flow)
    h.from_meta(pbx_request(flow, "BYE", 200))
    assert [r.status for r in h.responses(h.sent())] == [481]
    assert flow.call.state is State.CONFIRMED
    h.from_pbx(meta_request(flow, "BYE", 5))
    assert [r.status for r in h.responses(h.sent())] == [481]
    assert flow.call.state is State.CONFIRMED


def test_meta_unreachable_while_the_pbx_rings_ends_the_call(tmp_path: Path) -> None:
    """Meta's connection is gone and our 180 cannot reach it: the INVITE's server
    transaction fails (RFC 3261 17.2.4). The call must not wait for an answer it can never
    deliver (it would then hold the PBX leg and the media ports forever)."""
    h = Harness(tmp_path)
    flow = h.start_call()
    h.pbx_reply(flow, 180)
    h.transport_error(Target("tls", "157.240.19.1", 40001))
    sent = h.sent()
    assert [s.message.method for s in sent if isinstance(s.message, Request)] == ["CANCEL"]
    assert flow.call.state is State.ENDED
    assert flow.bridge.closed == 1
    assert flow.call.key not in h.calls.calls


def test_pbx_unreachable_while_meta_rings_ends_the_call(h: OutboundHarness) -> None:
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.transport_error(Target("udp", PBX_HOST, PBX_PORT))
    sent = h.sent()
    assert [s.message.method for s in h.to_meta(sent) if isinstance(s.message, Request)] == [
        "CANCEL"
    ]
    assert flow.call.state is State.ENDED
    assert flow.bridge.closed == 1


def test_reloaded_max_call_rate_takes_effect(tmp_path: Path) -> None:
    """SIGHUP applies whatsapp.numbers[].max_call_rate (it is not a restart-only key); the
    call table kept the limiter built from the first config."""
    numbers = [{"number": BUSINESS, "sip_password_file": "wa.pass", "max_call_rate": 1}]
    h = OutboundHarness(tmp_path, {"whatsapp": {"numbers": numbers}})
    h.place_call()
    wa = h.cfg.whatsapp
    faster = tuple(n.model_copy(update={"max_call_rate": 10.0}) for n in wa.numbers)
    h.calls.cfg = h.cfg.model_copy(update={"whatsapp": wa.model_copy(update={"numbers": faster})})
    h.advance(0.2)
    h.place_call()  # 2 calls in 0.2 s: fine at 10/s


def test_call_ends_even_when_the_pbx_target_became_unroutable(tmp_path: Path) -> None:
    """A PBX re-INVITE whose Contact is not a SIP URI refreshes the remote target
    (RFC 3261 12.2.2); Meta's BYE later must still end the call (the BYE toward the PBX
    raised ValueError, so the call never ended and kept its media ports)."""
    h = Harness(tmp_path)
    flow = h.start_call()
    h.answer(flow)
    flow.pbx_cseq += 1
    data = pbx_request(flow, "INVITE", flow.pbx_cseq, sdp=pbx_sdp(version=2))
    h.from_pbx(data.replace(b"Contact: <sip:", b"Contact: <tel:+1555;x=", 1))
    h.sent()
    h.meta_in_dialog(flow, "BYE")
    assert flow.call.state is State.ENDED
    assert flow.bridge.closed == 1


def test_reinvite_before_the_first_invite_is_answered_gets_500(h: OutboundHarness) -> None:
    """RFC 3261 14.2: a second INVITE in the dialog before the final response to the first
    MUST get 500 with Retry-After (it was answered 200 with an SDP while ringing)."""
    flow = h.place_call()
    h.meta_challenges(flow)
    h.meta_reply(flow, 180)
    h.from_pbx(_early_bye_from_pbx(flow.pbx_invite, flow.call.pbx.tag, "INVITE"))
    resp = [r for r in h.responses(h.sent()) if r.cseq.method == "INVITE" and r.status >= 200]
    assert [r.status for r in resp] == [500] and resp[0].headers.get("Retry-After")
    assert flow.call.state is State.EARLY
