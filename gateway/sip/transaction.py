"""SIP transactions, sans-IO: RFC 3261 section 17 with RFC 6026 and RFC 3581.

:class:`TransactionManager` owns every client and server transaction. Messages
and the current time go in (``receive``, ``send_request``, ``send_response``,
``handle_timer``); events for the transaction user (TU) come back as return
values and messages to put on the wire are queued for ``pop_outgoing``. The
adapter arms a single timer at ``next_deadline()``. Nothing here reads a clock
or touches a socket.

Timers (section 17, table 4): A/B/D/M client INVITE, E/F/K client non-INVITE,
G/H/I/L server INVITE (plus the 2xx retransmission of section 13.3.1.4, done
here on behalf of the TU), J server non-INVITE, and ``cancel`` (section 9.1:
an INVITE that gets no final response 64*T1 after its CANCEL is given up).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from dataclasses import dataclass
from enum import Enum

from gateway.netaddr import hostport
from gateway.sip.ids import MAGIC_COOKIE, new_branch
from gateway.sip.message import Headers, Request, Response, make_response
from gateway.sip.uri import UriError

TIMER_D = 32.0  # section 17.1.1.2: "at least 32 seconds" on unreliable transports
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes (or came from). ``conn_id`` names a stream connection."""

    transport: str  # "udp" | "tcp" | "tls" (lower case)
    host: str
    port: int
    conn_id: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport.lower() in RELIABLE_TRANSPORTS


@dataclass(frozen=True, slots=True)
class Outgoing:
    message: Request | Response
    target: Target


class TxState(Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026
    TERMINATED = "terminated"


class TransactionStateError(ValueError):
    """The TU asked for something the transaction's state does not allow."""


_Timers = dict[str, tuple[float, int]]


class ClientTransaction:
    """Section 17.1. ``state`` starts at CALLING (INVITE) or TRYING (other methods)."""

    __slots__ = ("_ack", "_cancel_pending", "_interval", "_key", "_ok_tags", "_timers",
                 "branch", "cancel_tx", "last_response", "method", "request", "state",
                 "target")  # fmt: skip

    def __init__(self, request: Request, target: Target, branch: str) -> None:
        self.request = request
        self.target = target
        self.method = request.method
        self.branch = branch
        self.state = TxState.CALLING if self.method == "INVITE" else TxState.TRYING
        self.last_response: Response | None = None
        self.cancel_tx: ClientTransaction | None = None  # the CANCEL sent for this INVITE
        self._key = (branch, self.method)
        self._timers: _Timers = {}
        self._interval = 0.0
        self._ack: Request | None = None  # ACK for a non-2xx final (17.1.1.3)
        self._cancel_pending = False
        self._ok_tags: set[str] = set()  # To tags of 2xx seen in Accepted

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.branch} {self.state.value}>"


class ServerTransaction:
    """Section 17.2. ``state`` starts at PROCEEDING (INVITE) or TRYING (other methods)."""

    __slots__ = ("_acked", "_interval", "_key", "_rkey", "_timers", "last_response",
                 "method", "request", "response_target", "source", "state")  # fmt: skip

    def __init__(
        self, request: Request, source: Target, key: tuple[str, ...], rkey: tuple[str, ...]
    ) -> None:
        self.request = request
        self.source = source
        self.method = request.method
        self.state = TxState.PROCEEDING if self.method == "INVITE" else TxState.TRYING
        self.last_response: Response | None = None
        self.response_target = response_target(request, source)
        self._key = key
        self._rkey = rkey
        self._timers: _Timers = {}
        self._interval = 0.0
        self._acked = False  # an ACK for our 2xx arrived (Accepted state)

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.state.value}>"


Transaction = ClientTransaction | ServerTransaction


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: Request
    source: Target
    tx: ServerTransaction | None  # None for an ACK to a 2xx and for stray ACKs


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response
    tx: ClientTransaction
    retransmission: bool = False  # a 2xx seen again in Accepted: re-send the ACK


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """Already answered with 200 (section 9.2); send 487 on ``invite_tx``."""

    cancel: Request
    invite_tx: ServerTransaction
    source: Target


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """``timer``: "B"/"F" (act as for 408), "cancel" (9.1), "H", "2xx-no-ack" (send BYE)."""

    tx: Transaction
    timer: str


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """Sections 17.1.4 / 17.2.4: treat as 503 (client) or give up (server)."""

    tx: Transaction


Event = RequestReceived | ResponseReceived | CancelReceived | TransactionTimeout | TransportFailure


# ---------------------------------------------------------------------------
# Helpers


def add_via(request: Request, transport: str, host: str, port: int, *, rport: bool = True) -> str:
    """Prepend a Via with a fresh branch (section 8.1.1.7); returns the branch."""
    branch = new_branch()
    value = f"SIP/2.0/{transport.upper()} {hostport(host, port)};branch={branch}"
    if rport:
        value += ";rport"  # RFC 3581 section 3
    request.headers.add("Via", value, first=True)
    return branch


def _bare_host(host: str) -> str:
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def response_target(request: Request, source: Target) -> Target:
    """Where responses to ``request`` go: section 18.2.2 with RFC 3581 section 4."""
    transport = source.transport.lower()
    if source.reliable:
        # 18.2.2: the connection the request came on (the adapter reopens if needed).
        return Target(transport, source.host, source.port, source.conn_id)
    via = request.top_via
    host = via.received.strip("[]") if via.received else source.host
    if via.param("rport") is not None:
        port = source.port  # RFC 3581 section 4: back to the source port
    else:
        port = via.port or (5061 if via.transport.upper() == "TLS" else 5060)
    return Target(transport, host, port)


def _stamp_via(request: Request, source: Target) -> None:
    """Add received (18.2.1) and rport (RFC 3581 section 4) to the top Via, in place."""
    via = request.top_via
    rport = via.param("rport")
    changes: dict[str, str | None] = {}
    if rport is not None or _bare_host(via.host) != _bare_host(source.host):
        # RFC 3581 section 4: with rport, received is added even if equal to sent-by.
        changes["received"] = source.host.strip("[]")  # 25.1: IPv6 without brackets
    if rport == "":
        changes["rport"] = str(source.port)
    if not changes:
        return
    request.headers.pop_first_value("Via")
    request.headers.add("Via", str(via.with_params(**changes)), first=True)


stamp_via = _stamp_via  # for stateless answers (RFC 3261 8.2.7), stamped as a transaction would


def _tag(value: str | None) -> str:
    return value or ""


def _server_key(req: Request) -> tuple[str, ...]:
    """Section 17.2.3 matching key; an ACK maps to its INVITE, method last."""
    via = req.top_via
    method = "INVITE" if req.method == "ACK" else req.method
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, _bare_host(via.host), str(via.port or ""), method)
    # RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via (To tag apart).
    cseq = req.cseq
    return ("2543", req.uri, _tag(req.from_.tag), req.call_id, str(cseq.seq), str(via), method)


def _response_key(msg: Request | Response) -> tuple[str, ...]:
    """Key that finds a server transaction from the response the TU built for it."""
    via = msg.top_via
    branch = via.branch
    cseq = msg.cseq
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, _bare_host(via.host), str(via.port or ""), cseq.method)
    return ("2543r", str(via), msg.call_id, _tag(msg.from_.tag), str(cseq.seq), cseq.method)


def _ack_key(msg: Request | Response) -> tuple[str, str, str, str]:
    """Dialog and CSeq number: how an ACK for a 2xx finds its INVITE (section 13.3.1.4)."""
    return (msg.call_id, str(msg.cseq.seq), _tag(msg.from_.tag), _tag(msg.to.tag))


def _hop_request(invite: Request, method: str, to: str) -> Request:
    """The ACK for a non-2xx final (17.1.1.3) or the CANCEL (9.1) of ``invite``.

    Same Request-URI, Call-ID, From and CSeq number; only the top Via (branch
    included); the Route headers of the INVITE. ``to``: the INVITE's To for a
    CANCEL, the response's (with its tag) for an ACK.
    """
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for route in invite.headers.lines("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", to)
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} {method}")
    return Request(headers=h, method=method, uri=invite.uri)


def _address(t: Target) -> tuple[str, str, int]:
    return (t.transport.lower(), _bare_host(t.host), t.port)


def _same_path(used: Target, failed: Target) -> bool:
    if failed.conn_id is not None and used.conn_id is not None:
        return used.conn_id == failed.conn_id
    return _address(used) == _address(failed)


# ---------------------------------------------------------------------------
# The manager


class TransactionManager:
    def __init__(
        self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0, auto_trying: bool = True
    ) -> None:
        if not (0 < t1 <= t2 and t4 > 0):
            raise ValueError("timer values must satisfy 0 < T1 <= T2 and T4 > 0")
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.auto_trying = auto_trying
        self.stray_responses = 0
        self._client: dict[tuple[str, str], ClientTransaction] = {}
        self._server: dict[tuple[str, ...], ServerTransaction] = {}
        self._server_r: dict[tuple[str, ...], ServerTransaction] = {}
        self._accepted: dict[tuple[str, str, str, str], ServerTransaction] = {}
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._seq = itertools.count()
        self._out: list[Outgoing] = []

    response_target = staticmethod(response_target)

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    @property
    def server_count(self) -> int:
        return len(self._server)

    # -- plumbing -----------------------------------------------------------
    def pop_outgoing(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def _send(self, message: Request | Response, target: Target) -> None:
        self._out.append(Outgoing(message, target))

    def _arm(self, tx: Transaction, name: str, delay: float, now: float) -> None:
        entry = (now + delay, next(self._seq))
        tx._timers[name] = entry
        heapq.heappush(self._heap, (entry[0], entry[1], tx, name))

    @staticmethod
    def _disarm(tx: Transaction, *names: str) -> None:
        for name in names:
            tx._timers.pop(name, None)

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, seq, tx, name = self._heap[0]
            if tx._timers.get(name) == (deadline, seq):
                return deadline
            heapq.heappop(self._heap)  # stale: disarmed, re-armed or terminated
        return None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, seq, tx, name = heapq.heappop(self._heap)
            if tx._timers.get(name) != (deadline, seq):
                continue
            del tx._timers[name]
            if isinstance(tx, ClientTransaction):
                events += self._client_timer(tx, name, now)
            else:
                events += self._server_timer(tx, name, now)
        return events

    def _terminate(self, tx: Transaction) -> None:
        tx.state = TxState.TERMINATED
        tx._timers.clear()
        if isinstance(tx, ClientTransaction):
            if self._client.get(tx._key) is tx:
                del self._client[tx._key]
            return
        if self._server.get(tx._key) is tx:
            del self._server[tx._key]
        if self._server_r.get(tx._rkey) is tx:
            del self._server_r[tx._rkey]
        if tx.last_response is not None and 200 <= tx.last_response.status < 300:
            akey = _ack_key(tx.last_response)
            if self._accepted.get(akey) is tx:
                del self._accepted[akey]

    def _finish(self, tx: Transaction, name: str, delay: float, now: float) -> None:
        """Enter a wait-then-terminate state; a zero wait (reliable) ends at once."""
        if delay > 0:
            self._arm(tx, name, delay, now)
        else:
            self._terminate(tx)

    def transport_error(self, target: Target, now: float) -> list[Event]:
        """The adapter could not send to ``target``: fail the transactions using it."""
        events: list[Event] = []
        live = (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)
        for ctx in list(self._client.values()):
            if ctx.state in live and _same_path(ctx.target, target):
                self._terminate(ctx)
                events.append(TransportFailure(ctx))
        for stx in list(self._server.values()):
            pending = stx.state in live or (stx.state is TxState.ACCEPTED and not stx._acked)
            if pending and _same_path(stx.response_target, target):
                self._terminate(stx)
                events.append(TransportFailure(stx))
        return events

    def send_stateless(self, message: Request | Response, target: Target) -> None:
        self._send(message, target)

    # -- client side (17.1) -------------------------------------------------
    def send_request(self, request: Request, target: Target, now: float) -> ClientTransaction:
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction (use send_stateless)")
        branch = request.top_via.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("request needs a top Via with an RFC 3261 branch (use add_via)")
        tx = ClientTransaction(request, target, branch)
        if tx._key in self._client:
            raise ValueError(f"branch {branch} already in use for {tx.method}")
        self._client[tx._key] = tx
        self._send(request, target)
        tx._interval = self.t1
        invite = tx.method == "INVITE"
        if not target.reliable:  # 17.1.1.2 / 17.1.2.2: retransmit on unreliable only
            self._arm(tx, "A" if invite else "E", self.t1, now)
        self._arm(tx, "B" if invite else "F", 64 * self.t1, now)
        return tx

    def cancel(self, tx: ClientTransaction, now: float) -> ClientTransaction | None:
        """CANCEL a pending INVITE (section 9.1).

        Returns the CANCEL's transaction, or None when it is deferred until the
        first provisional response (then found later in ``tx.cancel_tx``) or
        when the INVITE already has a final response (nothing to cancel).
        """
        if tx.method != "INVITE":
            raise ValueError("only INVITE transactions are cancelled")  # 9.1: SHOULD NOT
        if tx.cancel_tx is not None or tx._cancel_pending:
            return tx.cancel_tx
        if tx.state is TxState.CALLING:
            tx._cancel_pending = True  # 9.1: wait for a provisional response
            return None
        if tx.state is TxState.PROCEEDING:
            return self._send_cancel(tx, now)
        return None

    def _send_cancel(self, tx: ClientTransaction, now: float) -> ClientTransaction:
        tx._cancel_pending = False
        cancel = _hop_request(tx.request, "CANCEL", tx.request.headers.get("To") or "")
        tx.cancel_tx = self.send_request(cancel, tx.target, now)
        # 9.1: no final response 64*T1 after the CANCEL: destroy the INVITE transaction.
        self._arm(tx, "cancel", 64 * self.t1, now)
        return tx.cancel_tx

    def _receive_response(self, resp: Response, now: float) -> list[Event]:
        try:
            branch = resp.top_via.branch
            method = resp.cseq.method
        except UriError:
            branch = method = None
        tx = self._client.get((branch, method)) if branch and method else None
        if tx is None:
            self.stray_responses += 1
            return []
        if tx.method == "INVITE":
            return self._invite_response(tx, resp, now)
        if tx.state not in (TxState.TRYING, TxState.PROCEEDING):
            return []  # Completed: retransmissions absorbed (17.1.2.2)
        tx.last_response = resp
        if resp.status < 200:
            tx.state = TxState.PROCEEDING
        else:
            self._disarm(tx, "E", "F")
            tx.state = TxState.COMPLETED
            self._finish(tx, "K", 0 if tx.target.reliable else self.t4, now)
        return [ResponseReceived(resp, tx)]

    def _invite_response(self, tx: ClientTransaction, resp: Response, now: float) -> list[Event]:
        code = resp.status
        if tx.state in (TxState.CALLING, TxState.PROCEEDING):
            tx.last_response = resp
            if code < 200:
                tx.state = TxState.PROCEEDING
                self._disarm(tx, "A", "B")  # 17.1.1.2: B only guards Calling
                if tx._cancel_pending:
                    self._send_cancel(tx, now)
                return [ResponseReceived(resp, tx)]
            self._disarm(tx, "A", "B", "cancel")
            tx._cancel_pending = False
            if code < 300:
                tx.state = TxState.ACCEPTED  # RFC 6026 section 7.2
                tx._ok_tags.add(_tag(resp.to.tag))
                self._arm(tx, "M", 64 * self.t1, now)
                return [ResponseReceived(resp, tx)]
            tx._ack = _hop_request(tx.request, "ACK", resp.headers.get("To") or "")
            self._send(tx._ack, tx.target)
            tx.state = TxState.COMPLETED
            self._finish(tx, "D", 0 if tx.target.reliable else TIMER_D, now)
            return [ResponseReceived(resp, tx)]
        if tx.state is TxState.COMPLETED:
            if code >= 300 and tx._ack is not None:
                self._send(tx._ack, tx.target)  # 17.1.1.2: ACK every retransmission
            return []
        if tx.state is TxState.ACCEPTED and 200 <= code < 300:
            # RFC 6026: pass every 2xx up; a new To tag is another fork, not a retransmission.
            tag = _tag(resp.to.tag)
            seen = tag in tx._ok_tags
            tx._ok_tags.add(tag)
            return [ResponseReceived(resp, tx, seen)]
        return []

    def _client_timer(self, tx: ClientTransaction, name: str, now: float) -> list[Event]:
        if name == "A" and tx.state is TxState.CALLING:
            self._send(tx.request, tx.target)
            tx._interval *= 2  # 17.1.1.2: doubles without a cap
            self._arm(tx, "A", tx._interval, now)
        elif name == "E" and tx.state in (TxState.TRYING, TxState.PROCEEDING):
            self._send(tx.request, tx.target)
            # 17.1.2.2: min(2*E, T2) in Trying, T2 in Proceeding
            if tx.state is TxState.TRYING:
                tx._interval = min(2 * tx._interval, self.t2)
            else:
                tx._interval = self.t2
            self._arm(tx, "E", tx._interval, now)
        elif name in ("B", "F", "cancel"):
            self._terminate(tx)
            return [TransactionTimeout(tx, name)]
        elif name in ("D", "K", "M"):
            self._terminate(tx)
        return []

    # -- server side (17.2) -------------------------------------------------
    def receive(self, msg: Request | Response, source: Target, now: float) -> list[Event]:
        """Feed one message as returned by ``parse_message``."""
        if isinstance(msg, Response):
            return self._receive_response(msg, now)
        key = _server_key(msg)
        tx = self._match(msg, key)
        if msg.method == "ACK":
            return self._receive_ack(msg, source, tx, now)
        if tx is not None:
            # 17.2.1 / 17.2.2: a retransmission; re-send the last response if any.
            resend = tx.state in (TxState.PROCEEDING, TxState.COMPLETED)
            if resend and tx.last_response is not None:
                self._send(tx.last_response, tx.response_target)
            return []  # RFC 6026: absorbed in Accepted, Confirmed; Trying: discarded
        tx = self._new_server(msg, source, key)
        if msg.method == "CANCEL":
            return self._receive_cancel(tx, key, now)
        events: list[Event] = [RequestReceived(msg, source, tx)]
        if msg.method == "INVITE" and self.auto_trying:
            trying = make_response(msg, 100)  # 17.2.1
            for stamp in msg.headers.lines("Timestamp"):
                trying.headers.add("Timestamp", stamp)  # 8.2.6.1
            self._respond(tx, trying, now)
        return events

    def _match(self, req: Request, key: tuple[str, ...]) -> ServerTransaction | None:
        tx = self._server.get(key)
        if tx is None or key[0] != "2543":
            return tx
        # RFC 2543 fallback (17.2.3): the To tag must match too; an ACK's that of our response.
        if req.method == "ACK" and tx.last_response is not None:
            expected = tx.last_response.to.tag
        else:
            expected = tx.request.to.tag
        return tx if req.to.tag == expected else None

    def _new_server(self, req: Request, source: Target, key: tuple[str, ...]) -> ServerTransaction:
        _stamp_via(req, source)
        tx = ServerTransaction(req, source, key, _response_key(req))
        self._server[key] = tx
        self._server_r[tx._rkey] = tx
        return tx

    def _receive_ack(
        self, ack: Request, source: Target, tx: ServerTransaction | None, now: float
    ) -> list[Event]:
        if tx is not None and tx.state is TxState.COMPLETED:
            # 17.2.1: ACK for our non-2xx final.
            tx.state = TxState.CONFIRMED
            self._disarm(tx, "G", "H")
            self._finish(tx, "I", 0 if tx.response_target.reliable else self.t4, now)
            return []
        accepted = tx if tx is not None and tx.state is TxState.ACCEPTED else None
        accepted = accepted or self._accepted.get(_ack_key(ack))
        if accepted is not None:
            if accepted._acked:
                return []  # a retransmitted ACK: the TU has seen the first
            accepted._acked = True
            self._disarm(accepted, "2xx")  # 13.3.1.4: stop retransmitting the 2xx
            return [RequestReceived(ack, source, None)]
        if tx is not None:
            return []  # Confirmed or Proceeding: absorbed
        return [RequestReceived(ack, source, None)]  # stray: let the dialog layer judge

    def _receive_cancel(
        self, ctx: ServerTransaction, key: tuple[str, ...], now: float
    ) -> list[Event]:
        cancel = ctx.request
        invite = self._server.get((*key[:-1], "INVITE"))  # 9.2: match as if not CANCEL
        if invite is not None and key[0] == "2543" and cancel.to.tag != invite.request.to.tag:
            invite = None
        if invite is None:
            self._respond(ctx, make_response(cancel, 481), now)  # 9.2
            return []
        last = invite.last_response
        # 9.2: the To tag of the 200 SHOULD equal that of the INVITE's responses.
        self._respond(ctx, make_response(cancel, 200, to_tag=last.to.tag if last else None), now)
        if invite.state is TxState.PROCEEDING:
            return [CancelReceived(cancel, invite, ctx.source)]
        return []  # a final response was already sent: the CANCEL has no effect

    def send_response(self, response: Response, now: float) -> None:
        """Send the TU's response on its server transaction (KeyError if none)."""
        tx = self._server_r.get(_response_key(response))
        if tx is None:
            raise KeyError(f"no server transaction for {response!r}")
        self._respond(tx, response, now)

    def _respond(self, tx: ServerTransaction, resp: Response, now: float) -> None:
        code = resp.status
        reliable = tx.response_target.reliable
        if tx.method == "INVITE":
            if tx.state is TxState.ACCEPTED and 200 <= code < 300:
                self._send(resp, tx.response_target)  # RFC 6026 section 7.1
                return
            if tx.state is not TxState.PROCEEDING:
                raise TransactionStateError(f"{code} not allowed in {tx.state.value}")
            tx.last_response = resp
            self._send(resp, tx.response_target)
            if code < 200:
                return
            tx._interval = self.t1
            if code < 300:
                tx.state = TxState.ACCEPTED
                self._accepted[_ack_key(resp)] = tx
                self._arm(tx, "2xx", self.t1, now)  # 13.3.1.4, on every transport
                self._arm(tx, "L", 64 * self.t1, now)
            else:
                tx.state = TxState.COMPLETED
                if not reliable:
                    self._arm(tx, "G", self.t1, now)
                self._arm(tx, "H", 64 * self.t1, now)
            return
        if tx.state not in (TxState.TRYING, TxState.PROCEEDING):
            raise TransactionStateError(f"{code} not allowed in {tx.state.value}")
        tx.last_response = resp
        self._send(resp, tx.response_target)
        if code < 200:
            tx.state = TxState.PROCEEDING
        else:
            tx.state = TxState.COMPLETED
            self._finish(tx, "J", 0 if reliable else 64 * self.t1, now)  # 17.2.2

    def _server_timer(self, tx: ServerTransaction, name: str, now: float) -> list[Event]:
        last = tx.last_response
        if name in ("G", "2xx") and last is not None:
            self._send(last, tx.response_target)
            tx._interval = min(2 * tx._interval, self.t2)  # 17.2.1 / 13.3.1.4
            self._arm(tx, name, tx._interval, now)
        elif name == "H":
            self._terminate(tx)
            return [TransactionTimeout(tx, "H")]
        elif name == "L":
            self._terminate(tx)
            if not tx._acked:
                return [TransactionTimeout(tx, "2xx-no-ack")]
        elif name in ("I", "J"):
            self._terminate(tx)
        return []
