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
