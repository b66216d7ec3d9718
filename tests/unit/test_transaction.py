"""Transaction layer (RFC 3261 section 17, RFC 6026, RFC 3581) driven by a fake clock."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.message import Request, Response, make_response, parse_message
from gateway.sip.transaction import (
    CancelReceived,
    ClientTransaction,
    Event,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    Target,
    TransactionManager,
    TransactionStateError,
    TransactionTimeout,
    TransportFailure,
    TxState,
    add_via,
    response_target,
)

PBX = Target("udp", "192.0.2.10", 5060)
META = Target("tls", "157.240.19.1", 41234, conn_id=7)
CALL_ID = "3848276298220188511@pbx.example.com"


# -- helpers ---------------------------------------------------------------


def req(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK74bf9",
    via: str = "SIP/2.0/UDP 192.0.2.10:5060",
    via_params: str = "",
    cseq: int = 1,
    to_tag: str | None = None,
    uri: str = "sip:+14155550100@gw.example.com",
    extra: str = "",
) -> Request:
    branch_param = f";branch={branch}" if branch else ""
    to = "<sip:+14155550100@gw.example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}{branch_param}{via_params}\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:+12195550714@pbx.example.com>;tag=9fxced76sl\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {CALL_ID}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@192.0.2.10:5060>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def outbound(method: str = "INVITE", transport: str = "udp", *, extra: str = "") -> Request:
    """A request as the gateway builds it: no Via until add_via."""
    text = (
        f"{method} sip:+14155550100@pbx.example.com SIP/2.0\r\n"
        "Route: <sip:edge1.example.com;lr>\r\n"
        "Route: <sip:edge2.example.com;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+12195550714@gw.example.com>;tag=gw-tag-1\r\n"
        "To: <sip:+14155550100@pbx.example.com>\r\n"
        "Call-ID: out-call-1@gw.example.com\r\n"
        f"CSeq: 101 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    # parse_message insists on a Via: add one, parse, then drop it again.
    with_via = text.replace("Max-Forwards", "Via: SIP/2.0/UDP x;branch=z\r\nMax-Forwards", 1)
    msg = parse_message(with_via.encode())
    assert isinstance(msg, Request)
    msg.headers.remove("Via")
    add_via(msg, transport, "203.0.113.5", 5060 if transport == "udp" else 5061)
    return msg


def reply(
    request: Request, status: int, *, to_tag: str | None = "pbx-tag-1", reason: str | None = None
) -> Response:
    """A response as it would arrive from the wire (serialised and parsed back)."""
    msg = parse_message(make_response(request, status, reason, to_tag=to_tag).to_bytes())
    assert isinstance(msg, Response)
    return msg


class Clock:
    """Plays the adapter: one timer at next_deadline(), handle_timer when it fires."""

    def __init__(self, mgr: TransactionManager) -> None:
        self.mgr = mgr
        self.now = 0.0

    def run_until(self, t: float) -> tuple[list[Event], list[tuple[float, Outgoing]]]:
        events: list[Event] = []
        sent: list[tuple[float, Outgoing]] = []
        while (deadline := self.mgr.next_deadline()) is not None and deadline <= t:
            assert deadline >= self.now
            self.now = deadline
            events += self.mgr.handle_timer(deadline)
            sent += [(deadline, o) for o in self.mgr.pop_outgoing()]
        self.now = t
        return events, sent


def state(tx: ClientTransaction | ServerTransaction) -> TxState:
    """The state, read through a call so that mypy does not keep a stale narrowing."""
    return tx.state


def times(sent: list[tuple[float, Outgoing]]) -> list[float]:
    return [round(t, 6) for t, _ in sent]


def statuses(out: list[Outgoing]) -> list[int]:
    return [o.message.status for o in out if isinstance(o.message, Response)]


@pytest.fixture
def mgr() -> TransactionManager:
    return TransactionManager()


@pytest.fixture
def clock(mgr: TransactionManager) -> Clock:
    return Clock(mgr)


# -- ids and helpers -------------------------------------------------------


def test_add_via_prepends_fresh_branch() -> None:
    r = req("OPTIONS")
    branch = add_via(r, "tls", "203.0.113.5", 5061)
    assert branch.startswith("z9hG4bK") and len(branch) >= 27
    assert r.top_via.transport == "TLS"
    assert (r.top_via.host, r.top_via.port, r.top_via.branch) == ("203.0.113.5", 5061, branch)
    assert r.top_via.param("rport") == ""
    assert len(r.vias) == 2
    assert add_via(r, "udp", "2001:db8::5", 5060, rport=False) != branch
    assert r.top_via.host == "[2001:db8::5]" and r.top_via.param("rport") is None


# -- client INVITE (17.1.1) --------------------------------------------------


def test_timer_a_doubles_without_cap_then_timer_b(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    assert [o.message for o in mgr.pop_outgoing()] == [invite]
    assert state(tx) is TxState.CALLING and tx.method == "INVITE" and tx.target == PBX
    assert tx.branch == invite.top_via.branch
    events, sent = clock.run_until(31.9)
    assert events == []
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # intervals 0.5, 1, 2, 4, 8, 16
    assert all(o.message is invite and o.target == PBX for _, o in sent)
    events, sent = clock.run_until(32.0)
    assert events == [TransactionTimeout(tx, "B")] and sent == []
    assert len(mgr) == 0 and mgr.next_deadline() is None
    assert state(tx) is TxState.TERMINATED


def test_reliable_invite_has_no_timer_a(mgr: TransactionManager, clock: Clock) -> None:
    tx = mgr.send_request(outbound(transport="tls"), META, 0.0)
    mgr.pop_outgoing()
    assert mgr.next_deadline() == 32.0
    events, sent = clock.run_until(40.0)
    assert sent == [] and events == [TransactionTimeout(tx, "B")]


def test_provisional_stops_a_and_b(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.pop_outgoing()
    ringing = reply(invite, 180)
    assert mgr.receive(ringing, PBX, 0.2) == [ResponseReceived(ringing, tx, False)]
    assert state(tx) is TxState.PROCEEDING and tx.last_response is ringing
    assert mgr.next_deadline() is None
    events, sent = clock.run_until(300.0)
    assert events == [] and sent == [] and len(mgr) == 1  # waits for the TU (CANCEL)


def test_non_2xx_final_generates_ack(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.pop_outgoing()
    mgr.receive(reply(invite, 183), PBX, 0.1)
    busy = reply(invite, 486)
    assert mgr.receive(busy, PBX, 0.3) == [ResponseReceived(busy, tx, False)]
    out = mgr.pop_outgoing()
    assert len(out) == 1 and out[0].target == PBX
    ack = out[0].message
    assert isinstance(ack, Request)
    # 17.1.1.3, header by header
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.headers.lines("Via") == [invite.headers.get_all("Via")[0]]
    assert ack.top_via.branch == tx.branch
    assert ack.headers.lines("Route") == invite.headers.lines("Route")
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("To") == busy.headers.get("To") and ack.to.tag == "pbx-tag-1"
    assert ack.call_id == invite.call_id
    assert str(ack.cseq) == "101 ACK"
    assert ack.headers.get("Max-Forwards") == "70"
    assert isinstance(parse_message(ack.to_bytes()), Request)  # well formed
    assert state(tx) is TxState.COMPLETED
    # a retransmitted final re-triggers the ACK and is absorbed
    assert mgr.receive(reply(invite, 486), PBX, 5.0) == []
    assert [o.message for o in mgr.pop_outgoing()] == [ack]
    assert mgr.next_deadline() == pytest.approx(32.3)  # Timer D
    events, sent = clock.run_until(32.3)
    assert events == [] and sent == [] and len(mgr) == 0


def test_timer_d_is_zero_on_reliable(mgr: TransactionManager) -> None:
    invite = outbound(transport="tls")
    tx = mgr.send_request(invite, META, 0.0)
    mgr.pop_outgoing()
    mgr.receive(reply(invite, 603), META, 1.0)
    assert [o.message.method for o in mgr.pop_outgoing() if isinstance(o.message, Request)] == [
        "ACK"
    ]
    assert state(tx) is TxState.TERMINATED and len(mgr) == 0 and mgr.next_deadline() is None


def test_2xx_enters_accepted_and_timer_m(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.pop_outgoing()
    ok = reply(invite, 200)
    assert mgr.receive(ok, PBX, 1.0) == [ResponseReceived(ok, tx, False)]
    assert state(tx) is TxState.ACCEPTED and mgr.pop_outgoing() == []  # the TU ACKs a 2xx
    again = reply(invite, 200)
    assert mgr.receive(again, PBX, 1.5) == [ResponseReceived(again, tx, True)]
    fork = reply(invite, 200, to_tag="other-fork")
    assert mgr.receive(fork, PBX, 1.6) == [ResponseReceived(fork, tx, False)]
    assert mgr.receive(reply(invite, 180), PBX, 1.7) == []  # absorbed in Accepted
    assert mgr.next_deadline() == pytest.approx(33.0)  # Timer M = 64*T1
    events, sent = clock.run_until(33.0)
    assert events == [] and sent == [] and len(mgr) == 0
    assert mgr.stray_responses == 0
    # after M a late 2xx is a stray: dropped and counted
    assert mgr.receive(reply(invite, 200), PBX, 34.0) == []
    assert mgr.stray_responses == 1


def test_ack_is_never_a_client_transaction(mgr: TransactionManager) -> None:
    ack = outbound("ACK")
    with pytest.raises(ValueError):
        mgr.send_request(ack, PBX, 0.0)
    mgr.send_stateless(ack, PBX)
    assert mgr.pop_outgoing() == [Outgoing(ack, PBX)] and len(mgr) == 0


def test_request_without_rfc3261_branch_refused(mgr: TransactionManager) -> None:
    with pytest.raises(ValueError):
        mgr.send_request(req("OPTIONS", branch="1234"), PBX, 0.0)
    r = outbound("OPTIONS")
    mgr.send_request(r, PBX, 0.0)
    with pytest.raises(ValueError):
        mgr.send_request(r, PBX, 0.0)  # same branch twice


# -- client non-INVITE (17.1.2) ----------------------------------------------


def test_timer_e_doubles_to_t2_then_timer_f(mgr: TransactionManager, clock: Clock) -> None:
    options = outbound("OPTIONS")
    tx = mgr.send_request(options, PBX, 0.0)
    mgr.pop_outgoing()
    assert state(tx) is TxState.TRYING
    events, sent = clock.run_until(31.9)
    assert events == []
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    events, _ = clock.run_until(32.0)
    assert events == [TransactionTimeout(tx, "F")] and len(mgr) == 0


def test_timer_e_in_proceeding_uses_t2_then_k(mgr: TransactionManager, clock: Clock) -> None:
    bye = outbound("BYE")
    tx = mgr.send_request(bye, PBX, 0.0)
    mgr.pop_outgoing()
    trying = reply(bye, 100, to_tag=None)
    assert mgr.receive(trying, PBX, 0.2) == [ResponseReceived(trying, tx, False)]
    assert state(tx) is TxState.PROCEEDING
    _, sent = clock.run_until(10.0)
    assert times(sent) == [0.5, 4.5, 8.5]
    ok = reply(bye, 200)
    assert mgr.receive(ok, PBX, 10.0) == [ResponseReceived(ok, tx, False)]
    assert state(tx) is TxState.COMPLETED
    assert mgr.receive(reply(bye, 200), PBX, 11.0) == []  # absorbed
    assert mgr.next_deadline() == pytest.approx(15.0)  # Timer K = T4
    events, sent = clock.run_until(15.0)
    assert events == [] and sent == [] and len(mgr) == 0


def test_reliable_non_invite_no_e_and_k_zero(mgr: TransactionManager, clock: Clock) -> None:
    options = outbound("OPTIONS", "tls")
    tx = mgr.send_request(options, META, 0.0)
    mgr.pop_outgoing()
    assert mgr.next_deadline() == 32.0  # only F
    mgr.receive(reply(options, 200), META, 0.1)
    assert state(tx) is TxState.TERMINATED and len(mgr) == 0


# -- server INVITE (17.2.1) --------------------------------------------------


def test_new_invite_auto_trying_and_retransmissions(mgr: TransactionManager) -> None:
    invite = req()
    events = mgr.receive(invite, PBX, 0.0)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    tx = events[0].tx
    assert isinstance(tx, ServerTransaction) and events[0].request is invite
    assert state(tx) is TxState.PROCEEDING and tx.request is invite and tx.source == PBX
    out = mgr.pop_outgoing()
    assert statuses(out) == [100] and out[0].target == PBX
    assert out[0].message.to.tag is None
    assert mgr.receive(req(), PBX, 0.3) == []  # retransmission absorbed
    assert statuses(mgr.pop_outgoing()) == [100]
    mgr.send_response(make_response(invite, 180, to_tag="gw-1"), 1.0)
    assert statuses(mgr.pop_outgoing()) == [180]
    assert mgr.receive(req(), PBX, 1.5) == []
    assert statuses(mgr.pop_outgoing()) == [180]  # the last provisional re-sent
    assert len(mgr) == 1 and mgr.next_deadline() is None


def test_auto_trying_copies_timestamp(mgr: TransactionManager) -> None:
    mgr.receive(req(extra="Timestamp: 54.3\r\n"), PBX, 0.0)
    assert mgr.pop_outgoing()[0].message.headers.get("Timestamp") == "54.3"  # 8.2.6.1


def test_auto_trying_off() -> None:
    mgr = TransactionManager(auto_trying=False)
    mgr.receive(req(), PBX, 0.0)
    assert mgr.pop_outgoing() == []
    assert mgr.receive(req(), PBX, 0.5) == [] and mgr.pop_outgoing() == []


def _server_invite(
    mgr: TransactionManager, source: Target = PBX, via: str = "SIP/2.0/UDP 192.0.2.10:5060"
) -> ServerTransaction:
    events = mgr.receive(req(via=via), source, 0.0)
    assert isinstance(events[0], RequestReceived) and events[0].tx is not None
    mgr.pop_outgoing()
    return events[0].tx


def test_timer_g_capped_at_t2_then_h(mgr: TransactionManager, clock: Clock) -> None:
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 486, to_tag="gw-1"), 0.0)
    assert statuses(mgr.pop_outgoing()) == [486] and state(tx) is TxState.COMPLETED
    events, sent = clock.run_until(31.9)
    assert events == []
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(o.message is tx.last_response for _, o in sent)
    events, _ = clock.run_until(32.0)
    assert events == [TransactionTimeout(tx, "H")] and len(mgr) == 0


def test_ack_confirms_then_timer_i(mgr: TransactionManager, clock: Clock) -> None:
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 404, to_tag="gw-1"), 0.0)
    mgr.pop_outgoing()
    _, sent = clock.run_until(1.0)
    assert times(sent) == [0.5]
    assert mgr.receive(req(), PBX, 1.2) == []  # retransmitted INVITE: final re-sent
    assert statuses(mgr.pop_outgoing()) == [404]
    ack = req("ACK", to_tag="gw-1")
    assert mgr.receive(ack, PBX, 1.4) == []  # absorbed: the TU never sees it
    assert state(tx) is TxState.CONFIRMED
    assert mgr.receive(req("ACK", to_tag="gw-1"), PBX, 2.0) == []  # absorbed
    assert mgr.next_deadline() == pytest.approx(6.4)  # Timer I = T4
    events, sent = clock.run_until(6.4)
    assert events == [] and sent == [] and len(mgr) == 0


def test_reliable_server_invite_no_g_and_i_zero(mgr: TransactionManager, clock: Clock) -> None:
    tx = _server_invite(mgr, META, via="SIP/2.0/TLS 157.240.19.1:5061")
    mgr.send_response(make_response(tx.request, 480, to_tag="gw-1"), 0.0)
    out = mgr.pop_outgoing()
    assert statuses(out) == [480] and out[0].target == META
    assert mgr.next_deadline() == 32.0  # H only
    mgr.receive(req("ACK", to_tag="gw-1", via="SIP/2.0/TLS 157.240.19.1:5061"), META, 0.5)
    assert state(tx) is TxState.TERMINATED and len(mgr) == 0


@pytest.mark.parametrize("source", [PBX, META])
def test_2xx_retransmitted_until_timer_l(
    mgr: TransactionManager, clock: Clock, source: Target
) -> None:
    tx = _server_invite(mgr, source)
    ok = make_response(tx.request, 200, to_tag="gw-1")
    mgr.send_response(ok, 0.0)
    assert state(tx) is TxState.ACCEPTED and statuses(mgr.pop_outgoing()) == [200]
    events, sent = clock.run_until(31.9)
    assert events == []
    # 13.3.1.4: T1 doubling to T2, on reliable transports as well
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(o.message is ok and o.target == tx.response_target for _, o in sent)
    events, _ = clock.run_until(32.0)
    assert events == [TransactionTimeout(tx, "2xx-no-ack")] and len(mgr) == 0


def test_ack_for_2xx_stops_retransmission(mgr: TransactionManager, clock: Clock) -> None:
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 200, to_tag="gw-1"), 0.0)
    mgr.pop_outgoing()
    _, sent = clock.run_until(2.0)
    assert times(sent) == [0.5, 1.5]
    ack = req("ACK", branch="z9hG4bKnew-ack-branch", to_tag="gw-1")  # 2xx ACK: own branch
    assert mgr.receive(ack, PBX, 2.0) == [RequestReceived(ack, PBX, None)]
    assert mgr.receive(req("ACK", branch="z9hG4bKnew-ack-branch", to_tag="gw-1"), PBX, 2.1) == []
    assert mgr.receive(req(), PBX, 2.2) == []  # retransmitted INVITE absorbed (RFC 6026)
    assert mgr.pop_outgoing() == []
    events, sent = clock.run_until(32.0)
    assert events == [] and sent == [] and len(mgr) == 0  # Timer L, quietly


def test_send_response_errors(mgr: TransactionManager) -> None:
    with pytest.raises(KeyError):
        mgr.send_response(make_response(req(), 200, to_tag="x"), 0.0)
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 486, to_tag="gw-1"), 0.0)
    with pytest.raises(TransactionStateError):
        mgr.send_response(make_response(tx.request, 200, to_tag="gw-1"), 0.1)


# -- server non-INVITE (17.2.2) ----------------------------------------------


def test_server_non_invite_states_and_timer_j(mgr: TransactionManager, clock: Clock) -> None:
    options = req("OPTIONS")
    [event] = mgr.receive(options, PBX, 0.0)
    assert isinstance(event, RequestReceived) and event.tx is not None
    tx = event.tx
    assert state(tx) is TxState.TRYING and mgr.pop_outgoing() == []  # no auto 100
    assert mgr.receive(req("OPTIONS"), PBX, 0.5) == [] and mgr.pop_outgoing() == []
    mgr.send_response(make_response(options, 100), 0.6)
    assert state(tx) is TxState.PROCEEDING and statuses(mgr.pop_outgoing()) == [100]
    assert mgr.receive(req("OPTIONS"), PBX, 1.0) == []
    assert statuses(mgr.pop_outgoing()) == [100]
    mgr.send_response(make_response(options, 200, to_tag="gw-1"), 2.0)
    assert state(tx) is TxState.COMPLETED and statuses(mgr.pop_outgoing()) == [200]
    assert mgr.receive(req("OPTIONS"), PBX, 3.0) == []
    assert statuses(mgr.pop_outgoing()) == [200]  # the final re-sent
    with pytest.raises(TransactionStateError):
        mgr.send_response(make_response(options, 500), 3.1)
    assert mgr.next_deadline() == pytest.approx(34.0)  # Timer J = 64*T1
    events, sent = clock.run_until(34.0)
    assert events == [] and sent == [] and len(mgr) == 0


def test_server_non_invite_reliable_j_zero(mgr: TransactionManager) -> None:
    options = req("OPTIONS", via="SIP/2.0/TLS 157.240.19.1:5061")
    mgr.receive(options, META, 0.0)
    mgr.send_response(make_response(options, 200, to_tag="gw-1"), 0.1)
    assert [o.target for o in mgr.pop_outgoing()] == [META]
    assert len(mgr) == 0 and mgr.next_deadline() is None


# -- CANCEL (section 9) -------------------------------------------------------


def test_server_cancel_flow(mgr: TransactionManager, clock: Clock) -> None:
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 180, to_tag="gw-1"), 0.1)
    mgr.pop_outgoing()
    cancel = req("CANCEL")
    assert mgr.receive(cancel, PBX, 1.0) == [CancelReceived(cancel, tx, PBX)]
    [ok] = mgr.pop_outgoing()
    assert isinstance(ok.message, Response) and ok.message.status == 200
    assert str(ok.message.cseq) == "1 CANCEL" and ok.message.to.tag == "gw-1"
    assert mgr.receive(req("CANCEL"), PBX, 1.1) == []  # retransmitted CANCEL
    assert statuses(mgr.pop_outgoing()) == [200]
    mgr.send_response(make_response(tx.request, 487, to_tag="gw-1"), 1.2)
    assert statuses(mgr.pop_outgoing()) == [487]
    assert mgr.receive(req("ACK", to_tag="gw-1"), PBX, 1.3) == []  # ACK for 487 absorbed
    assert state(tx) is TxState.CONFIRMED
    clock.run_until(100.0)
    assert len(mgr) == 0


def test_cancel_without_transaction_gets_481(mgr: TransactionManager) -> None:
    assert mgr.receive(req("CANCEL"), PBX, 0.0) == []
    assert statuses(mgr.pop_outgoing()) == [481]


def test_cancel_after_final_has_no_effect(mgr: TransactionManager) -> None:
    tx = _server_invite(mgr)
    mgr.send_response(make_response(tx.request, 200, to_tag="gw-1"), 0.1)
    mgr.pop_outgoing()
    assert mgr.receive(req("CANCEL"), PBX, 0.2) == []
    assert statuses(mgr.pop_outgoing()) == [200]
    assert state(tx) is TxState.ACCEPTED


def test_client_cancel_deferred_until_provisional(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound(extra="Supported: timer\r\n")
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.pop_outgoing()
    assert mgr.cancel(tx, 0.1) is None  # 9.1: no provisional yet
    assert mgr.pop_outgoing() == [] and tx.cancel_tx is None
    ringing = reply(invite, 180)
    assert mgr.receive(ringing, PBX, 0.3) == [ResponseReceived(ringing, tx, False)]
    [out] = mgr.pop_outgoing()
    cancel = out.message
    assert isinstance(cancel, Request) and out.target == PBX
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.headers.lines("Via") == [invite.headers.get_all("Via")[0]]
    assert cancel.headers.lines("Route") == invite.headers.lines("Route")
    for name in ("From", "To", "Call-ID"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert str(cancel.cseq) == "101 CANCEL" and "Supported" not in cancel.headers
    ctx = tx.cancel_tx
    assert isinstance(ctx, ClientTransaction) and ctx.method == "CANCEL"
    assert ctx.branch == tx.branch and len(mgr) == 2
    assert mgr.cancel(tx, 0.4) is ctx and mgr.pop_outgoing() == []  # idempotent
    ok = reply(cancel, 200)
    assert mgr.receive(ok, PBX, 0.5) == [ResponseReceived(ok, ctx, False)]  # separate tx
    terminated = reply(invite, 487)
    assert mgr.receive(terminated, PBX, 0.6) == [ResponseReceived(terminated, tx, False)]
    assert [o.message.method for o in mgr.pop_outgoing() if isinstance(o.message, Request)] == [
        "ACK"
    ]
    events, _ = clock.run_until(100.0)
    assert events == [] and len(mgr) == 0


def test_client_cancel_in_proceeding_and_9_1_timeout(mgr: TransactionManager, clock: Clock) -> None:
    invite = outbound("INVITE", "tls")
    tx = mgr.send_request(invite, META, 0.0)
    mgr.receive(reply(invite, 183), META, 0.5)
    mgr.pop_outgoing()
    ctx = mgr.cancel(tx, 1.0)
    assert ctx is not None and ctx.target == META
    mgr.receive(reply(ctx.request, 200), META, 1.1)  # CANCEL answered, INVITE never is
    events, _ = clock.run_until(33.0)
    assert events == [TransactionTimeout(tx, "cancel")] and len(mgr) == 0


def test_cancel_rules(mgr: TransactionManager) -> None:
    opt = mgr.send_request(outbound("OPTIONS"), PBX, 0.0)
    with pytest.raises(ValueError):
        mgr.cancel(opt, 0.1)
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.receive(reply(invite, 200), PBX, 0.2)
    mgr.pop_outgoing()
    assert mgr.cancel(tx, 0.3) is None and mgr.pop_outgoing() == []  # too late
    # deferred CANCEL dropped when a final arrives before any provisional
    invite2 = outbound()
    tx2 = mgr.send_request(invite2, PBX, 1.0)
    assert mgr.cancel(tx2, 1.1) is None
    mgr.receive(reply(invite2, 486), PBX, 1.2)
    assert [o.message.method for o in mgr.pop_outgoing() if isinstance(o.message, Request)] == [
        "INVITE",
        "ACK",
    ]
    assert tx2.cancel_tx is None


# -- received / rport / response target (18.2, RFC 3581) ----------------------


def test_received_and_rport_stamped(mgr: TransactionManager) -> None:
    invite = req(via="SIP/2.0/UDP 10.0.0.5:5060", via_params=";rport")
    nat = Target("udp", "198.51.100.7", 40001)
    [event] = mgr.receive(invite, nat, 0.0)
    assert isinstance(event, RequestReceived) and event.tx is not None
    via = event.request.top_via
    assert via.received == "198.51.100.7" and via.rport == 40001
    assert via.branch == "z9hG4bK74bf9" and via.host == "10.0.0.5"
    assert event.tx.response_target == nat
    [trying] = mgr.pop_outgoing()
    assert trying.target == nat
    assert trying.message.top_via.rport == 40001
    assert trying.message.top_via.received == "198.51.100.7"
    ok = make_response(invite, 200, to_tag="gw-1")
    assert ok.top_via.received == "198.51.100.7"
    mgr.send_response(ok, 0.1)  # still finds its transaction
    assert mgr.receive(req(via="SIP/2.0/UDP 10.0.0.5:5060", via_params=";rport"), nat, 0.2) == []


def test_received_only_when_host_differs(mgr: TransactionManager) -> None:
    invite = req(via="SIP/2.0/UDP pbx.example.com:5070")
    mgr.receive(invite, PBX, 0.0)
    assert invite.top_via.received == "192.0.2.10" and invite.top_via.param("rport") is None
    assert mgr.pop_outgoing()[0].target == Target("udp", "192.0.2.10", 5070)  # sent-by port
    same = req("OPTIONS", via="SIP/2.0/UDP 192.0.2.10:5060")
    mgr.receive(same, PBX, 0.0)
    assert same.headers.get_all("Via")[0] == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9"


def test_response_target_rules() -> None:
    src = Target("udp", "198.51.100.7", 40001)
    assert response_target(req(via="SIP/2.0/UDP 198.51.100.7"), src) == Target(
        "udp", "198.51.100.7", 5060
    )
    assert response_target(req(via="SIP/2.0/UDP h.example.com:5080"), src).port == 5080
    assert response_target(req(via="SIP/2.0/UDP h.example.com", via_params=";rport"), src) == src
    stamped = req(via="SIP/2.0/UDP h.example.com", via_params=";rport=40001;received=198.51.100.7")
    assert response_target(stamped, src) == src
    # reliable: the same connection
    tls = req(via="SIP/2.0/TLS wa.meta.vc", via_params=";rport")
    assert response_target(tls, META) == META
    assert TransactionManager.response_target(tls, META) == META
    assert META.reliable and not PBX.reliable and Target("tcp", "h", 1).reliable


# -- transport errors, strays, matching ---------------------------------------


def test_transport_error_fails_transactions_on_that_target(mgr: TransactionManager) -> None:
    client = mgr.send_request(outbound("INVITE", "tls"), META, 0.0)
    other = mgr.send_request(outbound("OPTIONS"), PBX, 0.0)
    server = _server_invite(
        mgr, Target("tls", "157.240.19.1", 5061, conn_id=7), via="SIP/2.0/TLS wa.meta.vc"
    )
    done = mgr.send_request(outbound("OPTIONS", "tls"), META, 0.0)
    mgr.receive(reply(done.request, 404), META, 0.1)  # reliable: already gone
    events = mgr.transport_error(Target("tls", "157.240.19.1", 5061, conn_id=7), 1.0)
    assert events == [TransportFailure(client), TransportFailure(server)]
    assert state(client) is TxState.TERMINATED and state(server) is TxState.TERMINATED
    assert len(mgr) == 1 and state(other) is TxState.TRYING
    assert mgr.transport_error(PBX, 1.0) == [TransportFailure(other)]
    assert len(mgr) == 0 and mgr.next_deadline() is None


def test_transport_error_spares_completed(mgr: TransactionManager) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    mgr.receive(reply(invite, 486), PBX, 0.1)
    assert mgr.transport_error(PBX, 0.2) == [] and state(tx) is TxState.COMPLETED


def test_stray_responses_and_acks(mgr: TransactionManager) -> None:
    assert mgr.receive(reply(outbound(), 200), PBX, 0.0) == []
    assert mgr.receive(reply(outbound("BYE"), 481), PBX, 0.0) == []
    assert mgr.stray_responses == 2
    ack = req("ACK", to_tag="x")
    assert mgr.receive(ack, PBX, 0.0) == [RequestReceived(ack, PBX, None)]
    assert len(mgr) == 0


def test_client_matching_uses_branch_and_method(mgr: TransactionManager) -> None:
    invite = outbound()
    tx = mgr.send_request(invite, PBX, 0.0)
    wrong = reply(invite, 180)
    wrong.headers.set("CSeq", "101 OPTIONS")
    assert mgr.receive(wrong, PBX, 0.1) == [] and state(tx) is TxState.CALLING


def test_server_matching_includes_sent_by(mgr: TransactionManager) -> None:
    a = mgr.receive(req("OPTIONS"), PBX, 0.0)
    b = mgr.receive(req("OPTIONS", via="SIP/2.0/UDP 192.0.2.11:5060"), PBX, 0.0)
    assert len(a) == 1 and len(b) == 1 and len(mgr) == 2


def test_rfc2543_matching_fallback(mgr: TransactionManager, clock: Clock) -> None:
    old = Target("udp", "192.0.2.99", 5060)
    via = "SIP/2.0/UDP 192.0.2.99:5060"
    invite = req(branch=None, via=via)
    [event] = mgr.receive(invite, old, 0.0)
    assert isinstance(event, RequestReceived) and event.tx is not None
    tx = event.tx
    assert mgr.receive(req(branch=None, via=via), old, 0.2) == []  # retransmission
    assert statuses(mgr.pop_outgoing()) == [100, 100]
    # a branch without the magic cookie is RFC 2543 too
    other = mgr.receive(req(branch="1234", via=via), old, 0.3)
    assert len(other) == 1 and other[0] != event
    again = mgr.receive(req(branch="1234", via=via), old, 0.4)
    assert again == []
    new_cseq = mgr.receive(req(branch=None, via=via, cseq=2), old, 0.4)
    assert len(new_cseq) == 1
    mgr.pop_outgoing()
    mgr.send_response(make_response(tx.request, 404, to_tag="gw-9"), 1.0)
    assert statuses(mgr.pop_outgoing()) == [404]
    assert mgr.receive(req("ACK", branch=None, via=via, to_tag="wrong"), old, 1.1) != []
    assert state(tx) is TxState.COMPLETED  # To tag of the ACK must match our response
    assert mgr.receive(req("ACK", branch=None, via=via, to_tag="gw-9"), old, 1.2) == []
    assert state(tx) is TxState.CONFIRMED
    clock.run_until(1000.0)
    assert len(mgr) == 2  # the two other INVITEs wait for their TU
    cancel = req("CANCEL", branch=None, via=via, cseq=2)
    events = mgr.receive(cancel, old, 1001.0)
    assert len(events) == 1 and isinstance(events[0], CancelReceived)


def test_manager_empties_after_everything_ends(mgr: TransactionManager, clock: Clock) -> None:
    for i, transport in enumerate(["udp", "tls", "udp", "tls"]):
        target = PBX if transport == "udp" else META
        invite = outbound("INVITE", transport)
        tx = mgr.send_request(invite, target, 0.0)
        mgr.receive(reply(invite, 180), target, 0.1)
        mgr.receive(reply(invite, 200 if i % 2 else 486), target, 0.2)
        if i == 0:
            assert state(tx) is TxState.COMPLETED
        mgr.send_request(outbound("OPTIONS", transport), target, 0.0)
    s1 = _server_invite(mgr, via="SIP/2.0/UDP 192.0.2.10:5060")
    mgr.send_response(make_response(s1.request, 200, to_tag="t"), 0.0)
    s2 = _server_invite(mgr, via="SIP/2.0/UDP 192.0.2.12:5060")
    mgr.send_response(make_response(s2.request, 603, to_tag="t"), 0.0)
    mgr.receive(req("OPTIONS", via="SIP/2.0/UDP 192.0.2.13:5060"), PBX, 0.0)
    assert len(mgr) > 0
    clock.run_until(1000.0)
    assert len(mgr) == 1  # the OPTIONS server transaction waits for its TU
    assert mgr.next_deadline() is None


@settings(max_examples=60, deadline=None)
@given(
    reliable=st.booleans(),
    method=st.sampled_from(["INVITE", "OPTIONS", "BYE"]),
    codes=st.lists(st.sampled_from([100, 180, 183, 200, 404, 486, 503]), max_size=5),
    server_codes=st.lists(st.sampled_from([180, 200, 487, 500]), max_size=3),
    acks=st.booleans(),
)
def test_property_everything_terminates(
    reliable: bool, method: str, codes: list[int], server_codes: list[int], acks: bool
) -> None:
    mgr = TransactionManager()
    clock = Clock(mgr)
    target = META if reliable else PBX
    out = outbound(method, target.transport)
    mgr.send_request(out, target, 0.0)
    for i, code in enumerate(codes):
        mgr.receive(reply(out, code, to_tag=None if code == 100 else "t"), target, 0.1 * i)
    via = "SIP/2.0/TLS 157.240.19.1:5061" if reliable else "SIP/2.0/UDP 192.0.2.10:5060"
    incoming = req(method, via=via)
    mgr.receive(incoming, target, 1.0)
    final = False
    for code in server_codes:
        try:
            mgr.send_response(make_response(incoming, code, to_tag="g"), 1.1)
        except (TransactionStateError, KeyError):
            continue
        final = final or code >= 200
    if method == "INVITE" and acks:
        mgr.receive(req("ACK", via=via, to_tag="g"), target, 1.2)
    if not final:
        # the TU always answers in the end
        with contextlib.suppress(TransactionStateError, KeyError):
            mgr.send_response(make_response(incoming, 500, to_tag="g"), 2.0)
    for _ in range(3):
        clock.run_until(clock.now + 200.0)
    provisional_only = bool(codes) and max(codes) < 200 and method == "INVITE"
    assert len(mgr) == (1 if provisional_only else 0)
    assert mgr.next_deadline() is None


def test_stamping_keeps_via_order_in_combined_line(mgr: TransactionManager) -> None:
    proxied = req(
        "OPTIONS",
        via="SIP/2.0/UDP proxy.example.com:5060",
        via_params=";rport, SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bKuac",
    )
    mgr.receive(proxied, PBX, 0.0)
    vias = proxied.vias
    assert [v.host for v in vias] == ["proxy.example.com", "10.1.1.1"]
    assert vias[0].received == "192.0.2.10" and vias[0].rport == 5060
    assert vias[1].received is None
    ok = make_response(proxied, 200, to_tag="gw-1")
    assert [v.host for v in ok.vias] == ["proxy.example.com", "10.1.1.1"]
    mgr.send_response(ok, 0.1)
    assert mgr.pop_outgoing()[0].target == PBX


def test_ipv6_source_stamped_without_brackets(mgr: TransactionManager) -> None:
    v6 = Target("udp", "2001:db8::7", 5062)
    invite = req(via="SIP/2.0/UDP [2001:db8::7]:5062", via_params=";rport")
    mgr.receive(invite, v6, 0.0)
    assert invite.top_via.received == "2001:db8::7" and invite.top_via.rport == 5062
    reparsed = parse_message(make_response(invite, 100).to_bytes())
    assert reparsed.top_via.received == "2001:db8::7"
    assert mgr.pop_outgoing()[0].target == v6
    other = req("OPTIONS", via="SIP/2.0/UDP [2001:DB8:0::7]:5062")  # same host, other spelling
    mgr.receive(other, v6, 0.0)
    assert other.top_via.received is None
