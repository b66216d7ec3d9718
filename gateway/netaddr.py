"""Host and port as text: the one place an IPv6 literal gets its brackets.

A host in a URI, a Via, an SDP summary or a log line is written ``[2001:db8::1]``
when it is an IPv6 literal (RFC 3986 section 3.2.2, RFC 3261 section 25.1
``IPv6reference``) and as it is otherwise. The bottom layer: everything may use it.
"""

from __future__ import annotations

__all__ = ["bracket", "hostport"]


def bracket(host: str) -> str:
    """``host`` as it stands in a URI or a Via: an IPv6 literal in brackets (once)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def hostport(host: str, port: int) -> str:
    """``host:port``, the host bracketed when it is an IPv6 literal."""
    return f"{bracket(host)}:{port}"
