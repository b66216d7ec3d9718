"""What differs between the two peers of a call: Meta and the PBX.

Where Meta's address comes from is here (:func:`meta_address`); the per-peer
policy object that the call legs consult joins it (see docs/architecture.md,
"Calls: legs, policy, session").
"""

from __future__ import annotations

from gateway.config import HostPort
from gateway.sip.headers import split_header_values
from gateway.sip.message import Request
from gateway.sip.transaction import Target
from gateway.sip.uri import UriError
from gateway.sip.via import Via, parse_via


def second_via(req: Request) -> Via | None:
    """The second Via value of ``req`` (None when there is none or it does not parse).

    Only that value is parsed, not every Via (a relayed INVITE may carry many)."""
    seen = 0
    for line in req.headers.lines("Via"):
        for value in split_header_values(line):
            seen += 1
            if seen == 2:
                try:
                    return parse_via(value)
                except UriError:
                    return None
    return None


def meta_address(req: Request, source: Target) -> HostPort:
    """Where a request from Meta came from: the connection's peer over TLS; relayed by a
    trusted proxy (UDP/TCP on proxy_listen), the proxy's record of Meta's address in the
    second Via (received/rport, else sent-by; RFC 3261 18.2.1, RFC 3581), the top Via
    being the proxy's own. Only trusted because the proxy is."""
    if source.transport != "tls":
        via = second_via(req)
        if via is not None:
            host = (via.received or via.host).strip("[]")
            return HostPort(host, via.rport or via.port or 5061)
    return HostPort(source.host, source.port)
