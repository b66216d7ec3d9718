"""asyncio adapter for SIP over UDP, TCP and TLS.

This is the thin layer between sockets and the sans-IO core: it receives bytes,
checks the source against the listener's access list before parsing anything
(on stream listeners before the TLS handshake, with the connection caps of
:mod:`gateway.transport.guard`), frames and parses messages, hands them to the
:class:`TransactionManager`, passes the resulting events to the application,
sends what the core queued, and arms the core's single timer. It holds no SIP
logic of its own. Stream connections are :mod:`gateway.transport.stream`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
import ssl
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.logging import LogLimiter, get_logger
from gateway.sip.message import (
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    make_response,
)
from gateway.sip.message import (
    parse_message as _parse_message,
)
from gateway.sip.transaction import Event, Outgoing, Target, TransactionManager, response_target
from gateway.transport.guard import ConnectionGuard, ConnectionLimits, ConnectionStats
from gateway.transport.stream import StreamProtocol

log = get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SWEEP = 0.25  # seconds between checks of the inbound stream connections' deadlines
LOG_EVERY = 5.0  # at most one parse-error line per source this often
UDP_DRAIN = 64  # SIP datagrams read per readable event (as many as an RTP socket drains)
UDP_RECV_SIZE = 65536  # larger than any UDP datagram
MAX_PEER_LEGS = 4096  # UDP peers whose leg (listener socket) is remembered


@dataclass
class SipStats:
    """Plain counters read by the metrics collector at scrape time (no metrics import here)."""

    parse_errors: Counter[str] = field(default_factory=Counter)
    rejected_sources: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)
    connections: ConnectionStats = field(default_factory=ConnectionStats)


class AccessList:
    """Source-address allow list, checked before any parsing (cheap, no allocation per hit)."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        hit = self._cache.get(host)
        if hit is None:
            try:
                addr = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                hit = False
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                    addr = addr.ipv4_mapped
                hit = any(addr in net for net in self._networks)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = hit
        return hit


EventHandler = Callable[[Event, str], None]
"""Called with each core event and the leg name of the listener it came in on."""

Screen = Callable[[Request, Target, str, float], Sequence[Outgoing] | None]
"""Called with each request (source, leg, now) before the transaction layer sees it: None
lets it in; a sequence means it was handled statelessly (answers sent, maybe none)."""


class SipStack:
    """Owns the listeners, the connections and the transaction manager's timer."""

    def __init__(
        self,
        manager: TransactionManager,
        handler: EventHandler,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        client_ssl: ssl.SSLContext | None = None,
        stats: SipStats | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.manager = manager
        self._handler = handler
        self._max = max_message_size
        self._client_ssl = client_ssl
        self.stats = stats or SipStats()
        self.guard = ConnectionGuard(limits or ConnectionLimits())
        self._loop = asyncio.get_running_loop()
        self.log_limiter = LogLimiter(LOG_EVERY, clock=self._loop.time)
        self._inbound: set[StreamProtocol] = set()  # admitted, handshaking or not
        self._sweeper: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._udp: dict[str, _UdpListener] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, StreamProtocol] = {}
        self._by_peer: dict[tuple[str, str, int], int] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._pending: dict[tuple[str, str, int], list[bytes]] = {}
        self._ids = itertools.count(1)
        self.local: dict[str, tuple[str, str, int]] = {}  # leg -> (transport, host, port)
        self._leg_of_peer: dict[tuple[str, str, int], str] = {}
        self.screen: Screen | None = None  # overload control (gateway.ops.admission)
        self.prescreen: Callable[[bytes, Target, str, float], bool] | None = None

    # -- listeners ---------------------------------------------------------
    async def listen_udp(self, leg: str, host: str, port: int, acl: AccessList) -> tuple[str, int]:
        infos = await self._loop.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned nothing")
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        listener = _UdpListener(self, leg, acl, sock)
        self._udp[leg] = listener
        bound = int(sock.getsockname()[1])
        self.local.setdefault(leg, ("udp", host, bound))
        return host, bound

    async def listen_stream(
        self,
        leg: str,
        host: str,
        port: int,
        acl: AccessList,
        ssl_context: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        kind = "tls" if ssl_context else "tcp"
        # Accepted as plain TCP: the source and the caps are checked before any TLS.
        server = await self._loop.create_server(
            lambda: StreamProtocol(self, leg, kind, acl, inbound=True, ssl_context=ssl_context),
            host,
            port,
            reuse_address=True,
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP, self._sweep)
        bound = server.sockets[0].getsockname()[1]
        self.local.setdefault(leg, (kind, host, int(bound)))
        return host, int(bound)

    def set_peer_leg(self, transport: str, host: str, port: int, leg: str) -> None:
        """Name the leg of outbound connections to a peer (for metrics and logs)."""
        self._leg_of_peer[(transport, host, port)] = leg

    async def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self._sweeper:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for conn in {*self._conns.values(), *self._inbound}:
            conn.close()
        for udp in self._udp.values():
            udp.close()
        for task in self._connecting.values():
            task.cancel()
        for server in self._servers:
            await server.wait_closed()

    # -- inbound -----------------------------------------------------------
    def _on_bytes(self, data: bytes, source: Target, leg: str, datagram: bool) -> None:
        if self.prescreen is not None and not self.prescreen(data, source, leg, self._loop.time()):
            return  # a flood, dropped unparsed
        try:
            msg = _parse_message(data, max_size=self._max, datagram=datagram)
        except SipParseError as exc:
            self._on_parse_error(exc, source, leg)
            return
        self._dispatch(msg, source, leg)

    def _on_parse_error(self, exc: SipParseError, source: Target, leg: str) -> None:
        self.stats.parse_errors[leg] += 1
        suppressed = self.log_limiter.allow(("parse", source.host))
        if suppressed is not None:  # a line per source every LOG_EVERY s, with the count left out
            log.info(
                "sip_parse_error",
                leg=leg,
                peer=f"{source.host}:{source.port}",
                reason=exc.reason,
                suppressed=suppressed,
            )
        req = exc.partial
        if req is None or req.method == "ACK":
            return  # section 17.1.3 / 18: nothing we can answer
        try:
            resp = make_response(req, exc.status, exc.reason if exc.status == 400 else None)
            target = response_target(req, source)
        except Exception:
            return
        self.send(Outgoing(resp, target))

    def _dispatch(self, msg: Request | Response, source: Target, leg: str) -> None:
        if isinstance(msg, Request):
            self.stats.requests[(leg, msg.method)] += 1
        else:
            self.stats.responses[(leg, msg.status)] += 1
        now = self._loop.time()
        if self.screen is not None and isinstance(msg, Request):
            handled = self.screen(msg, source, leg, now)
            if handled is not None:
                for out in handled:
                    self.send(out)
                return
        try:
            events = self.manager.receive(msg, source, now)
        except Exception:
            log.exception("sip_core_error", leg=leg, call_id=msg.call_id)
            events = []
        self._deliver(events, leg)

    def _deliver(self, events: Sequence[Event], leg: str) -> None:
        for event in events:
            try:
                self._handler(event, leg)
            except Exception:
                log.exception("sip_handler_error", leg=leg, sip_event=type(event).__name__)
        self.flush()

    # -- outbound ----------------------------------------------------------
    def flush(self) -> None:
        """Send everything the core queued and re-arm its timer."""
        for out in self.manager.pop_outgoing():
            self.send(out)
        self._arm_timer()

    def send(self, out: Outgoing) -> None:
        data = out.message.to_bytes()
        target = out.target
        if target.transport == "udp":
            udp = self._udp_for(target)
            if udp is None:
                log.warning("sip_no_udp_socket", peer=f"{target.host}:{target.port}")
                return
            udp.sendto(data, (target.host, target.port))
            return
        conn = self._conns.get(target.conn_id) if target.conn_id is not None else None
        if conn is None or conn.closing:
            key = (target.transport, target.host, target.port)
            cid = self._by_peer.get(key)
            conn = self._conns.get(cid) if cid is not None else None
        if conn is not None and not conn.closing:
            conn.write(data)
            return
        self._connect_and_send(target, data)

    def _udp_for(self, target: Target) -> _UdpListener | None:
        leg = self._leg_of_peer.get(("udp", target.host, target.port))
        if leg and leg in self._udp:
            return self._udp[leg]
        return next(iter(self._udp.values()), None)

    def _connect_and_send(self, target: Target, data: bytes) -> None:
        key = (target.transport, target.host, target.port)
        self._pending.setdefault(key, []).append(data)
        if key not in self._connecting:
            self._connecting[key] = self._loop.create_task(self._connect(key))

    async def _connect(self, key: tuple[str, str, int]) -> None:
        transport_kind, host, port = key
        leg = self._leg_of_peer.get(key, "pbx" if transport_kind == "tcp" else "whatsapp")
        ctx = self._client_ssl if transport_kind == "tls" else None
        try:
            if transport_kind == "tls" and ctx is None:
                raise ConnectionError("no TLS client context configured")
            _, proto = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: StreamProtocol(self, leg, transport_kind, None, inbound=False),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=host if ctx else None,
                ),
                timeout=10.0,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.warning("sip_connect_failed", leg=leg, peer=f"{host}:{port}", error=str(exc))
            self._pending.pop(key, None)
            self._connecting.pop(key, None)
            events = self.manager.transport_error(
                Target(transport_kind, host, port), self._loop.time()
            )
            self._deliver(events, leg)
            return
        self._connecting.pop(key, None)
        self._by_peer[key] = proto.conn_id
        for data in self._pending.pop(key, []):
            proto.write(data)

    # -- timer -------------------------------------------------------------
    def _arm_timer(self) -> None:
        deadline = self.manager.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            events = self.manager.handle_timer(self._loop.time())
        except Exception:
            log.exception("sip_timer_error")
            events = []
        self._deliver(events, "timer")

    def _sweep(self) -> None:
        """Close the inbound stream connections whose deadline has passed."""
        now = self._loop.time()
        for conn in [c for c in self._inbound if c.clock is not None]:
            assert conn.clock is not None
            why = conn.clock.expired(now)
            if why is not None and not conn.closing:
                conn.expire(why)
        self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    # -- connection registry -------------------------------------------------
    def _register(self, conn: StreamProtocol) -> int:
        cid = next(self._ids)
        self._conns[cid] = conn
        return cid

    def _unregister(self, conn: StreamProtocol) -> None:
        self._conns.pop(conn.conn_id, None)
        if conn.peer is not None:
            key = (conn.kind, conn.peer[0], conn.peer[1])
            if self._by_peer.get(key) == conn.conn_id:
                del self._by_peer[key]
            if not conn.inbound:
                return
        # Inbound connections that die fail transactions using them only when a send fails later.

    @property
    def connection_count(self) -> int:
        return len(self._conns)


class _UdpListener:
    """SIP over UDP on a plain non-blocking socket watched with ``loop.add_reader``.

    A readable event drains up to :data:`UDP_DRAIN` datagrams, as an RTP socket does
    (asyncio's datagram transport reads one per loop pass: under media load a PBX's
    responses then waited behind hundreds of RTP sockets' worth of passes, seconds
    at saturation). Each datagram goes through the access list before any parsing.
    A send that would block is queued and written when the socket is writable (SIP
    is not late audio: it is not dropped)."""

    def __init__(self, stack: SipStack, leg: str, acl: AccessList, sock: socket.socket) -> None:
        self._stack = stack
        self._leg = leg
        self._acl = acl
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = stack._loop
        self._buf = bytearray(UDP_RECV_SIZE)
        self._view = memoryview(self._buf)
        self._out: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._closed = False
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recv = self._sock.recvfrom_into
        buf, view = self._buf, self._view
        stack, leg, acl = self._stack, self._leg, self._acl
        for _ in range(UDP_DRAIN):
            if self._closed:
                return  # closed by what the previous datagram caused
            try:
                size, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp_error", leg=leg, error=str(exc))
                continue  # an ICMP error reported on the socket; it is consumed
            host, port = str(addr[0]), int(addr[1])
            if not acl.allows(host):
                stack.stats.rejected_sources[leg] += 1
                continue
            peers = stack._leg_of_peer
            if len(peers) < MAX_PEER_LEGS:  # answer and send to a peer from its own leg's socket
                peers.setdefault(("udp", host, port), leg)
            data = bytes(view[:size])
            if data.strip(b"\r\n") == b"":
                continue  # keep-alive (RFC 5626 STUN-less CRLF on UDP): ignore
            try:
                stack._on_bytes(data, Target("udp", host, port), leg, datagram=True)
            except Exception:
                log.exception("sip_udp_handler_error", leg=leg, peer=f"{host}:{port}")

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            return
        if not self._out:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._writable)
            except OSError as exc:
                log.debug("udp_error", leg=self._leg, error=str(exc))
                return
        self._out.append((data, addr))

    def _writable(self) -> None:
        out = self._out
        while out:
            data, addr = out[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp_error", leg=self._leg, error=str(exc))
            out.popleft()
        self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._out:
            self._out.clear()
            self._loop.remove_writer(self._fd)
        self._sock.close()
