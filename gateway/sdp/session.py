"""SDP: the model, the parser and the serialiser (RFC 8866, which obsoletes RFC 4566).

``parse_sdp(data)`` turns a session description into a :class:`SessionDescription`
or raises :class:`SdpError`. Required lines (v=, o=, s=, t=, m=, c=, b=) are
checked strictly; attributes are kept verbatim and in order, and only read by
the helpers (which skip a malformed value rather than fail). ``serialize()``
writes CRLF lines in the RFC 8866 section 5 order.

SDES keys travel in ``a=crypto`` lines (model in :mod:`gateway.sdp.crypto`). Nothing
here puts them in a ``repr``: :class:`Crypto`, :class:`KeyParam`,
:class:`MediaDescription` and :class:`SessionDescription` mask them (``inline:***``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.sdp.crypto import Crypto, KeyParam, parse_crypto, redact_attribute

__all__ = [
    "DIRECTIONS",
    "MAX_ATTRIBUTES",
    "MAX_MEDIA",
    "MAX_SDP_SIZE",
    "STATIC_PAYLOAD_TYPES",
    "Bandwidth",
    "Connection",
    "Crypto",
    "KeyParam",
    "MediaDescription",
    "Origin",
    "RtcpAttribute",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Ssrc",
    "Timing",
    "parse_crypto",
    "parse_sdp",
    "redact_attribute",
]

MAX_SDP_SIZE = 65536
MAX_MEDIA = 64
MAX_ATTRIBUTES = 512

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 section 9 token
_PROTO_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+(?:/[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+)*")
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")  # FQDN (section 5.7)
_NUM_RE = re.compile(r"[0-9]{1,20}")  # ASCII only; bounded, never hits int()'s digit limit
_PTIME_RE = re.compile(r"([0-9]{1,6})(?:\.[0-9]{1,6})?")


class SdpError(ValueError):
    """A session description that cannot be parsed (or serialised): the reason says why."""


# ---------------------------------------------------------------------------
# The model


@dataclass
class Origin:
    """``o=`` (RFC 8866 section 5.2). ``sess_id`` is kept as text (any token is accepted)."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"


@dataclass
class Connection:
    """``c=`` (section 5.7); ``ttl`` and ``count`` only for multicast addresses."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @property
    def is_hold_address(self) -> bool:
        """``c=IN IP4 0.0.0.0``: the RFC 2543 way of saying "do not send to me"."""
        return self.address in ("0.0.0.0", "::")


@dataclass
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (section 5.8)."""

    bwtype: str
    value: int


@dataclass
class Timing:
    """``t=`` with its ``r=`` lines, kept as text (section 5.9, 5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`` (section 6.6)."""

    pt: int
    encoding: str
    clock_rate: int
    channels: int = 1

    def is_(self, encoding: str, clock_rate: int | None = None) -> bool:
        """Encoding names compare case-insensitively (RFC 4855 section 3)."""
        return self.encoding.lower() == encoding.lower() and (
            clock_rate is None or self.clock_rate == clock_rate
        )


@dataclass(frozen=True)
class RtcpAttribute:
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605)."""

    port: int
    nettype: str | None = None
    addrtype: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Ssrc:
    """``a=ssrc:<ssrc-id> <attribute>[:<value>]`` (RFC 5576 section 4.1)."""

    ssrc: int
    attribute: str
    value: str | None = None


def _repr_attributes(attributes: list[tuple[str, str | None]]) -> str:
    return repr([(n, redact_attribute(n, v)) for n, v in attributes])


def _repr_extra(extra: list[tuple[str, str]]) -> str:
    return repr([(k, "***" if k == "k" else v) for k, v in extra])  # k= may hold a key


class _Attributes:
    """Lookups over an ordered list of (name, value); names compare case-insensitively."""

    attributes: list[tuple[str, str | None]]

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name``; "" for a flag; None if absent."""
        for value in self.attribute_values(name):
            return value if value is not None else ""
        return None

    def attribute_values(self, name: str) -> Iterator[str | None]:
        lowered = name.lower()
        return (v for n, v in self.attributes if n.lower() == lowered)

    def has_attribute(self, name: str) -> bool:
        return any(True for _ in self.attribute_values(name))

    def _direction(self) -> str | None:
        found = None
        for name, _ in self.attributes:
            if name.lower() in DIRECTIONS:
                found = name.lower()  # the last one wins if a peer sends several
        return found


@dataclass(repr=False)
class MediaDescription(_Attributes):
    """One ``m=`` section (RFC 8866 section 5.14) with its lines."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int = 1
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    # i= and k= lines (section 5.4, 5.12), kept in order: (type letter, value)
    extra: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"MediaDescription({self.media} {self.port} {self.proto} {self.formats}, "
            f"connection={self.connection!r}, bandwidths={self.bandwidths!r}, "
            f"attributes={_repr_attributes(self.attributes)}, extra={_repr_extra(self.extra)})"
        )

    def payload_types(self) -> list[int]:
        """The formats that are RTP payload type numbers (0-127), in order."""
        return [int(f) for f in self.formats if _NUM_RE.fullmatch(f) and int(f) <= 127]

    def rtpmaps(self) -> dict[int, RtpMap]:
        """Payload type -> mapping for the m= line's formats; static types implied."""
        explicit: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            rtpmap = _parse_rtpmap(value)
            if rtpmap is not None and rtpmap.pt not in explicit:
                explicit[rtpmap.pt] = rtpmap
        result: dict[int, RtpMap] = {}
        for pt in self.payload_types():
            found = explicit.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if found is not None:
                result[pt] = found
        return result

    def fmtp_value(self, pt: int) -> str | None:
        for value in self.attribute_values("fmtp"):
            head, _, rest = (value or "").strip().partition(" ")
            if head == str(pt):
                return rest.strip()
        return None

    def fmtp(self, pt: int) -> dict[str, str]:
        """``a=fmtp:<pt> k=v;k=v`` as a dict; names lowercased, a bare item maps to ""."""
        params: dict[str, str] = {}
        for item in (self.fmtp_value(pt) or "").split(";"):
            name, _, value = item.partition("=")
            if name.strip():
                params.setdefault(name.strip().lower(), value.strip())
        return params

    def direction(self, session: SessionDescription | None = None) -> str:
        """sendrecv/sendonly/recvonly/inactive: media level, else session level (6.7)."""
        found = self._direction()
        if found is None and session is not None:
            found = session._direction()
        return found or "sendrecv"

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")  # RFC 5761 section 5.1.1

    @property
    def rtcp(self) -> RtcpAttribute | None:
        parts = (self.attribute("rtcp") or "").split()
        if not parts or not _NUM_RE.fullmatch(parts[0]) or int(parts[0]) > 65535:
            return None
        if len(parts) == 4:
            return RtcpAttribute(int(parts[0]), parts[1], parts[2], parts[3])
        return RtcpAttribute(int(parts[0]))

    def cryptos(self) -> list[Crypto]:
        """The well-formed ``a=crypto`` lines in order; malformed ones are skipped."""
        result = []
        for value in self.attribute_values("crypto"):
            try:
                result.append(parse_crypto(value or ""))
            except ValueError:
                continue
        return result

    @property
    def ptime(self) -> int | None:
        return _parse_ptime(self.attribute("ptime"))

    @property
    def maxptime(self) -> int | None:
        return _parse_ptime(self.attribute("maxptime"))

    @property
    def mid(self) -> str | None:
        value = self.attribute("mid")
        return value.strip() if value else None  # RFC 5888 section 4

    def ssrcs(self) -> list[Ssrc]:
        result = []
        for value in self.attribute_values("ssrc"):
            head, _, rest = (value or "").strip().partition(" ")
            if not _NUM_RE.fullmatch(head) or int(head) > 0xFFFFFFFF or not rest.strip():
                continue
            name, sep, attr_value = rest.strip().partition(":")
            result.append(Ssrc(int(head), name, attr_value if sep else None))
        return result

    def effective_connection(self, session: SessionDescription | None = None) -> Connection | None:
        """The media c= line, else the session's (section 5.7)."""
        if self.connection is not None:
            return self.connection
        return session.connection if session is not None else None


@dataclass(repr=False)
class SessionDescription(_Attributes):
    """A whole session description (RFC 8866 section 5)."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timing: list[Timing] = field(default_factory=lambda: [Timing()])
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    # i=, u=, e=, p=, z=, k= lines (sections 5.4-5.6, 5.11, 5.12) in order: (letter, value)
    extra: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"SessionDescription(origin={self.origin!r}, session_name={self.session_name!r}, "
            f"connection={self.connection!r}, bandwidths={self.bandwidths!r}, "
            f"timing={self.timing!r}, attributes={_repr_attributes(self.attributes)}, "
            f"extra={_repr_extra(self.extra)}, media={self.media!r})"
        )

    @property
    def direction(self) -> str:
        """The session-level direction attribute, sendrecv when absent."""
        return self._direction() or "sendrecv"

    def groups(self) -> list[tuple[str, list[str]]]:
        """``a=group:<semantics> <mid>...`` (RFC 5888 section 5)."""
        result = []
        for value in self.attribute_values("group"):
            parts = (value or "").split()
            if parts:
                result.append((parts[0], parts[1:]))
        return result

    def serialize(self) -> bytes:
        """CRLF lines in RFC 8866 section 5 order; raises SdpError on unsafe text."""
        return "".join(f"{line}\r\n" for line in self._lines()).encode("utf-8")

    def _lines(self) -> Iterator[str]:
        o = self.origin
        yield f"v={self.version}"
        yield _join(
            "o", o.username, o.sess_id, str(o.sess_version), o.nettype, o.addrtype, o.address
        )
        yield _text("s", self.session_name)
        yield from _extra_lines(self.extra, "iuep")
        if self.connection is not None:
            yield _connection_line(self.connection)
        yield from (_join("b", f"{b.bwtype}:{b.value}") for b in self.bandwidths)
        for t in self.timing:
            yield _join("t", str(t.start), str(t.stop))
            yield from (_text("r", r) for r in t.repeats)
        yield from _extra_lines(self.extra, "zk")
        yield from _attribute_lines(self.attributes)
        for m in self.media:
            port = str(m.port) if m.port_count == 1 else f"{m.port}/{m.port_count}"
            yield _join("m", m.media, port, m.proto, *m.formats)
            yield from _extra_lines(m.extra, "i")
            if m.connection is not None:
                yield _connection_line(m.connection)
            yield from (_join("b", f"{b.bwtype}:{b.value}") for b in m.bandwidths)
            yield from _extra_lines(m.extra, "k")
            yield from _attribute_lines(m.attributes)


# RFC 3551 section 6, table 4: audio payload types with a static meaning.
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    pt: RtpMap(pt, name, rate, channels)
    for pt, name, rate, channels in (
        (0, "PCMU", 8000, 1),
        (3, "GSM", 8000, 1),
        (4, "G723", 8000, 1),
        (5, "DVI4", 8000, 1),
        (6, "DVI4", 16000, 1),
        (7, "LPC", 8000, 1),
        (8, "PCMA", 8000, 1),
        (9, "G722", 8000, 1),
        (10, "L16", 44100, 2),
        (11, "L16", 44100, 1),
        (12, "QCELP", 8000, 1),
        (13, "CN", 8000, 1),
        (14, "MPA", 90000, 1),
        (15, "G728", 8000, 1),
        (16, "DVI4", 11025, 1),
        (17, "DVI4", 22050, 1),
        (18, "G729", 8000, 1),
    )
}


def _parse_rtpmap(value: str | None) -> RtpMap | None:
    head, _, rest = (value or "").strip().partition(" ")
    parts = rest.strip().split("/")
    if not _NUM_RE.fullmatch(head) or int(head) > 127 or len(parts) not in (2, 3):
        return None
    if not parts[0] or not _NUM_RE.fullmatch(parts[1]) or int(parts[1]) == 0:
        return None
    channels = 1
    if len(parts) == 3:
        if not _NUM_RE.fullmatch(parts[2]) or not 1 <= int(parts[2]) <= 255:
            return None
        channels = int(parts[2])
    return RtpMap(int(head), parts[0], int(parts[1]), channels)


def _parse_ptime(value: str | None) -> int | None:
    match = _PTIME_RE.fullmatch((value or "").strip())
    if match is None or int(match.group(1)) == 0:
        return None
    return int(match.group(1))  # "20.0" -> 20


# ---------------------------------------------------------------------------
# Serialisation helpers: refuse text that would break or inject lines


def _text(kind: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise SdpError(f"{kind}= value contains CR, LF or NUL")
    return f"{kind}={value}"


def _join(kind: str, *fields: str) -> str:
    for item in fields:
        if not item or any(c.isspace() or c == "\0" for c in item):
            raise SdpError(f"{kind}= field {item!r} is empty or contains whitespace")
    return f"{kind}=" + " ".join(fields)


def _extra_lines(extra: list[tuple[str, str]], kinds: str) -> Iterator[str]:
    return (_text(k, value) for kind in kinds for k, value in extra if k == kind)


def _connection_line(c: Connection) -> str:
    address = c.address
    if c.ttl is not None:
        address += f"/{c.ttl}"
    if c.count is not None:
        address += f"/{c.count}"
    return _join("c", c.nettype, c.addrtype, address)


def _attribute_lines(attributes: Iterable[tuple[str, str | None]]) -> Iterator[str]:
    for name, value in attributes:
        if ":" in name or name != name.strip():  # would not parse back the same
            raise SdpError(f"attribute name {name!r} contains ':' or surrounding space")
        yield _text("a", name if value is None else f"{name}:{value}")


# ---------------------------------------------------------------------------
# Parsing


def _number(text: str, what: str, maximum: int | None = None) -> int:
    if not _NUM_RE.fullmatch(text) or (maximum is not None and int(text) > maximum):
        raise SdpError(f"bad {what}: {text[:40]!r}")
    return int(text)


def _check_address(addrtype: str, address: str) -> None:
    if not address:
        raise SdpError("c=: empty address")
    if _HOST_RE.fullmatch(address) and not address.replace(".", "").isdigit():
        return  # an FQDN (section 5.7 allows one)
    try:
        if addrtype.upper() == "IP4":
            ipaddress.IPv4Address(address)
        elif addrtype.upper() == "IP6":
            ipaddress.IPv6Address(address)
    except ValueError as exc:
        raise SdpError(f"c=: bad {addrtype} address {address[:60]!r}") from exc


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or not all(_TOKEN_RE.fullmatch(p) for p in parts[:2]):
        raise SdpError("c=: expected '<nettype> <addrtype> <address>'")
    nettype, addrtype, full = parts
    address, *extra = full.split("/")
    ttl = count = None
    if addrtype.upper() == "IP4" and extra:  # IP4 multicast: <addr>/<ttl>[/<n>]
        if len(extra) > 2:
            raise SdpError("c=: bad multicast suffix")
        ttl = _number(extra[0], "c= ttl", 255)
        count = _number(extra[1], "c= address count") if len(extra) == 2 else None
    elif addrtype.upper() == "IP6" and extra:  # IP6 multicast: <addr>/<n>
        if len(extra) > 1:
            raise SdpError("c=: bad multicast suffix")
        count = _number(extra[0], "c= address count")
    elif extra:
        address = full  # another address type: kept as is
    if addrtype.upper() in ("IP4", "IP6"):
        _check_address(addrtype, address)
    return Connection(nettype, addrtype, address, ttl, count)


def _parse_bandwidth(value: str) -> Bandwidth:
    bwtype, sep, amount = value.strip().partition(":")
    if not sep or not _TOKEN_RE.fullmatch(bwtype):
        raise SdpError("b=: expected '<bwtype>:<bandwidth>'")
    return Bandwidth(bwtype, _number(amount, "b= bandwidth"))


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError("o=: expected 6 fields")
    username, sess_id, version, nettype, addrtype, address = parts
    if not _TOKEN_RE.fullmatch(sess_id):
        raise SdpError("o=: bad sess-id")
    return Origin(
        username, sess_id, _number(version, "o= sess-version"), nettype, addrtype, address
    )


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError("m=: expected '<media> <port> <proto> <fmt> ...'")
    media, port_text, proto, *formats = parts
    if not _TOKEN_RE.fullmatch(media):
        raise SdpError("m=: bad media type")
    port_part, slash, count_part = port_text.partition("/")
    port = _number(port_part, "m= port", 65535)
    count = _number(count_part, "m= port count", 65535) if slash else 1
    if count < 1:
        raise SdpError("m=: bad port count")
    if not _PROTO_RE.fullmatch(proto):
        raise SdpError("m=: bad proto")
    if not all(_TOKEN_RE.fullmatch(f) for f in formats):
        raise SdpError("m=: bad format")
    return MediaDescription(media, port, proto, formats, port_count=count)


def _parse_attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name.strip(), (rest if sep else None)


def _decode(data: str | bytes) -> str:
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_SIZE:
            raise SdpError(f"SDP larger than {MAX_SDP_SIZE} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError("SDP is not UTF-8") from exc
    if len(data) > MAX_SDP_SIZE:
        raise SdpError(f"SDP larger than {MAX_SDP_SIZE} bytes")
    try:
        encoded = data.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SdpError("SDP text is not encodable as UTF-8") from exc
    if len(encoded) > MAX_SDP_SIZE:
        raise SdpError(f"SDP larger than {MAX_SDP_SIZE} bytes")
    return data


def _lines_of(text: str) -> Iterator[tuple[int, str, str]]:
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue  # be liberal: blank lines (a trailing one is common)
        if "\r" in line or "\0" in line:
            raise SdpError(f"line {number}: stray CR or NUL")
        if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
            raise SdpError(f"line {number}: not '<type>=<value>'")
        yield number, line[0], line[2:]


def parse_sdp(data: str | bytes) -> SessionDescription:
    """Parse a session description (CRLF or LF line ends); raise SdpError if malformed."""
    lines = list(_lines_of(_decode(data)))
    if not lines or lines[0][1] != "v":
        raise SdpError("SDP must start with v=")
    if lines[0][2].strip() != "0":
        raise SdpError("v=: only version 0 is defined")
    origin: Origin | None = None
    name: str | None = None
    session = SessionDescription(Origin("-", "0", 0), timing=[])
    media: MediaDescription | None = None
    attribute_count = 0
    for number, kind, value in lines[1:]:
        try:
            if kind == "m":
                if origin is None or name is None or not session.timing:
                    raise SdpError("o=, s= and t= must come before the first m=")
                if len(session.media) >= MAX_MEDIA:
                    raise SdpError(f"more than {MAX_MEDIA} media sections")
                media = _parse_media(value)
                session.media.append(media)
            elif kind == "a":
                attribute_count += 1
                if attribute_count > MAX_ATTRIBUTES:
                    raise SdpError(f"more than {MAX_ATTRIBUTES} attributes")
                (media or session).attributes.append(_parse_attribute(value))
            elif kind == "c":
                target = media or session
                if target.connection is not None:
                    raise SdpError("more than one c= line")
                target.connection = _parse_connection(value)
            elif kind == "b":
                (media or session).bandwidths.append(_parse_bandwidth(value))
            elif kind in "ik" or (media is None and kind in "uepz"):
                (media or session).extra.append((kind, value))
            elif media is not None:
                raise SdpError(f"{kind}= is not allowed in a media section")
            elif kind == "v":
                raise SdpError("more than one v= line")
            elif kind == "o":
                if origin is not None:
                    raise SdpError("more than one o= line")
                origin = session.origin = _parse_origin(value)
            elif kind == "s":
                if name is not None:
                    raise SdpError("more than one s= line")
                name = session.session_name = value
            elif kind == "t":
                parts = value.split()
                if len(parts) != 2:
                    raise SdpError("t=: expected '<start> <stop>'")
                session.timing.append(
                    Timing(_number(parts[0], "t= start"), _number(parts[1], "t= stop"))
                )
            elif kind == "r":
                if not session.timing:
                    raise SdpError("r= before any t=")
                session.timing[-1].repeats.append(value)
            else:
                # RFC 8866 section 5: a description with an unknown type letter is ignored.
                raise SdpError(f"unknown line type {kind}=")
        except SdpError as exc:
            raise SdpError(f"line {number}: {exc}") from None
    if origin is None:
        raise SdpError("missing o= line")
    if name is None:
        raise SdpError("missing s= line")
    if not session.timing:
        raise SdpError("missing t= line")
    # Kept in the order they are written out (accepted in any order).
    session.extra.sort(key=lambda e: "iuepzk".index(e[0]))
    for m in session.media:
        m.extra.sort(key=lambda e: "ik".index(e[0]))
    return session
