"""Tests for gateway.sip.auth (SIP digest authentication)."""

from __future__ import annotations

import contextlib
import hashlib
import string
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.auth import (
    ALGORITHMS,
    AuthParseError,
    Challenge,
    ChallengeTracker,
    Credentials,
    DigestServer,
    UnsupportedAlgorithm,
    UnsupportedChallenge,
    VerifyResult,
    answer_challenge,
    compute_response,
    compute_userhash,
    parse_challenge,
    parse_credentials,
    select_challenge,
)

# ---------------------------------------------------------------------------
# RFC 7616 section 3.9 test vectors

RFC_391 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "nc": 1,
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "qop": "auth",
}
RFC_391_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"

RFC_392 = {
    "username": "J\u00e4s\u00f8n Doe",
    "realm": "api@example.org",
    "password": "Secret, or not?",
    "method": "GET",
    "uri": "/doe.json",
    "nonce": "5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK",
    "nc": 1,
    "cnonce": "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    "qop": "auth",
}
# Values printed in RFC 7616 3.9.2. They were computed with SHA-512 truncated to 256
# bits, not SHA-512/256 (FIPS 180-4, different IVs) that RFC 7616 3.2 specifies
# (see RFC errata 4897). Real SHA-512/256 yields the *_SHA512_256 values below.
RFC_392_PRINTED_USERHASH = "488869477bf257147b804c45308cd62ac4e25eb717b12b298c79e62dcea254ec"
RFC_392_PRINTED_RESPONSE = "ae66e67d6b427bd3f120414a82e4acff38e8ecd9101d6c861229025f607a79dd"
RFC_392_USERHASH_SHA512_256 = "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
RFC_392_RESPONSE_SHA512_256 = "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"


def test_rfc7616_md5_vector() -> None:
    assert compute_response("MD5", **RFC_391) == "8ca523f5e9506fed4657c9700eebdbec"  # type: ignore[arg-type]


def test_rfc7616_sha256_vector() -> None:
    expected = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert compute_response("SHA-256", **RFC_391) == expected  # type: ignore[arg-type]


def test_rfc7616_vectors_via_answer_challenge_and_header() -> None:
    header = (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256,'
        ' nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    ch = parse_challenge(header)
    assert ch.qop == ("auth", "auth-int")
    creds = answer_challenge(
        ch,
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle of Life",
        cnonce=RFC_391["cnonce"],  # type: ignore[arg-type]
    )
    assert creds.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert creds.qop == "auth" and creds.nc == 1 and creds.opaque == RFC_391_OPAQUE
    assert creds.to_header() == (
        'Digest username="Mufasa", realm="http-auth@example.org",'
        ' nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html",'
        ' response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",'
        ' algorithm=SHA-256, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", qop=auth, nc=00000001'
    )


def test_rfc7616_sha512_256_userhash_vector() -> None:
    user, realm = RFC_392["username"], RFC_392["realm"]
    assert isinstance(user, str) and isinstance(realm, str)
    assert user.encode("utf-8").hex() == "4ac3a473c3b86e20446f65"  # octets given in the RFC
    assert compute_userhash("SHA-512-256", user, realm) == RFC_392_USERHASH_SHA512_256
    resp = compute_response("SHA-512-256", **RFC_392)  # type: ignore[arg-type]
    assert resp == RFC_392_RESPONSE_SHA512_256


def test_rfc7616_sha512_256_printed_values_are_truncated_sha512() -> None:
    """Document why the RFC's printed 3.9.2 values are not what SHA-512/256 gives."""

    def h(s: str) -> str:
        return hashlib.sha512(s.encode("utf-8")).hexdigest()[:64]

    u, r, pw = "J\u00e4s\u00f8n Doe", "api@example.org", "Secret, or not?"
    assert h(f"{u}:{r}") == RFC_392_PRINTED_USERHASH
    ha1, ha2 = h(f"{u}:{r}:{pw}"), h("GET:/doe.json")
    resp = h(f"{ha1}:{RFC_392['nonce']}:00000001:{RFC_392['cnonce']}:auth:{ha2}")
    assert resp == RFC_392_PRINTED_RESPONSE


def test_rfc7616_userhash_challenge_flow() -> None:
    ch = parse_challenge(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256,'
        ' nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK",'
        ' opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
    )
    assert ch.userhash and ch.charset == "UTF-8" and ch.algorithm == "SHA-512-256"
    creds = answer_challenge(
        ch,
        "GET",
        "/doe.json",
        "J\u00e4s\u00f8n Doe",
        "Secret, or not?",
        cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    )
    assert creds.username == RFC_392_USERHASH_SHA512_256
    assert creds.response == RFC_392_RESPONSE_SHA512_256
    assert creds.userhash and "userhash=true" in creds.to_header()


def test_username_star_rfc8187() -> None:
    creds = parse_credentials(
        "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, realm=\"api@example.org\","
        ' uri="/doe.json", nonce="n", response="r"'
    )
    assert creds.username == "J\u00e4s\u00f8n Doe"
    with pytest.raises(AuthParseError):
        parse_credentials(
            'Digest username="a", username*=UTF-8\'\'b, realm="r", nonce="n", uri="u", response="x"'
        )
    with pytest.raises(AuthParseError):
        parse_credentials("Digest username*=UTF-8''%FF, realm=r, nonce=n, uri=u, response=x")


# ---------------------------------------------------------------------------
# compute_response variants


def test_sess_and_auth_int_and_legacy_forms() -> None:
    def md5(s: str | bytes) -> str:
        return hashlib.md5(s.encode() if isinstance(s, str) else s).hexdigest()

    ha1 = md5("u:r:p")
    # RFC 2069 form (no qop)
    assert compute_response("MD5", "u", "r", "p", "INVITE", "sip:x", "N", None, None, None) == md5(
        f"{ha1}:N:{md5('INVITE:sip:x')}"
    )
    # MD5-sess (RFC 7616 3.4.2)
    sess = md5(f"{ha1}:N:C")
    got = compute_response("md5-SESS", "u", "r", "p", "INVITE", "sip:x", "N", 10, "C", "auth")
    assert got == md5(f"{sess}:N:0000000a:C:auth:{md5('INVITE:sip:x')}")
    # auth-int hashes the body (RFC 7616 3.4.3)
    ha2 = md5(f"INVITE:sip:x:{md5(b'v=0')}")
    got = compute_response("MD5", "u", "r", "p", "INVITE", "sip:x", "N", 1, "C", "auth-int", b"v=0")
    assert got == md5(f"{ha1}:N:00000001:C:auth-int:{ha2}")


def test_compute_response_errors() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        compute_response("SHA-1", "u", "r", "p", "M", "u", "n", 1, "c", "auth")
    with pytest.raises(UnsupportedChallenge):
        compute_response("MD5", "u", "r", "p", "M", "u", "n", 1, "c", "auth-conf")
    with pytest.raises(ValueError):
        compute_response("MD5", "u", "r", "p", "M", "u", "n", None, None, "auth")
    with pytest.raises(ValueError):
        compute_response("MD5-sess", "u", "r", "p", "M", "u", "n", None, None, None)


def test_sha512_256_available() -> None:
    # The module relies on OpenSSL's SHA-512/256; FIPS 180-4 test vector for "abc".
    assert hashlib.new("sha512_256", b"abc").hexdigest() == (
        "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    )


# ---------------------------------------------------------------------------
# Parsing


def test_parse_meta_challenge() -> None:
    ch = parse_challenge(
        'Digest realm="wa.meta.vc", nonce="abc123", opaque="op", algorithm=MD5, qop="auth"'
    )
    assert ch == Challenge(realm="wa.meta.vc", nonce="abc123", opaque="op", qop=("auth",))
    assert ch.algorithm == "MD5" and not ch.stale


def test_parse_whitespace_case_and_empty_elements() -> None:
    ch = parse_challenge(
        '  dIgEsT\t REALM = "r" ,, nonce\t=\t"n"  , ALGORITHM = sha-256-SESS ,'
        ' Stale = TRUE, QOP="auth-int , AUTH,,", ,  '
    )
    assert ch.realm == "r" and ch.nonce == "n"
    assert ch.algorithm == "SHA-256-sess"
    assert ch.stale is True
    assert ch.qop == ("auth-int", "auth")


def test_parse_escapes_and_unknown_params() -> None:
    ch = parse_challenge(
        r'Digest realm="a \"quoted\" \\ realm", nonce="n\x", x-custom=tok, other="v, w"'
        r', domain="sip:a.example sip:b.example"'
    )
    assert ch.realm == 'a "quoted" \\ realm'
    assert ch.nonce == "nx"
    assert ch.params == {"x-custom": "tok", "other": "v, w"}
    assert ch.domain == ("sip:a.example", "sip:b.example")
    again = parse_challenge(ch.to_header())
    assert again == ch


def test_parse_unquoted_values_and_unknown_algorithm() -> None:
    ch = parse_challenge("Digest realm=r, nonce=n, qop=auth, algorithm=AKAv1-MD5")
    assert ch.qop == ("auth",) and ch.algorithm == "AKAv1-MD5"
    with pytest.raises(UnsupportedAlgorithm):
        answer_challenge(ch, "INVITE", "sip:x", "u", "p")


def test_parse_credentials_fields() -> None:
    creds = parse_credentials(
        'Digest username="15551234567",realm="wa.meta.vc",nonce="n"'
        ',uri="sip:+1555@gw;transport=tls",response="ABCDEF",algorithm=sha-256,cnonce="c",opaque="o",qop=auth,nc=0000001F'
        ",userhash=false,foo=bar"
    )
    assert creds.username == "15551234567"
    assert creds.uri == "sip:+1555@gw;transport=tls"
    assert creds.algorithm == "SHA-256"
    assert creds.nc == 31 and creds.qop == "auth" and creds.cnonce == "c"
    assert creds.opaque == "o" and creds.userhash is False
    assert creds.params == {"foo": "bar"}
    assert parse_credentials(creds.to_header()) == creds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digestrealm="r", nonce="n"',
        'Digest realm="r" nonce="n"',  # missing comma
        'Digest realm="r, nonce="n"',  # unterminated quote
        'Digest realm="r", nonce',  # no '='
        'Digest realm="r", nonce=',  # empty value
        'Digest realm="r", ="n"',  # empty name
        'Digest realm="r", nonce="n", realm="again"',  # duplicate
        'Digest nonce="n"',  # realm missing
        'Digest realm="r"',  # nonce missing
        'Digest realm="r\n", nonce="n"',  # CTL in quoted-string
        'Digest realm=r"x", nonce="n"',
        'Digest realm="r", nonce="n" junk',
    ],
)
def test_parse_challenge_malformed(value: str) -> None:
    with pytest.raises(AuthParseError):
        parse_challenge(value)


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r", nonce="n", uri="u", response="x"',  # no username
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", nc=1',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", nc=0000000g',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=00000001',
        "Bearer abc",
    ],
)
def test_parse_credentials_malformed(value: str) -> None:
    with pytest.raises(AuthParseError):
        parse_credentials(value)


def test_auth_parse_error_is_value_error() -> None:
    assert issubclass(AuthParseError, ValueError)


def test_to_header_rejects_control_characters() -> None:
    with pytest.raises(ValueError):
        Challenge(realm="r\r\nX-Injected: 1", nonce="n").to_header()
    with pytest.raises(ValueError):
        Challenge(realm="r", nonce="n", params={"x\r\nVia": "v"}).to_header()
    with pytest.raises(ValueError):
        Credentials("u", "r", "n", "sip:x", "resp", params={"a=b": "v"}).to_header()
    with pytest.raises(ValueError):
        Credentials("u", "r", "n", "sip:x", "resp", nc=2**32).to_header()


@given(st.text())
def test_parse_never_raises_other_errors(text: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        with contextlib.suppress(AuthParseError):
            parse(text)


_fuzz_alphabet = st.sampled_from([*"Digest realm=nonce\"\\, \t=qopauthnc0001ur*'%", "\r"])


@given(st.lists(_fuzz_alphabet, max_size=60).map("".join))
def test_parse_never_raises_other_errors_near_valid(text: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        for candidate in (text, "Digest " + text):
            with contextlib.suppress(AuthParseError):
                parse(candidate)


_KNOWN = {
    "realm",
    "nonce",
    "opaque",
    "algorithm",
    "qop",
    "stale",
    "domain",
    "charset",
    "userhash",
    "username",
    "username*",
    "uri",
    "response",
    "cnonce",
    "nc",
}
_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=20
)  # any printable incl. quotes, backslashes, commas, non-ASCII
_tok = st.text(string.ascii_letters + string.digits + "-._~!#$%&'*+^`|", min_size=1, max_size=12)
_params = st.dictionaries(_tok.map(str.lower).filter(lambda k: k not in _KNOWN), _text, max_size=3)
_qop_tok = st.sampled_from(["auth", "auth-int", "x-tok"])


@given(
    realm=_text,
    nonce=_text,
    opaque=st.none() | _text,
    algorithm=st.sampled_from(ALGORITHMS),
    qop=st.lists(_qop_tok, max_size=3).map(tuple),
    stale=st.booleans(),
    domain=st.lists(_tok, max_size=3).map(tuple),
    charset=st.none() | st.just("UTF-8"),
    userhash=st.booleans(),
    params=_params,
)
def test_challenge_roundtrip(**kw: object) -> None:
    ch = Challenge(**kw)  # type: ignore[arg-type]
    assert parse_challenge(ch.to_header()) == ch


@given(
    username=_text,
    realm=_text,
    nonce=_text,
    uri=_text,
    response=_text,
    algorithm=st.sampled_from(ALGORITHMS),
    cnonce=_text,
    opaque=st.none() | _text,
    qop=st.none() | st.sampled_from(["auth", "auth-int"]),
    nc=st.integers(0, 0xFFFFFFFF),
    userhash=st.booleans(),
    params=_params,
)
def test_credentials_roundtrip(**kw: object) -> None:
    creds = Credentials(**kw)  # type: ignore[arg-type]
    assert parse_credentials(creds.to_header()) == creds


# ---------------------------------------------------------------------------
# Client helpers


def _ch(alg: str, qop: tuple[str, ...] = ("auth",), realm: str = "r", **kw: object) -> Challenge:
    return Challenge(realm=realm, nonce="n", algorithm=alg, qop=qop, **kw)  # type: ignore[arg-type]


def test_select_challenge() -> None:
    chs = [_ch("MD5"), _ch("AKAv1-MD5"), _ch("SHA-256"), _ch("SHA-512-256", qop=("auth-conf",))]
    assert select_challenge(chs).algorithm == "SHA-256"
    assert select_challenge(chs, strongest=False).algorithm == "MD5"
    assert select_challenge([_ch("MD5"), _ch("SHA-512-256")]).algorithm == "SHA-512-256"
    assert select_challenge([_ch("MD5-sess"), _ch("MD5")]).algorithm == "MD5"
    assert select_challenge([_ch("MD5"), _ch("sha-256")]).algorithm == "sha-256"
    with pytest.raises(UnsupportedChallenge):
        select_challenge([_ch("SHA-1"), _ch("MD5", qop=("auth-conf",))])
    with pytest.raises(UnsupportedChallenge):
        select_challenge([])


def test_answer_qop_choice_and_cnonce() -> None:
    a = answer_challenge(_ch("MD5", qop=("auth-int", "auth")), "INVITE", "sip:x", "u", "p")
    assert a.qop == "auth" and a.cnonce and a.nc == 1
    b = answer_challenge(_ch("MD5", qop=("auth",)), "INVITE", "sip:x", "u", "p")
    assert a.cnonce != b.cnonce  # random cnonce each time
    ai = answer_challenge(_ch("MD5", qop=("auth-int",)), "INVITE", "sip:x", "u", "p", body=b"v=0")
    assert ai.qop == "auth-int"
    assert ai.response == compute_response(
        "MD5", "u", "r", "p", "INVITE", "sip:x", "n", 1, ai.cnonce, "auth-int", b"v=0"
    )
    legacy = answer_challenge(_ch("MD5", qop=()), "INVITE", "sip:x", "u", "p")
    assert legacy.qop is None and legacy.cnonce is None and legacy.nc is None
    with pytest.raises(UnsupportedChallenge):
        answer_challenge(_ch("MD5", qop=("auth-conf",)), "INVITE", "sip:x", "u", "p")


def test_answer_meta_style_407() -> None:
    ch = parse_challenge(
        'Digest realm="wa.meta.vc", nonce="NONCE", opaque="OPQ", algorithm=MD5, qop="auth"'
    )
    creds = answer_challenge(
        ch,
        "INVITE",
        "sip:+15550001111@wa.meta.vc;transport=tls",
        "15551234567",
        "pw",
        cnonce="abc",
        nc=1,
    )
    hdr = creds.to_header()
    assert hdr.startswith('Digest username="15551234567", realm="wa.meta.vc", nonce="NONCE"')
    assert 'opaque="OPQ"' in hdr and "algorithm=MD5" in hdr and "qop=auth" in hdr
    assert "nc=00000001" in hdr and 'cnonce="abc"' in hdr
    assert "pw" not in hdr.replace("OPQ", "")


def test_challenge_tracker() -> None:
    t = ChallengeTracker()
    assert t.should_answer(_ch("MD5", realm="wa.meta.vc"))
    assert not t.should_answer(_ch("MD5", realm="wa.meta.vc"))  # rejected credentials
    t = ChallengeTracker(max_stale_retries=1)
    assert t.should_answer(_ch("MD5"))
    assert t.should_answer(_ch("MD5", stale=True))  # nonce expired: retry allowed once
    assert not t.should_answer(_ch("MD5", stale=True))
    assert t.should_answer(_ch("MD5", realm="other"))  # a second realm is independent


# ---------------------------------------------------------------------------
# Server

SECRET = b"0123456789abcdef-cluster-secret"
URI = "sip:gw.example.com;transport=tls"
T0 = 1_700_000_000.0


def _server(**kw: object) -> DigestServer:
    return DigestServer(SECRET, "gw.example.com", **kw)  # type: ignore[arg-type]


def _answer(
    server: DigestServer, now: float = T0, alg: str | None = None, **kw: object
) -> Credentials:
    chs = server.challenge(now)
    ch = next(c for c in chs if c.algorithm == alg) if alg else chs[0]
    args: dict[str, object] = {
        "method": "INVITE",
        "uri": URI,
        "username": "15551234567",
        "password": "pw",
    }
    args.update(kw)
    return answer_challenge(ch, **args)  # type: ignore[arg-type]


def test_server_challenge_shape() -> None:
    s = _server(algorithms=("sha-256", "MD5"), opaque="opq")
    chs = s.challenge(T0)
    assert [c.algorithm for c in chs] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == "gw.example.com" for c in chs)
    assert all(c.opaque == "opq" and not c.stale for c in chs)
    assert all(c.stale for c in s.challenge(T0, stale=True))
    hdr = chs[0].to_header()
    assert hdr.startswith('Digest realm="gw.example.com", nonce="')
    assert parse_challenge(hdr) == chs[0]
    assert s.challenge(T0)[0].nonce != chs[0].nonce


@pytest.mark.parametrize("alg", ["SHA-256", "MD5", "SHA-512-256", "MD5-sess", "SHA-256-sess"])
def test_server_ok_end_to_end(alg: str) -> None:
    s = _server(algorithms=(alg,))
    creds = parse_credentials(_answer(s).to_header())
    assert s.verify(creds, "INVITE", URI, "pw", T0 + 1) is VerifyResult.OK


def test_server_wrong_password_and_tampering() -> None:
    s = _server()
    creds = _answer(s)
    assert s.verify(creds, "INVITE", URI, "wrong", T0) is VerifyResult.BAD_RESPONSE
    assert s.verify(creds, "BYE", URI, "pw", T0) is VerifyResult.BAD_RESPONSE  # method bound
    bad = replace(creds, response="é" * 5)
    assert s.verify(bad, "INVITE", URI, "pw", T0) is VerifyResult.BAD_RESPONSE
    assert s.verify(creds, "INVITE", URI, None, T0) is VerifyResult.NO_PASSWORD


def test_server_accepts_uppercase_hex_response() -> None:
    s = _server()
    creds = _answer(s)
    upper = replace(creds, response=creds.response.upper())
    assert s.verify(upper, "INVITE", URI, "pw", T0) is VerifyResult.OK


def test_server_replay_and_increasing_nc() -> None:
    s = _server()
    chs = s.challenge(T0)
    first = answer_challenge(chs[0], "INVITE", URI, "u", "pw", nc=1)
    assert s.verify(first, "INVITE", URI, "pw", T0) is VerifyResult.OK
    assert s.verify(first, "INVITE", URI, "pw", T0 + 1) is VerifyResult.REPLAY
    second = answer_challenge(chs[0], "INVITE", URI, "u", "pw", nc=2)
    assert s.verify(second, "INVITE", URI, "pw", T0 + 2) is VerifyResult.OK
    jump = answer_challenge(chs[0], "INVITE", URI, "u", "pw", nc=10)
    assert s.verify(jump, "INVITE", URI, "pw", T0 + 3) is VerifyResult.OK
    assert s.verify(second, "INVITE", URI, "pw", T0 + 4) is VerifyResult.REPLAY


def test_server_stale_after_ttl() -> None:
    s = _server(nonce_ttl=60.0)
    creds = _answer(s, now=T0)
    assert s.verify(creds, "INVITE", URI, "pw", T0 + 61) is VerifyResult.STALE
    # stale only with a correct digest (RFC 7616 3.3); a wrong password is still BAD
    assert s.verify(creds, "INVITE", URI, "nope", T0 + 61) is VerifyResult.BAD_RESPONSE
    assert s.verify(creds, "INVITE", URI, "pw", T0 + 59) is VerifyResult.OK


def test_server_nonce_from_the_future_is_invalid() -> None:
    s = _server(clock_skew=30.0)
    creds = _answer(s, now=T0 + 100)
    assert s.verify(creds, "INVITE", URI, "pw", T0) is VerifyResult.INVALID_NONCE
    creds = _answer(s, now=T0 + 10)
    assert s.verify(creds, "INVITE", URI, "pw", T0) is VerifyResult.OK  # within skew


def test_server_invalid_nonces() -> None:
    s = _server()
    other = DigestServer(b"another-secret-of-16+bytes", "gw.example.com")
    foreign = _answer(other)
    assert s.verify(foreign, "INVITE", URI, "pw", T0) is VerifyResult.INVALID_NONCE
    other_realm = DigestServer(SECRET, "elsewhere")
    nonce = other_realm.make_nonce(T0)
    assert s.nonce_issued_at(nonce) is None
    good = s.make_nonce(T0)
    assert s.nonce_issued_at(good) == T0
    garbled = [
        "",
        "abc",
        good[:-1],
        good + "A",
        good[:10] + ("A" if good[10] != "A" else "B") + good[11:],
        good[:-1] + ("B" if good[-1] == "A" else "A"),
        good.replace(good[5], "+"),
        good + "==",
        "é" * len(good),
        " " + good[1:],
    ]
    for bad in garbled:
        assert s.nonce_issued_at(bad) is None, bad
        ch = Challenge(realm="gw.example.com", nonce=bad, algorithm="SHA-256", qop=("auth",))
        creds = answer_challenge(ch, "INVITE", URI, "u", "pw")
        assert s.verify(creds, "INVITE", URI, "pw", T0) is VerifyResult.INVALID_NONCE


def test_server_cluster_shared_secret() -> None:
    a, b = _server(), _server()
    creds = _answer(a)
    assert b.verify(creds, "INVITE", URI, "pw", T0 + 5) is VerifyResult.OK


def test_server_uri_realm_opaque_and_unsupported() -> None:
    s = _server(opaque="opq", algorithms=("SHA-256",))
    creds = _answer(s)
    assert s.verify(creds, "INVITE", "sip:other@gw", "pw", T0) is VerifyResult.URI_MISMATCH
    assert s.verify(creds, "INVITE", f"  {URI} ", "pw", T0) is VerifyResult.OK
    wrong_realm = replace(creds, realm="wa.meta.vc")
    assert s.verify(wrong_realm, "INVITE", URI, "pw", T0) is VerifyResult.REALM_MISMATCH
    no_opaque = replace(creds, opaque=None)
    assert s.verify(no_opaque, "INVITE", URI, "pw", T0) is VerifyResult.OPAQUE_MISMATCH
    md5 = replace(creds, algorithm="MD5")
    assert s.verify(md5, "INVITE", URI, "pw", T0) is VerifyResult.UNSUPPORTED
    no_qop = replace(creds, qop=None, nc=None, cnonce=None)
    assert s.verify(no_qop, "INVITE", URI, "pw", T0) is VerifyResult.UNSUPPORTED
    auth_int = replace(creds, qop="auth-int")
    assert s.verify(auth_int, "INVITE", URI, "pw", T0) is VerifyResult.UNSUPPORTED
    hashed_user = replace(creds, userhash=True)
    assert s.verify(hashed_user, "INVITE", URI, "pw", T0) is VerifyResult.UNSUPPORTED


def test_server_userhash_with_caller_supplied_username() -> None:
    s = _server()
    ch = s.challenge(T0)[0]
    ch = replace(ch, userhash=True)
    creds = answer_challenge(ch, "INVITE", URI, "15551234567", "pw")
    assert creds.username == compute_userhash("SHA-256", "15551234567", "gw.example.com")
    res = s.verify(creds, "INVITE", URI, "pw", T0, username="15551234567")
    assert res is VerifyResult.OK


def test_server_md5_and_sha256_both_offered() -> None:
    s = _server()
    for alg in ("SHA-256", "MD5"):
        creds = _answer(s, alg=alg)
        assert creds.algorithm == alg
        assert s.verify(creds, "INVITE", URI, "pw", T0) is VerifyResult.OK


def test_server_plus_prefixed_username() -> None:
    s = _server()
    creds = _answer(s, username="+15551234567")
    assert s.verify(creds, "INVITE", URI, "pw", T0) is VerifyResult.OK


def test_replay_table_bounded_and_pruned() -> None:
    s = _server(max_tracked_nonces=50, nonce_ttl=100.0)
    for i in range(200):
        creds = _answer(s, now=T0 + i * 0.01)
        assert s.verify(creds, "INVITE", URI, "pw", T0 + i * 0.01) is VerifyResult.OK
    assert s.tracked_nonces == 50
    # A valid nonce issued before an evicted one lost its nc history: STALE, not OK.
    early = _answer(s, now=T0)
    assert s.verify(early, "INVITE", URI, "pw", T0 + 3) is VerifyResult.STALE
    # Fresh nonces still work, and expired entries are pruned.
    late = _answer(s, now=T0 + 500)
    assert s.verify(late, "INVITE", URI, "pw", T0 + 500) is VerifyResult.OK
    assert s.tracked_nonces == 1


def test_server_repr_hides_secret_and_validates() -> None:
    s = _server()
    assert "0123456789abcdef" not in repr(s) and "gw.example.com" in repr(s)
    assert "0123456789abcdef" not in str(s)
    with pytest.raises(ValueError):
        DigestServer(b"short", "r")
    with pytest.raises(UnsupportedAlgorithm):
        DigestServer(SECRET, "r", algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestServer(SECRET, "r", algorithms=())


def test_credentials_hold_no_password() -> None:
    creds = _answer(_server(), password="s3cr3t-pass")
    assert "s3cr3t-pass" not in repr(creds) and "s3cr3t-pass" not in creds.to_header()
