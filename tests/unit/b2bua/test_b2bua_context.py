"""Meta's x-wa-meta-* call context carried to the PBX (gateway/b2bua/context.py)."""

from __future__ import annotations

import pytest

from gateway.b2bua.context import (
    MAX_VALUE_LENGTH,
    META_TO_PBX,
    header_names,
    meta_headers,
    pbx_context_headers,
    sanitize,
    wacid,
)
from gateway.sip.message import Request, parse_message

BUSINESS = "+17015558857"
USER = "+12195550714"


def invite(headers: list[tuple[str, str]], call_id: str = "outgoing:wacid.FROMCALLID") -> Request:
    lines = [
        f"INVITE sip:{BUSINESS}@sip.example.com;transport=tls SIP/2.0",
        "Via: SIP/2.0/TLS 157.240.19.1:5061;branch=z9hG4bK-ctx-1",
        "Max-Forwards: 69",
        f'From: "12195550714" <sip:{USER}@wa.meta.vc>;tag=meta-1',
        f"To: <sip:{BUSINESS}@sip.example.com>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        *(f"{name}: {value}" for name, value in headers),
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


# -- lenient matching ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "x-wa-meta-wacid",
        "X-WA-META-WACID",
        "X-Wa-Meta-Wacid",
        "x_wa_meta_wacid",
        "X-WA_META-wacid",
        "x-wa-meta_wacid",
    ],
)
def test_wacid_header_matched_leniently(name: str) -> None:
    req = invite([(name, "wacid.HEADER")])
    assert wacid(req) == "wacid.HEADER"
    assert meta_headers(req) == {"xwametawacid": "wacid.HEADER"}


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("x-wa-meta-user-id", "X-WA-User-ID"),
        ("X_WA_META_USER_NAME", "X-WA-User-Name"),
        ("x-wa-meta-user-country-code", "X-WA-Country"),
        ("X-Wa-Meta-Country_Code", "X-WA-Country"),
        ("x-wa-meta-cta-payload", "X-WA-CTA-Payload"),
        ("X-WA-META-DEEPLINK-PAYLOAD", "X-WA-Deeplink-Payload"),
        ("x_wa_meta_phone_number_id", "X-WA-Phone-Number-ID"),
    ],
)
def test_each_context_header_crosses(name: str, target: str) -> None:
    req = invite([(name, "value-1")])
    out = dict(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert out[target] == "value-1"


def test_first_occurrence_wins() -> None:
    req = invite([("x-wa-meta-user-name", "First"), ("X_WA_META_USER_NAME", "Second")])
    assert meta_headers(req)["xwametausername"] == "First"
    out = dict(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert out["X-WA-User-Name"] == "First"


def test_unrelated_headers_are_ignored() -> None:
    req = invite([("X-FB-External-Domain", "wa.meta.vc"), ("X-WA-Something", "x")])
    assert meta_headers(req) == {}
    names = header_names(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert names == ["X-WA-Call-ID", "X-WA-User", "X-WA-Business-Number"]


def test_unknown_meta_headers_do_not_cross() -> None:
    req = invite([("x-wa-meta-future-thing", "x")])
    assert "xwametafuturething" in meta_headers(req)
    names = header_names(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert "x-wa-meta-future-thing" not in [n.lower() for n in names]
    assert all(n in {*META_TO_PBX.values(), "X-WA-User", "X-WA-Business-Number"} for n in names)


# -- wacid ----------------------------------------------------------------------------


def test_wacid_header_preferred_over_call_id() -> None:
    req = invite([("x-wa-meta-wacid", "wacid.HEADER")], call_id="outgoing:wacid.CALLID")
    assert wacid(req) == "wacid.HEADER"


def test_wacid_from_call_id() -> None:
    req = invite([], call_id="outgoing:wacid.HBgLMTIxOTU1NTA3MTQVAgARGBI")
    assert wacid(req) == "wacid.HBgLMTIxOTU1NTA3MTQVAgARGBI"


def test_no_wacid() -> None:
    assert wacid(invite([], call_id="a84b4c76e66710@pc33.example.com")) is None


def test_empty_wacid_header_falls_back_to_call_id() -> None:
    req = invite([("x-wa-meta-wacid", "")], call_id="outgoing:wacid.CALLID")
    assert wacid(req) == "wacid.CALLID"


def test_wacid_is_sanitised() -> None:
    req = invite([("x-wa-meta-wacid", 'wacid."<X>"\\')])
    assert wacid(req) == "wacid.X"


# -- sanitisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain value", "plain value"),
        ("  padded  ", "padded"),
        ('{"a":"b"}', "{a:b}"),
        ("<sip:evil@example.com>", "sip:evil@example.com"),
        ("a\r\nX-Evil: 1", "aX-Evil: 1"),
        ("nul\x00byte", "nulbyte"),
        ("tab\there", "tabhere"),
        ("del\x7f", "del"),
        ("back\\slash", "backslash"),
        ("José Müller", "José Müller"),
        ("emoji 📞", "emoji 📞"),
        ("", ""),
        ('"<>\\', ""),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_sanitize_bounds_length() -> None:
    assert len(sanitize("x" * 10_000)) == MAX_VALUE_LENGTH
    assert sanitize("y" * MAX_VALUE_LENGTH) == "y" * MAX_VALUE_LENGTH


def test_sanitised_values_cross_on_one_line() -> None:
    evil = 'pay"load<script>\\\x01\x1f\x7f end'
    req = invite([("x-wa-meta-cta-payload", evil)])
    out = pbx_context_headers(req, user=USER, business_number=BUSINESS)
    value = dict(out)["X-WA-CTA-Payload"]
    assert value == "payloadscript end"
    # Through the serialiser and parser: one header, the same value.
    pbx = Request(method="INVITE", uri="sip:x@127.0.0.1")
    for name, v in out:
        pbx.headers.add(name, v)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        pbx.headers.add(name, req.headers.get(name) or "")
    back = parse_message(pbx.to_bytes())
    assert back.headers.get("X-WA-CTA-Payload") == value
    assert len(back.headers.lines("X-WA-CTA-Payload")) == 1


def test_folded_value_stays_one_value() -> None:
    raw = (
        b"INVITE sip:+17015558857@sip.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TLS 157.240.19.1:5061;branch=z9hG4bK-ctx-2\r\n"
        b"From: <sip:+12195550714@wa.meta.vc>;tag=1\r\n"
        b"To: <sip:+17015558857@sip.example.com>\r\n"
        b"Call-ID: outgoing:wacid.F\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"x-wa-meta-cta-payload: first\r\n X-Evil: 1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    req = parse_message(raw)
    assert isinstance(req, Request)
    out = dict(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert "X-Evil" not in out
    assert "\n" not in out["X-WA-CTA-Payload"] and "\r" not in out["X-WA-CTA-Payload"]


# -- only what is present --------------------------------------------------------------


def test_only_present_headers_are_sent() -> None:
    req = invite([("x-wa-meta-user-id", "106540352242922")], call_id="plain-call-id")
    out = pbx_context_headers(req, user=USER, business_number=BUSINESS)
    assert out == [
        ("X-WA-User", USER),
        ("X-WA-User-ID", "106540352242922"),
        ("X-WA-Business-Number", BUSINESS),
    ]


def test_values_empty_after_sanitising_are_not_sent() -> None:
    req = invite([("x-wa-meta-user-name", '"<>"'), ("x-wa-meta-cta-payload", "   ")])
    names = header_names(pbx_context_headers(req, user=USER, business_number=BUSINESS))
    assert "X-WA-User-Name" not in names and "X-WA-CTA-Payload" not in names


def test_full_context() -> None:
    req = invite(
        [
            ("x-wa-meta-wacid", "wacid.ABC"),
            ("X-WA-META-USER-ID", "106540352242922"),
            ("x-wa-meta_user-name", "Jane Doe"),
            ("x-wa-meta-user-country-code", "US"),
            ("x-wa-meta-country-code", "BR"),
            ("x-wa-meta-cta-payload", "order-42"),
            ("x-wa-meta-deeplink-payload", "promo"),
            ("x-wa-meta-phone-number-id", "112233"),
        ]
    )
    out = pbx_context_headers(req, user=USER, business_number=BUSINESS)
    assert out == [
        ("X-WA-Call-ID", "wacid.ABC"),
        ("X-WA-User", USER),
        ("X-WA-User-ID", "106540352242922"),
        ("X-WA-User-Name", "Jane Doe"),
        ("X-WA-Country", "US"),  # the user's country first; the other does not overwrite
        ("X-WA-CTA-Payload", "order-42"),
        ("X-WA-Deeplink-Payload", "promo"),
        ("X-WA-Phone-Number-ID", "112233"),
        ("X-WA-Business-Number", BUSINESS),
    ]


def test_bsuid_user() -> None:
    out = dict(
        pbx_context_headers(invite([]), user="US.13491208655302741918", business_number=BUSINESS)
    )
    assert out["X-WA-User"] == "US.13491208655302741918"


def test_no_user_no_user_header() -> None:
    names = header_names(pbx_context_headers(invite([]), user="", business_number=BUSINESS))
    assert "X-WA-User" not in names
