"""SIP message parsing, header handling, limits, responses and serialisation
(RFC 3261 sections 7, 8.2.6, 18.3, 20 and 25)."""

from __future__ import annotations

import contextlib
import time

import pytest

from gateway.sip.message import (
    COMPACT_FORMS,
    MAX_HEADERS,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    CSeq,
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    canonical_name,
    make_response,
    parse_cseq,
    parse_message,
    parse_via,
    reason_phrase,
    split_header_values,
)
from gateway.sip.uri import AbsoluteUri, SipUri, UriError

BASE = [
    "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@example.com>",
    "From: Alice <sip:alice@example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 INVITE",
]


def raw(
    *extra: str,
    start: str = "INVITE sip:bob@example.com SIP/2.0",
    base: list[str] | None = None,
    body: bytes = b"",
    eol: str = "\r\n",
) -> bytes:
    lines = [start, *(BASE if base is None else base), *extra]
    return (eol.join(lines) + eol + eol).encode() + body


def without(*names: str) -> list[str]:
    return [h for h in BASE if h.split(":")[0] not in names]


def parse_req(data: bytes, **kw: object) -> Request:
    msg = parse_message(data, **kw)  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def parse_error(data: bytes, **kw: object) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, **kw)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------------------
# Basics


def test_parse_request() -> None:
    m = parse_req(raw("Content-Type: application/sdp", "Content-Length: 4", body=b"v=0\n"))
    assert (m.method, m.uri) == ("INVITE", "sip:bob@example.com")
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.cseq == CSeq(314159, "INVITE")
    assert m.from_.display == "Alice" and m.from_.tag == "1928301774"
    assert m.to.display == "Bob" and m.to.tag is None
    assert m.top_via.branch == "z9hG4bK776asdhds"
    assert m.content_type == "application/sdp"
    assert m.body == b"v=0\n"
    assert m.parsed_uri == SipUri(user="bob", host="example.com")


def test_parse_response() -> None:
    m = parse_message(raw("Content-Length: 0", start="SIP/2.0 180 Ringing"))
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (180, "Ringing")


def test_reason_phrase_keeps_inner_spaces() -> None:
    m = parse_message(raw(start="SIP/2.0 404 Not  Found  Here"))
    assert isinstance(m, Response) and m.reason == "Not  Found  Here"


@pytest.mark.parametrize("code", [100, 699])
def test_status_code_bounds_accepted(code: int) -> None:
    m = parse_message(raw(start=f"SIP/2.0 {code} X"))
    assert isinstance(m, Response) and m.status == code


@pytest.mark.parametrize(
    "start",
    [
        "SIP/2.0 099 Low",
        "SIP/2.0 700 High",
        "SIP/2.0 20 OK",
        "SIP/2.0 2000 OK",
        "SIP/2.0 ٢٠٠ OK",
        "SIP/2.0 OK",
        "SIP/2.0  200 OK",
        "SIP/2.0",
    ],
)
def test_bad_status_line_is_dropped(start: str) -> None:
    err = parse_error(raw(start=start))
    assert err.status == 400 and err.partial is None  # responses are never answered


def test_sip_version_is_case_insensitive() -> None:
    # Section 7.1: "The SIP-Version string is case-insensitive".
    assert parse_req(raw(start="INVITE sip:bob@example.com sip/2.0")).method == "INVITE"
    assert isinstance(parse_message(raw(start="sip/2.0 200 OK")), Response)


def test_other_version_is_505_with_partial() -> None:
    err = parse_error(raw(start="INVITE sip:bob@example.com SIP/3.0"))
    assert err.status == 505 and err.partial is not None
    err = parse_error(raw(start="SIP/3.0 200 OK"))
    assert err.status == 505 and err.partial is None


@pytest.mark.parametrize(
    "start",
    [
        "INVITE sip:bob@example.com",
        "INVITE sip:bob@example.com HTTP/1.1",
        "INVITE",
        "INVITE sip:bob@example.com SIP/2",
        "INV<TE sip:bob@example.com SIP/2.0",
        " ",
        "\t",
    ],
)
def test_unrecognisable_request_line_is_dropped(start: str) -> None:
    err = parse_error(raw(start=start))
    assert err.status == 400 and err.partial is None


@pytest.mark.parametrize(
    "start",
    [
        "INVITE  sip:bob@example.com SIP/2.0",
        "INVITE\tsip:bob@example.com\tSIP/2.0",
        "INVITE sip:bob@example.com ;lr SIP/2.0",
    ],
)
def test_malformed_but_recognisable_request_line_is_answerable(start: str) -> None:
    err = parse_error(raw(start=start))
    assert err.status == 400
    assert err.partial is not None and err.partial.method == "INVITE"
    assert err.partial.call_id == "a84b4c76e66710@pc33.example.com"


def test_trailing_whitespace_on_start_line_accepted() -> None:
    assert parse_req(raw(start="INVITE sip:bob@example.com SIP/2.0 \t ")).uri == (
        "sip:bob@example.com"
    )


def test_leading_crlf_ignored() -> None:
    # Section 7.5: CRLFs before the start line are ignored.
    assert parse_req(b"\r\n\r\n" + raw()).method == "INVITE"


def test_empty_and_blank_input() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n"):
        assert parse_error(data).partial is None


# ---------------------------------------------------------------------------
# Header lines: folding, names, compact forms


def test_folding_with_sp_and_htab() -> None:
    m = parse_req(
        raw(
            "Subject: I know you're there,\r\n pick up the phone\r\n\tand talk to me!",
            "X-Empty:\r\n \r\n\tvalue",
        )
    )
    assert m.headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert m.headers.get("X-Empty") == "value"


def test_folded_structured_headers() -> None:
    base = [
        "Via: SIP/2.0/UDP\r\n pc33.example.com\r\n\t;branch=z9hG4bK776asdhds",
        "To:\r\n Bob\r\n <sip:bob@example.com>",
        "From: <sip:alice@example.com>\r\n ;tag=1",
        "Call-ID: a84b4c76e66710@pc33.example.com",
        "CSeq: 314159\r\n INVITE",
    ]
    m = parse_req(raw(base=base))
    assert m.top_via.host == "pc33.example.com" and m.top_via.branch == "z9hG4bK776asdhds"
    assert m.to.display == "Bob" and m.from_.tag == "1"
    assert m.cseq == CSeq(314159, "INVITE")


def test_continuation_before_first_header_is_an_error() -> None:
    # A continuation right after the start line would fold into it.
    parse_error(b" INVITE sip:bob@example.com SIP/2.0\r\n\r\n")
    err = parse_error(raw(base=[" folded", *BASE]))
    assert err.status == 400


def test_whitespace_around_colon() -> None:
    m = parse_req(raw("Subject  \t:   hello  ", "X-Tab\t:\tv"))
    assert m.headers.get("subject") == "hello"
    assert m.headers.get("x-tab") == "v"


@pytest.mark.parametrize(
    ("compact", "long", "value"),
    [
        ("i", "Call-ID", "a84b4c76e66710@pc33.example.com"),
        ("m", "Contact", "<sip:alice@pc33.example.com>"),
        ("e", "Content-Encoding", "gzip"),
        ("l", "Content-Length", "0"),
        ("c", "Content-Type", "application/sdp"),
        ("f", "From", "Alice <sip:alice@example.com>;tag=1928301774"),
        ("s", "Subject", "Need more boxes"),
        ("k", "Supported", "100rel"),
        ("t", "To", "Bob <sip:bob@example.com>"),
        ("v", "Via", "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds"),
    ],
)
def test_compact_forms(compact: str, long: str, value: str) -> None:
    assert COMPACT_FORMS[compact] == long
    base = [h for h in BASE if h.split(":")[0] != long]
    for name in (compact, compact.upper()):
        m = parse_req(raw(f"{name}: {value}", base=base))
        assert m.headers.get(long) == value
        assert m.headers.get(compact) == value  # lookups accept compact names too
        assert (long, value) in list(m.headers)  # stored under the long name


def test_header_names_are_case_insensitive() -> None:
    base = [
        "vIA: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
        "TO: <sip:b@example.com>",
        "from: <sip:a@example.com>;tag=x",
        "CALL-ID: c1",
        "cseq: 1 INVITE",
    ]
    m = parse_req(raw("max-FORWARDS: 5", "x-CUSTOM-header: y", base=base))
    assert m.call_id == "c1" and m.cseq == CSeq(1, "INVITE")
    assert m.headers.get("Max-Forwards") == m.headers.get("MAX-forwards") == "5"
    assert m.headers.get("X-Custom-Header") == "y"
    assert [n for n, _ in m.headers][:5] == ["Via", "To", "From", "Call-ID", "CSeq"]


def test_canonical_name() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("CSEQ") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("i") == "Call-ID"
    assert canonical_name("x-my-header") == "X-My-Header"
    assert canonical_name("q") == "Q"  # not a compact form


@pytest.mark.parametrize(
    "line", ["NoColonHere", ": no name", "Bad Name: x", "Bad@Name: x", "Bad(Name): x"]
)
def test_malformed_header_line(line: str) -> None:
    err = parse_error(raw(line))
    assert err.status == 400
    assert err.partial is not None  # the request is still answerable


def test_empty_header_value_allowed() -> None:
    assert parse_req(raw("Subject:", "Organization: ")).headers.get("Organization") == ""


def test_bare_cr_in_header_is_rejected() -> None:
    # Neither a line end (CRLF) nor a legal value character; forwarding it
    # could smuggle a header into a peer that treats CR as a line end.
    data = raw("Subject: a\rInjected: b")
    assert parse_error(data).status == 400


def test_control_characters_in_quoted_pairs_allowed() -> None:
    m = parse_req(raw(base=[*without("To"), 'To: "a\\\x00b\\\x7f" <sip:b@example.com>']))
    assert m.to.display == "a\x00b\x7f"


def test_non_utf8_header_bytes_do_not_break_parsing() -> None:
    data = raw("Subject: caf\xe9").replace("café".encode(), b"caf\xe9")
    m = parse_req(data)
    assert m.headers.get("Subject") == "caf\xe9"  # decoded as Latin-1


def test_lf_only_line_ends_tolerated() -> None:
    m = parse_req(raw("Content-Length: 4", "Subject: x\n y", eol="\n", body=b"ab\r\n"))
    assert m.headers.get("Subject") == "x y"
    assert m.body == b"ab\r\n"
    assert m.to_bytes().count(b"\r\n") == len(m.headers) + 3  # serialised with CRLF


def test_lf_only_head_is_not_split_at_crlfcrlf_in_body() -> None:
    body = b"a\r\n\r\nb"
    m = parse_req(raw(f"Content-Length: {len(body)}", eol="\n", body=body))
    assert m.body == body


def test_mixed_line_ends() -> None:
    data = raw("Subject: x").replace(b"\r\nTo:", b"\nTo:").replace(b"\r\n\r\n", b"\n\r\n")
    assert parse_req(data).headers.get("Subject") == "x"


# ---------------------------------------------------------------------------
# Headers multimap


def test_get_all_splits_list_headers() -> None:
    m = parse_req(
        raw(
            "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
            "Record-Route: <sip:r1.example.com;lr>,<sip:r2.example.com;lr>",
            'Contact: "Smith, John" <sip:j@h1.example.com>, <sip:a,b@h2.example.com>;q=0.5',
            "Allow: INVITE, ACK,CANCEL ,\tOPTIONS",
            "v: SIP/2.0/TCP p2.example.com;branch=z9hG4bK2, SIP/2.0/UDP p3.example.com",
            "Subject: hello, world",
        )
    )
    h = m.headers
    assert [a.uri.host for a in m.addresses("Route")] == [  # type: ignore[union-attr]
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    assert len(h.get_all("Record-Route")) == 2
    assert h.get_all("Contact") == [
        '"Smith, John" <sip:j@h1.example.com>',
        "<sip:a,b@h2.example.com>;q=0.5",
    ]
    assert m.addresses("Contact")[0].display == "Smith, John"
    assert h.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "OPTIONS"]
    assert [v.host for v in m.vias] == ["pc33.example.com", "p2.example.com", "p3.example.com"]
    assert h.get_all("Subject") == ["hello, world"]  # not a list header
    assert h.lines("Route") == [
        "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]


def test_split_header_values_quotes_and_angles() -> None:
    assert split_header_values('"a,\\"b,c" <sip:x>, <sip:y,z@h>, w') == [
        '"a,\\"b,c" <sip:x>',
        "<sip:y,z@h>",
        "w",
    ]
    assert split_header_values(" , ,, ") == []
    assert split_header_values('"unterminated, quote') == ['"unterminated, quote']
    assert split_header_values("a>,b") == ["a>", "b"]  # stray '>' does not go negative


def test_headers_add_set_remove_pop() -> None:
    h = Headers([("v", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("To", "t"), ("Via", "SIP/2.0/UDP c")])
    assert len(h) == 3 and "via" in h and "V" in h and "Route" not in h
    assert h.pop_first_value("Via") == "SIP/2.0/UDP a"
    assert h.lines("Via") == ["SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert h.pop_first_value("Via") == "SIP/2.0/UDP b"
    assert list(h) == [("To", "t"), ("Via", "SIP/2.0/UDP c")]  # emptied line removed
    assert h.pop_first_value("Route") is None
    h.add("Via", "SIP/2.0/UDP z", first=True)
    h.add("Route", "<sip:r1>")
    h.add("route", "<sip:r2>")
    assert h.get_all("Via") == ["SIP/2.0/UDP z", "SIP/2.0/UDP c"]
    assert [n for n, _ in h] == ["Via", "To", "Via", "Route", "Route"]
    h.set("Route", "<sip:only>")  # replaces all lines, in the first one's place
    assert list(h)[3:] == [("Route", "<sip:only>")]
    h.set("Subject", "new")  # absent: appended
    assert h.get("subject") == "new" and list(h)[-1] == ("Subject", "new")
    h.remove("VIA")
    assert "Via" not in h and h.get_all("Via") == []
    h.remove("Nope")
    copy = h.copy()
    copy.add("X", "1")
    assert copy != h and "X" not in h


def test_headers_equality_and_repr() -> None:
    a = Headers([("to", "x")])
    assert a == Headers([("To", "x")])
    assert a != Headers([("To", "y")])
    assert a != [("To", "x")]
    assert "1" in repr(a)


# ---------------------------------------------------------------------------
# Addresses in messages


def test_name_addr_and_addr_spec() -> None:
    m = parse_req(
        raw(
            base=[
                *without("To", "From"),
                "To: sip:bob@example.com;tag=abc",  # addr-spec: ;tag is a header param
                'From: "Alice \\"A\\" Smith" <sip:alice@example.com;transport=tcp>;tag=x',
            ],
        )
    )
    assert m.to.display is None and m.to.tag == "abc"
    assert isinstance(m.to.uri, SipUri) and m.to.uri.params == ()
    assert m.from_.display == 'Alice "A" Smith'
    assert isinstance(m.from_.uri, SipUri) and m.from_.uri.transport == "tcp"
    assert m.from_.tag == "x"


@pytest.mark.parametrize(
    "to",
    [
        "To: <sip:bob@example.com",
        'To: "Bob <sip:bob@example.com>',
        "To: Bob, Jr <sip:b@h>",
        "To: sip:b@h?x=y",
        "To: <sip:a@h>, <sip:b@h>",
        "To: <sip:a@h>;;",
        "To: <sip:a@h> junk",
    ],
)
def test_bad_to_is_400_with_partial(to: str) -> None:
    err = parse_error(raw(base=[*without("To"), to]))
    assert err.status == 400 and err.partial is not None


def test_contact_star_and_tel() -> None:
    m = parse_req(
        raw(
            "Contact: *",
            start="REGISTER sip:example.com SIP/2.0",
            base=[*without("CSeq"), "CSeq: 1 REGISTER"],
        )
    )
    assert m.addresses("Contact") == [] and m.contact is None
    m = parse_req(raw("Contact: <tel:+15551234567>"))
    assert m.contact is not None and m.contact.uri == AbsoluteUri("tel", "+15551234567")


# ---------------------------------------------------------------------------
# Via


def test_via_fields() -> None:
    v = parse_via(
        "SIP/2.0/udp 192.0.2.1:5060;branch=z9hG4bKnashds8;received=198.51.100.7;rport=49152"
    )
    assert (v.transport, v.host, v.port) == ("UDP", "192.0.2.1", 5060)
    assert v.branch == "z9hG4bKnashds8"
    assert v.received == "198.51.100.7"
    assert v.rport == 49152 and v.param("RPORT") == "49152"
    assert str(v) == (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8;received=198.51.100.7;rport=49152"
    )


def test_via_rport_flag_vs_value() -> None:
    flag = parse_via("SIP/2.0/UDP h.example.com;rport;branch=z9hG4bK1")
    assert flag.param("rport") == "" and flag.rport is None
    assert parse_via("SIP/2.0/UDP h.example.com;branch=z9hG4bK1").param("rport") is None
    assert str(flag.with_params(rport="5062", received="192.0.2.9")) == (
        "SIP/2.0/UDP h.example.com;branch=z9hG4bK1;rport=5062;received=192.0.2.9"
    )
    # A junk rport value is not a port.
    assert Via("UDP", "h", None, (("rport", "²"),)).rport is None
    assert Via("UDP", "h", None, (("rport", "1" * 5000),)).rport is None


def test_via_ipv6() -> None:
    v = parse_via("SIP/2.0/TLS [2001:db8::9:1]:5061;branch=z9hG4bKas3-111;received=2001:db8::9:255")
    assert (v.transport, v.host, v.port) == ("TLS", "[2001:db8::9:1]", 5061)
    assert v.received == "2001:db8::9:255"  # via-received: bare IPv6address (RFC 5118)
    assert parse_via("SIP/2.0/UDP [::1];received=[::1]").received == "[::1]"
    assert parse_via("SIP/2.0/UDP [::1]").port is None


def test_via_lws_and_quoted_values() -> None:
    v = parse_via('SIP / 2.0 / TCP  h.example.com : 5070 ; branch = z9hG4bK1 ; x="a;b,c"')
    assert (v.transport, v.host, v.port) == ("TCP", "h.example.com", 5070)
    assert v.branch == "z9hG4bK1" and v.param("x") == '"a;b,c"'


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP h",
        "SIP/3.0/UDP h",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h;;b",
        "SIP/2.0/UDP h;branch=",
        "SIP/2.0/UDP h;branch=a b",
        "SIP/2.0/UDP h:0",
        "SIP/2.0/UDP h:65536",
        "SIP/2.0/UDP h:\uff15",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP [zz::1]",
        "SIP/2.0/UDP ho st",
        'SIP/2.0/UDP h;x="open',
        "SIP/2.0/UDP h;x=[1:2",
        "SIP/2.0/UDP h_1",
    ],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(UriError):
        parse_via(value)


def test_bad_via_in_message_is_400_with_partial() -> None:
    err = parse_error(raw(base=[*without("Via"), "Via: SIP/2.0/UDP h;;"]))
    assert err.status == 400 and err.partial is not None


def test_multiple_vias_in_order() -> None:
    m = parse_req(
        raw(
            base=[
                "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com",
                "v: SIP/2.0/TLS c.example.com:5061",
                *without("Via"),
            ]
        )
    )
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "a.example.com"),
        ("TCP", "b.example.com"),
        ("TLS", "c.example.com"),
    ]
    assert m.top_via.branch == "z9hG4bK1"


# ---------------------------------------------------------------------------
# CSeq, Max-Forwards, required headers


def test_cseq_limits() -> None:
    # Section 8.1.1.5: the sequence number MUST be less than 2**31.
    assert parse_cseq(f"{2**31 - 1} INVITE") == CSeq(2**31 - 1, "INVITE")
    assert parse_cseq("0 ACK") == CSeq(0, "ACK")
    assert parse_cseq("0000000000001 ACK").seq == 1
    for bad in (
        f"{2**31} INVITE",
        "1" * 5000 + " INVITE",
        "-1 INVITE",
        "1",
        "INVITE",
        "1 INVITE x",
        "²1 INVITE",
        "1.0 INVITE",
        "1 INV<ITE",
        "",
    ):
        with pytest.raises(UriError):
            parse_cseq(bad)
    m = parse_req(raw(base=[*without("CSeq"), f"CSeq: {2**31 - 1} INVITE"]))
    assert m.cseq.seq == 2**31 - 1
    err = parse_error(raw(base=[*without("CSeq"), f"CSeq: {2**31} INVITE"]))
    assert err.status == 400 and err.partial is not None


def test_cseq_method_must_match() -> None:
    err = parse_error(raw(base=[*without("CSeq"), "CSeq: 1 invite"]))  # methods are case-sensitive
    assert err.status == 400 and "CSeq" in err.reason


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0", True),
        ("255", True),
        ("0070", True),
        ("256", False),
        ("-1", False),
        ("7O", False),
        ("²", False),
        ("1" * 5000, False),
        ("", False),
    ],
)
def test_max_forwards(value: str, ok: bool) -> None:
    data = raw(base=[*without("Max-Forwards"), f"Max-Forwards: {value}"])
    if ok:
        parse_req(data)
    else:
        assert parse_error(data).partial is not None


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_required_header(name: str) -> None:
    err = parse_error(raw(base=without(name)))
    assert err.status == 400 and name in err.reason


@pytest.mark.parametrize("name", ["From", "To", "Call-ID", "CSeq", "Max-Forwards"])
def test_duplicate_single_header(name: str) -> None:
    line = next(h for h in BASE if h.startswith(name + ":"))
    err = parse_error(raw(line))
    assert err.status == 400 and "multiple" in err.reason


def test_response_missing_header_has_no_partial() -> None:
    err = parse_error(raw(base=without("Call-ID"), start="SIP/2.0 200 OK"))
    assert err.partial is None


@pytest.mark.parametrize(
    "uri",
    [
        "<sip:bob@example.com>",
        "sip:bob@example.com?Subject=x",
        "sip:bob@",
        "sip:bob@256.0.0.1",
        "bob@example.com",
    ],
)
def test_bad_request_uri_is_answerable(uri: str) -> None:
    err = parse_error(raw(start=f"INVITE {uri} SIP/2.0"))
    assert err.status == 400 and err.partial is not None and err.partial.uri == uri


def test_non_sip_request_uri_accepted() -> None:
    m = parse_req(raw(start="INVITE tel:+15551234567;phone-context=example.com SIP/2.0"))
    assert isinstance(m.uri, str)
    with pytest.raises(UriError):
        m.parsed_uri  # noqa: B018


def test_method_characters() -> None:
    m = parse_req(
        raw(
            start="X-Foo.Bar! sip:b@example.com SIP/2.0",
            base=[*without("CSeq"), "CSeq: 1 X-Foo.Bar!"],
        )
    )
    assert m.method == "X-Foo.Bar!"


# ---------------------------------------------------------------------------
# Content-Length and body (section 18.3, 20.14)


def test_content_length_missing_on_datagram_takes_the_rest() -> None:
    assert parse_req(raw(body=b"v=0\r\nrest")).body == b"v=0\r\nrest"


def test_content_length_missing_on_stream_means_empty() -> None:
    assert parse_req(raw(), datagram=False).body == b""


def test_content_length_smaller_truncates() -> None:
    m = parse_req(raw("Content-Length: 3", body=b"abcdef"))
    assert m.body == b"abc"


def test_content_length_zero_with_trailing_bytes() -> None:
    assert parse_req(raw("l: 0", body=b"garbage")).body == b""


def test_content_length_larger_is_400() -> None:
    err = parse_error(raw("Content-Length: 7", body=b"abcdef"))
    assert err.status == 400 and err.partial is not None
    err = parse_error(raw("Content-Length: 7", body=b"abcdef"), datagram=False)
    assert err.status == 400


def test_content_length_exact_and_leading_zeros() -> None:
    assert parse_req(raw("Content-Length: 0006", body=b"abcdef")).body == b"abcdef"
    assert parse_req(raw("Content-Length:   6  ", body=b"abcdef")).body == b"abcdef"


def test_multiple_content_length_is_400() -> None:
    for extra in (("Content-Length: 3", "Content-Length: 3"), ("Content-Length: 3", "l: 4")):
        err = parse_error(raw(*extra, body=b"abcd"))
        assert err.status == 400 and err.partial is not None


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "+3", "3 4", "0x10", "²", "", "1" * 10])
def test_bad_content_length_is_400(value: str) -> None:
    err = parse_error(raw(f"Content-Length: {value}", body=b"abc"))
    assert err.status == 400 and err.partial is not None


def test_body_is_binary_safe() -> None:
    body = bytes(range(256)) * 3
    m = parse_req(raw(f"Content-Length: {len(body)}", body=body))
    assert m.body == body
    assert parse_req(m.to_bytes()).body == body


def test_datagram_without_final_blank_line() -> None:
    data = raw().rstrip(b"\r\n")
    m = parse_req(data)
    assert m.body == b"" and m.call_id == "a84b4c76e66710@pc33.example.com"
    with pytest.raises(SipParseError):
        parse_message(data, datagram=False)


# ---------------------------------------------------------------------------
# Hard limits


def test_message_over_max_size_is_513() -> None:
    data = raw("Content-Length: 100", body=b"x" * 100)
    assert parse_req(data, max_size=len(data)).body == b"x" * 100
    err = parse_error(data, max_size=len(data) - 1)
    assert err.status == 513
    big = raw(*(f"X-{i}: " + "y" * 1000 for i in range(66)))
    assert len(big) > MAX_MESSAGE_SIZE
    assert parse_error(big).status == 513


def test_header_count_limit() -> None:
    room = MAX_HEADERS - len(BASE)
    parse_req(raw(*(f"X-{i}: y" for i in range(room))))
    err = parse_error(raw(*(f"X-{i}: y" for i in range(room + 1))))
    assert err.status == 400 and "too many" in err.reason


def test_line_length_limit() -> None:
    prefix = "Subject: "
    parse_req(raw(prefix + "y" * (MAX_LINE_LENGTH - len(prefix))))
    err = parse_error(raw(prefix + "y" * (MAX_LINE_LENGTH - len(prefix) + 1)))
    assert err.status == 400 and "too long" in err.reason
    err = parse_error(raw(start="INVITE sip:" + "a" * MAX_LINE_LENGTH + "@h SIP/2.0"))
    assert err.status == 400


def test_hostile_inputs_parse_in_linear_time() -> None:
    # Near-64 KB header sections built to hit quadratic paths: many folded
    # continuation lines, a folded list of commas, quotes, angle brackets,
    # semicolons. Each must finish fast (quadratic versions took seconds).
    fold = "\r\n "
    cases = [
        raw("Subject: a" + "\r\n a" * 15000),
        raw("Contact: " + fold.join("," * 8000 for _ in range(7))),
        raw("Via: " + fold.join("," * 8000 for _ in range(7))),
        raw("Route: " + fold.join("<sip:a@b>," * 800 for _ in range(7))),
        raw("Contact: " + fold.join('"' * 8000 for _ in range(7))),
        raw("Contact: " + fold.join("<" * 8000 for _ in range(7))),
        raw("Contact: <sip:a@b>" + fold.join(";a" * 4000 for _ in range(7))),
        raw("Contact: " + "a " * 4000 + "<sip:a@b>"),
        raw("X: y", *(["X: " + "\\" * 8000] * 7)),
    ]

    def best_of_3(data: bytes) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            with contextlib.suppress(SipParseError):
                parse_message(data)
            times.append(time.perf_counter() - started)
        return min(times)

    # Relative, not absolute: the machine may be busy. A benign message of the same
    # size is the yardstick; a quadratic path is hundreds of times slower than it.
    for data in cases:
        assert len(data) < MAX_MESSAGE_SIZE
        benign = raw("Subject: " + "a" * (len(data) - 200))
        assert best_of_3(data) < 50 * best_of_3(benign) + 0.05


# ---------------------------------------------------------------------------
# Responses (section 8.2.6)


def request_for_response(*extra: str) -> Request:
    return parse_req(
        raw(
            *extra,
            base=[
                "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1",
                "Via: SIP/2.0/UDP uac.example.com;branch=z9hG4bK2;received=192.0.2.1",
                "Record-Route: <sip:p2.example.com;lr>",
                "Max-Forwards: 69",
                "To: Bob <sip:bob@example.com>",
                "Record-Route: <sip:p1.example.com;lr>",
                "From: Alice <sip:alice@example.com>;tag=1928301774",
                "Call-ID: a84b4c76e66710",
                "CSeq: 314159 INVITE",
                "Contact: <sip:alice@uac.example.com>",
            ],
        )
    )


def test_make_response_copies_headers_in_order() -> None:
    r = make_response(request_for_response(), 486)
    assert (r.status, r.reason) == (486, "Busy Here")
    assert list(r.headers) == [
        ("Via", "SIP/2.0/UDP p1.example.com;branch=z9hG4bK1"),
        ("Via", "SIP/2.0/UDP uac.example.com;branch=z9hG4bK2;received=192.0.2.1"),
        ("From", "Alice <sip:alice@example.com>;tag=1928301774"),
        ("To", "Bob <sip:bob@example.com>"),
        ("Call-ID", "a84b4c76e66710"),
        ("CSeq", "314159 INVITE"),
    ]
    assert r.body == b""


def test_make_response_to_tag() -> None:
    req = request_for_response()
    r = make_response(req, 200, to_tag="as83kd9bs")
    assert r.to.tag == "as83kd9bs" and r.to.display == "Bob"
    assert r.headers.lines("To") == ["Bob <sip:bob@example.com>;tag=as83kd9bs"]
    # Never on 100 Trying (section 8.2.6.1).
    assert make_response(req, 100, to_tag="x").to.tag is None
    # Never replaced when the request already has one (in-dialog request).
    tagged = parse_req(raw(base=[*without("To"), "To: <sip:bob@example.com>;tag=orig"]))
    assert make_response(tagged, 200, to_tag="new").to.tag == "orig"
    assert make_response(req, 180).to.tag is None  # no tag given


def test_make_response_record_route_only_when_asked() -> None:
    req = request_for_response()
    assert "Record-Route" not in make_response(req, 200).headers
    r = make_response(req, 200, record_route=True)
    assert r.headers.lines("Record-Route") == [
        "<sip:p2.example.com;lr>",
        "<sip:p1.example.com;lr>",
    ]
    assert "Record-Route" in make_response(req, 180, record_route=True).headers
    assert "Record-Route" not in make_response(req, 100, record_route=True).headers
    assert "Record-Route" not in make_response(req, 486, record_route=True).headers


def test_make_response_reason() -> None:
    req = request_for_response()
    assert make_response(req, 499).reason == "Bad Request"  # class default
    assert make_response(req, 400, "Bad Via").reason == "Bad Via"
    assert reason_phrase(183) == "Session Progress"
    assert reason_phrase(799) == "Unknown"


def test_make_response_round_trips() -> None:
    r = make_response(request_for_response(), 200, to_tag="t")
    again = parse_message(r.to_bytes())
    assert isinstance(again, Response)
    assert again.headers.lines("Via") == r.headers.lines("Via")
    assert again.to.tag == "t"


# ---------------------------------------------------------------------------
# Serialisation


def test_serialise_canonical_crlf_and_content_length() -> None:
    data = (
        raw(
            "c: application/sdp",
            "l: 999",  # wrong on purpose: recomputed
            "x-custom: 1",
            base=[
                "v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1",
                "t: <sip:b@example.com>",
                "f: <sip:a@example.com>;tag=1",
                "i: abc",
                "cseq: 1 INVITE",
            ],
            eol="\n",
        ).replace(b"l: 999", b"l: 4")
        + b"v=0\n"
    )
    m = parse_req(data)
    m.body = b"v=0\r\nxx"
    out = m.to_bytes()
    assert out == (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"To: <sip:b@example.com>\r\n"
        b"From: <sip:a@example.com>;tag=1\r\n"
        b"Call-ID: abc\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"X-Custom: 1\r\n"
        b"Content-Length: 7\r\n"
        b"\r\n"
        b"v=0\r\nxx"
    )
    assert bytes(m) == out


def test_serialise_built_messages() -> None:
    req = Request(method="OPTIONS", uri="sip:a@example.com")
    req.headers.add("Via", "SIP/2.0/TLS h;branch=z9hG4bKx")
    assert req.to_bytes() == (
        b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKx\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    resp = Response(status=100, reason="")
    assert resp.to_bytes() == b"SIP/2.0 100 \r\nContent-Length: 0\r\n\r\n"
    resp.body = "é".encode()
    assert resp.to_bytes().endswith(b"Content-Length: 2\r\n\r\n\xc3\xa9")
    assert "OPTIONS" in repr(req) and "100" in repr(resp)


def test_round_trip_of_folded_message_is_a_fixed_point() -> None:
    m = parse_req(raw("Subject: a\r\n\tb", "Contact:\r\n <sip:x@h.example.com>", body=b"xyz"))
    once = m.to_bytes()
    again = parse_req(once)
    assert again.to_bytes() == once
    assert again.headers.get("Subject") == "a b" and again.body == b"xyz"


def test_partial_after_malformed_header_line_has_all_good_headers() -> None:
    # The bad line comes first; the answer still needs the Via, From, To... after it.
    err = parse_error(raw(base=["Bad Line", *BASE]))
    assert err.partial is not None
    answer = make_response(err.partial, err.status)
    assert answer.headers.lines("Via") == [BASE[0].split(": ", 1)[1]]
    assert answer.call_id == "a84b4c76e66710@pc33.example.com"
    assert "Bad Line" not in err.partial.to_bytes().decode()


def test_serialiser_never_emits_a_line_break_inside_a_value() -> None:
    req = parse_req(raw())
    req.headers.add("Subject", "hi\r\nVia: SIP/2.0/UDP evil.example.com\r\n\r\nbody")
    req.headers.add("X-Folded", "a\r\n b")
    req.headers.add("X-Lf", "a\nb")
    out = req.to_bytes()
    head = out.split(b"\r\n\r\n", 1)[0]
    assert len(head.split(b"\r\n")) == 1 + len(BASE) + 4
    assert b"\n" not in head.replace(b"\r\n", b"")
    again = parse_message(out, datagram=False)
    assert again.headers.get("Subject") == "hi Via: SIP/2.0/UDP evil.example.com body"
    assert again.headers.get("X-Folded") == "a b" and again.headers.get("X-Lf") == "a b"
    assert len(again.headers.lines("Via")) == 1
    resp = Response(status=200, reason="OK\r\nX: y")
    assert resp.to_bytes().startswith(b"SIP/2.0 200 OK X: y\r\nContent-Length: 0\r\n\r\n")
