"""Meta's WebRTC media mode: ICE-lite and a DTLS-SRTP server on the call's media port.

docs/whatsapp-sip.md section 7: Meta is ICE-lite with one IPv4 and one IPv6
host candidate, offers ``UDP/TLS/RTP/SAVPF`` with ``a=setup:actpass`` (answers
``passive``), and the business side is the ICE controlling agent and the DTLS
client. :class:`WebRtcEndpoint` is the SDES :class:`MediaEndpoint` with that in
front (RFC 7983 demultiplexing on the one port):

- ICE-lite (RFC 8445 2.5): never sends a check. A Binding request is answered
  with success (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT) only if
  USERNAME is ``<meta ufrag>:<gateway ufrag>``, MESSAGE-INTEGRITY verifies
  with Meta's ice-pwd, FINGERPRINT is present and ICE-CONTROLLING is there;
  ICE-CONTROLLED gets 487 (a lite agent is always controlled), bad credentials
  401, missing attributes 400, no FINGERPRINT no answer. Every rejection is a
  violation. The first successful check with USE-CANDIDATE nominates its
  source; without one within ``MediaScript.ice_timeout`` of the answer the call
  fails. Checks after that (consent, RFC 7675) are answered for the call's life.
- DTLS (:mod:`tests.emulator.dtls_server`): the ClientHello must come from the
  nominated address after the nomination; the gateway's certificate must match
  its SDP fingerprint; the handshake must end within ``MediaScript.dtls_timeout``
  of the nomination. The exported keys then drive the SDES media path.
- Media: RTP/RTCP before the handshake, from another address than the
  nominated one, or failing SRTP authentication (plain RTP) fails the call.

A failure calls :attr:`WebRtcEndpoint.on_failure` once (the call records it and
sends BYE) and is also a violation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import string
from collections.abc import Callable, Sequence
from typing import cast

from gateway.ice import stun
from tests.emulator.dtls_server import DtlsIdentity, DtlsServer
from tests.emulator.result import CallResult
from tests.emulator.rtp import Codec, MediaEndpoint, MediaScript
from tests.emulator.sdp import Media, Sdp, build_meta_sdp
from tests.emulator.webrtc_sdp import (
    WEBRTC_PROTO,
    Candidate,
    LocalWebRtc,
    RemoteWebRtc,
    host_priority,
    read_webrtc,
)

#: Meta's IPv6 host candidate when ``::1`` cannot be bound: a documentation
#: address (RFC 3849) nothing answers on, so checks sent there are simply lost.
IPV6_UNREACHABLE = "2001:db8::1"
#: Reason header on Meta's BYE when WebRTC media could not be set up or broke a rule.
WEBRTC_FAILED = 'SIP;cause=488;text="WebRTC media failed"'
_ICE_ALPHABET = string.ascii_letters + string.digits + "+/"

Address = tuple[str, int]


def new_ice_credentials() -> tuple[str, str]:
    """(ufrag, pwd): 8 and 24 random ice-chars (RFC 8839 5.4: at least 4 and 22)."""
    pick = secrets.choice
    return "".join(pick(_ICE_ALPHABET) for _ in range(8)), "".join(
        pick(_ICE_ALPHABET) for _ in range(24)
    )


def demux(data: bytes) -> str | None:
    """RFC 7983 7: "stun" (0-3), "dtls" (20-63), "rtp" (128-191, RTP and RTCP), else None."""
    if not data:
        return None
    b = data[0]
    if b <= 3:
        return "stun"
    if 20 <= b <= 63:
        return "dtls"
    if 128 <= b <= 191:
        return "rtp"
    return None


def _addr(addr: tuple[str, int] | tuple[str, int, int, int]) -> Address:
    return str(addr[0]), int(addr[1])


class IceLite:
    """Meta's ICE-lite responder for one call: answers the gateway's checks, strictly.

    ``handle`` returns the response to send (None: drop) and whether this
    check nominated its pair (a success with USE-CANDIDATE).
    """

    def __init__(self, ufrag: str, pwd: str, result: CallResult) -> None:
        self.ufrag = ufrag
        self.pwd = pwd
        self.remote_ufrag: str | None = None
        self.result = result

    def _reject(self, reason: str, response: stun.StunMessage | None, signed: bool) -> bytes | None:
        self.result.ice_rejected.append(reason)
        self.result.violation(f"gateway's ICE check rejected: {reason}")
        if response is None:
            return None
        return stun.encode(response, key=self.pwd if signed else None, fingerprint=True)

    def handle(self, data: bytes, addr: Address, now: float) -> tuple[bytes | None, bool]:
        r = self.result
        try:
            parsed = stun.parse(data)
        except stun.StunError as exc:
            r.violation(f"malformed STUN datagram from the gateway: {exc}")
            return None, False
        msg = parsed.message
        if msg.method != stun.BINDING:
            r.violation(f"STUN method {msg.method:#x} from the gateway (ICE uses Binding only)")
            return None, False
        if msg.cls == stun.StunClass.INDICATION:
            return None, False  # a keepalive (RFC 8445 11): nothing to answer
        if msg.cls != stun.StunClass.REQUEST:
            r.violation("STUN response sent to Meta, which is ICE-lite and sends no checks")
            return None, False
        r.ice_checks += 1
        if not parsed.fingerprint:
            return self._reject("no FINGERPRINT (RFC 8445 7.2.2): not answered", None, False), False
        unknown = msg.unknown_required()
        if unknown:
            err = stun.binding_error(msg, 420, "Unknown Attribute", unknown)
            return self._reject(f"420 unknown attributes {unknown}", err, False), False
        username = msg.get(stun.Username)
        if username is None or parsed.integrity is None:
            err = stun.binding_error(msg, 400, "Bad Request")
            return self._reject("400 no USERNAME or MESSAGE-INTEGRITY", err, False), False
        expected = f"{self.ufrag}:{self.remote_ufrag}"
        if username.value != expected:
            err = stun.binding_error(msg, 401, "Unauthorized")
            why = f"401 USERNAME {username.value!r}, expected {expected!r}"
            return self._reject(why, err, False), False
        if not parsed.check_integrity(self.pwd):
            err = stun.binding_error(msg, 401, "Unauthorized")
            why = "401 MESSAGE-INTEGRITY does not verify with Meta's ice-pwd"
            return self._reject(why, err, False), False
        if msg.has(stun.IceControlled):
            err = stun.binding_error(msg, 487, "Role Conflict")
            why = "487 ICE-CONTROLLED: Meta is ICE-lite, the gateway must be controlling"
            return self._reject(why, err, True), False
        if not msg.has(stun.IceControlling) or not msg.has(stun.Priority):
            err = stun.binding_error(msg, 400, "Bad Request")
            why = "400 no ICE-CONTROLLING or PRIORITY (RFC 8445 7.2.2)"
            return self._reject(why, err, True), False
        ok = stun.binding_success(msg, ipaddress.ip_address(addr[0]), addr[1])
        nominated = msg.has(stun.UseCandidate)
        if nominated:
            r.use_candidate_seen = True
        if r.ice_nominated is not None:
            r.ice_last_consent_at = now
        return stun.encode(ok, key=self.pwd, fingerprint=True), nominated


class _SideSocket(asyncio.DatagramProtocol):
    """A second candidate's socket (IPv6): hands datagrams to the endpoint."""

    def __init__(self, owner: WebRtcEndpoint) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.owner.receive(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        pass


class WebRtcEndpoint(MediaEndpoint):
    """One call's media socket(s) in Meta's WebRTC mode (see the module docstring)."""

    def __init__(self, result: CallResult, script: MediaScript) -> None:
        super().__init__(result, script)
        result.media_mode = "webrtc"
        self.identity = DtlsIdentity.generate()
        self.ufrag, self.pwd = new_ice_credentials()
        self.ice = IceLite(self.ufrag, self.pwd, result)
        self.host = "127.0.0.1"
        self.candidates: list[Candidate] = []
        self.remote_webrtc: RemoteWebRtc | None = None
        self.dtls: DtlsServer | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.failed: str | None = None
        self.ready = asyncio.Event()  # DTLS done, SRTP keyed
        self._v4: asyncio.DatagramTransport | None = None
        self._side: list[asyncio.DatagramTransport] = []
        self._nominated: tuple[Address, asyncio.DatagramTransport] | None = None
        self._nominated_at = 0.0
        self._started_at: float | None = None
        self._pending: list[tuple[bytes, Address, asyncio.DatagramTransport]] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    # -- set-up ------------------------------------------------------------------
    async def open(self, host: str = "127.0.0.1") -> int:
        """The IPv4 socket (c= and the first candidate) and an IPv6 one on ``::1``."""
        port = await super().open(host)
        self.host = host
        self._v4 = self.transport
        v6: Address = (IPV6_UNREACHABLE, port)
        try:
            loop = asyncio.get_running_loop()
            side, _ = await loop.create_datagram_endpoint(
                lambda: _SideSocket(self), local_addr=("::1", 0)
            )
            self._side.append(side)
            v6 = ("::1", int(side.get_extra_info("sockname")[1]))
        except OSError:
            pass  # no IPv6 loopback: advertise the unreachable documentation address
        self.candidates = [
            Candidate("1", 1, "UDP", host_priority(65535), host, port),
            Candidate("2", 1, "UDP", host_priority(65534), v6[0], v6[1]),
        ]
        return port

    def local_sdp(
        self,
        *,
        setup: str,
        opus_pt: int | None = 111,
        te_pt: int | None = 126,
        g711: list[int] | None = None,
        mid: str = "0",
    ) -> str:
        """Meta's WebRTC offer (``setup="actpass"``) or answer (``"passive"``)."""
        fingerprint = self.identity.fingerprint
        if self.script.webrtc_fault == "wrong_fingerprint":
            fingerprint = DtlsIdentity.generate().fingerprint  # not the certificate we use
        local = LocalWebRtc(self.ufrag, self.pwd, fingerprint, setup, tuple(self.candidates))
        return build_meta_sdp(
            address=self.host,
            port=self.port,
            cryptos=[],
            ssrc=self.ssrc,
            opus_pt=opus_pt,
            te_pt=te_pt,
            g711=g711,
            proto=WEBRTC_PROTO,
            mid=mid,
            session_attrs=local.session_attrs(),
            media_attrs=local.media_attrs(),
        )

    def accept(
        self, sdp: Sdp, m: Media, *, answer: bool, offer_mid: str | None = None
    ) -> str | None:
        """Check the gateway's WebRTC SDP; the fatal reason, None when usable."""
        remote, fatal, problems = read_webrtc(sdp, m, answer=answer, offer_mid=offer_mid)
        for p in problems:
            self.result.violation(f"{'answer' if answer else 'offer'} SDP: {p}")
        if fatal is None:
            self.remote_webrtc = remote
        return fatal

    def start(self, codec: Codec, declared_remote_ssrcs: Sequence[int] = ()) -> None:
        """The gateway's parameters are known: answer checks, wait for DTLS (timers start)."""
        remote = self.remote_webrtc
        assert remote is not None, "accept() the gateway's SDP first"
        if self._started_at is not None:
            return
        self.codec = codec
        self.declared_remote_ssrcs = list(declared_remote_ssrcs)
        self.ice.remote_ufrag = remote.ufrag
        self.dtls = DtlsServer(self.identity, remote.fingerprints, self.script.dtls_profiles)
        self._started_at = asyncio.get_running_loop().time()
        pending, self._pending = self._pending, []
        for data, addr, transport in pending:
            self.receive(data, addr, transport)
        self._watchdog = asyncio.ensure_future(self._watch())

    # -- receive -----------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._v4 is not None:
            self.receive(data, addr, self._v4)

    def receive(
        self,
        data: bytes,
        raw_addr: tuple[str, int] | tuple[str, int, int, int],
        transport: asyncio.DatagramTransport,
    ) -> None:
        """One datagram on one of our candidates' sockets (RFC 7983 demultiplexing)."""
        addr = _addr(raw_addr)
        if self._closed:
            return
        if self._started_at is None:  # checks can beat the SDP answer: keep them
            if len(self._pending) < 200:
                self._pending.append((data, addr, transport))
            return
        kind = demux(data)
        if kind == "stun":
            self._stun(data, addr, transport)
        elif kind == "dtls":
            self._dtls(data, addr)
        elif kind == "rtp":
            self._media(data, addr)
        else:
            first = data[0] if data else None
            self.result.violation(
                f"datagram from {addr[0]}:{addr[1]} with first byte {first}: neither STUN, "
                "DTLS nor RTP/RTCP (RFC 7983)"
            )

    def _stun(self, data: bytes, addr: Address, transport: asyncio.DatagramTransport) -> None:
        if self.script.webrtc_fault == "ice_silent":
            return
        now = asyncio.get_running_loop().time()
        response, nominated = self.ice.handle(data, addr, now)
        if nominated:
            if self._nominated is None:
                self._nominated = (addr, transport)
                self._nominated_at = now
                self.result.ice_nominated = addr
            elif self._nominated[0] != addr:
                self.result.violation(
                    f"gateway nominated a second pair ({addr[0]}:{addr[1]}) after "
                    f"{self._nominated[0][0]}:{self._nominated[0][1]}"
                )
        if response is not None:
            transport.sendto(response, addr)

    def _dtls(self, data: bytes, addr: Address) -> None:
        r, dtls, nominated = self.result, self.dtls, self._nominated
        assert dtls is not None
        if self.script.webrtc_fault == "dtls_silent":
            return
        if nominated is None:
            r.violation(
                "DTLS from the gateway before ICE nominated a pair (no successful check with "
                "USE-CANDIDATE yet): dropped"
            )
            return
        if addr != nominated[0]:
            r.violation(
                f"DTLS from {addr[0]}:{addr[1]}, not the nominated {nominated[0][0]}:"
                f"{nominated[0][1]}: dropped"
            )
            return
        now = asyncio.get_running_loop().time()
        for out in dtls.receive(data, now):
            nominated[1].sendto(out, addr)
        if dtls.fingerprint_ok is not None:
            r.fingerprint_ok = dtls.fingerprint_ok
        if dtls.state == "failed":
            self._fail(dtls.failure or "DTLS handshake failed")
        elif dtls.state == "connected" and not self.ready.is_set():
            self._connected(now, nominated)

    def _connected(self, now: float, nominated: tuple[Address, asyncio.DatagramTransport]) -> None:
        r, dtls, codec = self.result, self.dtls, self.codec
        assert dtls is not None and dtls.keys is not None and codec is not None
        ours, theirs = dtls.keys
        r.dtls_profile = dtls.profile
        r.suite = ours.suite
        r.dtls_handshake_ms = (dtls.handshake_seconds or 0.0) * 1000.0
        self.transport = nominated[1]  # send_loop sends on the nominated pair
        self.configure(
            tx=ours,
            rx=theirs,
            remote=nominated[0],
            codec=codec,
            declared_remote_ssrcs=self.declared_remote_ssrcs,
        )
        self.ready_at = now
        self.ready.set()

    def _media(self, data: bytes, addr: Address) -> None:
        r = self.result
        if not self.ready.is_set():
            self._fail(
                f"RTP/RTCP from the gateway ({addr[0]}:{addr[1]}) before the DTLS handshake "
                "completed: WebRTC media must be SRTP keyed by DTLS"
            )
            return
        assert self._nominated is not None
        want = self._nominated[0]
        if addr != want:
            self._fail(
                f"media from {addr[0]}:{addr[1]}, not the nominated ICE pair {want[0]}:{want[1]}"
            )
            return
        failures = r.srtp_auth_failures + r.srtcp_auth_failures
        super().datagram_received(data, addr)
        if r.srtp_auth_failures + r.srtcp_auth_failures > failures:
            self._fail(
                "media from the gateway failed SRTP authentication with the DTLS-SRTP keys "
                "(unencrypted RTP, or keys not exported per RFC 5764 4.2)"
            )

    # -- timers and failure ------------------------------------------------------
    def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        self.result.violation(reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    async def _watch(self) -> None:
        """ICE and DTLS time limits; our DTLS flight's retransmission."""
        loop, s, r = asyncio.get_running_loop(), self.script, self.result
        assert self._started_at is not None and self.dtls is not None
        while not self._closed and self.failed is None and not self.ready.is_set():
            await asyncio.sleep(0.02)
            now = loop.time()
            if self._nominated is None:
                if now - self._started_at > s.ice_timeout:
                    seen = f"{r.ice_checks} checks received"
                    if r.ice_rejected:
                        seen += f", {len(r.ice_rejected)} rejected: {r.ice_rejected[-1]}"
                    self._fail(
                        f"no ICE check with USE-CANDIDATE from the gateway within "
                        f"{s.ice_timeout:g} s of the answer ({seen})"
                    )
                continue
            if now - self._nominated_at > s.dtls_timeout:
                what = "no DTLS ClientHello" if self.dtls.state == "new" else "DTLS not finished"
                self._fail(f"{what} within {s.dtls_timeout:g} s of the ICE nomination")
                continue
            addr, transport = self._nominated
            for out in self.dtls.poll():
                transport.sendto(out, addr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.dtls is not None:
            if self._nominated is not None:
                addr, transport = self._nominated
                for out in self.dtls.close():
                    transport.sendto(out, addr)
            self.result.fingerprint_ok = self.dtls.fingerprint_ok
        for side in self._side:
            if side is not self.transport:
                side.close()
        if self._v4 is not None and self._v4 is not self.transport:
            self._v4.close()
        super().close()
