"""SDES key parameters of ``a=crypto`` (RFC 4568 section 9.1), safe to log, and which
offered line is usable (:func:`usable_crypto`, :func:`choose_crypto`).

The base64 key||salt of an ``inline:`` key parameter is a secret: :class:`KeyParam`
and :class:`Crypto` never show it in ``repr``/``str``, and :func:`redact_attribute`
masks it in any attribute value (:func:`redact_sdp_text` in raw SDP text).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

# The SRTP crypto suites SDES may negotiate, in our order of preference (the one
# Meta offers first), with the master key and master salt lengths in octets:
# RFC 4568 section 6.2, RFC 7714 section 12. The one table: negotiation checks
# key lengths by it, the SRTP layer (gateway.media.srtp) maps each to libsrtp.
SUITE_LENGTHS: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14),
    "AES_CM_128_HMAC_SHA1_32": (16, 14),
    "AEAD_AES_128_GCM": (16, 12),
    "AEAD_AES_256_GCM": (32, 12),
}

SUITE_PREFERENCE = tuple(SUITE_LENGTHS)
# Master key || master salt, in bytes.
SUITE_KEY_LENGTHS = {suite: key + salt for suite, (key, salt) in SUITE_LENGTHS.items()}
# Session parameters we can honour (RFC 4568 section 6.3): a line with any other is
# not acceptable (section 6.3: "MUST be rejected" when not supported). WSH is a hint;
# FEC_ORDER only matters with FEC, which we do not use.
_SESSION_PARAM_PREFIXES = ("WSH=", "FEC_ORDER=")

B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 section 9 token
_TAG_RE = re.compile(r"[0-9]{1,9}")  # tag = 1*9DIGIT
_LIFETIME_RE = re.compile(r"(?:2\^)?[0-9]{1,20}")
_MKI_RE = re.compile(r"[0-9]{1,20}:[0-9]{1,3}")
# A key-param's "<method>:" and the key-info up to "|" (lifetime, MKI) or ";" (next key).
_KEY_INFO_RE = re.compile(r"(^|[\s;])([^\s;:|]+:)[^|;\s]*")
_SDP_SECRET_LINE_RE = re.compile(r"^(a=crypto:|a=key-mgmt:|a=ice-pwd:|k=)([^\r\n]*)", re.M | re.I)


@dataclass(frozen=True, repr=False)
class KeyParam:
    """One ``inline:<key||salt>[|<lifetime>][|<mki>:<length>]`` (RFC 4568 section 9.1).

    ``key_salt`` is the base64 text of a secret: it never appears in ``repr``/``str``.
    """

    method: str
    key_salt: str
    lifetime: str | None = None
    mki: str | None = None

    def key_bytes(self) -> bytes:
        """The master key || master salt; raises ValueError if it is not base64."""
        text = self.key_salt + "=" * (-len(self.key_salt) % 4)  # be liberal: padding optional
        if not B64_RE.fullmatch(text):
            raise ValueError("crypto key is not base64")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise ValueError("crypto key is not base64") from exc

    def to_text(self) -> str:
        parts = [f"{self.method}:{self.key_salt}"]
        parts += [p for p in (self.lifetime, self.mki) if p is not None]
        return "|".join(parts)

    def __repr__(self) -> str:
        extra = "".join(f"|{p}" for p in (self.lifetime, self.mki) if p is not None)
        return f"KeyParam({self.method}:***{extra})"


@dataclass(frozen=True, repr=False)
class Crypto:
    """``a=crypto:<tag> <suite> <key-params> [<session-params>]`` (RFC 4568 section 9.1)."""

    tag: int
    suite: str
    key_params: tuple[KeyParam, ...]
    session_params: tuple[str, ...] = ()

    def to_value(self) -> str:
        """The attribute value, key included: for the wire only, never for logs."""
        text = f"{self.tag} {self.suite} " + ";".join(k.to_text() for k in self.key_params)
        return " ".join([text, *self.session_params])

    def __repr__(self) -> str:
        return f"Crypto({redact_attribute('crypto', self.to_value())})"


def parse_crypto(value: str) -> Crypto:
    """Parse an ``a=crypto`` value; raise ValueError on a malformed one."""
    parts = value.split()
    if len(parts) < 3:
        raise ValueError("crypto: expected <tag> <suite> <key-params>")
    if not _TAG_RE.fullmatch(parts[0]):
        raise ValueError("crypto: bad tag")
    if not TOKEN_RE.fullmatch(parts[1]):
        raise ValueError("crypto: bad suite")
    keys: list[KeyParam] = []
    for item in parts[2].split(";"):
        method, sep, info = item.partition(":")
        if not sep or not TOKEN_RE.fullmatch(method) or not info:
            raise ValueError("crypto: bad key-param")
        fields = info.split("|")
        key, lifetime, mki = fields[0], None, None
        if method.lower() == "inline":
            if len(fields) > 3 or not B64_RE.fullmatch(key):
                raise ValueError("crypto: bad inline key-info")
            for extra in fields[1:]:
                if _MKI_RE.fullmatch(extra) and mki is None:
                    mki = extra
                elif _LIFETIME_RE.fullmatch(extra) and lifetime is None and mki is None:
                    lifetime = extra
                else:
                    raise ValueError("crypto: bad lifetime or MKI")
        else:
            key = info  # an unknown key method: kept opaque (and still masked)
        keys.append(KeyParam(method, key, lifetime, mki))
    return Crypto(int(parts[0]), parts[1], tuple(keys), tuple(parts[3:]))


def redact_attribute(name: str, value: str | None) -> str | None:
    """The value of an attribute as it may be logged: SDES/MIKEY keys and the ICE
    password masked."""
    if value is None:
        return None
    lowered = name.lower()
    if lowered == "crypto":
        return _KEY_INFO_RE.sub(r"\1\2***", value)
    if lowered in ("key-mgmt", "ice-pwd"):  # MIKEY data carries keys (RFC 4567); the
        return "***"  # ICE password keys STUN's MESSAGE-INTEGRITY (RFC 8445 7.2.2)
    return value


def redact_sdp_text(text: str) -> str:
    """Raw SDP text as it may be logged: crypto keys, key-mgmt, ice-pwd and k= lines
    masked."""

    def mask(match: re.Match[str]) -> str:
        kind = match.group(1).lower()
        if kind == "a=crypto:":
            return match.group(1) + _KEY_INFO_RE.sub(r"\1\2***", match.group(2))
        return match.group(1) + "***"

    return _SDP_SECRET_LINE_RE.sub(mask, text)


def usable_crypto(crypto: Crypto) -> tuple[str, bytes] | None:
    """(canonical suite, key||salt) of an acceptable crypto line, else None."""
    suite = crypto.suite.upper()  # ABNF literals are case-insensitive (RFC 5234 2.3)
    if suite not in SUITE_KEY_LENGTHS or len(crypto.key_params) != 1:
        return None  # an unknown suite, or several keys (which need MKIs)
    key = crypto.key_params[0]
    if key.method.lower() != "inline" or key.mki is not None:
        return None
    if any(not p.upper().startswith(_SESSION_PARAM_PREFIXES) for p in crypto.session_params):
        return None
    try:
        raw = key.key_bytes()
    except ValueError:
        return None
    return (suite, raw) if len(raw) == SUITE_KEY_LENGTHS[suite] else None


def choose_crypto(cryptos: Iterable[Crypto]) -> tuple[int, str, bytes] | None:
    """(tag, suite, key||salt) of the line to answer: the first of the most preferred
    usable suite (RFC 4568 section 7.1.1 lets the answerer pick); None if none is usable."""
    usable = []
    for crypto in cryptos:
        found = usable_crypto(crypto)
        if found is not None:
            usable.append((SUITE_PREFERENCE.index(found[0]), crypto.tag, found[0], found[1]))
    if not usable:
        return None
    _, tag, suite, key = min(usable, key=lambda u: u[0])  # first line of the best suite
    return tag, suite, key
