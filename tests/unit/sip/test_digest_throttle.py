"""Digest throttle and dead nonces (gateway/sip/digest_throttle.py), on a fake clock."""

from __future__ import annotations

import pytest

from gateway.sip.digest_throttle import DigestThrottle

SRC, OTHER, NUM = "10.0.0.1", "10.0.0.2", "+15550001111"


def throttle(**kw: float) -> DigestThrottle:
    args: dict[str, float] = {
        "max_failures": 3,
        "window": 60.0,
        "backoff": 1.0,
        "max_backoff": 8.0,
        "number_failures": 10,
    }
    args.update(kw)
    return DigestThrottle(**args)  # type: ignore[arg-type]


def test_free_failures_then_doubling_backoff_capped() -> None:
    t = throttle()
    assert [t.failed(SRC, NUM, 0.0, "bad_response") for _ in range(2)] == [0.0, 0.0]
    assert t.blocked(SRC, NUM, 0.0) is None
    assert t.failed(SRC, NUM, 0.0, "bad_response") == 1.0
    assert t.blocked(SRC, NUM, 0.5) == pytest.approx(0.5)
    assert t.blocked(SRC, NUM, 1.0) is None
    delays = [t.failed(SRC, NUM, 1.0 + i * 10, "bad_response") for i in range(5)]
    # the window is 60 s: failures 4.. double the backoff, capped at max_backoff
    assert delays == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert t.stats.backoffs == 6 and t.stats.failures["bad_response"] == 8


def test_refused_attempts_do_not_extend_the_backoff() -> None:
    t = throttle()
    for _ in range(3):
        t.failed(SRC, NUM, 0.0, "bad_response")
    for _ in range(100):
        assert t.blocked(SRC, NUM, 0.5) is not None
        t.refused()
    assert t.blocked(SRC, NUM, 1.0) is None  # a fixed password gets in after the backoff
    assert t.stats.throttled == 100


def test_success_forgets_failures() -> None:
    t = throttle()
    for _ in range(2):
        t.failed(SRC, NUM, 0.0, "bad_response")
    t.succeeded(SRC, NUM)
    assert t.failed(SRC, NUM, 0.0, "bad_response") == 0.0  # counting starts again


def test_window_expiry_starts_over() -> None:
    t = throttle(window=10.0)
    for i in range(2):
        t.failed(SRC, NUM, float(i), "bad_response")
    assert t.failed(SRC, NUM, 100.0, "bad_response") == 0.0


def test_per_source_and_number() -> None:
    t = throttle()
    for _ in range(3):
        t.failed(SRC, NUM, 0.0, "bad_response")
    assert t.blocked(SRC, NUM, 0.1) is not None
    assert t.blocked(OTHER, NUM, 0.1) is None  # Meta's edge is not locked out
    assert t.blocked(SRC, "+15550002222", 0.1) is None


def test_number_under_attack_costs_failed_sources_only() -> None:
    t = throttle(number_failures=4)
    for i in range(4):  # four addresses, one guess each: the number is under attack
        t.failed(f"10.1.0.{i}", NUM, 0.0, "bad_response")
    assert t.failed("10.1.0.9", NUM, 0.0, "bad_response") == 1.0  # first failure: backoff
    assert t.blocked("10.1.0.9", NUM, 0.5) is not None
    assert t.blocked(SRC, NUM, 0.5) is None  # a source with no failure is never refused


def test_dead_nonces_until_they_would_expire() -> None:
    t = throttle(nonce_ttl=300.0)
    assert not t.is_dead("n1", 0.0)
    t.invalidate("n1", 0.0)
    t.invalidate("n1", 0.0)
    assert t.is_dead("n1", 299.0)
    assert not t.is_dead("n1", 300.0)
    assert t.stats.invalidated_nonces == 1 and t.stats.dead_nonce_attempts == 1
    assert t.dead_nonces == 0


def test_dead_nonces_are_bounded() -> None:
    t = DigestThrottle(max_dead_nonces=3)
    for i in range(5):
        t.invalidate(f"n{i}", float(i))
    assert t.dead_nonces == 3 and t.is_dead("n4", 5.0)


def test_checks_its_settings() -> None:
    with pytest.raises(ValueError):
        DigestThrottle(backoff=10.0, max_backoff=5.0)
    with pytest.raises(ValueError):
        DigestThrottle(max_failures=0)
