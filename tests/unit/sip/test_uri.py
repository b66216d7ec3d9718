"""SIP URIs and name-addr / addr-spec addresses (RFC 3261 19.1, 20.10, 25.1)."""

from __future__ import annotations

import pytest

from gateway.sip.uri import (
    AbsoluteUri,
    Address,
    SipUri,
    UriError,
    format_params,
    is_token,
    parse_address,
    parse_host,
    parse_uri,
    quote_display,
)


def sip(text: str) -> SipUri:
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    return u


# ---------------------------------------------------------------------------
# SIP URIs


def test_full_uri() -> None:
    u = sip("sips:alice:secretword@atlanta.com:5061;transport=tcp;lr?subject=project%20x")
    assert u.scheme == "sips"
    assert (u.user, u.password, u.host, u.port) == ("alice", "secretword", "atlanta.com", 5061)
    assert u.params == (("transport", "tcp"), ("lr", None))
    assert u.headers == "subject=project%20x"
    assert str(u) == "sips:alice:secretword@atlanta.com:5061;transport=tcp;lr?subject=project%20x"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:example.com", "example.com", None),
        ("sip:example.com.", "example.com.", None),
        ("sip:a-b.c-d.example", "a-b.c-d.example", None),
        ("sip:1.example.com", "1.example.com", None),
        ("sip:localhost:5060", "localhost", 5060),
        ("sip:192.0.2.4", "192.0.2.4", None),
        ("sip:255.255.255.255:65535", "255.255.255.255", 65535),
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]", None),
        ("sip:u@[::1]:1", "[::1]", 1),
    ],
)
def test_hosts(text: str, host: str, port: int | None) -> None:
    u = sip(text)
    assert (u.host, u.port) == (host, port)
    assert str(u) == text


def test_scheme_is_case_insensitive() -> None:
    assert sip("SIP:alice@example.com").scheme == "sip"
    assert sip("SiPs:alice@example.com").scheme == "sips"


def test_params_flags_values_and_lookup() -> None:
    u = sip("sip:alice@example.com;Transport=TLS;LR;maddr=[2001:db8::1];user=phone;ttl=15")
    assert u.param("transport") == "TLS" and u.transport == "tls"
    assert u.param("lr") == "" and u.has_param("Lr")  # flag
    assert u.param("MADDR") == "[2001:db8::1]"
    assert u.param("user") == "phone"
    assert u.param("missing") is None and not u.has_param("missing")


def test_escaped_param_names_compare_unescaped() -> None:
    # Section 19.1.4 / RFC 4475 esc01: ;%6C%72 is ;lr.
    u = sip("sip:h.example.com;%6C%72;n%61me=v%61lue")
    assert u.param("lr") == "" and u.param("name") == "v%61lue"
    assert u.without_params("lr").params == (("n%61me", "v%61lue"),)


def test_with_and_without_params() -> None:
    u = sip("sip:a@example.com;transport=udp;lr")
    v = u.with_params(transport="tls", ob=None)
    assert str(v) == "sip:a@example.com;lr;transport=tls;ob"
    assert str(v.without_params("TRANSPORT", "ob")) == "sip:a@example.com;lr"
    assert str(u) == "sip:a@example.com;transport=udp;lr"  # frozen, unchanged


def test_uri_headers() -> None:
    u = sip("sip:bob@example.com?Route=%3Csip:p.example.com%3E&Subject=hi")
    assert u.headers == "Route=%3Csip:p.example.com%3E&Subject=hi" and u.params == ()
    assert sip("sip:bob@example.com;lr?x=1").params == (("lr", None),)


def test_user_escapes() -> None:
    u = sip("sip:sips%3Auser%40example.com@example.net")
    assert u.user == "sips%3Auser%40example.com"  # kept as received
    assert u.user_unescaped == "sips:user@example.com"
    assert str(u) == "sip:sips%3Auser%40example.com@example.net"
    assert sip("sip:%75se%72@example.com").user_unescaped == "user"
    assert sip("sip:null-%00-null@example.com").user_unescaped == "null-\x00-null"
    assert sip("sip:example.com").user is None and sip("sip:example.com").user_unescaped is None


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("sip:+17015558857;tgrp=wacall@wa.meta.vc", "+17015558857"),
        ("sip:+17015558857;tgrp=wacall;trunk-context=x@wa.meta.vc;transport=tls", "+17015558857"),
        ("sip:+17015558857@wa.meta.vc", "+17015558857"),
        ("sip:1-555-0100;phone-context=example.com@gw.example.com;user=phone", "1-555-0100"),
        ("sip:user;par=u%40example.net@example.com", "user"),
        ("sip:a%3Bb;x=y@example.com", "a;b"),  # an escaped ';' is not a separator
        ("sip:US.13491208655302741918@wa.meta.vc", "US.13491208655302741918"),
        ("sip:example.com", None),
    ],
)
def test_user_number(text: str, number: str | None) -> None:
    assert sip(text).user_number == number


def test_bsuid_user() -> None:
    # WhatsApp business-scoped user IDs: country code, dot, digits.
    u = sip("sips:US.13491208655302741918@wa.meta.vc;transport=tls")
    assert u.user == "US.13491208655302741918" and u.host == "wa.meta.vc"
    a = parse_address("<sip:US.13491208655302741918@wa.meta.vc>;tag=abc")
    assert isinstance(a.uri, SipUri) and a.uri.user_number == "US.13491208655302741918"


def test_unusual_user_and_password_characters() -> None:
    # RFC 4475 intmeth: user may hold ; ? / and the password & = + $ ,
    u = sip(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert u.host == "example.com"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip",
        "example.com",
        ":foo",
        "1sip:a@h",
        "sip:@example.com",
        "sip::pw@example.com",
        "sip:a@",
        "sip:a@@h",
        "sip:a b@h",
        "sip:a@h b",
        "<sip:a@h>",
        'sip:"a"@h',
        "sip:a@h;",
        "sip:a@h;;lr",
        "sip:a@h;=x",
        "sip:a@h;x=y=z",
        "sip:a@h;x=<",
        "sip:a@h:0",
        "sip:a@h:65536",
        "sip:a@h:123456",
        "sip:a@h:",
        "sip:a@h:x",
        "sip:a@h:٥٠٦٠",
        "sip:a@h:5060:5060",
        "sip:a@-h",
        "sip:a@h-",
        "sip:a@h..com",
        "sip:a@h_1.com",
        "sip:a@256.1.1.1",
        "sip:a@1.2.3",
        "sip:a@1.2.3.4.5",
        "sip:a@example.123",
        "sip:a@[2001:db8::1",
        "sip:a@[xyz]",
        "sip:a@[::1]x",
        "sip:a@2001:db8::1",
        "sip:a%4@h",
        "sip:a%zz@h",
        "sip:a@h;p=%",
        "sip:a@h?x=%2",
        "sip:a\x00@h",
        "sip:a@h\n",
        "sip:a<b@h",
    ],
)
def test_invalid_uris(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_absolute_uris_are_opaque() -> None:
    assert parse_uri("tel:+1-201-555-0123;phone-context=x") == AbsoluteUri(
        "tel", "+1-201-555-0123;phone-context=x"
    )
    u = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(u, AbsoluteUri) and str(u) == "soap.beep://192.0.2.103:3002"
    assert u.param("x") is None and u.user_number is None
    with pytest.raises(UriError):
        parse_uri("urn:")


def test_parse_host() -> None:
    assert parse_host("example.com:5060") == ("example.com", 5060)
    assert parse_host("[::1]:5061") == ("[::1]", 5061)
    for bad in ("", ":5060", "[::1]5060", "h:65536", "h:+1"):
        with pytest.raises(UriError):
            parse_host(bad)


def test_is_token() -> None:
    assert is_token("z9hG4bK-.!%*_+`'~")
    for bad in ("", "a b", "a:b", "a\n", "a;", "ä", '"'):
        assert not is_token(bad)


# ---------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        (
            '"Bob Smith" <sip:bob@example.com>;tag=a6c85cf',
            "Bob Smith",
            "sip:bob@example.com",
            (("tag", "a6c85cf"),),
        ),
        ('"" <sip:b@example.com>', "", "sip:b@example.com", ()),
        (
            '"A \\"quoted\\" \\\\ name"<sip:b@example.com>',
            'A "quoted" \\ name',
            "sip:b@example.com",
            (),
        ),
        ("Bob <sip:bob@example.com>", "Bob", "sip:bob@example.com", ()),
        ("Bob   Q.  Public\t<sip:bob@example.com>", "Bob Q. Public", "sip:bob@example.com", ()),
        (
            "caller<sip:caller@example.com>;tag=323",
            "caller",
            "sip:caller@example.com",
            (("tag", "323"),),
        ),
        (
            "<sip:bob@example.com;transport=tcp>;expires=60;q=0.7",
            None,
            "sip:bob@example.com;transport=tcp",
            (("expires", "60"), ("q", "0.7")),
        ),
        ("sip:bob@example.com;tag=x;lr", None, "sip:bob@example.com", (("tag", "x"), ("lr", None))),
        ("  sip:bob@example.com  ", None, "sip:bob@example.com", ()),
        (
            '<sip:b@example.com> ; tag = 1 ; +sip.instance="<urn:uuid:1>"',
            None,
            "sip:b@example.com",
            (("tag", "1"), ("+sip.instance", '"<urn:uuid:1>"')),
        ),
        (
            "<sip:b@example.com>;received=192.0.2.1;maddr=[2001:db8::1]",
            None,
            "sip:b@example.com",
            (("received", "192.0.2.1"), ("maddr", "[2001:db8::1]")),
        ),
        ('sip:a@example.com;x="<;>"', None, "sip:a@example.com", (("x", '"<;>"'),)),
        ("<tel:+15551234567>", None, "tel:+15551234567", ()),
        ("isbn:2983792873", None, "isbn:2983792873", ()),
        ('"Ω 日本" <sip:u@example.com>', "Ω 日本", "sip:u@example.com", ()),
    ],
)
def test_parse_address(
    text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    a = parse_address(text)
    assert a.display == display
    assert str(a.uri) == uri
    assert a.params == params


def test_addr_spec_semicolons_are_header_params() -> None:
    # Section 20.10: without <> the ;params belong to the header, not the URI.
    a = parse_address("sip:+19725552222@gw1.example.net;unknownparam")
    assert isinstance(a.uri, SipUri) and a.uri.params == ()
    assert a.params == (("unknownparam", None),)
    b = parse_address("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert isinstance(b.uri, SipUri) and b.uri.params == (("unknownparam", None),)
    assert b.params == ()


def test_address_tag_and_params() -> None:
    a = parse_address("<sip:a@example.com>;TAG=abc;foo")
    assert a.tag == "abc" and a.param("Foo") == "" and a.param("bar") is None
    b = a.with_param("tag", "new")
    assert b.tag == "new" and str(b) == "<sip:a@example.com>;foo;tag=new"
    assert parse_address("<sip:a@example.com>").tag is None


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ('"Bob" <sip:bob@example.com>;tag=1', '"Bob" <sip:bob@example.com>;tag=1'),
        ("Bob <sip:bob@example.com>", '"Bob" <sip:bob@example.com>'),
        ("sip:bob@example.com;tag=1", "<sip:bob@example.com>;tag=1"),
        ('"a\\"b\\\\c" <sip:x@example.com>', '"a\\"b\\\\c" <sip:x@example.com>'),
        ("<sip:x@example.com;lr>;q=1", "<sip:x@example.com;lr>;q=1"),
    ],
)
def test_address_str(text: str, out: str) -> None:
    a = parse_address(text)
    assert str(a) == out
    assert parse_address(str(a)) == a  # str is parseable and round-trips


def test_address_built_directly() -> None:
    a = Address(SipUri(user="alice", host="example.com"), 'Al "A"', (("tag", "9"),))
    assert str(a) == '"Al \\"A\\"" <sip:alice@example.com>;tag=9'
    assert quote_display('a"b\\') == '"a\\"b\\\\"'
    assert format_params((("a", None), ("b", "1"))) == ";a;b=1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '"Mr. J. User <sip:j.user@example.com>',
        '"Bob" sip:bob@example.com',
        "Bell, Alexander <sip:a.g.bell@example.com>",
        "<sip:bob@example.com",
        "< sip:t.watson@example.org >",
        "sip:user@example.com?Route=%3Csip:x%3E",
        "sip:a@example.com, sip:b@example.com",
        "<sip:a@example.com> junk",
        "<sip:a@example.com>;",
        "<sip:a@example.com>;;tag=1",
        "<sip:a@example.com>;tag=",
        "<sip:a@example.com>;tag=a b",
        '<sip:a@example.com>;x="open',
        '<sip:a@h>;x="a"b',
        "<sip:a@example.com>;t@g=1",
        "<>",
        "Bob <>",
        "Bob",
        "Bob@ <sip:a@h>",
    ],
)
def test_invalid_addresses(text: str) -> None:
    with pytest.raises(UriError):
        parse_address(text)


def test_quote_display_escapes_controls_and_never_breaks_the_line() -> None:
    # quoted-pair covers %x00-09 / %x0B-0C / %x0E-7F; CR and LF cannot be
    # carried at all, so a display name from the other leg cannot inject a header.
    assert quote_display("a\x00b\x7fc\td") == '"a\\\x00b\\\x7fc\td"'
    quoted = quote_display("Eve\r\nVia: SIP/2.0/UDP evil.example.com")
    assert "\r" not in quoted and "\n" not in quoted
    a = parse_address(f"{quoted} <sip:eve@example.com>")
    assert a.display == "Eve  Via: SIP/2.0/UDP evil.example.com"
    for name in ("plain", 'q"uote', "back\\slash", "nul\x00", "ünï", ""):
        assert parse_address(f"{quote_display(name)} <sip:x@example.com>").display == name
