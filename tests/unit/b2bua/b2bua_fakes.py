"""Shared fakes for the B2BUA tests: a fake clock, a fake media bridge, a call harness.

Everything runs in memory: a real :class:`TransactionManager`, :class:`SipPort`,
:class:`Endpoint`, :class:`DigestServer` and :class:`CallManager` around a
:class:`FakeScheduler` and a :class:`FakeBridgeFactory`. Messages are fed as
bytes (parsed like the transport would) and what the manager queues is read back
through ``to_bytes()`` and parsed again, so the tests assert on real SIP.

Builders shape the WhatsApp side like Meta's SIP edge (docs/whatsapp-sip.md sections
3 and 6) and the PBX side like Asterisk.
"""

from __future__ import annotations

import base64
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.b2bua.call import Call
from gateway.b2bua.calls import CallManager
from gateway.b2bua.endpoint import Endpoint
from gateway.b2bua.port import NoMediaPorts, SipPort
from gateway.config import Config, load_config
from gateway.media.stats import BridgeStats
from gateway.sdp.negotiate import MediaParams
from gateway.sip.auth import DigestServer, answer_challenge, parse_challenge
from gateway.sip.ids import new_branch, new_tag
from gateway.sip.message import Request, Response, parse_message, reason_phrase
from gateway.sip.transaction import Event, Outgoing, Target, TransactionManager

# --------------------------------------------------------------------------- constants

BUSINESS = "+17015558857"
USER = "+12195550714"
BSUID = "US.13491208655302741918"
HOSTNAME = "sip.example.com"
PASSWORD = "s3cret-meta-sip-password"
USER_AGENT = "wa-sip-gateway/test"

META_RR = (
    "<sip:wa.meta.vc;transport=tls;lr>",
    "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
)
META_SOURCE = Target("tls", "157.240.19.1", 40001, conn_id=7)
PBX_HOST, PBX_PORT = "127.0.0.1", 5080
PBX_SOURCE = Target("udp", PBX_HOST, PBX_PORT)
PBX_CONTACT = f"<sip:{BUSINESS}@{PBX_HOST}:{PBX_PORT}>"
MEDIA_ADDRESS = "203.0.113.10"

META_KEY = bytes(range(1, 31))  # 30 bytes: AES_CM_128 master key || salt
META_KEY_B64 = base64.b64encode(META_KEY).decode()

META_SDP = (
    "v=0\r\n"
    "o=- 1730000000 1 IN IP4 57.144.219.49\r\n"
    "s=-\r\n"
    "c=IN IP4 57.144.219.49\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE audio\r\n"
    "m=audio 3480 RTP/SAVP 111 126\r\n"
    "c=IN IP4 57.144.219.49\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=rtcp-mux\r\n"
    "a=sendrecv\r\n"
    "a=mid:audio\r\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{META_KEY_B64}\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
    "sprop-maxcapturerate=16000;useinbandfec=1\r\n"
    "a=rtpmap:126 telephone-event/8000\r\n"
    "a=ptime:20\r\n"
    "a=maxptime:20\r\n"
    "a=ssrc:2863311530 cname:WhatsAppAudioStream1\r\n"
)

META_SDP_NO_CRYPTO = "".join(
    line + "\r\n" for line in META_SDP.split("\r\n") if line and not line.startswith("a=crypto")
)
META_SDP_AVP = META_SDP_NO_CRYPTO.replace("RTP/SAVP", "RTP/AVP")


def pbx_sdp(
    direction: str = "sendrecv",
    *,
    port: int = 10000,
    version: int = 1,
    codecs: tuple[tuple[int, str], ...] = ((0, "PCMU"),),
    address: str = PBX_HOST,
) -> str:
    """Asterisk-like SDP: G.711 and telephone-event 101."""
    pts = " ".join(str(pt) for pt, _ in codecs)
    maps = "".join(f"a=rtpmap:{pt} {name}/8000\r\n" for pt, name in codecs)
    return (
        "v=0\r\n"
        f"o=- 1000 {version} IN IP4 {address}\r\n"
        "s=Asterisk\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP {pts} 101\r\n"
        f"{maps}"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=maxptime:150\r\n"
        f"a={direction}\r\n"
    )


# --------------------------------------------------------------------------- clock


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    """A clock that moves only when told; callbacks fire in deadline order."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def fire_due(self) -> int:
        """Run every live callback due at ``now``; returns how many ran."""
        fired = 0
        while (deadline := self.next_deadline()) is not None and deadline <= self.now:
            _, _, timer = heapq.heappop(self._heap)
            timer.cancelled = True
            timer.callback()
            fired += 1
        return fired

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due callbacks in order on the way."""
        end = self.now + seconds
        while (deadline := self.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.fire_due()
        self.now = end

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


# --------------------------------------------------------------------------- media


class FakeBridge:
    """Records what the call tells its media bridge."""

    def __init__(
        self,
        key: str,
        on_no_media: Callable[[str, str], None],
        whatsapp_port: int,
        pbx_port: int,
        webrtc: tuple[str, str, tuple[str, str]] | None = None,
    ) -> None:
        self.key = key
        self._on_no_media = on_no_media
        self._webrtc = webrtc
        self._wa_port = whatsapp_port
        self._pbx_port = pbx_port
        self.calls: list[tuple[str, MediaParams]] = []
        self.closed = 0

    @property
    def whatsapp_port(self) -> int:
        return self._wa_port

    @property
    def pbx_port(self) -> int:
        return self._pbx_port

    def on_no_media(self, leg: str, why: str = "") -> None:
        self._on_no_media(leg, why)

    def local_webrtc(self) -> tuple[str, str, tuple[str, str]]:
        if self._webrtc is None:
            raise RuntimeError("no DTLS certificate (fake)")
        return self._webrtc

    def set_whatsapp(self, params: MediaParams) -> None:
        self.calls.append(("whatsapp", params))

    def set_pbx(self, params: MediaParams) -> None:
        self.calls.append(("pbx", params))

    def stats(self) -> BridgeStats:
        return BridgeStats()

    def close(self) -> None:
        self.closed += 1

    def order(self) -> list[str]:
        return [leg for leg, _ in self.calls]

    def last(self, leg: str) -> MediaParams:
        return [p for name, p in self.calls if name == leg][-1]


# What a FakeBridge's local_webrtc() gives in WebRTC-mode tests: ufrag, pwd, fingerprint.
WEBRTC_LOCAL = ("gwUfrag1", "gwPassword0123456789abcd", ("sha-256", ":".join(["AB"] * 32)))


class FakeBridgeFactory:
    """A ``BridgeFactory``: ports fixed or from a counter; raises NoMediaPorts on demand."""

    def __init__(
        self,
        *,
        fixed: tuple[int, int] | None = None,
        start: int = 20000,
        webrtc: tuple[str, str, tuple[str, str]] | None = None,
    ) -> None:
        self.webrtc = webrtc  # what each bridge's local_webrtc() gives (None: SDES only)
        self.fixed = fixed
        self._next = start
        self.exhausted = False
        self.bridges: list[FakeBridge] = []

    def __call__(self, key: str, on_no_media: Callable[[str, str], None]) -> FakeBridge:
        if self.exhausted:
            raise NoMediaPorts("no free RTP port (fake)")
        if self.fixed is not None:
            wa, pbx = self.fixed
        else:
            wa, pbx = self._next, self._next + 2
            self._next += 4
        bridge = FakeBridge(key, on_no_media, wa, pbx, self.webrtc)
        self.bridges.append(bridge)
        return bridge

    @property
    def open(self) -> list[FakeBridge]:
        return [b for b in self.bridges if not b.closed]


# --------------------------------------------------------------------------- message builders


def _msg(start: str, headers: Iterable[tuple[str, str]], body: str = "") -> bytes:
    raw = body.encode()
    lines = [start, *(f"{n}: {v}" for n, v in headers), f"Content-Length: {len(raw)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


def meta_invite(
    *,
    number: str = BUSINESS,
    user: str = USER,
    display: str | None = "12195550714",
    ruri_params: str = ";tgrp=wacall;trunk-context=byoc.example.com",
    call_id: str | None = None,
    wacid: str | None = None,
    from_tag: str | None = None,
    branch: str | None = None,
    cseq: int = 1,
    sdp: str | None = META_SDP,
    content_type: str = "application/sdp",
    auth: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    context: bool = True,
) -> bytes:
    """An INVITE shaped like Meta's (docs/whatsapp-sip.md section 3)."""
    wacid = wacid or "wacid.HBgLMTIxOTU1NTA3MTQVAgARGBI" + new_tag()
    call_id = call_id or f"outgoing:{wacid}"
    from_tag = from_tag or "meta" + new_tag()
    branch = branch or new_branch()
    name = f'"{display}" ' if display is not None else ""
    headers = [
        ("Via", f"SIP/2.0/TLS 157.240.19.1:5061;branch={branch};rport"),
        ("Record-Route", META_RR[0]),
        ("Record-Route", META_RR[1]),
        ("Max-Forwards", "69"),
        ("From", f"{name}<sip:{user}@wa.meta.vc>;tag={from_tag}"),
        ("To", f"<sip:{number}@{HOSTNAME}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Contact", f"<sip:{user}@wa.meta.vc;transport=tls;ob>;isfocus"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"),
        ("User-Agent", "Facebook SipGateway"),
        ("X-FB-External-Domain", "wa.meta.vc"),
    ]
    if context:
        headers += [
            ("x-wa-meta-wacid", wacid),
            ("X-WA-META-USER-ID", "106540352242922"),
            ("x-wa-meta_user-name", "Jane Doe"),
            ("X-Wa-Meta-Country-Code", "US"),
        ]
    if auth is not None:
        headers.append(("Proxy-Authorization", auth))
    headers += list(extra)
    if sdp is not None:
        headers.append(("Content-Type", content_type))
    ruri = f"sip:{number}{ruri_params}@{HOSTNAME};transport=tls"
    return _msg(f"INVITE {ruri} SIP/2.0", headers, sdp or "")


def request_of(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def response_to(
    req: Request,
    status: int,
    *,
    to_tag: str | None = "as-to-1",
    contact: str | None = PBX_CONTACT,
    sdp: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    reason: str | None = None,
) -> bytes:
    """A response (Asterisk-like when toward the gateway's PBX leg) to ``req``."""
    to = req.headers.get("To") or ""
    if to_tag and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    headers = [("Via", v) for v in req.headers.lines("Via")]
    headers += [
        ("From", req.headers.get("From") or ""),
        ("To", to),
        ("Call-ID", req.call_id),
        ("CSeq", str(req.cseq)),
        ("Server", "Asterisk PBX 20.5.0"),
    ]
    if contact and status > 100 and req.method in ("INVITE", "UPDATE"):
        headers.append(("Contact", contact))
    if status > 100 and req.method == "INVITE":
        headers.append(("Allow", "INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, UPDATE, NOTIFY"))
    headers += list(extra)
    if sdp is not None:
        headers.append(("Content-Type", "application/sdp"))
    start = f"SIP/2.0 {status} {reason or reason_phrase(status)}"
    return _msg(start, headers, sdp or "")


# --------------------------------------------------------------------------- harness

BASE_CONFIG: dict[str, Any] = {
    "mode": "production",
    "whatsapp": {
        "listen": "0.0.0.0:5061",
        "hostname": HOSTNAME,
        "tls": {"cert_file": "cert.pem", "key_file": "key.pem"},
        "numbers": [{"number": BUSINESS, "sip_password_file": "wa.pass"}],
    },
    "pbx": {
        "address": f"{PBX_HOST}:{PBX_PORT}",
        "listen": "127.0.0.1:5090",
        "codecs": ["PCMU", "PCMA"],
        "dtmf_payload_type": 101,
        "invite_timeout": 5.0,
    },
    "media": {"address": MEDIA_ADDRESS},
    "limits": {"max_calls": 200},
    "sip": {"user_agent": USER_AGENT},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def wire(out: Outgoing) -> Request | Response:
    """What actually goes on the wire: the queued message serialised and parsed back."""
    return parse_message(out.message.to_bytes())


@dataclass
class Sent:
    """One message the harness saw the manager queue, parsed back from its bytes."""

    message: Request | Response
    target: Target

    @property
    def request(self) -> Request:
        assert isinstance(self.message, Request), self.message
        return self.message

    @property
    def response(self) -> Response:
        assert isinstance(self.message, Response), self.message
        return self.message


@dataclass
class Flow:
    """One call driven through the harness."""

    invite: Request  # Meta's INVITE as the manager saw it (after Via stamping)
    call: Call
    pbx_invite: Request  # what went on the wire to the PBX
    bridge: FakeBridge
    pbx_to_tag: str = "as-to-1"
    pbx_cseq: int = 100  # the PBX's own CSeq in its dialog
    meta_cseq: int = 1
    answered: Response | None = None  # our 200 to Meta
    extra: dict[str, Any] = field(default_factory=dict)


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any] | None = None,
        *,
        bridges: FakeBridgeFactory | None = None,
        t1: float = 0.5,
    ) -> None:
        data = _merge(BASE_CONFIG, config or {})
        (tmp_path / "wa.pass").write_text(PASSWORD + "\n", encoding="utf-8")
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        self.cfg: Config = load_config(path)
        self.scheduler = FakeScheduler()
        self.manager = TransactionManager(t1=t1)
        self.flushes = 0
        self.sip = SipPort(self.manager, self.scheduler, flush=self._flush, user_agent=USER_AGENT)
        self.endpoint = Endpoint(self.manager, self.scheduler.time, user_agent=USER_AGENT)
        self.digest = DigestServer(b"0123456789abcdef-test-secret", HOSTNAME, algorithms=("MD5",))
        self.bridges = bridges or FakeBridgeFactory()
        self.ended: list[tuple[Call, str]] = []
        self.calls = CallManager(
            self.cfg,
            self.sip,
            self.endpoint,
            self.bridges,
            self.digest,
            on_call_end=lambda call, reason: self.ended.append((call, reason)),
            wall_clock=self.scheduler.time,
        )
        self.log: list[Sent] = []  # everything ever sent
        # Parse every queued message back from its bytes (off: faster loops, same objects).
        self.reparse = True

    def _flush(self) -> None:
        self.flushes += 1

    # -- feeding --------------------------------------------------------------
    def dispatch(self, events: Iterable[Event], leg: str) -> list[Event]:
        events = list(events)
        for event in events:
            self.calls.handle(event, leg)
        return events

    def receive(self, data: bytes, source: Target, leg: str) -> list[Event]:
        """Deliver ``data`` as if it arrived from ``source`` on ``leg``."""
        msg = parse_message(data)
        return self.dispatch(self.manager.receive(msg, source, self.scheduler.time()), leg)

    def from_meta(self, data: bytes, source: Target = META_SOURCE) -> list[Event]:
        return self.receive(data, source, "whatsapp")

    def from_pbx(self, data: bytes, source: Target = PBX_SOURCE) -> list[Event]:
        return self.receive(data, source, "pbx")

    def transport_error(self, target: Target) -> list[Event]:
        return self.dispatch(self.manager.transport_error(target, self.scheduler.time()), "pbx")

    def advance(self, seconds: float) -> None:
        """Let time pass: call timers and transaction timers, interleaved in order."""
        end = self.scheduler.now + seconds
        while True:
            candidates = [
                d
                for d in (self.scheduler.next_deadline(), self.manager.next_deadline())
                if d is not None and d <= end
            ]
            if not candidates:
                break
            self.scheduler.now = max(self.scheduler.now, min(candidates))
            self.scheduler.fire_due()
            self.dispatch(self.manager.handle_timer(self.scheduler.now), "timer")
        self.scheduler.now = end

    def drain_timers(self, limit: float = 3600.0) -> None:
        """Advance until nothing is armed (or ``limit`` seconds passed)."""
        start = self.scheduler.now
        while self.scheduler.now - start < limit:
            deadlines = [
                d for d in (self.scheduler.next_deadline(), self.manager.next_deadline()) if d
            ]
            if not deadlines:
                return
            self.advance(max(0.0, min(deadlines) - self.scheduler.now))

    # -- reading ----------------------------------------------------------------
    def sent(self) -> list[Sent]:
        """What the manager queued since the last call, as parsed wire messages."""
        queued = self.manager.pop_outgoing()
        if self.reparse:
            out = [Sent(wire(o), o.target) for o in queued]
        else:
            out = [Sent(o.message, o.target) for o in queued]
        self.log += out
        return out

    def sent_to(self, target_host: str | None = None, *, leg: str | None = None) -> list[Sent]:
        out = self.sent()
        if leg == "pbx":
            return [s for s in out if s.target.host == PBX_HOST]
        if leg == "whatsapp":
            return [s for s in out if s.target.host != PBX_HOST]
        return [s for s in out if target_host is None or s.target.host == target_host]

    @staticmethod
    def responses(sent: Iterable[Sent], status: int | None = None) -> list[Response]:
        return [
            s.message
            for s in sent
            if isinstance(s.message, Response) and (status is None or s.message.status == status)
        ]

    @staticmethod
    def requests(sent: Iterable[Sent], method: str | None = None) -> list[Request]:
        return [
            s.message
            for s in sent
            if isinstance(s.message, Request) and (method is None or s.message.method == method)
        ]

    # -- digest -------------------------------------------------------------------
    def credentials(
        self,
        challenge_header: str,
        ruri: str,
        *,
        username: str = BUSINESS[1:],
        password: str = PASSWORD,
    ) -> str:
        challenge = parse_challenge(challenge_header)
        return answer_challenge(challenge, "INVITE", ruri, username, password).to_header()

    def challenge_and_retry(self, invite_kwargs: dict[str, Any], **cred: str) -> list[Sent]:
        """Send the INVITE, expect 407, send it again with credentials (CSeq+1, new branch)."""
        kwargs = dict(invite_kwargs)
        kwargs.setdefault("wacid", "wacid.HBgL" + new_tag())
        kwargs.setdefault("from_tag", "meta" + new_tag())
        first = meta_invite(**kwargs)
        self.from_meta(first)
        sent = self.sent()
        challenges = [r for r in self.responses(sent) if r.status == 407]
        assert len(challenges) == 1, [s.message for s in sent]
        # Meta ACKs the 407 (hop-by-hop ACK, same branch as the INVITE).
        req = request_of(first)
        self.from_meta(ack_for(req, challenges[0]))
        value = challenges[0].headers.get("Proxy-Authenticate")
        assert value is not None
        kwargs["cseq"] = kwargs.get("cseq", 1) + 1
        kwargs["branch"] = new_branch()
        kwargs["auth"] = self.credentials(value, req.uri, **cred)
        self.from_meta(meta_invite(**kwargs))
        return self.sent()

    # -- whole-call helpers ---------------------------------------------------------
    def start_call(self, **invite_kwargs: Any) -> Flow:
        """Admit a call (407 dance when the number challenges); returns the flow."""
        before = set(self.calls.calls)
        number = self.cfg.whatsapp.number(invite_kwargs.get("number", BUSINESS))
        if number is not None and number.challenge:
            sent = self.challenge_and_retry(invite_kwargs)
        else:
            self.from_meta(meta_invite(**invite_kwargs))
            sent = self.sent()
        new = [k for k in self.calls.calls if k not in before]
        assert len(new) == 1, [s.message for s in sent]
        call = self.calls.calls[new[0]]
        invites = [s for s in sent if isinstance(s.message, Request)]
        assert [s.message.method for s in invites] == ["INVITE"], sent  # type: ignore[union-attr]
        assert invites[0].target == Target("udp", PBX_HOST, PBX_PORT)
        bridge = call.bridge
        assert isinstance(bridge, FakeBridge)
        flow = Flow(call.caller.request, call, invites[0].request, bridge)
        flow.extra["sent_at_start"] = sent
        return flow

    def pbx_reply(self, flow: Flow, status: int, **kwargs: Any) -> list[Sent]:
        if status in (180, 183, 200) and "sdp" not in kwargs and status != 180:
            kwargs["sdp"] = pbx_sdp()
        kwargs.setdefault("to_tag", flow.pbx_to_tag)
        self.from_pbx(response_to(flow.pbx_invite, status, **kwargs))
        return self.sent()

    def answer(self, flow: Flow, *, ack: bool = True) -> list[Sent]:
        """PBX 100/180/200, then (with ``ack``) Meta's ACK; returns what was sent."""
        self.pbx_reply(flow, 100)
        sent = self.pbx_reply(flow, 180)
        sent += self.pbx_reply(flow, 200)
        oks = [r for r in self.responses(sent, 200)]
        assert len(oks) == 1, [s.message for s in sent]
        flow.answered = oks[0]
        if ack:
            self.from_meta(meta_ack(flow))
            sent += self.sent()
        return sent

    def meta_in_dialog(self, flow: Flow, method: str, **kwargs: Any) -> list[Sent]:
        flow.meta_cseq += 1
        self.from_meta(meta_request(flow, method, flow.meta_cseq, **kwargs))
        return self.sent()

    def pbx_in_dialog(
        self, flow: Flow, method: str, *, cseq: int | None = None, **kwargs: Any
    ) -> list[Sent]:
        if cseq is None:
            flow.pbx_cseq += 1
            cseq = flow.pbx_cseq
        self.from_pbx(pbx_request(flow, method, cseq, **kwargs))
        return self.sent()


def ack_for(invite: Request, resp: Response) -> bytes:
    """The hop-by-hop ACK for a non-2xx final (same branch, To of the response)."""
    headers = [
        ("Via", invite.headers.lines("Via")[0]),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or ""),
        ("To", resp.headers.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return _msg(f"ACK {invite.uri} SIP/2.0", headers)


# ------------------------------------------------------------ in-dialog requests, by role
# A call is one machine with the roles swapped, so are its fakes: a request from the
# caller in its dialog (after our 2xx), from the callee in ours (after its 2xx), a CANCEL.


@dataclass(frozen=True)
class Hop:
    """How one peer's requests look on the wire."""

    via: str  # Via with a {} for the branch
    max_forwards: str
    user_agent: str | None = None
    contact: str | None = None  # Contact of its INVITE/UPDATE (a target refresh)
    meta: bool = False  # Meta's BYE carries x-wa-meta-call-duration and a Q.850 Reason


META_HOP = Hop("SIP/2.0/TLS 157.240.19.1:5061;branch={};rport", "69", meta=True)


def _pbx_hop(contact: str) -> Hop:
    return Hop(
        f"SIP/2.0/UDP {PBX_HOST}:{PBX_PORT};branch={{}};rport", "70", "Asterisk PBX 20.5.0", contact
    )


def in_dialog(
    hop: Hop,
    method: str,
    cseq: int,
    *,
    uri: str,
    from_: str,
    to: str,
    call_id: str,
    extra: Iterable[tuple[str, str]] = (),
    body: str = "",
    content_type: str = "application/sdp",
    branch: str | None = None,
    duration: str | None = "42",
) -> bytes:
    headers = [
        ("Via", hop.via.format(branch or new_branch())),
        ("Max-Forwards", hop.max_forwards),
        ("From", from_),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if hop.user_agent:
        headers.append(("User-Agent", hop.user_agent))
    if hop.contact and method in ("INVITE", "UPDATE"):
        headers.append(("Contact", hop.contact))
    if hop.meta and method == "BYE":
        if duration is not None:
            headers.append(("x-wa-meta-call-duration", duration))
        headers.append(("Reason", 'Q.850;cause=16;text="NORMAL_CLEARING"'))
    headers += list(extra)
    if body:
        headers.append(("Content-Type", content_type))
    return _msg(f"{method} {uri} SIP/2.0", headers, body)


def from_caller(
    hop: Hop, invite: Request, answered: Response | None, method: str, cseq: int, **kw: Any
) -> bytes:
    """The caller's request in its dialog: to our Contact, with our To tag."""
    assert answered is not None and answered.contact is not None
    return in_dialog(
        hop,
        method,
        cseq,
        uri=str(answered.contact.uri),
        from_=invite.headers.get("From") or "",
        to=answered.headers.get("To") or "",
        call_id=invite.call_id,
        **kw,
    )


def from_callee(hop: Hop, ours: Request, their_to: str, method: str, cseq: int, **kw: Any) -> bytes:
    """The callee's request in the dialog of our INVITE ``ours``: to our Contact."""
    assert ours.contact is not None
    return in_dialog(
        hop,
        method,
        cseq,
        uri=str(ours.contact.uri),
        from_=their_to,
        to=ours.headers.get("From") or "",
        call_id=ours.call_id,
        **kw,
    )


def cancel(invite: Request) -> bytes:
    """The caller's CANCEL of its INVITE (same branch, RFC 3261 section 9.1)."""
    headers = [
        ("Via", invite.headers.lines("Via")[0]),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or ""),
        ("To", invite.headers.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} CANCEL"),
    ]
    return _msg(f"CANCEL {invite.uri} SIP/2.0", headers)


meta_cancel = pbx_cancel = cancel


def meta_ack(flow: Flow, *, body: str = "") -> bytes:
    """Meta's ACK for our 2xx: a new transaction, through the route set, To with our tag."""
    return from_caller(META_HOP, flow.invite, flow.answered, "ACK", flow.invite.cseq.seq, body=body)


def meta_request(flow: Flow, method: str, cseq: int, **kw: Any) -> bytes:
    """An in-dialog request from Meta (BYE with x-wa-meta-call-duration and Q.850 Reason)."""
    return from_caller(META_HOP, flow.invite, flow.answered, method, cseq, **kw)


def pbx_request(flow: Flow, method: str, cseq: int, *, sdp: str | None = None, **kw: Any) -> bytes:
    """An in-dialog request (or an ACK) from the PBX toward the gateway's PBX leg."""
    to = f"{flow.pbx_invite.headers.get('To') or ''};tag={flow.pbx_to_tag}"
    return from_callee(
        _pbx_hop(PBX_CONTACT), flow.pbx_invite, to, method, cseq, body=sdp or "", **kw
    )


def pbx_ack(flow: Flow, cseq: int, *, sdp: str | None = None) -> bytes:
    """The PBX's ACK for our 2xx to its re-INVITE."""
    return pbx_request(flow, "ACK", cseq, sdp=sdp)


# =========================================================================== outbound calls
# Calls from the PBX to WhatsApp (gateway/b2bua/outbound.py): the PBX (Asterisk-like)
# sends the INVITE, Meta's edge is the UAS (docs/whatsapp-sip.md section 4).

PBX_AGENT = "agent"
GW_PBX_HOSTPORT = "127.0.0.1:5090"  # BASE_CONFIG pbx.listen
META_DOMAIN = "wa.meta.vc"
META_REALM = "wa.meta.vc"
META_SERVER = "Facebook SipGateway"
META_ALLOW = "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"
# Record-Route of Meta's 18x/2xx to our INVITE: the hop next to us (wa.meta.vc) is the
# last entry; the UAC's route set is the reverse (RFC 3261 12.1.2).
META_RR_ANSWER = (
    "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
    "<sip:wa.meta.vc;transport=tls;lr>",
)
META_TO_TAG = "meta-uas-1"
PBX_OFFER = pbx_sdp(codecs=((0, "PCMU"), (8, "PCMA")))


def meta_contact(user: str = USER) -> str:
    return f"<sip:{user}@wa.meta.vc;transport=tls;ob>;isfocus"


def pbx_invite(
    target: str = USER,
    *,
    from_user: str = PBX_AGENT,
    call_id: str | None = None,
    from_tag: str | None = None,
    branch: str | None = None,
    cseq: int = 1,
    sdp: str | None = PBX_OFFER,
    headers: Iterable[tuple[str, str]] = (),
    record_route: Iterable[str] = (),
) -> bytes:
    """An INVITE from the PBX (Asterisk-like, UDP) to the gateway's PBX leg for ``target``."""
    call_id = call_id or f"{new_tag()}@{PBX_HOST}"
    from_tag = from_tag or "ast" + new_tag()
    branch = branch or new_branch()
    hdrs = [
        ("Via", f"SIP/2.0/UDP {PBX_HOST}:{PBX_PORT};rport;branch={branch}"),
        *[("Record-Route", rr) for rr in record_route],
        ("Max-Forwards", "70"),
        ("From", f'"Agent" <sip:{from_user}@{PBX_HOST}:{PBX_PORT}>;tag={from_tag}'),
        ("To", f"<sip:{target}@{GW_PBX_HOSTPORT}>"),
        ("Contact", f"<sip:{from_user}@{PBX_HOST}:{PBX_PORT}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Allow", "INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, UPDATE, NOTIFY"),
        ("Supported", "timer, replaces, norefersub"),
        ("Session-Expires", "1800"),
        ("Min-SE", "90"),
        ("User-Agent", "Asterisk PBX 20.5.0"),
        *headers,
    ]
    if sdp is not None:
        hdrs.append(("Content-Type", "application/sdp"))
    return _msg(f"INVITE sip:{target}@{GW_PBX_HOSTPORT} SIP/2.0", hdrs, sdp or "")


def meta_response(
    req: Request,
    status: int,
    *,
    to_tag: str | None = META_TO_TAG,
    record_route: Iterable[str] | None = None,
    contact: str | None = None,
    sdp: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    reason: str | None = None,
) -> bytes:
    """Meta's response to the gateway's INVITE (or CANCEL/BYE): Record-Route pair and
    Contact ``;ob`` on dialog-creating responses, ``Supported: timer`` on the 2xx."""
    to = req.headers.get("To") or ""
    if to_tag and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    headers = [("Via", v) for v in req.headers.lines("Via")]
    dialog = req.method == "INVITE" and 100 < status < 300
    if dialog:
        rr = META_RR_ANSWER if record_route is None else tuple(record_route)
        headers += [("Record-Route", v) for v in rr]
    headers += [
        ("From", req.headers.get("From") or ""),
        ("To", to),
        ("Call-ID", req.call_id),
        ("CSeq", str(req.cseq)),
        ("Server", META_SERVER),
    ]
    if dialog:
        user = req.parsed_uri.user_number or USER
        headers += [("Contact", contact or meta_contact(user)), ("Allow", META_ALLOW)]
        if status >= 200:
            headers.append(("Supported", "timer"))
    headers += list(extra)
    if sdp is not None:
        headers.append(("Content-Type", "application/sdp"))
    start = f"SIP/2.0 {status} {reason or reason_phrase(status)}"
    return _msg(start, headers, sdp or "")


def meta_challenge(
    req: Request,
    server: DigestServer,
    now: float,
    *,
    status: int = 407,
    stale: bool = False,
    to_tag: str = "meta-407",
) -> bytes:
    """Meta's digest challenge (407 Proxy-Authenticate, or 401 WWW-Authenticate)."""
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    values = [(name, c.to_header()) for c in server.challenge(now, stale=stale)]
    return meta_response(req, status, to_tag=to_tag, extra=values)


@dataclass
class OutFlow:
    """One PBX -> WhatsApp call driven through the harness."""

    pbx_invite: Request  # the PBX's INVITE as sent
    call: Call
    meta_invite: Request  # the latest INVITE the gateway sent to Meta (wire form)
    bridge: FakeBridge
    meta_target: Target
    answered: Response | None = None  # our 200 to the PBX
    meta_ok: Response | None = None  # Meta's 200
    pbx_cseq: int = 1  # the PBX's CSeq in its dialog (it is the UAC)
    meta_cseq: int = 100  # Meta's CSeq in its dialog
    sent_at_start: list[Sent] = field(default_factory=list)


def pbx_out_request(
    flow: OutFlow, method: str, cseq: int, *, sdp: str | None = None, **kw: Any
) -> bytes:
    """An in-dialog request (or the 2xx ACK) from the PBX, the UAC of the PBX leg."""
    hop = _pbx_hop(f"<sip:{PBX_AGENT}@{PBX_HOST}:{PBX_PORT}>")
    return from_caller(hop, flow.pbx_invite, flow.answered, method, cseq, body=sdp or "", **kw)


def meta_out_request(flow: OutFlow, method: str, cseq: int, **kw: Any) -> bytes:
    """An in-dialog request from Meta (the UAS of the WhatsApp leg) to our Contact; a BYE
    carries ``x-wa-meta-call-duration`` and a Q.850 Reason (section 4)."""
    assert flow.meta_ok is not None
    their_to = flow.meta_ok.headers.get("To") or ""
    return from_callee(META_HOP, flow.meta_invite, their_to, method, cseq, **kw)


OUTBOUND_CONFIG: dict[str, Any] = {"whatsapp": {"default_number": BUSINESS}}


class OutboundHarness(Harness):
    """:class:`Harness` plus the PBX -> WhatsApp direction: Meta is the UAS and
    challenges with ``meta_digest`` (realm wa.meta.vc, qop=auth, opaque)."""

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any] | None = None,
        *,
        meta_algorithm: str = "MD5",
        **kwargs: Any,
    ) -> None:
        super().__init__(tmp_path, _merge(OUTBOUND_CONFIG, config or {}), **kwargs)
        self.meta_digest = DigestServer(
            b"meta-edge-secret-0123456789abcdef",
            META_REALM,
            algorithms=(meta_algorithm,),
            opaque="meta-opaque-1",
        )

    @property
    def meta_target(self) -> Target:
        proxy = self.cfg.whatsapp.meta_proxy
        return Target("tls", proxy.host, proxy.port)

    # Told apart by transport: everything toward Meta is TLS, the PBX leg is UDP/TCP.
    def to_meta(self, sent: Iterable[Sent]) -> list[Sent]:
        return [s for s in sent if s.target.transport == "tls"]

    def to_pbx(self, sent: Iterable[Sent]) -> list[Sent]:
        return [s for s in sent if s.target.transport != "tls"]

    def place_call(self, target: str = USER, **invite_kwargs: Any) -> OutFlow:
        """The PBX's INVITE; asserts an INVITE went to Meta and returns the flow."""
        before = set(self.calls.calls)
        data = pbx_invite(target, **invite_kwargs)
        self.from_pbx(data)
        sent = self.sent()
        new = [k for k in self.calls.calls if k not in before]
        assert len(new) == 1, [s.message for s in sent]
        call = self.calls.calls[new[0]]
        assert call.direction == "outbound"
        invites = [s for s in self.to_meta(sent) if isinstance(s.message, Request)]
        assert [s.request.method for s in invites] == ["INVITE"], sent
        bridge = call.bridge
        assert isinstance(bridge, FakeBridge)
        return OutFlow(
            request_of(data),
            call,
            invites[0].request,
            bridge,
            invites[0].target,
            sent_at_start=sent,
        )

    def meta_reply(self, flow: OutFlow, status: int, **kwargs: Any) -> list[Sent]:
        """Meta answers the latest INVITE; a 200 gets Meta's SDES answer unless given."""
        if status == 200 and "sdp" not in kwargs:
            kwargs["sdp"] = META_SDP
        self.from_meta(meta_response(flow.meta_invite, status, **kwargs))
        return self.sent()

    def meta_challenges(
        self, flow: OutFlow, *, status: int = 407, stale: bool = False
    ) -> list[Sent]:
        """Meta challenges the latest INVITE; ``flow.meta_invite`` follows a re-sent one."""
        now = self.scheduler.time()
        self.from_meta(
            meta_challenge(flow.meta_invite, self.meta_digest, now, status=status, stale=stale)
        )
        sent = self.sent()
        again = [
            s.request
            for s in self.to_meta(sent)
            if isinstance(s.message, Request) and s.message.method == "INVITE"
        ]
        if again:
            flow.meta_invite = again[-1]
        return sent

    def connect(self, flow: OutFlow, *, challenge: bool = True, ack: bool = True) -> list[Sent]:
        """407 answered, 180, 200 from Meta; then (with ``ack``) the PBX's ACK."""
        sent: list[Sent] = []
        if challenge:
            sent += self.meta_challenges(flow)
        sent += self.meta_reply(flow, 100)
        sent += self.meta_reply(flow, 180)
        sent += self.meta_reply(flow, 200)
        flow.meta_ok = response_of(meta_response(flow.meta_invite, 200, sdp=META_SDP))
        oks = [
            s.response
            for s in self.to_pbx(sent)
            if isinstance(s.message, Response) and s.message.status == 200
        ]
        assert len(oks) == 1, [s.message for s in sent]
        flow.answered = oks[0]
        if ack:
            self.from_pbx(pbx_out_request(flow, "ACK", flow.pbx_invite.cseq.seq))
            sent += self.sent()
        return sent

    def pbx_out(self, flow: OutFlow, method: str, **kwargs: Any) -> list[Sent]:
        flow.pbx_cseq += 1
        self.from_pbx(pbx_out_request(flow, method, flow.pbx_cseq, **kwargs))
        return self.sent()

    def meta_out(self, flow: OutFlow, method: str, **kwargs: Any) -> list[Sent]:
        flow.meta_cseq += 1
        self.from_meta(meta_out_request(flow, method, flow.meta_cseq, **kwargs))
        return self.sent()


def response_of(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg
