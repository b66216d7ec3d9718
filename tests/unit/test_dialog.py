"""Dialogs (RFC 3261 section 12, 13.2.2.4, 14), with Meta's SIP edge as the peer."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog
from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.transaction import add_via

META_RR_1 = "<sip:wa.meta.vc;transport=tls;lr>"
META_RR_2 = "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
META_CONTACT_URI = "sip:+12195550714@wa.meta.vc;transport=tls;ob"
GW_CONTACT = "<sip:gw@gw.example.com:5061;transport=tls>"
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def parse_req(text: str) -> Request:
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def parse_resp(text: str) -> Response:
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def meta_invite(cseq: int = 1, *, to_tag: str = "", contact: str = "") -> Request:
    """An INVITE as Meta's edge sends it to the gateway."""
    to = "<sip:+14155550100@gw.example.com>" + (f";tag={to_tag}" if to_tag else "")
    contact = contact or f"<{META_CONTACT_URI}>;isfocus"
    return parse_req(
        "INVITE sip:+14155550100@gw.example.com:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 157.240.19.1:5061;branch=z9hG4bK-meta-1;rport\r\n"
        f"Record-Route: {META_RR_1}\r\n"
        f"Record-Route: {META_RR_2}\r\n"
        "Max-Forwards: 69\r\n"
        "From: <sip:+12195550714@wa.meta.vc>;tag=meta-from-1\r\n"
        f"To: {to}\r\n"
        "Call-ID: 7d2c1e4f-meta-call\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: {contact}\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n" + SDP.decode()
    )


def gw_invite_to_meta() -> Request:
    """The gateway's outbound INVITE to Meta (with the Via the transaction layer adds)."""
    return parse_req(
        "INVITE sip:+12195550714@wa.meta.vc;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 203.0.113.5:5061;branch=z9hG4bKgw1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Acme Support" <sip:+14155550100@gw.example.com>;tag=gw-from-1\r\n'
        "To: <sip:+12195550714@wa.meta.vc>\r\n"
        "Call-ID: gw-call-42@gw.example.com\r\n"
        "CSeq: 101 INVITE\r\n"
        f"Contact: {GW_CONTACT}\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def meta_200(invite: Request) -> Response:
    """Meta's 200 OK: Record-Route as the proxies added it, Contact of the far end."""
    return parse_resp(
        "SIP/2.0 200 OK\r\n"
        f"Via: {invite.headers.get('Via')}\r\n"
        f"Record-Route: {META_RR_2}, {META_RR_1}\r\n"
        f"From: {invite.headers.get('From')}\r\n"
        f"To: {invite.headers.get('To')};tag=meta-to-9\r\n"
        f"Call-ID: {invite.call_id}\r\n"
        "CSeq: 101 INVITE\r\n"
        f"Contact: <{META_CONTACT_URI}>;isfocus\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def on_the_wire(req: Request) -> Request:
    """Add a Via as the transaction layer would and check the bytes parse back."""
    add_via(req, "tls", "203.0.113.5", 5061)
    return parse_req(req.to_bytes().decode())


# -- UAS (12.1.1) ----------------------------------------------------------


def test_uas_dialog_from_meta_invite() -> None:
    invite = meta_invite(cseq=7)
    d = Dialog.uas(invite, "gw-tag-1", GW_CONTACT)
    assert d.id == ("7d2c1e4f-meta-call", "gw-tag-1", "meta-from-1")
    assert d.route_set == [META_RR_1, META_RR_2]  # in order, as received
    assert d.remote_target == META_CONTACT_URI
    assert d.remote_seq == 7 and d.local_seq == 0
    assert str(d.local_uri) == "<sip:+14155550100@gw.example.com>"
    assert str(d.remote_uri) == "<sip:+12195550714@wa.meta.vc>"
    assert d.local_contact == GW_CONTACT and d.secure is False


def test_uas_bye_toward_meta_keeps_route_order() -> None:
    d = Dialog.uas(meta_invite(), "gw-tag-1", GW_CONTACT)
    bye = d.create_request("BYE")
    assert bye.method == "BYE" and bye.uri == META_CONTACT_URI
    assert bye.headers.lines("Route") == [META_RR_1, META_RR_2]
    assert bye.headers.lines("Via") == []  # the transaction layer adds it
    assert bye.headers.get("Max-Forwards") == "70"
    assert bye.headers.get("From") == "<sip:+14155550100@gw.example.com>;tag=gw-tag-1"
    assert bye.headers.get("To") == "<sip:+12195550714@wa.meta.vc>;tag=meta-from-1"
    assert bye.call_id == "7d2c1e4f-meta-call"
    assert str(bye.cseq) == "1 BYE"
    assert "Contact" not in bye.headers
    hop = d.next_hop()
    assert (hop.host, hop.port, hop.transport) == ("wa.meta.vc", None, "tls")
    wire = on_the_wire(bye)
    assert [str(a.uri) for a in wire.addresses("Route")] == [
        "sip:wa.meta.vc;transport=tls;lr",
        "sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr",
    ]


def test_uas_reinvite_carries_contact_and_sdp() -> None:
    bare = Dialog.uas(meta_invite(), "gw-tag-1", "sip:gw@gw.example.com:5061;transport=tls")
    assert bare.create_request("INVITE").headers.get("Contact") == GW_CONTACT
    d = Dialog.uas(meta_invite(), "gw-tag-1", GW_CONTACT)
    reinvite = d.create_request("INVITE", body=SDP, content_type="application/sdp")
    assert reinvite.headers.get("Contact") == GW_CONTACT
    assert reinvite.content_type == "application/sdp" and reinvite.body == SDP
    assert str(reinvite.cseq) == "1 INVITE"
    wire = on_the_wire(reinvite)
    assert wire.body == SDP and wire.headers.get("Content-Length") == str(len(SDP))
    update = d.create_request("UPDATE", headers=[("Session-Expires", "1800;refresher=uac")])
    assert str(update.cseq) == "2 UPDATE" and update.headers.get("Contact") == GW_CONTACT
    assert update.headers.get("Session-Expires") == "1800;refresher=uac"
    with pytest.raises(ValueError):
        d.create_request("INFO", body=b"Signal=1\r\n")  # a body needs a type


# -- UAC (12.1.2) ----------------------------------------------------------


def test_uac_dialog_toward_meta_reverses_record_route() -> None:
    invite = gw_invite_to_meta()
    ok = meta_200(invite)
    d = Dialog.uac(invite, ok)
    assert d.id == ("gw-call-42@gw.example.com", "gw-from-1", "meta-to-9")
    assert d.route_set == [META_RR_1, META_RR_2]  # the 200's pair, reversed
    assert d.remote_target == META_CONTACT_URI
    assert d.local_seq == 101 and d.remote_seq is None
    assert d.local_contact == "sip:gw@gw.example.com:5061;transport=tls"  # the URI
    assert d.create_request("INVITE").headers.get("Contact") == GW_CONTACT
    d.local_seq = 101
    assert d.local_uri.display == "Acme Support" and d.local_uri.tag is None
    assert d.remote_uri.tag is None
    bye = d.create_request("BYE")
    assert bye.uri == META_CONTACT_URI
    assert bye.headers.lines("Route") == [META_RR_1, META_RR_2]
    assert str(bye.cseq) == "102 BYE" and d.local_seq == 102
    assert bye.from_.tag == "gw-from-1" and bye.to.tag == "meta-to-9"
    assert bye.from_.display == "Acme Support"
    assert d.next_hop().host == "wa.meta.vc"


def test_uac_needs_from_tag_and_tolerates_missing_contact() -> None:
    invite = gw_invite_to_meta()
    ok = meta_200(invite)
    ok.headers.remove("Contact")
    ok.headers.remove("Record-Route")
    d = Dialog.uac(invite, ok)
    assert d.remote_target == invite.uri and d.route_set == []
    bye = d.create_request("BYE")
    assert bye.uri == invite.uri and bye.headers.lines("Route") == []
    assert d.next_hop().host == "wa.meta.vc"
    invite.headers.set("From", "<sip:+14155550100@gw.example.com>")
    with pytest.raises(ValueError):
        Dialog.uac(invite, meta_200(invite))


def test_secure_flag_from_sips_request_uri() -> None:
    invite = gw_invite_to_meta()
    invite.uri = "sips:+12195550714@wa.meta.vc"
    assert Dialog.uac(invite, meta_200(invite)).secure is True


# -- routing (12.2.1.1) ------------------------------------------------------


def _dialog(route_set: list[str]) -> Dialog:
    d = Dialog.uas(meta_invite(), "gw-tag-1", GW_CONTACT)
    d.route_set = route_set
    return d


def test_loose_routing() -> None:
    d = _dialog(["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    r = d.create_request("INFO")
    assert r.uri == META_CONTACT_URI
    assert r.headers.lines("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert d.next_hop().host == "p1.example.com"


def test_strict_routing() -> None:
    d = _dialog(["<sip:strict.example.com:5070;transport=udp;method=INVITE>", META_RR_2])
    r = d.create_request("BYE")
    # the first route becomes the Request-URI without parameters a Request-URI cannot carry
    assert r.uri == "sip:strict.example.com:5070;transport=udp"
    assert r.headers.lines("Route") == [META_RR_2, f"<{META_CONTACT_URI}>"]
    hop = d.next_hop()
    assert (hop.host, hop.port) == ("strict.example.com", 5070)
    on_the_wire(r)


def test_no_route_set() -> None:
    d = _dialog([])
    r = d.create_request("BYE")
    assert r.uri == META_CONTACT_URI and "Route" not in r.headers
    assert str(d.next_hop()) == META_CONTACT_URI


def test_ack_and_cancel_are_not_create_request() -> None:
    d = _dialog([META_RR_1])
    for method in ("ACK", "CANCEL", "ack"):
        with pytest.raises(ValueError):
            d.create_request(method)
    assert d.local_seq == 0


# -- ACK for a 2xx (13.2.2.4) ------------------------------------------------


def test_create_ack() -> None:
    invite = gw_invite_to_meta()
    d = Dialog.uac(invite, meta_200(invite))
    ack = d.create_ack(101)
    assert ack.method == "ACK" and str(ack.cseq) == "101 ACK"
    assert d.local_seq == 101  # an ACK takes no new number
    assert ack.uri == META_CONTACT_URI
    assert ack.headers.lines("Route") == [META_RR_1, META_RR_2]
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to.tag == "meta-to-9" and ack.call_id == invite.call_id
    assert ack.headers.lines("Via") == [] and "Contact" not in ack.headers
    late = d.create_ack(101, body=SDP, content_type="application/sdp")  # late-offer answer
    assert late.body == SDP and late.content_type == "application/sdp"
    wire = on_the_wire(late)
    assert wire.top_via.branch != invite.top_via.branch  # a new transaction


# -- receiving (12.2.2) -------------------------------------------------------


def _in_dialog(method: str, cseq: int, contact: str | None = None) -> Request:
    contact_line = f"Contact: {contact}\r\n" if contact else ""
    return parse_req(
        f"{method} sip:gw@gw.example.com:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 157.240.19.1:5061;branch=z9hG4bK-meta-x\r\n"
        f"Route: {GW_CONTACT}\r\n"
        "From: <sip:+12195550714@wa.meta.vc>;tag=meta-from-1\r\n"
        "To: <sip:+14155550100@gw.example.com>;tag=gw-tag-1\r\n"
        "Call-ID: 7d2c1e4f-meta-call\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{contact_line}"
        "Content-Length: 0\r\n\r\n"
    )


def test_cseq_ordering() -> None:
    d = Dialog.uas(meta_invite(cseq=5), "gw-tag-1", GW_CONTACT)
    assert d.receive_request(_in_dialog("ACK", 5)) is True
    assert d.receive_request(_in_dialog("INFO", 6)) is True and d.remote_seq == 6
    assert d.receive_request(_in_dialog("INFO", 4)) is False  # out of order: answer 500
    assert d.remote_seq == 6
    assert d.receive_request(_in_dialog("INFO", 9)) is True and d.remote_seq == 9
    assert d.receive_request(_in_dialog("ACK", 5)) is True and d.remote_seq == 9


def test_uac_dialog_takes_first_remote_seq() -> None:
    invite = gw_invite_to_meta()
    d = Dialog.uac(invite, meta_200(invite))
    assert d.receive_request(_in_dialog("BYE", 3)) is True and d.remote_seq == 3


def test_target_refresh_by_request() -> None:
    d = Dialog.uas(meta_invite(), "gw-tag-1", GW_CONTACT)
    assert d.receive_request(_in_dialog("BYE", 2, "<sip:other@wa.meta.vc>"))
    assert d.remote_target == META_CONTACT_URI  # BYE is no target refresh
    assert d.receive_request(_in_dialog("INVITE", 3, "<sip:moved@edge2.meta.vc;transport=tls>"))
    assert d.remote_target == "sip:moved@edge2.meta.vc;transport=tls"
    assert d.receive_request(_in_dialog("UPDATE", 4, '"x" <sip:again@edge3.meta.vc>;isfocus'))
    assert d.remote_target == "sip:again@edge3.meta.vc"
    assert d.receive_request(_in_dialog("INVITE", 5))  # no Contact: target unchanged
    assert d.remote_target == "sip:again@edge3.meta.vc"
    assert d.create_request("BYE").uri == "sip:again@edge3.meta.vc"


def test_target_refresh_by_response() -> None:
    invite = gw_invite_to_meta()
    d = Dialog.uac(invite, meta_200(invite))
    reinvite = d.create_request("INVITE")
    add_via(reinvite, "tls", "203.0.113.5", 5061)
    refused = make_response(reinvite, 488)
    refused.headers.add("Contact", "<sip:nope@wa.meta.vc>")
    d.update_from_response(refused)
    assert d.remote_target == META_CONTACT_URI
    info = d.create_request("INFO")
    add_via(info, "tls", "203.0.113.5", 5061)
    info_ok = make_response(info, 200)
    info_ok.headers.add("Contact", "<sip:nope@wa.meta.vc>")
    d.update_from_response(info_ok)
    assert d.remote_target == META_CONTACT_URI  # INFO is no target refresh
    ok = make_response(reinvite, 200)
    ok.headers.add("Contact", "<sip:new@edge9.meta.vc;transport=tls>")
    d.update_from_response(ok)
    assert d.remote_target == "sip:new@edge9.meta.vc;transport=tls"
    assert d.create_ack(reinvite.cseq.seq).uri == "sip:new@edge9.meta.vc;transport=tls"


def test_early_dialog_confirmed_by_2xx_takes_its_route_set() -> None:
    invite = gw_invite_to_meta()
    ok = meta_200(invite)
    progress = make_response(invite, 183, to_tag="meta-to-9")
    progress.headers.add("Record-Route", META_RR_1)
    progress.headers.add("Contact", "<sip:early@wa.meta.vc;transport=tls>")
    d = Dialog.uac(invite, progress)
    assert d.early and d.route_set == [META_RR_1]
    assert d.remote_target == "sip:early@wa.meta.vc;transport=tls"
    d.update_from_response(ok)
    assert not d.early and d.route_set == [META_RR_1, META_RR_2]
    assert d.remote_target == META_CONTACT_URI
    # a confirmed dialog never changes its route set (12.2.1.2)
    reinvite_ok = meta_200(invite)
    reinvite_ok.headers.set("Record-Route", "<sip:elsewhere.example.com;lr>")
    d.update_from_response(reinvite_ok)
    assert d.route_set == [META_RR_1, META_RR_2]
