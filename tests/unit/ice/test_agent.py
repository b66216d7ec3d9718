"""The ICE agent (gateway.ice.agent) on a fake clock and an in-memory network.

Toward an ICE-lite peer written from the RFC (tests/unit/ice/icenet.py), toward
another agent (full ICE, role conflicts), and against scripted messages for the
exact answers of RFC 8445 7.3. aioice (an independent implementation) checks
the bytes at the end.
"""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest

from gateway.ice.agent import (
    ICE_CHARS,
    ConsentLost,
    IceAgent,
    IceFailed,
    Nominated,
    candidate_priority,
    new_credentials,
    pair_priority,
)
from gateway.ice.stun import (
    ErrorCode,
    StunClass,
    StunMessage,
    XorMappedAddress,
    binding_request,
    encode,
    parse,
)
from tests.unit.ice.icenet import Addr, LitePeer, Net, ScriptedPeer, attrs

US: Addr = ("192.0.2.1", 40000)
META4: Addr = ("198.51.100.7", 3480)
META6: Addr = ("2001:db8::7", 3480)
HOST_PRIORITY = 2130706431  # 126 << 24 | 65535 << 8 | 255: the usual host candidate
PRFLX_PRIORITY = 1862270975  # 110 << 24 | 65535 << 8 | 255

OUR_UFRAG, OUR_PWD = "OurUfrag", "our-password-24-chars-ok"
META_UFRAG, META_PWD = "MetaUfrg", "meta-password-24-chars-x"
RETRANSMISSIONS = [0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 4.7]  # 100 ms doubling, capped at 1.6 s


def agent(**kw: object) -> IceAgent:
    args: dict[str, object] = {
        "local_ufrag": OUR_UFRAG,
        "local_pwd": OUR_PWD,
        "remote_ufrag": META_UFRAG,
        "remote_pwd": META_PWD,
        "remote_candidates": [(*META4, HOST_PRIORITY), (*META6, HOST_PRIORITY)],
        "local_family": 4,
        "tie_breaker": 0x1234,
        "rng": random.Random(7),
    }
    args.update(kw)
    return IceAgent(**args)  # type: ignore[arg-type]


def lite_net(ours: IceAgent, *, us: Addr = US, meta: Addr = META4) -> tuple[Net, LitePeer]:
    net = Net()
    lite = LitePeer(META_UFRAG, META_PWD, OUR_UFRAG)
    net.add(us, ours)
    net.add(meta, lite)
    return net, lite


# ------------------------------------------------------------------ credentials, priorities


def test_credentials_follow_rfc_8839() -> None:
    seen = set()
    for _ in range(50):
        ufrag, pwd = new_credentials()
        assert len(ufrag) == 8 and len(pwd) == 24
        assert set(ufrag + pwd) <= set(ICE_CHARS)
        seen.add((ufrag, pwd))
    assert len(seen) == 50
    assert set(ICE_CHARS) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def test_priorities() -> None:
    assert candidate_priority(126) == HOST_PRIORITY
    assert candidate_priority(110) == PRFLX_PRIORITY
    # RFC 8445 6.1.2.3 by hand: G=7, D=5 -> 2^32*5 + 2*7 + 1
    assert pair_priority(7, 5) == (5 << 32) + 15
    assert pair_priority(5, 7) == (5 << 32) + 14


def test_repr_hides_passwords() -> None:
    text = repr(agent())
    assert OUR_PWD not in text and META_PWD not in text
    assert OUR_UFRAG in text


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="family"):
        agent(local_family=5)
    with pytest.raises(ValueError, match="lite"):
        agent(controlling=False, remote_lite=True)


# ------------------------------------------------------------------ toward ICE-lite


@pytest.mark.parametrize(
    ("family", "us", "meta"), [(4, US, META4), (6, ("2001:db8::1", 40000), META6)]
)
def test_controlling_toward_lite_nominates_the_pair_of_our_family(
    family: int, us: Addr, meta: Addr
) -> None:
    ours = agent(local_family=family)
    net, lite = lite_net(ours, us=us, meta=meta)
    ours.start(0.0)
    net.run(until=1.0)

    assert net.events[us] == [(pytest.approx(0.02), Nominated(meta, pytest.approx(0.02)))]
    assert ours.state == "nominated" and ours.selected == meta
    assert {s.dst for s in net.sent if s.src == us} == {meta}  # never the other family
    assert len(lite.accepted) == 1  # answered at once: no retransmission
    request = lite.accepted[0][1]
    assert attrs(request) == {
        "username": f"{META_UFRAG}:{OUR_UFRAG}",
        "priority": PRFLX_PRIORITY,
        "controlling": 0x1234,
        "controlled": None,
        "use_candidate": True,
    }
    assert request.check_integrity(META_PWD) and not request.check_integrity(OUR_PWD)
    assert (ours.checks_sent, ours.responses) == (1, 1)


def test_no_candidate_of_our_family_fails_at_once() -> None:
    ours = agent(remote_candidates=[(*META6, HOST_PRIORITY), ("meta.local", 9, 1)])
    ours.start(0.0)
    assert ours.pop_events() == [IceFailed("no candidates")]
    assert ours.state == "failed" and ours.pop_datagrams() == []


def test_checks_go_out_in_priority_order_paced_by_ta() -> None:
    low, high = ("198.51.100.8", 1000), ("198.51.100.9", 2000)
    ours = agent(remote_candidates=[(*low, 100), (*high, 200)], check_timeout=1.0)
    net = Net()
    net.add(US, ours)  # nobody answers
    ours.start(0.0)
    net.run(until=0.06)
    first = [(s.at, s.dst) for s in net.sent]
    assert first == [(0.0, high), (pytest.approx(0.05), low)]


def test_retransmissions_then_the_check_fails() -> None:
    ours = agent(check_timeout=30.0)
    net, lite = lite_net(ours)
    lite.answering = False
    ours.start(0.0)
    net.run(until=20.0)

    sent = net.requests(US)
    assert [s.at for s in sent] == pytest.approx(RETRANSMISSIONS)
    assert len({s.stun.message.transaction_id for s in sent}) == 1  # one transaction
    assert len({s.data for s in sent}) == 1  # the same bytes each time (RFC 5389 7.2.1)
    assert net.events[US] == [(pytest.approx(6.3), IceFailed("checks failed"))]
    assert ours.next_timeout() is None and ours.checks_sent == 7


def test_check_timeout_bounds_the_whole_negotiation() -> None:
    ours = agent(check_timeout=2.0)
    net, lite = lite_net(ours)
    lite.answering = False
    ours.start(0.0)
    net.run(until=20.0)
    assert net.events[US] == [(pytest.approx(2.0), IceFailed("timeout"))]
    assert [s.at for s in net.requests(US)] == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5])
    assert ours.state == "failed" and ours.next_timeout() is None


def test_a_lost_answer_is_covered_by_a_retransmission() -> None:
    ours = agent()
    net, _ = lite_net(ours)
    answers = 0

    def drop_two_answers(s: object) -> bool:
        nonlocal answers
        if getattr(s, "src", None) == META4:
            answers += 1
            return answers <= 2
        return False

    net.drop = drop_two_answers  # type: ignore[assignment]
    ours.start(0.0)
    net.run(until=2.0)
    # third transmission at 0.3 s, answered 10 ms later each way
    assert net.events[US] == [(pytest.approx(0.32), Nominated(META4, pytest.approx(0.02)))]


def test_an_answer_with_bad_integrity_is_ignored() -> None:
    ours = agent()
    net, lite = lite_net(ours)
    lite.wrong_key = 3
    ours.start(0.0)
    net.run(until=2.0)
    # three answers were signed with another key: the fourth transmission (0.7 s) wins
    assert net.events[US] == [(pytest.approx(0.72), Nominated(META4, pytest.approx(0.02)))]
    assert ours.ignored == 3 and ours.responses == 1


def test_an_answer_from_another_address_is_ignored() -> None:
    ours = agent()
    net, _ = lite_net(ours)
    elsewhere: Addr = ("198.51.100.66", 3480)
    spoofed = 0

    def from_elsewhere(s: object) -> Addr | None:
        nonlocal spoofed
        if getattr(s, "src", None) == META4 and spoofed < 2:
            spoofed += 1
            return elsewhere
        return None

    net.spoof = from_elsewhere  # type: ignore[assignment]
    ours.start(0.0)
    net.run(until=2.0)
    assert net.events[US] == [(pytest.approx(0.32), Nominated(META4, pytest.approx(0.02)))]
    assert ours.ignored == 2


# ------------------------------------------------------------------ consent freshness


def test_consent_is_refreshed_while_answered_and_lost_after_30_s_of_silence() -> None:
    ours = agent()
    net, lite = lite_net(ours)
    ours.start(0.0)
    net.run(until=120.0)
    assert [e for _, e in net.events[US]] == [Nominated(META4, pytest.approx(0.02))]
    consent = net.requests(US)[1:]
    gaps = [b.at - a.at for a, b in itertools.pairwise(consent)]
    assert len(consent) >= 20 and all(4.0 <= g <= 6.0 for g in gaps)  # 5 s, 0.8-1.2x
    assert max(gaps) - min(gaps) > 0.2  # randomised, not a fixed 5 s
    assert len({s.stun.message.transaction_id for s in consent}) == len(consent)  # never resent
    assert not any(attrs(s.stun)["use_candidate"] for s in consent)
    assert ours.state == "nominated"

    lite.answering = False
    net.run(until=200.0)
    last_answer = lite.answered_at[-1] + net.latency
    assert net.events[US][1:] == [(pytest.approx(last_answer + 30.0), ConsentLost())]
    assert ours.state == "failed" and ours.next_timeout() is None
    sent = len(net.sent)
    net.run(until=300.0)
    assert len(net.sent) == sent  # nothing more once consent is lost


def test_consent_survives_a_silence_shorter_than_the_timeout() -> None:
    ours = agent()
    net, lite = lite_net(ours)
    ours.start(0.0)
    net.run(until=10.0)
    lite.answering = False
    net.run(until=35.0)  # 25 s without an answer
    lite.answering = True
    net.run(until=100.0)
    assert [e for _, e in net.events[US]] == [Nominated(META4, pytest.approx(0.02))]
    assert ours.state == "nominated"


def test_consent_answer_must_be_authentic_and_from_the_selected_address() -> None:
    ours = agent()
    net, lite = lite_net(ours)
    ours.start(0.0)
    net.run(until=1.0)
    lite.wrong_key = 1000  # every consent answer now carries a bad MESSAGE-INTEGRITY
    net.run(until=60.0)
    assert [e for _, e in net.events[US]][-1] == ConsentLost()
    assert net.events[US][-1][0] == pytest.approx(30.02)


# ------------------------------------------------------------------ full ICE, role conflicts

A: Addr = ("192.0.2.1", 5000)
B: Addr = ("192.0.2.2", 6000)


def full_pair(tb_a: int, tb_b: int, *, controlling: bool = True) -> tuple[Net, IceAgent, IceAgent]:
    a = IceAgent(
        local_ufrag="ufragAAA",
        local_pwd="a" * 24,
        remote_ufrag="ufragBBB",
        remote_pwd="b" * 24,
        remote_candidates=[(*B, HOST_PRIORITY)],
        local_family=4,
        controlling=controlling,
        remote_lite=False,
        tie_breaker=tb_a,
    )
    b = IceAgent(
        local_ufrag="ufragBBB",
        local_pwd="b" * 24,
        remote_ufrag="ufragAAA",
        remote_pwd="a" * 24,
        remote_candidates=[(*A, HOST_PRIORITY)],
        local_family=4,
        controlling=controlling,
        remote_lite=False,
        tie_breaker=tb_b,
    )
    net = Net()
    net.add(A, a)
    net.add(B, b)
    return net, a, b


def errors_487(net: Net) -> list[Addr]:
    out = []
    for s in net.sent:
        msg = s.stun.message
        if msg.cls is StunClass.ERROR:
            error = msg.get(ErrorCode)
            assert error is not None
            out.append((s.src, error.code))
    return [src for src, code in out if code == 487]


@pytest.mark.parametrize("controlling", [True, False], ids=["both-controlling", "both-controlled"])
@pytest.mark.parametrize("a_wins", [True, False], ids=["A-higher", "B-higher"])
@pytest.mark.parametrize("first", ["A", "B", "both"])
def test_full_agents_resolve_a_role_conflict(controlling: bool, a_wins: bool, first: str) -> None:
    net, a, b = full_pair(
        2**63 + 5 if a_wins else 5, 5 if a_wins else 2**63 + 5, controlling=controlling
    )
    if first in ("A", "both"):
        a.start(0.0)
    if first in ("B", "both"):
        b.start(0.0)
    net.run(until=0.5)
    for late in (a, b):
        late.start(0.5)  # no-op for the one already started
    net.run(until=3.0)

    winner, loser = (a, b) if a_wins else (b, a)
    assert winner.controlling and not loser.controlling
    assert a.state == b.state == "nominated"
    assert (a.selected, b.selected) == (B, A)
    assert [type(e) for _, e in net.events[A]] == [Nominated]
    assert [type(e) for _, e in net.events[B]] == [Nominated]
    assert a.role_conflicts + b.role_conflicts >= 1
    # RFC 8445 7.3.1.1: whoever receives the first check keeps its role by answering 487
    # when its tie-breaker says so (a controlling winner, a controlled loser), else it
    # switches and answers success
    if first != "both":
        receiver = b if first == "A" else a
        receiver_keeps = receiver is winner if controlling else receiver is loser
        expected = [B if first == "A" else A] if receiver_keeps else []
        assert errors_487(net) == expected


def test_regular_nomination_toward_a_full_peer() -> None:
    net, a, b = full_pair(10, 1)
    b.controlling = False  # no conflict: A controls, B is controlled
    b._prioritise()
    a.start(0.0)
    b.start(0.0)
    net.run(until=3.0)
    checks = [attrs(s.stun) for s in net.requests(A, B)]
    # ordinary check(s) first, then one with USE-CANDIDATE on the valid pair
    assert checks[0]["use_candidate"] is False and checks[0]["controlling"] == 10
    assert [c["use_candidate"] for c in checks].count(True) == 1
    assert all(c["controlled"] == 1 for c in map(attrs, (s.stun for s in net.requests(B, A))))
    assert a.selected == B and b.selected == A
    assert a.role_conflicts == b.role_conflicts == 0


# ------------------------------------------------------------------ answering checks (RFC 8445 7.3)

PEER: Addr = ("203.0.113.5", 7000)


def controlled_agent(**kw: object) -> tuple[IceAgent, ScriptedPeer]:
    ours = agent(
        controlling=False,
        remote_lite=False,
        remote_candidates=[(*PEER, HOST_PRIORITY)],
        tie_breaker=100,
        **kw,
    )
    peer = ScriptedPeer(META_UFRAG, META_PWD, OUR_UFRAG, OUR_PWD, tie_breaker=200)
    return ours, peer


def only(datagrams: list[tuple[bytes, Addr]], to: Addr) -> StunMessage:
    assert len(datagrams) == 1 and datagrams[0][1] == to, datagrams
    parsed = parse(datagrams[0][0])
    assert parsed.fingerprint
    return parsed.message


def test_a_check_is_answered_with_its_source_and_our_integrity() -> None:
    ours, peer = controlled_agent()
    ours.start(0.0)
    ours.pop_datagrams()  # our own first check
    source: Addr = ("203.0.113.5", 7000)
    assert ours.receive(peer.check(), source, 0.01)
    out = ours.pop_datagrams()
    answer = parse(out[0][0])
    assert out[0][1] == source and answer.message.cls is StunClass.SUCCESS
    assert answer.check_integrity(OUR_PWD)
    assert answer.message.get(XorMappedAddress) == XorMappedAddress(
        ipaddress.ip_address("203.0.113.5"), 7000
    )
    assert ours.requests_answered == 1


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        ("password", 401),
        ("username", 401),
        ("no-integrity", 400),
    ],
)
def test_a_bad_check_is_rejected_and_triggers_nothing(mangle: str, code: int) -> None:
    ours, _ = controlled_agent()
    username = f"{OUR_UFRAG}:{META_UFRAG}" if mangle != "username" else f"{OUR_UFRAG}:someone"
    request = binding_request(username, priority=1, controlling=True, tie_breaker=1)
    key = {"password": "wrong-password-of-24char", "username": OUR_PWD, "no-integrity": None}[
        mangle
    ]
    ours.receive(encode(request, key=key, fingerprint=True), PEER, 0.0)
    answer = only(ours.pop_datagrams(), PEER)
    assert answer.cls is StunClass.ERROR and answer.get(ErrorCode) == ErrorCode(
        code, "Unauthorized" if code == 401 else "Bad Request"
    )
    assert parse(encode(answer, fingerprint=True)).integrity is None
    ours.start(0.1)
    # no triggered check was queued: the one check after start is the ordinary one
    assert (ours.requests_answered, ours.requests_rejected) == (0, 1)
    assert ours.state == "checking" and len(ours.pop_datagrams()) == 1


def test_use_candidate_before_our_check_succeeds_nominates_on_the_triggered_check() -> None:
    ours, peer = controlled_agent()
    ours.start(0.0)
    first = ours.pop_datagrams()
    assert attrs(parse(first[0][0]))["controlled"] == 100  # controlled agents check too
    ours.receive(peer.check(use_candidate=True), PEER, 0.06)
    out = ours.pop_datagrams()
    assert [parse(d).message.cls for d, _ in out] == [StunClass.SUCCESS, StunClass.REQUEST]
    triggered = out[1][0]
    assert attrs(parse(triggered))["use_candidate"] is False  # the controlled never nominates
    assert ours.pop_events() == []
    ours.receive(peer.answer(triggered, US), PEER, 0.08)
    assert ours.pop_events() == [Nominated(PEER, pytest.approx(0.02))]
    assert ours.state == "nominated" and ours.selected == PEER


def test_use_candidate_on_a_valid_pair_nominates_at_once() -> None:
    ours, peer = controlled_agent()
    ours.start(0.0)
    ((check, _),) = ours.pop_datagrams()
    ours.receive(peer.answer(check, US), PEER, 0.03)
    assert ours.state == "checking" and ours.pop_events() == []  # valid, not nominated
    ours.receive(peer.check(), PEER, 0.5)
    assert ours.pop_events() == [] and len(ours.pop_datagrams()) == 1  # answer, no new check
    ours.receive(peer.check(use_candidate=True), PEER, 0.6)
    assert only(ours.pop_datagrams(), PEER).cls is StunClass.SUCCESS
    assert ours.pop_events() == [Nominated(PEER, pytest.approx(0.03))]


def test_controlled_without_nomination_times_out() -> None:
    ours, peer = controlled_agent(check_timeout=5.0)
    ours.start(0.0)
    ((check, _),) = ours.pop_datagrams()
    ours.receive(peer.answer(check, US), PEER, 0.03)
    while (t := ours.next_timeout()) is not None:
        ours.handle_timeout(t)
    assert t is None and ours.pop_events() == [IceFailed("timeout")]


def test_a_check_from_an_unknown_address_makes_a_peer_reflexive_pair() -> None:
    ours, peer = controlled_agent()
    nat: Addr = ("203.0.113.99", 5555)
    ours.start(0.0)
    ours.pop_datagrams()
    ours.receive(peer.check(priority=PRFLX_PRIORITY), nat, 0.1)
    out = ours.pop_datagrams()
    assert [(parse(d).message.cls, dst) for d, dst in out] == [
        (StunClass.SUCCESS, nat),
        (StunClass.REQUEST, nat),
    ]


def test_role_conflict_answered_487_when_our_tie_breaker_wins() -> None:
    ours = agent(remote_lite=False, remote_candidates=[(*PEER, HOST_PRIORITY)], tie_breaker=500)
    peer = ScriptedPeer(META_UFRAG, META_PWD, OUR_UFRAG, OUR_PWD, tie_breaker=499)
    ours.receive(peer.check(controlling=True), PEER, 0.0)
    answer = parse(ours.pop_datagrams()[0][0])
    assert answer.message.get(ErrorCode) == ErrorCode(487, "Role Conflict")
    assert answer.check_integrity(OUR_PWD)
    assert ours.controlling and ours.role_conflicts == 1 and ours.requests_answered == 0

    peer.tie_breaker = 501  # now theirs is higher: we switch and answer
    ours.receive(peer.check(controlling=True), PEER, 0.1)
    assert parse(ours.pop_datagrams()[0][0]).message.cls is StunClass.SUCCESS
    assert not ours.controlling and ours.role_conflicts == 2


def test_becoming_controlling_with_a_valid_pair_nominates_it() -> None:
    ours, peer = controlled_agent()  # our tie-breaker 100
    ours.start(0.0)
    ((check, _),) = ours.pop_datagrams()
    ours.receive(peer.answer(check, US), PEER, 0.03)  # valid while controlled
    peer.tie_breaker = 50
    ours.receive(peer.check(controlling=False), PEER, 0.2)  # both controlled: we win
    assert ours.controlling and ours.role_conflicts == 1
    (answer, _), (nomination, _) = ours.pop_datagrams()
    assert parse(answer).message.cls is StunClass.SUCCESS
    assert attrs(parse(nomination))["use_candidate"] is True
    assert attrs(parse(nomination))["controlling"] == 100
    ours.receive(peer.answer(nomination, US), PEER, 0.22)
    assert ours.pop_events() == [Nominated(PEER, pytest.approx(0.02))]


def test_a_487_to_our_check_switches_role_and_retries() -> None:
    ours = agent(remote_lite=False, remote_candidates=[(*PEER, HOST_PRIORITY)], tie_breaker=5)
    ours.start(0.0)
    ((check, _),) = ours.pop_datagrams()
    request = parse(check).message
    error = StunMessage(
        request.method, StunClass.ERROR, request.transaction_id, (ErrorCode(487, "Role Conflict"),)
    )
    ours.receive(encode(error, key=META_PWD, fingerprint=True), PEER, 0.02)
    assert not ours.controlling and ours.role_conflicts == 1
    ours.handle_timeout(0.05)
    ((retry, _),) = ours.pop_datagrams()
    assert attrs(parse(retry))["controlled"] == 5 and attrs(parse(retry))["controlling"] is None


def test_receive_tells_what_is_not_ices() -> None:
    ours = agent()
    assert not ours.receive(b"\x80\x00 rtp", META4, 0.0)
    assert not ours.receive(b"\x00\x01\x00\x00" + b"x" * 16, META4, 0.0)  # bad cookie
    unsigned = encode(binding_request("a:b", priority=1, controlling=True, tie_breaker=1))
    assert not ours.receive(unsigned, META4, 0.0)  # no FINGERPRINT: not ICE's STUN
    assert ours.pop_datagrams() == []


def test_ipv6_spellings_are_the_same_candidate() -> None:
    ours = agent(local_family=6, remote_candidates=[("2001:DB8:0:0::7", 3480, 1)])
    ours.start(0.0)
    ((check, dst),) = ours.pop_datagrams()
    assert dst == META6
    lite = LitePeer(META_UFRAG, META_PWD, OUR_UFRAG)
    lite.receive(check, ("2001:db8::1", 40000), 0.01)
    ((answer, _),) = lite.pop_datagrams()
    ours.receive(answer, ("2001:db8:0:0:0:0:0:7", 3480), 0.02)
    assert ours.pop_events() == [Nominated(META6, pytest.approx(0.02))]


def test_close_stops_everything() -> None:
    ours = agent()
    ours.start(0.0)
    ours.close()
    assert ours.state == "closed" and ours.pop_datagrams() == [] and ours.next_timeout() is None
    peer = ScriptedPeer(META_UFRAG, META_PWD, OUR_UFRAG, OUR_PWD)
    assert ours.receive(peer.check(), META4, 0.1)
    assert ours.pop_datagrams() == []


# ------------------------------------------------------------------ an independent implementation


def test_aioice_accepts_our_check_and_our_answer() -> None:
    aioice_stun = pytest.importorskip("aioice.stun")
    ours = agent()
    ours.start(0.0)
    ((check, _),) = ours.pop_datagrams()
    message = aioice_stun.parse_message(check)  # checks FINGERPRINT
    assert message.check_message_integrity(META_PWD.encode())
    assert not message.check_message_integrity(b"another password")
    assert message.message_method == aioice_stun.Method.BINDING
    assert message.message_class == aioice_stun.Class.REQUEST
    assert message.attributes["USERNAME"] == f"{META_UFRAG}:{OUR_UFRAG}"
    assert message.attributes["PRIORITY"] == PRFLX_PRIORITY
    assert message.attributes["ICE-CONTROLLING"] == 0x1234
    assert "USE-CANDIDATE" in message.attributes

    # aioice's own check (as its Connection builds one) answered by us, checked by aioice
    request = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST
    )
    request.attributes["USERNAME"] = f"{OUR_UFRAG}:{META_UFRAG}"
    request.attributes["PRIORITY"] = PRFLX_PRIORITY
    request.attributes["ICE-CONTROLLED"] = 42
    request.add_message_integrity(OUR_PWD.encode())
    assert ours.receive(bytes(request), META4, 0.01)
    answer, dst = ours.pop_datagrams()[0]
    assert dst == META4
    response = aioice_stun.parse_message(answer)
    assert response.check_message_integrity(OUR_PWD.encode())
    assert response.message_class == aioice_stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == META4
