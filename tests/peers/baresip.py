"""baresip 1.0 as a scripted SIP phone for the integration tests.

    with Baresip(tmp_path / "wa", user="wa-test", tls=True, audio=440.0) as wa:
        # TLS + SDES-SRTP (srtp-mand) + Opus/48000/1: the WhatsApp-like side
        wa.dial(f"sip:tone@127.0.0.1:{pbx.ast_tls_port};transport=tls")
        wa.wait_event("CALL_ESTABLISHED", timeout=10)
        wa.send_dtmf("1234")
        wa.hangup(); wa.wait_event("CALL_CLOSED")
        wa.recordings()          # received audio, one WAV per call (sndfile)

    Baresip(dir, user="phone")   # plain SIP/UDP + PCMU: a PBX-side phone

    Baresip(dir, user="wa", tls=True, media="dtls")  # WebRTC media, as Meta offers it

media="dtls" turns the account into a WebRTC-mode peer: mediaenc=dtls_srtp
(m= proto UDP/TLS/RTP/SAVPF; baresip 1.0 has no separate dtls_srtpf) and
medianat=ice (a full ICE agent, host candidates only: no stunserver, so no
STUN/TURN traffic), rtcp_mux on, and `-4` (IPv4 candidates only). The
dtls_srtp module makes its own certificate when it loads (RSA 2048,
self-signed "dtls@baresip"; no config key) and signs a=fingerprint with
"SHA-256". Its ice module never offers 127.0.0.1 (it skips loopback and
link-local interface addresses): the host candidates are this machine's
other IPv4 addresses (host_ice_addresses()), which the kernel delivers over
lo, so the media still never leaves the machine; without one a DTLS-mode
test fails (skips under WAGW_ALLOW_SKIP_PEERS=1). sip_trace=True (`-s`)
logs every SIP message sent and received; traced_sip() returns them, e.g.
to read the SDP offer.

The config folder is written like ../peers/baresip/mkcfg.sh does: sip_listen
on a free port P (UDP/TCP on P, TLS on P+1), ctrl_tcp on another free port,
the audio source an `aufile` WAV (made here: a tone, or silence), what is
received recorded by the `sndfile` module into DIR/rec. Control is the
ctrl_tcp module: netstring-framed JSON commands ({"command": "dial", "params":
..., "token": ...}); its responses and the UA events (CALL_ESTABLISHED,
CALL_CLOSED, CALL_DTMF_START, ...) arrive on the same connection, read here by
a thread.

Quirks: baresip answers only when the Request-URI user equals its account's
user (others get 404); it does not verify the server certificate; when the
aufile source ends the call ends (the generated source lasts `source_seconds`);
`ausine` needs 2 channels, hence aufile.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from tests.peers import (
    LOOPBACK,
    PeerProcess,
    free_port,
    release_ports,
    require_binary,
    self_signed_cert,
    skip_allowed,
    start_process,
    stop_process,
)
from tests.peers.audio import tone_wav

MODULE_PATH = "/usr/lib/baresip/modules"
OPUS = "opus/48000/1"
PCMU = "PCMU/8000/1"
PCMA = "PCMA/8000/1"
MEDIA_MODES = ("sdes", "dtls")

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
# what `-s` writes per message: ESC[36;1m#, "<transport> <src> -> <dst>", the message, ESC[;m
_TRACE = re.compile(r"\x1b\[36;1m#\r?\n(\w+) (\S+) -> (\S+)\r?\n(.*?)\x1b\[;m", re.DOTALL)


class BaresipError(RuntimeError):
    pass


def _netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


class TracedSip(NamedTuple):
    """One SIP message from baresip's `-s` trace (sent or received)."""

    transport: str  # "UDP" | "TCP" | "TLS"
    source: str  # "address:port"
    destination: str
    text: str  # the whole message, CRLF line ends

    @property
    def first_line(self) -> str:
        return self.text.split("\r\n", 1)[0]

    @property
    def body(self) -> str:
        """The message body (the SDP), "" when there is none."""
        return self.text.partition("\r\n\r\n")[2]


def host_ice_addresses() -> list[str]:
    """The IPv4 addresses baresip 1.0's ice module makes host candidates of:
    those of every interface that is up, except 127.0.0.1 and 169.254/16
    (its if_handler skips loopback and link-local). One per interface (the
    primary, SIOCGIFADDR), in interface order."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            ifreq = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq), 16)[0]
                addr = socket.inet_ntoa(fcntl.ioctl(sock, _SIOCGIFADDR, ifreq)[20:24])
            except OSError:  # no IPv4 address on this interface
                continue
            if flags & _IFF_UP and addr != LOOPBACK and not addr.startswith("169.254."):
                found.append(addr)
    return found


def _require_ice_address() -> None:
    if host_ice_addresses():
        return
    import pytest

    msg = (
        "baresip's ice module offers no candidate for 127.0.0.1 and this host has no "
        "other IPv4 address: DTLS/ICE mode needs one (its traffic stays on lo)"
    )
    if skip_allowed():
        pytest.skip(msg)
    pytest.fail(msg)


class Baresip(PeerProcess):
    """One baresip process (by PID) with its own config folder."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str = "phone",
        tls: bool = False,
        srtp: bool | None = None,
        codec: str | None = None,
        audio: Path | float | None = None,
        source_seconds: float = 120.0,
        answermode: str = "auto",
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        rtp_ports: tuple[int, int] | None = None,
        extra_account_params: str = "",
        extra_config: str = "",
        media: str = "sdes",
        sip_trace: bool = False,
        max_lifetime: int = 900,
        binary: str = "baresip",
    ) -> None:
        """workdir: the config folder (created). user: the account's user
        (what the Request-URI of calls to it must carry). tls: account and
        calls over SIP/TLS. srtp: mediaenc=srtp-mand (default: same as tls).
        codec: the only audio codec offered (default Opus for tls, else PCMU).
        audio: what to send, a 48 kHz mono WAV path, a frequency in Hz for a
        generated tone, or None for silence. media: "sdes" (the SRTP of
        `srtp`, or none) or "dtls" (DTLS-SRTP + ICE + rtcp-mux, see the
        module docstring; `srtp` must then be unset or False). sip_trace:
        log every SIP message (`-s`, read back with traced_sip()).
        max_lifetime: baresip quits by itself after this many seconds (-t),
        in case the test runner dies."""
        if media not in MEDIA_MODES:
            raise ValueError(f"media must be one of {MEDIA_MODES}, not {media!r}")
        if media == "dtls" and srtp:
            raise ValueError("media='dtls' replaces SDES-SRTP: leave srtp unset")
        self.dir = Path(workdir)
        self.user = user
        self.tls = tls
        self.media = media
        self.sip_trace = sip_trace
        self.srtp = False if media == "dtls" else (tls if srtp is None else srtp)
        self.codec = codec or (OPUS if tls else PCMU)
        self.audio = audio
        self.source_seconds = source_seconds
        self.answermode = answermode
        self.sip_port = sip_port or free_port(2)
        self.ctrl_port = ctrl_port or free_port(udp=False)
        self._rtp_block: tuple[int, int] | None = None
        if rtp_ports is None:
            start = free_port(40, tcp=False, low=16000, high=20000)
            self._rtp_block = (start, 40)
            rtp_ports = (start, start + 39)
        self.rtp_ports = rtp_ports
        self.extra_account_params = extra_account_params
        self.extra_config = extra_config
        self.max_lifetime = max_lifetime
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._token = 0

    # ------------------------------------------------------------ paths --
    @property
    def tls_port(self) -> int:
        return self.sip_port + 1

    @property
    def log_path(self) -> Path:
        return self.dir / "baresip.log"

    @property
    def rec_dir(self) -> Path:
        return self.dir / "rec"

    @property
    def uri(self) -> str:
        """Where to reach this phone (Request-URI user = its account user)."""
        if self.tls:
            return f"sip:{self.user}@{LOOPBACK}:{self.tls_port};transport=tls"
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}"

    def account_line(self) -> str:
        aor = (
            f"<sip:{self.user}@{LOOPBACK};transport=tls>"
            if self.tls
            else (f"<sip:{self.user}@{LOOPBACK}>")
        )
        params = ["regint=0", f"answermode={self.answermode}"]
        if self.srtp:
            params.append("mediaenc=srtp-mand")
        if self.media == "dtls":
            params += ["mediaenc=dtls_srtp", "medianat=ice"]
        params.append(f"audio_codecs={self.codec}")
        line = aor + ";" + ";".join(params)
        if self.extra_account_params:
            line += ";" + self.extra_account_params.lstrip(";")
        return line

    # ----------------------------------------------------------- config --
    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(exist_ok=True)
        certs = self.dir / "certs"
        cert, key = self_signed_cert(certs)
        bundle = certs / "baresip.pem"
        bundle.write_bytes(cert.read_bytes() + key.read_bytes())
        if isinstance(self.audio, (str, Path)):
            source = Path(self.audio)
        else:
            source = tone_wav(self.dir / "source.wav", self.audio or 0.0, self.source_seconds)
        webrtc = ""
        if self.media == "dtls":
            # menc/mnat modules register before account.so (a module_tmp) reads the accounts
            webrtc = "module\t\t\tice.so\nmodule\t\t\tdtls_srtp.so\nrtcp_mux\t\tyes\n"
        config = f"""\
poll_method\t\tepoll
sip_listen\t\t{LOOPBACK}:{self.sip_port}
sip_certificate\t\t{bundle}
sip_cafile\t\t{cert}
net_interface\t\t{LOOPBACK}
dns_server\t\t{LOOPBACK}:53
call_local_timeout\t30
call_max_calls\t\t4
audio_player\t\talsa,null
audio_alert\t\talsa,null
audio_source\t\taufile,{source}
ausrc_srate\t\t48000
auplay_srate\t\t48000
ausrc_channels\t\t1
auplay_channels\t\t1
rtp_ports\t\t{self.rtp_ports[0]}-{self.rtp_ports[1]}
rtp_timeout\t\t10
module_path\t\t{MODULE_PATH}
module\t\t\topus.so
module\t\t\tg711.so
module\t\t\tsrtp.so
module\t\t\tsndfile.so
module\t\t\talsa.so
module\t\t\taufile.so
{webrtc}module_tmp\t\tuuid.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t{LOOPBACK}:{self.ctrl_port}
opus_bitrate\t\t32000
opus_stereo\t\tno
opus_sprop_stereo\tno
snd_path\t\t{self.rec_dir}
statmode_default\toff
{self.extra_config}
"""
        (self.dir / "config").write_text(config)
        (self.dir / "accounts").write_text(self.account_line() + "\n")
        (self.dir / "contacts").write_text("")

    # --------------------------------------------------------- lifecycle --
    def start(self, *, timeout: float = 10.0) -> Baresip:
        binary = require_binary(self.binary, "baresip-core")
        args = [binary, "-f", str(self.dir), "-t", str(self.max_lifetime)]
        if self.media == "dtls":
            _require_ice_address()
            args.append("-4")  # IPv4 host candidates only (its RTP socket is IPv4)
        if self.sip_trace:
            args.append("-s")
        self.write_config()
        self.proc = start_process(args, self.log_path)
        deadline = time.monotonic() + timeout
        while self._sock is None:
            if self.proc.poll() is not None:
                raise BaresipError(
                    f"baresip exited with {self.proc.returncode} while starting:\n{self._tail()}"
                )
            try:
                self._sock = socket.create_connection((LOOPBACK, self.ctrl_port), timeout=1)
            except OSError:
                if time.monotonic() > deadline:
                    raise BaresipError(
                        f"baresip ctrl_tcp not listening on {self.ctrl_port}:\n{self._tail()}"
                    ) from None
                time.sleep(0.05)
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="baresip-ctrl", daemon=True)
        self._reader.start()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self._rtp_block is not None:
            release_ports(*self._rtp_block)
            self._rtp_block = None
        if proc is not None and proc.poll() is None and self._sock is not None:
            with contextlib.suppress(OSError, BaresipError, TimeoutError):
                self._send("quit", "", self._next_token())
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        stop_process(proc, grace=3)
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------ ctrl_tcp --
    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += data
            while True:
                colon = buf.find(b":")
                if colon <= 0:
                    break
                size = int(buf[:colon])
                end = colon + 1 + size
                if len(buf) < end + 1:
                    break
                payload, buf = buf[colon + 1 : end], buf[end + 1 :]
                try:
                    msg = json.loads(payload)
                except ValueError:
                    continue
                with self._cond:
                    if msg.get("event"):
                        msg["_time"] = time.monotonic()
                        self.events.append(msg)
                    elif msg.get("response"):
                        self._responses[str(msg.get("token", ""))] = msg
                    self._cond.notify_all()

    def _next_token(self) -> str:
        self._token += 1
        return f"t{self._token}"

    def _send(self, command: str, params: str, token: str) -> None:
        if self._sock is None:
            raise BaresipError("baresip is not running")
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(_netstring(body))

    def command(self, command: str, params: str = "", *, timeout: float = 5.0) -> dict[str, Any]:
        """Run a baresip command (as the menu module knows them: dial, hangup,
        accept, sndcode, listcalls, ...); returns the response
        {"response": true, "ok": bool, "data": str, "token": str}."""
        token = self._next_token()
        self._send(command, params, token)
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"baresip: no response to {command} {params!r}")
                self._cond.wait(left)
            return self._responses.pop(token)

    def dial(self, uri: str) -> dict[str, Any]:
        """Call `uri`. A TLS account adds ";transport=tls" itself."""
        if self.tls:
            uri = uri.replace(";transport=tls", "")
        return self.command("dial", uri)

    def accept(self) -> dict[str, Any]:
        return self.command("accept")

    def hangup(self) -> dict[str, Any]:
        return self.command("hangup")

    def send_dtmf(self, digits: str, *, gap: float = 0.3) -> None:
        """Send digits as RFC 4733 telephone-events on the current call, one
        `sndcode` command per digit, `gap` seconds apart (each digit is
        pressed and released)."""
        for i, digit in enumerate(digits):
            if i:
                time.sleep(gap)
            res = self.command("sndcode", digit)
            if not res.get("ok", False):
                raise BaresipError(f"sndcode {digit!r} failed: {res}")

    # -------------------------------------------------------------- events --
    def wait_event(
        self,
        types: str | Iterable[str],
        *,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first event of one of `types` (e.g. "CALL_ESTABLISHED") that no
        earlier wait_event returned; raises TimeoutError."""
        wanted = {types} if isinstance(types, str) else set(types)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self.events):
                    if i in self._taken or ev.get("type") not in wanted:
                        continue
                    if where is not None and not where(ev):
                        continue
                    self._taken.add(i)
                    return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("type") for e in self.events]
                    raise TimeoutError(
                        f"baresip: no {sorted(wanted)} event within {timeout} s; seen {seen}"
                    )
                if self._reader is None or not self._reader.is_alive():
                    raise BaresipError(f"baresip ctrl connection closed:\n{self._tail()}")
                self._cond.wait(min(left, 0.5))

    def event_types(self) -> list[str]:
        with self._cond:
            return [str(e.get("type")) for e in self.events]

    def received_dtmf(self) -> str:
        """Digits received so far (CALL_DTMF_START events), in order."""
        with self._cond:
            return "".join(
                str(e.get("param", "")) for e in self.events if e.get("type") == "CALL_DTMF_START"
            )

    def wait_dtmf(self, count: int, *, timeout: float = 10.0) -> str:
        """Wait until `count` digits have been received; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                digits = "".join(
                    str(e.get("param", ""))
                    for e in self.events
                    if e.get("type") == "CALL_DTMF_START"
                )
                if len(digits) >= count:
                    return digits
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"baresip: {count} DTMF digits expected, got {digits!r}")
                self._cond.wait(min(left, 0.5))

    # ---------------------------------------------------------- recordings --
    def recordings(self, direction: str = "dec") -> list[Path]:
        """WAVs written by the sndfile module, oldest first: "dec" = audio
        received (decoded), "enc" = audio sent."""
        files = list(self.rec_dir.glob(f"dump-*-{direction}.wav"))
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    # ------------------------------------------------------------- SIP trace --
    def traced_sip(self) -> list[TracedSip]:
        """The SIP messages baresip sent and received so far, in order
        (needs sip_trace=True)."""
        if not self.sip_trace:
            raise BaresipError("traced_sip() needs Baresip(..., sip_trace=True)")
        text = self.log_path.read_bytes().decode("utf-8", "replace")  # keeps the CRLFs
        return [TracedSip(*m.groups()) for m in _TRACE.finditer(text)]

    def _tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"({self.log_path} missing)"


__all__ = [
    "MEDIA_MODES",
    "OPUS",
    "PCMA",
    "PCMU",
    "Baresip",
    "BaresipError",
    "TracedSip",
    "host_ice_addresses",
]
