"""Small, strict SDP for the Meta emulator (RFC 4566/8866, RFC 4568 SDES, RFC 7587).

Independent of the gateway's own SDP code on purpose: it builds Meta-shaped
offers and answers (docs/whatsapp-sip.md section 6) and parses what the gateway
sends, collecting every deviation from the grammar as a *problem* (a string)
instead of silently accepting it. Only text that cannot be read at all raises
:class:`SdpError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from pylibsrtp import Policy

# suite -> (libsrtp profile, master key length, master salt length)
SUITES: dict[str, tuple[int, int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    "AES_CM_128_HMAC_SHA1_32": (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
}

OPUS_FMTP = (
    "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
    "sprop-maxcapturerate=16000;useinbandfec=1"
)
CNAME = "WhatsAppAudioStream1"
STATIC_PT = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1), 13: ("CN", 8000, 1)}

_TYPE_ORDER = "vosiuepcbtrzkam"  # session-level order (RFC 8866 5)
_MEDIA_ORDER = "micbka"
_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


class SdpError(ValueError):
    """SDP that cannot be read at all."""


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 9.1): tag, suite, inline key||salt."""

    tag: int
    suite: str
    key: bytes  # master key || master salt
    lifetime: str | None = None
    mki: str | None = None
    session_params: str = ""

    def line(self) -> str:
        inline = "inline:" + base64.b64encode(self.key).decode("ascii")
        if self.lifetime:
            inline += "|" + self.lifetime
        if self.mki:
            inline += "|" + self.mki
        extra = f" {self.session_params}" if self.session_params else ""
        return f"a=crypto:{self.tag} {self.suite} {inline}{extra}"

    @property
    def profile(self) -> int:
        return SUITES[self.suite][0]


def new_crypto(tag: int, suite: str) -> Crypto:
    """A fresh random master key and salt for ``suite`` (30 bytes for AES_CM_128)."""
    _, klen, slen = SUITES[suite]
    return Crypto(tag, suite, secrets.token_bytes(klen + slen))


@dataclass
class Rtpmap:
    pt: int
    encoding: str
    clock: int
    channels: int = 1

    @property
    def name(self) -> str:
        """``opus/48000/2`` style, encoding lower-cased."""
        tail = f"/{self.channels}" if self.channels != 1 or self.encoding.lower() == "opus" else ""
        return f"{self.encoding.lower()}/{self.clock}{tail}"


@dataclass
class Media:
    media: str
    port: int
    proto: str
    fmts: list[str]
    connection: str | None = None  # address from c=, media level or session level
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attr(self, name: str) -> list[str | None]:
        return [v for k, v in self.attributes if k == name]

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.attributes)

    @property
    def payload_types(self) -> list[int]:
        return [int(f) for f in self.fmts if f.isdigit()]

    @property
    def rtpmaps(self) -> dict[int, Rtpmap]:
        out: dict[int, Rtpmap] = {}
        for pt in self.payload_types:
            if pt in STATIC_PT:
                enc, clock, ch = STATIC_PT[pt]
                out[pt] = Rtpmap(pt, enc, clock, ch)
        for v in self.attr("rtpmap"):
            m = re.fullmatch(r"(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?", v or "")
            if m:
                pt = int(m.group(1))
                out[pt] = Rtpmap(pt, m.group(2), int(m.group(3)), int(m.group(4) or 1))
        return out

    @property
    def fmtp(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for v in self.attr("fmtp"):
            pt, _, params = (v or "").partition(" ")
            if pt.isdigit():
                out[int(pt)] = params.strip()
        return out

    @property
    def cryptos(self) -> list[Crypto]:
        out = []
        for v in self.attr("crypto"):
            c = parse_crypto(v or "")[0]
            if c is not None:
                out.append(c)
        return out

    @property
    def direction(self) -> str:
        for d in ("sendrecv", "sendonly", "recvonly", "inactive"):
            if self.has(d):
                return d
        return "sendrecv"

    @property
    def ssrcs(self) -> list[int]:
        out = []
        for v in self.attr("ssrc"):
            head = (v or "").split(" ", 1)[0]
            if head.isdigit():
                out.append(int(head))
        return sorted(set(out))


@dataclass
class Sdp:
    text: str
    origin: str = ""
    session_name: str = ""
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def audio(self) -> Media | None:
        """The first audio m= line with a non-zero port."""
        return next((m for m in self.media if m.media == "audio" and m.port != 0), None)


def parse_crypto(value: str) -> tuple[Crypto | None, list[str]]:
    """``<tag> <suite> inline:<b64>[|lifetime][|MKI:len] [session-params]`` -> Crypto, problems."""
    problems: list[str] = []
    parts = value.split()
    if len(parts) < 3:
        return None, [f"a=crypto:{value}: needs tag, suite and key-params"]
    tag_s, suite, key_params = parts[0], parts[1], parts[2]
    if not tag_s.isdigit() or len(tag_s) > 9:
        return None, [f"a=crypto:{value}: tag must be 1*9DIGIT"]
    if ";" in key_params:
        problems.append(f"a=crypto tag {tag_s}: more than one key-param (not supported by Meta)")
        key_params = key_params.split(";", 1)[0]
    if not key_params.startswith("inline:"):
        return None, [f"a=crypto tag {tag_s}: key-method must be inline:"]
    inline = key_params[len("inline:") :].split("|")
    b64 = inline[0]
    lifetime = mki = None
    for extra in inline[1:]:
        if ":" in extra:
            mki = extra
        else:
            lifetime = extra
    if not _B64_RE.fullmatch(b64) or len(b64) % 4:
        return None, [f"a=crypto tag {tag_s}: key is not valid base64"]
    try:
        key = base64.b64decode(b64, validate=True)
    except binascii.Error:
        return None, [f"a=crypto tag {tag_s}: key is not valid base64"]
    if suite in SUITES:
        _, klen, slen = SUITES[suite]
        if len(key) != klen + slen:
            problems.append(
                f"a=crypto tag {tag_s}: {suite} key||salt must be {klen + slen} bytes, "
                f"got {len(key)}"
            )
            return None, problems
    if mki is not None:
        problems.append(f"a=crypto tag {tag_s}: MKI {mki!r} (Meta uses none)")
    c = Crypto(int(tag_s), suite, key, lifetime, mki, " ".join(parts[3:]))
    return c, problems


def _addr_ok(nettype: str, addrtype: str, addr: str) -> bool:
    if nettype != "IN" or addrtype not in ("IP4", "IP6"):
        return False
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9.\-]+", addr))
    return (ip.version == 4) == (addrtype == "IP4")


def parse_sdp(text: str) -> Sdp:
    """Parse ``text`` strictly; grammar deviations go to ``Sdp.problems``."""
    sdp = Sdp(text)
    problems = sdp.problems
    if not text:
        raise SdpError("empty SDP")
    if "\n" in text.replace("\r\n", "") or "\r" in text.replace("\r\n", ""):
        problems.append("SDP lines must end with CRLF")
    if not text.endswith("\n"):
        problems.append("last SDP line is not terminated")
    lines = [ln for ln in re.split(r"\r?\n", text) if ln != ""]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    seen: set[str] = set()
    order_pos = 0
    media: Media | None = None
    media_pos = 0
    timing = False
    for ln in lines:
        if len(ln) < 2 or ln[1] != "=" or not ln[0].islower():
            raise SdpError(f"bad SDP line {ln!r}")
        kind, value = ln[0], ln[2:]
        if value != value.strip() and kind != "s":
            problems.append(f"SDP line {ln!r} has leading/trailing white space")
        if kind == "m":
            parts = value.split(" ")
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(f"bad m= line {ln!r}")
            media = Media(parts[0], int(parts[1].split("/")[0]), parts[2], parts[3:])
            media.connection = sdp.connection
            sdp.media.append(media)
            media_pos = 0
            continue
        if media is None:
            pos = _TYPE_ORDER.find(kind)
            if pos < 0:
                problems.append(f"unknown session-level SDP line {ln!r}")
                continue
            if pos < order_pos or (kind in seen and kind not in "ebrta"):
                problems.append(f"SDP line {ln!r} out of order or repeated")
            order_pos = max(order_pos, pos)
            seen.add(kind)
        else:
            pos = _MEDIA_ORDER.find(kind)
            if pos < 0:
                problems.append(f"SDP line {ln!r} not allowed at media level")
                continue
            if pos < media_pos:
                problems.append(f"media-level SDP line {ln!r} out of order")
            media_pos = max(media_pos, pos)
        if kind == "o":
            f = value.split(" ")
            if len(f) != 6 or not f[1].isdigit() or not f[2].isdigit():
                problems.append(f"bad o= line {ln!r}")
            elif not _addr_ok(f[3], f[4], f[5]):
                problems.append(f"bad o= address in {ln!r}")
            sdp.origin = value
        elif kind == "s":
            if value == "":
                problems.append("s= must not be empty (use s=-)")
            sdp.session_name = value
        elif kind == "t":
            timing = True
            f = value.split(" ")
            if len(f) != 2 or not all(x.isdigit() for x in f):
                problems.append(f"bad t= line {ln!r}")
        elif kind == "c":
            f = value.split(" ")
            if len(f) != 3 or not _addr_ok(f[0], f[1], f[2].split("/")[0]):
                problems.append(f"bad c= line {ln!r}")
                continue
            if media is None:
                sdp.connection = f[2]
            else:
                media.connection = f[2]
        elif kind == "a":
            name, colon, val = value.partition(":")
            if not _TOKEN_RE.fullmatch(name):
                problems.append(f"bad attribute name in {ln!r}")
                continue
            item = (name, val if colon else None)
            (sdp.attributes if media is None else media.attributes).append(item)
    for kind, what in (("o", "o="), ("s", "s=")):
        if kind not in seen:
            problems.append(f"SDP lacks {what}")
    if not timing:
        problems.append("SDP lacks t=")
    if not sdp.media:
        raise SdpError("SDP has no m= line")
    for m in sdp.media:
        if m.connection is None and m.port != 0:
            problems.append(f"m={m.media} has no c= (session or media level)")
        _check_media(m, problems)
    return sdp


def _check_media(m: Media, problems: list[str]) -> None:
    if m.proto.startswith(("RTP/", "UDP/TLS/RTP/")):
        for f in m.fmts:
            if not f.isdigit() or int(f) > 127:
                problems.append(f"m={m.media}: bad RTP payload type {f!r}")
        maps = m.rtpmaps
        for v in m.attr("rtpmap"):
            if not re.fullmatch(r"\d+ [^/\s]+/\d+(?:/\d+)?", v or ""):
                problems.append(f"bad a=rtpmap:{v}")
                continue
            pt = int((v or "").split(" ")[0])
            if pt not in m.payload_types:
                problems.append(f"a=rtpmap:{v} for a payload type not in the m= line")
        for pt in m.payload_types:
            if pt >= 96 and pt not in maps:
                problems.append(f"dynamic payload type {pt} has no a=rtpmap")
        for pt in m.fmtp:
            if pt not in m.payload_types:
                problems.append(f"a=fmtp for payload type {pt} not in the m= line")
    for v in m.attr("crypto"):
        c, cp = parse_crypto(v or "")
        problems.extend(cp)
        if c is None and not cp:
            problems.append(f"unreadable a=crypto:{v}")
    tags = [c.tag for c in m.cryptos]
    if len(tags) != len(set(tags)):
        problems.append("a=crypto tags are not unique")
    directions = [d for d in ("sendrecv", "sendonly", "recvonly", "inactive") if m.has(d)]
    if len(directions) > 1:
        problems.append(f"more than one direction attribute: {directions}")
    for v in m.attr("ptime") + m.attr("maxptime"):
        if not (v or "").isdigit():
            problems.append(f"bad ptime/maxptime value {v!r}")


# ---------------------------------------------------------------------------
# Building Meta-shaped SDP


def build_meta_sdp(
    *,
    address: str,
    port: int,
    cryptos: list[Crypto],
    ssrc: int,
    opus_pt: int | None = 111,
    te_pt: int | None = 126,
    g711: list[int] | None = None,
    te_clock: int = 8000,
    proto: str = "RTP/SAVP",
    mid: str = "audio",
    session_attrs: Sequence[str] = (),
    media_attrs: Sequence[str] = (),
) -> str:
    """Meta's SDP (section 6): RTP/SAVP, rtcp-mux, SDES, opus/48000/2, telephone-event/8000.

    Used for offers (user-initiated calls) and answers (business-initiated
    calls: pass the offer's payload type numbers and the chosen codecs only).
    WebRTC mode (section 7, :mod:`tests.emulator.webrtc_sdp`) passes
    ``proto="UDP/TLS/RTP/SAVPF"``, no ``cryptos``, ``mid="0"`` and its ICE/DTLS
    lines as ``session_attrs`` (after t=) and ``media_attrs`` (after a=mid);
    then ``a=rtcp-fb:<opus> transport-cc`` follows the Opus fmtp.
    """
    pts: list[int] = []
    if opus_pt is not None:
        pts.append(opus_pt)
    if te_pt is not None:
        pts.append(te_pt)
    pts.extend(g711 or [])
    sess_id = secrets.randbelow(2**62) + 1
    stream = secrets.token_hex(8)
    track = secrets.token_hex(8)
    lines = [
        "v=0",
        f"o=- {sess_id} 2 IN IP4 {address}",
        "s=-",
        "t=0 0",
        *session_attrs,
        f"a=group:BUNDLE {mid}",
        f"a=msid-semantic: WMS {stream}",
        f"m=audio {port} {proto} {' '.join(str(p) for p in pts)}",
        f"c=IN IP4 {address}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=sendrecv",
        f"a=mid:{mid}",
        *media_attrs,
    ]
    lines += [c.line() for c in cryptos]
    if opus_pt is not None:
        lines += [f"a=rtpmap:{opus_pt} opus/48000/2", f"a=fmtp:{opus_pt} {OPUS_FMTP}"]
        if proto.endswith("SAVPF"):
            lines.append(f"a=rtcp-fb:{opus_pt} transport-cc")
    if te_pt is not None:
        lines.append(f"a=rtpmap:{te_pt} telephone-event/{te_clock}")
    for pt in g711 or []:
        lines.append(f"a=rtpmap:{pt} {STATIC_PT[pt][0]}/8000")
    lines += [
        "a=ptime:20",
        "a=maxptime:20",
        f"a=msid:{stream} {track}",
        f"a=ssrc:{ssrc} cname:{CNAME}",
    ]
    return "\r\n".join(lines) + "\r\n"
