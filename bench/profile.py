"""Where the daemon's time goes: py-spy sampling of the running daemon during the window.

Optional (``--profile``): needs ``py-spy`` in the venv or on PATH and ptrace
rights. Sampling is non-blocking (the daemon is never paused) and py-spy runs
on the generator's core, so the daemon's core only pays for being read.
Profiled runs still perturb a little: the headline figures come from runs
without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second
_FRAME_RE = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")

ProfileRows = list[tuple[str, float, float]]


def _find_py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _short(frame: str) -> str:
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    name, path = m.groups()
    for marker in ("/gateway/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/gateway/":
                path = "gateway/" + path
            break
    return f"{name} ({path})"


def summarise(raw: str, top: int = 25) -> tuple[ProfileRows, ProfileRows, int]:
    """(rows by self time, rows by inclusive time, samples) from py-spy's raw output."""
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_count[frames[-1]] += count
        for name in set(frames):
            total_count[name] += count
    if not samples:
        return [], [], 0

    def rows(order: Counter[str]) -> ProfileRows:
        return [
            (name, 100 * self_count[name] / samples, 100 * total_count[name] / samples)
            for name, _ in order.most_common(top)
        ]

    return rows(self_count), rows(total_count), samples


class PySpy:
    """``py-spy record`` of one process for a fixed duration."""

    def __init__(self, pid: int, seconds: float, workdir: Path, core: int | None) -> None:
        self.pid = pid
        self.seconds = seconds
        self.out = workdir / "py-spy.txt"
        self.core = core
        self.proc: subprocess.Popen[bytes] | None = None
        self.by_total: ProfileRows = []
        self.samples = 0

    def start(self) -> str:
        exe = _find_py_spy()
        if exe is None:
            return "py-spy not installed (pip install py-spy)"
        core = self.core
        cmd = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            str(round(self.seconds)),
            "--rate",
            str(RATE),
            "--nonblocking",
            "--idle",
            "--format",
            "raw",
            "--output",
            str(self.out),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )
        return f"py-spy record --rate {RATE} --nonblocking --idle for {self.seconds:g} s"

    def finish(self) -> tuple[ProfileRows, str]:
        if self.proc is None:
            return [], "py-spy not run"
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            return [], "py-spy did not finish"
        if not self.out.exists():
            return [], f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
        by_self, self.by_total, self.samples = summarise(self.out.read_text(errors="replace"))
        return by_self, f"py-spy, {self.samples} samples at {RATE} Hz, idle included"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
