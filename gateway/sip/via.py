"""The Via header field: model, parser and a one-pass check (RFC 3261 sections 20.42, 25.1).

Every request carries one Via per hop, so a hostile peer can send dozens; the
parser checks all of them and parses only the top one (:attr:`Message.top_via`):
the common shapes are matched by one compiled regular expression, never walked
character by character in Python.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from gateway.sip.headers import ascii_int
from gateway.sip.uri import (
    HOSTNAME_PATTERN,
    TOKEN_CHARS,
    UriError,
    find_param,
    is_token,
    parse_host,
    split_outside_quotes,
    split_quoted,
)

_VIA_SENT_BY_RE = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.+)$", re.I)


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
        return ascii_int(v, 5) if v else None

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

    The common shapes (see ``_VIA_FAST_RE``) are taken apart by two regular
    expressions, parameters by one ``findall``; the rest by the general path.
    """
    text = value.strip()
    fast = _VIA_FAST_RE.fullmatch(text)
    if fast:
        port = fast.group("port")
        found = _VIA_PARAM_RE.findall(text, fast.start("params"))
        return Via(fast.group("transport").upper(), fast.group("host"),
                   int(port) if port else None,
                   tuple((name, v if eq else None) for name, eq, v in found))  # fmt: skip
    return _parse_via_general(text)


def _parse_via_general(text: str) -> Via:
    """parse_via for any shape (``text`` stripped): IPv6, LWS around ':', odd params."""
    m = _VIA_SENT_BY_RE.match(text)
    if not m:
        raise UriError("bad Via")
    transport, rest = m.group(1).upper(), m.group(2)
    parts = split_outside_quotes(rest, ";")
    sent_by = _COLON_LWS_RE.sub(":", parts[0].strip())
    if _SPACE_RE.search(sent_by):
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
_SPACE_RE = re.compile(r"\s")

# A via-parm in its common shapes, checked in one C pass: sent-by a hostname or an
# IPv4 address with an optional port, parameters token or token=token /
# quoted-string. Only a subset of what parse_via accepts (anything it matches,
# parse_via parses); values it does not match (an IPv6 sent-by or received, say)
# go to parse_via, which accepts or names the error.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_TOKEN = rf"[{TOKEN_CHARS}]+"
_QUOTED = r'"(?>[^"\\]*)(?>(?:\\.(?>[^"\\]*))*)"'
_VIA_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*(=)[ \t]*({_TOKEN}|{_QUOTED}))?", re.S
)
# Case-insensitive for "SIP" only: re.I would slow every character class fivefold.
# The parameters without groups (a group repeated per parameter costs twice as much).
_VIA_FAST_RE = re.compile(
    rf"(?i:SIP)[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(?P<transport>{_TOKEN})[ \t]+"
    rf"(?P<host>{HOSTNAME_PATTERN}|{_OCTET}(?:\.{_OCTET}){{3}})"
    rf"(?:[ \t]*:[ \t]*(?P<port>{_PORT}))?"
    # Atomic groups (one pass, no backtracking); not possessive quantifiers, which
    # match wrongly before Python 3.11.5 (CPython gh-106052; Debian 12 has 3.11.2).
    rf"(?P<params>(?>(?:(?>[ \t]*);(?>[ \t]*)(?>{_TOKEN})"
    rf"(?>(?:(?>[ \t]*)=(?>[ \t]*)(?>{_TOKEN}|{_QUOTED}))?))*))",
    re.S,
)


def check_via(value: str) -> None:
    """Raise UriError unless ``value`` is a via-parm (section 25.1), as
    :func:`parse_via` would, without building a Via when its shape is common."""
    if not _VIA_FAST_RE.fullmatch(value.strip()):
        parse_via(value)


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
