"""Overload control wired into the daemon: the SIP stack's screen, the lag probe, metrics.

:class:`Admission` is the :data:`gateway.transport.sip.Screen` the app installs: each
request goes through :class:`gateway.sip.overload.OverloadControl` (per-source
limits, then global admission) and, when it is a new INVITE from Meta, through the
call table's stateless challenge (:meth:`CallManager.screen_invite`). Whatever is
answered here is answered without a transaction: a 503 with Retry-After, a 407, a
throttled 403. The :class:`LoadMonitor`'s lag readings come from the runtime's one
loop-lag probe (:class:`gateway.ops.lag.LagProbe`). :class:`OverloadCollector`
exports the counters at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.b2bua.calls import CallManager
from gateway.config import Config
from gateway.logging import LogLimiter, get_logger
from gateway.ops.lag import PROBE_INTERVAL
from gateway.sip.digest_throttle import DigestThrottle
from gateway.sip.message import Request, make_response
from gateway.sip.overload import (
    Budget,
    LoadMonitor,
    OverloadControl,
    SourceLimiter,
    Verdict,
)
from gateway.sip.transaction import Outgoing, Target, TransactionManager, response_target, stamp_via
from gateway.sip.uri import UriError
from gateway.transport.sip import SipStack

log = get_logger(__name__)


def build_throttle(cfg: Config, nonce_ttl: float = 300.0) -> DigestThrottle | None:
    t = cfg.sip.digest_throttle
    if not t.enabled:
        return None
    return DigestThrottle(
        max_failures=t.max_failures,
        window=t.window,
        backoff=t.backoff,
        max_backoff=t.max_backoff,
        number_failures=t.number_failures,
        nonce_ttl=nonce_ttl,
    )


def build_control(cfg: Config) -> OverloadControl:
    rl, ov = cfg.sip.rate_limits, cfg.sip.overload
    limiter = None
    if rl.enabled:
        limiter = SourceLimiter(
            Budget(rl.invite.rate, rl.invite.burst),
            Budget(rl.other.rate, rl.other.burst),
            Budget(rl.refusals.rate, rl.refusals.burst),
            messages=Budget(rl.messages.rate, rl.messages.burst),
            max_sources=rl.max_sources,
        )
    monitor = None
    if ov.enabled:
        monitor = LoadMonitor(
            lag_threshold=ov.lag_threshold,
            hold=ov.hold,
            interval=PROBE_INTERVAL,
            max_transactions=ov.max_transactions,
            hard_max_transactions=ov.hard_max_transactions,
        )
    return OverloadControl(limiter, monitor)


class Admission:
    """The SIP stack's screen (see the module docstring)."""

    def __init__(
        self,
        control: OverloadControl,
        manager: TransactionManager,
        calls: CallManager | None,
        *,
        retry_after: int = 5,
        user_agent: str = "wa-sip-gateway",
    ) -> None:
        self.control = control
        self.manager = manager
        self.calls = calls
        self.retry_after = str(retry_after)
        self.user_agent = user_agent
        self._logs = LogLimiter(5.0, max_keys=1024)

    def __call__(
        self, req: Request, source: Target, leg: str, now: float
    ) -> Sequence[Outgoing] | None:
        try:
            return self._screen(req, source, leg, now)
        except Exception:  # never lose a request to a bug here: the core judges it
            log.exception("sip_screen_error", leg=leg)
            return None

    def prescreen(self, data: bytes, source: Target, leg: str, now: float) -> bool:
        if self.control.prescreen(data, source.host, leg, now):
            return True
        self._log("rate", Verdict.DROP, source, leg, "unparsed", now)
        return False

    def _screen(
        self, req: Request, source: Target, leg: str, now: float
    ) -> Sequence[Outgoing] | None:
        try:
            to_tag = req.to.tag
        except UriError:
            return None  # the transaction layer and the TU answer what does not parse
        method = req.method
        decision = self.control.screen(
            method, to_tag, source.host, leg, now, self.manager.server_count
        )
        verdict = decision.verdict
        if verdict is Verdict.DROP:
            self._log(decision.reason, verdict, source, leg, method, now)
            return ()
        if verdict is Verdict.REFUSE:
            self._log(decision.reason, verdict, source, leg, method, now)
            return [self._refuse(req, source)]
        if method == "INVITE" and not to_tag and self.calls is not None:
            resp = self.calls.screen_invite(req, source, leg)
            if resp is not None:
                return [Outgoing(resp, response_target(req, source))]
        return None

    def _refuse(self, req: Request, source: Target) -> Outgoing:
        stamp_via(req, source)
        tag = self.calls.challenger.stateless_tag(req) if self.calls is not None else None
        resp = make_response(req, 503, to_tag=tag)
        resp.headers.add("Server", self.user_agent)
        resp.headers.add("Retry-After", self.retry_after)
        return Outgoing(resp, response_target(req, source))

    def _log(
        self, reason: str, verdict: Verdict, source: Target, leg: str, method: str, now: float
    ) -> None:
        key = f"{reason}:{source.host}" if reason == "rate" else reason
        held = self._logs.allow(key, now)
        if held is None:
            return
        event = "sip_rate_limited" if reason == "rate" else "sip_overload"
        monitor = self.control.monitor
        lag = round(monitor.current_lag(now), 3) if monitor is not None else None
        log.warning(event, leg=leg, peer=source.host, method=method, reason=reason,
                    action=verdict.value, lag=lag, server_transactions=self.manager.server_count,
                    not_logged=held)  # fmt: skip


class OverloadControls:
    """Everything above, built from the config and installed on the SIP stack."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float],
        stack: SipStack,
        manager: TransactionManager,
        calls: CallManager | None,
        throttle: DigestThrottle | None,
    ) -> None:
        self.throttle = throttle
        self.clock = clock
        control = build_control(cfg)
        self.admission = Admission(
            control,
            manager,
            calls,
            retry_after=cfg.sip.overload.retry_after,
            user_agent=cfg.sip.user_agent,
        )
        stack.screen = self.admission
        stack.prescreen = self.admission.prescreen

    @property
    def monitor(self) -> LoadMonitor | None:
        """What the loop-lag probe feeds (None: ``sip.overload`` is off)."""
        return self.admission.control.monitor

    def collector(self) -> OverloadCollector:
        return OverloadCollector(self.admission, self.throttle, self.clock)


class OverloadCollector(Collector):
    """Overload control's counters and gauges, read at scrape time."""

    def __init__(
        self,
        admission: Admission,
        throttle: DigestThrottle | None,
        clock: Callable[[], float],
    ) -> None:
        self._adm = admission
        self._throttle = throttle
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        adm = self._adm
        control = adm.control
        stats = control.stats
        limited = CounterMetricFamily(
            "wagw_sip_rate_limited",
            "Requests over their source's budget (sip.rate_limits), by leg, class and action",
            labels=["leg", "class", "action"],
        )
        for (leg, kind, action), n in sorted(stats.limited.items()):
            limited.add_metric([leg, kind, action], n)
        yield limited
        overload = CounterMetricFamily(
            "wagw_sip_overload",
            "Requests refused (503) or dropped by global admission (sip.overload), by reason",
            labels=["reason", "action"],
        )
        for (reason, action), n in sorted(stats.overload.items()):
            overload.add_metric([reason, action], n)
        yield overload
        now = self._clock()
        monitor = control.monitor
        yield GaugeMetricFamily(
            "wagw_sip_loop_lag_seconds",
            "Event-loop lag as admission control sees it now (50 ms probe)",
            value=monitor.current_lag(now) if monitor is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "wagw_sip_overloaded",
            "1 while new INVITEs get 503 for event-loop lag or open transactions",
            value=int(
                monitor is not None
                and (monitor.lagging(now) or adm.manager.server_count >= monitor.max_transactions)
            ),
        )
        yield GaugeMetricFamily(
            "wagw_sip_server_transactions",
            "Open SIP server transactions",
            value=adm.manager.server_count,
        )
        limiter = control.limiter
        yield GaugeMetricFamily(
            "wagw_sip_rate_limit_sources",
            "Source addresses tracked by sip.rate_limits",
            value=len(limiter) if limiter is not None else 0,
        )
        stateless = CounterMetricFamily(
            "wagw_sip_stateless_responses",
            "Responses to Meta's INVITEs sent without a transaction (407 challenge, 403"
            " throttled); the 503s of overload control are in wagw_sip_rate_limited and"
            " wagw_sip_overload",
            labels=["code"],
        )
        sent = adm.calls.challenger.stateless_sent if adm.calls is not None else {}
        for code in (403, 407):
            stateless.add_metric([str(code)], sent.get(code, 0))
        yield stateless
        yield from self._digest()

    def _digest(self) -> Iterator[Any]:
        throttle = self._throttle
        t = throttle.stats if throttle is not None else None
        failures = CounterMetricFamily(
            "wagw_digest_failures",
            "Digest attempts checked and failed, by outcome (bad_response, username, ...)",
            labels=["outcome"],
        )
        for outcome, n in sorted(t.failures.items()) if t is not None else []:
            failures.add_metric([outcome], n)
        yield failures
        for name, doc, value in (
            ("wagw_digest_throttled", "Digest attempts answered 403 in a backoff, unchecked",
             t.throttled if t else 0),
            ("wagw_digest_backoffs", "Digest backoffs started (per source and number)",
             t.backoffs if t else 0),
            ("wagw_digest_nonces_invalidated", "Nonces made dead by a failed attempt",
             t.invalidated_nonces if t else 0),
            ("wagw_digest_dead_nonce_attempts",
             "Attempts on a dead nonce (challenged again with a fresh one)",
             t.dead_nonce_attempts if t else 0),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
