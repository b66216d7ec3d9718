"""STUN messages for ICE: parse and build (RFC 5389, RFC 8445 section 16.1).

Sans-IO: bytes in, typed values out, and back. Nothing here owns a socket, a
timer or a transaction: retransmission (RFC 5389 section 7.2.1) and the ICE
checks belong to the agent above.

What is covered:

- the header (section 6): the two zero bits, the message type split into
  method and class, the length (a multiple of 4, section 6), the magic cookie,
  the 96-bit transaction id;
- attributes (section 15): XOR-MAPPED-ADDRESS (15.2, IPv4 and IPv6), USERNAME
  (15.3), MESSAGE-INTEGRITY (15.4), FINGERPRINT (15.5), ERROR-CODE (15.6),
  UNKNOWN-ATTRIBUTES (15.9), SOFTWARE (15.10); and ICE's PRIORITY,
  USE-CANDIDATE, ICE-CONTROLLED and ICE-CONTROLLING (RFC 8445 16.1);
- anything else is kept as an :class:`UnknownAttribute`: a
  comprehension-optional one (type 0x8000-0xFFFF) may be ignored, a
  comprehension-required one (0x0000-0x7FFF) is reported by
  :meth:`StunMessage.unknown_required` so that a request can be answered 420
  with UNKNOWN-ATTRIBUTES (section 7.3.1).

MESSAGE-INTEGRITY and FINGERPRINT are not attributes of :class:`StunMessage`:
:func:`encode` appends them (``key=``, ``fingerprint=``), :func:`parse` checks
the fingerprint and returns a :class:`ParsedStun` whose
:meth:`~ParsedStun.check_integrity` verifies the HMAC. ICE uses short-term
credentials (RFC 8445 7.2.2): the key is the password itself (RFC 5389 15.4;
SASLprep is not applied, ICE passwords are ``ice-char``, ASCII).

Any malformed input raises :class:`StunError`, and nothing else.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

MAGIC_COOKIE = 0x2112A442  # section 6
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_SIZE = 20
FINGERPRINT_XOR = 0x5354554E  # section 15.5: "STUN"
INTEGRITY_SIZE = 20  # HMAC-SHA1

BINDING = 0x001  # the one method ICE uses (section 18.2)

# Attribute types (section 18.2; RFC 8445 section 20.1).
XOR_MAPPED_ADDRESS = 0x0020
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A

MAX_USERNAME = 512  # section 15.3: "MUST contain a UTF-8 encoded sequence of less than 513 bytes"
MAX_REASON = 763  # section 15.6
MAX_SOFTWARE = 763  # section 15.10


class StunError(ValueError):
    """The bytes are not a well-formed STUN message (or a value cannot be encoded)."""


class StunClass(IntEnum):
    """The class bits C1 C0 of the message type (section 6)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


def new_transaction_id() -> bytes:
    """96 random bits from :mod:`secrets` (section 6: "uniformly and randomly chosen")."""
    return secrets.token_bytes(12)


def is_stun(data: bytes) -> bool:
    """The RFC 7983 (section 7) demultiplexing test: first byte 0-3 is STUN.

    Cheap on purpose, for the one media port that carries STUN, DTLS (20-63)
    and SRTP/SRTCP (128-191); :func:`parse` does the strict checks. It holds
    for methods below 0x100 (Binding is 0x001): higher method bits reach the
    first byte (RFC 5389 section 6).
    """
    return len(data) > 0 and data[0] <= 3


# --------------------------------------------------------------------------- attributes


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class XorMappedAddress:
    """XOR-MAPPED-ADDRESS (section 15.2): the source address the server saw."""

    address: IpAddress
    port: int


@dataclass(frozen=True, slots=True)
class Username:
    """USERNAME (section 15.3); for ICE ``"<their ufrag>:<our ufrag>"`` (RFC 8445 7.2.2)."""

    value: str


@dataclass(frozen=True, slots=True)
class Software:
    """SOFTWARE (section 15.10): a description of the agent, fewer than 128 characters."""

    value: str


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """ERROR-CODE (section 15.6): a code 300-699 and a reason phrase."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UnknownAttributes:
    """UNKNOWN-ATTRIBUTES (section 15.9): the types a 420 response did not understand."""

    types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Priority:
    """PRIORITY (RFC 8445 16.1): the priority of a peer-reflexive candidate, 32 bits."""

    value: int


@dataclass(frozen=True, slots=True)
class UseCandidate:
    """USE-CANDIDATE (RFC 8445 16.1): the controlling agent nominates this pair. No value."""


@dataclass(frozen=True, slots=True)
class IceControlled:
    """ICE-CONTROLLED (RFC 8445 16.1): the sender is controlled; its 64-bit tie-breaker."""

    tie_breaker: int


@dataclass(frozen=True, slots=True)
class IceControlling:
    """ICE-CONTROLLING (RFC 8445 16.1): the sender is controlling; its 64-bit tie-breaker."""

    tie_breaker: int


@dataclass(frozen=True, slots=True)
class UnknownAttribute:
    """An attribute this codec does not interpret, kept as it came (value without padding)."""

    type: int
    value: bytes

    @property
    def comprehension_required(self) -> bool:
        """Types 0x0000-0x7FFF must be understood (section 15)."""
        return self.type < 0x8000


Attribute = (
    XorMappedAddress
    | Username
    | Software
    | ErrorCode
    | UnknownAttributes
    | Priority
    | UseCandidate
    | IceControlled
    | IceControlling
    | UnknownAttribute
)

A = TypeVar(
    "A",
    XorMappedAddress,
    Username,
    Software,
    ErrorCode,
    UnknownAttributes,
    Priority,
    UseCandidate,
    IceControlled,
    IceControlling,
    UnknownAttribute,
)

_RESERVED_TYPES = frozenset({MESSAGE_INTEGRITY, FINGERPRINT})


# --------------------------------------------------------------------------- the message


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A STUN message without its MESSAGE-INTEGRITY and FINGERPRINT (see :func:`encode`)."""

    method: int
    cls: StunClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    def get(self, kind: type[A]) -> A | None:
        """The first attribute of this kind, or None (section 15: later duplicates ignored)."""
        for attr in self.attributes:
            if isinstance(attr, kind):
                return attr
        return None

    def has(self, kind: type[Attribute]) -> bool:
        return any(isinstance(attr, kind) for attr in self.attributes)

    def unknown_required(self) -> tuple[int, ...]:
        """Types of unknown comprehension-required attributes, for a 420 (section 7.3.1)."""
        return tuple(
            a.type
            for a in self.attributes
            if isinstance(a, UnknownAttribute) and a.comprehension_required
        )


@dataclass(frozen=True, slots=True)
class ParsedStun:
    """What :func:`parse` read: the message, and what its integrity covers.

    ``integrity`` is the HMAC of a MESSAGE-INTEGRITY attribute, if there was one;
    ``signed`` the bytes it covers, header length already adjusted (section
    15.4). ``fingerprint`` says whether a FINGERPRINT was present (and, since
    :func:`parse` returned, correct).
    """

    message: StunMessage
    integrity: bytes | None
    fingerprint: bool
    signed: bytes = b""

    def check_integrity(self, password: str | bytes) -> bool:
        """Short-term credentials (section 15.4): key = the password; False if absent or wrong."""
        if self.integrity is None:
            return False
        key = password.encode("utf-8") if isinstance(password, str) else password
        expected = hmac.new(key, self.signed, hashlib.sha1).digest()
        return hmac.compare_digest(expected, self.integrity)


# --------------------------------------------------------------------------- header


def _message_type(method: int, cls: StunClass) -> int:
    """Interleave method bits M0-M11 and class bits C0 C1 (section 6, figure 3)."""
    if not 0 <= method <= 0xFFF:
        raise StunError(f"method out of range: {method:#x}")
    c = int(cls)
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
    )


def _split_type(mtype: int) -> tuple[int, StunClass]:
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    c = ((mtype >> 4) & 0b01) | ((mtype >> 7) & 0b10)
    return method, StunClass(c)


def _xor_bytes(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _fingerprint(data: bytes) -> int:
    return (binascii.crc32(data) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def _with_length(data: bytes, length: int) -> bytes:
    """The header's length field replaced (sections 15.4 and 15.5)."""
    return data[:2] + struct.pack("!H", length) + data[4:]


# --------------------------------------------------------------------------- decode


def _decode_text(value: bytes, name: str, limit: int) -> str:
    if len(value) > limit:
        raise StunError(f"{name} too long: {len(value)} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError(f"{name} is not UTF-8") from exc


def _decode_exact(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise StunError(f"{name} must be {size} bytes, got {len(value)}")


def _decode_attribute(atype: int, value: bytes, transaction_id: bytes) -> Attribute:
    if atype == XOR_MAPPED_ADDRESS:
        if len(value) < 4:
            raise StunError("XOR-MAPPED-ADDRESS too short")
        family = value[1]
        port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
        address: IpAddress
        if family == 0x01:
            _decode_exact(value, 8, "XOR-MAPPED-ADDRESS (IPv4)")
            address = ipaddress.IPv4Address(_xor_bytes(value[4:8], _COOKIE_BYTES))
        elif family == 0x02:
            _decode_exact(value, 20, "XOR-MAPPED-ADDRESS (IPv6)")
            address = ipaddress.IPv6Address(_xor_bytes(value[4:20], _COOKIE_BYTES + transaction_id))
        else:
            raise StunError(f"XOR-MAPPED-ADDRESS: unknown family {family:#x}")
        return XorMappedAddress(address, port)
    if atype == USERNAME:
        return Username(_decode_text(value, "USERNAME", MAX_USERNAME))
    if atype == SOFTWARE:
        return Software(_decode_text(value, "SOFTWARE", MAX_SOFTWARE))
    if atype == ERROR_CODE:
        if len(value) < 4:
            raise StunError("ERROR-CODE too short")
        if value[0] or value[1] or value[2] & 0xF8:
            raise StunError("ERROR-CODE: reserved bits set")
        klass, number = value[2] & 0x07, value[3]
        if not 3 <= klass <= 6 or number > 99:
            raise StunError(f"ERROR-CODE out of range: class {klass}, number {number}")
        return ErrorCode(
            klass * 100 + number, _decode_text(value[4:], "ERROR-CODE reason", MAX_REASON)
        )
    if atype == UNKNOWN_ATTRIBUTES:
        if len(value) % 2:
            raise StunError("UNKNOWN-ATTRIBUTES: odd length")
        return UnknownAttributes(struct.unpack(f"!{len(value) // 2}H", value))
    if atype == PRIORITY:
        _decode_exact(value, 4, "PRIORITY")
        return Priority(struct.unpack("!I", value)[0])
    if atype == USE_CANDIDATE:
        _decode_exact(value, 0, "USE-CANDIDATE")
        return UseCandidate()
    if atype == ICE_CONTROLLED:
        _decode_exact(value, 8, "ICE-CONTROLLED")
        return IceControlled(struct.unpack("!Q", value)[0])
    if atype == ICE_CONTROLLING:
        _decode_exact(value, 8, "ICE-CONTROLLING")
        return IceControlling(struct.unpack("!Q", value)[0])
    return UnknownAttribute(atype, bytes(value))


def parse(data: bytes) -> ParsedStun:
    """Parse one STUN message (one UDP datagram), strictly.

    Raises :class:`StunError` on: fewer than 20 bytes, the top two bits set,
    a wrong magic cookie, a length that is not a multiple of 4 or not the
    datagram's (section 6), an attribute running past the end, a bad value of
    a known attribute, a MESSAGE-INTEGRITY that is not 20 bytes, anything
    after FINGERPRINT or a wrong FINGERPRINT (section 15.5). Attributes after
    MESSAGE-INTEGRITY other than FINGERPRINT are ignored (section 15.4).
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise StunError(f"shorter than a STUN header: {len(data)} bytes")
    mtype, length, cookie = struct.unpack_from("!HHI", data, 0)
    if mtype & 0xC000:
        raise StunError("the first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"wrong magic cookie: {cookie:#010x}")
    if length % 4:
        raise StunError(f"length {length} is not a multiple of 4")
    if HEADER_SIZE + length != len(data):
        raise StunError(
            f"length {length} does not match the {len(data) - HEADER_SIZE} bytes after the header"
        )
    method, cls = _split_type(mtype)
    transaction_id = data[8:20]

    attributes: list[Attribute] = []
    integrity: bytes | None = None
    signed = b""
    fingerprint = False
    offset = HEADER_SIZE
    while offset < len(data):
        if fingerprint:
            raise StunError("attribute after FINGERPRINT")
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        atype, alen = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + alen
        padded = start + (alen + 3) // 4 * 4
        if padded > len(data):
            raise StunError(f"attribute {atype:#06x} runs past the end of the message")
        value = data[start:end]
        if atype == FINGERPRINT:
            _decode_exact(value, 4, "FINGERPRINT")
            received = struct.unpack("!I", value)[0]
            if received != _fingerprint(_with_length(data[:offset], padded - HEADER_SIZE)):
                raise StunError("FINGERPRINT mismatch")
            fingerprint = True
        elif integrity is not None:
            pass  # section 15.4: ignore everything after MESSAGE-INTEGRITY but FINGERPRINT
        elif atype == MESSAGE_INTEGRITY:
            _decode_exact(value, INTEGRITY_SIZE, "MESSAGE-INTEGRITY")
            integrity = value
            signed = _with_length(data[:offset], padded - HEADER_SIZE)
        else:
            attributes.append(_decode_attribute(atype, value, transaction_id))
        offset = padded
    message = StunMessage(method, cls, transaction_id, tuple(attributes))
    return ParsedStun(message, integrity, fingerprint, signed)


# --------------------------------------------------------------------------- encode


def _encode_text(text: str, name: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise StunError(f"{name} too long: {len(raw)} bytes")
    return raw


def _encode_attribute(attr: Attribute, transaction_id: bytes) -> tuple[int, bytes]:
    if isinstance(attr, XorMappedAddress):
        if not 0 <= attr.port <= 0xFFFF:
            raise StunError(f"port out of range: {attr.port}")
        xport = attr.port ^ (MAGIC_COOKIE >> 16)
        if isinstance(attr.address, ipaddress.IPv4Address):
            xaddr = _xor_bytes(attr.address.packed, _COOKIE_BYTES)
            return XOR_MAPPED_ADDRESS, struct.pack("!BBH", 0, 0x01, xport) + xaddr
        xaddr = _xor_bytes(attr.address.packed, _COOKIE_BYTES + transaction_id)
        return XOR_MAPPED_ADDRESS, struct.pack("!BBH", 0, 0x02, xport) + xaddr
    if isinstance(attr, Username):
        return USERNAME, _encode_text(attr.value, "USERNAME", MAX_USERNAME)
    if isinstance(attr, Software):
        return SOFTWARE, _encode_text(attr.value, "SOFTWARE", MAX_SOFTWARE)
    if isinstance(attr, ErrorCode):
        if not 300 <= attr.code <= 699:
            raise StunError(f"error code out of range: {attr.code}")
        reason = _encode_text(attr.reason, "ERROR-CODE reason", MAX_REASON)
        return ERROR_CODE, struct.pack("!HBB", 0, attr.code // 100, attr.code % 100) + reason
    if isinstance(attr, UnknownAttributes):
        if any(not 0 <= t <= 0xFFFF for t in attr.types):
            raise StunError("UNKNOWN-ATTRIBUTES: type out of range")
        return UNKNOWN_ATTRIBUTES, struct.pack(f"!{len(attr.types)}H", *attr.types)
    if isinstance(attr, Priority):
        if not 0 <= attr.value <= 0xFFFFFFFF:
            raise StunError(f"PRIORITY out of range: {attr.value}")
        return PRIORITY, struct.pack("!I", attr.value)
    if isinstance(attr, UseCandidate):
        return USE_CANDIDATE, b""
    if isinstance(attr, IceControlled | IceControlling):
        if not 0 <= attr.tie_breaker <= 0xFFFFFFFFFFFFFFFF:
            raise StunError(f"tie-breaker out of range: {attr.tie_breaker}")
        atype = ICE_CONTROLLED if isinstance(attr, IceControlled) else ICE_CONTROLLING
        return atype, struct.pack("!Q", attr.tie_breaker)
    if attr.type in _RESERVED_TYPES or not 0 <= attr.type <= 0xFFFF:
        raise StunError(f"cannot carry attribute type {attr.type:#x} as unknown")
    return attr.type, attr.value


def _tlv(atype: int, value: bytes, pad: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise StunError(f"attribute {atype:#06x} too long")
    return struct.pack("!HH", atype, len(value)) + value + pad * (-len(value) % 4)


def encode(
    message: StunMessage,
    *,
    key: str | bytes | None = None,
    fingerprint: bool = False,
    pad: bytes = b"\x00",
) -> bytes:
    """The message's bytes; with MESSAGE-INTEGRITY if a key is given, then FINGERPRINT.

    ``key`` is the short-term password (section 15.4). ``pad`` is the padding
    byte: section 15 lets the sender pick any value (receivers ignore it);
    zero is the norm, RFC 5769's vectors use spaces.
    """
    if len(message.transaction_id) != 12:
        raise StunError("transaction id must be 12 bytes")
    if len(pad) != 1:
        raise StunError("pad must be one byte")
    body = b"".join(
        _tlv(*_encode_attribute(attr, message.transaction_id), pad) for attr in message.attributes
    )
    header = struct.pack("!HH", _message_type(message.method, message.cls), 0)
    header += _COOKIE_BYTES + message.transaction_id
    data = header + body
    if key is not None:
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        signed = _with_length(data, len(body) + 4 + INTEGRITY_SIZE)
        mac = hmac.new(raw_key, signed, hashlib.sha1).digest()
        data = signed + _tlv(MESSAGE_INTEGRITY, mac, pad)
    if fingerprint:
        data = _with_length(data, len(data) - HEADER_SIZE + 8)
        data += _tlv(FINGERPRINT, struct.pack("!I", _fingerprint(data)), pad)
    if len(data) - HEADER_SIZE > 0xFFFF:
        raise StunError("message too long")
    return _with_length(data, len(data) - HEADER_SIZE)


# --------------------------------------------------------------------------- Binding


def binding_request(
    username: str,
    *,
    priority: int,
    controlling: bool,
    tie_breaker: int,
    use_candidate: bool = False,
    transaction_id: bytes | None = None,
) -> StunMessage:
    """An ICE check (RFC 8445 7.2.2): USERNAME, PRIORITY, the role, maybe USE-CANDIDATE.

    Encode it with ``key=`` the peer's password and ``fingerprint=True``
    (RFC 8445 7.2.2 requires both).
    """
    role: Attribute = IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker)
    attrs: list[Attribute] = [Username(username), Priority(priority), role]
    if use_candidate:
        attrs.append(UseCandidate())
    return StunMessage(
        BINDING,
        StunClass.REQUEST,
        new_transaction_id() if transaction_id is None else transaction_id,
        tuple(attrs),
    )


def binding_success(request: StunMessage, address: IpAddress, port: int) -> StunMessage:
    """A Binding success response: XOR-MAPPED-ADDRESS of the source (RFC 8445 7.3.1.2).

    Encode it with ``key=`` our own password and ``fingerprint=True``.
    """
    return StunMessage(
        BINDING, StunClass.SUCCESS, request.transaction_id, (XorMappedAddress(address, port),)
    )


def binding_error(
    request: StunMessage, code: int, reason: str = "", unknown: tuple[int, ...] = ()
) -> StunMessage:
    """An error response (section 7.3.1.1): ERROR-CODE, and UNKNOWN-ATTRIBUTES for a 420.

    ICE's are 400 (bad request), 401 (unauthorized) and 487 (role conflict,
    RFC 8445 7.3.1.1).
    """
    attrs: list[Attribute] = [ErrorCode(code, reason)]
    if unknown:
        attrs.append(UnknownAttributes(unknown))
    return StunMessage(BINDING, StunClass.ERROR, request.transaction_id, tuple(attrs))
