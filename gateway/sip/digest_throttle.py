"""Digest guessing throttle and dead nonces, sans-IO (next to :mod:`gateway.sip.auth`).

Failed digest attempts are counted per (source address, business number). After
``max_failures`` failures within ``window`` seconds the pair is in backoff:
``backoff`` seconds, doubling with each further failure up to ``max_backoff``.
During a backoff every attempt from that source for that number is answered 403
without looking at the digest (a guess spent in the window is wasted: it costs the
guesser time, and the daemon nothing, the answer is stateless). Attempts refused
in backoff are not failures: the backoff runs out ``max_backoff`` seconds after the
last checked failure at the latest, so a real caller whose password was fixed
gets in again.

Per number (all sources): when ``number_failures`` failures arrive within
``window``, the number is under attack and, while it is, any source with a recent
failure for it goes into backoff at its first failure (a guesser spread over many
addresses gets one checked guess per address and backoff). A source with no
failure, such as Meta's edge with the right password, is never refused: an
attacker cannot lock real calls out of a number.

A nonce used in a failed attempt is dead: the right password on it afterwards is
challenged again with a fresh nonce. Meta answers each challenge once and never
reuses a nonce after a 403 (docs/whatsapp-sip.md section 3), so this never costs a
real call. Dead nonces are kept until they would have expired anyway (the digest
server's nonce TTL), in a bounded table.

``now`` is the caller's clock (monotonic or wall-clock, used consistently).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

__all__ = ["DigestThrottle", "ThrottleStats"]


@dataclass
class ThrottleStats:
    """Plain counters read by the metrics collector at scrape time."""

    failures: Counter[str] = field(default_factory=Counter)  # by verify outcome
    throttled: int = 0  # attempts refused in a backoff without checking the digest
    backoffs: int = 0  # backoffs started
    invalidated_nonces: int = 0
    dead_nonce_attempts: int = 0  # attempts on a dead nonce (challenged again)


class _Record:
    __slots__ = ("count", "last", "until")

    def __init__(self) -> None:
        self.count = 0
        self.last = float("-inf")
        self.until = float("-inf")


class DigestThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        number_failures: int = 20,
        nonce_ttl: float = 300.0,
        max_entries: int = 10_000,
        max_dead_nonces: int = 100_000,
    ) -> None:
        if not (max_failures >= 1 and number_failures >= 1 and max_entries >= 1):
            raise ValueError("failure thresholds and table sizes must be at least 1")
        if not (window > 0 and 0 < backoff <= max_backoff and nonce_ttl > 0):
            raise ValueError("need window > 0, 0 < backoff <= max_backoff, nonce_ttl > 0")
        self.max_failures = max_failures
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.number_failures = number_failures
        self.nonce_ttl = nonce_ttl
        self.max_entries = max_entries
        self.max_dead_nonces = max_dead_nonces
        self.stats = ThrottleStats()
        self._pairs: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._numbers: dict[str, _Record] = {}
        self._dead: OrderedDict[str, float] = OrderedDict()  # nonce -> when it expires

    # -- backoff --------------------------------------------------------------
    def blocked(self, source: str, number: str, now: float) -> float | None:
        """Seconds of backoff left for ``source`` on ``number``, None when not in one."""
        rec = self._pairs.get((source, number))
        if rec is None or now >= rec.until:
            return None
        return rec.until - now

    def refused(self) -> None:
        """Count an attempt answered 403 in a backoff."""
        self.stats.throttled += 1

    def failed(self, source: str, number: str, now: float, outcome: str) -> float:
        """Record a checked attempt that failed; returns the backoff it started (0: none)."""
        self.stats.failures[outcome] += 1
        nrec = self._numbers.get(number)
        if nrec is None:
            if len(self._numbers) >= self.max_entries:
                self._numbers.clear()
            nrec = self._numbers[number] = _Record()
        _bump(nrec, now, self.window)
        rec = self._pairs.get((source, number))
        if rec is None:
            rec = self._pairs[(source, number)] = _Record()
            if len(self._pairs) > self.max_entries:
                self._pairs.popitem(last=False)
        else:
            self._pairs.move_to_end((source, number))
        _bump(rec, now, self.window)
        threshold = self.max_failures
        if nrec.count >= self.number_failures:
            threshold = 1  # the number is under attack: no free failures for anyone
        if rec.count < threshold:
            return 0.0
        delay = min(self.max_backoff, self.backoff * 2.0 ** min(rec.count - threshold, 32))
        rec.until = now + delay
        self.stats.backoffs += 1
        return delay

    def succeeded(self, source: str, number: str) -> None:
        """A right answer from ``source``: its failures for ``number`` are forgotten."""
        self._pairs.pop((source, number), None)

    # -- nonces -----------------------------------------------------------------
    def invalidate(self, nonce: str, now: float) -> None:
        dead = self._dead
        if nonce in dead:
            return
        self._prune(now)
        dead[nonce] = now + self.nonce_ttl
        self.stats.invalidated_nonces += 1
        while len(dead) > self.max_dead_nonces:
            dead.popitem(last=False)

    def is_dead(self, nonce: str, now: float) -> bool:
        expires = self._dead.get(nonce)
        if expires is None:
            return False
        if now >= expires:
            del self._dead[nonce]
            return False
        self.stats.dead_nonce_attempts += 1
        return True

    def _prune(self, now: float) -> None:
        dead = self._dead
        while dead:
            nonce, expires = next(iter(dead.items()))
            if expires > now:
                return
            del dead[nonce]

    @property
    def dead_nonces(self) -> int:
        return len(self._dead)

    @property
    def tracked(self) -> int:
        return len(self._pairs)


def _bump(rec: _Record, now: float, window: float) -> None:
    if now - rec.last > window:
        rec.count = 0  # the last failure is older than the window: start over
    rec.count += 1
    rec.last = now
