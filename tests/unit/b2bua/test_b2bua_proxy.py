"""Calls through a SIP proxy (Kamailio in front of several instances), in memory.

Meta's requests arrive as Kamailio relays them (config/kamailio/kamailio.cfg): over
UDP or TCP from the proxy's internal address, with the proxy's Via on top (Meta's
below it, stamped ``received``/``rport``) and the proxy's two Record-Route entries
above Meta's two; the Request-URI unchanged (``sip:+E164@public;transport=tls``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.sip.ids import new_branch
from gateway.sip.message import Request
from gateway.sip.transaction import Target
from tests.unit.b2bua.b2bua_fakes import (
    BUSINESS,
    HOSTNAME,
    META_RR,
    USER,
    Harness,
    OutboundHarness,
    Sent,
    meta_invite,
    meta_response,
    pbx_invite,
    pbx_sdp,
    request_of,
)

PROXY_HOST, PROXY_PORT = "10.0.0.5", 5060
PROXY_UDP = Target("udp", PROXY_HOST, PROXY_PORT)
PROXY_TCP = Target("tcp", PROXY_HOST, 41234, conn_id=9)
OWN = "10.0.0.11:5071"  # this instance's proxy_listen
PROXY_RR = {
    "udp": (f"<sip:{PROXY_HOST};r2=on;lr>", "<sip:sip.example.com:5061;transport=tls;r2=on;lr>"),
    "tcp": (
        f"<sip:{PROXY_HOST};transport=tcp;r2=on;lr>",
        "<sip:sip.example.com:5061;transport=tls;r2=on;lr>",
    ),
}
META_SRC = ("157.240.19.1", 40001)
PROXY_CONFIG: dict[str, Any] = {
    "whatsapp": {
        "listen": None,
        "trusted_proxies": [f"{PROXY_HOST}/32"],
        "proxy_listen": OWN,
        "outbound_proxy": f"{PROXY_HOST}:{PROXY_PORT}",
    }
}


def relayed(data: bytes, transport: str = "udp", src: tuple[str, int] = META_SRC) -> bytes:
    """``data`` (a Meta-shaped request) as Kamailio forwards it to an instance."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    out = [
        lines[0],
        f"Via: SIP/2.0/{transport.upper()} {PROXY_HOST}:{PROXY_PORT};branch={new_branch()};rport",
    ]
    for line in lines[1:]:
        if line.startswith("Via:") and ";rport" in line:
            line = line.replace(";rport", f";received={src[0]};rport={src[1]}", 1)
        if line.startswith("Record-Route:") and META_RR[0] in line:
            out += [f"Record-Route: {rr}" for rr in PROXY_RR[transport]]
        out.append(line)
    return ("\r\n".join(out) + "\r\n\r\n").encode() + body


def admit(h: Harness, transport: str = "udp") -> tuple[Request, list[Sent]]:
    """A proxied INVITE, challenged and sent again with credentials; returns the
    INVITE as admitted and what the second attempt sent."""
    source = PROXY_UDP if transport == "udp" else PROXY_TCP
    kwargs: dict[str, Any] = {"wacid": "wacid.proxy1", "from_tag": "metatag1"}
    h.from_meta(relayed(meta_invite(**kwargs), transport), source)
    sent = h.sent()
    challenge = only(h.responses(sent, 407))
    assert [s.target for s in sent if s.message is challenge] == [_response_target(transport)]
    value = challenge.headers.get("Proxy-Authenticate")
    assert value is not None
    ruri = f"sip:{BUSINESS};tgrp=wacall;trunk-context=byoc.example.com@{HOSTNAME};transport=tls"
    kwargs.update(cseq=2, branch=new_branch(), auth=h.credentials(value, ruri))
    data = relayed(meta_invite(**kwargs), transport)
    h.from_meta(data, source)
    return request_of(data), h.sent()


def _response_target(transport: str) -> Target:
    # RFC 3581: to the top Via's received/rport; over TCP on the same connection.
    return PROXY_UDP if transport == "udp" else PROXY_TCP


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, PROXY_CONFIG)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_proxied_call_answers_through_the_proxy_with_own_contact(
    h: Harness, transport: str
) -> None:
    invite, sent = admit(h, transport)
    assert len(h.calls.calls) == 1  # the digest uri check took the unchanged Request-URI
    call = next(iter(h.calls.calls.values()))
    pbx_invite = only([s.request for s in sent if isinstance(s.message, Request)])
    assert pbx_invite.headers.get("X-WA-Call-ID") == "wacid.proxy1"
    flow_sent = h.from_pbx(
        b"SIP/2.0 200 OK\r\n"
        + "".join(f"Via: {v}\r\n" for v in pbx_invite.headers.lines("Via")).encode()
        + f"From: {pbx_invite.headers.get('From')}\r\nTo: {pbx_invite.headers.get('To')};tag=as1"
        f"\r\nCall-ID: {pbx_invite.call_id}\r\nCSeq: {pbx_invite.cseq}\r\n"
        f"Contact: <sip:{BUSINESS}@127.0.0.1:5080>\r\nContent-Type: application/sdp\r\n".encode()
        + _pbx_sdp_block()
    )
    assert flow_sent
    out = h.sent()
    ok = only(h.responses(out, 200))
    assert [s.target for s in out if s.message is ok] == [_response_target(transport)]
    # Every Record-Route echoed unchanged and in order: the proxy's two, then Meta's.
    assert ok.headers.lines("Record-Route") == [*PROXY_RR[transport], *META_RR]
    # Contact: this instance's own address on the proxy link, never the public name.
    assert ok.headers.get("Contact") == f"<sip:{BUSINESS}@{OWN};transport={transport}>"
    # Meta's real address, from the Via the proxy stamped.
    assert call.record()["meta_source"] == f"{META_SRC[0]}:{META_SRC[1]}"
    # The gateway's BYE goes to the proxy's internal Record-Route entry with the full
    # route set, over the proxy link (TCP: the proxy's own connection).
    call.hangup("test")
    bye = [s for s in h.sent() if isinstance(s.message, Request) and s.message.method == "BYE"]
    to_meta = only([s for s in bye if s.target.host == PROXY_HOST])
    expected = PROXY_UDP if transport == "udp" else Target("tcp", PROXY_HOST, 5060, 9)
    assert to_meta.target == expected
    assert to_meta.request.headers.lines("Route") == [*PROXY_RR[transport], *META_RR]
    assert to_meta.request.uri == f"sip:{USER}@wa.meta.vc;transport=tls;ob"
    assert to_meta.request.top_via.transport == transport.upper()
    assert f"{to_meta.request.top_via.host}:{to_meta.request.top_via.port}" == OWN
    assert invite.uri.endswith(f"@{HOSTNAME};transport=tls")


def _pbx_sdp_block() -> bytes:
    body = pbx_sdp().encode()
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_nonce_issued_by_one_instance_verifies_on_another(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # Two instances: the harness gives both the same digest secret, as
    # cluster.nonce_secret_file does (tests/unit/config/test_config.py reads that file).
    one = Harness(tmp_path / "one", PROXY_CONFIG)
    two = Harness(tmp_path / "two", PROXY_CONFIG)
    kwargs: dict[str, Any] = {"wacid": "wacid.moved", "from_tag": "metatag2"}
    one.from_meta(relayed(meta_invite(**kwargs)), PROXY_UDP)
    challenge = only(one.responses(one.sent(), 407))
    value = challenge.headers.get("Proxy-Authenticate")
    assert value is not None
    ruri = f"sip:{BUSINESS};tgrp=wacall;trunk-context=byoc.example.com@{HOSTNAME};transport=tls"
    kwargs.update(cseq=2, branch=new_branch(), auth=one.credentials(value, ruri))
    # The re-sent INVITE lands on the other instance (the dispatcher set changed).
    two.from_meta(relayed(meta_invite(**kwargs)), PROXY_UDP)
    assert not two.responses(two.sent(), 407)
    assert len(two.calls.calls) == 1


def test_outbound_call_goes_to_the_outbound_proxy(tmp_path: Path) -> None:
    h = OutboundHarness(tmp_path, PROXY_CONFIG)
    h.from_pbx(pbx_invite(USER))
    sent = h.sent()
    invite = only([s for s in sent if isinstance(s.message, Request)])
    assert invite.target == PROXY_UDP
    req = invite.request
    assert req.uri == f"sip:{USER}@wa.meta.vc;transport=tls"
    assert (req.headers.get("From") or "").startswith(f"<sip:{BUSINESS}@{HOSTNAME}>")
    assert req.headers.get("Contact") == f"<sip:{BUSINESS}@{OWN};transport=udp>"
    assert f"{req.top_via.host}:{req.top_via.port}" == OWN and req.top_via.transport == "UDP"
    # Meta's 407 comes back through the proxy; the answer is a new INVITE to it too.
    value = h.meta_digest.challenge(h.scheduler.time())[0].to_header()
    h.from_meta(meta_response(req, 407, extra=[("Proxy-Authenticate", value)]), PROXY_UDP)
    again = only(
        [s for s in h.sent() if isinstance(s.message, Request) and s.message.method == "INVITE"]
    )
    assert again.target == PROXY_UDP
    assert again.request.headers.get("Proxy-Authorization")


def test_meta_source_over_ipv6_is_bracketed(h: Harness) -> None:
    v6 = ("2a03:2880:f000::1", 5061)
    kwargs: dict[str, Any] = {"wacid": "wacid.v6", "from_tag": "metatag6"}
    first = meta_invite(**kwargs)
    h.from_meta(relayed(first, src=v6), PROXY_UDP)
    value = only(h.responses(h.sent(), 407)).headers.get("Proxy-Authenticate")
    assert value is not None
    kwargs.update(cseq=2, branch=new_branch(), auth=h.credentials(value, request_of(first).uri))
    h.from_meta(relayed(meta_invite(**kwargs), src=v6), PROXY_UDP)
    call = only(list(h.calls.calls.values()))
    assert call.record()["meta_source"] == "[2a03:2880:f000::1]:5061"
