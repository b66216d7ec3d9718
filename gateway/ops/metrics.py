"""Prometheus metrics.

The protocol layers keep plain counters (:class:`gateway.transport.sip.SipStats`)
and this module reads them at scrape time through a custom collector, so the
hot paths never call into prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.sip.transaction import TransactionManager
from gateway.transport.sip import SipStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SipCollector(Collector):
    def __init__(self, stats: SipStats, manager: TransactionManager) -> None:
        self._stats = stats
        self._manager = manager

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats
        req = CounterMetricFamily(
            "wagw_sip_requests", "SIP requests received", labels=["leg", "method"]
        )
        for (leg, method), n in sorted(s.requests.items()):
            req.add_metric([leg, method], n)
        yield req
        resp = CounterMetricFamily(
            "wagw_sip_responses", "SIP responses received", labels=["leg", "code"]
        )
        for (leg, code), n in sorted(s.responses.items()):
            resp.add_metric([leg, str(code)], n)
        yield resp
        errors = CounterMetricFamily(
            "wagw_sip_parse_errors", "SIP messages that failed to parse", labels=["leg"]
        )
        for leg in ("whatsapp", "pbx"):
            errors.add_metric([leg], s.parse_errors.get(leg, 0))
        yield errors
        rejected = CounterMetricFamily(
            "wagw_sip_rejected_sources",
            "Packets or connections refused by the source-address allow list",
            labels=["leg"],
        )
        for leg in ("whatsapp", "pbx"):
            rejected.add_metric([leg], s.rejected_sources.get(leg, 0))
        yield rejected
        yield GaugeMetricFamily(
            "wagw_sip_transactions", "Open SIP transactions", value=len(self._manager)
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._bound = False

    def bind(self, stats: SipStats, manager: TransactionManager) -> None:
        if not self._bound:
            self.registry.register(_SipCollector(stats, manager))
            self.registry.register(_BuildInfo())
            self._bound = True

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BuildInfo(Collector):
    def collect(self) -> Iterator[InfoMetricFamily]:
        yield InfoMetricFamily("wagw_build", "Gateway build", value={"version": __version__})
