"""``sip.rate_limits``, ``sip.overload`` and ``sip.digest_throttle``: overload control.

The defaults never limit Meta's real traffic: a business at ``limits.max_calls``
200 with three-minute calls sees about one call a second, two INVITEs each (the
407 and the answer); 50 INVITEs a second per source address with a burst of 100
is some 25 times a busy hour's peak, per Meta edge address. See docs/decisions.md,
"Overload control", for the rules and the measurements.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from gateway.config.fields import FrozenModel, path_problem

__all__ = ["Budget", "DigestThrottleConfig", "OverloadConfig", "RateLimitsConfig"]

Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(strict=True, ge=1)]


class Budget(FrozenModel):
    """A token bucket: ``rate`` requests a second, bursts of up to ``burst``."""

    rate: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[float, Field(ge=1, le=10_000_000)]


class RateLimitsConfig(FrozenModel):
    """``sip.rate_limits``: per source address, on every listener (pike/ratelimit style)."""

    enabled: bool = True
    # New dialogs (INVITE without a To tag). Over it: 503 + Retry-After.
    invite: Budget = Budget(rate=50, burst=100)
    # Every other request (in-dialog ones included). Over it: dropped.
    other: Budget = Budget(rate=200, burst=400)
    # 503s a source gets for being over its INVITE budget; past these, dropped.
    refusals: Budget = Budget(rate=20, burst=40)
    # All requests of a source together, checked before parsing (Kamailio's pike):
    # over it they are dropped unparsed. Far above any real peer's traffic.
    messages: Budget = Budget(rate=500, burst=1000)
    # Sources tracked at once (the least recently seen is forgotten).
    max_sources: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 10_000


class OverloadConfig(FrozenModel):
    """``sip.overload``: global admission; new INVITEs get 503 while the daemon is behind."""

    enabled: bool = True
    # Event-loop lag (seconds) at which new INVITEs get 503 ...
    lag_threshold: Annotated[float, Field(gt=0, le=10)] = 0.1
    # ... and for this long after the lag is back under it.
    hold: Annotated[float, Field(ge=0, le=60)] = 1.0
    # Open server transactions at which new INVITEs get 503.
    max_transactions: Count = 2000
    # ... and at which every new out-of-dialog request but OPTIONS is dropped.
    hard_max_transactions: Count = 10_000
    # Retry-After (seconds) of the 503s of sip.overload and sip.rate_limits.
    retry_after: Annotated[int, Field(strict=True, ge=1, le=3600)] = 5

    @model_validator(mode="after")
    def _order(self) -> OverloadConfig:
        if self.hard_max_transactions < self.max_transactions:
            raise path_problem("hard_max_transactions", "must be at least max_transactions")
        return self


class DigestThrottleConfig(FrozenModel):
    """``sip.digest_throttle``: backoff for failed digest attempts (gateway.sip.digest_throttle)."""

    enabled: bool = True
    # Failed attempts per source and number within `window` before a backoff.
    max_failures: Annotated[int, Field(strict=True, ge=1, le=1000)] = 5
    window: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # First backoff (seconds), doubling per further failure up to max_backoff.
    backoff: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_backoff: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Failures for one number (all sources) within `window` that put it under attack:
    # then a source's first failure starts its backoff (clean sources are never refused).
    number_failures: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 20

    @model_validator(mode="after")
    def _order(self) -> DigestThrottleConfig:
        if self.max_backoff < self.backoff:
            raise path_problem("max_backoff", "must be at least backoff")
        return self
