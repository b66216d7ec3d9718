"""Call records: building the record, the MOS estimate, and the writer (append, rotation,
a file moved away by logrotate, stdout, a failing disk)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from gateway.media.stats import BridgeStats, LegStats
from gateway.ops.records import RecordWriter, build_record, mos_estimate


class FakeBridge:
    def stats(self) -> BridgeStats:
        return BridgeStats()


class FakeCall:
    """Shaped like InboundCall: loop-time stamps and a record() dict."""

    def __init__(self, **record: object) -> None:
        self.key = "wacid.HBgLTEST=="
        self.started = 1000.0
        self.answered_at: float | None = 1001.25
        self.ended_at: float | None = 1031.25
        self.bridge = FakeBridge()
        self._record: dict[str, object] = {
            "call": self.key,
            "direction": "inbound",
            "business_number": "+15550001111",
            "user": "US.13491208655302741918",
            "meta_call_id": "outgoing:wacid.HBgLTEST==",
            "pbx_call_id": "abc@10.0.0.1",
            "status": 200,
            "end_reason": "meta_bye",
            "ended_by": "whatsapp",
            "setup_seconds": 1.25,
            "duration_seconds": 30.0,
            "wa_media": "opus/48000 pt111 SRTP AES_CM_128_HMAC_SHA1_80 -> 57.144.0.1:3480 rtcp-mux",
            "pbx_media": "PCMU/8000 pt0 RTP -> 10.0.0.1:4000 rtcp 4001",
            "media": BridgeStats(
                whatsapp=LegStats(codec="opus", rx_packets=1500, tx_packets=1510,
                                  lost=15, jitter_seconds=0.0042, srtp_auth_failures=0),
                pbx=LegStats(codec="PCMU", rx_packets=1490, tx_packets=1480, lost=0,
                             jitter_seconds=0.0008, foreign_packets=2, bad_packets=3,
                             relatch_refused=41),
                passthrough=False,
                dtmf_to_pbx=12, dtmf_to_whatsapp=0,
                dtmf_events_to_pbx=3, dtmf_events_to_whatsapp=0,
            ),
            **record,
        }  # fmt: skip

    def record(self) -> dict[str, object]:
        return dict(self._record)


WALL = 1_780_000_000.0 - 1000.0  # the call started at Unix time 1 780 000 000


def test_record_has_the_fields_of_the_issue() -> None:
    rec = build_record(FakeCall(), WALL)
    assert rec["type"] == "call"
    assert rec["wacid"] == "wacid.HBgLTEST=="
    assert rec["meta_call_id"] == "outgoing:wacid.HBgLTEST=="
    assert rec["pbx_call_id"] == "abc@10.0.0.1"
    assert rec["direction"] == "inbound"
    assert rec["business_number"] == "+15550001111"
    assert rec["whatsapp_user"] == "US.13491208655302741918"
    assert rec["start_time"] == "2026-05-28T20:26:40.000Z"
    assert rec["answer_time"] == "2026-05-28T20:26:41.250Z"
    assert rec["end_time"] == "2026-05-28T20:27:11.250Z"
    assert rec["setup_seconds"] == 1.25 and rec["duration_seconds"] == 30.0
    assert rec["meta_call_duration_seconds"] is None
    assert rec["end_cause"] == "meta_bye" and rec["ended_by"] == "whatsapp"
    assert rec["codecs"] == {"whatsapp": "opus/48000", "pbx": "PCMU/8000"}
    assert rec["transcoded"] is True
    legs = rec["legs"]
    assert isinstance(legs, dict)
    assert legs["whatsapp"] == {
        "rx_packets": 1500, "tx_packets": 1510, "lost": 15, "loss_ratio": 0.0099,
        "jitter_ms": 4.2, "srtp_auth_failures": 0, "foreign_packets": 0, "bad_packets": 0,
        "relatch_refused": 0, "mos": legs["whatsapp"]["mos"],
    }  # fmt: skip
    pbx = legs["pbx"]
    assert (pbx["foreign_packets"], pbx["bad_packets"], pbx["relatch_refused"]) == (2, 3, 41)
    assert rec["dtmf"] == {"to_pbx": 3, "to_whatsapp": 0}
    assert isinstance(rec["mos"], float) and 3.5 < rec["mos"] < 4.5
    assert rec["mos"] == min(legs["whatsapp"]["mos"], legs["pbx"]["mos"])
    text = json.dumps(rec)
    assert "inline:" not in text and "crypto" not in text


def test_record_of_an_unanswered_outbound_call() -> None:
    call = FakeCall(
        direction="outbound",
        end_reason="failed_486",
        ended_by="whatsapp",
        status=486,
        meta_call_id="abc-meta",
        meta_call_duration="17",
        media=BridgeStats(),
        call="out.xyz@pbx",
    )
    call.key = "out.xyz@pbx"
    call.answered_at = None
    rec = build_record(call, WALL)
    assert rec["wacid"] is None and rec["call"] == "out.xyz@pbx"
    assert rec["meta_call_id"] == "abc-meta"
    assert rec["answer_time"] is None and rec["ended_by"] == "whatsapp"
    assert rec["meta_call_duration_seconds"] == 17.0
    assert rec["mos"] is None
    assert rec["legs"]["whatsapp"]["mos"] is None  # type: ignore[index]


def test_mos_estimate() -> None:
    clean = mos_estimate(0.0, 0.0)
    assert 4.3 <= clean <= 4.5
    assert mos_estimate(0.01, 0.005) < clean
    assert mos_estimate(0.05, 0.02) < mos_estimate(0.01, 0.005)
    assert mos_estimate(1.0, 0.0) == 1.0
    assert mos_estimate(0.0, 0.5) < 3.0  # 1 s effective latency


def test_writer_appends_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "records" / "calls.jsonl"
    writer = RecordWriter(path)
    assert writer.write({"call": "a"}) and writer.write({"call": "b"})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["call"] for x in lines] == ["a", "b"]
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    writer.close()


def test_writer_rotates_by_size_keeping_n(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    writer = RecordWriter(path, max_bytes=100, keep=2)
    for i in range(8):
        writer.write({"call": i, "pad": "x" * 40})  # ~55 bytes: one record per file
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]
    assert json.loads(path.read_text())["call"] == 7
    assert json.loads((tmp_path / "calls.jsonl.1").read_text())["call"] == 6
    assert json.loads((tmp_path / "calls.jsonl.2").read_text())["call"] == 5


def test_writer_follows_a_file_moved_by_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    writer = RecordWriter(path)
    writer.write({"call": 1})
    os.rename(path, tmp_path / "calls.jsonl.old")
    writer.write({"call": 2})
    assert json.loads(path.read_text())["call"] == 2
    assert json.loads((tmp_path / "calls.jsonl.old").read_text())["call"] == 1
    path.unlink()
    writer.write({"call": 3})
    assert json.loads(path.read_text())["call"] == 3


def test_writer_to_stdout_and_off() -> None:
    out = io.StringIO()
    writer = RecordWriter("-", stdout=out)
    writer.write({"call": "x"})
    assert json.loads(out.getvalue()) == {"call": "x"}
    off = RecordWriter(None)
    assert not off.enabled and off.write({"call": "y"}) is False


def test_writer_errors_are_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "calls.jsonl").mkdir()  # a directory where the file should be
    writer = RecordWriter(tmp_path / "calls.jsonl")
    assert writer.write({"call": 1}) is False
    assert writer.errors == 1 and writer.written == 0
