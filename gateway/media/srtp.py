"""SDES-keyed SRTP/SRTCP (RFC 3711, RFC 4568 keying, RFC 7714 AES-GCM) via pylibsrtp.

Suites, by the names used in ``a=crypto`` lines, with master key + salt sizes
(the table the code uses is :data:`gateway.sdp.crypto.SUITE_LENGTHS`):

==========================  =====  ======  =========================
suite                       key    salt    pylibsrtp profile
==========================  =====  ======  =========================
AES_CM_128_HMAC_SHA1_80     16     14      SRTP_PROFILE_AES128_CM_SHA1_80
AES_CM_128_HMAC_SHA1_32     16     14      SRTP_PROFILE_AES128_CM_SHA1_32
AEAD_AES_128_GCM            16     12      SRTP_PROFILE_AEAD_AES_128_GCM
AEAD_AES_256_GCM            32     12      SRTP_PROFILE_AEAD_AES_256_GCM
==========================  =====  ======  =========================

Not supported (pylibsrtp 1.0 exposes no profile for them, although libsrtp
has the ciphers): AES_192_CM_HMAC_SHA1_80/32 and AES_256_CM_HMAC_SHA1_80/32
(RFC 6188), F8_128_HMAC_SHA1_80 (RFC 4568), the NULL-cipher suites, and MKI
(RFC 4568 6.1 ``|mki:length``; one key per direction is all SDES peers use).
For AES_CM_128_HMAC_SHA1_32 libsrtp applies the 32-bit tag to SRTP only and
an 80-bit tag to SRTCP, as RFC 4568 6.2.2 requires.

One :class:`SrtpContext` per call leg: an outbound session keyed with our
material (the key we put in our ``a=crypto``) for any SSRC we send, and an
inbound session keyed with the peer's for any SSRC it sends.  libsrtp only
creates state for a new inbound SSRC after a packet from it authenticates,
so spoofed SSRCs cost nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable
from typing import NamedTuple, Protocol

import pylibsrtp

from gateway.sdp.crypto import SUITE_LENGTHS

__all__ = [
    "SUITES",
    "SrtpAuthError",
    "SrtpContext",
    "SrtpError",
    "SrtpFactory",
    "SrtpKeyError",
    "SrtpSession",
    "SuiteInfo",
    "decode_inline",
    "encode_inline",
    "material_length",
    "new_key_material",
]


class SuiteInfo(NamedTuple):
    profile: int
    key_length: int
    salt_length: int

    @property
    def material_length(self) -> int:
        return self.key_length + self.salt_length


_P = pylibsrtp.Policy

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": _P.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": _P.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": _P.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": _P.SRTP_PROFILE_AEAD_AES_256_GCM,
}

#: Supported suites in our order of preference (the one Meta offers first); the
#: lengths are SDES's table (gateway.sdp.crypto.SUITE_LENGTHS), the profiles libsrtp's.
SUITES: dict[str, SuiteInfo] = {
    suite: SuiteInfo(_PROFILES[suite], key, salt) for suite, (key, salt) in SUITE_LENGTHS.items()
}

_LIFETIME = re.compile(r"(?:2\^\d{1,2}|\d{1,15})")
_MATERIAL_LENGTHS = frozenset(info.material_length for info in SUITES.values())


class SrtpError(Exception):
    """Base of SRTP errors."""


class SrtpKeyError(SrtpError, ValueError):
    """Unusable keying: unknown suite, bad ``inline:`` text, wrong length, MKI."""


class SrtpAuthError(SrtpError):
    """An SRTP/SRTCP packet was rejected: authentication failure, replay, or
    not a packet at all.  ``replay`` tells replays apart."""

    def __init__(self, message: str, replay: bool = False) -> None:
        super().__init__(message)
        self.replay = replay


def _suite(suite: str) -> SuiteInfo:
    try:
        return SUITES[suite]
    except KeyError:
        raise SrtpKeyError(f"unsupported SRTP crypto suite {suite!r}") from None


def material_length(suite: str) -> int:
    """Master key + master salt length of ``suite`` in octets."""
    return _suite(suite).material_length


def new_key_material(suite: str) -> bytes:
    """Fresh random master key || master salt for ``suite``."""
    return secrets.token_bytes(_suite(suite).material_length)


def _check_length(material: bytes, suite: str | None) -> None:
    if suite is not None:
        expected = material_length(suite)
        if len(material) != expected:
            raise SrtpKeyError(f"{suite} needs {expected} octets of key||salt, got {len(material)}")
    elif len(material) not in _MATERIAL_LENGTHS:
        raise SrtpKeyError(f"{len(material)} octets of key||salt fit no supported suite")


def encode_inline(material: bytes, suite: str | None = None) -> str:
    """``inline:<base64 key||salt>`` for an ``a=crypto`` line (RFC 4568 6.1).

    No lifetime and no MKI: we never rekey within a call.
    """
    _check_length(material, suite)
    return "inline:" + base64.b64encode(material).decode("ascii")


def decode_inline(text: str, suite: str | None = None) -> bytes:
    """Key || salt from an RFC 4568 key-params ``inline:KEY[|LIFETIME][|MKI:LEN]``.

    The lifetime (``2^31`` or decimal) is accepted and ignored.  An MKI or
    several key-params (``;``-separated, which need MKIs) raise
    :class:`SrtpKeyError`, as does a length that does not fit ``suite`` (or
    any supported suite when ``suite`` is None).
    """
    text = text.strip()
    if ";" in text:
        raise SrtpKeyError("several SDES keys (key-params separated by ';') need MKI, unsupported")
    method, sep, info = text.partition(":")
    if not sep or method.lower() != "inline":
        raise SrtpKeyError(f"key-params must be 'inline:...', got {text[:20]!r}")
    fields = info.split("|")
    if len(fields) > 3:
        raise SrtpKeyError("too many '|' fields in inline key")
    for extra in fields[1:]:
        if ":" in extra:
            raise SrtpKeyError(f"MKI ({extra!r}) is not supported; offer keys without MKI")
        if not _LIFETIME.fullmatch(extra):
            raise SrtpKeyError(f"bad SRTP key lifetime {extra!r}")
    key = fields[0]
    key += "=" * (-len(key) % 4)  # tolerate peers that drop base64 padding
    try:
        material = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SrtpKeyError(f"inline key is not base64: {exc}") from None
    _check_length(material, suite)
    return material


def _auth_error(exc: Exception) -> SrtpAuthError:
    message = str(exc)
    return SrtpAuthError(message, replay=message.startswith("replay check failed"))


class SrtpSession(Protocol):
    """What a leg uses of its SRTP: :class:`SrtpContext`, or the native engine's
    session (gateway.media._native.Srtp) on the system's libsrtp2."""

    suite: str
    auth_failures: int
    replays: int

    def protect(self, rtp: bytes) -> bytes: ...
    def protect_rtcp(self, rtcp: bytes) -> bytes: ...
    def unprotect(self, srtp: bytes) -> bytes: ...
    def unprotect_rtcp(self, srtcp: bytes) -> bytes: ...


#: Makes a leg's session: (suite, our key||salt, the peer's key||salt).
SrtpFactory = Callable[[str, bytes, bytes], SrtpSession]


class SrtpContext:
    """SRTP/SRTCP for one call leg (both directions, any SSRC).

    ``protect``/``protect_rtcp`` raise :class:`SrtpError` only on misuse (a
    repeated sequence number, an oversize packet).  ``unprotect``/
    ``unprotect_rtcp`` raise :class:`SrtpAuthError` and nothing else for
    any packet that does not authenticate, is a replay, or is malformed;
    ``auth_failures`` and ``replays`` count them.
    """

    __slots__ = ("_rx", "_tx", "auth_failures", "replays", "suite")

    def __init__(self, suite: str, local_material: bytes, remote_material: bytes) -> None:
        info = _suite(suite)
        _check_length(local_material, suite)
        _check_length(remote_material, suite)
        self.suite = suite
        self.auth_failures = 0
        self.replays = 0
        tx_policy = pylibsrtp.Policy(
            key=local_material,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=info.profile,
        )
        rx_policy = pylibsrtp.Policy(
            key=remote_material,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=info.profile,
        )
        self._tx = pylibsrtp.Session(tx_policy)
        self._rx = pylibsrtp.Session(rx_policy)

    def protect(self, rtp: bytes) -> bytes:
        try:
            return self._tx.protect(rtp)
        except (pylibsrtp.Error, ValueError, TypeError, IndexError) as exc:
            raise SrtpError(f"SRTP protect failed: {exc}") from None

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        try:
            return self._tx.protect_rtcp(rtcp)
        except (pylibsrtp.Error, ValueError, TypeError, IndexError) as exc:
            raise SrtpError(f"SRTCP protect failed: {exc}") from None

    def unprotect(self, srtp: bytes) -> bytes:
        try:
            return self._rx.unprotect(srtp)
        except (pylibsrtp.Error, ValueError, TypeError, IndexError) as exc:
            error = _auth_error(exc)
        self._count(error)
        raise error

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except (pylibsrtp.Error, ValueError, TypeError, IndexError) as exc:
            error = _auth_error(exc)
        self._count(error)
        raise error

    def _count(self, error: SrtpAuthError) -> None:
        if error.replay:
            self.replays += 1
        else:
            self.auth_failures += 1
