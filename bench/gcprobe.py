"""Installed into the daemon's interpreter (as ``sitecustomize``) to measure its GC pauses.

The daemon's code is not touched: this module is put on the daemon's
PYTHONPATH by the benchmark, records each cyclic-GC run through
``gc.callbacks`` and writes a summary when the process exits. Pauses of the
collector stop the event loop, so they show directly as forwarding latency.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import time
from typing import Any

_OUT = os.environ.get("WAGW_BENCH_GC_OUT", "")
_pauses: list[tuple[float, float, int]] = []  # (monotonic start, seconds, generation)
_start = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
    else:
        _pauses.append((time.monotonic(), time.perf_counter() - _start[0], int(info["generation"])))


def _dump() -> None:
    if not _OUT:
        return
    with open(_OUT, "w") as fh:
        json.dump({"pauses": _pauses, "thresholds": gc.get_threshold()}, fh)


if _OUT:
    mode = os.environ.get("WAGW_BENCH_GC_MODE", "")
    if mode.startswith("threshold="):
        gc.set_threshold(*(int(v) for v in mode.split("=", 1)[1].split(",")))
    gc.callbacks.append(_callback)
    atexit.register(_dump)
