"""Metrics: plain-int histograms, per-call totals, the scrape output, per-packet timing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.metrics import Buckets, CallStats, Metrics, meta_failure
from gateway.sip.transaction import TransactionManager
from gateway.transport.rtp import FRAME_SAMPLE, FrameTimes, PortAllocator, RtpSocket
from gateway.transport.sip import SipStats
from tests.unit.ops.support import FakeCall, FakeView

REQUIRED = {
    "wagw_calls_active",
    "wagw_calls",
    "wagw_call_setup_seconds",
    "wagw_call_duration_seconds",
    "wagw_sip_requests",
    "wagw_sip_responses",
    "wagw_sip_parse_errors",
    "wagw_rtp_packets",
    "wagw_rtp_packets_lost",
    "wagw_rtp_jitter_seconds",
    "wagw_srtp_auth_failures",
    "wagw_media_frame_seconds",
    "wagw_dtmf_events",
    "wagw_meta_failures",
    "wagw_health_status",
    "wagw_tls_certificate_expiry_timestamp_seconds",
    "wagw_event_loop_lag_seconds",
    "wagw_draining",
    "wagw_build_info",
    "wagw_rtp_foreign_packets",
    "wagw_rtp_bad_packets",
    "wagw_rtp_relatch_refused",
}


def test_buckets_are_cumulative_with_le_semantics() -> None:
    b = Buckets((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0):
        b.observe(value)
    assert b.cumulative() == [("1.0", 2), ("2.0", 3), ("+Inf", 4)]
    assert b.total == 6.0 and b.count == 4


def test_call_stats_live_and_ended_totals_never_go_back() -> None:
    cs = CallStats()
    call = FakeCall("wacid.A")
    packets, lost, auth = cs.live_media([call])
    assert packets[("whatsapp", "rx")] == 100 and lost["whatsapp"] == 2 and auth == 1
    call.bridge.legs["whatsapp"]["lost"] = 1  # a duplicate arrived: RFC 3550 loss went down
    _, lost, _ = cs.live_media([call])
    assert lost["whatsapp"] == 2  # the counter does not
    record = {
        "direction": "inbound",
        "answer_time": "x",
        "duration_seconds": 42.0,
        "mos": 4.3,
        "dtmf": {"to_pbx": 4, "to_whatsapp": 1},
    }
    cs.ended(call, record)
    assert cs.results[("inbound", "answered")] == 1
    assert cs.packets[("whatsapp", "rx")] == 100 and cs.lost["whatsapp"] == 2
    assert cs.setup.count == 1 and cs.setup.total == 1.5
    assert cs.duration.count == 1 and cs.dtmf["to_pbx"] == 4
    assert cs.mos.count == 1
    cs.rejected("inbound", 503, 2)
    assert cs.results[("inbound", "rejected")] == 2 and cs.rejections[("inbound", "503")] == 2


def test_dropped_packets_per_leg_are_exported_live_and_after_the_call() -> None:
    stats = SipStats()
    view = FakeView()
    live = view.calls[0]
    live.bridge.legs["pbx"].update(foreign_packets=2, bad_packets=3, relatch_refused=4)
    ended = FakeCall("wacid.D")
    ended.bridge.legs["pbx"].update(relatch_refused=10)
    ended.bridge.legs["whatsapp"].update(relatch_refused=1, foreign_packets=5)
    metrics = Metrics()
    metrics.bind(stats, TransactionManager(), view)
    metrics.calls.ended(ended, {"direction": "inbound"})
    families = _scrape(metrics)
    values = {
        (f.name, s.labels["leg"]): s.value
        for f in families.values()
        if f.name
        in ("wagw_rtp_foreign_packets", "wagw_rtp_bad_packets", "wagw_rtp_relatch_refused")
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert values == {
        ("wagw_rtp_foreign_packets", "pbx"): 2,
        ("wagw_rtp_foreign_packets", "whatsapp"): 5,
        ("wagw_rtp_bad_packets", "pbx"): 3,
        ("wagw_rtp_bad_packets", "whatsapp"): 0,
        ("wagw_rtp_relatch_refused", "pbx"): 14,
        ("wagw_rtp_relatch_refused", "whatsapp"): 1,
    }


def test_setup_time_is_observed_once_while_the_call_runs() -> None:
    cs = CallStats()
    call = FakeCall("wacid.B")
    cs.sample_active([call])
    cs.sample_active([call])
    assert cs.setup.count == 1
    assert cs.jitter["whatsapp"].count == 2 and cs.jitter["pbx"].count == 2
    cs.ended(call, {"direction": "inbound", "answer_time": "x", "duration_seconds": 1.0})
    assert cs.setup.count == 1


def test_meta_failure_labels() -> None:
    assert meta_failure({"meta_failure": {"code": 403, "reason": "No Permission!"}}) == (
        "403",
        "no_permission",
    )
    assert meta_failure({"end_cause": "meta_no_ack"}) == ("ack_timeout", "no_ack_from_meta")
    assert meta_failure({"end_cause": "no_media_whatsapp"})[0] == "media_timeout"  # type: ignore[index]
    assert meta_failure({"end_cause": "pbx_bye"}) is None


def _scrape(metrics: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def test_scrape_has_every_metric_the_issue_lists() -> None:
    stats = SipStats()
    stats.requests[("whatsapp", "INVITE")] += 2
    metrics = Metrics(media_engine="native")
    metrics.bind(stats, TransactionManager(), FakeView())
    families = _scrape(metrics)
    assert set(families) >= REQUIRED, REQUIRED - set(families)

    def sample(name: str, **labels: str) -> float:
        for s in families[name].samples:
            wanted = s.name.endswith(("_total", "_info")) or s.name == name
            if wanted and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError((name, labels))

    assert sample("wagw_calls_active", direction="inbound") == 1
    assert sample("wagw_calls_active", direction="outbound") == 0
    assert sample("wagw_rtp_packets", leg="whatsapp", direction="rx") == 100
    assert sample("wagw_rtp_packets_lost", leg="whatsapp") == 2
    assert sample("wagw_srtp_auth_failures") == 1
    assert sample("wagw_health_status", entity="phone_number", id="+15550001111") == 2
    assert sample("wagw_health_status", entity="gateway", id="sip.example.com") == 0
    assert sample("wagw_tls_certificate_expiry_timestamp_seconds") == 1_800_000_000
    assert sample("wagw_draining") == 1
    assert sample("wagw_event_loop_lag_seconds") == 0.003
    assert sample("wagw_sip_requests", leg="whatsapp", method="INVITE") == 2
    assert sample("wagw_build_info", version=__import__("gateway").__version__) == 1
    assert sample("wagw_build_info", media_engine="native") == 1  # the engine running
    frames = {
        (s.name, s.labels.get("le")): s.value
        for s in families["wagw_media_frame_seconds"].samples
        if s.labels.get("leg") == "whatsapp"
    }
    assert frames[("wagw_media_frame_seconds_bucket", "2e-05")] == 5  # 20 us bound
    assert frames[("wagw_media_frame_seconds_bucket", "+Inf")] == 5
    assert abs(frames[("wagw_media_frame_seconds_sum", None)] - 75e-6) < 1e-12


def test_frame_times_sample_one_packet_in_four() -> None:
    async def run() -> FrameTimes:
        loop = asyncio.get_running_loop()
        ports = PortAllocator("127.0.0.1", 47200, 47210)
        sock = RtpSocket(loop, ports, handler=lambda data, addr: None)
        times = FrameTimes()
        sock.timing = times
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(40):
                tx.sendto(b"x" * 60, ("127.0.0.1", sock.port))
        await asyncio.sleep(0.05)
        sock._readable()
        sock.close()
        return times

    times = asyncio.run(run())
    assert sum(times.counts) == 40 // FRAME_SAMPLE
    assert times.sum_ns > 0
    assert times.cumulative()[-1] == (float("inf"), 40 // FRAME_SAMPLE)
