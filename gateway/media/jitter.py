"""A small reorder buffer for one receive side.

Not a playout jitter buffer: the bridge forwards packet by packet as they
arrive, so this only puts short-range reordering right and tells the decoder
where packets are missing (``Lost`` markers) so it can conceal, with Opus
in-band FEC from the packet after the gap when that one has arrived.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Lost", "ReorderBuffer"]

T = TypeVar("T")

# Held in place of an item for a sequence number consumed by something else.
_SKIP: Any = object()


class Lost(Generic[T]):
    """``count`` consecutive packets are missing.  ``next`` is the item that
    follows the gap (it is also released right after this marker), or None
    when the gap is reported by :meth:`ReorderBuffer.flush` at the end."""

    __slots__ = ("count", "next")

    def __init__(self, count: int, next: T | None = None) -> None:
        self.count = count
        self.next = next

    def __repr__(self) -> str:
        return f"Lost({self.count})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Lost):
            return NotImplemented
        return bool(self.count == other.count and self.next == other.next)

    __hash__ = None  # type: ignore[assignment]  # mutable


def _delta(seq: int, ref: int) -> int:
    """Signed distance from ``ref`` to ``seq`` modulo 2^16 (-32768..32767)."""
    return ((seq - ref + 0x8000) & 0xFFFF) - 0x8000


class ReorderBuffer(Generic[T]):
    """Release items in RTP sequence order, holding at most ``depth`` back.

    :meth:`push` returns what becomes releasable, in order:

    * the expected packet with nothing held: ``[item]`` at once (fast path);
    * an out-of-order packet is held until the gap before it fills, or until
      ``depth`` packets are held, then the gap is declared lost:
      ``[Lost(n), item, ...]``; with ``depth == 0`` gaps are reported at once;
    * a packet older than the last released one is dropped (``late``), a
      second copy of a held one too (``duplicates``);
    * a jump of more than ``reset_threshold`` either way is a new stream
      (SSRC change, sender restart): held items are released, the buffer
      restarts at the new packet, no loss is reported (``resets``).

    Sequence numbers wrap at 65535.  Packets of the same sequence space
    that carry no item (RFC 4733 events sharing the audio SSRC) go to
    :meth:`skip` so they are not taken for losses.
    """

    __slots__ = (
        "_next",
        "_pending",
        "depth",
        "duplicates",
        "late",
        "lost",
        "reordered",
        "reset_threshold",
        "resets",
    )

    def __init__(self, depth: int = 3, reset_threshold: int = 1000) -> None:
        if depth < 0:
            raise ValueError("depth must be >= 0")
        self.depth = depth
        self.reset_threshold = reset_threshold
        self._next: int | None = None
        self._pending: dict[int, T] = {}
        self.late = 0
        self.lost = 0
        self.duplicates = 0
        self.reordered = 0
        self.resets = 0

    def __len__(self) -> int:
        """Items held back."""
        return len(self._pending)

    @property
    def expected(self) -> int | None:
        """The sequence number released next (None before the first packet)."""
        return self._next

    def peek(self) -> T | None:
        """The earliest held item, if any.  (For the packet after a gap that
        :meth:`push` reports, use ``Lost.next``: it has already been released.)"""
        if self._next is None:
            return None
        ref = self._next
        for seq in sorted(self._pending, key=lambda s: (s - ref) & 0xFFFF):
            held = self._pending[seq]
            if held is not _SKIP:
                return held
        return None

    def push(self, seq: int, item: T) -> list[T | Lost[T]]:
        if seq == self._next and not self._pending:
            self._next = (seq + 1) & 0xFFFF
            return [item]
        return self._push_slow(seq, item)

    def take_in_order(self, seq: int) -> bool:
        """The fast path of :meth:`push` without building a list: True, with ``seq``
        accounted as released, when it is the expected number and nothing is held;
        False (nothing changed) otherwise, and the caller pushes it."""
        if seq == self._next and not self._pending:
            self._next = (seq + 1) & 0xFFFF
            return True
        return False

    def skip(self, seq: int) -> list[T | Lost[T]]:
        """Account ``seq`` without an item (it is never released); returns
        what that makes releasable, like :meth:`push`."""
        if seq == self._next and not self._pending:
            self._next = (seq + 1) & 0xFFFF
            return []
        return self._push_slow(seq, _SKIP)

    def _push_slow(self, seq: int, item: T) -> list[T | Lost[T]]:
        skipped = item is _SKIP
        if self._next is None:
            self._next = (seq + 1) & 0xFFFF
            return [] if skipped else [item]
        nxt: int = self._next
        delta = _delta(seq, nxt)
        pending = self._pending
        if delta > self.reset_threshold or delta < -self.reset_threshold:
            self.resets += 1
            released = self._release_all(report_gaps=False)
            if not skipped:
                released.append(item)
            self._next = (seq + 1) & 0xFFFF
            return released
        if delta < 0:
            self.late += 1
            return []
        out: list[T | Lost[T]] = []
        if delta == 0:
            self.reordered += 1  # it was overtaken: something is held
            if not skipped:
                out.append(item)
            nxt = (seq + 1) & 0xFFFF
        elif self.depth == 0:
            self.lost += delta
            self._next = (seq + 1) & 0xFFFF
            if skipped:
                return [Lost(delta)]
            return [Lost(delta, item), item]
        elif seq in pending:
            self.duplicates += 1
            return out
        else:
            pending[seq] = item
            if len(pending) < self.depth:
                return out
            # depth newer packets wait: the gap before the earliest is lost.
            ref = nxt
            first = min(pending, key=lambda s: (s - ref) & 0xFFFF)
            gap = (first - nxt) & 0xFFFF
            self.lost += gap
            following = pending[first]
            out.append(Lost(gap, None if following is _SKIP else following))
            nxt = first
        while nxt in pending:
            held = pending.pop(nxt)
            if held is not _SKIP:
                out.append(held)
            nxt = (nxt + 1) & 0xFFFF
        self._next = nxt
        return out

    def flush(self) -> list[T | Lost[T]]:
        """Release everything held (end of stream, long silence), gaps reported."""
        return self._release_all(report_gaps=True)

    def _release_all(self, report_gaps: bool) -> list[T | Lost[T]]:
        out: list[T | Lost[T]] = []
        pending = self._pending
        if not pending or self._next is None:
            return out
        ref = self._next
        nxt = ref
        for seq in sorted(pending, key=lambda s: (s - ref) & 0xFFFF):
            held = pending[seq]
            gap = (seq - nxt) & 0xFFFF
            if gap and report_gaps:
                self.lost += gap
                out.append(Lost(gap, None if held is _SKIP else held))
            if held is not _SKIP:
                out.append(held)
            nxt = (seq + 1) & 0xFFFF
        pending.clear()
        self._next = nxt
        return out
