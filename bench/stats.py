"""Matching sent and forwarded packets: loss and added latency per direction.

The gateway forwards each packet as it arrives, one out per one in, in order,
per direction. So the k-th packet the generator sent on one leg is the k-th
audio packet the gateway sent on the other leg. The gateway numbers its
output consecutively (its own RTP sequence), which places every received
packet even after a gap: index = sequence offset from the first audio packet
minus the gateway's own silence/keep-alive frames in between (toward Meta
only; recognised by their payload). A sent packet without a received match is
lost; received minus sent time is the latency added on the way through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.loadgen import Direction


@dataclass
class DirectionStats:
    """One direction over all calls, for packets sent inside the measurement window."""

    name: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    late_or_stray: int = 0  # received audio that matches nothing sent (should be 0)
    negative: int = 0  # matches earlier than their send: a matching error (should be 0)
    gateway_silence: int = 0  # keep-alive frames the gateway inserted inside the window
    send_errors: int = 0
    rx_bad: int = 0
    rx_rtcp: int = 0
    latencies_us: list[np.ndarray] = field(default_factory=list)
    send_times_ns: list[np.ndarray] = field(default_factory=list)  # of the matched packets
    calls: list[np.ndarray] = field(default_factory=list)  # call index of each matched packet

    def add(self, d: Direction, w0: int, w1: int, call: int = 0) -> None:
        sent_ns = np.frombuffer(d.send_ns, dtype=np.int64)
        self.send_errors += d.send_errors
        self.rx_bad += d.rx_bad
        self.rx_rtcp += d.rx_rtcp
        in_window = (sent_ns >= w0) & (sent_ns < w1)
        n_window = int(in_window.sum())
        self.sent += n_window
        if not len(d.rx_seq):
            self.lost += n_window
            return
        seq = np.frombuffer(d.rx_seq, dtype=np.int32 if d.rx_seq.itemsize == 4 else np.int64)
        rx_ns = np.frombuffer(d.rx_ns, dtype=np.int64)
        kind = np.frombuffer(d.rx_kind, dtype=np.int8).astype(np.int64)
        steps = np.mod(np.diff(seq.astype(np.int64)) + 32768, 65536) - 32768
        useq = np.concatenate(([0], np.cumsum(steps)))
        audio = np.flatnonzero(kind == 0)
        if not audio.size:
            self.lost += n_window
            return
        first = audio[0]
        silences_before = np.cumsum(kind[first:])
        idx_all = useq[first:] - useq[first] - silences_before
        is_audio = kind[first:] == 0
        idx = idx_all[is_audio]
        t_rx = rx_ns[first:][is_audio]
        sil_t = rx_ns[first:][~is_audio]
        self.gateway_silence += int(((sil_t >= w0) & (sil_t < w1)).sum())
        ok = (idx >= 0) & (idx < sent_ns.size)
        self.late_or_stray += int((~ok).sum())
        idx, t_rx = idx[ok], t_rx[ok]
        _, first_of_each = np.unique(idx, return_index=True)  # duplicates: first arrival
        idx, t_rx = idx[first_of_each], t_rx[first_of_each]
        have = np.zeros(sent_ns.size, dtype=bool)
        have[idx] = True
        rx_at = np.zeros(sent_ns.size, dtype=np.int64)
        rx_at[idx] = t_rx
        matched = in_window & have & (sent_ns >= 0)
        self.received += int(matched.sum())
        self.lost += int((in_window & ~have).sum())
        lat = (rx_at[matched] - sent_ns[matched]) / 1000.0
        self.negative += int((lat < 0).sum())
        self.latencies_us.append(lat)
        self.send_times_ns.append(sent_ns[matched])
        self.calls.append(np.full(lat.size, call, dtype=np.int32))

    def latency(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max and mean of added latency, in milliseconds."""
        if not self.latencies_us:
            return {}
        lat = np.concatenate(self.latencies_us)
        if not lat.size:
            return {}
        q = np.percentile(lat, [50, 90, 99, 99.9])
        return {
            "p50": float(q[0]) / 1000,
            "p90": float(q[1]) / 1000,
            "p99": float(q[2]) / 1000,
            "p99.9": float(q[3]) / 1000,
            "max": float(lat.max()) / 1000,
            "mean": float(lat.mean()) / 1000,
        }

    def over(self, ms: float) -> int:
        """Packets whose added latency exceeded ``ms`` milliseconds."""
        return int(sum(int((a > ms * 1000).sum()) for a in self.latencies_us))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def worst_moments(
    d: DirectionStats, bin_ms: float = 100.0, top: int = 5
) -> list[tuple[float, float]]:
    """(seconds into the window, max latency ms) of the worst ``bin_ms`` bins: stalls show here."""
    if not d.latencies_us:
        return []
    lat = np.concatenate(d.latencies_us)
    sent = np.concatenate(d.send_times_ns)
    if not lat.size:
        return []
    t0 = int(sent.min())
    bins = ((sent - t0) // int(bin_ms * 1e6)).astype(np.int64)
    worst = np.zeros(int(bins.max()) + 1)
    np.maximum.at(worst, bins, lat / 1000.0)
    order = np.argsort(worst)[::-1][:top]
    return [(float(b) * bin_ms / 1000.0, float(worst[b])) for b in order]


def save(path: str, *dirs: DirectionStats) -> None:
    """Per-packet send time and added latency of each direction, for a closer look."""
    arrays: dict[str, np.ndarray] = {}
    for i, d in enumerate(dirs):
        if d.latencies_us:
            arrays[f"d{i}_send_ns"] = np.concatenate(d.send_times_ns)
            arrays[f"d{i}_latency_us"] = np.concatenate(d.latencies_us)
            arrays[f"d{i}_call"] = np.concatenate(d.calls)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
