"""The peer harness itself, against real peers and WITHOUT the gateway:
baresip 1.0 (WhatsApp-like: SIP/TLS + SDES-SRTP + Opus, or a plain SIP/UDP
PCMU phone) talking straight to Asterisk 22 with config/asterisk.

Needs the Asterisk chroot (`make asterisk-chroot`, part of `make test`);
WAGW_ALLOW_SKIP_ASTERISK=1 turns its absence into a skip.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import free_port
from tests.peers.asterisk import AsteriskPbx
from tests.peers.audio import assert_tone
from tests.peers.baresip import OPUS, PCMU, Baresip

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip not installed"),
]

CALL_SECONDS = 4.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """PIDs a test started; each must be gone when the test ends."""
    started: list[int] = []
    yield started
    left = [pid for pid in started if _alive(pid)]
    assert not left, f"processes left running: {left}"


def _started(pids: list[int], *peers: AsteriskPbx | Baresip) -> None:
    for peer in peers:
        assert peer.pid is not None
        pids.append(peer.pid)


def _call_and_record(phone: Baresip, uri: str, seconds: float = CALL_SECONDS) -> Path:
    """Dial, stay `seconds` in the call, hang up; the WAV of what was received."""
    phone.dial(uri)
    phone.wait_event("CALL_ESTABLISHED", timeout=10)
    time.sleep(seconds)
    phone.hangup()
    phone.wait_event("CALL_CLOSED", timeout=10)
    recs = phone.recordings("dec")
    assert recs, f"no recording in {phone.rec_dir}"
    return recs[-1]


def test_tls_srtp_opus_caller_hears_asterisk_tone(tmp_path: Path, pids: list[int]) -> None:
    """(a) WhatsApp-like baresip (TLS, SDES-SRTP mandatory, Opus) calls the
    `tone` extension over TLS: it hears 440 Hz well above silence."""
    with (
        AsteriskPbx(wa_emulation=True, log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "wa", user="wa-test", tls=True, codec=OPUS) as wa,
    ):
        _started(pids, pbx, wa)
        wa.dial(f"sip:tone@127.0.0.1:{pbx.ast_tls_port};transport=tls")
        menc = wa.wait_event("CALL_MENC", timeout=10)
        wa.wait_event("CALL_ESTABLISHED", timeout=10)
        time.sleep(1.0)
        stats = pbx.rx("pjsip show channelstats")
        assert "wa-test" in stats and "opus" in stats, stats
        time.sleep(CALL_SECONDS - 1.0)
        wa.hangup()
        wa.wait_event("CALL_CLOSED", timeout=10)
        rec = wa.recordings("dec")[-1]
        log = wa.log_path.read_text()
    assert "srtp" in str(menc).lower() or "SRTP is Enabled" in log, menc
    assert "AES_CM_128_HMAC_SHA1_80" in log
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.0)


def test_udp_pcmu_echo_returns_the_tone(tmp_path: Path, pids: list[int]) -> None:
    """(b) A plain SIP/UDP PCMU phone sends 440 Hz to the `echo` extension
    (through the operator endpoint `wagw`) and hears 440 Hz back."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone", codec=PCMU, audio=440.0) as phone,
    ):
        _started(pids, pbx, phone)
        rec = _call_and_record(phone, f"sip:echo@{pbx.uri_host}")
        assert [n.split()[0] for n in pbx.notices("WAGW-TEST")] == ["ext=echo"]
    assert_tone(rec, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=1.0)


def test_dtmf_from_phone_is_read_by_asterisk(tmp_path: Path, pids: list[int]) -> None:
    """(c) baresip sends 1234 as RFC 4733 events (ctrl_tcp `sndcode`); the
    `dtmf` extension's Read() gets them."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone") as phone,
    ):
        _started(pids, pbx, phone)
        phone.dial(f"sip:dtmf@{pbx.uri_host}")
        phone.wait_event("CALL_ESTABLISHED", timeout=10)
        time.sleep(0.5)  # Read() starts listening after Answer
        phone.send_dtmf("1234")
        result = pbx.wait_dtmf(timeout=15)
        phone.wait_event("CALL_CLOSED", timeout=10)
    assert result.digits == "1234"
    assert result.status == "OK"


def test_dtmf_from_asterisk_reaches_phone(tmp_path: Path, pids: list[int]) -> None:
    """(d) Asterisk originates to endpoint `wagw` (its contact is where the
    gateway listens: a baresip stands in for it here), runs `senddtmf`, and
    baresip reports 1234# received."""
    gw_port = free_port(2)
    with (
        Baresip(tmp_path / "gw", user="wagw", sip_port=gw_port) as gw,
        AsteriskPbx(gw_port=gw_port, log_dir=tmp_path / "logs") as pbx,
    ):
        _started(pids, pbx, gw)
        assert pbx.qualify("wagw", timeout=10), pbx.rx("pjsip show contacts")
        pbx.originate("PJSIP/wagw", exten="senddtmf")
        gw.wait_event("CALL_ESTABLISHED", timeout=10)
        digits = gw.wait_dtmf(5, timeout=15)
        gw.wait_event("CALL_CLOSED", timeout=15)
    assert digits == "1234#"


def test_asterisk_records_what_the_phone_sends(tmp_path: Path, pids: list[int]) -> None:
    """The `record-3` extension records 3 s of what arrives: baresip's 440 Hz."""
    with (
        AsteriskPbx(log_dir=tmp_path / "logs") as pbx,
        Baresip(tmp_path / "phone", user="phone", audio=440.0) as phone,
    ):
        _started(pids, pbx, phone)
        phone.dial(f"sip:record-3@{pbx.uri_host}")
        phone.wait_event("CALL_ESTABLISHED", timeout=10)
        wav = pbx.wait_recording(timeout=15, copy_to=tmp_path / "asterisk-rec.wav")
        phone.wait_event("CALL_CLOSED", timeout=10)
    assert_tone(wav, 440, tolerance=0.02, min_dbfs=-30, skip_seconds=0.5)
