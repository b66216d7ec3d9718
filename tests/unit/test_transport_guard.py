"""Connection caps and deadlines (sans-IO, fake clock), the read budget, the log limiter.

Issue 11 findings 1, 2 (fair reading), 4, 5 and 8: what :mod:`gateway.transport.guard`
decides, and that the stream protocol applies it before TLS and reads fairly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest

from gateway.config.certs import ensure_dev_certificate
from gateway.logging import LogLimiter
from gateway.sip.framing import Ping, StreamFramer
from gateway.sip.transaction import Event, TransactionManager
from gateway.transport.guard import ConnectionGuard, ConnectionLimits, StreamClock
from gateway.transport.sip import AccessList, SipStack
from gateway.transport.tls import server_context

LIMITS = ConnectionLimits(
    max_connections=5,
    max_per_source=2,
    max_handshakes=3,
    handshake_timeout=5.0,
    first_message_timeout=15.0,
    message_timeout=10.0,
    idle_timeout=300.0,
)


# -- admission -----------------------------------------------------------------
def test_per_source_cap_then_total_cap() -> None:
    guard = ConnectionGuard(LIMITS)
    assert guard.admit("10.0.0.1", tls=False) is None
    assert guard.admit("10.0.0.1", tls=False) is None
    assert guard.admit("10.0.0.1", tls=False) == "per_source"
    assert guard.admit("10.0.0.2", tls=False) is None
    assert guard.admit("10.0.0.3", tls=False) is None
    assert guard.admit("10.0.0.4", tls=False) is None
    assert guard.total == 5
    assert guard.admit("10.0.0.5", tls=False) == "total"
    guard.release("10.0.0.1", handshaking=False)
    assert guard.from_source("10.0.0.1") == 1
    assert guard.admit("10.0.0.5", tls=False) is None


def test_handshakes_in_flight_cap_frees_when_a_handshake_ends() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_handshakes=2))
    assert guard.admit("a", tls=True) is None
    assert guard.admit("b", tls=True) is None
    assert guard.admit("c", tls=True) == "handshakes"
    assert guard.admit("c", tls=False) is None  # plain TCP costs no handshake
    guard.handshake_over()
    assert guard.admit("c", tls=True) is None
    guard.release("a", handshaking=False)
    guard.release("b", handshaking=True)
    guard.release("c", handshaking=True)
    guard.release("c", handshaking=False)
    assert (guard.total, guard.handshaking, guard.from_source("c")) == (0, 0, 0)


# -- deadlines -----------------------------------------------------------------
def test_handshake_deadline_first() -> None:
    clock = StreamClock(LIMITS, 100.0, handshake=True)
    assert clock.expired(104.9) is None
    assert clock.expired(105.0) == "handshake_timeout"
    clock.handshake_done()
    assert clock.expired(105.0) is None
    assert clock.expired(115.0) == "first_message_timeout"


def test_message_deadline_runs_from_the_first_byte_whatever_follows() -> None:
    clock = StreamClock(LIMITS, 0.0, handshake=False)
    for t in range(1, 11):  # slowloris: a byte a second, never a whole message
        clock.received(float(t), messages=0, pings=0, buffered=t)
        assert clock.expired(float(t)) == (None if t < 11 else "message_timeout")
    assert clock.expired(11.0) == "message_timeout"  # first byte at 1.0


def test_a_complete_message_resets_idle_and_ends_the_first_message_deadline() -> None:
    clock = StreamClock(LIMITS, 0.0, handshake=False)
    clock.received(1.0, messages=0, pings=0, buffered=50)
    clock.received(2.0, messages=1, pings=0, buffered=0)
    assert clock.first_until is None and clock.message_since is None
    assert clock.expired(301.9) is None
    assert clock.expired(302.0) == "idle_timeout"
    # The next message's first bytes came in the same read: its deadline starts then.
    clock.received(250.0, messages=1, pings=0, buffered=10)
    assert clock.expired(259.9) is None
    assert clock.expired(260.0) == "message_timeout"


def test_pings_reset_idle_but_are_not_a_first_message() -> None:
    clock = StreamClock(LIMITS, 0.0, handshake=False)
    clock.received(14.0, messages=0, pings=1, buffered=0)
    assert clock.expired(15.0) == "first_message_timeout"
    clock.received(15.0, messages=1, pings=0, buffered=0)
    clock.received(200.0, messages=0, pings=1, buffered=0)
    assert clock.expired(499.0) is None
    assert clock.expired(500.0) == "idle_timeout"


def test_bytes_alone_do_not_reset_idle() -> None:
    clock = StreamClock(LIMITS, 0.0, handshake=False)
    clock.received(1.0, messages=1, pings=0, buffered=0)
    clock.received(295.0, messages=0, pings=0, buffered=3)  # a partial message
    assert clock.expired(301.0) == "idle_timeout"


# -- the log limiter -------------------------------------------------------------
def test_log_limiter_one_line_per_key_per_interval_with_the_count_left_out() -> None:
    now = [0.0]
    limiter = LogLimiter(5.0, clock=lambda: now[0], max_keys=4)
    assert limiter.allow("a") == 0
    for _ in range(9):
        assert limiter.allow("a") is None
    assert limiter.allow("b") == 0
    now[0] = 5.0
    assert limiter.allow("a") == 9
    assert limiter.allow("a") is None
    for key in "cdef":  # more keys than remembered: the oldest are forgotten
        assert limiter.allow(key) == 0
    assert limiter.allow("a") == 0


# -- the framer's limit ------------------------------------------------------------
def test_framer_limit_leaves_the_rest_buffered_in_order() -> None:
    framer = StreamFramer()
    msgs = [
        b"OPTIONS sip:a SIP/2.0\r\nCall-ID: %d\r\nContent-Length: 0\r\n\r\n" % i for i in range(5)
    ]
    frames = framer.feed(b"".join(msgs[:3]) + b"\r\n\r\n" + b"".join(msgs[3:]), limit=2)
    assert frames == msgs[:2]
    assert framer.feed(b"", limit=2) == [msgs[2], Ping()]
    assert framer.feed(b"", limit=2) == msgs[3:]
    assert framer.buffered == 0


# -- the stream protocol on loopback -------------------------------------------------
def _options(i: int) -> bytes:
    return (
        f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKfair{i}\r\n"
        f"From: <sip:pbx@127.0.0.1>;tag=f{i}\r\nTo: <sip:gw@127.0.0.1>\r\n"
        f"Call-ID: fair{i}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_one_read_hands_at_most_read_budget_messages_to_the_core() -> None:
    events: list[Event] = []
    stack = SipStack(
        TransactionManager(),
        lambda event, leg: events.append(event),
        limits=ConnectionLimits(read_budget=8),
    )
    acl = AccessList([ipaddress.ip_network("127.0.0.0/8")])
    _, port = await stack.listen_stream("pbx", "127.0.0.1", 0, acl)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(_options(i) for i in range(100)))
        await writer.drain()
        seen: list[int] = []
        for _ in range(200):
            await asyncio.sleep(0)
            if len(events) != (seen[-1] if seen else 0):
                seen.append(len(events))
            if len(events) == 100:
                break
        assert len(events) == 100
        steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
        assert max(steps) <= 8, steps  # never more than the budget in one pass
        assert stack.stats.connections.open[("pbx", "tcp")] == 1
    finally:
        writer.close()
        await stack.close()


async def test_refused_tls_source_gets_no_byte_and_costs_no_handshake(tmp_path: Path) -> None:
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    ensure_dev_certificate(cert, key, "sip.example.com")
    stack = SipStack(TransactionManager(), lambda event, leg: None)
    acl = AccessList([ipaddress.ip_network("127.0.0.1/32")])
    ctx = server_context(cert, key)
    _, port = await stack.listen_stream("whatsapp", "127.0.0.1", 0, acl, ctx)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(sock=sock, ssl=client, server_hostname="x"), 5
            )
        stats = stack.stats.connections
        assert stats.refused[("whatsapp", "source")] == 1
        assert stats.handshakes[("whatsapp", "started")] == 0
        assert stack.guard.total == 0
        # An allowed source gets its handshake.
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="x"
        )
        await asyncio.sleep(0.05)
        assert stats.handshakes[("whatsapp", "completed")] == 1
        assert stats.open[("whatsapp", "tls")] == 1
        writer.close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if stack.guard.total == 0:
                break
        assert (stack.guard.total, stack.guard.handshaking) == (0, 0)
        assert stats.open[("whatsapp", "tls")] == 0
    finally:
        await stack.close()
