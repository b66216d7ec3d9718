"""The PBX's liveness: a SIP OPTIONS probe every ``pbx.probe_interval`` seconds.

:class:`PbxProber` sends OPTIONS through the transaction layer like the calls'
requests and counts the probes left unanswered; the health report blocks at
:data:`PBX_MISSES_TO_BLOCK` (:func:`gateway.ops.health.pbx_findings`).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.b2bua.port import LegAddress, Scheduler, SipPort, TimerHandle
from gateway.logging import get_logger
from gateway.netaddr import hostport
from gateway.sip.ids import new_call_id, new_tag
from gateway.sip.message import Request
from gateway.sip.transaction import (
    ClientTransaction,
    Event,
    ResponseReceived,
    Target,
    TransactionTimeout,
    TransportFailure,
)

__all__ = ["PBX_MISSES_TO_BLOCK", "PbxProber"]

log = get_logger(__name__)

PBX_MISSES_TO_BLOCK = 3


class PbxProber:
    """SIP OPTIONS to the PBX every ``interval`` seconds through the transaction layer.

    A probe still unanswered when the next one is due is a miss; any response (even
    404 or 405: the PBX is there) clears the count. The health report blocks at
    :data:`PBX_MISSES_TO_BLOCK` misses (:func:`gateway.ops.health.pbx_findings`).
    :meth:`claims` takes the events of the probes' transactions before the call table
    sees them.
    """

    def __init__(
        self,
        sip: SipPort,
        scheduler: Scheduler,
        via: LegAddress,
        target: Target,
        interval: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._sip = sip
        self._scheduler = scheduler
        self._via = via
        self.target = target
        self.interval = interval
        self._on_change = on_change
        self.misses = 0
        self.probes = 0
        self.answered = 0
        self._current: ClientTransaction | None = None
        self._current_answered = False
        self._outstanding: set[ClientTransaction] = set()
        self._timer: TimerHandle | None = None
        self._stopped = False

    @property
    def where(self) -> str:
        t = self.target
        return f"{t.transport} {hostport(t.host, t.port)}"

    def start(self) -> None:
        """First probe after one interval (a PBX scripted for one call is left alone)."""
        self._stopped = False
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def set_interval(self, interval: float) -> None:
        if interval != self.interval:
            self.interval = interval
            if self._timer is not None:
                self._timer.cancel()
                self._schedule()

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self._scheduler.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        self._timer = None
        if self._current is not None and not self._current_answered:
            self.misses += 1
            if self.misses == PBX_MISSES_TO_BLOCK:
                log.warning("pbx_not_answering", pbx=self.where, misses=self.misses)
                if self._on_change is not None:
                    self._on_change()
        try:
            self._current = self._send()
            self._current_answered = False
            self._outstanding.add(self._current)
            self.probes += 1
            self._sip.flush()
        except Exception:
            log.exception("pbx_probe_failed", pbx=self.where)
        self._schedule()

    def _send(self) -> ClientTransaction:
        via, t = self._via, self.target
        uri = f"sip:{hostport(t.host, t.port)}"
        if t.transport != "udp":
            uri += f";transport={t.transport}"
        req = Request(method="OPTIONS", uri=uri)
        h = req.headers
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:wa-sip-gateway@{via.hostport}>;tag={new_tag()}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", new_call_id(via.host))
        h.add("CSeq", "1 OPTIONS")
        h.add("Accept", "application/sdp")
        return self._sip.send_request(req, via, t)

    def claims(self, event: Event) -> bool:
        """Handle ``event`` if it belongs to a probe (True), else leave it (False)."""
        tx = getattr(event, "tx", None)
        if not isinstance(tx, ClientTransaction) or tx not in self._outstanding:
            return False
        if isinstance(event, ResponseReceived):
            if event.response.status >= 200:
                self._outstanding.discard(tx)
            if tx is self._current:
                self._current_answered = True
            self.answered += 1
            if self.misses:
                was_blocked = self.misses >= PBX_MISSES_TO_BLOCK
                self.misses = 0
                if was_blocked:
                    log.info("pbx_answering_again", pbx=self.where)
                    if self._on_change is not None:
                        self._on_change()
        elif isinstance(event, TransactionTimeout | TransportFailure):
            self._outstanding.discard(tx)
        return True
