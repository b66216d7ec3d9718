"""The STUN codec (gateway.ice.stun): RFC 5769 vectors, round trips, malformed input.

RFC 5769 section 2 gives three messages with short-term credentials (password
``VOkJxbRl1RmTxUk/WvJxBt``): a Binding request with ICE attributes, and the
success responses carrying an IPv4 and an IPv6 XOR-MAPPED-ADDRESS. They are
parsed, their HMAC and CRC checked, and rebuilt byte for byte (the RFC pads
with spaces: ``encode(pad=b" ")``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ice.stun import (
    BINDING,
    ERROR_CODE,
    FINGERPRINT,
    ICE_CONTROLLED,
    MESSAGE_INTEGRITY,
    PRIORITY,
    SOFTWARE,
    UNKNOWN_ATTRIBUTES,
    USE_CANDIDATE,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    Attribute,
    ErrorCode,
    IceControlled,
    IceControlling,
    Priority,
    Software,
    StunClass,
    StunError,
    StunMessage,
    UnknownAttribute,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
    binding_error,
    binding_request,
    binding_success,
    encode,
    is_stun,
    new_transaction_id,
    parse,
)

PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 section 2.1: sample request.
REQUEST = bytes.fromhex(
    "00010058 2112a442 b7e7a701 bc34d686 fa87dfae"
    "80220010 5354554e 20746573 7420636c 69656e74"  # SOFTWARE "STUN test client"
    "00240004 6e0001ff"  # PRIORITY
    "80290008 932ff9b1 51263b36"  # ICE-CONTROLLED
    "00060009 6576746a 3a683676 59202020"  # USERNAME "evtj:h6vY", space padding
    "00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2"  # MESSAGE-INTEGRITY
    "80280004 e57a3bcf"  # FINGERPRINT
)

# RFC 5769 section 2.2: sample IPv4 response.
RESPONSE_V4 = bytes.fromhex(
    "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae"
    "8022000b 74657374 20766563 746f7220"  # SOFTWARE "test vector"
    "00200008 0001a147 e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7"
    "80280004 c07d4c96"
)

# RFC 5769 section 2.3: sample IPv6 response.
RESPONSE_V6 = bytes.fromhex(
    "01010048 2112a442 b7e7a701 bc34d686 fa87dfae"
    "8022000b 74657374 20766563 746f7220"
    "00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9"  # 2001:db8:1234:5678:11:2233:4455:6677
    "00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41"
    "80280004 c8fb0b4c"
)


# --------------------------------------------------------------------------- RFC 5769


def test_rfc5769_request() -> None:
    parsed = parse(REQUEST)
    msg = parsed.message
    assert (msg.method, msg.cls, msg.transaction_id) == (BINDING, StunClass.REQUEST, TID)
    assert msg.attributes == (
        Software("STUN test client"),
        Priority(0x6E0001FF),
        IceControlled(0x932FF9B151263B36),
        Username("evtj:h6vY"),
    )
    assert parsed.fingerprint
    assert parsed.check_integrity(PASSWORD)
    assert encode(msg, key=PASSWORD, fingerprint=True, pad=b" ") == REQUEST


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (RESPONSE_V4, "192.0.2.1"),
        (RESPONSE_V6, "2001:db8:1234:5678:11:2233:4455:6677"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_responses(data: bytes, address: str) -> None:
    parsed = parse(data)
    msg = parsed.message
    assert (msg.method, msg.cls, msg.transaction_id) == (BINDING, StunClass.SUCCESS, TID)
    assert msg.get(Software) == Software("test vector")
    assert msg.get(XorMappedAddress) == XorMappedAddress(ipaddress.ip_address(address), 32853)
    assert parsed.fingerprint
    assert parsed.check_integrity(PASSWORD)
    assert encode(msg, key=PASSWORD, fingerprint=True, pad=b" ") == data
    # Zero padding (our default) changes only the padding, MAC and CRC; it still verifies.
    again = parse(encode(msg, key=PASSWORD, fingerprint=True))
    assert again.message == msg and again.check_integrity(PASSWORD)


@pytest.mark.parametrize("data", [REQUEST, RESPONSE_V4, RESPONSE_V6], ids=["req", "v4", "v6"])
def test_rfc5769_wrong_password_fails_integrity(data: bytes) -> None:
    parsed = parse(data)
    assert not parsed.check_integrity("VOkJxbRl1RmTxUk/WvJxBu")
    assert not parsed.check_integrity("")
    assert parsed.check_integrity(PASSWORD.encode())


def _refused(data: bytes) -> bool:
    """What an ICE agent does with a check: refuse bad STUN, a bad MAC or no FINGERPRINT.

    (Damage to FINGERPRINT's type turns it into an attribute after
    MESSAGE-INTEGRITY, which section 15.4 ignores: the message parses, without
    a fingerprint, and RFC 8445 7.2.2 requires one.)
    """
    try:
        parsed = parse(data)
    except StunError:
        return True
    return not (parsed.fingerprint and parsed.check_integrity(PASSWORD))


def test_rfc5769_every_flipped_byte_fails() -> None:
    """A bit flipped anywhere, padding included (the CRC covers it), is refused."""
    for i in range(len(REQUEST)):
        damaged = bytearray(REQUEST)
        damaged[i] ^= 0x01
        assert _refused(bytes(damaged)), i
    damaged = bytearray(REQUEST)
    damaged[-1] ^= 0x80  # the CRC itself
    with pytest.raises(StunError, match="FINGERPRINT"):
        parse(bytes(damaged))
    damaged = bytearray(REQUEST)
    damaged[20 + 4 + 28 + 9] ^= 0x01  # USERNAME padding
    with pytest.raises(StunError, match="FINGERPRINT"):
        parse(bytes(damaged))


def test_flipped_byte_with_fingerprint_recomputed_fails_integrity() -> None:
    body = bytearray(REQUEST[:-8])  # without FINGERPRINT
    body[2:4] = struct.pack("!H", len(body) - 20)
    assert parse(bytes(body)).check_integrity(PASSWORD)
    body[30] ^= 0x01  # inside PRIORITY
    assert not parse(bytes(body)).check_integrity(PASSWORD)


# --------------------------------------------------------------------------- builders


def test_binding_request_check_round_trip() -> None:
    req = binding_request(
        "remote:local",
        priority=1853824767,
        controlling=True,
        tie_breaker=2**63 + 5,
        use_candidate=True,
    )
    data = encode(req, key="pass", fingerprint=True)
    assert is_stun(data)
    parsed = parse(data)
    assert parsed.message == req
    assert parsed.check_integrity("pass") and not parsed.check_integrity("Pass")
    assert parsed.message.has(UseCandidate)
    assert parsed.message.get(IceControlling) == IceControlling(2**63 + 5)
    assert parsed.message.get(IceControlled) is None
    controlled = binding_request("a:b", priority=1, controlling=False, tie_breaker=0)
    assert controlled.get(IceControlled) == IceControlled(0)
    assert not controlled.has(UseCandidate)


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::1", "::ffff:192.0.2.1"])
def test_binding_success_round_trip(address: str) -> None:
    req = binding_request("a:b", priority=1, controlling=True, tie_breaker=1)
    resp = binding_success(req, ipaddress.ip_address(address), 65535)
    parsed = parse(encode(resp, key="pw", fingerprint=True))
    assert parsed.message == resp
    assert parsed.message.cls is StunClass.SUCCESS
    assert parsed.message.transaction_id == req.transaction_id


def test_binding_error_420_with_unknown() -> None:
    req = StunMessage(
        BINDING, StunClass.REQUEST, new_transaction_id(), (UnknownAttribute(0x7F01, b"xy"),)
    )
    assert parse(encode(req)).message.unknown_required() == (0x7F01,)
    resp = binding_error(req, 420, "Unknown Attribute", req.unknown_required())
    data = encode(resp, fingerprint=True)
    parsed = parse(data)
    assert parsed.message.cls is StunClass.ERROR
    assert parsed.message.get(ErrorCode) == ErrorCode(420, "Unknown Attribute")
    assert parsed.message.get(UnknownAttributes) == UnknownAttributes((0x7F01,))
    assert parsed.integrity is None and not parsed.check_integrity("x")


@pytest.mark.parametrize(
    ("cls", "mtype"),
    [
        (StunClass.REQUEST, 0x0001),
        (StunClass.INDICATION, 0x0011),
        (StunClass.SUCCESS, 0x0101),
        (StunClass.ERROR, 0x0111),
    ],
)
def test_message_type_bits(cls: StunClass, mtype: int) -> None:
    """Section 6: Binding request 0x0001, indication 0x0011, success 0x0101, error 0x0111."""
    data = encode(StunMessage(BINDING, cls, TID))
    assert struct.unpack_from("!H", data)[0] == mtype
    assert parse(data).message.cls is cls


def test_transaction_ids_are_random() -> None:
    ids = {new_transaction_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(t) == 12 for t in ids)


# --------------------------------------------------------------------------- unknowns


def test_unknown_attributes_kept_and_required_reported() -> None:
    data = _raw(_tlv(0x8123, b"opt"), _tlv(0x0031, b"req!"), _tlv(PRIORITY, b"\x00\x00\x00\x07"))
    msg = parse(data).message
    assert msg.attributes == (
        UnknownAttribute(0x8123, b"opt"),
        UnknownAttribute(0x0031, b"req!"),
        Priority(7),
    )
    assert msg.unknown_required() == (0x0031,)
    assert encode(msg) == data  # zero padding: byte-identical


def test_attributes_after_integrity_ignored() -> None:
    """Section 15.4: all but FINGERPRINT after MESSAGE-INTEGRITY is ignored."""
    base = StunMessage(BINDING, StunClass.REQUEST, TID, (Username("u:v"),))
    signed = encode(base, key="k")
    extra = _tlv(PRIORITY, b"\x00\x00\x00\x01") + _tlv(0x0031, b"")
    data = _with_len(signed + extra)
    parsed = parse(data)
    assert parsed.message == base
    assert parsed.check_integrity("k")


def test_duplicate_attribute_first_wins() -> None:
    msg = parse(
        _raw(_tlv(PRIORITY, b"\x00\x00\x00\x01"), _tlv(PRIORITY, b"\x00\x00\x00\x02"))
    ).message
    assert msg.get(Priority) == Priority(1)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", False),
        (b"\x00", True),
        (b"\x03" + b"\x00" * 30, True),
        (b"\x04", False),
        (b"\x16\xfe\xfd", False),  # DTLS (20-63)
        (b"\x80\x00", False),  # RTP (128-191)
        (REQUEST, True),
    ],
)
def test_is_stun(data: bytes, expected: bool) -> None:
    assert is_stun(data) is expected


# --------------------------------------------------------------------------- malformed


def _tlv(atype: int, value: bytes, declared: int | None = None) -> bytes:
    n = len(value) if declared is None else declared
    return struct.pack("!HH", atype, n) + value + b"\x00" * (-len(value) % 4)


def _with_len(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


def _raw(*attrs: bytes, mtype: int = 0x0001) -> bytes:
    return _with_len(struct.pack("!HHI", mtype, 0, 0x2112A442) + TID + b"".join(attrs))


HEADER = _raw()

MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("short header", HEADER[:19]),
    ("top bits set", b"\x40" + HEADER[1:]),
    ("top bit set", b"\x80" + HEADER[1:]),
    ("wrong cookie", HEADER[:4] + b"\x21\x12\xa4\x43" + HEADER[8:]),
    ("length not multiple of 4", HEADER[:2] + b"\x00\x02" + HEADER[4:] + b"\x00\x00"),
    ("length longer than data", HEADER[:2] + b"\x00\x04" + HEADER[4:]),
    ("length shorter than data", HEADER + b"\x00\x00\x00\x00"),
    ("attribute past end", _with_len(HEADER + struct.pack("!HH", 0x8123, 8) + b"abcd")),
    ("padding past end", _with_len(HEADER + struct.pack("!HH", 0x8123, 5) + b"abcd")),
    ("priority short", _raw(_tlv(PRIORITY, b"\x00\x00\x01"))),
    ("priority long", _raw(_tlv(PRIORITY, b"\x00" * 8))),
    ("use-candidate value", _raw(_tlv(USE_CANDIDATE, b"\x01\x00\x00\x00"))),
    ("ice-controlled short", _raw(_tlv(ICE_CONTROLLED, b"\x00" * 4))),
    ("ice-controlling long", _raw(_tlv(0x802A, b"\x00" * 12))),
    ("integrity short", _raw(_tlv(MESSAGE_INTEGRITY, b"\x00" * 16))),
    ("fingerprint long", _raw(_tlv(FINGERPRINT, b"\x00" * 8))),
    ("fingerprint wrong", _raw(_tlv(FINGERPRINT, b"\x00" * 4))),
    ("xor address short", _raw(_tlv(XOR_MAPPED_ADDRESS, b"\x00\x01"))),
    ("xor address family 3", _raw(_tlv(XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x00" + b"\x00" * 4))),
    ("xor ipv4 long", _raw(_tlv(XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x00" + b"\x00" * 16))),
    ("xor ipv6 short", _raw(_tlv(XOR_MAPPED_ADDRESS, b"\x00\x02\x00\x00" + b"\x00" * 4))),
    ("username not utf-8", _raw(_tlv(USERNAME, b"\xff\xfe"))),
    ("username too long", _raw(_tlv(USERNAME, b"a" * 516))),
    ("software not utf-8", _raw(_tlv(SOFTWARE, b"\xc3"))),
    ("error code short", _raw(_tlv(ERROR_CODE, b"\x00\x00\x04"))),
    ("error class 2", _raw(_tlv(ERROR_CODE, b"\x00\x00\x02\x00"))),
    ("error class 7", _raw(_tlv(ERROR_CODE, b"\x00\x00\x07\x00"))),
    ("error number 100", _raw(_tlv(ERROR_CODE, b"\x00\x00\x04\x64"))),
    ("error reserved bits", _raw(_tlv(ERROR_CODE, b"\x00\x01\x04\x01"))),
    ("unknown-attributes odd", _raw(_tlv(UNKNOWN_ATTRIBUTES, b"\x00\x01\x00"))),
]


def _after_fingerprint() -> bytes:
    data = encode(StunMessage(BINDING, StunClass.REQUEST, TID), fingerprint=True)
    return _with_len(data + _tlv(0x8123, b""))


MALFORMED.append(("attribute after fingerprint", _after_fingerprint()))


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_raises(name: str, data: bytes) -> None:
    with pytest.raises(StunError):
        parse(data)


@pytest.mark.parametrize(
    "message",
    [
        StunMessage(BINDING, StunClass.REQUEST, b"short"),
        StunMessage(0x1000, StunClass.REQUEST, TID),
        StunMessage(
            BINDING, StunClass.SUCCESS, TID, (XorMappedAddress(ipaddress.ip_address("::1"), 70000),)
        ),
        StunMessage(BINDING, StunClass.ERROR, TID, (ErrorCode(200),)),
        StunMessage(BINDING, StunClass.ERROR, TID, (ErrorCode(700),)),
        StunMessage(BINDING, StunClass.REQUEST, TID, (Priority(2**32),)),
        StunMessage(BINDING, StunClass.REQUEST, TID, (IceControlling(-1),)),
        StunMessage(BINDING, StunClass.REQUEST, TID, (Username("x" * 513),)),
        StunMessage(
            BINDING, StunClass.REQUEST, TID, (UnknownAttribute(MESSAGE_INTEGRITY, b"x" * 20),)
        ),
        StunMessage(BINDING, StunClass.REQUEST, TID, (UnknownAttribute(FINGERPRINT, b"x" * 4),)),
        StunMessage(BINDING, StunClass.REQUEST, TID, (UnknownAttribute(0x8123, b"x" * 70000),)),
    ],
)
def test_unencodable_raises(message: StunMessage) -> None:
    with pytest.raises(StunError):
        encode(message)


def test_pad_must_be_one_byte() -> None:
    with pytest.raises(StunError):
        encode(StunMessage(BINDING, StunClass.REQUEST, TID), pad=b"")


# --------------------------------------------------------------------------- properties

_KNOWN_TYPES = {
    XOR_MAPPED_ADDRESS,
    USERNAME,
    MESSAGE_INTEGRITY,
    ERROR_CODE,
    UNKNOWN_ATTRIBUTES,
    SOFTWARE,
    FINGERPRINT,
    PRIORITY,
    USE_CANDIDATE,
    ICE_CONTROLLED,
    0x802A,
}

_text = st.text(max_size=40)  # no surrogates: every value is valid UTF-8
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)

_attribute: st.SearchStrategy[Attribute] = st.one_of(
    st.builds(
        XorMappedAddress,
        st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
        st.integers(0, 65535),
    ),
    st.builds(Username, _text),
    st.builds(Software, _text),
    st.builds(ErrorCode, st.integers(300, 699), _text),
    st.builds(UnknownAttributes, st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple)),
    st.builds(Priority, _u32),
    st.just(UseCandidate()),
    st.builds(IceControlled, _u64),
    st.builds(IceControlling, _u64),
    st.builds(
        UnknownAttribute,
        st.integers(0, 0xFFFF).filter(lambda t: t not in _KNOWN_TYPES),
        st.binary(max_size=24),
    ),
)


@given(
    method=st.integers(0, 0xFFF),
    cls=st.sampled_from(StunClass),
    tid=st.binary(min_size=12, max_size=12),
    attributes=st.lists(_attribute, max_size=8).map(tuple),
    key=st.one_of(st.none(), st.text(max_size=20)),
    fingerprint=st.booleans(),
    pad=st.binary(min_size=1, max_size=1),
)
def test_round_trip(
    method: int,
    cls: StunClass,
    tid: bytes,
    attributes: tuple[Attribute, ...],
    key: str | None,
    fingerprint: bool,
    pad: bytes,
) -> None:
    msg = StunMessage(method, cls, tid, attributes)
    data = encode(msg, key=key, fingerprint=fingerprint, pad=pad)
    assert is_stun(data) is (method < 0x100)  # higher method bits reach the first byte
    parsed = parse(data)
    assert parsed.message == msg
    assert parsed.fingerprint is fingerprint
    if key is not None:
        assert parsed.check_integrity(key)
        assert not parsed.check_integrity(key + "x")
    else:
        assert parsed.integrity is None
    assert encode(parsed.message, key=key, fingerprint=fingerprint, pad=pad) == data


@given(st.binary(max_size=200))
def test_parse_random_bytes_only_stun_error(data: bytes) -> None:
    with contextlib.suppress(StunError):
        parse(data)


@given(st.integers(0, len(REQUEST) - 1), st.integers(1, 255))
def test_parse_mutated_request_refused(index: int, xor: int) -> None:
    damaged = bytearray(REQUEST)
    damaged[index] ^= xor
    assert _refused(bytes(damaged))
