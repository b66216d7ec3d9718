"""SIP over UDP in the asyncio adapter: a readable event drains the socket.

The PBX-side listener shares the loop with hundreds of RTP sockets, each of which
drains up to 64 datagrams per readable event; a SIP socket read one datagram per
loop pass let a PBX's responses queue for seconds under media load (408s in the
benchmark at 200 calls).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from gateway.sip.transaction import Event, TransactionManager
from gateway.transport.sip import UDP_DRAIN, AccessList, SipStack


def _options(branch: str, port: int) -> bytes:
    return (
        f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\n"
        f"From: <sip:pbx@127.0.0.1>;tag=f{branch}\r\nTo: <sip:gw@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _stack(networks: str = "127.0.0.0/8") -> tuple[SipStack, list[Event], int]:
    events: list[Event] = []
    stack = SipStack(TransactionManager(), lambda event, leg: events.append(event))
    acl = AccessList([ipaddress.ip_network(networks)])
    _, port = await stack.listen_udp("pbx", "127.0.0.1", 0, acl)
    return stack, events, port


async def _passes(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_one_readable_event_reads_every_queued_datagram() -> None:
    stack, events, port = await _stack()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    me = client.getsockname()[1]
    try:
        count = 20
        assert count < UDP_DRAIN
        for i in range(count):
            client.sendto(_options(f"drain{i}", me), ("127.0.0.1", port))
        client.sendto(b"\r\n\r\n", ("127.0.0.1", port))  # keep-alive: ignored
        await _passes(3)  # one datagram a pass would have read 3 at most
        assert stack.stats.requests[("pbx", "OPTIONS")] == count
        assert len(events) == count
    finally:
        client.close()
        await stack.close()


async def test_parse_error_is_answered_and_source_outside_acl_is_not_parsed() -> None:
    stack, events, port = await _stack()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    me = client.getsockname()[1]
    try:
        bad = _options("bad", me).replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1)
        client.sendto(bad, ("127.0.0.1", port))
        await _passes(3)
        assert stack.stats.parse_errors["pbx"] == 1
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, client.recv, 65536)
        assert reply.startswith(b"SIP/2.0 4") or reply.startswith(b"SIP/2.0 505")
        assert not events
    finally:
        client.close()
        await stack.close()

    stack, events, port = await _stack("192.0.2.0/24")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(_options("foreign", 9), ("127.0.0.1", port))
        await _passes(3)
        assert stack.stats.rejected_sources["pbx"] == 1
        assert not stack.stats.requests and not stack.stats.parse_errors and not events
    finally:
        client.close()
        await stack.close()


async def test_close_stops_reading_and_sending() -> None:
    stack, events, port = await _stack()
    await stack.close()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(_options("late", 9), ("127.0.0.1", port))
        await _passes(3)
        assert not events
    finally:
        client.close()
