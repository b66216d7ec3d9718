"""python -m bench [--calls N] [--seconds S] [--quick] [--profile] [--no-write].

Starts the gateway daemon (pinned to core 0), drives N concurrent transcoded
calls at it from a load generator (pinned to core 1), prints the result and
rewrites docs/benchmarks.md. Exit status 0 when the run completed (whether or
not the target was met), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from bench.daemon import PRIORITIES
from bench.report import render_stdout, verdict, write_markdown
from bench.run import Params, run
from bench.stats import save

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    ap.add_argument("--calls", type=int, default=200, help="concurrent calls (default 200)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    ap.add_argument("--rate", type=float, default=40.0, help="new calls per second in the ramp")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the window opens")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 calls, 5 s")
    ap.add_argument("--profile", action="store_true", help="sample the daemon with py-spy")
    ap.add_argument(
        "--opus-complexity", type=int, choices=range(11), metavar="0-10",
        help="override media.opus_complexity (default: the gateway's default)",
    )  # fmt: skip
    ap.add_argument(
        "--priority", choices=PRIORITIES, default="normal",
        help="daemon and generator over other work on a shared machine: high = nice -20 "
        "(and its autogroup), realtime = SCHED_FIFO (root); default normal",
    )  # fmt: skip
    ap.add_argument(
        "--no-meta-rtcp", action="store_true",
        help="the WhatsApp side sends no RTCP receiver reports (the gateway then keeps "
        "planning Opus FEC for the configured loss)",
    )  # fmt: skip
    ap.add_argument("--no-pin", action="store_true", help="do not pin to cores 0 and 1")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--output", type=Path, default=DOCS, help="markdown file to rewrite")
    ap.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="first wait up to SECONDS for the machine's other work to drop under 15 %%",
    )  # fmt: skip
    ap.add_argument(
        "--ref", metavar="GIT_REF",
        help="run the daemon from gateway/ as committed at GIT_REF (default: the working tree)",
    )  # fmt: skip
    ap.add_argument(
        "--daemon-gc", default="", metavar="threshold=A,B,C",
        help="experiment: set the daemon's gc thresholds (its code is not changed)",
    )  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the daemon's work directory")
    ap.add_argument("--dump", type=Path, help="save per-packet send times and latencies (.npz)")
    ap.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"),
        help="the daemon's logging level (default warning; use with --keep)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = 10, 5.0
    if args.calls < 1 or args.seconds <= 0 or args.rate <= 0:
        ap.error("--calls, --seconds and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM like Ctrl-C: unwind, hang up, stop the daemon by its PID.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    params = Params(
        calls=args.calls,
        seconds=args.seconds,
        rate=args.rate,
        warmup=args.warmup,
        pin=not args.no_pin,
        profile=args.profile,
        keep=args.keep,
        opus_complexity=args.opus_complexity,
        priority=args.priority,
        log_level=args.log_level,
        wait_quiet=args.wait_quiet,
        ref=args.ref,
        daemon_gc=args.daemon_gc,
        meta_rtcp=not args.no_meta_rtcp,
    )
    print(
        f"bench: {params.calls} calls, ramp {params.rate:g}/s, warm-up {params.warmup:g} s, "
        f"window {params.seconds:g} s ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        result = run(params)
    except KeyboardInterrupt:
        print("bench: interrupted; daemon stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 1
    print(render_stdout(result))
    if args.dump is not None:
        save(str(args.dump), result.m2p, result.p2m)
        print(f"bench: per-packet data in {args.dump}", file=sys.stderr)
    if not args.no_write:
        write_markdown(args.output, result)
        print(f"bench: wrote {args.output}", file=sys.stderr)
    ok, _ = verdict(result)
    print(f"bench: target {'met' if ok else 'not met'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
