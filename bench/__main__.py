"""python -m bench [--calls N] [--seconds S] [--instances N [--compare]] [--quick] [--no-write].

Starts the gateway daemon (pinned to core 0), drives N concurrent transcoded
calls at it from a load generator (pinned to core 1), prints the result and
rewrites docs/benchmarks.md. With --instances N (or --front kamailio): N
gateway instances behind Kamailio, instance i on core i mod ncpu, the load
generator connecting to Kamailio (issue 7); --compare first runs one instance
behind the same front with the same per-instance load and reports the ratios.
Exit status 0 when the run completed (whether or not the target was met), 1
when it could not run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench import impair, scaleout
from bench.daemon import PRIORITIES
from bench.gateways import FRONTS
from bench.report import render_engines, render_stdout, verdict, write_markdown
from bench.result import Params, Result
from bench.run import git_describe, run
from bench.stats import save
from tests.peers.impair import parse_bursts

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
PAUSE = 3.0  # seconds between the runs of one invocation (--compare)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    ap.add_argument("--calls", type=int, default=200, help="concurrent calls (default 200)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    ap.add_argument("--rate", type=float, default=40.0, help="new calls per second in the ramp")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the window opens")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 calls, 5 s")
    ap.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="gateway instances behind Kamailio (default 1: the daemon alone); --calls is "
        "the total",
    )
    ap.add_argument(
        "--front",
        choices=FRONTS,
        help="what the load generator connects to as Meta: the daemon's TLS listener "
        "(direct, the default for one instance) or Kamailio (the default for several)",
    )
    ap.add_argument(
        "--compare",
        action="store_true",
        help="with --instances N: first one instance behind the same front with --calls/N "
        "calls, then N instances; report the capacity and CPU ratios",
    )
    ap.add_argument("--profile", action="store_true", help="sample the daemon with py-spy")
    ap.add_argument(
        "--opus-complexity",
        type=int,
        choices=range(11),
        metavar="0-10",
        help="override media.opus_complexity (default: the gateway's default)",
    )
    ap.add_argument(
        "--engine",
        action="append",
        choices=("auto", "native", "python"),
        help="media.engine of the daemon (default: the gateway's, auto); given twice or more, "
        "one run per engine back to back, then CPU per call-second compared",
    )
    ap.add_argument(
        "--priority",
        choices=PRIORITIES,
        default="normal",
        help="daemon and generator over other work on a shared machine: high = nice -20 "
        "(and its autogroup), realtime = SCHED_FIFO (root); default normal",
    )
    ap.add_argument(
        "--srtp",
        choices=("sdes", "dtls"),
        default="sdes",
        help="how the WhatsApp side keys SRTP: sdes (a=crypto, the default) or dtls (Meta's "
        "WebRTC media: ICE-lite + DTLS-SRTP; the number's srtp set to match)",
    )
    ap.add_argument(
        "--no-meta-rtcp",
        action="store_true",
        help="the WhatsApp side sends no RTCP receiver reports (the gateway then keeps "
        "planning Opus FEC for the configured loss)",
    )
    ap.add_argument(
        "--generator-same-priority",
        action="store_true",
        help="experiment: with --priority realtime and no core of its own, the load "
        "generator at the instances' SCHED_FIFO level instead of one below",
    )
    imp = ap.add_argument_group(
        "impairment relay on the WhatsApp media leg (bench/impair.py; Meta -> gateway "
        "unless --impair-both; the run goes to docs/benchmarks.md's Audio under impairment)"
    )
    imp.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="random loss, %%")
    imp.add_argument(
        "--burst",
        default="",
        metavar="NxMS",
        help="N loss bursts of MS ms each, spread over the window (e.g. 2x60)",
    )
    imp.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="uniform delay")
    imp.add_argument("--jitter-reorder", action="store_true", help="jitter may reorder")
    imp.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        metavar="PCT",
        help="packets held back behind the next one, %%",
    )
    imp.add_argument("--duplicate", type=float, default=0.0, metavar="PCT", help="sent twice, %%")
    imp.add_argument("--impair-both", action="store_true", help="gateway -> Meta as well")
    imp.add_argument("--impair-seed", type=int, default=1, help="the relays' seed (default 1)")
    imp.add_argument("--relay", action="store_true", help="the relay even with no impairment")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to cores 0 and 1")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--output", type=Path, default=DOCS, help="markdown file to rewrite")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine's other work to drop under 15 %%",
    )
    ap.add_argument(
        "--ref",
        metavar="GIT_REF",
        help="run the daemon from gateway/ as committed at GIT_REF (default: the working tree)",
    )
    ap.add_argument(
        "--daemon-gc",
        default="",
        metavar="threshold=A,B,C",
        help="experiment: set the daemon's gc thresholds (its code is not changed)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the daemon's work directory")
    ap.add_argument("--dump", type=Path, help="save per-packet send times and latencies (.npz)")
    ap.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="the daemon's logging level (default warning; use with --keep)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = 10, 5.0
    if args.calls < 1 or args.seconds <= 0 or args.rate <= 0 or args.instances < 1:
        ap.error("--calls, --seconds, --rate and --instances must be positive")
    if args.srtp == "dtls" and (
        args.relay
        or args.loss
        or args.burst
        or args.jitter
        or args.reorder
        or args.duplicate
        or args.impair_both
    ):
        ap.error("--srtp dtls runs without the impairment relay")
    args.front = args.front or ("direct" if args.instances == 1 else "kamailio")
    if args.front == "direct" and args.instances > 1:
        ap.error("several instances need --front kamailio")
    if args.compare and args.instances < 2:
        ap.error("--compare needs --instances 2 or more")
    if args.compare and args.calls % args.instances:
        ap.error("--compare: --calls must be a multiple of --instances (same load per instance)")
    if args.front != "direct" and args.profile:
        ap.error("--profile samples the single daemon (no --instances/--front kamailio)")
    try:
        parse_bursts(args.burst)
    except ValueError as exc:
        ap.error(f"--burst: {exc}")
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
        instances=args.instances,
        front=args.front,
        compare=args.compare,
        generator_below=not args.generator_same_priority,
        relay=args.relay,
        loss=args.loss,
        burst=args.burst,
        jitter=args.jitter,
        jitter_reorder=args.jitter_reorder,
        reorder=args.reorder,
        duplicate=args.duplicate,
        impair_both=args.impair_both,
        impair_seed=args.impair_seed,
        srtp=args.srtp,
    )
    if impair.wanted(params) and args.front != "direct":
        print("bench: the impairment relay runs with one direct instance only", file=sys.stderr)
        return 1
    if args.front != "direct":
        if args.engine and len(args.engine) > 1:
            print("bench: several --engine runs need one direct instance", file=sys.stderr)
            return 1
        return _scale_out(args, replace(params, engine=(args.engine or [None])[0]))
    engines: list[str | None] = list(args.engine or [None])
    results: list[Result] = []
    for k, engine in enumerate(engines):
        if k:
            time.sleep(PAUSE)  # the last run's daemon gone, its sockets closed
        status = _direct(args, replace(params, engine=engine))
        if isinstance(status, int):
            return status
        results.append(status)
    if len(results) > 1:
        print(render_engines(results))
    return 0


def _direct(args: argparse.Namespace, params: Params) -> Result | int:
    """One run against the daemon alone: printed, written; the result or an exit status."""
    print(
        f"bench: {params.calls} calls ({params.srtp.upper()}), ramp {params.rate:g}/s, "
        f"warm-up {params.warmup:g} s, window {params.seconds:g} s, "
        f"engine {params.engine or 'default'} ...",
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
    if params.engine in ("native", "python") and result.engine != params.engine:
        # A silent fallback would compare an engine with itself (e.g. --ref built no
        # extension): refuse the figures rather than write them under the wrong name.
        print(
            f"bench: asked for the {params.engine} engine, the daemon ran "
            f"{result.engine or 'an unknown one'}: figures not written",
            file=sys.stderr,
        )
        return 1
    print(render_stdout(result))
    if impair.wanted(params):
        print(impair.render_stdout(result))
    if args.dump is not None:
        save(str(args.dump), result.m2p, result.p2m)
        print(f"bench: per-packet data in {args.dump}", file=sys.stderr)
    if not args.no_write:
        if impair.wanted(params):  # not the Latest run: a row in Audio under impairment
            impair.write_markdown(args.output, result, result.code or git_describe())
        else:
            write_markdown(args.output, result)
        print(f"bench: wrote {args.output}", file=sys.stderr)
    ok, _ = verdict(result)
    print(f"bench: target {'met' if ok else 'not met'}", file=sys.stderr)
    return result


def _scale_out(args: argparse.Namespace, params: Params) -> int:
    """N instances behind Kamailio; with --compare a one-instance baseline first."""
    plan = [params]
    if args.compare:
        per = params.calls // params.instances
        plan.insert(0, replace(params, instances=1, calls=per, compare=False))
    results: list[Result] = []
    for k, p in enumerate(plan):
        if k:
            time.sleep(PAUSE)  # the last run's processes gone, its sockets closed
        print(
            f"bench: {p.instances} instance(s) behind {p.front}, {p.calls} calls, ramp "
            f"{p.rate:g}/s, warm-up {p.warmup:g} s, window {p.seconds:g} s ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            results.append(run(p))
        except KeyboardInterrupt:
            print("bench: interrupted; instances and Kamailio stopped", file=sys.stderr)
            return 130
        except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as exc:
            print(f"bench: could not run: {exc}", file=sys.stderr)
            return 1
    print(scaleout.render_stdout(results))
    if args.dump is not None:
        save(str(args.dump), results[-1].m2p, results[-1].p2m)
        print(f"bench: per-packet data in {args.dump}", file=sys.stderr)
    if not args.no_write:
        scaleout.write_markdown(args.output, results)
        print(f"bench: wrote {args.output}", file=sys.stderr)
    ok, _ = scaleout.at_bar(results[-1])
    print(f"bench: {'at' if ok else 'not at'} the bar", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
