"""Meta's side of the load generator: its SDP offer in both media modes, and WebRTC media.

``python -m bench --srtp dtls`` (issue 14): the WhatsApp side offers WebRTC media as
Meta does (docs/whatsapp-sip.md section 7; the shape is the emulator's,
tests/emulator/webrtc_sdp.py): ``UDP/TLS/RTP/SAVPF``, ``a=ice-lite``, ``a=ice-ufrag``/
``a=ice-pwd``, an IPv4 host candidate (the call's media socket), ``a=setup:actpass``, a
SHA-256 ``a=fingerprint`` and rtcp-mux. Per call, :class:`MetaWebRtc` is then

* an ICE-lite agent: it never checks, it answers the gateway's Binding requests
  (:func:`ice_lite_answer`) and takes the first success with USE-CANDIDATE as the pair;
* the DTLS server (:class:`gateway.media.dtls.DtlsEndpoint`, ``client=False``) against the
  fingerprint of the gateway's answer, with one :class:`DtlsCertificate` shared by all
  calls; the exported keys then key the same SRTP path as SDES mode.

Sans-IO: datagrams and ``now`` in, datagrams out; :class:`bench.loadgen.Call` owns the
socket. Only STUN and DTLS reach it: the socket reader sends anything with a first octet
of 128 or more (RFC 7983: RTP/RTCP) down the SRTP path without looking further.
"""

from __future__ import annotations

import ipaddress
import secrets

from gateway.ice import stun
from gateway.ice.candidates import new_credentials
from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, SrtpKeys
from gateway.sdp import parse_sdp
from gateway.sdp.errors import NegotiationError
from gateway.sdp.session import SdpError
from gateway.sdp.webrtc import host_priority, is_dtls, remote_webrtc

OPUS_PT = 111
TE_PT = 126
OPUS_FMTP = (
    "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
    "sprop-maxcapturerate=16000;useinbandfec=1"
)
SDES_PROTO = "RTP/SAVP"
WEBRTC_PROTO = "UDP/TLS/RTP/SAVPF"
CNAME = "WhatsAppAudioStream1"

Address = tuple[str, int]


def meta_offer(
    port: int,
    ssrc: int,
    *,
    crypto: str | None = None,
    ice: tuple[str, str, tuple[str, str]] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """Meta's offer of a user-initiated call: SDES with ``crypto`` (``"<suite> inline:..."``),
    or WebRTC media with ``ice`` = (ufrag, pwd, (hash, fingerprint)) and ``port`` as the
    one IPv4 host candidate. Exactly one of the two."""
    if (crypto is None) == (ice is None):
        raise ValueError("an SDES crypto line or WebRTC (ICE/DTLS) parameters, not both")
    sess = secrets.randbelow(2**62) + 1
    mid = "audio" if crypto is not None else "0"
    lines = ["v=0", f"o=- {sess} 2 IN IP4 {host}", "s=-", "t=0 0"]
    media: list[str] = []
    if ice is not None:
        ufrag, pwd, (algo, fingerprint) = ice
        stream = secrets.token_hex(8)
        lines += ["a=ice-lite", f"a=group:BUNDLE {mid}", f"a=msid-semantic: WMS {stream}"]
        media = [
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            f"a=fingerprint:{algo} {fingerprint}",
            "a=setup:actpass",
            f"a=candidate:1 1 UDP {host_priority()} {host} {port} typ host",
        ]
    else:
        lines.append(f"a=group:BUNDLE {mid}")
        media = [f"a=crypto:1 {crypto}"]
    lines += [
        f"m=audio {port} {WEBRTC_PROTO if ice else SDES_PROTO} {OPUS_PT} {TE_PT}",
        f"c=IN IP4 {host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=sendrecv",
        f"a=mid:{mid}",
        *media,
        f"a=rtpmap:{OPUS_PT} opus/48000/2",
        f"a=fmtp:{OPUS_PT} {OPUS_FMTP}",
        *([f"a=rtcp-fb:{OPUS_PT} transport-cc"] if ice else []),
        f"a=rtpmap:{TE_PT} telephone-event/8000",
        "a=ptime:20",
        "a=maxptime:20",
        *([f"a=msid:{stream} {secrets.token_hex(8)}"] if ice else []),
        f"a=ssrc:{ssrc} cname:{CNAME}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def ice_lite_answer(
    data: bytes, addr: Address, ufrag: str, pwd: str, remote_ufrag: str | None = None
) -> tuple[bytes | None, bool]:
    """An ICE-lite agent's answer to one STUN datagram (RFC 8445 7.3, lite: no checks of
    its own): (the success response, whether it nominated the pair), or (None, False) to
    drop it. Answered: a Binding request with USERNAME ``<ufrag>:<remote_ufrag>`` (the
    remote part not checked while unknown), MESSAGE-INTEGRITY by ``pwd`` and a FINGERPRINT;
    the success carries XOR-MAPPED-ADDRESS of ``addr``, MESSAGE-INTEGRITY and FINGERPRINT."""
    try:
        parsed = stun.parse(data)
    except stun.StunError:
        return None, False
    msg = parsed.message
    if msg.method != stun.BINDING or msg.cls != stun.StunClass.REQUEST:
        return None, False
    username = msg.get(stun.Username)
    local, sep, remote = username.value.partition(":") if username else ("", "", "")
    if local != ufrag or not sep or (remote_ufrag is not None and remote != remote_ufrag):
        return None, False
    if not parsed.fingerprint or not parsed.check_integrity(pwd):
        return None, False
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return None, False
    ok = stun.binding_success(msg, ip, addr[1])
    return stun.encode(ok, key=pwd, fingerprint=True), msg.has(stun.UseCandidate)


class MetaWebRtc:
    """One call's WebRTC media on Meta's side: ICE-lite responder, then DTLS server.

    ``answered_at``, ``nominated_at`` and ``keyed_at`` are on the caller's clock; the
    handshake itself (first ClientHello to keys) is ``dtls.handshake_seconds``."""

    def __init__(self, certificate: DtlsCertificate, timeout: float = 10.0) -> None:
        self.certificate = certificate
        self.timeout = timeout
        self.ufrag, self.pwd = new_credentials()
        self.remote_ufrag: str | None = None
        self.dtls: DtlsEndpoint | None = None
        self.nominated: Address | None = None
        self.answered_at: float | None = None
        self.nominated_at: float | None = None
        self.keyed_at: float | None = None
        self.stun_answered = 0
        self.stun_dropped = 0
        self.dtls_dropped = 0  # before the answer was read, or not from the nominated pair

    def __repr__(self) -> str:
        state = self.dtls.state if self.dtls is not None else "offered"
        return f"MetaWebRtc(ufrag={self.ufrag!r}, pwd=***, dtls={state!r})"

    def ice_params(self) -> tuple[str, str, tuple[str, str]]:
        """What :func:`meta_offer` takes."""
        return self.ufrag, self.pwd, self.certificate.fingerprint

    @property
    def keys(self) -> SrtpKeys | None:
        return self.dtls.keys if self.dtls is not None else None

    @property
    def failure(self) -> str | None:
        if self.dtls is not None and self.dtls.state == "failed":
            return f"DTLS {self.dtls.failure or 'failed'}"
        return None

    def accept_answer(self, body: bytes, now: float) -> Address:
        """The gateway's 2xx SDP: its ICE credentials, fingerprint and (IPv4) candidate;
        the DTLS server starts. ValueError says what is unusable."""
        try:
            sdp = parse_sdp(body)
            m = next(m for m in sdp.media if m.media == "audio" and m.port and is_dtls(m))
            params = remote_webrtc(sdp, m, local_family=4, answer=True)
        except StopIteration:
            raise ValueError("2xx SDP without a WebRTC (UDP/TLS/RTP/SAVPF) audio stream") from None
        except (SdpError, NegotiationError) as exc:
            raise ValueError(f"2xx SDP: {exc}") from None
        if params.dtls_client:
            raise ValueError("2xx SDP has a=setup:passive: the gateway must be the DTLS client")
        self.remote_ufrag = params.ice_ufrag
        self.answered_at = now
        self.dtls = DtlsEndpoint(
            self.certificate,
            client=False,
            remote_fingerprints=params.fingerprints,
            timeout=self.timeout,
        )
        self.dtls.start(now)
        return params.candidates[0].address, params.candidates[0].port

    def receive(self, data: bytes, addr: Address, now: float) -> list[tuple[bytes, Address]]:
        """One STUN or DTLS datagram (first octet below 128); what to send, and where."""
        if data[0] < 4:
            response, nominated = ice_lite_answer(
                data, addr, self.ufrag, self.pwd, self.remote_ufrag
            )
            if response is None:
                self.stun_dropped += 1
                return []
            self.stun_answered += 1
            if nominated and self.nominated is None:
                self.nominated, self.nominated_at = addr, now
            return [(response, addr)]
        dtls = self.dtls
        if dtls is None or self.nominated is None or addr != self.nominated:
            self.dtls_dropped += 1
            return []
        dtls.receive(data, now)
        return self._flush(now)

    def next_timeout(self) -> float | None:
        return self.dtls.next_timeout() if self.dtls is not None else None

    def handle_timeout(self, now: float) -> list[tuple[bytes, Address]]:
        """Our flight's retransmission, and the handshake's bound."""
        if self.dtls is None:
            return []
        self.dtls.handle_timeout(now)
        return self._flush(now)

    def _flush(self, now: float) -> list[tuple[bytes, Address]]:
        dtls = self.dtls
        assert dtls is not None
        if dtls.state == "connected" and self.keyed_at is None:
            self.keyed_at = now
        to = self.nominated
        return [(d, to) for d in dtls.pop_datagrams()] if to is not None else []
