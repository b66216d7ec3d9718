"""SIP over TLS plumbing for the Meta emulator: connections, a listener, dispatch.

Messages are parsed with the project's own parser (``gateway.sip.message``)
and framed with ``gateway.sip.framing``; everything above that (transactions,
dialogs) is the emulator's own, deliberately simple: TLS is reliable, so
there are no retransmission timers except the UAS's 2xx retransmission.

Messages the emulator sends are rendered from ``(name, value)`` lines as given,
so header names keep the exact case Meta uses (``x-wa-meta-wacid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from gateway.sip.framing import FramingError, Ping, StreamFramer
from gateway.sip.message import Request, Response, SipParseError, parse_message
from tests.emulator.tlsutil import EmulatorTls

Message = Request | Response


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(8)


def render(start: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """Wire form of a message: header lines exactly as given, Content-Length last."""
    lines = [start]
    lines += [f"{n}: {v}" for n, v in headers if n.lower() not in ("content-length", "l")]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def response_lines(resp: Response) -> list[tuple[str, str]]:
    return [(n, v) for n, v in resp.headers]


def summary(msg: Message) -> str:
    if isinstance(msg, Request):
        return msg.method
    try:
        method = msg.cseq.method
    except ValueError:
        method = "?"
    return f"{msg.status} ({method})"


class CallSink(Protocol):
    """What the edge needs from a call to dispatch to it."""

    def log(self, direction: str, msg: Message, raw: bytes) -> None: ...

    def on_request(self, conn: SipConnection, req: Request) -> None: ...

    def on_stray_response(self, conn: SipConnection, resp: Response) -> None: ...

    def violation(self, text: str) -> None: ...


class SipConnection:
    """One TLS connection (accepted or opened), framed and parsed."""

    def __init__(
        self,
        edge: SipEdge,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        label: str,
    ) -> None:
        self.edge = edge
        self.reader = reader
        self.writer = writer
        self.label = label
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        self.closed = asyncio.Event()
        sslobj = writer.get_extra_info("ssl_object")
        self.tls_version: str | None = sslobj.version() if sslobj is not None else None
        self.alpn: str | None = sslobj.selected_alpn_protocol() if sslobj is not None else None

    def send_raw(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionError(f"{self.label} connection to {self.peer} is closed")
        self.writer.write(data)

    async def run(self) -> None:
        framer = StreamFramer()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for frame in framer.feed(data):
                    if isinstance(frame, Ping):
                        with contextlib.suppress(ConnectionError):
                            self.send_raw(b"\r\n")
                    elif isinstance(frame, FramingError):
                        self.edge.violation(f"SIP framing error from {self.peer}: {frame.reason}")
                        self.abort()
                        return
                    else:
                        self.edge.received(self, frame)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed.set()
            self.abort()

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()
        self.closed.set()


class SipEdge:
    """A TLS SIP listener plus outgoing connections, dispatching by Call-ID and branch."""

    def __init__(
        self,
        tls: EmulatorTls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reject_alpn: bool = True,
        user_agent: str = "Facebook SipGateway",
    ) -> None:
        self.tls = tls
        self.host = host
        self.port = port
        self.reject_alpn = reject_alpn
        self.user_agent = user_agent
        self.violations: list[str] = []
        self.sni_seen: list[str] = []
        self.alpn_rejected = 0
        self.connections: list[SipConnection] = []
        self.calls: dict[str, CallSink] = {}
        self.on_new_request: Callable[[SipConnection, Request, bytes], None] = (
            self.default_new_request
        )
        self._txns: dict[tuple[str, str], asyncio.Queue[tuple[SipConnection, Response]]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.tls.server_context(("sip",) if self.reject_alpn else None, self.sni_seen)
        self._server = await asyncio.start_server(self._accepted, self.host, self.port, ssl=ctx)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = SipConnection(self, reader, writer, "accepted")
        if conn.alpn is not None:
            # Meta aborts the handshake with alert 120 (no_application_protocol).
            self.alpn_rejected += 1
            self.violation(
                f"TLS client {conn.peer[0]}:{conn.peer[1]} offered ALPN ({conn.alpn!r} selected): "
                "Meta aborts such handshakes"
            )
            conn.abort()
            return
        self.connections.append(conn)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await conn.run()
        finally:
            with contextlib.suppress(ValueError):
                self.connections.remove(conn)

    async def connect(
        self, host: str, port: int, ctx: ssl.SSLContext, server_hostname: str | None
    ) -> SipConnection:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=server_hostname or host
        )
        conn = SipConnection(self, reader, writer, "outgoing")
        self.connections.append(conn)
        self.spawn(conn.run())
        return conn

    # -- dispatch --------------------------------------------------------------
    def violation(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)
        for call in list(self.calls.values()):
            call.violation(text)

    def open_txn(self, branch: str, method: str) -> asyncio.Queue[tuple[SipConnection, Response]]:
        q: asyncio.Queue[tuple[SipConnection, Response]] = asyncio.Queue()
        self._txns[(branch, method)] = q
        return q

    def close_txn(self, branch: str, method: str) -> None:
        self._txns.pop((branch, method), None)

    def send(self, conn: SipConnection, data: bytes, call: CallSink | None = None) -> Message:
        """Send ``data`` (one rendered message) on ``conn``, logging it on ``call``."""
        msg = parse_message(data, datagram=False)
        if call is not None:
            call.log("->", msg, data)
        conn.send_raw(data)
        return msg

    def received(self, conn: SipConnection, data: bytes) -> None:
        try:
            msg = parse_message(data, datagram=False)
        except SipParseError as exc:
            self.violation(f"unparsable SIP message from {conn.peer}: {exc.reason}")
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                self._reply_bare(conn, partial, 400, exc.reason)
            return
        call = self.calls.get(msg.call_id)
        if call is not None:
            call.log("<-", msg, data)
        if isinstance(msg, Response):
            try:
                key = (msg.top_via.branch or "", msg.cseq.method)
            except ValueError:
                self.violation("response with an unreadable Via or CSeq")
                return
            q = self._txns.get(key)
            if q is not None:
                q.put_nowait((conn, msg))
            elif call is not None:
                call.on_stray_response(conn, msg)
            return
        if call is not None:
            call.on_request(conn, msg)
        else:
            self.on_new_request(conn, msg, data)

    def _reply_bare(self, conn: SipConnection, req: Request, status: int, reason: str) -> None:
        from gateway.sip.message import make_response  # local: keep the import surface small

        try:
            resp = make_response(req, status, reason[:60], to_tag=new_tag())
        except ValueError:
            return
        with contextlib.suppress(ConnectionError):
            conn.send_raw(render(f"SIP/2.0 {resp.status} {resp.reason}", response_lines(resp)))

    def default_new_request(self, conn: SipConnection, req: Request, raw: bytes = b"") -> None:
        """Out-of-dialog requests when no call matches: OPTIONS 200, ACK ignored, else 481."""
        if req.method == "ACK":
            return
        from gateway.sip.message import make_response

        if req.method == "OPTIONS":
            resp = make_response(req, 200, to_tag=new_tag())
            resp.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS")
            resp.headers.add("Accept", "application/sdp")
        elif req.method == "REGISTER":
            resp = make_response(req, 403, to_tag=new_tag())
        else:
            resp = make_response(req, 481, to_tag=new_tag())
        resp.headers.add("Server", self.user_agent)
        with contextlib.suppress(ConnectionError):
            conn.send_raw(render(f"SIP/2.0 {resp.status} {resp.reason}", response_lines(resp)))
