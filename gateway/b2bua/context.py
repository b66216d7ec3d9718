"""Meta's call context (x-wa-meta-* headers) carried to the PBX as X-WA-* headers.

Meta's header names vary in case and even use ``_`` for ``-``
(docs/whatsapp-sip.md section 3), so they are matched after normalising. Values are
sanitised before they cross to the PBX: printable ASCII/UTF-8 only, no CR/LF
or other control characters, no characters that would break a SIP header
value, bounded length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.sip.message import Request

MAX_VALUE_LENGTH = 256
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"<>\\]")

# normalised Meta header name -> PBX header name
META_TO_PBX: dict[str, str] = {
    "xwametawacid": "X-WA-Call-ID",
    "xwametauserid": "X-WA-User-ID",
    "xwametausername": "X-WA-User-Name",
    "xwametausercountrycode": "X-WA-Country",
    "xwametacountrycode": "X-WA-Country",
    "xwametactapayload": "X-WA-CTA-Payload",
    "xwametadeeplinkpayload": "X-WA-Deeplink-Payload",
    "xwametaphonenumberid": "X-WA-Phone-Number-ID",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def sanitize(value: str) -> str:
    """A value safe to put in a SIP header toward the PBX."""
    cleaned = _UNSAFE.sub("", value).strip()
    return cleaned[:MAX_VALUE_LENGTH]


def meta_headers(request: Request) -> dict[str, str]:
    """Meta's x-wa-meta-* values keyed by normalised name (first occurrence wins)."""
    out: dict[str, str] = {}
    for name, value in request.headers:
        key = _norm(name)
        if key.startswith("xwameta") and key not in out:
            out[key] = value
    return out


def wacid(request: Request) -> str | None:
    """The WhatsApp call id: the x-wa-meta-wacid header, else from Call-ID ``outgoing:wacid.X``."""
    value = meta_headers(request).get("xwametawacid")
    if value:
        return sanitize(value)
    call_id = request.call_id
    idx = call_id.find("wacid.")
    return sanitize(call_id[idx:]) if idx >= 0 else None


def pbx_context_headers(
    request: Request, *, user: str, business_number: str
) -> list[tuple[str, str]]:
    """X-WA-* headers for the PBX leg: only those present, values sanitised."""
    meta = meta_headers(request)
    out: dict[str, str] = {}
    call_key = wacid(request)
    if call_key:
        out["X-WA-Call-ID"] = call_key
    if user:
        out["X-WA-User"] = sanitize(user)
    for key, value in meta.items():
        target = META_TO_PBX.get(key)
        if target and target not in out:
            clean = sanitize(value)
            if clean:
                out[target] = clean
    out["X-WA-Business-Number"] = business_number
    return list(out.items())


def header_names(headers: Iterable[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]
