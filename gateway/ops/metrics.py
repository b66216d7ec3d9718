"""Prometheus metrics.

The protocol layers keep plain counters (:class:`gateway.transport.sip.SipStats`,
the bridges' per-leg counters, :class:`gateway.transport.rtp.FrameTimes`) and
this module reads them at scrape time through custom collectors, so the hot
paths never call into prometheus-client. What happens once per call (setup
time, duration, MOS, results) is kept in :class:`CallStats`, fed by the app
when a call is answered or ends.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.media.stats import BridgeStats, LegStats, WebRtcStats
from gateway.ops.report import Report
from gateway.sip.transaction import TransactionManager
from gateway.transport.guard import CLOSE_REASONS, HANDSHAKE_RESULTS, REFUSALS
from gateway.transport.rtp import FrameTimes
from gateway.transport.sip import SipStats

__all__ = ["CONTENT_TYPE", "Buckets", "CallStats", "Metrics", "OpsView", "meta_failure"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LEGS = ("whatsapp", "pbx")
SETUP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
HANDSHAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# A WebRTC-mode call's outcome, by the start of the link's failure text (few labels).
WEBRTC_OUTCOMES = (
    ("ICE checks unanswered", "ice_unanswered"),
    ("ICE consent lost", "consent_lost"),
    ("ICE", "ice_failed"),
    ("DTLS fingerprint", "fingerprint_mismatch"),
    ("DTLS timeout", "dtls_timeout"),
    ("DTLS", "dtls_failed"),
)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5)
# Per-leg packets the bridge did not take as received (gateway/media/leg.py): the
# LegStats field, the counter family and its help text.
DROP_STATS = {
    "foreign_packets": (
        "wagw_rtp_foreign_packets",
        "Packets from a host that is not the leg's peer (or before its SDP), dropped",
    ),
    "bad_packets": (
        "wagw_rtp_bad_packets",
        "Packets from the peer that are not its stream (not RTP/RTCP, another payload "
        "type, malformed) or do not decode",
    ),
    "relatch_refused": (
        "wagw_rtp_relatch_refused",
        "Packets from the peer's host but not its latched source (another port), dropped",
    ),
}
_LABEL = re.compile(r"[^a-z0-9_]+")


class Buckets:
    """A histogram in plain Python: fixed upper bounds, counts per bucket, a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_float(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _float(value: float) -> str:
    return repr(float(value))


def _label(text: object, limit: int = 40) -> str:
    return _LABEL.sub("_", str(text).lower()).strip("_")[:limit] or "none"


def meta_failure(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, reason) when a call failed on Meta's side, else None.

    Business-initiated calls: Meta's failure response (``meta_failure`` in the call's
    record: its status and a short label of its Warning). Both directions: Meta never
    ACKed our 200 (``ack_timeout``), or stopped sending media (``media_timeout``).
    """
    failure = record.get("meta_failure")
    if isinstance(failure, Mapping) and failure.get("code") is not None:
        return str(failure.get("code")), _label(failure.get("reason") or "none")
    cause = str(record.get("end_cause") or record.get("end_reason") or "")
    if cause == "meta_no_ack":
        return "ack_timeout", "no_ack_from_meta"
    if cause == "no_media_whatsapp":
        return "media_timeout", "no_media_from_whatsapp"
    return None


def _result(record: Mapping[str, Any]) -> str:
    if record.get("answer_time") is not None:
        return "answered"
    if record.get("status") == 487 or record.get("end_cause") == "cancelled":
        return "cancelled"
    return "failed"


class StatsSource(Protocol):
    """A call's media bridge, as metrics read it."""

    def stats(self) -> BridgeStats: ...


class ActiveCall(Protocol):
    key: str
    started: float
    answered_at: float | None

    @property
    def bridge(self) -> StatsSource: ...


def _drops(leg: LegStats) -> tuple[tuple[str, int], ...]:
    """(DROP_STATS key, count) of one leg."""
    return (
        ("foreign_packets", leg.foreign_packets),
        ("bad_packets", leg.bad_packets),
        ("relatch_refused", leg.relatch_refused),
    )


class CallStats:
    """Per-call totals and histograms (updated a few times per call, read at scrape)."""

    def __init__(self) -> None:
        self.results: Counter[tuple[str, str]] = Counter()  # (direction, result)
        self.rejections: Counter[tuple[str, str]] = Counter()  # (direction, code)
        self.setup = Buckets(SETUP_BUCKETS)
        self.duration = Buckets(DURATION_BUCKETS)
        self.mos = Buckets(MOS_BUCKETS)
        self.jitter = {leg: Buckets(JITTER_BUCKETS) for leg in LEGS}
        self.packets: Counter[tuple[str, str]] = Counter()  # (leg, rx|tx) of ended calls
        self.lost: Counter[str] = Counter()
        self.srtp_auth_failures = 0
        self.dropped: Counter[tuple[str, str]] = Counter()  # (leg, DROP_STATS key)
        self.dtmf: Counter[str] = Counter()  # to_pbx | to_whatsapp
        self.meta_failures: Counter[tuple[str, str]] = Counter()
        self.webrtc: Counter[str] = Counter()  # WebRTC-mode calls by outcome
        self.ice_time = Buckets(HANDSHAKE_BUCKETS)
        self.dtls_time = Buckets(HANDSHAKE_BUCKETS)
        self._setup_seen: set[str] = set()
        self._lost_high: dict[tuple[str, str], int] = {}

    def rejected(self, direction: str, status: int, count: int = 1) -> None:
        self.rejections[(direction, str(status))] += count
        self.results[(direction, "rejected")] += count

    def answered(self, key: str, setup_seconds: float) -> None:
        if key not in self._setup_seen:
            self._setup_seen.add(key)
            self.setup.observe(max(0.0, setup_seconds))

    def sample_active(self, calls: Iterable[ActiveCall]) -> None:
        """Setup time of newly answered calls, and one jitter sample per receiving leg."""
        for call in calls:
            if call.answered_at is not None and call.key not in self._setup_seen:
                self.answered(call.key, call.answered_at - call.started)
            stats = call.bridge.stats()
            for leg in LEGS:
                item = stats.leg(leg)
                if item.rx_packets:
                    self.jitter[leg].observe(item.jitter_seconds)

    def ended(self, call: ActiveCall, record: Mapping[str, Any]) -> None:
        """Account an ended call from its built record (see :mod:`gateway.ops.records`)."""
        direction = str(record.get("direction") or "inbound")
        self.results[(direction, _result(record))] += 1
        if call.answered_at is not None:
            self.answered(call.key, call.answered_at - call.started)
            self.duration.observe(float(record.get("duration_seconds") or 0.0))
        self._setup_seen.discard(call.key)
        stats = call.bridge.stats()
        for leg in LEGS:
            item = stats.leg(leg)
            self.packets[(leg, "rx")] += item.rx_packets
            self.packets[(leg, "tx")] += item.tx_packets
            self.lost[leg] += self._lost(call.key, leg, item)
            self._lost_high.pop((call.key, leg), None)
            self.srtp_auth_failures += item.srtp_auth_failures
            for name, n in _drops(item):
                self.dropped[(leg, name)] += n
        dtmf = record.get("dtmf")
        if isinstance(dtmf, Mapping):
            for direction_key in ("to_pbx", "to_whatsapp"):
                self.dtmf[direction_key] += int(dtmf.get(direction_key) or 0)
        mos = record.get("mos")
        if isinstance(mos, float | int):
            self.mos.observe(float(mos))
        failure = meta_failure(record)
        if failure is not None:
            self.meta_failures[failure] += 1
        if stats.webrtc is not None:
            self._webrtc_ended(stats.webrtc)

    def _webrtc_ended(self, link: WebRtcStats) -> None:
        if link.ice_ms is not None:
            self.ice_time.observe(link.ice_ms / 1000)
        if link.dtls_ms is not None:
            self.dtls_time.observe(link.dtls_ms / 1000)
        why = link.failure
        if why is None:
            outcome = "connected" if link.srtp_suite else "not_connected"
        else:
            outcome = next((o for start, o in WEBRTC_OUTCOMES if why.startswith(start)), "other")
        self.webrtc[outcome] += 1

    def _lost(self, key: str, leg: str, item: LegStats) -> int:
        """Lost packets of one live leg, never decreasing (RFC 3550 cumulative loss goes
        down when duplicates arrive; a counter must not)."""
        value = max(0, item.lost, self._lost_high.get((key, leg), 0))
        self._lost_high[(key, leg)] = value
        return value

    def live_media(self, calls: Iterable[ActiveCall]) -> tuple[Counter[Any], Counter[str], int]:
        """(packets, lost, srtp auth failures) summed over live calls."""
        packets: Counter[tuple[str, str]] = Counter()
        lost: Counter[str] = Counter()
        auth = 0
        for call in calls:
            stats = call.bridge.stats()
            for leg in LEGS:
                item = stats.leg(leg)
                packets[(leg, "rx")] += item.rx_packets
                packets[(leg, "tx")] += item.tx_packets
                lost[leg] += self._lost(call.key, leg, item)
                auth += item.srtp_auth_failures
        return packets, lost, auth

    def live_dropped(self, calls: Iterable[ActiveCall]) -> Counter[tuple[str, str]]:
        """Packets not taken as received, by (leg, DROP_STATS key), over live calls."""
        out: Counter[tuple[str, str]] = Counter()
        for call in calls:
            stats = call.bridge.stats()
            for leg in LEGS:
                for name, n in _drops(stats.leg(leg)):
                    out[(leg, name)] += n
        return out

    def live_dtmf(self, calls: Iterable[ActiveCall]) -> Counter[str]:
        out: Counter[str] = Counter()
        for call in calls:
            stats = call.bridge.stats()
            out["to_pbx"] += stats.dtmf_events_to_pbx
            out["to_whatsapp"] += stats.dtmf_events_to_whatsapp
        return out


class OpsView(Protocol):
    """What the collectors read from the running gateway (the app implements it)."""

    def active_calls(self) -> Sequence[Any]: ...

    def health_report(self) -> Report: ...

    def cert_expiry(self) -> float | None: ...

    def loop_lag(self) -> float: ...

    def draining(self) -> bool: ...

    def capacity(self) -> tuple[int, int]:
        """(limits.max_calls, free media ports)."""
        ...

    def frame_times_view(self) -> Mapping[str, FrameTimes]: ...

    def extra_counters(self) -> Mapping[str, float]:
        """pbx_probe_misses, records_written, record_errors, reloads_ok, reloads_refused."""
        ...


def _histogram(
    name: str, doc: str, parts: Iterable[tuple[Sequence[str], Buckets]], labels: Sequence[str] = ()
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, buckets in parts:
        family.add_metric(list(values), buckets.cumulative(), sum_value=buckets.total)
    return family


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
        for leg in LEGS:
            errors.add_metric([leg], s.parse_errors.get(leg, 0))
        yield errors
        rejected = CounterMetricFamily(
            "wagw_sip_rejected_sources",
            "Packets or connections refused by the source-address allow list",
            labels=["leg"],
        )
        for leg in LEGS:
            rejected.add_metric([leg], s.rejected_sources.get(leg, 0))
        yield rejected
        yield from self._connection_families()
        yield GaugeMetricFamily(
            "wagw_sip_transactions", "Open SIP transactions", value=len(self._manager)
        )

    def _connection_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._stats.connections
        gauge = GaugeMetricFamily(
            "wagw_sip_connections",
            "TCP/TLS connections open (inbound, handshakes included, and outbound)",
            labels=["leg", "transport"],
        )
        for leg in LEGS:
            for kind in ("tcp", "tls"):
                gauge.add_metric([leg, kind], c.open.get((leg, kind), 0))
        yield gauge
        families = (
            (
                "wagw_sip_tls_handshakes",
                "Inbound TLS handshakes by result",
                "result",
                HANDSHAKE_RESULTS,
                c.handshakes,
            ),
            (
                "wagw_sip_connections_refused",
                "Inbound TCP/TLS connections refused at accept,"
                " before any TLS: source not allowed, or the cap that was full",
                "reason",
                REFUSALS,
                c.refused,
            ),
            (
                "wagw_sip_connections_closed",
                "Inbound TCP/TLS connections closed by a deadline or for a full write buffer",
                "reason",
                CLOSE_REASONS,
                c.closed,
            ),
        )
        for name, doc, label, values, counts in families:
            family = CounterMetricFamily(name, doc, labels=["leg", label])
            for leg in LEGS:
                for value in values:
                    family.add_metric([leg, value], counts.get((leg, value), 0))
            yield family


class _OpsCollector(Collector):
    def __init__(self, view: OpsView, calls: CallStats) -> None:
        self._view = view
        self._calls = calls

    def collect(self) -> Iterator[Any]:
        view = self._view
        active = list(view.active_calls())
        yield from self._calls_families(active)
        yield from self._media_families(active)
        yield from self._health_families()
        extra = view.extra_counters()
        yield GaugeMetricFamily(
            "wagw_pbx_probe_misses",
            "Consecutive SIP OPTIONS probes the PBX left unanswered (3 = BLOCKED)",
            value=extra.get("pbx_probe_misses", 0),
        )
        records = CounterMetricFamily(
            "wagw_call_records", "Call records written, by result", labels=["result"]
        )
        records.add_metric(["written"], extra.get("records_written", 0))
        records.add_metric(["error"], extra.get("record_errors", 0))
        yield records
        reloads = CounterMetricFamily(
            "wagw_config_reloads", "SIGHUP reloads, by result", labels=["result"]
        )
        reloads.add_metric(["applied"], extra.get("reloads_ok", 0))
        reloads.add_metric(["refused"], extra.get("reloads_refused", 0))
        yield reloads

    def _calls_families(self, active: list[Any]) -> Iterator[Any]:
        cs = self._calls
        gauge = GaugeMetricFamily("wagw_calls_active", "Calls in progress", labels=["direction"])
        by_direction = Counter(getattr(c, "direction", "inbound") for c in active)
        for direction in sorted({"inbound", "outbound", *by_direction}):
            gauge.add_metric([direction], by_direction.get(direction, 0))
        yield gauge
        max_calls, ports_free = self._view.capacity()
        yield GaugeMetricFamily("wagw_calls_max", "limits.max_calls", value=max_calls)
        yield GaugeMetricFamily(
            "wagw_media_ports_free", "Free RTP ports (two per call)", value=ports_free
        )
        total = CounterMetricFamily(
            "wagw_calls",
            "Calls by direction and result (answered, failed, cancelled, rejected)",
            labels=["direction", "result"],
        )
        for (direction, result), n in sorted(cs.results.items()):
            total.add_metric([direction, result], n)
        yield total
        rejections = CounterMetricFamily(
            "wagw_call_rejections",
            "INVITEs refused at admission, by SIP status (503 capacity/drain, 404, 403, ...)",
            labels=["direction", "code"],
        )
        for (direction, code), n in sorted(cs.rejections.items()):
            rejections.add_metric([direction, code], n)
        yield rejections
        yield _histogram(
            "wagw_call_setup_seconds", "Time from the INVITE to the answer", [((), cs.setup)]
        )
        yield _histogram(
            "wagw_call_duration_seconds", "Answered calls' duration", [((), cs.duration)]
        )
        yield _histogram(
            "wagw_call_mos_estimate",
            "Estimated MOS of ended calls (E-model from loss and jitter, worse leg)",
            [((), cs.mos)],
        )
        webrtc = CounterMetricFamily(
            "wagw_webrtc_calls",
            "Ended calls in Meta's WebRTC media mode (ICE + DTLS-SRTP), by outcome",
            labels=["outcome"],
        )
        for outcome, n in sorted(cs.webrtc.items()):
            webrtc.add_metric([outcome], n)
        yield webrtc
        yield _histogram(
            "wagw_webrtc_setup_seconds",
            "WebRTC mode: time to the nominated ICE pair, and the DTLS handshake",
            [(("ice",), cs.ice_time), (("dtls",), cs.dtls_time)],
            ["phase"],
        )
        meta = CounterMetricFamily(
            "wagw_meta_failures",
            "Calls that failed on Meta's side, by Meta's status (or ack_timeout,"
            " media_timeout) and reason",
            labels=["code", "reason"],
        )
        for (code, reason), n in sorted(cs.meta_failures.items()):
            meta.add_metric([code, reason], n)
        yield meta

    def _media_families(self, active: list[Any]) -> Iterator[Any]:
        cs = self._calls
        live_packets, live_lost, live_auth = cs.live_media(active)
        packets = CounterMetricFamily(
            "wagw_rtp_packets",
            "RTP packets per leg, received (rx) and sent (tx)",
            labels=["leg", "direction"],
        )
        for leg in LEGS:
            for direction in ("rx", "tx"):
                key = (leg, direction)
                packets.add_metric([leg, direction], cs.packets[key] + live_packets[key])
        yield packets
        lost = CounterMetricFamily(
            "wagw_rtp_packets_lost", "RTP packets lost (RFC 3550 cumulative)", labels=["leg"]
        )
        for leg in LEGS:
            lost.add_metric([leg], cs.lost[leg] + live_lost[leg])
        yield lost
        yield CounterMetricFamily(
            "wagw_srtp_auth_failures",
            "SRTP/SRTCP packets from Meta that failed authentication (dropped)",
            value=cs.srtp_auth_failures + live_auth,
        )
        live_dropped = cs.live_dropped(active)
        for name, (metric, help_text) in DROP_STATS.items():
            family = CounterMetricFamily(metric, help_text, labels=["leg"])
            for leg in LEGS:
                family.add_metric([leg], cs.dropped[(leg, name)] + live_dropped[(leg, name)])
            yield family
        yield _histogram(
            "wagw_rtp_jitter_seconds",
            "Interarrival jitter (RFC 3550) of each receiving leg, sampled every 5 s",
            [((leg,), cs.jitter[leg]) for leg in LEGS],
            ["leg"],
        )
        frames = HistogramMetricFamily(
            "wagw_media_frame_seconds",
            "Processing time of one received RTP packet (decrypt, transcode, send)",
            labels=["leg"],
        )
        for leg, times in sorted(self._view.frame_times_view().items()):
            buckets = [
                ("+Inf" if b == float("inf") else _float(b / 1e9), float(n))
                for b, n in times.cumulative()
            ]
            frames.add_metric([leg], buckets, sum_value=times.sum_ns / 1e9)
        yield frames
        live_dtmf = cs.live_dtmf(active)
        dtmf = CounterMetricFamily(
            "wagw_dtmf_events", "RFC 4733 events relayed", labels=["direction"]
        )
        for direction in ("to_pbx", "to_whatsapp"):
            dtmf.add_metric([direction], cs.dtmf[direction] + live_dtmf[direction])
        yield dtmf

    def _health_families(self) -> Iterator[Any]:
        view = self._view
        report = view.health_report()
        health = GaugeMetricFamily(
            "wagw_health_status",
            "can_receive_call_sip per entity: 0 AVAILABLE, 1 LIMITED, 2 BLOCKED",
            labels=["entity", "id"],
        )
        for entity in report.entities:
            health.add_metric([entity.entity_type.lower(), entity.id], int(entity.status))
        yield health
        expiry = view.cert_expiry()
        if expiry is not None:
            yield GaugeMetricFamily(
                "wagw_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the TLS certificate in force (Unix time)",
                value=expiry,
            )
        yield GaugeMetricFamily(
            "wagw_event_loop_lag_seconds",
            "Largest event-loop delay seen in the last 10 s",
            value=view.loop_lag(),
        )
        yield GaugeMetricFamily(
            "wagw_draining", "1 while draining (SIGTERM received)", value=int(view.draining())
        )


class _BuildInfo(Collector):
    def __init__(self, media_engine: str) -> None:
        self._engine = media_engine

    def collect(self) -> Iterator[InfoMetricFamily]:
        yield InfoMetricFamily(
            "wagw_build",
            "Gateway build",
            value={"version": __version__, "media_engine": self._engine},
        )


class Metrics:
    def __init__(self, media_engine: str = "python") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallStats()
        self.media_engine = media_engine  # "native" or "python", wagw_build_info's label
        self._bound = False

    def bind(
        self, stats: SipStats, manager: TransactionManager, view: OpsView | None = None
    ) -> None:
        if not self._bound:
            self.registry.register(_SipCollector(stats, manager))
            if view is not None:
                self.registry.register(_OpsCollector(view, self.calls))
            self.registry.register(_BuildInfo(self.media_engine))
            self._bound = True

    def render(self) -> bytes:
        return generate_latest(self.registry)
