"""WebRTC media in SDP toward Meta: ICE (RFC 8839) and DTLS-SRTP (RFC 5763, 5764, 8122).

Meta's default media mode (docs/whatsapp-sip.md section 7): ``UDP/TLS/RTP/SAVPF``,
``a=ice-lite``, ``a=ice-ufrag``/``a=ice-pwd``, one IPv4 and one IPv6 host candidate,
``a=setup:actpass`` and a SHA-256 ``a=fingerprint``. This module reads those
attributes into :class:`WebRtcParams` (refusing an offer or answer that lacks one,
with a :class:`NegotiationError` naming what is missing), writes ours from a
:class:`LocalWebRtc`, and decides the roles: we are a full ICE agent (never
``a=ice-lite``) claiming the controlling role, and the DTLS client unless the peer
insists on being it (``a=setup:active``). :mod:`gateway.sdp.negotiate` calls these
from its WhatsApp-leg offer/answer functions. Sans-IO, plain values.

The ICE password is a secret (it keys the STUN MESSAGE-INTEGRITY): no ``repr`` here
shows it, and :func:`gateway.sdp.crypto.redact_attribute` masks ``a=ice-pwd``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from gateway.sdp.errors import WARN_TRANSPORT, NegotiationError
from gateway.sdp.session import Connection, MediaDescription, SdpError, SessionDescription

__all__ = [
    "DTLS_PROTOS",
    "FINGERPRINT_LENGTHS",
    "SRTP_MODES",
    "IceCandidate",
    "LocalWebRtc",
    "SrtpMode",
    "WebRtcParams",
    "answer_setup",
    "host_priority",
    "is_dtls",
    "mode_error",
    "parse_candidate",
    "parse_fingerprint",
    "remote_webrtc",
    "stream_protos",
]

SrtpMode = Literal["sdes", "dtls", "auto"]
SRTP_MODES: tuple[SrtpMode, ...] = ("sdes", "dtls", "auto")
# RFC 5764 section 8 (UDP/TLS/RTP/SAVP) and RFC 5124 with DTLS (SAVPF): what WebRTC uses.
DTLS_PROTOS = ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP")
SDES_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
# RFC 8122 section 5 hash functions (IANA "Hash Function Textual Names"), digest octets.
FINGERPRINT_LENGTHS = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 section 5.4: ice-char
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 section 9
_DIGITS = re.compile(r"[0-9]{1,10}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
_TYPE_PREF_HOST = 126  # RFC 8445 section 5.1.2.2


# ---------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class IceCandidate:
    """``a=candidate`` (RFC 8839 section 5.1). ``transport`` is upper-case, ``type``
    lower-case; an IP ``address`` is in canonical form (as the kernel reports a
    datagram's source). ``extensions`` keeps what follows the type in order, as
    (name, value) pairs: ``raddr``/``rport`` and the cand-extensions."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    extensions: tuple[tuple[str, str], ...] = ()

    def to_sdp(self) -> str:
        """The attribute value (after ``candidate:``)."""
        parts = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    @property
    def family(self) -> int | None:
        """4 or 6 for an IP address, None for an FQDN (which we do not resolve)."""
        return _family(self.address)


def parse_candidate(value: str) -> IceCandidate:
    """Parse an ``a=candidate`` value (RFC 8839 section 5.1 grammar); raise SdpError."""
    parts = value.split()
    if len(parts) < 8 or len(parts) % 2:
        raise SdpError("candidate: expected 8 fields and name/value extension pairs")
    foundation, component, transport, priority, address, port, typ, kind, *rest = parts
    if len(foundation) > 32 or not _ICE_CHARS.fullmatch(foundation):
        raise SdpError("candidate: bad foundation")
    if not _DIGITS.fullmatch(component) or not 1 <= int(component) <= 256:
        raise SdpError("candidate: bad component-id")
    if not _TOKEN.fullmatch(transport):
        raise SdpError("candidate: bad transport")
    if not _DIGITS.fullmatch(priority) or not 1 <= int(priority) <= 2**31 - 1:
        raise SdpError("candidate: bad priority")
    if not _DIGITS.fullmatch(port) or int(port) > 65535:
        raise SdpError("candidate: bad port")
    if typ.lower() != "typ" or not _TOKEN.fullmatch(kind):
        raise SdpError("candidate: expected 'typ <cand-type>'")
    extensions = tuple(zip(rest[::2], rest[1::2], strict=True))
    for name, ext in extensions:
        if name.lower() == "rport" and (not _DIGITS.fullmatch(ext) or int(ext) > 65535):
            raise SdpError("candidate: bad rport")
        if name.lower() == "raddr":
            _address(ext)
    return IceCandidate(
        foundation,
        int(component),
        transport.upper(),  # ABNF literals ("UDP") are case-insensitive (RFC 5234 2.3)
        int(priority),
        _address(address),
        int(port),
        kind.lower(),
        extensions,
    )


def host_priority(component: int = 1, local_pref: int = 65535) -> int:
    """A host candidate's priority (RFC 8445 section 5.1.2.1, type preference 126)."""
    if not 1 <= component <= 256 or not 0 <= local_pref <= 65535:
        raise ValueError("component must be 1-256 and local_pref 0-65535")
    return (_TYPE_PREF_HOST << 24) + (local_pref << 8) + (256 - component)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if _HOST.fullmatch(text) and not text.replace(".", "").isdigit():
            return text  # an FQDN (RFC 8839 allows one; we ignore such candidates)
        raise SdpError("candidate: bad connection-address") from None


def _family(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# The two sides' parameters


def parse_fingerprint(value: str) -> tuple[str, str] | None:
    """``a=fingerprint:<hash> <XX:XX:..>`` as (hash lower-case, hex upper-case); None
    when the hash is unknown or the digest's length does not match it (RFC 8122 5)."""
    parts = value.split()
    if len(parts) != 2:
        return None
    algo, digest = parts[0].lower(), parts[1].upper()
    if algo not in FINGERPRINT_LENGTHS or not _HEX_PAIRS.fullmatch(digest):
        return None
    return (algo, digest) if (len(digest) + 1) // 3 == FINGERPRINT_LENGTHS[algo] else None


def _check_credentials(ufrag: str, pwd: str) -> None:
    # RFC 8839 section 5.4: ice-ufrag 4-256 ice-chars, ice-pwd 22-256.
    if not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.fullmatch(ufrag):
        raise ValueError("ufrag must be 4-256 ICE characters (A-Z a-z 0-9 + /)")
    if not 22 <= len(pwd) <= 256 or not _ICE_CHARS.fullmatch(pwd):
        raise ValueError("pwd must be 22-256 ICE characters (A-Z a-z 0-9 + /)")


@dataclass(frozen=True, repr=False)
class WebRtcParams:
    """The remote's ICE and DTLS parameters, and our roles, for the media layer.

    ``candidates`` are the remote's usable ones (component 1, UDP, an IP of our
    socket's family), highest priority first: a candidate of the other family is
    simply ignored. ``setup`` is the remote's ``a=setup``; ``dtls_client`` is our
    DTLS role (True: we send the ClientHello); ``ice_controlling`` our ICE role
    claim (always True: toward a lite peer we must be, toward a full peer ICE
    resolves a conflict, RFC 8445 section 7.3.1.1). ``ice_pwd`` never shows.
    """

    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool
    candidates: tuple[IceCandidate, ...]
    fingerprints: tuple[tuple[str, str], ...]
    setup: str
    dtls_client: bool
    ice_controlling: bool = True

    def __repr__(self) -> str:
        return (
            f"WebRtcParams(ice_ufrag={self.ice_ufrag!r}, ice_pwd=***, ice_lite={self.ice_lite},"
            f" candidates={[c.to_sdp() for c in self.candidates]!r},"
            f" fingerprints={self.fingerprints!r}, setup={self.setup!r},"
            f" dtls_client={self.dtls_client}, ice_controlling={self.ice_controlling})"
        )

    def connection(self) -> Connection:
        """The preferred candidate as a c= line (where media goes until ICE nominates)."""
        best = self.candidates[0]
        return Connection("IN", f"IP{best.family}", best.address)

    @property
    def port(self) -> int:
        return self.candidates[0].port


@dataclass(frozen=True, repr=False)
class LocalWebRtc:
    """Our ICE credentials, DTLS certificate fingerprint and host candidate for one
    leg: ``address`` is the address we advertise (media.advertise_address, else
    media.address), ``port`` the leg's port. ``pwd`` never shows."""

    ufrag: str
    pwd: str
    fingerprint: tuple[str, str]
    address: str
    port: int

    def __post_init__(self) -> None:
        _check_credentials(self.ufrag, self.pwd)
        if parse_fingerprint(" ".join(self.fingerprint)) != self.fingerprint:
            raise ValueError("fingerprint must be (hash, upper-case hex pairs), e.g. sha-256")
        if _family(self.address) is None:
            raise ValueError("address must be an IP address")
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be 1-65535")

    def __repr__(self) -> str:
        return (
            f"LocalWebRtc(ufrag={self.ufrag!r}, pwd=***, fingerprint={self.fingerprint!r},"
            f" address={self.address!r}, port={self.port})"
        )

    @property
    def family(self) -> int:
        family = _family(self.address)
        assert family is not None  # checked in __post_init__
        return family

    def candidate(self) -> IceCandidate:
        """Our one host candidate (RFC 8445 section 5.1.1.1)."""
        return IceCandidate("1", 1, "UDP", host_priority(), str(self.address), self.port, "host")

    def attributes(self, setup: str) -> list[tuple[str, str | None]]:
        """Our media-level ICE and DTLS attributes (never ``a=ice-lite``: we are full)."""
        return [
            ("ice-ufrag", self.ufrag),
            ("ice-pwd", self.pwd),
            ("fingerprint", " ".join(self.fingerprint)),
            ("setup", setup),  # RFC 4145 section 4, RFC 5763 section 5
            ("candidate", self.candidate().to_sdp()),
        ]


# ---------------------------------------------------------------------------
# Reading the remote's SDP


def is_dtls(m: MediaDescription) -> bool:
    return m.proto.upper() in DTLS_PROTOS


def _value(session: SessionDescription, m: MediaDescription, name: str) -> str | None:
    # RFC 8839 section 5.4, RFC 4145 section 4: media level, else session level.
    value = m.attribute(name)
    return value.strip() if value is not None else _strip(session.attribute(name))


def _strip(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def remote_webrtc(
    session: SessionDescription, m: MediaDescription, *, local_family: int, answer: bool
) -> WebRtcParams:
    """The remote's ICE/DTLS parameters from its offer (``answer`` False) or its answer
    to our ``a=setup:actpass`` offer (True). Raises NegotiationError naming every
    missing attribute, or the one that is unusable."""
    what = "WebRTC answer" if answer else "WebRTC offer"
    ufrag, pwd = _value(session, m, "ice-ufrag"), _value(session, m, "ice-pwd")
    setup = (_value(session, m, "setup") or "").lower() or None
    lines = [v for v in m.attribute_values("fingerprint") if v] or [
        v for v in session.attribute_values("fingerprint") if v
    ]  # RFC 8122 section 5: media-level values replace the session-level ones
    candidates = [v for v in m.attribute_values("candidate") if v]
    missing = [
        f"a={name}"
        for name, present in (
            ("ice-ufrag", ufrag),
            ("ice-pwd", pwd),
            ("fingerprint", lines),
            ("setup", setup),
            ("candidate", candidates),
            ("rtcp-mux", m.rtcp_mux),
        )
        if not present
    ]
    if missing:
        raise NegotiationError(f"{what} without {', '.join(missing)}")
    assert ufrag is not None and pwd is not None and setup is not None
    try:
        _check_credentials(ufrag, pwd)
    except ValueError:
        raise NegotiationError(f"{what} has a malformed a=ice-ufrag or a=ice-pwd") from None
    fingerprints = tuple(fp for line in lines if (fp := parse_fingerprint(line)) is not None)
    if not fingerprints:
        raise NegotiationError(f"{what} has no usable a=fingerprint (sha-256 expected)")
    allowed = ("active", "passive") if answer else ("actpass", "active", "passive")
    if setup not in allowed:
        raise NegotiationError(f"{what} has a=setup:{setup[:16]}; expected {'/'.join(allowed)}")
    usable = []
    for value in candidates:
        try:
            cand = parse_candidate(value)
        except SdpError:
            continue  # be liberal: one malformed candidate does not spoil the others
        if (cand.component, cand.transport, cand.family) == (1, "UDP", local_family) and cand.port:
            usable.append(cand)
    if not usable:
        raise NegotiationError(
            f"{what} has no UDP candidate for IPv{local_family} (our media address family)"
        )
    usable.sort(key=lambda c: -c.priority)
    return WebRtcParams(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        ice_lite=session.has_attribute("ice-lite") or m.has_attribute("ice-lite"),
        candidates=tuple(usable),
        fingerprints=fingerprints,
        setup=setup,
        # Answering: we take "active" unless the offerer is active itself. Offering
        # actpass: the answerer's "passive" makes us the client (RFC 5763 section 5).
        dtls_client=setup == "passive" if answer else setup != "active",
    )


def answer_setup(remote_setup: str) -> str:
    """Our ``a=setup`` in an answer (RFC 4145 section 4.1, RFC 5763 section 5): active
    (the DTLS client, as Meta expects of the business side) unless the offerer is."""
    return "passive" if remote_setup == "active" else "active"


# ---------------------------------------------------------------------------
# The number's mode against the offer


def stream_protos(mode: SrtpMode, dtls_ready: bool) -> tuple[tuple[str, ...], str]:
    """The protos of a WhatsApp offer's audio stream we may answer in ``mode``, and how
    to name them in a refusal; ``dtls_ready``: ICE/DTLS parameters were given."""
    if mode == "sdes" or not dtls_ready:
        return SDES_PROTOS, "RTP/SAVP"
    if mode == "dtls":
        return DTLS_PROTOS, DTLS_PROTOS[0]
    return SDES_PROTOS + DTLS_PROTOS, f"RTP/SAVP or {DTLS_PROTOS[0]}"


def mode_error(
    offer: SessionDescription, mode: SrtpMode, dtls_ready: bool, number: str | None
) -> NegotiationError | None:
    """The refusal to give when ``offer`` has no stream :func:`stream_protos` allows but
    one of the other key exchange; None when it has neither (another refusal applies)."""
    audio = [m for m in offer.media if m.media.lower() == "audio" and m.port != 0]
    offered_dtls = any(is_dtls(m) for m in audio)
    offered_sdes = any(m.proto.upper() in SDES_PROTOS for m in audio)
    who = f"number {number}" if number else "this number"
    if mode == "dtls" and offered_sdes:
        reason = f"{who} accepts DTLS-SRTP only (srtp: dtls); Meta offered SDES (RTP/SAVP)"
    elif mode == "sdes" and offered_dtls:
        reason = f"{who} accepts SDES only (srtp: sdes); Meta offered DTLS (UDP/TLS/RTP/SAVPF)"
    elif offered_dtls and not dtls_ready:
        reason = "Meta offered DTLS (UDP/TLS/RTP/SAVPF); DTLS-SRTP is not available for this call"
    else:
        return None
    return NegotiationError(reason, warning=WARN_TRANSPORT)
