"""Header fields: names, list splitting and the ordered multimap (RFC 3261 section 7.3).

Splitting a list header at its top-level commas (section 7.3.1) is the one scan
every message's Via, Route, Record-Route and Contact go through, so it is done by
``str.split`` or by ``findall`` with atomic regular expressions, never by a
Python loop over characters or quotes: its cost is linear in the value's length
with the constant of C, plus one list item per element.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# RFC 3261 section 7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From",
        "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version",
        "Organization", "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By",
        "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route",
        "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported",
        "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}  # fmt: skip

# Headers whose grammar is a comma-separated list (section 7.3.1); only these
# are split by Headers.get_all. Auth headers are not lists of values.
LIST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "Path", "Proxy-Require", "Reason", "Record-Route", "Require", "Route",
        "Service-Route", "Supported", "Unsupported", "Via", "Warning",
    )
)  # fmt: skip

# Headers that may appear at most once (multi01, mcl01).
SINGLE_HEADERS = frozenset(
    h.lower() for h in ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length",
                        "Content-Type", "Expires")
)  # fmt: skip

DIGITS_RE = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() accepts e.g. "²"


def ascii_int(text: str, max_digits: int = 18) -> int | None:
    """``1*DIGIT`` as an int, None when not ASCII digits or longer than ``max_digits``
    significant digits (which also keeps int() clear of its 4300-digit limit)."""
    if not DIGITS_RE.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


def canonical_name(name: str) -> str:
    """Long, conventionally capitalised header name for ``name`` (any case, compact)."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    known = _CANONICAL.get(lower)
    if known:
        return known
    return "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


# One element of a list header (section 7.3.1): runs without ',', '"' or '<',
# quoted-strings (a backslash quotes any one character) and <...> (which may hold
# quoted-strings; the first '>' outside them closes it). Each loop is unrolled and
# atomic, so an unterminated quote or '<' fails in one pass without backtracking.
# Atomic groups, not possessive quantifiers: those match wrongly before Python
# 3.11.5 (CPython gh-106052), and Debian 12 ships 3.11.2.
_QUOTED = r'"(?>[^"\\]*)(?>(?:\\.(?>[^"\\]*))*)"'
_ANGLE = rf'<(?>[^>"]*)(?>(?:{_QUOTED}(?>[^>"]*))*)>'
_ELEMENT = rf'(?>[^,"<]*)(?>(?:(?:{_ANGLE}|{_QUOTED})(?>[^,"<]*))*)'
# A comma and the empty elements after it (SP, HTAB, commas) are skipped in one go.
_ELEMENTS_RE = re.compile(rf"(?:{_ELEMENT},[ \t,]*)*", re.S)  # every element a comma ends
_ELEMENT_COMMA_RE = re.compile(rf"({_ELEMENT}),[ \t,]*", re.S)


def split_header_values(value: str) -> list[str]:
    """Split a list header on commas outside quoted strings and ``<>`` (section 7.3.1).

    A backslash inside a quoted string quotes the next character; a stray ``>`` is
    an ordinary character; from an unterminated quoted string or ``<`` on, the
    rest of the value is one element (no comma after it splits). Empty elements
    are dropped and each element is stripped.

    Linear, with no Python step per character or per quote: one regular
    expression finds where the last element starts, ``findall`` cuts the ones
    before it, both in C.
    """
    if '"' not in value and "<" not in value:
        parts = value.split(",")
    else:
        last = _ELEMENTS_RE.match(value)
        end = last.end() if last else 0
        parts = _ELEMENT_COMMA_RE.findall(value, 0, end)
        parts.append(value[end:])
    return [v for v in (p.strip() for p in parts) if v]


def first_header_value(value: str) -> str | None:
    """The first element of a list header line, as ``split_header_values(value)[0]``
    (None when it has none). A cheap path for the top Via of a one-Via line."""
    head, comma, _ = value.partition(",")
    if not comma:
        return head.strip() or None
    if '"' not in head and "<" not in head and head.strip():
        return head.strip()
    values = split_header_values(value)
    return values[0] if values else None


class Headers:
    """Ordered, case-insensitive multimap of header lines (canonical names)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({len(self._items)} lines)"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h

    def get(self, name: str) -> str | None:
        """First line's value for ``name`` (the whole line, not split)."""
        key = _key(name)
        for n, v in self._items:
            if n.lower() == key:
                return v
        return None

    def lines(self, name: str) -> list[str]:
        key = _key(name)
        return [v for n, v in self._items if n.lower() == key]

    def get_all(self, name: str) -> list[str]:
        """All values of ``name``, list headers split at top-level commas."""
        values = self.lines(name)
        if _key(name) not in LIST_HEADERS:
            return values
        out: list[str] = []
        for v in values:
            out.extend(split_header_values(v))
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        item = (canonical_name(name), value)
        if first:
            self._items.insert(0, item)
        else:
            self._items.append(item)

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one (in the first line's place)."""
        key = _key(name)
        for i, (n, _) in enumerate(self._items):
            if n.lower() == key:
                self._items[i] = (n, value)
                self._items = [
                    it for j, it in enumerate(self._items) if j <= i or it[0].lower() != key
                ]
                return
        self._items.append((canonical_name(name), value))

    def remove(self, name: str) -> None:
        key = _key(name)
        self._items = [it for it in self._items if it[0].lower() != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = _key(name)
        for i, (n, v) in enumerate(self._items):
            if n.lower() == key:
                values = split_header_values(v)
                if len(values) <= 1:
                    del self._items[i]
                else:
                    self._items[i] = (n, ", ".join(values[1:]))
                return values[0] if values else None
        return None


def _key(name: str) -> str:
    """Comparison key of a header name: case-insensitive (section 7.3.1), compact
    forms mapped to their long names. Names are stored canonical for known
    headers and as spelled (first letters capitalised) for unknown ones."""
    return canonical_name(name).lower()


