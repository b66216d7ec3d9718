"""SIP URIs and addresses (RFC 3261 sections 19.1 and 25.1, 20.10 / 20.20 / 20.39).

Pure value types with parse and serialise. Nothing here touches the network.
The raw (still %-escaped) user part is kept so that a URI serialises exactly as
received; comparisons use the unescaped form (section 19.1.4).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

# RFC 3261 section 25.1 character classes.
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"  # inside [...] of a regular expression
TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+")
_TOKEN_FULL = re.compile(rf"^[{TOKEN_CHARS}]+$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+\-.]*$")
# user = 1*( unreserved / escaped / user-unreserved ); we accept ';' too since
# semiuri-style users must survive, but never whitespace, '<', '>', '"' or '@'.
_USER_RE = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]*$")
# hostname = *( domainlabel "." ) toplabel [ "." ]; toplabel starts with ALPHA.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_TOPLABEL = r"[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"(?:{_LABEL}\.)*{_TOPLABEL}\.?"
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_PARAM_CHARS_RE = re.compile(r"^[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*$")
_ESCAPE_BAD_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UriError(ValueError):
    """A URI or address that does not follow the RFC 3261 grammar."""


def is_token(value: str) -> bool:
    return bool(_TOKEN_FULL.fullmatch(value))  # fullmatch: '$' would allow a final '\n'


def _is_host(host: str) -> bool:
    """hostname / IPv4address (section 25.1); a dotted number must be a real IPv4."""
    if _IPV4_RE.fullmatch(host):
        return all(int(octet) <= 255 for octet in host.split("."))
    return bool(_HOSTNAME_RE.fullmatch(host))


def _check_escapes(value: str, what: str) -> None:
    if _ESCAPE_BAD_RE.search(value):
        raise UriError(f"bad %-escape in {what}")


def parse_host(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` where host may be a ``[v6]`` reference."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UriError("unterminated IPv6 reference")
        host = hostport[: end + 1]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise UriError("bad IPv6 address") from exc
        rest = hostport[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise UriError("junk after IPv6 reference")
        return host, _parse_port(rest[1:])
    host, sep, port = hostport.partition(":")
    if not _is_host(host):
        raise UriError("bad host")
    return host, (_parse_port(port) if sep else None)


_PORT_RE = re.compile(r"[0-9]{1,5}")  # ASCII digits: str.isdigit() also accepts "²"


def _parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 0 < int(text) < 65536:
        raise UriError("bad port")
    return int(text)


def _parse_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """``;a=b;c`` (text without the first ';') into ordered pairs."""
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        if not part:
            raise UriError(f"empty {what} parameter")
        name, eq, value = part.partition("=")
        if not name or not _PARAM_CHARS_RE.match(name) or not _PARAM_CHARS_RE.match(value):
            raise UriError(f"bad {what} parameter")
        _check_escapes(part, f"{what} parameter")
        out.append((name, value if eq else None))
    return tuple(out)


def _param_name(name: str) -> str:
    return (unquote(name) if "%" in name else name).lower()


def format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True, slots=True)
class SipUri:
    """``sip:`` / ``sips:`` URI. ``user`` is kept %-escaped as received."""

    scheme: str = "sip"
    user: str | None = None
    host: str = ""
    port: int | None = None
    password: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (``""`` for a flag), None when absent.

        Names compare case-insensitively and unescaped (section 19.1.4: ``;%6C%72``
        is ``;lr``); the value is returned as received.
        """
        lname = name.lower()
        for k, v in self.params:
            if _param_name(k) == lname:
                return "" if v is None else v
        return None

    def has_param(self, name: str) -> bool:
        return self.param(name) is not None

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def user_number(self) -> str | None:
        """The user part before any ``;`` user parameters (``+1555;tgrp=x`` -> ``+1555``).

        Split before unescaping: an escaped ``%3B`` is part of the user, not a separator.
        """
        return None if self.user is None else unquote(self.user.split(";", 1)[0])

    @property
    def transport(self) -> str | None:
        t = self.param("transport")
        return t.lower() if t else None

    def with_params(self, **changes: str | None) -> SipUri:
        drop = {n.lower() for n in changes}
        params = [p for p in self.params if _param_name(p[0]) not in drop]
        params += [(k, v) for k, v in changes.items()]
        return replace(self, params=tuple(params))

    def without_params(self, *names: str) -> SipUri:
        drop = {n.lower() for n in names}
        return replace(self, params=tuple(p for p in self.params if _param_name(p[0]) not in drop))

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other URI scheme (tel:, http:, urn:...): kept opaque (RFC 3261 19.1.6)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def param(self, name: str) -> str | None:
        return None

    @property
    def user_number(self) -> str | None:
        return None


Uri = SipUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a Request-URI or the URI of a name-addr (no surrounding ``<>``)."""
    if not text or any(c in text for c in " \t\r\n<>\""):
        raise UriError("URI contains whitespace, '<', '>' or '\"'")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise UriError("URI has no scheme")
    if scheme.lower() not in ("sip", "sips"):
        if not rest:
            raise UriError("empty URI")
        return AbsoluteUri(scheme, rest)
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        # userinfo cannot hold an unescaped '@' but may hold '?' and ';' (intmeth).
        userinfo, _, rest = rest.partition("@")
        user, psep, pw = userinfo.partition(":")
        if psep:
            password = pw
        if not user:
            raise UriError("empty user part")  # user = 1*( unreserved / escaped / ... )
        if not _USER_RE.match(user) or (password is not None and not _USER_RE.match(password)):
            raise UriError("bad user part")
        _check_escapes(userinfo, "user part")
    headers: str | None = None
    if "?" in rest:
        rest, _, headers = rest.partition("?")
        _check_escapes(headers, "URI headers")
    hostport, semi, ptext = rest.partition(";")
    host, port = parse_host(hostport)
    params = _parse_params(ptext, "URI") if semi else ()
    return SipUri(scheme.lower(), user, host, port, password, params, headers)


def _split_quoted(text: str) -> tuple[str, str]:
    """``"display" rest`` -> (display unescaped, rest). text starts with '"'.

    One regular-expression match finds the closing quote and one substitution
    removes the quoted-pair backslashes (section 25.1): no step per character.
    """
    m = _QUOTED_TAIL_RE.match(text, 1)
    if m is None:
        raise UriError("unterminated quoted string")
    inner = text[1 : m.end() - 1]
    return (_QUOTED_PAIR_RE.sub(r"\1", inner) if "\\" in inner else inner), text[m.end() :]


_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.S)


split_quoted = _split_quoted


def quote_display(name: str) -> str:
    """``name`` as a quoted-string (section 25.1).

    '"' and '\\' and control characters are escaped as quoted-pairs; CR and LF
    cannot be (quoted-pair excludes them), so each becomes a SP rather than
    ending the header line.
    """
    return '"' + _QUOTE_RE.sub(_quote_char, name) + '"'


_QUOTE_RE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')


def _quote_char(m: re.Match[str]) -> str:
    c = m.group()
    return " " if c in "\r\n" else "\\" + c


def find_param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    """Value of header parameter ``name`` (case-insensitive; ``""`` for a flag), None
    when absent: for Address (From, To, Contact...) and Via alike."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return "" if v is None else v
    return None


@dataclass(frozen=True, slots=True)
class Address:
    """name-addr / addr-spec with header parameters (From, To, Contact, Route...)."""

    uri: Uri
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = field(default=())

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_param(self, name: str, value: str | None) -> Address:
        params = tuple(p for p in self.params if p[0].lower() != name.lower())
        return replace(self, params=(*params, (name, value)))

    def __str__(self) -> str:
        disp = f"{quote_display(self.display)} " if self.display is not None else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"


def _parse_header_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Header parameters after an address: ``;tag=x;expires=3`` (generic-param)."""
    text = text.strip()
    if not text:
        return ()
    if not text.startswith(";"):
        raise UriError("junk after address")
    out: list[tuple[str, str | None]] = []
    for part in _split_outside_quotes(text[1:], ";"):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not is_token(name):
            raise UriError("bad header parameter")
        if eq:
            if value.startswith('"'):
                _, tail = _split_quoted(value)
                if tail.strip():
                    raise UriError("junk after quoted parameter")
            elif not is_token(value) and not _looks_like_host(value):
                raise UriError("bad header parameter value")
        out.append((name, value if eq else None))
    return tuple(out)


def _looks_like_host(value: str) -> bool:
    try:
        parse_host(value)
    except UriError:
        return False
    return True


# The rest of a quoted-string after its '"': up to the closing '"', a backslash
# quoting any one character (quoted-pair, section 25.1).
_QUOTED_TAIL_RE = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_QUOTED = r'"(?>[^"\\]*)(?>(?:\\.(?>[^"\\]*))*)"'
# Per separator: every part a separator ends, one such part, a whole last part.
_PART_RES: dict[str, tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]] = {}


def _part_res(sep: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    res = _PART_RES.get(sep)
    if res is None:
        s = re.escape(sep)
        part = rf'(?>[^{s}"]*)(?>(?:{_QUOTED}(?>[^{s}"]*))*)'
        res = _PART_RES[sep] = (
            re.compile(rf"(?:{part}{s})*", re.S),
            re.compile(rf"({part}){s}", re.S),
            re.compile(part, re.S),
        )
    return res


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split ``text`` at each ``sep`` (one character) outside quoted strings.

    Parts are returned unstripped; an unterminated quoted string is an error.
    Linear, in C: one match finds where the last part starts, ``findall`` cuts the
    parts before it; no Python step per character or per quote.
    """
    if '"' not in text:
        return text.split(sep)
    ended, one, whole = _part_res(sep)
    m = ended.match(text)
    end = m.end() if m else 0
    if not whole.fullmatch(text, end):
        raise UriError("unterminated quoted string")
    parts: list[str] = one.findall(text, 0, end)
    parts.append(text[end:])
    return parts


split_outside_quotes = _split_outside_quotes


def parse_address(text: str) -> Address:
    """Parse a From/To/Contact/Route/Record-Route value (one element)."""
    text = text.strip()
    if not text:
        raise UriError("empty address")
    display: str | None = None
    if text.startswith('"'):
        display, text = _split_quoted(text)
        text = text.lstrip()
        if not text.startswith("<"):
            raise UriError("quoted display name without <URI>")
    lt = text.find("<")
    first_semi = text.find(";")
    # In an addr-spec a '<' can only sit in a quoted header parameter, after ';'.
    if lt >= 0 and (first_semi < 0 or lt < first_semi):
        if lt > 0:
            # display-name = *(token LWS) (section 25.1); lwsdisp allows no LWS before '<'.
            words = text[:lt].split()
            if not all(is_token(w) for w in words):
                raise UriError("display name must be quoted")
            display = " ".join(words)
        gt = text.find(">", lt)
        if gt < 0:
            raise UriError("missing '>'")
        uri = parse_uri(text[lt + 1 : gt])
        params = _parse_header_params(text[gt + 1 :])
        return Address(uri, display, params)
    # addr-spec: the URI cannot carry ';' params or '?' headers here (section 20).
    uri_text, semi, ptext = text.partition(";")
    if "?" in uri_text or "," in uri_text:
        raise UriError("URI with '?' or ',' must be enclosed in <>")
    uri = parse_uri(uri_text.strip())
    params = _parse_header_params(semi + ptext)
    return Address(uri, None, params)
