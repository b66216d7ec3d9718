"""How a failure on one leg becomes a response on the other: tables, each tested.

A 503 toward Meta (or a proxy in front of the gateway) means "try another
instance", so it is used only for the gateway's own capacity or drain, never
for a PBX-side failure.
"""

from __future__ import annotations

# PBX final response (or local condition) -> response toward Meta on an inbound call.
PBX_TO_META: dict[int, int] = {
    400: 480,  # our request was bad: the user cannot reach anyone
    401: 480,
    403: 403,
    404: 404,  # number not routed at the PBX
    407: 480,
    408: 408,
    410: 404,
    480: 480,
    484: 404,
    486: 486,  # busy stays busy
    487: 487,
    488: 488,
    500: 480,
    502: 480,
    503: 480,  # PBX overloaded/unavailable: unavailable, not "try another gateway"
    504: 408,
    600: 486,
    603: 603,
    604: 404,
}

# Local conditions on the PBX leg.
PBX_NO_ANSWER_TO_INVITE = 408  # no provisional within pbx.invite_timeout
PBX_TRANSPORT_FAILURE = 480  # unreachable: the user hears "unavailable"


def pbx_failure_to_meta(status: int) -> int:
    """The response Meta gets when the PBX answers the INVITE with ``status`` (>= 300)."""
    if status in PBX_TO_META:
        return PBX_TO_META[status]
    if 300 <= status < 400:
        return 480  # redirects are not followed by a B2BUA toward Meta
    if 400 <= status < 500:
        return 480
    if 500 <= status < 600:
        return 480
    return 603 if status >= 600 else 480


# Meta final response on a business-initiated call -> response toward the PBX.
# Meta's reason travels in a Reason header (and its Warning text is carried over).
META_TO_PBX: dict[int, int] = {
    400: 403,  # invalid business number in From: a configuration problem, retrying won't help
    403: 403,  # no permission, limit, host mismatch, app not authorized, duplicate, digest...
    404: 404,  # IP address in the Request-URI, or an unknown user
    408: 408,  # RTP timeout
    480: 480,  # user unreachable or did not answer
    486: 486,  # user declined
    487: 487,  # after our CANCEL
    488: 488,
    503: 503,  # Meta internal error: the PBX may retry another route
    603: 603,
}

# Local conditions on the WhatsApp leg of a business-initiated call.
META_UNREACHABLE = 503  # TLS connect failure, or no answer from Meta within the bound
META_AUTH_REFUSED = 403  # Meta challenged again after we answered its challenge


def meta_failure_to_pbx(status: int) -> int:
    """The response the PBX gets when Meta answers our INVITE with ``status`` (>= 300)."""
    if status in META_TO_PBX:
        return META_TO_PBX[status]
    if 400 <= status < 500:
        return 480
    if 500 <= status < 600:
        return 502
    return 603 if status >= 600 else 480


# Meta's 403 reasons (Warning: 399 wa.meta.vc "...") told apart for records and metrics.
_WARNING_REASONS: tuple[tuple[str, str], ...] = (
    ("permission", "no_permission"),
    ("limit", "limit"),
    ("from host", "host_mismatch"),
    ("sip server", "host_mismatch"),
    ("not authorized", "app_not_authorized"),
    ("duplicate", "duplicate"),
    ("digest", "bad_digest"),
    ("authenticat", "bad_digest"),
    ("payment", "payment"),
    ("sdp", "sdp_invalid"),
)


def meta_warning_reason(warning: str | None) -> str:
    """A short label for Meta's Warning text (``other`` when unknown, ``none`` when absent)."""
    if not warning:
        return "none"
    text = warning.lower()
    for needle, label in _WARNING_REASONS:
        if needle in text:
            return label
    return "other"


def warning_text(warning: str | None) -> str | None:
    """The quoted text of a ``Warning: 399 host "text"`` header value."""
    if not warning:
        return None
    start = warning.find('"')
    end = warning.rfind('"')
    return warning[start + 1 : end] if 0 <= start < end else warning


def reason_phrase(text: str | None, limit: int = 100) -> str | None:
    """``text`` made safe as a status line's reason phrase (RFC 3261 25.1: no CR/LF or
    other control characters; whitespace collapsed, at most ``limit`` characters), None
    when nothing is left."""
    if not text:
        return None
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned[:limit].rstrip() or None
