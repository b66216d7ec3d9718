"""sip.rate_limits, sip.overload and sip.digest_throttle: defaults and bad values by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.ops.admission import build_control, build_throttle
from tests.unit.test_config import MINIMAL, keys_of, problems_of, write


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    rl, ov, dt = cfg.sip.rate_limits, cfg.sip.overload, cfg.sip.digest_throttle
    assert (rl.invite.rate, rl.invite.burst, rl.other.rate, rl.other.burst) == (50, 100, 200, 400)
    assert (rl.refusals.rate, rl.messages.rate, rl.max_sources) == (20, 500, 10_000)
    assert (ov.lag_threshold, ov.hold, ov.max_transactions, ov.hard_max_transactions) == (
        0.1, 1.0, 2000, 10_000)  # fmt: skip
    assert ov.retry_after == 5
    assert (dt.max_failures, dt.window, dt.backoff, dt.max_backoff, dt.number_failures) == (
        5, 60.0, 1.0, 60.0, 20)  # fmt: skip
    control = build_control(cfg)
    assert control.limiter is not None and control.monitor is not None
    assert build_throttle(cfg) is not None


def test_everything_can_be_switched_off(tmp_path: Path) -> None:
    text = MINIMAL + (
        "sip:\n  rate_limits: {enabled: false}\n  overload: {enabled: false}\n"
        "  digest_throttle: {enabled: false}\n"
    )
    cfg = load_config(write(tmp_path, text))
    control = build_control(cfg)
    assert control.limiter is None and control.monitor is None
    assert build_throttle(cfg) is None


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("rate_limits: {invite: {rate: 0, burst: 10}}", "sip.rate_limits.invite.rate"),
        ("rate_limits: {other: {rate: 10, burst: 0.5}}", "sip.rate_limits.other.burst"),
        ("rate_limits: {messages: {rate: 10}}", "sip.rate_limits.messages.burst"),
        ("rate_limits: {max_sources: 0}", "sip.rate_limits.max_sources"),
        ("rate_limits: {pike: true}", "sip.rate_limits.pike"),
        ("overload: {lag_threshold: 0}", "sip.overload.lag_threshold"),
        ("overload: {hold: -1}", "sip.overload.hold"),
        ("overload: {retry_after: 0}", "sip.overload.retry_after"),
        (
            "overload: {max_transactions: 500, hard_max_transactions: 100}",
            "sip.overload.hard_max_transactions",
        ),
        ("digest_throttle: {max_failures: 0}", "sip.digest_throttle.max_failures"),
        ("digest_throttle: {backoff: 30, max_backoff: 10}", "sip.digest_throttle.max_backoff"),
        ("digest_throttle: {window: 0}", "sip.digest_throttle.window"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, snippet: str, key: str) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "sip:\n  " + snippet + "\n"))
    assert keys_of(problems) == [key], problems
