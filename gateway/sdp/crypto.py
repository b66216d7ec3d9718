"""SDES key parameters of ``a=crypto`` (RFC 4568 section 9.1), safe to log.

The base64 key||salt of an ``inline:`` key parameter is a secret: :class:`KeyParam`
and :class:`Crypto` never show it in ``repr``/``str``, and :func:`redact_attribute`
masks it in any attribute value (:func:`redact_sdp_text` in raw SDP text).
"""

from __future__ import annotations

import base64
import binascii
import re
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

B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 section 9 token
_TAG_RE = re.compile(r"[0-9]{1,9}")  # tag = 1*9DIGIT
_LIFETIME_RE = re.compile(r"(?:2\^)?[0-9]{1,20}")
_MKI_RE = re.compile(r"[0-9]{1,20}:[0-9]{1,3}")
# A key-param's "<method>:" and the key-info up to "|" (lifetime, MKI) or ";" (next key).
_KEY_INFO_RE = re.compile(r"(^|[\s;])([^\s;:|]+:)[^|;\s]*")
_SDP_SECRET_LINE_RE = re.compile(r"^(a=crypto:|a=key-mgmt:|k=)([^\r\n]*)", re.M | re.I)


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
    """The value of an attribute as it may be logged: SDES/MIKEY keys masked."""
    if value is None:
        return None
    lowered = name.lower()
    if lowered == "crypto":
        return _KEY_INFO_RE.sub(r"\1\2***", value)
    if lowered == "key-mgmt":  # RFC 4567: MIKEY data carries keys
        return "***"
    return value


def redact_sdp_text(text: str) -> str:
    """Raw SDP text as it may be logged: crypto keys, key-mgmt and k= lines masked."""

    def mask(match: re.Match[str]) -> str:
        kind = match.group(1).lower()
        if kind == "a=crypto:":
            return match.group(1) + _KEY_INFO_RE.sub(r"\1\2***", match.group(2))
        return match.group(1) + "***"

    return _SDP_SECRET_LINE_RE.sub(mask, text)
