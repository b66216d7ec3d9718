"""Place one WhatsApp call through the gateway on loopback and say what happened.

    make demo            # or: .venv/bin/python scripts/demo.py

Three processes/actors, all on 127.0.0.1 with ports picked free at run time:

- the gateway daemon, started from a temporary config (as the integration tests do);
- a baresip phone playing the PBX: plain SIP/UDP + RTP PCMU, account user = the business
  number, so it answers the gateway's INVITE; it sends a 660 Hz tone and records what it hears;
- the Meta emulator (tests/emulator) playing WhatsApp's SIP edge: SIP/TLS, digest auth,
  SDES-SRTP, Opus; it calls the business number, sends a 440 Hz tone, presses 1234 after 1 s,
  talks 4 s and hangs up.

Exit status 0 when the call connected, each side heard the other's tone (within 2 %) and the
emulator saw no breach of Meta's rules; 1 otherwise; 2 for a setup problem; 130 on Ctrl-C and
143 on SIGTERM.
Every process started here is stopped by its PID, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests` (the emulator and the peers) is not installed

NUMBER = "+15550001111"  # the business number (the harness's config has it)
PASSWORD = "not-a-real-password-4711"  # the harness's throw-away SIP password for it
CALLER = "+12195550714"  # the WhatsApp user
META_TONE = 440.0  # what the WhatsApp user "says"
PBX_TONE = 660.0  # what the PBX phone "says"
DIGITS = "1234"
TALK_SECONDS = 4.0
TOLERANCE = 0.02

# -- output -------------------------------------------------------------------------

_COLOUR = (
    sys.stdout.isatty()
    and os.environ.get("NO_COLOR", "") == ""
    and (os.environ.get("TERM", "") != "dumb")
)


def _paint(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOUR else text


def bold(text: str) -> str:
    return _paint("1", text)


def dim(text: str) -> str:
    return _paint("2", text)


def good(text: str) -> str:
    return _paint("32", text)


def bad(text: str) -> str:
    return _paint("31;1", text)


def warn(text: str) -> str:
    return _paint("33", text)


def heading(text: str) -> None:
    print()
    print(bold(text))


def step(text: str) -> None:
    print(dim("· ") + text, flush=True)


def mark(ok: bool) -> str:
    return good("ok") if ok else bad("FAIL")


def level(dbfs: float) -> str:
    return "silence" if math.isinf(dbfs) else f"{dbfs:.1f} dBFS"


def within(found: float, want: float) -> bool:
    return abs(found - want) <= TOLERANCE * want


class Stop(Exception):
    """SIGTERM: unwind like Ctrl-C so that every process gets stopped."""


def _on_signal(signum: int, frame: object) -> None:
    # Not asyncio.run's own SIGINT handling: that only cancels the running task, which
    # the emulator may absorb and then report the call as if nothing happened.
    raise KeyboardInterrupt() if signum == signal.SIGINT else Stop()


def _uninterrupted(stop: Callable[[], object]) -> Callable[[], None]:
    """``stop`` with Ctrl-C and SIGTERM ignored from then on, so a second Ctrl-C cannot leave
    a process behind (each stop is bounded: TERM, then KILL)."""

    def call() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop()

    return call


# -- the call -----------------------------------------------------------------------


def run(work: Path) -> tuple[bool, list[str]]:
    """Set everything up, place the call, report. Returns (success, problems)."""
    from tests.emulator import MetaCaller, default_tls, measure_tone
    from tests.integration.harness import GatewayProcess
    from tests.peers.audio import analyse_wav
    from tests.peers.baresip import Baresip

    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        step(
            f"starting the PBX phone (baresip: SIP/UDP, PCMU, user {NUMBER}, "
            f"sends {PBX_TONE:.0f} Hz)"
        )
        phone = Baresip(
            work / "pbx-phone", user=NUMBER, audio=PBX_TONE, source_seconds=60, max_lifetime=120
        )
        stack.callback(_uninterrupted(phone.stop))
        phone.start()

        step("starting the gateway daemon")
        (work / "gateway").mkdir()
        gw = GatewayProcess(
            work / "gateway",
            {
                "whatsapp": {"tls": {"ca_file": str(default_tls().ca_file)}},
                "pbx": {"address": f"127.0.0.1:{phone.sip_port}"},
            },
        )
        stack.callback(_uninterrupted(gw.stop))
        gw.start()
        print(
            dim(
                f"  gateway pid {gw.proc.pid if gw.proc else '?'}: WhatsApp side "
                f"127.0.0.1:{gw.ports['tls']} (TLS), PBX side 127.0.0.1:{gw.ports['pbx_listen']}"
                f" (UDP), PBX phone at 127.0.0.1:{phone.sip_port}"
            )
        )

        step(
            f"Meta emulator calls {NUMBER} from {CALLER}: {META_TONE:.0f} Hz tone, "
            f"DTMF {DIGITS} after 1 s, hangs up after {TALK_SECONDS:.0f} s"
        )
        caller = MetaCaller(("127.0.0.1", gw.ports["tls"]), NUMBER, PASSWORD)
        result = asyncio.run(
            caller.call(
                CALLER,
                tone_hz=META_TONE,
                dtmf=DIGITS,
                dtmf_delay=1.0,
                talk_seconds=TALK_SECONDS,
                hangup="emulator",
            )
        )

        connected = result.status == 200 and result.connected_at is not None
        if connected:  # the gateway's BYE ends the PBX leg; then baresip closes its WAV
            with contextlib.suppress(TimeoutError, RuntimeError):
                phone.wait_event("CALL_CLOSED", timeout=5)
        records = _call_records(gw, wait=5.0 if connected else 1.0)
        time.sleep(0.3)

        # -- SIP ---------------------------------------------------------------------
        heading("SIP, as Meta's edge saw it (Meta = the emulator)")
        t0 = result.messages[0].at if result.messages else 0.0
        for m in result.messages:
            arrow = "Meta -> gateway" if m.direction == "->" else "Meta <- gateway"
            print(f"  {dim(f'{m.at - t0:6.3f}s')}  {arrow}  {m.summary}")
        status = f"{result.status} {result.reason}".strip() if result.status else "none"
        print(f"  final answer to the INVITE: {status}  {mark(connected)}")
        if result.failure:
            first = result.failure.strip().splitlines()[0]
            problems.append(f"the call did not go as scripted: {first}")
        if not connected:
            problems.append(f"the call did not connect (final answer: {status})")

        if connected:
            record = next((x for x in records if x.get("event") == "call_record"), {})
            _report_media(result, str(record.get("pbx_media") or ""))
            problems += _report_audio(result, phone, measure_tone, analyse_wav)

        # -- rules ---------------------------------------------------------------------
        heading("Meta's rules (emulator violations)")
        if result.violations:
            for v in result.violations:
                print(f"  {bad('VIOLATION')} {v}")
            problems.append(f"{len(result.violations)} violation(s) of Meta's rules")
        else:
            print(f"  none  {good('ok')}")

        # -- the gateway's own account -------------------------------------------------
        heading("The gateway's call record (from its JSON log; it never logs secrets)")
        if not records:
            print(warn("  no call_ended/call_record line in the gateway log"))
        for item in records:
            print(indent(json.dumps(item, indent=2, ensure_ascii=False), "  "))
    return not problems, problems


def _call_records(gw: Any, wait: float) -> list[dict[str, Any]]:
    """The gateway's call_ended/call_record log lines, waiting up to `wait` s for the record."""
    deadline = time.monotonic() + wait
    while True:
        records = [x for x in gw.log_lines() if x.get("event") in ("call_ended", "call_record")]
        if any(x.get("event") == "call_record" for x in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _report_media(result: Any, pbx_media: str) -> None:
    heading("Media")
    print(f"  WhatsApp leg: {result.codec or '-'} (payload type {result.payload_type}), SRTP")
    print(f"  SRTP suite:   {result.suite or '-'} (keys exchanged in the SDP, SDES)")
    pbx_codec = pbx_media.split(" ")[0] if pbx_media else "-"
    print(f"  PBX leg:      {pbx_codec}, plain RTP (the gateway transcodes Opus <-> G.711)")
    if result.first_packet_delay is not None:
        print(
            f"  first media packet from the gateway: {result.first_packet_delay * 1000:.1f} ms"
            " after its 200 OK (Meta expects the business side to send first)"
        )
    else:
        print(f"  first media packet from the gateway: {bad('none received')}")
    print(
        f"  packets at Meta's side: sent {result.packets_sent}, received "
        f"{result.packets_received} (lost {result.packets_lost}, "
        f"SRTP auth failures {result.srtp_auth_failures})"
    )


def _report_audio(
    result: Any, phone: Any, measure_tone: Callable[..., Any], analyse_wav: Callable[..., Any]
) -> list[str]:
    problems: list[str] = []
    heading("What each side heard")
    freq, dbfs = 0.0, float("-inf")
    if result.received_pcm:
        freq, dbfs = measure_tone(result.received_pcm, result.sample_rate)
    ok = within(freq, PBX_TONE)
    print(
        f"  WhatsApp user heard: {freq:6.1f} Hz at {level(dbfs)}  "
        f"(PBX phone sent {PBX_TONE:.0f} Hz)  {mark(ok)}"
    )
    if not ok:
        problems.append(f"Meta heard {freq:.1f} Hz, expected {PBX_TONE:.0f} Hz ± 2 %")

    recs = phone.recordings("dec")
    pfreq, pdbfs = 0.0, float("-inf")
    if recs:
        with contextlib.suppress(ValueError, OSError, EOFError):
            pfreq, pdbfs = analyse_wav(recs[-1], skip_seconds=1.0)
    ok = within(pfreq, META_TONE)
    print(
        f"  PBX phone heard:     {pfreq:6.1f} Hz at {level(pdbfs)}  "
        f"(Meta sent {META_TONE:.0f} Hz)  {mark(ok)}"
    )
    if not ok:
        where = recs[-1] if recs else "no recording"
        problems.append(
            f"the PBX heard {pfreq:.1f} Hz, expected {META_TONE:.0f} Hz ± 2 % ({where})"
        )

    digits = phone.received_dtmf()
    note = good("ok") if digits == DIGITS else warn(f"expected {DIGITS}")
    print(f"  DTMF the PBX phone received: {digits or '(none)'}  (Meta pressed {DIGITS})  {note}")
    return problems


def indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def main() -> int:
    if shutil.which("baresip") is None:  # before anything starts (the peers' own check is pytest's)
        print(bad("the demo needs baresip as the PBX phone: apt-get install baresip-core"))
        print("  (`make demo` installs it, with sudo when you are not root)")
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows up through `| tee` too
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="wagw-demo-"))
    print(bold("wa-sip-gateway demo: one WhatsApp call through the gateway to a PBX phone"))
    print(dim(f"  work directory {work}"))
    try:
        ok, problems = run(work)
    except (KeyboardInterrupt, Stop) as exc:
        print()
        print(warn("interrupted: every process started here has been stopped"))
        print(dim(f"  logs kept in {work}"))
        return 143 if isinstance(exc, Stop) else 130
    except Exception as exc:  # a setup problem: say it plainly, keep the logs
        print()
        print(bad(f"could not run the demo: {type(exc).__name__}: {exc}"))
        print(dim(f"  logs kept in {work} (gateway/gateway.log, pbx-phone/baresip.log)"))
        return 2
    elapsed = time.monotonic() - started
    print()
    if ok:
        print(good(bold(f"The call worked end to end ({elapsed:.1f} s).")))
        shutil.rmtree(work, ignore_errors=True)
        return 0
    print(bad(f"The call did not work ({elapsed:.1f} s):"))
    for p in problems:
        print(f"  - {p}")
    print(dim(f"  logs kept in {work} (gateway/gateway.log, pbx-phone/baresip.log)"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
