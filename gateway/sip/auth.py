"""SIP digest authentication, sans-IO (RFC 3261 section 22, RFC 7616, RFC 8760).

No sockets, no clock: ``now`` is wall-clock seconds passed in by the caller
(``time.time()``, comparable across the gateway instances sharing a nonce secret).

Client (Meta answers our INVITE with 407): ``parse_challenge`` each Proxy-Authenticate,
``select_challenge``, ask a per-request ``ChallengeTracker`` whether to answer, then send
``answer_challenge(...).to_header()`` as Proxy-Authorization with CSeq + 1.
Server (we 401 Meta's INVITE): ``DigestServer.challenge`` -> WWW-Authenticate fields,
then ``DigestServer.verify(parse_credentials(value), ...)``. The caller looks the password
up from ``Credentials.username`` (Meta sends the number without '+').
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import string
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote

# Strongest first; the order select_challenge() prefers.
ALGORITHMS = ("SHA-512-256", "SHA-512-256-sess", "SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_CANONICAL: dict[str, str] = {a.upper(): a for a in ALGORITHMS}
_HASHLIB: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}

# RFC 3261 22.2 / 22.3: challenge status -> header carrying the challenge / the answer.
CHALLENGE_HEADER: dict[int, str] = {401: "WWW-Authenticate", 407: "Proxy-Authenticate"}
CREDENTIALS_HEADER: dict[int, str] = {401: "Authorization", 407: "Proxy-Authorization"}


class AuthParseError(ValueError):
    """A WWW-/Proxy-Authenticate or (Proxy-)Authorization value is not valid Digest."""


class UnsupportedChallenge(ValueError):
    """A challenge (or response) uses an algorithm or qop this module cannot handle."""


class UnsupportedAlgorithm(UnsupportedChallenge):
    """Unknown digest algorithm, or SHA-512-256 missing from the local OpenSSL."""


# ---------------------------------------------------------------------------
# Hashing (RFC 7616 section 3.4)


def _algorithm(name: str) -> tuple[str, bool]:
    """Return (hashlib name, is_sess) for an algorithm name, case-insensitively."""
    canon = _CANONICAL.get(name.upper())
    if canon is None:
        raise UnsupportedAlgorithm(f"unsupported digest algorithm {name[:40]!r}")
    base = canon.removesuffix("-sess")
    return _HASHLIB[base], canon != base


def _h(hash_name: str, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        # MD5 is mandated by the protocol, not used as a security primitive of ours.
        return hashlib.new(hash_name, raw, usedforsecurity=False).hexdigest()
    except ValueError as exc:  # e.g. OpenSSL built without SHA-512/256
        msg = f"hash {hash_name!r} is not available from this Python/OpenSSL build"
        raise UnsupportedAlgorithm(msg) from exc


def compute_userhash(algorithm: str, username: str, realm: str) -> str:
    """``H(username ":" realm)`` as sent in ``username`` when userhash=true (RFC 7616 3.4.4)."""
    return _h(_algorithm(algorithm)[0], f"{username}:{realm}")


def compute_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: int | None,
    cnonce: str | None,
    qop: str | None,
    body: bytes = b"",
) -> str:
    """The ``response`` value of RFC 7616 section 3.4.1 (strings hashed as UTF-8).

    ``username`` is the real (unhashed) user name even when userhash is used.
    ``qop`` None selects the legacy RFC 2069 form ``H(HA1:nonce:HA2)``; ``body`` is
    only hashed for qop=auth-int (RFC 3261 22.4: SIP otherwise ignores the body).
    ``nc`` is hashed as 8 lowercase hex digits. Raises UnsupportedAlgorithm /
    UnsupportedChallenge for unknown algorithm / qop, ValueError for missing nc/cnonce.
    """
    hname, sess = _algorithm(algorithm)
    ha1 = _h(hname, f"{username}:{realm}:{password}")
    if sess:  # RFC 7616 3.4.2: HA1 = H(H(user:realm:pw):nonce:cnonce)
        if cnonce is None:
            raise ValueError("-sess algorithms need a cnonce")
        ha1 = _h(hname, f"{ha1}:{nonce}:{cnonce}")
    mode = qop.lower() if qop is not None else None
    if mode == "auth-int":  # RFC 7616 3.4.3: A2 = method:uri:H(entity-body)
        ha2 = _h(hname, f"{method}:{uri}:{_h(hname, body)}")
    elif mode in (None, "auth"):
        ha2 = _h(hname, f"{method}:{uri}")
    else:
        raise UnsupportedChallenge(f"unsupported qop {mode[:40]!r}")
    if qop is None:  # RFC 2617 3.2.2.1 backwards compatibility with RFC 2069
        return _h(hname, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop requires nc and cnonce")
    return _h(hname, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


# ---------------------------------------------------------------------------
# Header syntax (RFC 7235 section 2.1, RFC 7230 section 3.2.6)

_WS = " \t\r\n"
_TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
_TOKEN_END = _WS + ',"'
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


def _is_ctl(c: str) -> bool:
    return (c < " " and c != "\t") or c == "\x7f"


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; return (value, next index)."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":  # quoted-pair
            i += 1
            if i >= len(s):
                break
            c = s[i]
        if _is_ctl(c):
            raise AuthParseError("control character in quoted-string")
        out.append(c)
        i += 1
    raise AuthParseError("unterminated quoted-string")


def _parse_digest(value: str) -> dict[str, str]:
    """Parse ``Digest name=value, ...`` into {lowercased name: unquoted value}."""
    s = value.strip(_WS)
    i = _skip(s, 0, _TCHAR)  # scheme token
    if s[:i].lower() != "digest":
        raise AuthParseError("authentication scheme is not Digest")
    if i < len(s) and s[i] not in _WS:
        raise AuthParseError("malformed authentication scheme")
    params: dict[str, str] = {}
    while True:
        i = _skip(s, i, _WS + ",")  # tolerate empty list elements (RFC 7230 7)
        if i >= len(s):
            return params
        start = i
        i = _skip(s, i, _TCHAR)
        if i == start:
            raise AuthParseError(f"expected a parameter name at offset {i}")
        name = s[start:i].lower()
        i = _skip(s, i, _WS)
        if i >= len(s) or s[i] != "=":
            raise AuthParseError(f"expected '=' after parameter {name!r}")
        i = _skip(s, i + 1, _WS)
        if i < len(s) and s[i] == '"':
            val, i = _read_quoted(s, i)
        else:  # token; lenient: anything up to whitespace, comma or quote
            start = i
            while i < len(s) and s[i] not in _TOKEN_END and not _is_ctl(s[i]):
                i += 1
            if i == start:
                raise AuthParseError(f"empty value for parameter {name!r}")
            val = s[start:i]
        if name in params:  # RFC 7235 2.1: each parameter name only once
            raise AuthParseError(f"duplicate parameter {name!r}")
        params[name] = val
        i = _skip(s, i, _WS)
        if i < len(s) and s[i] != ",":
            raise AuthParseError(f"expected ',' at offset {i}")


def _quote(v: str) -> str:
    if any(_is_ctl(c) for c in v):
        raise ValueError("control character in a header parameter value")
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token(v: str) -> str:
    """Emit ``v`` bare if it is a token, else as a quoted-string."""
    return v if v and all(c in _TCHAR for c in v) else _quote(v)


def _join(parts: list[tuple[str, str | None]], extra: dict[str, str]) -> str:
    if any(not k or any(c not in _TCHAR for c in k) for k in extra):
        raise ValueError("extra parameter names must be tokens")
    items = [f"{k}={v}" for k, v in parts if v is not None]
    return "Digest " + ", ".join(items + [f"{k}={_quote(v)}" for k, v in extra.items()])


def _q(v: str | None) -> str | None:
    return None if v is None else _quote(v)


def _required(p: dict[str, str], name: str) -> str:
    if name not in p:
        raise AuthParseError(f"missing required parameter {name!r}")
    return p.pop(name)


def _canon_alg(p: dict[str, str]) -> str:
    alg = p.pop("algorithm", "MD5")  # RFC 7616 3.3: absent means MD5
    return _CANONICAL.get(alg.upper(), alg)


def _flag(p: dict[str, str], name: str) -> bool:
    return p.pop(name, "false").lower() == "true"


# ---------------------------------------------------------------------------
# Challenge / Credentials


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed Digest challenge (WWW-Authenticate / Proxy-Authenticate value).

    ``algorithm`` is canonically spelled when known (``"SHA-256"``), else kept as
    sent; ``qop`` holds the lowercased options (empty: legacy RFC 2069 server);
    ``params`` holds unknown parameters (lowercased names).
    """

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: tuple[str, ...] = ()
    charset: str | None = None
    userhash: bool = False
    params: dict[str, str] = field(default_factory=dict, hash=False)

    def to_header(self) -> str:
        """Serialise as a header value: realm, nonce, opaque, algorithm, qop, then the rest."""
        return _join(
            [
                ("realm", _quote(self.realm)),
                ("nonce", _quote(self.nonce)),
                ("opaque", _q(self.opaque)),
                ("algorithm", _token(self.algorithm)),
                ("qop", _quote(",".join(self.qop)) if self.qop else None),
                ("stale", "true" if self.stale else None),
                ("domain", _quote(" ".join(self.domain)) if self.domain else None),
                ("charset", None if self.charset is None else _token(self.charset)),
                ("userhash", "true" if self.userhash else None),
            ],
            self.params,
        )


def parse_challenge(value: str) -> Challenge:
    """Parse one Digest challenge; raise AuthParseError if not Digest or malformed.

    SIP never comma-combines WWW-/Proxy-Authenticate fields (RFC 3261 7.3.1), so
    a value holds exactly one challenge.
    """
    p = _parse_digest(value)
    realm, nonce = _required(p, "realm"), _required(p, "nonce")
    qop = tuple(q.lower() for q in re.split(r"[\s,]+", p.pop("qop", "")) if q)
    return Challenge(
        realm,
        nonce,
        opaque=p.pop("opaque", None),
        algorithm=_canon_alg(p),
        qop=qop,
        stale=_flag(p, "stale"),
        domain=tuple(p.pop("domain", "").split()),
        charset=p.pop("charset", None),
        userhash=_flag(p, "userhash"),
        params=p,
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    """Parsed Digest credentials ((Proxy-)Authorization value). Holds no password.

    ``qop`` is kept as sent (it is hashed verbatim); ``nc`` is the nonce count as
    an int; when ``userhash`` is true ``username`` is the hex userhash.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None
    userhash: bool = False
    params: dict[str, str] = field(default_factory=dict, hash=False)

    def to_header(self) -> str:
        """Serialise as a header value; algorithm, qop and nc unquoted (RFC 7616 3.4)."""
        if self.nc is not None and not 0 <= self.nc <= 0xFFFFFFFF:
            raise ValueError("nc out of range")
        return _join(
            [
                ("username", _quote(self.username)),
                ("realm", _quote(self.realm)),
                ("nonce", _quote(self.nonce)),
                ("uri", _quote(self.uri)),
                ("response", _quote(self.response)),
                ("algorithm", _token(self.algorithm)),
                ("cnonce", _q(self.cnonce)),
                ("opaque", _q(self.opaque)),
                ("qop", None if self.qop is None else _token(self.qop)),
                ("nc", None if self.nc is None else f"{self.nc:08x}"),
                ("userhash", "true" if self.userhash else None),
            ],
            self.params,
        )


def _decode_ext_value(v: str) -> str:
    """Decode an RFC 8187 ext-value such as ``UTF-8''J%C3%A4s%C3%B8n`` (RFC 7616 3.4.4)."""
    parts = v.split("'", 2)
    if len(parts) != 3 or parts[0].lower() not in ("utf-8", "iso-8859-1"):
        raise AuthParseError("malformed username*")
    try:
        return unquote(parts[2], encoding=parts[0], errors="strict")
    except UnicodeDecodeError as exc:
        raise AuthParseError("malformed username*") from exc


def parse_credentials(value: str) -> Credentials:
    """Parse Digest credentials; raise AuthParseError if not Digest or malformed.

    Requires username (or ``username*``), realm, nonce, uri and response; a qop
    requires nc (exactly 8 hex digits) and cnonce (RFC 7616 3.4).
    """
    p = _parse_digest(value)
    username = p.pop("username", None)
    if "username*" in p:
        if username is not None:
            raise AuthParseError("both username and username* present")
        username = _decode_ext_value(p.pop("username*"))
    if username is None:
        raise AuthParseError("missing required parameter 'username'")
    nc: int | None = None
    if "nc" in p:
        raw_nc = p.pop("nc")
        if not _NC_RE.fullmatch(raw_nc):
            raise AuthParseError("nc must be 8 hex digits")
        nc = int(raw_nc, 16)
    realm, nonce = _required(p, "realm"), _required(p, "nonce")
    uri, response = _required(p, "uri"), _required(p, "response")
    creds = Credentials(
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm=_canon_alg(p),
        cnonce=p.pop("cnonce", None),
        opaque=p.pop("opaque", None),
        qop=p.pop("qop", None),
        nc=nc,
        userhash=_flag(p, "userhash"),
        params=p,
    )
    if creds.qop is not None and (creds.nc is None or creds.cnonce is None):
        raise AuthParseError("qop present without nc and cnonce")
    return creds


# ---------------------------------------------------------------------------
# Client side


def _strength(ch: Challenge) -> int | None:
    """Rank in ALGORITHMS (0 = strongest), None if algorithm or qop is unsupported."""
    if ch.qop and "auth" not in ch.qop and "auth-int" not in ch.qop:
        return None
    canon = _CANONICAL.get(ch.algorithm.upper())
    return None if canon is None else ALGORITHMS.index(canon)


def select_challenge(challenges: Sequence[Challenge], *, strongest: bool = True) -> Challenge:
    """Pick the challenge to answer among several (RFC 7616 3.7, RFC 8760 2.4).

    ``strongest=True``: SHA-512-256 > SHA-256 > MD5 (plain before -sess), ties go
    to the topmost. ``strongest=False``: the topmost supported one (RFC 8760 2.4
    wording). Raises UnsupportedChallenge when none is usable. Callers facing
    several realms should group by ``realm`` first and answer each.
    """
    usable = [(rank, i, c) for i, c in enumerate(challenges) if (rank := _strength(c)) is not None]
    if not usable:
        raise UnsupportedChallenge("no challenge with a supported algorithm and qop")
    return min(usable)[2] if strongest else usable[0][2]


def answer_challenge(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> Credentials:
    """Build the credentials answering ``challenge`` for a request.

    ``uri`` is the Request-URI of the retried request (RFC 3261 22.4). qop=auth is
    chosen when offered, auth-int only if auth is not (then ``body`` is hashed),
    neither for a legacy challenge without qop. Opaque and algorithm are echoed;
    with userhash=true the username is sent hashed. A random cnonce is generated
    when None. Raises UnsupportedAlgorithm / UnsupportedChallenge.
    """
    _, sess = _algorithm(challenge.algorithm)
    if "auth" in challenge.qop:
        qop: str | None = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise UnsupportedChallenge(f"no supported qop in {challenge.qop!r}")
    else:
        qop = None
    if qop is not None or sess:
        cnonce = cnonce if cnonce is not None else secrets.token_urlsafe(24)
    else:
        cnonce = None
    used_nc = nc if qop is not None else None
    response = compute_response(
        challenge.algorithm,
        username,
        challenge.realm,
        password,
        method,
        uri,
        challenge.nonce,
        used_nc,
        cnonce,
        qop,
        body,
    )
    if challenge.userhash:
        username = compute_userhash(challenge.algorithm, username, challenge.realm)
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce,
        opaque=challenge.opaque,
        qop=qop,
        nc=used_nc,
        userhash=challenge.userhash,
    )


class ChallengeTracker:
    """Retry policy helper for one request chain (RFC 3261 22.2/22.3).

    Call ``should_answer(challenge)`` for each 401/407 challenge received: True the
    first time a realm is seen (answer it, retry with CSeq+1); a later challenge
    for the same realm means our credentials were rejected and returns False,
    unless it has stale=true (RFC 7616 3.3: nonce expired, password was right),
    which is allowed ``max_stale_retries`` times.
    """

    def __init__(self, max_stale_retries: int = 1) -> None:
        self._max_stale = max_stale_retries
        self._stale_retries: dict[str, int] = {}

    def should_answer(self, challenge: Challenge) -> bool:
        """Record ``challenge`` and tell whether to answer it (False = auth failed)."""
        used = self._stale_retries.get(challenge.realm)
        if used is None:
            self._stale_retries[challenge.realm] = 0
            return True
        if challenge.stale and used < self._max_stale:
            self._stale_retries[challenge.realm] = used + 1
            return True
        return False


# ---------------------------------------------------------------------------
# Server side


class VerifyResult(enum.Enum):
    """Outcome of DigestServer.verify(); only OK authenticates the request."""

    OK = "ok"
    STALE = "stale"  # authentic nonce, right digest, but expired: re-challenge stale=true
    INVALID_NONCE = "invalid_nonce"  # not issued with our secret/realm, garbled, or future
    REPLAY = "replay"  # nc not above the highest seen for this nonce
    BAD_RESPONSE = "bad_response"  # wrong password or digest
    URI_MISMATCH = "uri_mismatch"
    REALM_MISMATCH = "realm_mismatch"
    OPAQUE_MISMATCH = "opaque_mismatch"  # opaque not echoed unchanged (RFC 7616 3.3)
    UNSUPPORTED = "unsupported"  # algorithm not offered, qop not auth (or missing)
    NO_PASSWORD = "no_password"  # caller found no password for the username


class _Seen(NamedTuple):
    issued: float
    nc: int


_NONCE_RAND = 12
_NONCE_LEN = 8 + _NONCE_RAND + 32  # issue time (ms) || random || HMAC-SHA256
_NONCE_RE = re.compile(rf"[A-Za-z0-9_-]{{{(_NONCE_LEN * 4 + 2) // 3}}}")  # unpadded base64url
_NONCE_TAG = b"wa-sip-gateway digest nonce v1\x00"


class DigestServer:
    """Issues Digest challenges and verifies credentials with stateless nonces.

    A nonce is base64url(issue-ms || random || HMAC-SHA256(secret, tag || issue-ms
    || random || realm)), so any instance sharing ``secret`` verifies it. ``now``
    must be wall-clock seconds shared by the cluster (``time.time()``).
    Replay detection (nc must increase per nonce) is per instance, in a map
    bounded by ``max_tracked_nonces``; nonce expiry bounds the cross-instance gap.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_ttl: float = 300.0,
        opaque: str | None = None,
        clock_skew: float = 30.0,
        max_tracked_nonces: int = 100_000,
    ) -> None:
        if len(secret) < 16 or not algorithms or nonce_ttl <= 0 or max_tracked_nonces < 1:
            raise ValueError("need a secret of 16+ bytes, an algorithm, positive ttl and cap")
        canon = []
        for alg in algorithms:
            hname, _ = _algorithm(alg)
            _h(hname, b"")  # fail now if the hash is missing (SHA-512-256 on old OpenSSL)
            canon.append(_CANONICAL[alg.upper()])
        self.realm = realm
        self.algorithms: tuple[str, ...] = tuple(canon)
        self.nonce_ttl = nonce_ttl
        self.opaque = opaque
        self.clock_skew = clock_skew
        self.max_tracked_nonces = max_tracked_nonces
        self._secret = secret
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._evicted_upto = float("-inf")  # newest issue time evicted for lack of room

    def __repr__(self) -> str:  # never shows the secret
        return f"DigestServer(realm={self.realm!r}, algorithms={self.algorithms!r})"

    def _mac(self, head: bytes) -> bytes:
        msg = _NONCE_TAG + head + self.realm.encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def make_nonce(self, now: float) -> str:
        """A fresh nonce issued at ``now``."""
        head = struct.pack(">q", round(now * 1000)) + secrets.token_bytes(_NONCE_RAND)
        return base64.urlsafe_b64encode(head + self._mac(head)).rstrip(b"=").decode("ascii")

    def nonce_issued_at(self, nonce: str) -> float | None:
        """Issue time of a nonce made with our secret and realm, else None."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return None  # non-canonical encoding (stray trailing bits)
        head, mac = raw[: 8 + _NONCE_RAND], raw[8 + _NONCE_RAND :]
        if not hmac.compare_digest(mac, self._mac(head)):
            return None
        issued_ms: int = struct.unpack(">q", head[:8])[0]
        return issued_ms / 1000.0

    def challenge(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per configured algorithm, preferred first (RFC 8760 2.4), qop=auth.

        Send each as its own WWW-Authenticate (401) or Proxy-Authenticate (407) field.
        """
        nonce = self.make_nonce(now)
        return [
            Challenge(self.realm, nonce, self.opaque, alg, qop=("auth",), stale=stale)
            for alg in self.algorithms
        ]

    def verify(
        self,
        credentials: Credentials,
        method: str,
        request_uri: str,
        password: str | None,
        now: float,
        *,
        username: str | None = None,
    ) -> VerifyResult:
        """Check credentials for a request; see VerifyResult for the outcomes.

        ``request_uri`` is the request's Request-URI, compared as a stripped string
        with ``credentials.uri`` (RFC 3261 22.4); a caller behind a proxy that
        rewrote it may pass the original URI instead. ``username`` is the real user
        name, needed only when ``credentials.userhash`` is true. Call once per new
        server transaction, never for retransmissions (they would be REPLAY); ACK
        and CANCEL are not challenged (RFC 3261 22.1).
        """
        c = credentials
        if c.realm != self.realm:
            return VerifyResult.REALM_MISMATCH
        algorithm = _CANONICAL.get(c.algorithm.upper())
        if algorithm not in self.algorithms or c.qop is None or c.qop.lower() != "auth":
            return VerifyResult.UNSUPPORTED
        if c.nc is None or c.cnonce is None or (c.userhash and username is None):
            return VerifyResult.UNSUPPORTED
        if c.uri.strip() != request_uri.strip():
            return VerifyResult.URI_MISMATCH
        if self.opaque is not None and c.opaque != self.opaque:
            return VerifyResult.OPAQUE_MISMATCH
        issued = self.nonce_issued_at(c.nonce)
        if issued is None or issued - now > self.clock_skew:
            return VerifyResult.INVALID_NONCE
        if password is None:
            return VerifyResult.NO_PASSWORD
        expected = compute_response(
            algorithm,
            username if c.userhash and username else c.username,
            c.realm,
            password,
            method,
            c.uri,
            c.nonce,
            c.nc,
            c.cnonce,
            c.qop,
        )
        if not hmac.compare_digest(expected.encode(), c.response.lower().encode("utf-8")):
            return VerifyResult.BAD_RESPONSE
        # RFC 7616 3.3: stale only once the digest is known to be right.
        if now - issued > self.nonce_ttl:
            return VerifyResult.STALE
        return self._check_replay(c.nonce, issued, c.nc, now)

    def _check_replay(self, nonce: str, issued: float, nc: int, now: float) -> VerifyResult:
        self._prune(now)
        seen = self._seen.get(nonce)
        if seen is None:
            if issued <= self._evicted_upto:
                # Possibly evicted while valid: its nc history is lost, so force a
                # fresh nonce rather than risk accepting a replay.
                return VerifyResult.STALE
            self._seen[nonce] = _Seen(issued, nc)
            while len(self._seen) > self.max_tracked_nonces:
                _, old = self._seen.popitem(last=False)
                self._evicted_upto = max(self._evicted_upto, old.issued)
            return VerifyResult.OK
        if nc <= seen.nc:
            return VerifyResult.REPLAY
        self._seen[nonce] = _Seen(issued, nc)  # keeps its place in insertion order
        return VerifyResult.OK

    def _prune(self, now: float) -> None:
        """Drop entries for nonces too old to be accepted (oldest-inserted first)."""
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if now - seen.issued <= self.nonce_ttl:
                return
            del self._seen[nonce]

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces currently in the replay table."""
        return len(self._seen)
