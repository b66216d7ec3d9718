"""Random identifiers: Via branches, From/To tags and Call-IDs (RFC 3261 sections 8.1.1).

All come from :mod:`secrets` so that they cannot be guessed by a third party
(section 26.3.2.4 relies on unguessable Call-IDs and tags). ``token_urlsafe``
yields ``A-Z a-z 0-9 - _``, all of which are ``token`` and ``word`` characters.
"""

from __future__ import annotations

import secrets

MAGIC_COOKIE = "z9hG4bK"  # section 8.1.1.7: every RFC 3261 branch starts with it


def new_branch() -> str:
    """A fresh Via branch: the magic cookie then 20 random characters (120 bits)."""
    return MAGIC_COOKIE + secrets.token_urlsafe(15)


def new_tag() -> str:
    """A From/To tag (section 19.3: at least 32 bits of randomness; we use 96)."""
    return secrets.token_urlsafe(12)


def new_call_id(host: str | None = None) -> str:
    """A Call-ID, ``random@host`` when a host is given (section 8.1.1.4)."""
    local = secrets.token_urlsafe(18)
    return f"{local}@{host}" if host else local
