"""Meta's INVITEs screened before any transaction: the stateless 407 (RFC 3261 8.2.7),
the throttled 403, dead nonces, and the 503s of overload control (gateway/ops/admission.py).
"""

from __future__ import annotations

from pathlib import Path

from gateway.ops.admission import Admission
from gateway.sip.auth import parse_challenge
from gateway.sip.digest_throttle import DigestThrottle
from gateway.sip.ids import new_branch
from gateway.sip.message import Response, parse_message
from gateway.sip.overload import Budget, LoadMonitor, OverloadControl, SourceLimiter
from gateway.sip.transaction import Outgoing, Target
from tests.unit.b2bua.b2bua_fakes import (
    BUSINESS,
    META_SOURCE,
    Harness,
    ack_for,
    meta_invite,
    request_of,
)

OTHER_SOURCE = Target("tls", "157.240.19.9", 40002, conn_id=8)


def wire(out: Outgoing) -> Response:
    msg = parse_message(out.message.to_bytes())
    assert isinstance(msg, Response)
    return msg


def screen(h: Harness, data: bytes, source: Target = META_SOURCE, leg: str = "whatsapp"):  # type: ignore[no-untyped-def]
    return h.calls.screen_invite(request_of(data), source, leg)


def test_first_invite_gets_its_407_without_a_transaction(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    data = meta_invite(branch="z9hG4bK-first")
    resp = screen(h, data)
    assert resp is not None and resp.status == 407
    assert len(h.manager) == 0 and h.sent() == []  # no transaction, no 100 Trying
    challenge = parse_challenge(resp.headers.get("Proxy-Authenticate") or "")
    assert challenge.realm == "sip.example.com" and challenge.qop == ("auth",)
    via = resp.top_via
    assert via.received == "157.240.19.1" and via.rport == 40001  # stamped as 18.2.1 says
    # A retransmission gets the same To tag (8.2.7); another INVITE another one.
    again = screen(h, data)
    assert again is not None and again.to.tag == resp.to.tag
    other = screen(h, meta_invite(branch="z9hG4bK-second"))
    assert other is not None and other.to.tag != resp.to.tag
    assert h.calls.challenger.stateless_sent == {407: 3}


def test_the_ack_for_a_stateless_407_is_absorbed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    data = meta_invite()
    resp = screen(h, data)
    assert resp is not None
    h.from_meta(ack_for(request_of(data), resp))
    assert h.sent() == [] and len(h.manager) == 0 and not h.calls.calls


def test_the_stateful_path_keeps_everything_else(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        {
            "whatsapp": {
                "numbers": [
                    {"number": BUSINESS, "sip_password_file": "wa.pass"},
                    {"number": "+15550002222", "sip_password_file": "wa.pass", "challenge": False},
                ]
            }
        },
    )
    assert screen(h, meta_invite(auth='Digest username="x"')) is None  # credentials: verify
    assert screen(h, meta_invite(number="+15550009999")) is None  # 404 comes statefully
    assert screen(h, meta_invite(number="+15550002222")) is None  # not challenged
    assert screen(h, meta_invite(), leg="pbx") is None
    assert screen(h, meta_invite(extra=[("Require", "100rel")])) is None  # 420
    h.calls.draining = True
    assert screen(h, meta_invite()) is None  # 503 draining, statefully as before


def _answer(h: Harness, resp: Response, password: str | None = None, **kw: object) -> bytes:
    ruri = request_of(meta_invite()).uri
    value = resp.headers.get("Proxy-Authenticate") or ""
    cred = (
        h.credentials(value, ruri)
        if password is None
        else h.credentials(value, ruri, password=password)
    )
    return meta_invite(auth=cred, cseq=2, branch=new_branch(), **kw)  # type: ignore[arg-type]


def test_a_call_after_the_stateless_challenge(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    resp = screen(h, meta_invite())
    assert resp is not None
    retry = _answer(h, resp)
    assert screen(h, retry) is None
    h.from_meta(retry)
    statuses = [s.message.status for s in h.sent() if isinstance(s.message, Response)]
    assert statuses == [100] and len(h.calls.calls) == 1  # the PBX INVITE is out


def test_failed_nonce_is_dead_and_guesses_are_throttled(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    throttle = DigestThrottle(max_failures=2, backoff=5.0, max_backoff=5.0)
    h.calls.challenger.throttle = throttle
    resp = screen(h, meta_invite())
    assert resp is not None
    old_nonce = parse_challenge(resp.headers.get("Proxy-Authenticate") or "").nonce
    h.from_meta(_answer(h, resp, password="wrong"))
    assert [r.status for r in h.responses(h.sent())] == [100, 403]
    # The right password on that nonce: challenged again with a fresh nonce.
    stateless = screen(h, _answer(h, resp))  # the screen sees it first: a stateless 407
    assert stateless is not None and stateless.status == 407
    assert throttle.stats.dead_nonce_attempts == 1
    h.from_meta(_answer(h, resp))  # and the stateful path (no screen) does the same
    again = [r for r in h.responses(h.sent()) if r.status == 407]
    assert len(again) == 1 and not h.calls.calls
    fresh = parse_challenge(again[0].headers.get("Proxy-Authenticate") or "").nonce
    assert fresh != old_nonce
    assert throttle.stats.invalidated_nonces == 1 and throttle.stats.dead_nonce_attempts == 2
    # A second failure starts the backoff: now even the right password is refused,
    # statelessly and unchecked, from that source only.
    h.from_meta(_answer(h, again[0], password="wrong-again"))
    h.sent()
    fresh_ch = screen(h, meta_invite())
    assert fresh_ch is not None
    open_before = len(h.manager)
    blocked = screen(h, _answer(h, fresh_ch))
    assert blocked is not None and blocked.status == 403 and len(h.manager) == open_before
    assert throttle.stats.throttled == 1
    assert screen(h, _answer(h, fresh_ch), source=OTHER_SOURCE) is None
    # After the backoff the right answer gets the call.
    h.advance(5.1)
    h.sent()
    ok = _answer(h, fresh_ch)
    assert screen(h, ok) is None
    h.from_meta(ok)
    assert len(h.calls.calls) == 1


def admission(h: Harness, **kw: object) -> Admission:
    limiter = SourceLimiter(Budget(10, 2), Budget(100, 100), Budget(1, 1))
    monitor = LoadMonitor(max_transactions=50, hard_max_transactions=100)
    return Admission(OverloadControl(limiter, monitor), h.manager, h.calls, retry_after=7)


def test_admission_answers_statelessly(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    adm = admission(h)
    answers = [adm(request_of(meta_invite()), META_SOURCE, "whatsapp", 0.0) for _ in range(4)]
    # two 407s (burst), one 503 with Retry-After (refusal burst), then dropped
    assert [[wire(o).status for o in a] if a is not None else None for a in answers] == [
        [407],
        [407],
        [503],
        [],
    ]
    refused = wire(answers[2][0])  # type: ignore[index]
    assert refused.headers.get("Retry-After") == "7" and refused.to.tag
    assert answers[2][0].target == Target("tls", META_SOURCE.host, META_SOURCE.port, 7)  # type: ignore[index]
    assert len(h.manager) == 0
    # OPTIONS and in-dialog requests from the same source go on to the transaction layer.
    options = (
        "OPTIONS sip:sip.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 157.240.19.1:5061;branch="
        f"{new_branch()}\r\nFrom: <sip:wa.meta.vc>;tag=o1\r\nTo: <sip:sip.example.com>\r\n"
        "Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    assert adm(request_of(options), META_SOURCE, "whatsapp", 0.0) is None
    bye = meta_invite().replace(b"INVITE sip:", b"BYE sip:", 1).replace(b" INVITE\r\n", b" BYE\r\n")
    bye = bye.replace(
        b"To: <sip:+17015558857@sip.example.com>", b"To: <sip:+17015558857@sip.example.com>;tag=x"
    )
    assert adm(request_of(bye), META_SOURCE, "whatsapp", 0.0) is None
    assert adm.control.stats.limited == {
        ("whatsapp", "invite", "503"): 1,
        ("whatsapp", "invite", "drop"): 1,
    }


def test_admission_refuses_while_lagging(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    adm = admission(h)
    assert adm.control.monitor is not None
    adm.control.monitor.probed(0.0, 0.3)
    out = adm(request_of(meta_invite()), META_SOURCE, "whatsapp", 0.1)
    assert out is not None and [wire(o).status for o in out] == [503]
    assert adm.control.stats.overload == {("lag", "503"): 1}


def test_metrics_read_the_counters(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.ops.admission import OverloadCollector

    h = Harness(tmp_path)
    throttle = DigestThrottle()
    h.calls.challenger.throttle = throttle
    adm = admission(h)
    for _ in range(4):
        adm(request_of(meta_invite()), META_SOURCE, "whatsapp", 0.0)
    throttle.failed("157.240.19.1", BUSINESS, 0.0, "bad_response")
    throttle.invalidate("n", 0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OverloadCollector(adm, throttle, lambda: 0.0))
    text = generate_latest(registry).decode()
    for line in (
        'wagw_sip_rate_limited_total{action="503",class="invite",leg="whatsapp"} 1.0',
        'wagw_sip_rate_limited_total{action="drop",class="invite",leg="whatsapp"} 1.0',
        'wagw_sip_stateless_responses_total{code="407"} 2.0',
        "wagw_sip_server_transactions 0.0",
        "wagw_sip_rate_limit_sources 1.0",
        "wagw_sip_overloaded 0.0",
        'wagw_digest_failures_total{outcome="bad_response"} 1.0',
        "wagw_digest_nonces_invalidated_total 1.0",
        "wagw_digest_throttled_total 0.0",
    ):
        assert line in text, text
    assert "wagw_sip_loop_lag_seconds" in text and "wagw_sip_overload_total" in text
