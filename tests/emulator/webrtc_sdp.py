"""The WebRTC media lines of Meta's SDP, built and checked (docs/whatsapp-sip.md section 7).

ICE attributes (RFC 8839: a=ice-lite, a=ice-ufrag, a=ice-pwd, a=candidate), the
DTLS role (RFC 4145/5763 a=setup) and the certificate fingerprint (RFC 8122
a=fingerprint). Independent of the gateway's SDP code on purpose, like
:mod:`tests.emulator.sdp`: it reads what the gateway sends strictly and says
what is wrong, as *fatal* reasons (Meta cannot set up media: the call fails)
or *problems* (a breach of a rule that still works: a violation).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from tests.emulator.sdp import Media, Sdp

WEBRTC_PROTO = "UDP/TLS/RTP/SAVPF"
HASH_FUNCS = ("sha-1", "sha-224", "sha-256", "sha-384", "sha-512")  # RFC 8122 5
_ICE_CHARS = r"[A-Za-z0-9+/]"
_UFRAG_RE = re.compile(_ICE_CHARS + "{4,256}")
_PWD_RE = re.compile(_ICE_CHARS + "{22,256}")
_FOUNDATION_RE = re.compile(_ICE_CHARS + "{1,32}")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_FINGERPRINT_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


@dataclass(frozen=True)
class Candidate:
    """One ``a=candidate`` (RFC 8839 5.1); the emulator only ever has host candidates."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str = "host"
    extensions: tuple[tuple[str, str], ...] = ()

    def value(self) -> str:
        """The attribute value (after ``a=candidate:``)."""
        ext = "".join(f" {k} {v}" for k, v in self.extensions)
        return (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.type}{ext}"
        )

    @property
    def family(self) -> int:
        """4 or 6; 0 for an FQDN (which ICE candidates must not be, RFC 8839 5.1)."""
        try:
            return ipaddress.ip_address(self.address).version
        except ValueError:
            return 0


def host_priority(local_pref: int, component: int = 1) -> int:
    """RFC 8445 5.1.2.1 with the host type preference 126."""
    return (126 << 24) | (local_pref << 8) | (256 - component)


def parse_candidate(value: str) -> Candidate:
    """RFC 8839 5.1 grammar; ValueError says what is wrong."""
    f = value.split(" ")
    if len(f) < 8 or f[6] != "typ":
        raise ValueError(f"a=candidate:{value}: needs 8 fields ending 'typ <type>'")
    foundation, comp, transport, prio, address, port = f[:6]
    if not _FOUNDATION_RE.fullmatch(foundation):
        raise ValueError(f"a=candidate:{value}: foundation must be 1*32 ice-char")
    if not (comp.isdigit() and len(comp) <= 3 and 1 <= int(comp) <= 256):
        raise ValueError(f"a=candidate:{value}: component-id must be 1..256")
    if not _TOKEN_RE.fullmatch(transport):
        raise ValueError(f"a=candidate:{value}: bad transport")
    if not (prio.isdigit() and len(prio) <= 10 and 1 <= int(prio) < 2**31):
        raise ValueError(f"a=candidate:{value}: priority must be 1..2^31-1")
    if not (port.isdigit() and int(port) <= 65535):
        raise ValueError(f"a=candidate:{value}: bad port")
    rest = f[8:]
    if len(rest) % 2:
        raise ValueError(f"a=candidate:{value}: extensions must be name/value pairs")
    ext = tuple((rest[i], rest[i + 1]) for i in range(0, len(rest), 2))
    return Candidate(foundation, int(comp), transport, int(prio), address, int(port), f[7], ext)


@dataclass(frozen=True)
class LocalWebRtc:
    """Our own ICE/DTLS lines: Meta's (ice-lite, setup actpass/passive) or a business peer's."""

    ufrag: str
    pwd: str = field(repr=False)
    fingerprint: str  # SHA-256, "AB:CD:..."
    setup: str  # "actpass" (offer) | "passive" | "active" (answer)
    candidates: tuple[Candidate, ...]
    lite: bool = True

    def session_attrs(self) -> list[str]:
        return ["a=ice-lite"] if self.lite else []

    def media_attrs(self) -> list[str]:
        return [
            f"a=ice-ufrag:{self.ufrag}",
            f"a=ice-pwd:{self.pwd}",
            f"a=fingerprint:sha-256 {self.fingerprint}",
            f"a=setup:{self.setup}",
            *(f"a=candidate:{c.value()}" for c in self.candidates),
        ]


@dataclass(frozen=True)
class RemoteWebRtc:
    """The peer's ICE/DTLS parameters as read from its SDP (media level, else session level)."""

    ufrag: str
    pwd: str = field(repr=False)
    candidates: tuple[Candidate, ...]
    fingerprints: tuple[tuple[str, str], ...]  # (hash function lower-case, hex upper-case)
    setup: str | None
    ice_lite: bool
    mid: str | None


def _one(sdp: Sdp, m: Media, name: str, problems: list[str]) -> str | None:
    """An attribute allowed at media or session level; the media level wins."""
    values = m.attr(name) or [v for k, v in sdp.attributes if k == name]
    if len(values) > 1:
        problems.append(f"more than one a={name}")
    return values[0] if values else None


def read_webrtc(
    sdp: Sdp, m: Media, *, answer: bool, offer_mid: str | None = None
) -> tuple[RemoteWebRtc | None, str | None, list[str]]:
    """Read the gateway's WebRTC SDP: (params, fatal reason, problems).

    ``answer``: the gateway answers Meta's actpass offer and must take
    ``a=setup:active``; as an offerer it must say ``actpass`` (RFC 5763 5;
    ``active`` works: Meta answers passive either way). Meta is ICE-lite, so an
    ``a=ice-lite`` from the gateway is fatal (two lite agents never check).
    """
    problems: list[str] = []
    what = "answer" if answer else "offer"
    fatal: list[str] = []
    if m.proto != WEBRTC_PROTO:
        fatal.append(f"m=audio proto {m.proto} (WebRTC media needs {WEBRTC_PROTO})")
    ufrag = _one(sdp, m, "ice-ufrag", problems)
    pwd = _one(sdp, m, "ice-pwd", problems)
    if ufrag is None or pwd is None:
        fatal.append("no a=ice-ufrag/a=ice-pwd")
    elif not _UFRAG_RE.fullmatch(ufrag) or not _PWD_RE.fullmatch(pwd):
        fatal.append("a=ice-ufrag (4-256 ice-char) or a=ice-pwd (22-256 ice-char) malformed")
    lite = any(k == "ice-lite" for k, _ in sdp.attributes) or m.has("ice-lite")
    if lite:
        fatal.append("a=ice-lite: the business side must be a full (controlling) ICE agent")
    candidates: list[Candidate] = []
    for v in m.attr("candidate"):
        try:
            candidates.append(parse_candidate(v or ""))
        except ValueError as exc:
            problems.append(str(exc))
    usable = [c for c in candidates if c.component == 1 and c.transport.upper() == "UDP"]
    if not usable:
        fatal.append("no UDP a=candidate for component 1")
    elif not any(c.family for c in usable):
        fatal.append("no a=candidate with an IP address (no FQDNs in ICE candidates)")
    fingerprints: list[tuple[str, str]] = []
    for v in m.attr("fingerprint") or [v for k, v in sdp.attributes if k == "fingerprint"]:
        algo, _, fp = (v or "").partition(" ")
        if algo.lower() not in HASH_FUNCS or not _FINGERPRINT_RE.fullmatch(fp):
            problems.append(f"bad a=fingerprint:{v}")
            continue
        if fp != fp.upper():
            problems.append(f"a=fingerprint:{v}: hex must be upper-case (RFC 8122 5)")
        fingerprints.append((algo.lower(), fp.upper()))
    if not fingerprints:
        fatal.append("no usable a=fingerprint")
    elif not any(a == "sha-256" for a, _ in fingerprints):
        problems.append("no a=fingerprint:sha-256 (Meta uses SHA-256)")
    setup = _one(sdp, m, "setup", problems)
    if answer and setup != "active":
        fatal.append(
            f"a=setup:{setup} in the answer to Meta's actpass: the business side must be the "
            "DTLS client (a=setup:active)"
        )
    elif not answer and setup not in ("actpass", "active"):
        fatal.append(f"a=setup:{setup} in the offer: Meta is the DTLS server (offer actpass)")
    elif not answer and setup == "active":
        problems.append("offer a=setup:active; RFC 5763 5 says the offerer uses actpass")
    if m.cryptos:
        problems.append("a=crypto in a WebRTC (DTLS-SRTP) m= line")
    mid = _one(sdp, m, "mid", problems)
    if offer_mid is not None and mid != offer_mid:
        problems.append(f"answer a=mid:{mid} is not the offer's a=mid:{offer_mid}")
    if fatal:
        return None, f"gateway's WebRTC {what}: " + "; ".join(fatal), problems
    assert ufrag is not None and pwd is not None
    remote = RemoteWebRtc(ufrag, pwd, tuple(candidates), tuple(fingerprints), setup, lite, mid)
    return remote, None, problems
