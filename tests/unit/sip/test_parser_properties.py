"""Property tests for the parser, serialiser and framer (hypothesis).

(a) parse_message never raises anything but SipParseError, on random bytes,
    text-shaped junk and mutations of the RFC 4475 valid messages; whatever it
    accepts, the typed accessors can read.
(b) parse -> to_bytes -> parse keeps start line, headers and body, and
    to_bytes is a fixed point, for the RFC 4475 valid messages and for
    generated valid requests and responses.
(c) StreamFramer cuts any split of a concatenation of messages (and pings)
    into exactly those frames.
(d) Headers.get_all / pop_first_value and the URI and address parsers never
    raise anything but their own errors on arbitrary text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.framing import Frame, Ping, StreamFramer
from gateway.sip.message import (
    COMPACT_FORMS,
    LIST_HEADERS,
    CSeq,
    Headers,
    Request,
    Response,
    SipParseError,
    canonical_name,
    parse_message,
    split_header_values,
)
from gateway.sip.uri import UriError, parse_address, parse_uri, quote_display

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"

# The RFC 4475 messages the parser accepts (see test_rfc4475.py for the table).
VALID_RFC4475 = sorted(
    [
        "wsinv",
        "intmeth",
        "esc01",
        "escnull",
        "esc02",
        "lwsdisp",
        "longreq",
        "dblreq",
        "semiuri",
        "transports",
        "mpart01",
        "unreason",
        "noreason",
        "trws",
        "baddate",
        "badbranch",
        "unkscm",
        "novelsc",
        "unksm2",
        "bext01",
        "invut",
        "regaut01",
        "bcast",
        "zeromf",
        "cparam01",
        "cparam02",
        "regescrt",
        "sdp01",
        "inv2543",
    ]
)
ALL_RFC4475 = sorted(p.stem for p in DATA.glob("*.dat"))
RAW = {name: (DATA / f"{name}.dat").read_bytes() for name in ALL_RFC4475}

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Msg = Request | Response


def exercise(m: Msg) -> None:
    """Every typed accessor works on an accepted message (validated at parse time)."""
    assert m.call_id
    m.cseq  # noqa: B018
    assert m.vias and m.top_via == m.vias[0]
    m.from_  # noqa: B018
    m.to  # noqa: B018
    m.contact  # noqa: B018
    for name in ("Route", "Record-Route"):
        m.addresses(name)
    m.content_type  # noqa: B018
    for name, _ in m.headers:
        m.headers.get_all(name)
    if isinstance(m, Request):
        try:
            m.parsed_uri  # noqa: B018
        except UriError:
            assert not m.uri.lower().startswith(("sip:", "sips:"))
    repr(m)


def try_parse(data: bytes, datagram: bool = True) -> Msg | None:
    try:
        m = parse_message(data, datagram=datagram)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599
        if exc.partial is not None:
            assert isinstance(exc.partial, Request)
        return None
    exercise(m)
    # What we accept we can also send, and read back.
    again = parse_message(m.to_bytes())
    assert same_message(m, again)
    return m


def start_line(m: Msg) -> tuple[object, ...]:
    if isinstance(m, Request):
        return ("request", m.method, m.uri)
    return ("response", m.status, m.reason)


def headers_without_length(m: Msg) -> list[tuple[str, str]]:
    return [(n, v) for n, v in m.headers if n != "Content-Length"]


def same_message(a: Msg, b: Msg) -> bool:
    return (
        start_line(a) == start_line(b)
        and headers_without_length(a) == headers_without_length(b)
        and a.body == b.body
    )


def assert_round_trip(m: Msg) -> bytes:
    out = m.to_bytes()
    again = parse_message(out)
    assert start_line(again) == start_line(m)
    assert headers_without_length(again) == headers_without_length(m)
    assert again.headers.lines("Content-Length") == [str(len(m.body))]
    assert again.body == m.body
    assert again.to_bytes() == out  # fixed point
    return out


# ---------------------------------------------------------------------------
# (a) Robustness


@FAST
@given(st.binary(max_size=3000), st.booleans())
def test_random_bytes(data: bytes, datagram: bool) -> None:
    try_parse(data, datagram)


PIECES = [
    "INVITE sip:a@b.com SIP/2.0",
    "SIP/2.0 200 OK",
    "SIP/2.0 100 ",
    "sip/2.0 180 R",
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
    "v: SIP/2.0/TCP [::1]:5060;rport;received=::1",
    "Via: SIP/2.0/UDP h;;,",
    "From: <sip:a@b.com>;tag=1",
    'f: "A \\"B\\"" <sip:a@b>;tag=x',
    "To: sip:b@b.com",
    "t: B <sip:b@b.com>",
    'To: "unterminated <sip:x@y>',
    "Call-ID: x@y",
    "i: c",
    "CSeq: 1 INVITE",
    "CSeq: 99999999999999999999 INVITE",
    "Max-Forwards: 70",
    "Contact: *",
    "m: <sip:c@d;lr>;expires=3, sip:e@f",
    "Route: <sip:r;lr>,<sip:s;lr>",
    "Content-Length: 5",
    "l: 0",
    "Content-Length: -1",
    "Content-Length: ²",
    "X: y",
    "Subject:",
    " folded",
    "\tfolded",
    "",
    "Bad Line",
    ":",
    "a:b:c",
    "Via: SIP/2.0/UDP ,,,",
    'Contact: <sip:a@b>;q="',
    "Contact: <",
    "To: <sip:%zz@h>",
    "To: <sip:[::1>",
]


@FAST
@given(
    st.lists(st.sampled_from(PIECES) | st.text(max_size=40), max_size=25),
    st.sampled_from(["\r\n", "\n", "\r", "\r\n\r\n"]),
    st.binary(max_size=40),
    st.booleans(),
)
def test_text_shaped_junk(lines: list[str], eol: str, body: bytes, datagram: bool) -> None:
    data = eol.join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body
    try_parse(data, datagram)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(RAW[draw(st.sampled_from(VALID_RFC4475))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from(b'\r\n \t:;,<>"\\@%=?/[]0123456789\x00\x80\xff'))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[max(0, pos - 40) : pos]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_mutated_rfc4475_messages(data: bytes, datagram: bool) -> None:
    try_parse(data, datagram)


def test_every_rfc4475_message_parses_or_raises_sip_parse_error() -> None:
    for name in ALL_RFC4475:
        for datagram in (True, False):
            try_parse(RAW[name], datagram)


# ---------------------------------------------------------------------------
# (b) Round trip of the RFC 4475 valid messages


def test_rfc4475_valid_messages_round_trip() -> None:
    for name in VALID_RFC4475:
        m = parse_message(RAW[name])
        out = assert_round_trip(m)
        exercise(parse_message(out, datagram=False))


# ---------------------------------------------------------------------------
# (b) Generated valid messages

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()"
USER_CHARS = UNRESERVED + "&=+$"  # ',', ';', '?', '/' too, but not in addr-spec form
WORD_CHARS = TOKEN_CHARS + '()<>:\\"/[]?{}'

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}")
users = st.lists(st.text(USER_CHARS, min_size=1, max_size=3) | escaped, min_size=1, max_size=6)
label = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,8}[a-z0-9])?", fullmatch=True)
toplabel = st.from_regex(r"[a-z]([a-z0-9\-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = st.builds(lambda ls, t: ".".join([*ls, t]), st.lists(label, max_size=3), toplabel)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)
param_chars = UNRESERVED + "[]/:&+$"
uri_params = st.lists(
    st.tuples(
        st.text(param_chars.replace("=", ""), min_size=1, max_size=8),
        st.none() | st.text(param_chars, min_size=1, max_size=8),
    ),
    max_size=3,
)
words = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=" \t"),
    min_size=1,
    max_size=8,
)
text_values = st.lists(words, max_size=5).map(" ".join)


@dataclass
class GenUri:
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: list[tuple[str, str | None]]

    def __str__(self) -> str:
        out = f"{self.scheme}:"
        if self.user is not None:
            out += self.user + "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        return out + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)


@st.composite
def sip_uris(draw: st.DrawFn, params: bool = True) -> GenUri:
    user = draw(st.none() | users.map("".join))
    return GenUri(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        draw(hosts),
        draw(ports),
        draw(uri_params) if params else [],
    )


@st.composite
def addresses(draw: st.DrawFn, tag: bool = True) -> tuple[str, str | None, str | None]:
    """(header value, display name, tag)."""
    kind = draw(st.sampled_from(["quoted", "tokens", "bare", "addr-spec"]))
    display: str | None = None
    uri = draw(sip_uris(params=kind != "addr-spec"))
    params = draw(st.lists(st.tuples(tokens, st.none() | tokens), max_size=2))
    params = [(k, v) for k, v in params if k.lower() != "tag"]
    tag_value = draw(st.none() | tokens) if tag else None
    if tag_value is not None:
        params.insert(draw(st.integers(0, len(params))), ("tag", tag_value))
    ptext = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
    if kind == "quoted":
        display = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12))
        value = f"{quote_display(display)} <{uri}>{ptext}"
    elif kind == "tokens":
        display = " ".join(draw(st.lists(tokens, min_size=1, max_size=3)))
        value = f"{display} <{uri}>{ptext}"
    elif kind == "bare":
        value = f"<{uri}>{ptext}"
    else:
        value = f"{uri}{ptext}"
    return value, display, tag_value


@st.composite
def vias(draw: st.DrawFn) -> tuple[str, str]:
    """(Via value, branch)."""
    branch = "z9hG4bK" + draw(tokens)
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]) | tokens)
    host, port = draw(hosts), draw(ports)
    sent_by = host + (f":{port}" if port is not None else "")
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    "rport",
                    "rport=5060",
                    "received=192.0.2.1",
                    "received=2001:db8::1",
                    "maddr=[::1]",
                    'x="q;u,o\\"te"',
                    "ttl=16",
                    "alias",
                ]
            ),
            max_size=3,
        )
    )
    return ";".join([f"SIP/2.0/{transport} {sent_by}", f"branch={branch}", *extra]), branch


@dataclass
class GenMessage:
    start: str
    headers: list[tuple[str, str]]
    body: bytes
    with_length: bool
    method: str | None
    status: int | None
    branch: str
    from_display: str | None
    from_tag: str | None
    to_display: str | None
    to_tag: str | None
    seq: int


KNOWN_METHODS = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
]


@st.composite
def messages(draw: st.DrawFn) -> GenMessage:
    is_request = draw(st.booleans())
    method = draw(st.sampled_from(KNOWN_METHODS) | tokens)
    status: int | None = None
    if is_request:
        start = f"{method} {draw(sip_uris())} SIP/2.0"
    else:
        status = draw(st.integers(100, 699))
        reason = draw(text_values)
        start = f"SIP/2.0 {status} {reason}"
    via_values = draw(st.lists(vias(), min_size=1, max_size=3))
    from_value, from_display, from_tag = draw(addresses())
    to_value, to_display, to_tag = draw(addresses())
    seq = draw(st.integers(0, 2**31 - 1))
    call_id = draw(st.text(WORD_CHARS, min_size=1, max_size=16))
    if draw(st.booleans()):
        call_id += "@" + draw(st.text(WORD_CHARS, min_size=1, max_size=10))
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):  # several Vias on one line
        headers.append(("Via", ", ".join(v for v, _ in via_values)))
    else:
        headers += [("Via", v) for v, _ in via_values]
    headers += [
        ("From", from_value),
        ("To", to_value),
        ("Call-ID", call_id),
        ("CSeq", f"{seq} {method}"),
    ]
    optional: list[tuple[str, str]] = []
    if draw(st.booleans()):
        optional.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    for name in draw(st.lists(st.sampled_from(["Contact", "Route", "Record-Route"]), max_size=3)):
        values = draw(st.lists(addresses(tag=False), min_size=1, max_size=3))
        optional.append((name, ", ".join(v for v, _, _ in values)))
    for _ in range(draw(st.integers(0, 4))):
        optional.append(("X-" + draw(tokens), draw(text_values)))
    if draw(st.booleans()):
        optional.append(("Subject", draw(text_values)))
    if draw(st.booleans()):
        optional.append(("Allow", ", ".join(draw(st.lists(tokens, min_size=1, max_size=4)))))
    # Required and optional headers in any order.
    for item in optional:
        headers.insert(draw(st.integers(0, len(headers))), item)
    body = draw(st.binary(max_size=200))
    return GenMessage(
        start,
        headers,
        body,
        draw(st.booleans()) or bool(body),
        method if is_request else None,
        status,
        via_values[0][1],
        from_display,
        from_tag,
        to_display,
        to_tag,
        seq,
    )


LONG_TO_COMPACT = {v: k for k, v in COMPACT_FORMS.items()}


@st.composite
def renderings(draw: st.DrawFn, gen: GenMessage) -> bytes:
    """The message on the wire, with the liberties RFC 3261 allows: compact and
    oddly cased names, LWS around the colon, folding at spaces, bare LF ends."""
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    lines = [gen.start]
    for name, value in gen.headers:
        if name in LONG_TO_COMPACT and draw(st.booleans()):
            name = LONG_TO_COMPACT[name]
        name = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
        sep = draw(st.sampled_from([": ", ":", " : ", "\t:\t", ":   "]))
        if " " in value and draw(st.integers(0, 3)) == 0:
            # Fold at a single SP: unfolding gives the value back.
            parts = value.split(" ")
            cut = draw(st.integers(1, len(parts) - 1))
            cont = draw(st.sampled_from([" ", "\t", "  \t"]))
            value = " ".join(parts[:cut]) + eol + cont + " ".join(parts[cut:])
        lines.append(f"{name}{sep}{value}")
    if gen.with_length:
        lines.insert(draw(st.integers(1, len(lines))), f"Content-Length: {len(gen.body)}")
    return (eol.join(lines) + eol + eol).encode() + gen.body


@MEDIUM
@given(st.data())
def test_generated_messages_parse_and_round_trip(data: st.DataObject) -> None:
    gen = data.draw(messages())
    wire = data.draw(renderings(gen))
    m = parse_message(wire)
    # The parser saw what was generated...
    if gen.method is not None:
        assert isinstance(m, Request) and m.method == gen.method
        assert f"{m.method} {m.uri} SIP/2.0" == gen.start
    else:
        assert isinstance(m, Response) and m.status == gen.status
        assert f"SIP/2.0 {m.status} {m.reason}".rstrip() == gen.start.rstrip()
    # Names compare case-insensitively (unknown ones keep their spelling).
    assert [(n.lower(), v) for n, v in headers_without_length(m)] == [
        (canonical_name(n).lower(), v) for n, v in gen.headers
    ]
    assert m.body == gen.body
    assert m.top_via.branch == gen.branch
    assert (m.from_.display, m.from_.tag) == (gen.from_display, gen.from_tag)
    assert (m.to.display, m.to.tag) == (gen.to_display, gen.to_tag)
    assert m.cseq == CSeq(gen.seq, m.cseq.method)
    exercise(m)
    # ...and serialises to a fixed point that reads back the same.
    out = assert_round_trip(m)
    # A stream peer would frame and read it the same way.
    assert StreamFramer().feed(out) == [out]
    assert same_message(parse_message(out, datagram=False), m)


# ---------------------------------------------------------------------------
# (c) Stream framing


def normalised(name: str) -> bytes:
    return parse_message(RAW[name]).to_bytes()


STREAM_MESSAGES = [normalised(n) for n in VALID_RFC4475]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Frame], bytes]:
    """Messages, CRLFCRLF pings, and single CRLFs (pongs) before a message."""
    frames: list[Frame] = []
    wire = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["rfc", "rfc", "generated", "ping", "crlf"]))
        if kind == "ping":
            frames.append(Ping())
            wire += b"\r\n\r\n"
            continue
        if kind == "crlf":
            wire += b"\r\n"  # skipped: a message follows
        if kind == "generated":
            gen = draw(messages())
            m = parse_message(draw(renderings(gen))).to_bytes()
        else:
            m = draw(st.sampled_from(STREAM_MESSAGES))
        frames.append(m)
        wire += m
    return frames, wire


@MEDIUM
@given(streams(), st.data())
def test_framer_any_split(stream: tuple[list[Frame], bytes], data: st.DataObject) -> None:
    frames, wire = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    framer = StreamFramer()
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        out += framer.feed(wire[prev:cut])
        prev = cut
    assert out == frames
    assert framer.buffered == 0
    for frame in out:
        if isinstance(frame, bytes):
            exercise(parse_message(frame, datagram=False))


@MEDIUM
@given(
    st.lists(st.sampled_from(STREAM_MESSAGES), min_size=1, max_size=4),
    st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_framer_fixed_chunk_sizes(msgs: list[bytes], sizes: list[int]) -> None:
    wire = b"".join(msgs)
    framer = StreamFramer()
    out: list[Frame] = []
    pos, i = 0, 0
    while pos < len(wire):
        size = sizes[i % len(sizes)]
        out += framer.feed(wire[pos : pos + size])
        pos += size
        i += 1
    assert out == msgs


@FAST
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_framer_never_raises(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_size=1500)
    total = 0
    prev = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        for frame in framer.feed(data[prev:cut]):
            if isinstance(frame, bytes):
                total += len(frame)
                assert len(frame) <= 1500
                try_parse(frame, datagram=False)
        prev = cut
    assert framer.buffered <= 1500 + 1


# ---------------------------------------------------------------------------
# (d) Header and URI helpers on arbitrary text

any_text = st.text(max_size=300)
header_names = st.sampled_from([*sorted(LIST_HEADERS), "Via", "v", "m", "Subject", "X-Y"])


@FAST
@given(header_names, st.lists(any_text, min_size=1, max_size=4))
def test_headers_get_all_never_raises(name: str, values: list[str]) -> None:
    h = Headers([(name, v) for v in values])
    got = h.get_all(name)
    if canonical_name(name).lower() in LIST_HEADERS:
        assert all(v and v == v.strip() for v in got)
    else:
        assert got == values
    while h.pop_first_value(name) is not None:
        pass
    h.set(name, values[0])
    assert h.lines(name) == [values[0]]


@FAST
@given(
    st.lists(
        st.text("ab ;=", max_size=6)
        | st.text("ab ,;<>\\", max_size=6).map(quote_display)
        | st.text("ab ,;", max_size=6).map(lambda t: f"<{t}>"),
        max_size=6,
    )
)
def test_split_header_values_keeps_every_element(elements: list[str]) -> None:
    # Commas inside quoted strings and <> do not split; empty elements vanish.
    expected = [e.strip() for e in elements if e.strip()]
    assert split_header_values(",".join(elements)) == expected
    assert split_header_values(" , ".join(elements)) == expected


@FAST
@given(any_text)
def test_uri_and_address_parsers_raise_only_uri_error(text: str) -> None:
    for parse in (parse_uri, parse_address):
        try:
            value = parse(text)
        except UriError:
            continue
        str(value)


@FAST
@given(sip_uris())
def test_generated_uris_round_trip(uri: GenUri) -> None:
    parsed = parse_uri(str(uri))
    assert str(parsed) == str(uri).replace(uri.scheme + ":", uri.scheme.lower() + ":", 1)
    assert parse_uri(str(parsed)) == parsed


@FAST
@given(st.ip_addresses())
def test_ip_hosts(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = str(addr) if addr.version == 4 else f"[{addr}]"
    parsed = parse_uri(f"sip:u@{host}:5060")
    assert str(parsed) == f"sip:u@{host}:5060"
