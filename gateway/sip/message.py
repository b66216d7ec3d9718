"""SIP messages: the model, the parser and the serialiser (RFC 3261 sections 7, 20, 25).

``parse_message(data)`` turns one complete message (a UDP datagram, or one framed
by :class:`gateway.sip.framing.StreamFramer`) into a :class:`Request` or
:class:`Response`, or raises :class:`SipParseError`. Headers are stored in the
order received under their canonical long names; structured values (Via,
addresses, CSeq) are parsed by accessors and validated once by the parser for
the headers every message must carry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.sip.uri import (
    Address,
    SipUri,
    UriError,
    find_param,
    is_token,
    parse_address,
    parse_host,
    parse_uri,
    split_outside_quotes,
    split_quoted,
)

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 128
MAX_LINE_LENGTH = 8192

# RFC 3261 section 7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From",
        "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version",
        "Organization", "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By",
        "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route",
        "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported",
        "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}  # fmt: skip

# Headers whose grammar is a comma-separated list (section 7.3.1); only these
# are split by Headers.get_all. Auth headers are not lists of values.
LIST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "Path", "Proxy-Require", "Reason", "Record-Route", "Require", "Route",
        "Service-Route", "Supported", "Unsupported", "Via", "Warning",
    )
)  # fmt: skip

# Headers that may appear at most once (multi01, mcl01).
SINGLE_HEADERS = frozenset(
    h.lower() for h in ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length",
                        "Content-Type", "Expires")
)  # fmt: skip

_METHOD_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# SIP-Version is case-insensitive (section 7.1); digits are ASCII only.
_STATUS_LINE_RE = re.compile(r"SIP/([0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.I)
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
_VIA_SENT_BY_RE = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.+)$", re.I)
_MAX_CSEQ = 2**31 - 1  # section 8.1.1.5: less than 2**31
_DIGITS_RE = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() accepts e.g. "²"


def _ascii_int(text: str, max_digits: int = 18) -> int | None:
    """``1*DIGIT`` as an int, None when not ASCII digits or longer than ``max_digits``
    significant digits (which also keeps int() clear of its 4300-digit limit)."""
    if not _DIGITS_RE.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


class SipParseError(ValueError):
    """A message that cannot be accepted.

    ``status`` is the response to send when one can be formed (400 unless the
    RFC says otherwise, e.g. 505 for a bad version); ``partial`` carries the
    request as far as it was parsed so that the response can be built from its
    Via, From, To, Call-ID and CSeq.
    """

    def __init__(self, reason: str, *, status: int = 400, partial: Request | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


def canonical_name(name: str) -> str:
    """Long, conventionally capitalised header name for ``name`` (any case, compact)."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    known = _CANONICAL.get(lower)
    if known:
        return known
    return "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


def split_header_values(value: str) -> list[str]:
    """Split a list header on commas outside quotes and ``<>`` (section 7.3.1)."""
    out: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    angle = 0
    for c in value:
        if escaped:
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle += 1
        elif c == ">":
            angle = max(0, angle - 1)
        elif c == "," and not angle:
            out.append("".join(buf).strip())
            buf = []
            continue
        buf.append(c)
    out.append("".join(buf).strip())
    return [v for v in out if v]


class Headers:
    """Ordered, case-insensitive multimap of header lines (canonical names)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({len(self._items)} lines)"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h

    def get(self, name: str) -> str | None:
        """First line's value for ``name`` (the whole line, not split)."""
        key = _key(name)
        for n, v in self._items:
            if n.lower() == key:
                return v
        return None

    def lines(self, name: str) -> list[str]:
        key = _key(name)
        return [v for n, v in self._items if n.lower() == key]

    def get_all(self, name: str) -> list[str]:
        """All values of ``name``, list headers split at top-level commas."""
        values = self.lines(name)
        if _key(name) not in LIST_HEADERS:
            return values
        out: list[str] = []
        for v in values:
            out.extend(split_header_values(v))
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        item = (canonical_name(name), value)
        if first:
            self._items.insert(0, item)
        else:
            self._items.append(item)

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one (in the first line's place)."""
        key = _key(name)
        for i, (n, _) in enumerate(self._items):
            if n.lower() == key:
                self._items[i] = (n, value)
                self._items = [
                    it for j, it in enumerate(self._items) if j <= i or it[0].lower() != key
                ]
                return
        self._items.append((canonical_name(name), value))

    def remove(self, name: str) -> None:
        key = _key(name)
        self._items = [it for it in self._items if it[0].lower() != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = _key(name)
        for i, (n, v) in enumerate(self._items):
            if n.lower() == key:
                values = split_header_values(v)
                if len(values) <= 1:
                    del self._items[i]
                else:
                    self._items[i] = (n, ", ".join(values[1:]))
                return values[0] if values else None
        return None


def _key(name: str) -> str:
    """Comparison key of a header name: case-insensitive (section 7.3.1), compact
    forms mapped to their long names. Names are stored canonical for known
    headers and as spelled (first letters capitalised) for unknown ones."""
    return canonical_name(name).lower()


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport`` (section 20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | None:
        v = self.param("rport")
        return _ascii_int(v, 5) if v else None

    def with_params(self, **changes: str | None) -> Via:
        params = [p for p in self.params if p[0].lower() not in changes]
        return Via(self.transport, self.host, self.port, (*params, *changes.items()))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"SIP/2.0/{self.transport} {self.host}{port}{params}"


def parse_via(value: str) -> Via:
    """One via-parm (section 25.1): sent-protocol LWS sent-by *( SEMI via-params ).

    LWS is allowed around the '/' of sent-protocol, around the ':' of sent-by and
    around ';' and '='. Parameter values are gen-value (token / host /
    quoted-string); ``received`` may also be a bare IPv6 address (via-received).
    """
    m = _VIA_SENT_BY_RE.match(value.strip())
    if not m:
        raise UriError("bad Via")
    transport, rest = m.group(1).upper(), m.group(2)
    parts = split_outside_quotes(rest, ";")
    sent_by = _COLON_LWS_RE.sub(":", parts[0].strip())
    if any(c.isspace() for c in sent_by):
        raise UriError("bad Via sent-by")
    host, port = parse_host(sent_by)
    params: list[tuple[str, str | None]] = []
    for p in parts[1:]:
        name, eq, v = p.partition("=")
        name, v = name.strip(), v.strip()
        if not is_token(name) or (eq and not v):
            raise UriError("bad Via parameter")
        if eq and not _is_gen_value(v):
            raise UriError("bad Via parameter value")
        params.append((name, v if eq else None))
    return Via(transport, host, port, tuple(params))


_COLON_LWS_RE = re.compile(r"\s*:\s*")


def _is_gen_value(value: str) -> bool:
    """gen-value = token / host / quoted-string, or a bare IPv6address (via-received)."""
    if is_token(value):  # also every hostname and IPv4 address
        return True
    if value.startswith('"'):
        try:
            _, tail = split_quoted(value)
        except UriError:
            return False
        return not tail
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not _DIGITS_RE.fullmatch(parts[0]) or not _METHOD_RE.match(parts[1]):
        raise UriError("bad CSeq")
    seq = _ascii_int(parts[0])
    if seq is None or seq > _MAX_CSEQ:
        raise UriError("CSeq number out of range")
    return CSeq(seq, parts[1])


@dataclass(eq=False)
class Message:
    """Common part of requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # -- typed accessors for the headers every message carries -------------
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def from_(self) -> Address:
        return parse_address(self.headers.get("From") or "")

    @property
    def to(self) -> Address:
        return parse_address(self.headers.get("To") or "")

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        values = self.headers.get_all("Via")
        if not values:
            raise UriError("no Via")
        return parse_via(values[0])

    def addresses(self, name: str) -> list[Address]:
        """Contact / Route / Record-Route values parsed (``*`` Contact excluded)."""
        return [parse_address(v) for v in self.headers.get_all(name) if v != "*"]

    @property
    def contact(self) -> Address | None:
        contacts = self.addresses("Contact")
        return contacts[0] if contacts else None

    @property
    def content_type(self) -> str | None:
        ct = self.headers.get("Content-Type")
        return ct.split(";", 1)[0].strip().lower() if ct else None

    def _head_lines(self) -> list[str]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise with CRLF line ends and a Content-Length that matches the body.

        A CR or LF inside a value (say a display name taken from the other leg)
        is written as one SP, as unfolding would read it: it can never end a
        line, so no header or body can be smuggled into what we send.
        """
        lines = [_one_line(line) for line in self._head_lines()]
        for name, value in self.headers:
            if name != "Content-Length":
                lines.append(f"{_one_line(name)}: {_one_line(value)}")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


_LINE_BREAK_RE = re.compile(r"[ \t]*[\r\n]+[ \t]*")


def _one_line(text: str) -> str:
    if "\r" in text or "\n" in text:
        return _LINE_BREAK_RE.sub(" ", text)
    return text


@dataclass(eq=False)
class Request(Message):
    method: str = "OPTIONS"
    uri: str = ""

    @property
    def parsed_uri(self) -> SipUri:
        u = parse_uri(self.uri)
        if not isinstance(u, SipUri):
            raise UriError("not a SIP URI")
        return u

    def _head_lines(self) -> list[str]:
        return [f"{self.method} {self.uri} SIP/2.0"]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


@dataclass(eq=False)
class Response(Message):
    status: int = 200
    reason: str = "OK"

    def _head_lines(self) -> list[str]:
        return [f"SIP/2.0 {self.status} {self.reason}"]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


# ---------------------------------------------------------------------------
# Parsing


_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
_LINE_END_RE = re.compile(r"\r?\n")


def _split_head(data: bytes, datagram: bool) -> tuple[bytes, bytes]:
    # The first empty line ends the header section. Bare LF line ends from sloppy
    # peers are tolerated (section 7.5 says CRLF), also mixed with CRLF; the
    # earliest blank line wins so a CRLFCRLF inside an LF-only message's body
    # cannot move the split.
    m = _BLANK_LINE_RE.search(data)
    if m:
        return data[: m.start()], data[m.end() :]
    if datagram:
        # A datagram whose sender dropped the final empty line: all of it is head.
        return data.rstrip(b"\r\n"), b""
    raise SipParseError("no end of header section")


def _unfold(head: str) -> list[str]:
    """Split the header section into logical lines, joining folded ones (section 7.3.1).

    A continuation line (starting with SP or HTAB) and the line break before it
    are replaced by one SP. Linear in the header size however many lines are folded.
    """
    if "\r" in head.replace("\r\n", ""):
        # A CR not followed by LF is neither a line end nor allowed in a value;
        # passing it on could let a peer smuggle a line into a message we forward.
        raise SipParseError("bare CR in header section")
    lines: list[list[str]] = []
    for line in _LINE_END_RE.split(head):
        if len(line) > MAX_LINE_LENGTH:
            raise SipParseError("header line too long")
        if line[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError("continuation line before first line")
            last = lines[-1]
            last[-1] = last[-1].rstrip(" \t")
            part = line.strip(" \t")
            if part:
                last.append(part)
            continue
        lines.append([line])
    return [" ".join(parts) for parts in lines]


def parse_message(
    data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, datagram: bool = True
) -> Request | Response:
    """Parse one whole message.

    ``datagram``: the bytes are a whole UDP datagram, so a Content-Length larger
    than the body is an error and bytes beyond it are discarded (section 18.3).
    On streams the framer already cut the message at its Content-Length.
    """
    if len(data) > max_size:
        raise SipParseError("message too large", status=513)
    data = data.lstrip(b"\r\n")  # section 7.5: ignore leading CRLFs
    head_bytes, body = _split_head(data, datagram)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        head = head_bytes.decode("latin-1")  # keep going; values stay opaque
    lines = _unfold(head)
    if not lines or not lines[0]:
        raise SipParseError("empty start line")
    if len(lines) - 1 > MAX_HEADERS:
        raise SipParseError("too many header fields")
    start = lines[0].rstrip(" \t")  # trailing SP: trws, RFC 4475 3.1.2.10 allows accepting
    msg: Request | Response
    line_error: tuple[str, int] | None = None
    if start[:4].upper() == "SIP/":
        m = _STATUS_LINE_RE.fullmatch(start)
        if not m:
            raise SipParseError("bad status line")  # responses are never answered: dropped
        if m.group(1) != "2.0":
            raise SipParseError("unsupported SIP version", status=505)
        code = int(m.group(2))
        if not 100 <= code <= 699:
            raise SipParseError("bad status code")
        msg = Response(status=code, reason=m.group(3) or "")
    else:
        msg, line_error = _parse_request_line(start)
    headers = _parse_header_lines(lines[1:], msg)
    msg.headers = headers
    if line_error:
        reason, status = line_error
        raise SipParseError(reason, status=status, partial=_partial(msg, headers))
    msg.body = _frame_body(headers, body, datagram, msg)
    _validate(msg)
    return msg


def _parse_request_line(start: str) -> tuple[Request, tuple[str, int] | None]:
    """The Request-Line, plus the error to answer with when it is recognisably a SIP
    request but not well formed (the header section is still parsed for a response).

    Request-Line = Method SP Request-URI SP SIP-Version CRLF, exactly one SP each
    (section 25.1). Extra or tab separators (lwsstart) and LWS inside the URI
    (lwsruri) get a 400 that can be answered; a line with no recognisable method
    or SIP-Version (test.dat) cannot be answered and is dropped.
    """
    parts = start.split(" ")
    error: tuple[str, int] | None = None
    if len(parts) == 3 and all(parts):
        method, uri, version = parts
    else:
        words = start.split()
        if len(words) < 3:
            raise SipParseError("bad request line")
        method, version = words[0], words[-1]
        uri = start.strip()[len(method) :].strip()[: -len(version)].strip()
        error = ("bad request line: elements must be separated by single SP", 400)
    if not _METHOD_RE.match(method):
        raise SipParseError("bad method")
    if not _VERSION_RE.fullmatch(version):
        raise SipParseError("bad request line: no SIP-Version")
    if version.upper() != "SIP/2.0":
        # Section 8.2 / 21.5.6: a version we do not speak is answered with 505.
        error = ("Version Not Supported", 505)
    return Request(method=method, uri=uri), error


def _parse_header_lines(lines: list[str], msg: Message) -> Headers:
    headers = Headers()
    malformed = False
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name or not is_token(name):
            # Keep reading: the partial request needs the Via, From, To... that
            # may come after the bad line to be answered.
            malformed = True
            continue
        headers.add(name, value.strip(" \t"))
    if malformed:
        raise SipParseError("malformed header line", partial=_partial(msg, headers))
    return headers


def _partial(msg: Message, headers: Headers) -> Request | None:
    if isinstance(msg, Request):
        msg.headers = headers
        return msg
    return None


def _frame_body(headers: Headers, body: bytes, datagram: bool, msg: Message) -> bytes:
    values = headers.lines("Content-Length")
    if not values:
        return body if datagram else b""
    if len(values) > 1:
        raise SipParseError("multiple Content-Length", partial=_partial(msg, headers))
    text = values[0].strip()
    if not _DIGITS_RE.fullmatch(text):
        raise SipParseError("bad Content-Length", partial=_partial(msg, headers))
    length = _ascii_int(text, 9)
    if length is None or length > len(body):
        raise SipParseError("Content-Length larger than message", partial=_partial(msg, headers))
    return body[:length]


def _validate(msg: Request | Response) -> None:
    """Check the headers every message needs (section 8.1.1) and their syntax."""
    partial = msg if isinstance(msg, Request) else None
    h = msg.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not h.get(name):
            raise SipParseError(f"missing {name}", partial=partial)
    for name in sorted(SINGLE_HEADERS):  # deterministic error reason
        if len(h.lines(name)) > 1:
            raise SipParseError(f"multiple {canonical_name(name)} values", partial=partial)
    try:
        cseq = msg.cseq
        vias = msg.vias
        if not vias:
            raise UriError("empty Via")
        msg.from_  # noqa: B018 - parse for validation
        msg.to  # noqa: B018
        for name in ("Contact", "Route", "Record-Route"):
            msg.addresses(name)
    except UriError as exc:
        raise SipParseError(f"bad header: {exc}", partial=partial) from exc
    mf = h.get("Max-Forwards")
    mf_value = None if mf is None else _ascii_int(mf, 3)
    if mf is not None and (mf_value is None or mf_value > 255):
        raise SipParseError("bad Max-Forwards", partial=partial)
    if isinstance(msg, Request):
        if cseq.method != msg.method:
            raise SipParseError("CSeq method does not match request method", partial=msg)
        try:
            ruri = parse_uri(msg.uri)
        except UriError as exc:
            raise SipParseError(f"bad Request-URI: {exc}", partial=msg) from exc
        if isinstance(ruri, SipUri) and ruri.headers is not None:
            # Section 19.1.1 table: headers are not allowed in a Request-URI (escruri).
            raise SipParseError("headers in Request-URI", partial=msg)


# ---------------------------------------------------------------------------
# Building responses (section 8.2.6)

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}  # fmt: skip


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    record_route: bool = False,
) -> Response:
    """A response to ``request`` copying Via, From, To, Call-ID, CSeq (section 8.2.6.2).

    ``to_tag`` is added to To unless the request's To already has a tag (or
    for 100 Trying, which never carries one). ``record_route``: copy the
    request's Record-Route lines unchanged and in order, as a UAS must in a
    dialog-creating response (section 12.1.1).
    """
    headers = Headers()
    rr = "Record-Route" if record_route and 100 < status < 300 else ""
    for name in ("Via", rr, "From", "To", "Call-ID", "CSeq"):
        if not name:
            continue
        for value in request.headers.lines(name):
            headers.add(name, value)
    if to_tag and status > 100:
        to_value = request.headers.get("To") or ""
        try:
            has_tag = parse_address(to_value).tag is not None
        except UriError:
            has_tag = True
        if not has_tag:
            headers.set("To", f"{to_value};tag={to_tag}")
    return Response(headers=headers, status=status, reason=reason or reason_phrase(status))
