"""Call records: one JSON line per ended call, to a file (rotated safely) or stdout.

:func:`build_record` turns an ended call (its ``record()`` dict, whose ``media``
is the bridge's :class:`gateway.media.stats.BridgeStats`, and its timestamps)
into the record below; :class:`RecordWriter` appends it.

Record keys: ``type`` ("call"), ``wacid``, ``call`` (the gateway's key),
``direction``, ``business_number``, ``whatsapp_user`` (+E.164 or BSUID),
``meta_call_id`` and ``pbx_call_id`` (each leg's Call-ID), ``meta_source``
(Meta's host:port on inbound calls; behind a proxy, from the proxy's Via), ``start_time``,
``answer_time``, ``end_time`` (ISO 8601 UTC), ``setup_seconds``,
``duration_seconds``, ``meta_call_duration_seconds`` (Meta's
x-wa-meta-call-duration, when its BYE carried it), ``status`` (final SIP
status toward the caller), ``end_cause``, ``ended_by`` ("whatsapp", "pbx" or
"gateway"), ``codecs`` ({"whatsapp", "pbx"}), ``transcoded``, ``legs``
({"whatsapp"|"pbx": rx_packets, tx_packets, lost, loss_ratio, jitter_ms,
srtp_auth_failures, foreign_packets, bad_packets, relatch_refused, mos}; the three
before mos are packets not taken as received, see gateway/media/leg.py), ``dtmf``
({"to_pbx", "to_whatsapp"} events), ``mos`` (the worse leg's estimate, None
without media). No key material, passwords or SDP.

The file is opened ``O_APPEND`` and each record is one ``write()``, so lines
never interleave. With ``max_bytes`` set, a write that would pass it first
renames ``calls.jsonl`` to ``calls.jsonl.1`` (shifting older ones up to
``keep``); if another tool (logrotate) moved or deleted the file, the next
record goes to a fresh file at the configured path. SIGHUP reopens it too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, TextIO

from gateway.logging import get_logger
from gateway.media.stats import BridgeStats, LegStats, WebRtcStats

__all__ = ["EndedCall", "RecordWriter", "build_record", "mos_estimate"]

log = get_logger(__name__)


class EndedCall(Protocol):
    """What a record is built from (a :class:`gateway.b2bua.call.Call`, either direction)."""

    key: str
    started: float
    answered_at: float | None
    ended_at: float | None

    def record(self) -> dict[str, object]:
        """Who, when, how it ended; ``media``: the bridge's :class:`BridgeStats`."""
        ...


def mos_estimate(loss_ratio: float, jitter_s: float, rtt_s: float = 0.0) -> float:
    """A listening-quality estimate 1.0-4.5 from a simplified ITU-T G.107 E-model.

    Effective latency = one-way delay (RTT/2) + 2 x jitter + 10 ms; R = 93.2 minus a
    delay impairment (latency/40 below 160 ms, (latency-120)/10 above) minus 2.5 per
    percent of loss; MOS from R by G.107's formula. No codec impairment term: it ranks
    calls by network quality, it is not a listening test.
    """
    latency_ms = rtt_s * 500.0 + 2.0 * jitter_s * 1000.0 + 10.0
    r = 93.2 - (latency_ms / 40.0 if latency_ms < 160.0 else (latency_ms - 120.0) / 10.0)
    r -= 2.5 * max(0.0, loss_ratio) * 100.0
    r = max(0.0, min(100.0, r))
    mos = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    return round(max(1.0, min(4.5, mos)), 2)


def _iso(t: float | None, wall_offset: float) -> str | None:
    if t is None:
        return None
    moment = dt.datetime.fromtimestamp(t + wall_offset, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _codec(describe: object, leg_stats: LegStats) -> str | None:
    if isinstance(describe, str) and describe:
        return describe.split()[0]
    return leg_stats.codec or None


def _leg(stats: LegStats) -> dict[str, object]:
    rx = stats.rx_packets
    lost = max(0, stats.lost)
    jitter = stats.jitter_seconds
    ratio = lost / (rx + lost) if rx + lost else 0.0
    return {
        "rx_packets": rx,
        "tx_packets": stats.tx_packets,
        "lost": lost,
        "loss_ratio": round(ratio, 4),
        "jitter_ms": round(jitter * 1000.0, 2),
        "srtp_auth_failures": stats.srtp_auth_failures,
        "foreign_packets": stats.foreign_packets,
        "bad_packets": stats.bad_packets,
        "relatch_refused": stats.relatch_refused,
        "mos": mos_estimate(ratio, jitter) if rx else None,
    }


def _duration(value: object) -> float | None:
    try:
        return float(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def build_record(call: EndedCall, wall_offset: float | None = None) -> dict[str, object]:
    """The record of an ended call. ``wall_offset`` = wall clock minus the call's clock
    (the event loop's monotonic time); default: computed now from ``time.monotonic``."""
    if wall_offset is None:
        wall_offset = time.time() - time.monotonic()
    rec = call.record()
    key = str(rec.get("call") or call.key)
    found = rec.get("media")
    media = found if isinstance(found, BridgeStats) else BridgeStats()
    wa_stats, pbx_stats = media.whatsapp, media.pbx
    legs = {"whatsapp": _leg(wa_stats), "pbx": _leg(pbx_stats)}
    scores = [v for leg in legs.values() if isinstance(v := leg["mos"], float)]
    wacid = rec.get("wacid")
    if not isinstance(wacid, str):
        base = key.split("#", 1)[0]
        wacid = base if base.startswith("wacid.") else None
    reason = str(rec.get("end_reason") or "")
    codecs = {
        "whatsapp": _codec(rec.get("wa_media"), wa_stats),
        "pbx": _codec(rec.get("pbx_media"), pbx_stats),
    }
    passthrough = media.passthrough
    end = call.ended_at
    return {
        "type": "call",
        "wacid": wacid,
        "call": key,
        "direction": rec.get("direction"),
        "business_number": rec.get("business_number"),
        "whatsapp_user": rec.get("user"),
        "meta_call_id": rec.get("meta_call_id"),
        "pbx_call_id": rec.get("pbx_call_id"),
        "meta_source": rec.get("meta_source"),
        "start_time": _iso(call.started, wall_offset),
        "answer_time": _iso(call.answered_at, wall_offset),
        "end_time": _iso(end, wall_offset),
        "setup_seconds": rec.get("setup_seconds"),
        "duration_seconds": rec.get("duration_seconds"),
        "meta_call_duration_seconds": _duration(rec.get("meta_call_duration")),
        "status": rec.get("status"),
        "end_cause": reason,
        "ended_by": rec.get("ended_by"),
        "codecs": codecs,
        "transcoded": (not passthrough) if codecs["pbx"] and codecs["whatsapp"] else None,
        "legs": legs,
        "dtmf": {
            "to_pbx": media.dtmf_events_to_pbx,
            "to_whatsapp": media.dtmf_events_to_whatsapp,
        },
        "mos": min(scores) if scores else None,
        "webrtc": _webrtc(media.webrtc),
    }


def _webrtc(stats: WebRtcStats | None) -> dict[str, object] | None:
    """Meta's WebRTC mode: how ICE and DTLS went, field by field (None: an SDES call)."""
    return asdict(stats) if stats is not None else None


class RecordWriter:
    """Appends records to ``path`` (``"-"``: stdout; None: nowhere)."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        max_bytes: int = 0,
        keep: int = 10,
        stdout: TextIO | None = None,
    ) -> None:
        self.path: Path | None = None if path in (None, "-") else Path(path)
        self.to_stdout = path == "-"
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self._stdout = stdout
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self.written = 0
        self.errors = 0
        self._last_error_log = 0.0

    @property
    def enabled(self) -> bool:
        return self.to_stdout or self.path is not None

    def write(self, record: Mapping[str, object]) -> bool:
        if not self.enabled:
            return False
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        try:
            if self.to_stdout:
                out = self._stdout or sys.stdout
                out.write(line)
                out.flush()
            else:
                self._append(line.encode())
        except OSError as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 60.0:
                self._last_error_log = now
                log.error("call_record_write_failed", path=str(self.path), error=str(exc))
            self._close_fd()
            return False
        self.written += 1
        return True

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        fd = self._current_fd()
        size = os.fstat(fd).st_size
        if self.max_bytes and size and size + len(data) > self.max_bytes:
            self._rotate()
            fd = self._current_fd()
        written = os.write(fd, data)
        if written != len(data):  # a full disk mid-line: finish the line or report
            os.write(fd, data[written:])

    def _current_fd(self) -> int:
        assert self.path is not None
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    return self._fd
            except FileNotFoundError:
                pass
            self._close_fd()  # moved or deleted by someone else: start a new file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        return fd

    def _rotate(self) -> None:
        assert self.path is not None
        self._close_fd()
        base = str(self.path)
        oldest = Path(f"{base}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = Path(f"{base}.{i}")
            if src.exists():
                os.replace(src, f"{base}.{i + 1}")
        if self.path.exists():
            os.replace(self.path, f"{base}.1")
        log.info("call_records_rotated", path=base)

    def reopen(self) -> None:
        """Close the file; the next record opens the configured path again (SIGHUP)."""
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._ino = None

    def close(self) -> None:
        self._close_fd()
