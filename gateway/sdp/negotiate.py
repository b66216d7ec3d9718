"""Offer/answer (RFC 3264) for the gateway's two legs, with SDES-SRTP (RFC 4568).

WhatsApp leg: RTP/SAVP, SDES keys, Opus (always) or G.711 (when Meta enabled it),
telephone-event/8000, rtcp-mux; or, per the number's ``srtp`` mode, WebRTC media
(UDP/TLS/RTP/SAVPF: ICE and DTLS-SRTP, the attributes in :mod:`gateway.sdp.webrtc`).
PBX leg: RTP/AVP, PCMU/PCMA, telephone-event/8000.
Every function takes and returns :class:`SessionDescription` objects and a
:class:`MediaParams` summary for the media layer; nothing here does I/O. Keys are
made by the caller's ``new_key(suite)`` (in production
:func:`gateway.media.srtp.new_key_material`, from the same suite table).

A refusal is a :class:`NegotiationError`: its ``status`` (488) and ``warning``
(RFC 3261 section 20.43 code) are what to answer an offer with.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from gateway.netaddr import hostport
from gateway.sdp.crypto import SUITE_KEY_LENGTHS as SUITE_KEY_LENGTHS  # re-exported
from gateway.sdp.crypto import SUITE_PREFERENCE as SUITE_PREFERENCE  # re-exported
from gateway.sdp.crypto import choose_crypto, usable_crypto
from gateway.sdp.errors import WARN_MEDIA_TYPE, WARN_TRANSPORT
from gateway.sdp.errors import NegotiationError as NegotiationError  # re-exported
from gateway.sdp.session import (
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
)
from gateway.sdp.webrtc import (
    DTLS_PROTOS,
    SDES_PROTOS,
    LocalWebRtc,
    SrtpMode,
    WebRtcParams,
    answer_setup,
    is_dtls,
    mode_error,
    parse_candidate,
    remote_webrtc,
    stream_protos,
)

G711_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}  # RFC 3551 section 6
PBX_AUDIO_RATE = 8000  # the PBX leg is G.711: every sample the bridge handles is 8 kHz
_ANSWER_CODECS = ("opus", "PCMU", "PCMA")
DTMF_EVENTS = "0-16"  # RFC 4733 section 3.2: DTMF 0-9 * # A-D and flash

_AVP = ("RTP/AVP", "RTP/AVPF")
_FLAGS = {
    "sendrecv": (True, True),
    "sendonly": (True, False),
    "recvonly": (False, True),
    "inactive": (False, False),
}


@dataclass(frozen=True, repr=False)
class SrtpParams:
    """Negotiated SDES: raw master key || salt each way. Never shown by ``repr``."""

    suite: str
    local_key: bytes
    remote_key: bytes
    tag: int

    def __repr__(self) -> str:
        return f"SrtpParams(suite={self.suite!r}, tag={self.tag}, keys=***)"


@dataclass(frozen=True)
class MediaParams:
    """What the media layer needs for one leg, from the gateway's point of view.

    ``payload_type``/``dtmf_payload_type`` are the numbers we send with (the
    remote's, RFC 3264 section 5.1); ``recv_*`` the numbers we expect to receive
    (ours; they default to the same). ``fmtp`` holds the remote's format
    parameters for the codec: the constraints our encoder honours (maxaveragebitrate,
    useinbandfec, ...). ``channels`` is the rtpmap's: 2 for Opus whatever is sent
    (RFC 7587 section 7). ``direction`` is ours: "recvonly" means do not send to
    the remote (it put us on hold). ``ptime`` is the remote's packetisation wish.
    With DTLS-SRTP ``srtp`` is None and ``webrtc`` is set (the keys come from the
    handshake); the remote address/port are then its preferred ICE candidate's.
    """

    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    codec: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)
    dtmf_payload_type: int | None = None
    dtmf_clock_rate: int | None = None
    ptime: int = 20
    maxptime: int | None = None
    direction: str = "sendrecv"
    rtcp_mux: bool = False
    srtp: SrtpParams | None = None
    recv_payload_type: int | None = None
    recv_dtmf_payload_type: int | None = None
    webrtc: WebRtcParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmtp", dict(self.fmtp))
        if self.recv_payload_type is None:
            object.__setattr__(self, "recv_payload_type", self.payload_type)
        if self.recv_dtmf_payload_type is None:
            object.__setattr__(self, "recv_dtmf_payload_type", self.dtmf_payload_type)

    @property
    def may_send(self) -> bool:
        return _FLAGS[self.direction][0]

    @property
    def may_receive(self) -> bool:
        return _FLAGS[self.direction][1]


def answer_direction(offered: str) -> str:
    """RFC 3264 section 6.1: sendonly -> recvonly, recvonly -> sendonly, others mirrored."""
    send, recv = _FLAGS[offered]
    return _direction_of(recv, send)


def describe(media: MediaParams) -> str:
    """A one-line summary safe to log (no key material)."""
    parts = [f"{media.codec}/{media.clock_rate} pt{media.payload_type}"]
    if media.webrtc is not None:
        parts.append("DTLS-SRTP " + ("client" if media.webrtc.dtls_client else "server"))
    else:
        parts.append(f"SRTP {media.srtp.suite}" if media.srtp is not None else "RTP")
    parts.append(f"-> {hostport(media.remote_address, media.remote_port)}")
    parts.append("rtcp-mux" if media.rtcp_mux else f"rtcp {media.remote_rtcp_port}")
    if media.dtmf_payload_type is not None:
        parts.append(f"dtmf{media.dtmf_payload_type}")
    if media.ptime != 20:
        parts.append(f"ptime{media.ptime}")
    if media.direction != "sendrecv":
        parts.append(media.direction)
    return " ".join(parts)


# ---------------------------------------------------------------------------
# WhatsApp leg


def answer_whatsapp_offer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    allow_g711: bool,
    g711_order: Sequence[str] = ("PCMA", "PCMU"),
    new_key: Callable[[str], bytes],
    session_id: int | None = None,
    pcm_rate: int = PBX_AUDIO_RATE,
    srtp_mode: SrtpMode = "auto",
    local_webrtc: LocalWebRtc | None = None,
    number: str | None = None,
) -> tuple[SessionDescription, MediaParams]:
    """Answer Meta's offer on a user-initiated call (docs/whatsapp-sip.md sections 6, 7).

    ``srtp_mode`` is the number's: "sdes" answers SDES offers only, "dtls" WebRTC
    (DTLS-SRTP) offers only, "auto" whichever Meta offers; a WebRTC offer needs
    ``local_webrtc`` (our ICE credentials, fingerprint and host candidate). A mismatch
    is a 488 whose Warning names ``number`` and both modes.
    """
    _check_local(local_address, local_port)
    if srtp_mode == "dtls" and local_webrtc is None:
        raise ValueError('srtp_mode "dtls" needs local_webrtc')
    order = _g711_names(g711_order)
    ready = local_webrtc is not None
    try:
        index = _pick_stream(offer, *stream_protos(srtp_mode, ready))
    except NegotiationError as exc:
        raise mode_error(offer, srtp_mode, ready, number) or exc from None
    m = offer.media[index]
    extra: list[tuple[str, str | None]] = []
    if m.mid is not None:
        extra.append(("mid", m.mid))  # RFC 5888 section 9.1
    srtp = webrtc = None
    if local_webrtc is not None and is_dtls(m):
        webrtc = remote_webrtc(offer, m, local_family=local_webrtc.family, answer=False)
        conn = webrtc.connection()
        extra += local_webrtc.attributes(answer_setup(webrtc.setup))
    else:
        conn = _remote_connection(offer, m)
        crypto = choose_crypto(m.cryptos())
        if crypto is None:
            raise NegotiationError("no acceptable SDES crypto line offered")
        tag, suite, remote_key = crypto
        local_key = new_key(suite)
        if len(local_key) != SUITE_KEY_LENGTHS[suite]:
            raise ValueError(f"new_key({suite}) returned {len(local_key)} bytes")
        srtp = SrtpParams(suite, local_key, remote_key, tag)
        extra.append(("crypto", f"{tag} {suite} inline:{_b64(local_key)}"))  # RFC 4568 5.1.2
    maps = m.rtpmaps()
    codec = None
    if allow_g711:
        codec = next((c for n in order if (c := _find(m, maps, n, 8000)) is not None), None)
    codec = codec or _find(m, maps, "opus", 48000)
    if codec is None:
        raise NegotiationError("no usable codec offered (Opus, or G.711 when enabled)")
    dtmf = _find(m, maps, "telephone-event", 8000)  # 8000 only (docs/whatsapp-sip.md 6)
    direction = answer_direction(m.direction(offer))
    params = _media_params(conn, m, codec, dtmf, direction, m.rtcp_mux, srtp)
    if webrtc is not None:
        params = _with_webrtc(params, webrtc)
    fmtps = {codec.pt: _opus_fmtp(pcm_rate)} if codec.is_("opus") else {}
    section = _audio_section(
        local_port, m.proto, [codec], dtmf, fmtps, params.direction, m.rtcp_mux, extra
    )
    answer = _session(local_address, session_id)
    if m.mid is not None and any(
        sem.upper() == "BUNDLE" and m.mid in mids for sem, mids in offer.groups()
    ):
        answer.attributes.append(("group", f"BUNDLE {m.mid}"))  # RFC 8843 section 7.3
    answer.media = _with_rejected(offer, index, section)
    return answer, params


def make_whatsapp_offer(
    *,
    local_address: str,
    local_port: int,
    opus_pt: int = 111,
    dtmf_pt: int = 126,
    g711: Sequence[str] = (),
    new_key: Callable[[str], bytes],
    suites: Sequence[str] = SUITE_PREFERENCE[:2],
    session_id: int | None = None,
    pcm_rate: int = PBX_AUDIO_RATE,
    local_webrtc: LocalWebRtc | None = None,
) -> tuple[SessionDescription, dict[int, bytes]]:
    """Offer for a business-initiated call; returns the offer and our key per crypto tag.

    G.711 (when given) is listed before Opus: Meta picks by RFC 3264 preference, so a
    number with G.711 enabled is answered without any transcoding on either side.
    With ``local_webrtc`` the offer is WebRTC media (UDP/TLS/RTP/SAVPF, our ICE
    credentials, host candidate and fingerprint, ``a=setup:actpass``, mid "audio" in a
    BUNDLE group) and has no keys: they come from the DTLS handshake.
    """
    _check_local(local_address, local_port)
    if not (96 <= opus_pt <= 127 and 96 <= dtmf_pt <= 127) or opus_pt == dtmf_pt:
        raise ValueError("opus_pt and dtmf_pt must be distinct dynamic payload types")
    if not suites or any(s not in SUITE_KEY_LENGTHS for s in suites):
        raise ValueError(f"suites must be among {SUITE_PREFERENCE}")
    codecs = [RtpMap(G711_PAYLOAD_TYPES[n], n, 8000) for n in _g711_names(g711)]
    codecs.append(RtpMap(opus_pt, "opus", 48000, 2))
    keys: dict[int, bytes] = {}
    extra: list[tuple[str, str | None]] = []
    if local_webrtc is not None:
        extra += [("mid", "audio"), *local_webrtc.attributes("actpass")]  # RFC 5763 5
        suites = ()
    for tag, suite in enumerate(suites, 1):
        keys[tag] = new_key(suite)
        if len(keys[tag]) != SUITE_KEY_LENGTHS[suite]:
            raise ValueError(f"new_key({suite}) returned {len(keys[tag])} bytes")
        extra.append(("crypto", f"{tag} {suite} inline:{_b64(keys[tag])}"))
    section = _audio_section(
        local_port,
        DTLS_PROTOS[0] if local_webrtc is not None else "RTP/SAVP",
        codecs,
        RtpMap(dtmf_pt, "telephone-event", 8000),
        {opus_pt: _opus_fmtp(pcm_rate)},
        "sendrecv",
        True,
        extra,
    )
    offer = _session(local_address, session_id)
    if local_webrtc is not None:
        offer.attributes.append(("group", "BUNDLE audio"))  # RFC 8843 section 7.2
    offer.media.append(section)
    return offer, keys


def accept_whatsapp_answer(
    offer: SessionDescription, answer: SessionDescription, local_keys: dict[int, bytes]
) -> MediaParams:
    """Meta's answer to :func:`make_whatsapp_offer`: the chosen codec and crypto tag, or
    (to a WebRTC offer) Meta's ICE/DTLS parameters, our DTLS role from its a=setup."""
    index = _pick_stream(offer, SDES_PROTOS + DTLS_PROTOS, "RTP/SAVP")
    om, am, conn = _answered_stream(offer, answer, index)
    if is_dtls(om):
        ours = parse_candidate(om.attribute("candidate") or "")
        webrtc = remote_webrtc(answer, am, local_family=ours.family or 4, answer=True)
        params = _accept(offer, om, answer, am, webrtc.connection(), _ANSWER_CODECS, None)
        return _with_webrtc(params, webrtc)
    offered = {c.tag: c.suite.upper() for c in om.cryptos()}
    chosen = None
    for crypto in am.cryptos():  # RFC 4568 section 5.1.3: one line, an offered tag
        usable = usable_crypto(crypto)
        if usable and offered.get(crypto.tag) == usable[0] and crypto.tag in local_keys:
            chosen = crypto.tag, usable[0], usable[1]
            break
    if chosen is None:
        raise NegotiationError("answer has no crypto line matching an offered tag and suite")
    tag, suite, remote_key = chosen
    srtp = SrtpParams(suite, local_keys[tag], remote_key, tag)
    return _accept(offer, om, answer, am, conn, _ANSWER_CODECS, srtp)


# ---------------------------------------------------------------------------
# PBX leg


def make_pbx_offer(
    *,
    local_address: str,
    local_port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    dtmf_pt: int | None = 101,
    ptime: int = 20,
    direction: str = "sendrecv",
    session_id: int | None = None,
) -> SessionDescription:
    """Plain RTP/AVP offer toward Asterisk/FreeSWITCH, rtcp-mux offered too.

    A PBX that ignores rtcp-mux sends RTCP to ``local_port + 1``: keep it open
    until :func:`accept_pbx_answer` says ``rtcp_mux``.
    """
    _check_local(local_address, local_port)
    names = _g711_names(codecs)
    if not names:
        raise ValueError("codecs must name PCMU and/or PCMA")
    if dtmf_pt is not None and not 96 <= dtmf_pt <= 127:
        raise ValueError("dtmf_pt must be a dynamic payload type")
    if direction not in _FLAGS or not 10 <= ptime <= 200:
        raise ValueError("bad direction or ptime")
    dtmf = RtpMap(dtmf_pt, "telephone-event", 8000) if dtmf_pt is not None else None
    section = _audio_section(
        local_port,
        "RTP/AVP",
        [RtpMap(G711_PAYLOAD_TYPES[n], n, 8000) for n in names],
        dtmf,
        {},
        direction,
        True,
        [],
        ptime,
    )
    offer = _session(local_address, session_id)
    offer.media.append(section)
    return offer


def accept_pbx_answer(offer: SessionDescription, answer: SessionDescription) -> MediaParams:
    """The PBX's answer to :func:`make_pbx_offer` (or to a :func:`reoffer`)."""
    index = _pick_stream(offer, _AVP, "RTP/AVP")
    om, am, conn = _answered_stream(offer, answer, index)
    return _accept(offer, om, answer, am, conn, ("PCMU", "PCMA"), None)


def answer_pbx_offer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    dtmf_pt: int | None = 101,
    current: MediaParams | None = None,
    previous: SessionDescription | None = None,
    session_id: int | None = None,
) -> tuple[SessionDescription, MediaParams]:
    """Answer a PBX INVITE, re-INVITE or UPDATE offer (hold, unhold, codec or address change).

    ``codecs`` is our preference; the ``current`` codec is kept while still offered.
    The offer's telephone-event number is mirrored (RFC 3264 section 6.1);
    ``dtmf_pt=None`` refuses telephone-event. With ``previous`` (the SDP we last
    sent in this dialog) the o= line is kept and sess-version goes up by one, or
    stays if nothing else changed (RFC 3264 section 8).
    """
    _check_local(local_address, local_port)
    names = _g711_names(codecs)
    if current is not None and current.codec in names:
        names = [current.codec, *(n for n in names if n != current.codec)]
    index = _pick_stream(offer, _AVP, "RTP/AVP")
    m = offer.media[index]
    conn = _remote_connection(offer, m)
    maps = m.rtpmaps()
    codec = next((c for n in names if (c := _find(m, maps, n, 8000)) is not None), None)
    if codec is None:
        raise NegotiationError(f"none of {', '.join(names)} offered")
    dtmf = _find(m, maps, "telephone-event", 8000) if dtmf_pt is not None else None
    direction = answer_direction(m.direction(offer))
    params = _media_params(conn, m, codec, dtmf, direction, m.rtcp_mux, None)
    section = _audio_section(
        local_port, m.proto, [codec], dtmf, {}, params.direction, m.rtcp_mux, []
    )
    answer = _session(local_address, session_id)
    answer.media = _with_rejected(offer, index, section)
    if previous is not None:
        answer.origin = copy.deepcopy(previous.origin)
        if answer != previous:
            answer.origin.sess_version += 1
    return answer, params


def reoffer(previous: SessionDescription) -> SessionDescription:
    """A copy of the SDP we last sent with sess-version + 1 (RFC 3264 section 8)."""
    offer = copy.deepcopy(previous)
    offer.origin.sess_version += 1
    return offer


# ---------------------------------------------------------------------------
# Helpers


def _direction_of(send: bool, recv: bool) -> str:
    return next(name for name, flags in _FLAGS.items() if flags == (send, recv))


def _check_local(address: str, port: int) -> None:
    if not address or any(c.isspace() for c in address):
        raise ValueError("local_address must be a non-empty address")
    if not 1 <= port <= 65535:
        raise ValueError("local_port must be 1-65535")


def _g711_names(names: Sequence[str]) -> list[str]:
    result = []
    for name in names:
        upper = name.upper()
        if upper not in G711_PAYLOAD_TYPES:
            raise ValueError(f"unknown G.711 codec {name!r}")
        if upper not in result:
            result.append(upper)
    return result


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _opus_fmtp(pcm_rate: int) -> str:
    # Our side of Opus is a PCM stream at pcm_rate (8 kHz: the PBX leg is G.711).
    # maxplaybackrate tells Meta's encoder that anything above it is thrown away
    # here, so it may spend its bits on the band that reaches the PBX;
    # sprop-maxcapturerate says truthfully that what we encode is that narrow
    # (RFC 7587 section 6.1: both are hints). useinbandfec=1: we decode with FEC.
    return f"maxplaybackrate={pcm_rate};sprop-maxcapturerate={pcm_rate};minptime=10;useinbandfec=1"


def _session(local_address: str, session_id: int | None) -> SessionDescription:
    sess_id = session_id if session_id is not None else secrets.randbits(62)
    addrtype = _addrtype(local_address)
    return SessionDescription(
        origin=Origin("-", str(sess_id), 1, "IN", addrtype, local_address),
        connection=Connection("IN", addrtype, local_address),
    )


def _addrtype(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # an FQDN


def _audio_section(
    port: int,
    proto: str,
    codecs: list[RtpMap],
    dtmf: RtpMap | None,
    fmtps: dict[int, str],
    direction: str,
    rtcp_mux: bool,
    extra: list[tuple[str, str | None]],
    ptime: int = 20,
) -> MediaDescription:
    maps = [*codecs, *([dtmf] if dtmf is not None else [])]
    if dtmf is not None:
        fmtps = {**fmtps, dtmf.pt: DTMF_EVENTS}
    attributes: list[tuple[str, str | None]] = []
    for rtpmap in maps:
        channels = 2 if rtpmap.is_("opus") else rtpmap.channels  # RFC 7587 section 7
        suffix = f"/{channels}" if channels != 1 else ""
        attributes.append(("rtpmap", f"{rtpmap.pt} {rtpmap.encoding}/{rtpmap.clock_rate}{suffix}"))
        if rtpmap.pt in fmtps:
            attributes.append(("fmtp", f"{rtpmap.pt} {fmtps[rtpmap.pt]}"))
    attributes += [("ptime", str(ptime)), (direction, None)]
    if rtcp_mux:
        attributes.append(("rtcp-mux", None))  # RFC 5761 section 5.1.1
    attributes += extra
    return MediaDescription("audio", port, proto, [str(r.pt) for r in maps], attributes=attributes)


def _with_rejected(
    offer: SessionDescription, index: int, section: MediaDescription
) -> list[MediaDescription]:
    # RFC 3264 section 6: as many m= lines as offered; the others rejected with port 0.
    return [
        section if i == index else MediaDescription(m.media, 0, m.proto, m.formats[:1] or ["0"])
        for i, m in enumerate(offer.media)
    ]


def _pick_stream(sdp: SessionDescription, protos: tuple[str, ...], label: str) -> int:
    for i, m in enumerate(sdp.media):
        if m.media.lower() == "audio" and m.port != 0 and m.proto.upper() in protos:
            return i
    if any(m.media.lower() == "audio" and m.port != 0 for m in sdp.media):
        raise NegotiationError(f"no {label} audio stream offered", warning=WARN_TRANSPORT)
    raise NegotiationError("no audio stream offered", warning=WARN_MEDIA_TYPE)


def _remote_connection(sdp: SessionDescription, m: MediaDescription) -> Connection:
    conn = m.effective_connection(sdp)
    if conn is None or conn.nettype.upper() != "IN":
        raise NegotiationError("no usable c= line for the audio stream")
    return conn


def _find(m: MediaDescription, maps: dict[int, RtpMap], name: str, clock: int) -> RtpMap | None:
    for pt in m.payload_types():
        rtpmap = maps.get(pt)
        if rtpmap is not None and rtpmap.is_(name, clock):
            return rtpmap
    return None


def _ptime(m: MediaDescription, codec: RtpMap) -> int:
    ptime, maxptime = m.ptime, m.maxptime
    allowed = (10, 20, 40, 60) if codec.is_("opus") else (10, 20, 30, 40, 50, 60)
    if ptime is not None and ptime in allowed and (maxptime is None or ptime <= maxptime):
        return ptime
    return 10 if maxptime is not None and maxptime < 20 else 20


def _media_params(
    conn: Connection,
    m: MediaDescription,
    codec: RtpMap,
    dtmf: RtpMap | None,
    direction: str,
    rtcp_mux: bool,
    srtp: SrtpParams | None,
    recv: tuple[int, int | None] | None = None,
) -> MediaParams:
    send, receive = _FLAGS[direction]
    if conn.is_hold_address:
        send = False  # RFC 3264 section 8.4: the RFC 2543 way to say "do not send to me"
    rtcp = m.rtcp
    rtcp_port = m.port if rtcp_mux else (rtcp.port if rtcp is not None else m.port + 1)
    rtcp_port = min(rtcp_port, 65535)
    return MediaParams(
        remote_address=_canonical(conn.address),
        remote_port=m.port,
        remote_rtcp_port=rtcp_port,  # RFC 5761, RFC 3605, RFC 3550 section 11
        codec="opus" if codec.is_("opus") else codec.encoding.upper(),
        payload_type=codec.pt,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        fmtp=m.fmtp(codec.pt),
        dtmf_payload_type=dtmf.pt if dtmf is not None else None,
        dtmf_clock_rate=dtmf.clock_rate if dtmf is not None else None,
        ptime=_ptime(m, codec),
        maxptime=m.maxptime,
        direction=_direction_of(send, receive),
        rtcp_mux=rtcp_mux,
        srtp=srtp,
        recv_payload_type=recv[0] if recv is not None else None,
        recv_dtmf_payload_type=recv[1] if recv is not None else None,
    )


def _answered_stream(
    offer: SessionDescription, answer: SessionDescription, index: int
) -> tuple[MediaDescription, MediaDescription, Connection]:
    if len(answer.media) != len(offer.media):  # RFC 3264 section 6
        raise NegotiationError("answer does not have as many m= lines as the offer")
    om, am = offer.media[index], answer.media[index]
    if am.port == 0:
        raise NegotiationError("audio stream rejected (port 0)", warning=WARN_MEDIA_TYPE)
    if am.proto.upper() != om.proto.upper():
        raise NegotiationError(
            f"answer proto {am.proto} for offered {om.proto}", warning=WARN_TRANSPORT
        )
    return om, am, _remote_connection(answer, am)


def _accept(
    offer: SessionDescription,
    om: MediaDescription,
    answer: SessionDescription,
    am: MediaDescription,
    conn: Connection,
    names: tuple[str, ...],
    srtp: SrtpParams | None,
) -> MediaParams:
    ours, theirs = om.rtpmaps(), am.rtpmaps()
    codec = dtmf = None
    for pt in am.payload_types():
        # Be liberal: an answer that leaves out the rtpmap of a number we offered means ours.
        rtpmap = theirs.get(pt) or ours.get(pt)
        if rtpmap is None:
            continue
        if codec is None and any(rtpmap.is_(n, 48000 if n == "opus" else 8000) for n in names):
            codec = rtpmap
        elif dtmf is None and rtpmap.is_("telephone-event", 8000):
            dtmf = rtpmap
    if codec is None:
        raise NegotiationError("answer has no codec we offered")
    recv = _find(om, ours, codec.encoding, codec.clock_rate)
    if recv is None:
        raise NegotiationError(f"answer chose {codec.encoding}, which we did not offer")
    recv_dtmf = _find(om, ours, "telephone-event", 8000) if dtmf is not None else None
    if recv_dtmf is None:
        dtmf = None
    # Our direction: what we offered, narrowed by the answer's (RFC 3264 section 6.1).
    o_send, o_recv = _FLAGS[om.direction(offer)]
    a_send, a_recv = _FLAGS[am.direction(answer)]
    direction = _direction_of(o_send and a_recv, o_recv and a_send)
    rtcp_mux = om.rtcp_mux and am.rtcp_mux
    recv_pts = (recv.pt, recv_dtmf.pt if recv_dtmf is not None else None)
    return _media_params(conn, am, codec, dtmf, direction, rtcp_mux, srtp, recv_pts)


def _with_webrtc(params: MediaParams, webrtc: WebRtcParams) -> MediaParams:
    port = webrtc.port  # rtcp-mux is required with WebRTC media
    return replace(params, remote_port=port, remote_rtcp_port=port, webrtc=webrtc)


def _canonical(address: str) -> str:
    """An IP literal in the form the kernel reports a datagram's source in
    (``2001:db8::1`` for ``2001:0DB8:0:0::1``), so source checks compare equal;
    anything else (an FQDN) as it is."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
