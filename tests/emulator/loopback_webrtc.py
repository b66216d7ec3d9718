"""A business-side WebRTC media peer (what the gateway must be toward Meta), for self-tests.

A full ICE agent in the controlling role (RFC 8445): Binding requests with
USE-CANDIDATE, ICE-CONTROLLING, PRIORITY, MESSAGE-INTEGRITY and FINGERPRINT
(gateway.ice.stun) to Meta's IPv4 candidates until one succeeds, consent checks
after that; then the DTLS client (pyOpenSSL) with use_srtp, Meta's certificate
checked against its SDP fingerprint, and the exported keys (its own RFC 5764 4.2
split) drive a :class:`MediaEndpoint`. Apart from the certificate generator and
the SDP builder it shares no code with the emulator's WebRTC side
(tests/emulator/webrtc.py, dtls_server.py), so the one checks the other.
:class:`WebRtcFaults` make it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto

from gateway.ice import stun
from tests.emulator.dtls_server import DtlsIdentity
from tests.emulator.result import CallResult
from tests.emulator.rtp import Codec, MediaEndpoint, MediaScript, build_rtp
from tests.emulator.sdp import SUITES, Crypto, build_meta_sdp, parse_sdp
from tests.emulator.webrtc_sdp import (
    WEBRTC_PROTO,
    Candidate,
    LocalWebRtc,
    host_priority,
    parse_candidate,
)

Address = tuple[str, int]
_SUITE_OF = {
    "SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
    "SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
}


@dataclass
class WebRtcFaults:
    """How the business peer misbehaves (all off: a correct gateway)."""

    use_candidate: bool = True  # False: never nominates
    wrong_pwd: bool = False  # MESSAGE-INTEGRITY keyed with a wrong password
    controlled: bool = False  # claims ICE-CONTROLLED
    lie_fingerprint: bool = False  # SDP a=fingerprint of another certificate
    plain_rtp: bool = False  # RTP without SRTP after the handshake
    early_rtp: bool = False  # one RTP packet after nomination, before DTLS
    other_source: bool = False  # media from a second socket (not the nominated address)
    dtls: bool = True  # False: nominates, then never sends a ClientHello
    setup: str = "active"  # a=setup of the answer to Meta's actpass
    ice_lite: bool = False  # declares a=ice-lite
    profiles: str = "SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM"
    check_interval: float = 0.05
    consent_interval: float = 0.3


class _PlainRtp:
    """Stands in for the SRTP session in the plain-RTP fault."""

    def protect(self, packet: bytes) -> bytes:
        return packet

    def protect_rtcp(self, packet: bytes) -> bytes:
        return packet


class BusinessWebRtc(MediaEndpoint):
    """One call's business-side media: ICE controlling, DTLS client, then SRTP media."""

    def __init__(
        self, result: CallResult, script: MediaScript, faults: WebRtcFaults | None = None
    ) -> None:
        super().__init__(result, script)
        self.faults = faults or WebRtcFaults()
        self.identity = DtlsIdentity.generate("business.example.com")
        chars = string.ascii_letters + string.digits
        self.ufrag = "".join(secrets.choice(chars) for _ in range(6))
        self.pwd = "".join(secrets.choice(chars) for _ in range(26))
        self.tie_breaker = secrets.randbits(64)
        self.ready = asyncio.Event()
        self.remote_ufrag = self.remote_pwd = self.remote_fingerprint = ""
        self.remote_candidates: list[Address] = []
        self.nominated: Address | None = None
        self.mapped: Address | None = None  # XOR-MAPPED-ADDRESS of a success
        self.errors: list[int] = []  # STUN error codes Meta answered with
        self.checks_sent = 0
        self.consent_ok = 0  # successes after the nomination
        self.meta_fingerprint_ok: bool | None = None
        self.profile: str | None = None
        self.dtls: SSL.Connection | None = None
        self._txns: dict[bytes, bool] = {}  # transaction id -> USE-CANDIDATE
        self._task: asyncio.Task[None] | None = None
        self._other: asyncio.DatagramTransport | None = None
        self._main: asyncio.DatagramTransport | None = None

    # -- SDP -------------------------------------------------------------------
    def local_sdp(
        self, *, setup: str, opus_pt: int | None = 111, te_pt: int | None = 126, mid: str = "0"
    ) -> str:
        cert = DtlsIdentity.generate() if self.faults.lie_fingerprint else self.identity
        cand = Candidate("1", 1, "UDP", host_priority(65535), "127.0.0.1", self.port)
        local = LocalWebRtc(
            self.ufrag, self.pwd, cert.fingerprint, setup, (cand,), lite=self.faults.ice_lite
        )
        return build_meta_sdp(
            address="127.0.0.1",
            port=self.port,
            cryptos=[],
            ssrc=self.ssrc,
            opus_pt=opus_pt,
            te_pt=te_pt,
            proto=WEBRTC_PROTO,
            mid=mid,
            session_attrs=local.session_attrs(),
            media_attrs=local.media_attrs(),
        )

    def learn(self, text: str) -> tuple[Codec, str]:
        """Meta's offer or answer: its ICE credentials, candidates, fingerprint; (codec, mid)."""
        sdp = parse_sdp(text)
        m = sdp.audio()
        assert m is not None and m.proto == WEBRTC_PROTO, text
        self.remote_ufrag = m.attr("ice-ufrag")[0] or ""
        self.remote_pwd = m.attr("ice-pwd")[0] or ""
        self.remote_fingerprint = (m.attr("fingerprint")[0] or "").split(" ")[1]
        cands = [parse_candidate(v or "") for v in m.attr("candidate")]
        self.remote_candidates = [(c.address, c.port) for c in cands if c.family == 4]
        maps = m.rtpmaps
        opus = next(pt for pt in m.payload_types if maps[pt].encoding.lower() == "opus")
        te = next((pt for pt in m.payload_types if maps[pt].encoding == "telephone-event"), None)
        return Codec("opus", opus, 48000, te_pt=te), m.attr("mid")[0] or ""

    def start(self, codec: Codec) -> None:
        self.codec = codec
        self._main = self.transport  # ICE and DTLS always use this socket
        self._task = asyncio.ensure_future(self._run())

    # -- ICE and DTLS ------------------------------------------------------------
    def _check(self, addr: Address, use_candidate: bool) -> None:
        assert self._main is not None
        f = self.faults
        req = stun.binding_request(
            f"{self.remote_ufrag}:{self.ufrag}",
            priority=host_priority(65535),
            controlling=not f.controlled,
            tie_breaker=self.tie_breaker,
            use_candidate=use_candidate,
        )
        key = "x" * 22 if f.wrong_pwd else self.remote_pwd
        self._txns[req.transaction_id] = use_candidate
        self._main.sendto(stun.encode(req, key=key, fingerprint=True), addr)
        self.checks_sent += 1

    def _dtls_client(self) -> SSL.Connection:
        ctx = self.identity.context(SSL.DTLS_CLIENT_METHOD)
        ctx.set_tlsext_use_srtp(self.faults.profiles.encode())

        def verify(conn: SSL.Connection, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
            fp = cert.to_cryptography().fingerprint(hashes.SHA256()).hex(":").upper()
            self.meta_fingerprint_ok = fp == self.remote_fingerprint.upper()
            return self.meta_fingerprint_ok

        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        conn.set_ciphertext_mtu(1200)
        return conn

    def _flush(self) -> None:
        assert self.dtls is not None and self.nominated is not None and self._main is not None
        while True:
            try:
                data = self.dtls.bio_read(65536)
            except SSL.WantReadError:
                return
            self._main.sendto(data, self.nominated)

    def _handshake(self) -> None:
        assert self.dtls is not None
        try:
            self.dtls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self.result.failure = f"DTLS handshake failed (business side): {exc}"
            self._flush()
            return
        self._flush()
        self._keyed()

    def _keyed(self) -> None:
        """RFC 5764 4.2: client_key, server_key, client_salt, server_salt."""
        assert self.dtls is not None and self.codec is not None and self.nominated is not None
        self.profile = self.dtls.get_selected_srtp_profile().decode()
        suite = _SUITE_OF[self.profile]
        _, k, s = SUITES[suite]
        mat = self.dtls.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (k + s))
        client = Crypto(0, suite, mat[:k] + mat[2 * k : 2 * k + s])
        server = Crypto(0, suite, mat[k : 2 * k] + mat[2 * k + s :])
        self.configure(tx=client, rx=server, remote=self.nominated, codec=self.codec)
        if self.faults.plain_rtp:
            self._tx = cast(Any, _PlainRtp())
        if self._other is not None:  # send_loop sends from there
            self.transport = self._other
        self.ready.set()

    async def _run(self) -> None:
        f, loop = self.faults, asyncio.get_running_loop()
        if f.other_source:
            self._other, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
        while self.nominated is None:
            for addr in self.remote_candidates:
                self._check(addr, f.use_candidate)
            await asyncio.sleep(f.check_interval)
        assert self._main is not None
        if f.early_rtp:
            self._main.sendto(build_rtp(111, 1, 0, self.ssrc, b"\xf8\xff\xfe"), self.nominated)
        if f.dtls:
            self.dtls = self._dtls_client()
            self._handshake()
        last_consent = loop.time()
        while True:
            await asyncio.sleep(0.02)
            if self.dtls is not None and not self.ready.is_set():
                self.dtls.DTLSv1_handle_timeout()
                self._flush()
            if loop.time() - last_consent >= f.consent_interval:
                last_consent = loop.time()
                self._check(self.nominated, False)

    # -- receive -----------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        first = data[0] if data else 255
        if first <= 3:
            self._stun(data, (addr[0], addr[1]))
        elif 20 <= first <= 63 and self.dtls is not None:
            self.dtls.bio_write(data)
            if self.ready.is_set():
                with contextlib.suppress(SSL.Error):
                    self.dtls.recv(65536)
            else:
                self._handshake()
        elif 128 <= first <= 191 and self.ready.is_set():
            super().datagram_received(data, addr)

    def _stun(self, data: bytes, addr: Address) -> None:
        try:
            parsed = stun.parse(data)
        except stun.StunError:
            return
        msg = parsed.message
        nominating = self._txns.pop(msg.transaction_id, None)
        if nominating is None:
            return
        if msg.cls == stun.StunClass.ERROR:
            err = msg.get(stun.ErrorCode)
            self.errors.append(err.code if err else 0)
            return
        if msg.cls != stun.StunClass.SUCCESS or not parsed.check_integrity(self.remote_pwd):
            return
        xor = msg.get(stun.XorMappedAddress)
        if xor is not None:
            self.mapped = (str(xor.address), xor.port)
        if self.nominated is not None:
            self.consent_ok += 1
        elif nominating:
            self.nominated = addr

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._other is not None:
            self._other.close()
            self.transport = self._main
        super().close()
