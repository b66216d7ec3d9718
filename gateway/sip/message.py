"""SIP messages: the model, the parser and the serialiser (RFC 3261 sections 7, 20, 25).

``parse_message(data)`` turns one complete message (a UDP datagram, or one framed
by :class:`gateway.sip.framing.StreamFramer`) into a :class:`Request` or
:class:`Response`, or raises :class:`SipParseError`. Headers are stored in the
order received under their canonical long names; structured values (Via,
addresses, CSeq) are parsed by accessors and validated once by the parser for
the headers every message must carry.

Parsing costs time linear in the message's size with the constant of C: lines,
folds, list elements and parameters are found by ``str`` methods and compiled
regular expressions (headers.py, via.py), never by a Python loop over
characters; only the top Via is parsed into a :class:`Via`, the others are
checked by one match each. Repeated list headers are capped (``MAX_LIST_VALUES``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.sip.headers import COMPACT_FORMS as COMPACT_FORMS
from gateway.sip.headers import DIGITS_RE, ascii_int
from gateway.sip.headers import LIST_HEADERS as LIST_HEADERS
from gateway.sip.headers import SINGLE_HEADERS as SINGLE_HEADERS
from gateway.sip.headers import Headers as Headers
from gateway.sip.headers import canonical_name as canonical_name
from gateway.sip.headers import first_header_value as first_header_value
from gateway.sip.headers import split_header_values as split_header_values
from gateway.sip.uri import (
    Address,
    SipUri,
    UriError,
    is_token,
    parse_address,
    parse_uri,
)
from gateway.sip.via import Via as Via
from gateway.sip.via import check_via as check_via
from gateway.sip.via import parse_via as parse_via

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 128
MAX_LINE_LENGTH = 8192
# Physical lines of a header section, folded continuations included (section
# 7.3.1): folding is rare and each fold costs a replacement.
MAX_PHYSICAL_LINES = 4 * MAX_HEADERS
# Values of each list header the parser itself parses (Via, Contact, Route,
# Record-Route). RFC 3261 sets no limit; RFC 4475's longreq (3.1.1.7) carries 34 Vias.
# More are answered 400: a request that has crossed 40 proxies is a loop or an attack.
MAX_LIST_VALUES = 40
_COUNTED_LISTS = ("Via", "Contact", "Route", "Record-Route")

_METHOD_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# SIP-Version is case-insensitive (section 7.1); digits are ASCII only.
_STATUS_LINE_RE = re.compile(r"SIP/([0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.I)
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
_MAX_CSEQ = 2**31 - 1  # section 8.1.1.5: less than 2**31


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


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not DIGITS_RE.fullmatch(parts[0]) or not _METHOD_RE.match(parts[1]):
        raise UriError("bad CSeq")
    seq = ascii_int(parts[0])
    if seq is None or seq > _MAX_CSEQ:
        raise UriError("CSeq number out of range")
    return CSeq(seq, parts[1])


@dataclass(eq=False)
class Message:
    """Common part of requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _parsed_vias: dict[str, Via] = field(default_factory=dict, init=False, repr=False)

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
        return [self._via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        """The first Via value: only the first Via line is split and only that value
        parsed (the transaction layer asks for it several times per message)."""
        for line in self.headers.lines("Via"):
            value = first_header_value(line)
            if value is not None:
                return self._via(value)
        raise UriError("no Via")

    def _via(self, value: str) -> Via:
        """``parse_via(value)``, parsed once per message for each distinct value."""
        via = self._parsed_vias.get(value)
        if via is None:
            via = self._parsed_vias[value] = parse_via(value)
        return via

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


_LINE_END_RE = re.compile(r"\r?\n")


def find_head_end(data: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """Where the first empty line at or after ``pos`` starts and ends: the first
    ``\r?\n\r?\n`` (sections 7.5, 18.3), None when there is none yet.

    Two ``find`` calls in C; the regular expression it replaces tried a match at
    every offset (an optional first character) and cost five times as much.
    """
    lf_crlf, lf_lf = data.find(b"\n\r\n", pos), data.find(b"\n\n", pos)
    if lf_crlf < 0 and lf_lf < 0:
        return None
    if lf_lf < 0 or 0 <= lf_crlf < lf_lf:
        lf, end = lf_crlf, lf_crlf + 3
    else:
        lf, end = lf_lf, lf_lf + 2
    return (lf - 1 if lf > pos and data[lf - 1] == 0x0D else lf), end


def _split_head(data: bytes, datagram: bool) -> tuple[bytes, bytes]:
    # The first empty line ends the header section. Bare LF line ends from sloppy
    # peers are tolerated (section 7.5 says CRLF), also mixed with CRLF; the
    # earliest blank line wins so a CRLFCRLF inside an LF-only message's body
    # cannot move the split.
    found = find_head_end(data)
    if found:
        return data[: found[0]], data[found[1] :]
    if datagram:
        # A datagram whose sender dropped the final empty line: all of it is head.
        return data.rstrip(b"\r\n"), b""
    raise SipParseError("no end of header section")


def _unfold(head: str) -> list[str]:
    """Split the header section into logical lines, joining folded ones (section 7.3.1).

    A continuation line (starting with SP or HTAB) and the line break before it
    are replaced by one SP. Done by ``re.split`` / ``re.sub`` in C: linear in the
    header size with no Python step per physical line.
    """
    crlf = head.count("\r\n")
    if head.count("\r") != crlf:
        # A CR not followed by LF is neither a line end nor allowed in a value;
        # passing it on could let a peer smuggle a line into a message we forward.
        raise SipParseError("bare CR in header section")
    if head[:1] in (" ", "\t"):
        raise SipParseError("continuation line before first line")
    if head.count("\n") >= MAX_PHYSICAL_LINES:
        raise SipParseError("too many header lines")
    # CRLF throughout (section 7.5) is split by str.split; bare LFs by the regex.
    lines = head.split("\r\n") if head.count("\n") == crlf else _LINE_END_RE.split(head)
    if max(map(len, lines)) > MAX_LINE_LENGTH:
        raise SipParseError("header line too long")
    if "\n " not in head and "\n\t" not in head:
        return lines
    # Whitespace before the break, the break and the continuation's leading
    # whitespace become one SP; a blank continuation line adds nothing. The
    # trailing SP this can leave on a line is stripped with the value.
    return _LINE_END_RE.split(_FOLD_RE.sub(" ", head))


_FOLD_RE = re.compile(r"[ \t]*(?:\r?\n[ \t]+)+")


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
    if not DIGITS_RE.fullmatch(text):
        raise SipParseError("bad Content-Length", partial=_partial(msg, headers))
    length = ascii_int(text, 9)
    if length is None or length > len(body):
        raise SipParseError("Content-Length larger than message", partial=_partial(msg, headers))
    return body[:length]


def _validate(msg: Request | Response) -> None:
    """Check the headers every message needs (section 8.1.1) and their syntax.

    Each header line is looked at a bounded number of times: names are counted in
    one pass, list headers are split once, the top Via is parsed (and kept for the
    transaction layer), the other Vias are checked by one regular expression each
    (:func:`check_via`).
    """
    partial = msg if isinstance(msg, Request) else None
    h = msg.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not h.get(name):
            raise SipParseError(f"missing {name}", partial=partial)
    counts: dict[str, int] = {}
    for name, _ in h:
        counts[name] = counts.get(name, 0) + 1
    for name in sorted(SINGLE_HEADERS):  # deterministic error reason
        if counts.get(canonical_name(name), 0) > 1:
            raise SipParseError(f"multiple {canonical_name(name)} values", partial=partial)
    lists: dict[str, list[str]] = {}
    for name in _COUNTED_LISTS:
        values = lists[name] = []
        for line in h.lines(name):  # line by line: stop splitting at the first excess
            values += split_header_values(line)
            if len(values) > MAX_LIST_VALUES:
                raise SipParseError(
                    f"too many {name} values (more than {MAX_LIST_VALUES})", partial=partial
                )
    try:
        cseq = msg.cseq
        vias = lists["Via"]
        if not vias:
            raise UriError("empty Via")
        msg.top_via  # noqa: B018 - parsed for validation, kept for the transaction layer
        for value in vias[1:]:
            check_via(value)
        msg.from_  # noqa: B018 - parse for validation
        msg.to  # noqa: B018
        for name in ("Contact", "Route", "Record-Route"):
            for value in lists[name]:
                if value != "*":
                    parse_address(value)
    except UriError as exc:
        raise SipParseError(f"bad header: {exc}", partial=partial) from exc
    mf = h.get("Max-Forwards")
    mf_value = None if mf is None else ascii_int(mf, 3)
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
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


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
