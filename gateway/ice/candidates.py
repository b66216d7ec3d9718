"""ICE values with no state: credentials (RFC 8839 5.4) and priorities (RFC 8445 5.1.2, 6.1.2.3).

:mod:`gateway.ice.agent` uses and re-exports them. The SDP layer writes its own
host candidate's priority with the same formula (sdp and ice do not import each
other).
"""

from __future__ import annotations

import secrets
import string

__all__ = [
    "HOST_TYPE_PREF",
    "ICE_CHARS",
    "LOCAL_PREF",
    "PEER_REFLEXIVE_TYPE_PREF",
    "candidate_priority",
    "new_credentials",
    "pair_priority",
]

HOST_TYPE_PREF = 126  # RFC 8445 5.1.2.2
PEER_REFLEXIVE_TYPE_PREF = 110
LOCAL_PREF = 65535  # one local candidate: the highest

ICE_CHARS = string.ascii_letters + string.digits + "+/"  # RFC 8839 5.4: ice-char


def new_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd): 8 and 24 ice-chars from :mod:`secrets` (RFC 8839 5.4).

    The RFC asks for at least 24 bits of randomness in the ufrag and 128 in the
    pwd: 8 chars of 64 give 48 bits, 24 give 144.
    """
    ufrag = "".join(secrets.choice(ICE_CHARS) for _ in range(8))
    pwd = "".join(secrets.choice(ICE_CHARS) for _ in range(24))
    return ufrag, pwd


def candidate_priority(type_pref: int, local_pref: int = LOCAL_PREF, component: int = 1) -> int:
    """RFC 8445 5.1.2.1: 2^24 * type preference + 2^8 * local preference + (256 - component)."""
    return (type_pref << 24) | (local_pref << 8) | (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 6.1.2.3: 2^32 * MIN(G, D) + 2 * MAX(G, D) + (G > D ? 1 : 0)."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)
