"""RFC 4475 (SIP torture test messages) against the parser, one row per file.

Every file in tests/data/rfc4475 must have a row (a new file cannot be skipped
silently). Valid messages must parse and show the values the RFC describes;
invalid ones must raise SipParseError with the status to answer and, for
requests we can still answer, the partially parsed request (``partial``).
Where RFC 4475 lets an element either accept or reject, the row says which we
chose and why.

All messages are parsed as UDP datagrams, as the RFC presents them (dblreq and
inv2543 depend on datagram semantics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway.sip.message import (
    CSeq,
    Request,
    Response,
    SipParseError,
    make_response,
    parse_message,
)
from gateway.sip.uri import AbsoluteUri, SipUri, UriError, parse_uri

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"

Msg = Request | Response


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def sip_uri(value: object) -> SipUri:
    assert isinstance(value, SipUri), value
    return value


def req(m: Msg) -> Request:
    assert isinstance(m, Request), m
    return m


def resp(m: Msg) -> Response:
    assert isinstance(m, Response), m
    return m


@dataclass(frozen=True)
class Valid:
    """Parses; ``check`` asserts the values RFC 4475 describes."""

    check: Callable[[Msg], None]
    section: str


@dataclass(frozen=True)
class Invalid:
    """Raises SipParseError(status); ``answerable``: partial request present."""

    status: int
    answerable: bool
    section: str
    reason: str = ""  # a word the error reason must contain


# ---------------------------------------------------------------------------
# 3.1.1 Valid messages


def check_wsinv(m: Msg) -> None:
    r = req(m)
    assert r.method == "INVITE"
    assert r.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    ruri = r.parsed_uri
    assert (ruri.user, ruri.host, ruri.param("unknownparam")) == (
        "vivekg",
        "chair-dnrc.example.com",
        "",
    )
    # To: folded after the colon, LWS around ';' and '=' of the tag.
    assert str(r.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert r.to.display is None and r.to.tag == "1918181833n"
    # from: name in odd case, display name with escaped backslash and quote, folded tag.
    assert r.from_.display == 'J Rosenberg \\"'
    assert str(r.from_.uri) == "sip:jdrosen@example.com"
    assert r.from_.tag == "98asjd8"
    assert r.headers.get("max-forwards") == "0068"
    assert r.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert r.cseq == CSeq(9, "INVITE")  # "0009\r\n  INVITE"
    vias = [(v.transport, v.host, v.port, v.branch) for v in r.vias]
    assert vias == [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert r.headers.get("Subject") == ""  # "s :" with an empty value
    assert r.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert r.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (route,) = r.addresses("Route")
    assert sip_uri(route.uri).params == (
        ("lr", None),
        ("unknownwith", "value"),
        ("unknown-no-value", None),
    )
    contact = r.contact
    assert contact is not None
    assert contact.display == 'Quoted string ""'
    assert str(contact.uri) == "sip:jdrosen@example.com"
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert r.content_type == "application/sdp"
    assert len(r.body) == 150 and r.body.startswith(b"v=0\r\n")


def check_intmeth(m: Msg) -> None:
    r = req(m)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert r.method == method
    assert r.uri == (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    ruri = r.parsed_uri
    assert ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert ruri.host == "example.com" and ruri.params == () and ruri.headers is None
    assert r.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    # quoted-pair may escape control characters: BEL, NUL and DEL.
    assert r.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert sip_uri(r.to.uri).user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert r.from_.display == "token1~` token2'+_ token3*%!.-"
    assert r.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert r.from_.tag == "_token~1'+`*%!-."
    assert r.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert r.cseq == CSeq(139122385, method)
    assert r.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def check_esc01(m: Msg) -> None:
    r = req(m)
    assert r.uri == "sip:sips%3Auser%40example.com@example.net"
    ruri = r.parsed_uri
    assert ruri.user_unescaped == "sips:user@example.com"
    assert ruri.host == "example.net" and ruri.scheme == "sip"
    assert sip_uri(r.to.uri).user_unescaped == "user"
    assert sip_uri(r.from_.uri).user_unescaped == "I have spaces"
    assert r.from_.tag == "938"
    assert r.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact i
    assert r.content_type == "application/sdp"  # compact, upper-case C
    contact = r.contact
    assert contact is not None
    curi = sip_uri(contact.uri)
    assert curi.user_unescaped == "caller"
    assert curi.param("lr") == ""  # ;%6C%72 is ;lr
    assert unquote(curi.param("name") or "") == "value%41"
    assert len(r.body) == 150


def check_escnull(m: Msg) -> None:
    r = req(m)
    for addr in (r.to, r.from_):
        uri = sip_uri(addr.uri)
        assert uri.user == "null-%00-null"  # kept escaped as received
        assert uri.user_unescaped == "null-\x00-null"
    users = [sip_uri(a.uri).user for a in r.addresses("Contact")]
    assert users == ["%00", "%00%00"]
    assert [sip_uri(a.uri).user_unescaped for a in r.addresses("Contact")] == ["\x00", "\x00\x00"]
    assert r.body == b""


def check_esc02(m: Msg) -> None:
    r = req(m)
    # %47 is not an escape in a method: this is not a REGISTER.
    assert r.method == "RE%47IST%45R" and r.method != "REGISTER"
    assert r.cseq == CSeq(29344, "RE%47IST%45R")
    assert r.to.display == "%Z%45" and r.from_.display == "%Z%45"
    assert r.top_via.branch == "z9hG4bK209%fzsnel234"
    # C%6Fntact is an unknown header, not a Contact.
    hosts = [sip_uri(a.uri).host for a in r.addresses("Contact")]
    assert hosts == ["host1.example.com", "host3.example.com"]
    assert r.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def check_lwsdisp(m: Msg) -> None:
    r = req(m)
    assert r.from_.display == "caller"
    assert str(r.from_.uri) == "sip:caller@example.com" and r.from_.tag == "323"


def check_longreq(m: Msg) -> None:
    r = req(m)
    assert r.to.display == "I have a user name of " + "extreme" * 10 + " proportion"
    to = sip_uri(r.to.uri)
    assert (to.host, to.port) == ("example.com", 6000)
    assert to.param("unknownparam1") == "very" + "long" * 20 + "value"
    assert to.param("longparamname" + "name" * 24) == "shortvalue"
    assert to.param("very" + "long" * 25 + "ParameterNameWithNoValue") == ""
    frm = r.from_
    assert sip_uri(frm.uri).user == "amazinglylongcallername" * 5
    assert frm.tag == "1" + "298" * 50 + "2424"
    assert frm.param("unknownheaderparamname" + "name" * 19) == (
        "unknowheaderparamvalue" + "value" * 14
    )
    assert frm.param("unknownValuelessparamname" + "paramname" * 9) == ""
    assert r.call_id == "longreq.one" + "really" * 20 + "longcallid"
    name = "Unknown-" + "Long" * 20 + "-Name"
    long = "long" * 20
    assert r.headers.get(name) == (
        f"unknown-{long}-value; unknown-{long}-parameter-name = unknown-{long}-parameter-value"
    )
    vias = r.vias
    assert len(vias) == 34  # 33 folded into many name spellings, then the origin
    assert [v.host for v in vias[:33]] == [f"sip{i}.example.com" for i in range(33, 0, -1)]
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert r.contact is not None
    assert sip_uri(r.contact.uri).user == "amazinglylongcallername" * 5
    assert len(r.body) == 150


def check_dblreq(m: Msg) -> None:
    r = req(m)
    # Only the first request counts; the rest of the datagram is discarded.
    assert r.method == "REGISTER" and r.cseq == CSeq(8, "REGISTER")
    assert r.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert r.body == b""


def check_semiuri(m: Msg) -> None:
    r = req(m)
    ruri = r.parsed_uri
    assert ruri.user == "user;par=u%40example.net"
    assert ruri.host == "example.com" and ruri.params == ()
    assert ruri.user_unescaped == "user;par=u@example.net"
    assert ruri.user_number == "user"
    assert r.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def check_transports(m: Msg) -> None:
    r = req(m)
    assert [(v.transport, v.host) for v in r.vias] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]


def check_mpart01(m: Msg) -> None:
    r = req(m)
    assert r.method == "MESSAGE"
    assert len(r.body) == int(r.headers.get("Content-Length") or "") == 553
    assert r.content_type == "multipart/mixed"
    assert r.body.startswith(b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n")
    assert r.body.endswith(b"\r\n--7a9cbec02ceef655--\r\n")
    via = r.top_via
    assert via.param("rport") == "" and via.rport is None  # rport flag, no value
    assert (via.host, via.port) == ("127.0.0.1", 5070)


def check_unreason(m: Msg) -> None:
    r = resp(m)
    assert r.status == 200
    assert r.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(r.body) == 154


def check_noreason(m: Msg) -> None:
    r = resp(m)
    assert (r.status, r.reason) == (100, "")
    assert r.to.tag == "902jndnke3"


# ---------------------------------------------------------------------------
# Accepted by the parser although RFC 4475 lists them as invalid or as
# application-layer tests: the parser only judges syntax.


def check_trws(m: Msg) -> None:
    # 3.1.2.10: "An element that is liberal in what it accepts may ignore these
    # SP characters". We accept; they are not kept.
    r = req(m)
    assert (r.method, r.uri) == ("OPTIONS", "sip:remote-target@example.com")
    assert r.to_bytes().startswith(b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n")


def check_baddate(m: Msg) -> None:
    # 3.1.2.12: rejecting is allowed but "shouldn't" be done unless the Date
    # matters; we never use Date, so the value is kept as received.
    r = req(m)
    assert r.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert len(r.body) == 150


def check_badbranch(m: Msg) -> None:
    # 3.2.1: branch is the bare magic cookie. The parser must not break; the
    # transaction layer decides (a 400 or RFC 2543 matching).
    r = req(m)
    assert r.top_via.branch == "z9hG4bK"


def check_unkscm(m: Msg) -> None:
    # 3.3.2: syntactically fine; the UAS answers 416 Unsupported URI Scheme.
    r = req(m)
    assert r.uri == "nobodyKnowsThisScheme:totallyopaquecontent"
    assert parse_uri(r.uri) == AbsoluteUri("nobodyKnowsThisScheme", "totallyopaquecontent")
    with pytest.raises(UriError):
        r.parsed_uri  # noqa: B018 - not a SIP URI


def check_novelsc(m: Msg) -> None:
    # 3.3.3: soap.beep is a valid absoluteURI scheme; answered 416 by a UAS.
    r = req(m)
    assert r.uri == "soap.beep://192.0.2.103:3002"
    assert parse_uri(r.uri) == AbsoluteUri("soap.beep", "//192.0.2.103:3002")


def check_unksm2(m: Msg) -> None:
    # 3.3.4: unknown schemes in To, From and Contact parse as opaque URIs.
    r = req(m)
    assert r.to.uri == AbsoluteUri("isbn", "2983792873")
    assert r.from_.uri == AbsoluteUri("http", "//www.example.com")
    assert r.from_.tag == "3234233"
    assert r.contact is not None and r.contact.uri == AbsoluteUri("name", "John_Smith")


def check_bext01(m: Msg) -> None:
    # 3.3.5: the UAS answers 420 listing both Require values (not the proxy ones).
    r = req(m)
    assert r.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert r.headers.get_all("Proxy-Require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]
    assert r.top_via.transport == "TLS"


def check_invut(m: Msg) -> None:
    # 3.3.6: unknown Content-Type; the UAS answers 415.
    r = req(m)
    assert r.content_type == "application/unknownformat"
    assert len(r.body) == 40 and r.body.startswith(b"<audio>\r\n")


def check_regaut01(m: Msg) -> None:
    # 3.3.7: unknown auth scheme; the Authorization value is one value, not a list.
    r = req(m)
    assert r.headers.get_all("Authorization") == ["NoOneKnowsThisScheme opaque-data=here"]
    assert r.headers.get("Content-Length") == "0"  # "Content-Length:0", no SP


def check_bcast(m: Msg) -> None:
    # 3.3.10: a response whose second Via is the broadcast address parses.
    r = resp(m)
    assert r.status == 200
    assert [v.host for v in r.vias] == ["192.0.2.198", "255.255.255.255"]
    assert len(r.body) == 154


def check_zeromf(m: Msg) -> None:
    # 3.3.11: Max-Forwards 0 is valid syntax (an OPTIONS to us is answered).
    assert req(m).headers.get("Max-Forwards") == "0"


def check_cparam01(m: Msg) -> None:
    # 3.3.12: addr-spec Contact: ;unknownparam is a contact (header) parameter.
    contact = req(m).contact
    assert contact is not None
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"
    assert sip_uri(contact.uri).params == ()
    assert contact.params == (("unknownparam", None),)


def check_cparam02(m: Msg) -> None:
    # 3.3.13: inside <> the same parameter belongs to the URI.
    contact = req(m).contact
    assert contact is not None
    assert sip_uri(contact.uri).params == (("unknownparam", None),)
    assert contact.params == ()


def check_regescrt(m: Msg) -> None:
    # 3.3.14: an escaped header in a name-addr Contact (compact m) is legal.
    r = req(m)
    contact = r.contact
    assert contact is not None
    curi = sip_uri(contact.uri)
    assert (curi.user, curi.host) == ("user", "example.com")
    assert curi.headers == "Route=%3Csip:sip.example.com%3E"
    assert unquote(curi.headers) == "Route=<sip:sip.example.com>"


def check_sdp01(m: Msg) -> None:
    # 3.3.15: Accept without SDP; the UAS answers 406/488 at the application layer.
    r = req(m)
    assert r.headers.get_all("Accept") == ["text/nobodyKnowsThis"]
    assert r.content_type == "application/sdp" and len(r.body) == 150


def check_inv2543(m: Msg) -> None:
    # 4.1: RFC 2543 syntax must still be accepted: no branch, no From tag, no
    # Content-Length (the body is the rest of the datagram), no Max-Forwards.
    r = req(m)
    assert r.top_via.branch is None and r.top_via.host == "iftgw.example.com"
    assert r.from_.tag is None
    assert sip_uri(r.from_.uri).param("user") == "phone"
    # addr-spec To: ;user=phone is a header parameter (section 20.10).
    assert r.to.param("user") == "phone" and sip_uri(r.to.uri).params == ()
    assert "Content-Length" not in r.headers and "Max-Forwards" not in r.headers
    assert r.body.startswith(b"v=0\r\n") and r.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")
    (rr,) = r.addresses("Record-Route")
    assert sip_uri(rr.uri).param("maddr") == "ss1.example.com"


CASES: dict[str, Valid | Invalid] = {
    # 3.1.1 Valid messages
    "wsinv": Valid(check_wsinv, "3.1.1.1 short tortuous INVITE"),
    "intmeth": Valid(check_intmeth, "3.1.1.2 wide range of valid characters"),
    "esc01": Valid(check_esc01, "3.1.1.3 valid use of % escaping"),
    "escnull": Valid(check_escnull, "3.1.1.4 escaped nulls in URIs"),
    "esc02": Valid(check_esc02, "3.1.1.5 use of % when it is not an escape"),
    "lwsdisp": Valid(check_lwsdisp, "3.1.1.6 no LWS between display name and <"),
    "longreq": Valid(check_longreq, "3.1.1.7 long values in header fields"),
    "dblreq": Valid(check_dblreq, "3.1.1.8 extra trailing octets in a UDP datagram"),
    "semiuri": Valid(check_semiuri, "3.1.1.9 semicolon-separated parameters in user part"),
    "transports": Valid(check_transports, "3.1.1.10 varied and unknown transports"),
    "mpart01": Valid(check_mpart01, "3.1.1.11 multipart MIME message"),
    "unreason": Valid(check_unreason, "3.1.1.12 unusual reason phrase"),
    "noreason": Valid(check_noreason, "3.1.1.13 empty reason phrase"),
    # 3.1.2 Invalid messages
    "badinv01": Invalid(400, True, "3.1.2.1 extraneous header field separators", "Via"),
    "clerr": Invalid(400, True, "3.1.2.2 Content-Length larger than message", "Content-Length"),
    "ncl": Invalid(400, True, "3.1.2.3 negative Content-Length", "Content-Length"),
    "scalar02": Invalid(400, True, "3.1.2.4 request scalar fields overlarge", "CSeq"),
    # 3.1.2.5: a response is never answered; "this response should be dropped".
    "scalarlg": Invalid(400, False, "3.1.2.5 response scalar fields overlarge", "CSeq"),
    "quotbal": Invalid(400, True, "3.1.2.6 unterminated quoted string", "quoted"),
    "ltgtruri": Invalid(400, True, "3.1.2.7 <> enclosing Request-URI", "Request-URI"),
    "lwsruri": Invalid(400, True, "3.1.2.8 LWS inside Request-URI", "request line"),
    # 3.1.2.9: "acceptable to reject"; we do, answering 400 rather than guessing.
    "lwsstart": Invalid(400, True, "3.1.2.9 multiple SP in Request-Line", "request line"),
    "trws": Valid(check_trws, "3.1.2.10 SP at end of Request-Line (accepted)"),
    # 3.1.2.11: "acceptable ... to reject with a 400"; headers in a Request-URI
    # are not allowed (19.1.1 table) and we will not forward them.
    "escruri": Invalid(400, True, "3.1.2.11 escaped headers in Request-URI", "Request-URI"),
    "baddate": Valid(check_baddate, "3.1.2.12 non-GMT Date (accepted)"),
    # 3.1.2.13: "reasonable ... to respond with a 400"; we do not infer the <>.
    "regbadct": Invalid(400, True, "3.1.2.13 name-addr URI not enclosed in <>", "<>"),
    # 3.1.2.14: "reasonable to reject"; spaces inside <> are not ignored.
    "badaspec": Invalid(400, True, "3.1.2.14 spaces within addr-spec", "whitespace"),
    "baddn": Invalid(400, True, "3.1.2.15 non-token characters in display name", "display"),
    "badvers": Invalid(505, True, "3.1.2.16 unknown protocol version", "Version"),
    "mismatch01": Invalid(400, True, "3.1.2.17 start line and CSeq method mismatch", "CSeq"),
    # 3.1.2.18: 501 is preferred and 400 "also acceptable". The parser cannot
    # know which methods the element implements, so it reports the mismatch (400).
    "mismatch02": Invalid(400, True, "3.1.2.18 unknown method, CSeq mismatch", "CSeq"),
    # 3.1.2.19: "should simply drop it".
    "bigcode": Invalid(400, False, "3.1.2.19 overlarge response code", "status"),
    # 3.2 Transaction layer
    "badbranch": Valid(check_badbranch, "3.2.1 missing transaction identifier (accepted)"),
    # 3.3 Application layer
    # 3.3.1: "Ideally, it will respond with a 400": Via and CSeq are there to
    # route and match the answer, so partial is kept.
    "insuf": Invalid(400, True, "3.3.1 missing required header fields", "missing"),
    "unkscm": Valid(check_unkscm, "3.3.2 Request-URI with unknown scheme"),
    "novelsc": Valid(check_novelsc, "3.3.3 Request-URI with atypical scheme"),
    "unksm2": Valid(check_unksm2, "3.3.4 unknown URI schemes in header fields"),
    "bext01": Valid(check_bext01, "3.3.5 Proxy-Require and Require"),
    "invut": Valid(check_invut, "3.3.6 unknown Content-Type"),
    "regaut01": Valid(check_regaut01, "3.3.7 unknown authorization scheme"),
    "multi01": Invalid(400, True, "3.3.8 multiple values in single-value fields", "multiple"),
    "mcl01": Invalid(400, True, "3.3.9 multiple Content-Length values", "Content-Length"),
    "bcast": Valid(check_bcast, "3.3.10 200 OK with broadcast Via"),
    "zeromf": Valid(check_zeromf, "3.3.11 Max-Forwards of zero"),
    "cparam01": Valid(check_cparam01, "3.3.12 REGISTER with a contact parameter"),
    "cparam02": Valid(check_cparam02, "3.3.13 REGISTER with a url-parameter"),
    "regescrt": Valid(check_regescrt, "3.3.14 REGISTER with a URL escaped header"),
    "sdp01": Valid(check_sdp01, "3.3.15 unacceptable Accept offering"),
    # 4 Backward compatibility
    "inv2543": Valid(check_inv2543, "4.1 INVITE with RFC 2543 syntax"),
    # Not from RFC 4475: a Request-Line without SIP-Version (and headers with
    # no colon). Nothing identifies it as SIP, so nothing is answered.
    "test": Invalid(400, False, "not RFC 4475: no SIP-Version", "request line"),
}


def test_table_covers_every_file() -> None:
    files = {p.stem for p in DATA.iterdir() if p.suffix == ".dat"}
    assert files == set(CASES), "every torture message needs a row (and every row a file)"
    assert not [p.name for p in DATA.iterdir() if p.suffix != ".dat"]


def test_files_use_crlf() -> None:
    # The RFC's messages use CRLF; the converted files must too (bodies aside).
    for name in CASES:
        head = load(name).split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), name


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if isinstance(c, Valid)))
def test_valid(name: str) -> None:
    case = CASES[name]
    assert isinstance(case, Valid)
    msg = parse_message(load(name))
    # Every valid message carries the five headers a response is built from.
    assert msg.call_id and msg.cseq and msg.vias
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    case.check(msg)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if isinstance(c, Invalid)))
def test_invalid(name: str) -> None:
    case = CASES[name]
    assert isinstance(case, Invalid)
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    err = info.value
    assert err.status == case.status, err.reason
    assert case.reason.lower() in err.reason.lower(), err.reason
    if not case.answerable:
        assert err.partial is None
        return
    partial = err.partial
    assert isinstance(partial, Request)
    assert partial.headers.get_all("Via"), "an answer needs the Via to route it"
    # The answer can be built; it copies what the request had.
    answer = make_response(partial, err.status)
    assert answer.status == err.status
    assert answer.headers.lines("Via") == partial.headers.lines("Via")
    assert answer.headers.get("CSeq") == partial.headers.get("CSeq")


# Answers to the invalid requests whose five response headers are all present
# and well formed: the response must itself parse.
WELL_FORMED_ANSWERS = [
    "clerr",
    "ncl",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "escruri",
    "regbadct",
    "mismatch01",
    "mismatch02",
    "mcl01",
]


@pytest.mark.parametrize("name", WELL_FORMED_ANSWERS)
def test_answer_to_invalid_request_parses(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    partial = info.value.partial
    assert partial is not None
    answer = parse_message(make_response(partial, info.value.status, to_tag="t1").to_bytes())
    assert isinstance(answer, Response)
    assert answer.call_id == partial.call_id
    assert answer.cseq == partial.cseq
    assert answer.to.tag is not None


def test_badvers_partial_keeps_request_line() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load("badvers"))
    partial = info.value.partial
    assert partial is not None
    assert (partial.method, partial.uri) == ("OPTIONS", "sip:t.watson@example.org")


def test_lwsruri_partial_keeps_method() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load("lwsruri"))
    partial = info.value.partial
    assert partial is not None and partial.method == "INVITE"
    assert partial.uri == "sip:user@example.com; lr"


def test_dblreq_on_a_stream_gives_both_requests() -> None:
    # Over a stream the same bytes are two messages, cut at Content-Length.
    # (The INVITE's body in the RFC is 5 octets longer than its Content-Length;
    # those octets would start a third, broken message.)
    from gateway.sip.framing import StreamFramer

    frames = StreamFramer().feed(load("dblreq"))
    first, second = frames[:2]
    assert isinstance(first, bytes) and isinstance(second, bytes)
    register = req(parse_message(first, datagram=False))
    invite = req(parse_message(second, datagram=False))
    assert (register.method, register.body) == ("REGISTER", b"")
    assert invite.method == "INVITE" and len(invite.body) == 150
