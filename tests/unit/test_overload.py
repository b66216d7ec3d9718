"""Overload control, sans-IO (gateway/sip/overload.py), on a fake clock."""

from __future__ import annotations

import pytest

from gateway.logging import LogLimiter
from gateway.sip.overload import (
    Budget,
    LoadMonitor,
    OverloadControl,
    SourceLimiter,
    TokenBucket,
    Verdict,
    request_class,
)


def limiter(**kw: object) -> SourceLimiter:
    args: dict[str, object] = {
        "invite": Budget(10, 5),
        "other": Budget(100, 20),
        "refusals": Budget(1, 2),
    }
    args.update(kw)
    return SourceLimiter(**args)  # type: ignore[arg-type]


def test_bucket_burst_then_rate() -> None:
    b = TokenBucket(Budget(rate=10, burst=3), now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(0.05)  # half a token
    assert b.take(0.1)  # one token after 100 ms at 10/s
    assert not b.take(0.1)
    assert [b.take(10.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_budget_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Budget(rate, burst)


@pytest.mark.parametrize(
    ("method", "tag", "kind"),
    [
        ("INVITE", None, "invite"),
        ("INVITE", "abc", "dialog"),  # a re-INVITE
        ("BYE", "abc", "dialog"),
        ("ACK", None, "dialog"),
        ("CANCEL", None, "dialog"),
        ("OPTIONS", None, "other"),
        ("MESSAGE", None, "other"),
    ],
)
def test_request_class(method: str, tag: str | None, kind: str) -> None:
    assert request_class(method, tag) == kind


def test_invite_budget_then_503_then_drop() -> None:
    lim = limiter()
    verdicts = [lim.check("10.0.0.1", "invite", 0.0) for _ in range(9)]
    # 5 admitted (burst), 2 refused with 503 (refusal burst), then dropped.
    assert verdicts == [Verdict.PASS] * 5 + [Verdict.REFUSE] * 2 + [Verdict.DROP] * 2
    assert lim.check("10.0.0.1", "invite", 0.1) is Verdict.PASS  # 10/s: one more at 100 ms


def test_in_dialog_requests_are_not_starved_by_the_invite_budget() -> None:
    lim = limiter()
    for _ in range(50):
        lim.check("10.0.0.1", "invite", 0.0)
    assert lim.check("10.0.0.1", "dialog", 0.0) is Verdict.PASS
    assert lim.check("10.0.0.1", "other", 0.0) is Verdict.PASS


def test_other_budget_drops() -> None:
    lim = limiter()
    verdicts = [lim.check("10.0.0.1", "other", 0.0) for _ in range(21)]
    assert verdicts[:20] == [Verdict.PASS] * 20 and verdicts[20] is Verdict.DROP


def test_sources_are_independent() -> None:
    lim = limiter()
    for _ in range(20):
        lim.check("10.0.0.1", "invite", 0.0)
    assert lim.check("10.0.0.2", "invite", 0.0) is Verdict.PASS


def test_table_of_sources_is_bounded_least_recent_first() -> None:
    lim = limiter(max_sources=3)
    for host in ("a", "b", "c"):
        lim.check(host, "invite", 0.0)
    lim.check("a", "invite", 0.0)  # a is recent again
    lim.check("d", "invite", 0.0)  # evicts b
    assert len(lim) == 3 and lim.evicted == 1
    for _ in range(3):
        lim.check("a", "invite", 0.0)  # a's bucket is remembered: now empty
    assert lim.check("a", "invite", 0.0) is Verdict.REFUSE


def test_unparsed_budget() -> None:
    lim = limiter(messages=Budget(100, 3))
    assert [lim.admit_unparsed("x", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter().admit_unparsed("x", 0.0)  # no such budget: always


def test_monitor_lag_with_hold() -> None:
    mon = LoadMonitor(lag_threshold=0.1, hold=1.0, interval=0.05)
    mon.probed(0.0, 0.01)
    assert not mon.lagging(0.01)
    mon.probed(0.2, 0.15)
    assert mon.lagging(0.2)
    mon.probed(0.25, 0.0)
    assert mon.lagging(1.1)  # held for a second after the last bad probe
    mon.probed(1.15, 0.0)
    assert not mon.lagging(1.21)


def test_monitor_sees_a_stall_before_the_probe_runs() -> None:
    mon = LoadMonitor(lag_threshold=0.1, hold=1.0, interval=0.05)
    assert not mon.lagging(5.0)  # never probed: no judgement
    mon.probed(10.0, 0.0)
    assert not mon.lagging(10.14)
    assert mon.lagging(10.16)  # the probe due at 10.05 is 110 ms late: the loop is stuck
    assert mon.current_lag(10.25) == pytest.approx(0.2)


def test_monitor_checks_thresholds() -> None:
    with pytest.raises(ValueError):
        LoadMonitor(max_transactions=10, hard_max_transactions=5)
    with pytest.raises(ValueError):
        LoadMonitor(lag_threshold=0)


def control(**kw: object) -> OverloadControl:
    mon = LoadMonitor(lag_threshold=0.1, hold=1.0, max_transactions=100, hard_max_transactions=200)
    return OverloadControl(limiter(**kw), mon)


def test_admission_refuses_invites_when_lagging_and_counts() -> None:
    ctl = control()
    ctl.monitor.probed(0.0, 0.5)  # type: ignore[union-attr]
    d = ctl.screen("INVITE", None, "h", "whatsapp", 0.01, 0)
    assert (d.verdict, d.reason) == (Verdict.REFUSE, "lag")
    assert ctl.screen("OPTIONS", None, "h", "whatsapp", 0.01, 0).verdict is Verdict.PASS
    assert ctl.screen("BYE", "t", "h", "whatsapp", 0.01, 0).verdict is Verdict.PASS
    assert ctl.stats.overload == {("lag", "503"): 1}


def test_admission_on_open_transactions() -> None:
    ctl = control()
    d = ctl.screen("INVITE", None, "h", "pbx", 0.0, 100)
    assert (d.verdict, d.reason) == (Verdict.REFUSE, "transactions")
    # At the hard cap: new out-of-dialog requests but OPTIONS are dropped; dialogs pass.
    assert ctl.screen("MESSAGE", None, "h", "pbx", 0.0, 200).verdict is Verdict.DROP
    assert ctl.screen("OPTIONS", None, "h", "pbx", 0.0, 200).verdict is Verdict.PASS
    assert ctl.screen("BYE", "t", "h", "pbx", 0.0, 10_000).verdict is Verdict.PASS
    assert ctl.screen("ACK", None, "h", "pbx", 0.0, 10_000).verdict is Verdict.PASS
    assert ctl.screen("MESSAGE", None, "h", "pbx", 0.0, 199).verdict is Verdict.PASS
    assert ctl.stats.overload == {("transactions", "503"): 1, ("transactions_cap", "drop"): 1}


def test_per_source_limit_comes_first_and_is_counted() -> None:
    ctl = control()
    for _ in range(5):
        assert ctl.screen("INVITE", None, "h", "whatsapp", 0.0, 0).verdict is Verdict.PASS
    d = ctl.screen("INVITE", None, "h", "whatsapp", 0.0, 0)
    assert (d.verdict, d.reason) == (Verdict.REFUSE, "rate")
    assert ctl.stats.limited == {("whatsapp", "invite", "503"): 1}


def test_prescreen_drops_a_flood_unparsed_but_never_responses() -> None:
    ctl = control(messages=Budget(10, 2))
    data = b"INVITE sip:x SIP/2.0\r\n"
    assert [ctl.prescreen(data, "h", "whatsapp", 0.0) for _ in range(3)] == [True, True, False]
    assert ctl.prescreen(b"SIP/2.0 200 OK\r\n", "h", "whatsapp", 0.0)
    assert ctl.stats.limited == {("whatsapp", "unparsed", "drop"): 1}


def test_nothing_configured_lets_everything_in() -> None:
    ctl = OverloadControl(None, None)
    assert ctl.prescreen(b"INVITE x", "h", "pbx", 0.0)
    assert ctl.screen("INVITE", None, "h", "pbx", 0.0, 10**9).verdict is Verdict.PASS


def test_log_limiter() -> None:
    logs = LogLimiter(5.0, max_keys=2)
    assert logs.allow("a", 0.0) == 0
    assert logs.allow("a", 1.0) is None
    assert logs.allow("a", 2.0) is None
    assert logs.allow("a", 5.0) == 2  # two lines held back
    assert logs.allow("b", 5.0) == 0
    assert logs.allow("c", 5.0) == 0  # table full: forgotten, not grown
    assert len(logs._last) <= 2
