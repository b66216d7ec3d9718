"""One SIP connection over TCP or TLS: filtered and capped before TLS, read fairly.

Inbound connections are accepted as plain TCP. :meth:`StreamProtocol.connection_made`
checks the source against the listener's access list and the
:class:`~gateway.transport.guard.ConnectionGuard` caps first, with reading paused;
a refused connection is aborted before a byte is read, so a TLS client outside
the allow list never gets a ServerHello. An admitted TLS connection is then
upgraded with ``loop.start_tls``. The stack's sweep closes connections whose
:class:`~gateway.transport.guard.StreamClock` deadline has passed.

Reading is fair: a read hands at most ``read_budget`` messages to the SIP core;
the rest stay in the framer, reading is paused and the next batch is taken on
the next loop pass, so one peer's 256 KB burst does not hold the loop. Writing
is bounded: past ``max_write_buffer`` bytes queued toward a peer that does not
read, the connection is aborted.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from gateway.logging import get_logger
from gateway.sip.framing import FramingError, Ping, StreamFramer
from gateway.sip.message import Request, SipParseError
from gateway.sip.message import parse_message as _parse_message
from gateway.sip.transaction import Target
from gateway.transport.guard import StreamClock

if TYPE_CHECKING:
    from gateway.transport.sip import AccessList, SipStack

log = get_logger(__name__)


class StreamProtocol(asyncio.Protocol):
    def __init__(
        self,
        stack: SipStack,
        leg: str,
        kind: str,
        acl: AccessList | None,
        *,
        inbound: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._stack = stack
        self.leg = leg
        self.kind = kind
        self._acl = acl
        self.inbound = inbound
        self._ssl = ssl_context
        self._framer = StreamFramer(stack._max)
        self._transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.conn_id = 0
        self.closing = False
        self.clock: StreamClock | None = None  # inbound connections only
        self._counted = False  # in the open-connections gauge
        self._admitted = False  # counted in by the guard
        self._handshaking = False
        self._released = False
        self._expired = False  # closed by a deadline (counted there)
        self._write_paused = False
        self._read_paused = False  # by the read budget: frames are left in the framer
        self._next: asyncio.Handle | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # read after the handshake, before start_tls returned

    # -- accept: filter, cap, then TLS -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        stack = self._stack
        stats = stack.stats.connections
        if not self.inbound:
            self._counted = True
            stats.open[(self.leg, self.kind)] += 1
            self._established()
            return
        transport.pause_reading()  # nothing is read (no ClientHello) before the checks
        if self._acl is not None and (self.peer is None or not self._acl.allows(self.peer[0])):
            stack.stats.rejected_sources[self.leg] += 1
            stats.refused[(self.leg, "source")] += 1
            self._refuse(transport)
            return
        tls = self._ssl is not None
        why = stack.guard.admit(self.peer[0] if self.peer else "", tls=tls)
        if why is not None:
            stats.refused[(self.leg, why)] += 1
            self._refuse(transport)
            return
        self._admitted = True
        self._counted = True
        stats.open[(self.leg, self.kind)] += 1
        self.clock = StreamClock(stack.guard.limits, stack._loop.time(), handshake=tls)
        stack._inbound.add(self)
        if tls:
            self._handshaking = True
            stats.handshakes[(self.leg, "started")] += 1
            self._tls_task = stack._loop.create_task(self._start_tls(transport))
        else:
            transport.resume_reading()
            self._established()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.closing = True
        self._released = True  # nothing was counted in
        transport.abort()

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        stack = self._stack
        assert self._ssl is not None
        limits = stack.guard.limits
        try:
            tls = await stack._loop.start_tls(
                raw,
                self,
                self._ssl,
                server_side=True,
                # The sweep closes it at handshake_timeout; asyncio's own is a backstop.
                ssl_handshake_timeout=2 * limits.handshake_timeout,
            )
        except asyncio.CancelledError:
            self._handshake_failed(raw)
            raise
        except Exception as exc:  # SSLError, reset, timeout: the peer's problem
            log.debug("tls_handshake_failed", leg=self.leg, peer=self._peer(), error=str(exc))
            self._handshake_failed(raw)
            return
        finally:
            self._tls_task = None
        if tls is None or self.closing:  # aborted by the sweep or by close()
            self._handshake_failed(raw)
            return
        assert isinstance(tls, asyncio.Transport)
        self._handshaking = False
        stack.guard.handshake_over()
        stack.stats.connections.handshakes[(self.leg, "completed")] += 1
        if self.clock is not None:
            self.clock.handshake_done()
        self._transport = tls
        self._established()
        if self._early:
            early, self._early = b"".join(self._early), []
            self._drain(early)

    def _handshake_failed(self, raw: asyncio.Transport) -> None:
        if not self._expired:  # the sweep counted its own timeouts
            self._stack.stats.connections.handshakes[(self.leg, "failed")] += 1
        self.closing = True
        raw.abort()
        self._release()

    def _established(self) -> None:
        stack = self._stack
        transport = self._transport
        assert transport is not None
        cap = stack.guard.limits.max_write_buffer
        transport.set_write_buffer_limits(high=min(65536, cap // 2))
        self.conn_id = stack._register(self)
        if self.inbound and self.peer is not None:
            # Responses and requests toward this peer may reuse the connection.
            stack._by_peer.setdefault((self.kind, *self.peer), self.conn_id)

    def expire(self, reason: str) -> None:
        """A deadline of :attr:`clock` passed (called by the stack's sweep)."""
        stats = self._stack.stats.connections
        self._expired = True
        stats.closed[(self.leg, reason)] += 1
        if self._handshaking:
            stats.handshakes[(self.leg, "timeout")] += 1
        log.debug("sip_connection_expired", leg=self.leg, peer=self._peer(), reason=reason)
        self.abort()

    # -- reading -------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closing or self.peer is None:
            return
        if self._handshaking:
            # Decrypted data can come in the same pass as the handshake's end, before
            # start_tls returns the TLS transport: keep it for then.
            self._early.append(data)
            return
        self._drain(data)

    def _drain(self, data: bytes = b"") -> None:
        self._next = None
        if self.closing or self.peer is None:
            return
        stack = self._stack
        budget = stack.guard.limits.read_budget
        framer = self._framer
        frames = framer.feed(data, budget)
        source = Target(self.kind, self.peer[0], self.peer[1], self.conn_id)
        messages = pings = 0
        for frame in frames:
            if self.closing:
                return  # closed by what the previous message caused
            if isinstance(frame, Ping):
                pings += 1
                self.write(b"\r\n")  # RFC 5626 section 3.5.1 pong
            elif isinstance(frame, FramingError):
                self._on_framing_error(frame, source)
                return
            else:
                messages += 1
                stack._on_bytes(frame, source, self.leg, datagram=False)
        if self.closing:
            return
        if self.clock is not None:
            self.clock.received(stack._loop.time(), messages, pings, framer.buffered)
        transport = self._transport
        if len(frames) >= budget and framer.buffered:
            # More may be whole already: let the loop serve others, then take the next batch.
            if not self._read_paused and transport is not None:
                self._read_paused = True
                transport.pause_reading()
            self._next = stack._loop.call_soon(self._drain)
        elif self._read_paused:
            self._read_paused = False
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _on_framing_error(self, err: FramingError, source: Target) -> None:
        stack = self._stack
        partial: Request | None = None
        if err.head:
            # Answer from the header section when it parses (the body is what is wrong).
            try:
                parsed = _parse_message(err.head, datagram=True)
            except SipParseError as inner:
                partial = inner.partial
            else:
                partial = parsed if isinstance(parsed, Request) else None
        status = 513 if "large" in err.reason else 400
        stack._on_parse_error(
            SipParseError(err.reason, status=status, partial=partial), source, self.leg
        )
        # The stream cannot be resynchronised: close after the answer is written.
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    # -- writing -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._handshaking:
            return
        transport.write(data)
        if self._write_paused:
            cap = self._stack.guard.limits.max_write_buffer
            if transport.get_write_buffer_size() > cap:
                self._overflow(cap)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    def _overflow(self, cap: int) -> None:
        self._stack.stats.connections.closed[(self.leg, "write_buffer")] += 1
        if self._stack.log_limiter.allow(("write_buffer", self.peer)) is not None:
            log.warning("sip_write_buffer_full", leg=self.leg, peer=self._peer(), cap=cap)
        self.abort()

    # -- closing -------------------------------------------------------------------
    def close(self) -> None:
        self.closing = True
        if self._handshaking and self._tls_task is not None:
            self._tls_task.cancel()
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.abort()  # during the handshake: the raw transport, start_tls fails

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        stack = self._stack
        if self._next is not None:
            self._next.cancel()
            self._next = None
        stack._inbound.discard(self)
        if self._counted:
            stack.stats.connections.open[(self.leg, self.kind)] -= 1
        if self._admitted:
            stack.guard.release(self.peer[0] if self.peer else "", handshaking=self._handshaking)
            self._handshaking = False
        if self.conn_id:
            stack._unregister(self)

    def _peer(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "?"
