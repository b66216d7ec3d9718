"""Overload control, sans-IO: per-source rate limits and global admission.

In the style of Kamailio's pike and ratelimit modules, and of RFC 7339 in spirit
(a server that is behind says so with 503 + Retry-After before doing any work):

* :class:`SourceLimiter`: token buckets per source address, one for new dialogs
  (INVITE without a To tag) and one for every other request, so in-dialog
  requests (BYE, ACK, re-INVITE) are never starved by an INVITE flood from the
  same address. Over budget an INVITE gets a stateless 503 with Retry-After
  while the source's refusal budget lasts, then it is dropped; other requests
  are dropped. Before any parsing, a third budget for all requests together,
  far above any real peer's, drops a flood unparsed (pike's check: parsing is
  most of what a flooded message costs). The table of sources is bounded
  (least recently seen evicted).
* :class:`LoadMonitor`: the event loop's lag (fed by a periodic probe) and the
  open server transactions. While either is over its threshold, new INVITEs
  get 503; at the hard cap on transactions new out-of-dialog requests other
  than OPTIONS are dropped too. OPTIONS (Meta's and the PBX's health probes)
  and in-dialog requests always pass.
* :class:`OverloadControl`: both, applied in that order to each request.

Nothing here reads a clock or touches a socket: ``now`` is passed in (the event
loop's monotonic time). Responses are never limited.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

__all__ = [
    "Budget",
    "Decision",
    "LoadMonitor",
    "OverloadControl",
    "OverloadStats",
    "SourceLimiter",
    "TokenBucket",
    "Verdict",
    "request_class",
]


class Verdict(enum.Enum):
    PASS = "pass"
    REFUSE = "503"  # a stateless 503 with Retry-After
    DROP = "drop"  # no answer at all (counted)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # "rate", "lag", "transactions", "transactions_cap"


PASS = Decision(Verdict.PASS)


@dataclass(frozen=True, slots=True)
class Budget:
    """``rate`` tokens per second, at most ``burst`` stored (a full bucket to start)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1):
            raise ValueError("a budget needs rate > 0 and burst >= 1")


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, budget: Budget, now: float) -> None:
        self.rate = budget.rate
        self.burst = budget.burst
        self.tokens = budget.burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Refill for the time since the last call, then take ``cost`` if there is enough."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


def request_class(method: str, to_tag: str | None) -> str:
    """``invite`` (a new dialog), ``dialog`` (To tag, ACK, CANCEL) or ``other``."""
    if to_tag:
        return "dialog"
    if method == "INVITE":
        return "invite"
    if method in ("ACK", "CANCEL"):
        return "dialog"  # they belong to an INVITE already admitted (or refused)
    return "other"


@dataclass
class OverloadStats:
    """Plain counters read by the metrics collector at scrape time."""

    # (leg, class "invite"|"other"|"unparsed", action "503"|"drop")
    limited: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (reason "lag"|"transactions"|"transactions_cap", action "503"|"drop")
    overload: Counter[tuple[str, str]] = field(default_factory=Counter)
    evicted_sources: int = 0


class _Source:
    __slots__ = ("invite", "messages", "other", "refusals")

    def __init__(
        self,
        invite: TokenBucket,
        other: TokenBucket,
        refusals: TokenBucket,
        messages: TokenBucket | None,
    ) -> None:
        self.invite = invite
        self.other = other
        self.refusals = refusals
        self.messages = messages


class SourceLimiter:
    """Token buckets per source address, in a table of at most ``max_sources``."""

    def __init__(
        self,
        invite: Budget,
        other: Budget,
        refusals: Budget,
        *,
        messages: Budget | None = None,
        max_sources: int = 10_000,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.invite, self.other, self.refusals = invite, other, refusals
        self.messages = messages
        self.max_sources = max_sources
        self.evicted = 0
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def _entry(self, host: str, now: float) -> _Source:
        table = self._sources
        entry = table.get(host)
        if entry is None:
            messages = self.messages
            entry = _Source(
                TokenBucket(self.invite, now),
                TokenBucket(self.other, now),
                TokenBucket(self.refusals, now),
                TokenBucket(messages, now) if messages is not None else None,
            )
            table[host] = entry
            if len(table) > self.max_sources:
                table.popitem(last=False)  # the least recently seen source
                self.evicted += 1
        else:
            table.move_to_end(host)
        return entry

    def admit_unparsed(self, host: str, now: float) -> bool:
        """Pike's check, before parsing: False when ``host`` is over its budget for all
        requests together (``messages``), far above what any real peer sends."""
        if self.messages is None:
            return True
        bucket = self._entry(host, now).messages
        return bucket is None or bucket.take(now)

    def check(self, host: str, kind: str, now: float) -> Verdict:
        """``kind`` from :func:`request_class`: ``invite`` uses the INVITE budget,
        ``other`` and ``dialog`` the other one."""
        entry = self._entry(host, now)
        if kind == "invite":
            if entry.invite.take(now):
                return Verdict.PASS
            return Verdict.REFUSE if entry.refusals.take(now) else Verdict.DROP
        return Verdict.PASS if entry.other.take(now) else Verdict.DROP


class LoadMonitor:
    """Is the daemon behind? Event-loop lag from a periodic probe, open server transactions.

    ``probed(now, lag)`` is called by the probe (every ``interval`` seconds when the
    loop keeps up). Behind on lag: a probe measured ``lag >= lag_threshold``, and
    for ``hold`` seconds after; or no probe ran for ``interval + lag_threshold``
    (the loop is stuck in the work being screened right now).
    """

    def __init__(
        self,
        *,
        lag_threshold: float = 0.1,
        hold: float = 1.0,
        interval: float = 0.05,
        max_transactions: int = 2000,
        hard_max_transactions: int = 10_000,
    ) -> None:
        if not (lag_threshold > 0 and hold >= 0 and interval > 0):
            raise ValueError("lag_threshold and interval must be > 0, hold >= 0")
        if not 1 <= max_transactions <= hard_max_transactions:
            raise ValueError("need 1 <= max_transactions <= hard_max_transactions")
        self.lag_threshold = lag_threshold
        self.hold = hold
        self.interval = interval
        self.max_transactions = max_transactions
        self.hard_max_transactions = hard_max_transactions
        self.lag = 0.0  # measured by the last probe
        self._last_probe: float | None = None
        self._behind_until = float("-inf")

    def probed(self, now: float, lag: float) -> None:
        self._last_probe = now
        self.lag = max(0.0, lag)
        if self.lag >= self.lag_threshold:
            self._behind_until = now + self.hold

    def current_lag(self, now: float) -> float:
        """The last probe's lag, or how late the next probe is already, if more."""
        if self._last_probe is None:
            return self.lag
        return max(self.lag, now - self._last_probe - self.interval)

    def lagging(self, now: float) -> bool:
        if now < self._behind_until:
            return True
        last = self._last_probe
        return last is not None and now - last > self.interval + self.lag_threshold


class OverloadControl:
    """Screens each request: per-source limits first, then global admission."""

    def __init__(
        self,
        limiter: SourceLimiter | None,
        monitor: LoadMonitor | None,
        stats: OverloadStats | None = None,
    ) -> None:
        self.limiter = limiter
        self.monitor = monitor
        self.stats = stats or OverloadStats()

    def prescreen(self, data: bytes, host: str, leg: str, now: float) -> bool:
        """Before parsing: False drops a request from a source over its ``messages``
        budget unparsed (parsing is most of what a flood costs). Responses pass."""
        limiter = self.limiter
        if limiter is None or limiter.messages is None or data.startswith(b"SIP/2.0 "):
            return True
        if limiter.admit_unparsed(host, now):
            return True
        self.stats.limited[(leg, "unparsed", "drop")] += 1
        return False

    def screen(
        self, method: str, to_tag: str | None, host: str, leg: str, now: float, open_server: int
    ) -> Decision:
        """What to do with one request from ``host`` on ``leg``; ``open_server`` is the
        number of open server transactions."""
        kind = request_class(method, to_tag)
        limiter = self.limiter
        if limiter is not None:
            verdict = limiter.check(host, kind, now)
            if verdict is not Verdict.PASS:
                self.stats.limited[(leg, "invite" if kind == "invite" else "other",
                                    verdict.value)] += 1  # fmt: skip
                return Decision(verdict, "rate")
        monitor = self.monitor
        if monitor is None or kind == "dialog":
            return PASS
        if kind == "invite":
            reason = ""
            if open_server >= monitor.max_transactions:
                reason = "transactions"
            elif monitor.lagging(now):
                reason = "lag"
            if reason:
                self.stats.overload[(reason, "503")] += 1
                return Decision(Verdict.REFUSE, reason)
            return PASS
        if open_server >= monitor.hard_max_transactions and method != "OPTIONS":
            self.stats.overload[("transactions_cap", "drop")] += 1
            return Decision(Verdict.DROP, "transactions_cap")
        return PASS
