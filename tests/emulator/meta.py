"""An in-process emulator of WhatsApp's SIP side (Meta's edge ``wa.meta.vc``).

It behaves as docs/whatsapp-sip.md says Meta does, and records
every breach of Meta's rules by the gateway in ``CallResult.violations``
(tests assert that list is empty).

Role 1, user-initiated calls: :class:`MetaCaller` is Meta's UAC. It connects
over TLS to the gateway's ``whatsapp.listen`` and sends a Meta-shaped INVITE
(two Record-Route entries, ``outgoing:wacid.`` Call-ID, ``x-wa-meta-*`` headers,
SDES offer), answers the digest challenge, checks the 2xx, then exchanges
Opus over SRTP and hangs up (or waits for the gateway's BYE).

Role 2, business-initiated calls: :class:`MetaServer` is Meta's UAS. The
gateway's ``whatsapp.meta_proxy`` points at it; it challenges with 407,
checks the INVITE (Request-URI host, From host, no session timers, SDES
offer), answers 180/200 or fails on demand (400, 403 + Warning, 404, 408,
480, 486, 503, or never answers), exchanges media and hangs up with
``x-wa-meta-call-duration`` and a Q.850 Reason.

Both roles also listen on TLS with their own certificate (see
:mod:`tests.emulator.tlsutil`), reject clients that negotiate ALPN, answer
in-dialog re-INVITE/UPDATE with 500 (a violation: the gateway must never send
them to Meta), and never send RTP before the gateway has sent a valid SRTP
packet (Meta expects the business side to send first), dropping the call
after ``media_timeout`` seconds without gateway media.

WebRTC media mode (``media_mode="webrtc"``, section 7): ICE-lite and a DTLS-SRTP
server instead of SDES, in :mod:`tests.emulator.webrtc`; the hooks here choose
the endpoint, build and check the SDP, and turn its failures into BYE.

Simplifications (documented, deliberate):

- Role 1's Record-Route entries point back at the emulator's own listener, so
  the gateway's in-dialog requests (BYE) reach it through the route set and
  their Route headers and Request-URI are checked. The emulator's own ACK and
  BYE go straight over the TLS connection to the gateway without Route
  headers (Meta's proxies would strip their own entries on the way).
- One audio codec: the first non-event payload type of the answer.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import re
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.sip.auth import (
    AuthParseError,
    DigestServer,
    UnsupportedChallenge,
    VerifyResult,
    answer_challenge,
    parse_challenge,
    parse_credentials,
    select_challenge,
)
from gateway.sip.message import Request, Response, make_response
from gateway.sip.uri import SipUri, UriError, parse_address, parse_uri
from tests.emulator.result import CallResult, DtmfEvent, SipRecord
from tests.emulator.rtp import Codec, MediaEndpoint, MediaScript, measure_tone
from tests.emulator.sdp import (
    SUITES,
    Crypto,
    Media,
    Sdp,
    SdpError,
    build_meta_sdp,
    new_crypto,
    parse_sdp,
)
from tests.emulator.sipcore import (
    Message,
    SipConnection,
    SipEdge,
    new_branch,
    new_tag,
    render,
    response_lines,
    summary,
)
from tests.emulator.tlsutil import EmulatorTls, client_context, default_tls
from tests.emulator.webrtc import WEBRTC_FAILED, WebRtcEndpoint

__all__ = [
    "META_WARNINGS",
    "CallResult",
    "DtmfEvent",
    "MediaScript",
    "MetaCaller",
    "MetaServer",
    "SipRecord",
    "UasBehaviour",
    "measure_tone",
]

META_HOST = "wa.meta.vc"
META_ALLOW = "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"
META_UA = "Facebook SipGateway"
NORMAL_CLEARING = 'Q.850;cause=16;text="NORMAL_CLEARING"'
RTP_TIMEOUT = 'SIP;cause=408;text="RTP Timeout"'
ACK_TIMEOUT = 'SIP;cause=408;text="ACK Timeout"'
BAD_ANSWER = 'SIP;cause=488;text="Not Acceptable Here"'

#: ``Warning: 399 wa.meta.vc "<text>"`` texts for Meta's 403 reasons (section 4).
META_WARNINGS = {
    "no_permission": "No approved call permission from the recipient",
    "limit": "Connected call limit reached for this business-user pair",
    "host_mismatch": "From host does not match the SIP server configured for this number",
    "app_not_authorized": "App is not authorized to use SIP for this business phone number",
    "duplicate": "Duplicate call: a call between this business and user is already active",
    "bad_digest": "Invalid digest credentials",
    "payment": "Payment issue on the WhatsApp Business Account",
    "sdp_invalid": "SDP invalid",
}

E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
BSUID_RE = re.compile(r"[A-Z]{2}\.[0-9]{5,40}")
_OUR_PTS = {111: "opus", 126: "telephone-event", 8: "pcma", 0: "pcmu"}


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _uri_str(text: str) -> str:
    try:
        return str(parse_uri(text))
    except UriError:
        return text.strip()


def _route_uris(msg: Message, name: str) -> list[str]:
    try:
        return [str(a.uri) for a in msg.addresses(name)]
    except UriError:
        return ["<unparsable>"]


def _headers_dict(msg: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, v in msg.headers:
        key = n.lower()
        out[key] = f"{out[key]}, {v}" if key in out else v
    return out


def _wacid() -> str:
    # Meta's wacid is base64 with "==" padding (not a legal Call-ID word char, sent anyway).
    return "wacid." + base64.b64encode(b"\x1c\x18\x0b" + secrets.token_bytes(37)).decode()


def _session_timer_problems(msg: Message) -> list[str]:
    """Session-timer headers present (``Supported: timer`` counts only in requests)."""
    out = []
    if msg.headers.get("Session-Expires") is not None:
        out.append("Session-Expires")
    if msg.headers.get("Min-SE") is not None:
        out.append("Min-SE")
    for name in ("Supported", "Require") if isinstance(msg, Request) else ("Require",):
        if any(v.lower() == "timer" for v in msg.headers.get_all(name)):
            out.append(f"{name}: timer")
    return out


# ---------------------------------------------------------------------------
# Common call machinery


class _CallBase:
    """Dialog state, in-dialog request handling as Meta, and the media phase."""

    def __init__(self, edge: SipEdge, script: MediaScript, result: CallResult) -> None:
        self.edge = edge
        self.script = script
        self.result = result
        self.loop = asyncio.get_running_loop()
        self.media = MediaEndpoint(result, script)
        if script.media_mode == "webrtc":  # ICE-lite + DTLS-SRTP (tests/emulator/webrtc.py)
            self.media = WebRtcEndpoint(result, script)
            self.media.on_failure = self.media_failed
        self.local_tag = new_tag()
        self.remote_tag: str | None = None
        self.local_party = ""  # From/To value for our side, with our tag
        self.remote_party = ""  # with the gateway's tag
        self.remote_target = ""  # gateway's Contact URI
        self.send_route: list[str] = []  # Route values on requests we send
        # Opens the connection Meta's BYE goes on (None: the dialog's own connection).
        self.bye_connection: Callable[[], Awaitable[SipConnection]] | None = None
        self.expected_route: list[str] = []  # Route URIs the gateway's requests must carry
        self.local_contact_uri = ""
        self.local_cseq = secrets.randbelow(10000) + 1
        self.conn: SipConnection | None = None
        self.confirmed = False
        self.remote_bye = asyncio.Event()
        self.abort = asyncio.Event()
        self.abort_reason = NORMAL_CLEARING
        self.hangup_requested = asyncio.Event()
        self.bye_sent = False
        self.last_remote_cseq: int | None = None
        self.sender_stop = asyncio.Event()
        # branch -> (ACK seen, status): non-2xx finals to INVITEs that must be ACKed
        self.non2xx_acks: dict[str, tuple[asyncio.Event, int]] = {}

    # -- logging / sending -----------------------------------------------------
    def log(self, direction: str, msg: Message, raw: bytes) -> None:
        self.result.messages.append(
            SipRecord(direction, self.loop.time(), summary(msg), raw.decode("utf-8", "replace"))
        )

    def violation(self, text: str) -> None:
        self.result.violation(text)

    def send(self, conn: SipConnection, data: bytes) -> Message:
        return self.edge.send(conn, data, self)

    def respond(
        self,
        conn: SipConnection,
        req: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        record_route: Sequence[str] = (),
        body: bytes = b"",
    ) -> Response:
        resp = make_response(req, status, reason, to_tag=to_tag or self.local_tag)
        lines = response_lines(resp)
        if record_route:
            vias = sum(1 for n, _ in lines if n == "Via")
            lines[vias:vias] = [("Record-Route", rr) for rr in record_route]
        lines += list(extra)
        lines.append(("Server", self.edge.user_agent))
        if body:
            lines.append(("Content-Type", "application/sdp"))
        data = render(f"SIP/2.0 {resp.status} {resp.reason}", lines, body)
        with contextlib.suppress(ConnectionError):
            self.send(conn, data)
        return resp

    def on_stray_response(self, conn: SipConnection, resp: Response) -> None:
        pass

    # -- in-dialog requests from the gateway -----------------------------------
    def on_request(self, conn: SipConnection, req: Request) -> None:
        if req.method == "ACK":
            self.on_ack(conn, req)
            return
        if req.method == "CANCEL":
            self.on_cancel(conn, req)
            return
        try:
            to_tag, from_tag = req.to.tag, req.from_.tag
            cseq = req.cseq.seq
        except UriError:
            self.respond(conn, req, 400)
            return
        if to_tag is None:
            self.on_initial(conn, req)
            return
        wrong_from = self.remote_tag is not None and from_tag != self.remote_tag
        if to_tag != self.local_tag or wrong_from:
            self.violation(f"gateway sent {req.method} with tags that match no dialog")
            self.respond(conn, req, 481)
            return
        self.check_routing(req)
        if self.last_remote_cseq is not None and cseq <= self.last_remote_cseq:
            self.violation(f"gateway {req.method} CSeq {cseq} does not increase")
        self.last_remote_cseq = cseq
        if req.method == "BYE":
            if not self.confirmed:
                self.violation("gateway sent BYE before the dialog was confirmed")
            r = self.result
            if r.bye_from is None:
                r.bye_from = "gateway"
                r.bye_headers = _headers_dict(req)
                r.bye_reason = req.headers.get("Reason")
            self.respond(conn, req, 200)
            self.remote_bye.set()
            self.on_remote_bye()
        elif req.method in ("INVITE", "UPDATE"):
            self.violation(
                f"gateway sent {req.method} in the dialog: Meta answers 500 "
                "(no re-INVITE, UPDATE or session-timer refresh toward Meta)"
            )
            if req.method == "INVITE":
                self.non2xx_acks[req.top_via.branch or ""] = (asyncio.Event(), 500)
            self.respond(conn, req, 500)
        elif req.method == "OPTIONS":
            self.respond(conn, req, 200, extra=[("Allow", META_ALLOW)])
        else:
            self.violation(f"gateway sent {req.method} in the dialog; Meta allows {META_ALLOW}")
            self.respond(conn, req, 405, extra=[("Allow", META_ALLOW)])

    def check_routing(self, req: Request) -> None:
        """In-dialog request from the gateway: Request-URI = our Contact, Route = route set."""
        if _uri_str(req.uri) != self.local_contact_uri:
            self.violation(
                f"gateway {req.method} Request-URI {req.uri} is not Meta's Contact "
                f"{self.local_contact_uri}"
            )
        routes = _route_uris(req, "Route")
        if routes != self.expected_route:
            self.violation(
                f"gateway {req.method} Route {routes} is not the dialog's route set "
                f"{self.expected_route} (loose routing through Meta's Record-Route)"
            )

    def on_ack(self, conn: SipConnection, req: Request) -> None:
        self.ack_non2xx(req)

    def ack_non2xx(self, req: Request) -> bool:
        """True when ``req`` ACKs one of our non-2xx final responses."""
        pending = self.non2xx_acks.get(req.top_via.branch or "")
        if pending is None:
            return False
        pending[0].set()
        return True

    async def settle_acks(self) -> None:
        """Every non-2xx final response to an INVITE must be ACKed (also over TLS)."""
        pending = list(self.non2xx_acks.values())
        end = self.loop.time() + 2.0
        while not all(ev.is_set() for ev, _ in pending) and self.loop.time() < end:
            await asyncio.sleep(0.02)
        for ev, status in pending:
            if not ev.is_set():
                self.violation(f"gateway did not ACK Meta's {status} response")

    def on_cancel(self, conn: SipConnection, req: Request) -> None:
        self.respond(conn, req, 481)

    def on_initial(self, conn: SipConnection, req: Request) -> None:
        self.violation(f"gateway sent an out-of-dialog {req.method} with our Call-ID")
        self.respond(conn, req, 482 if req.method == "INVITE" else 481)

    def on_remote_bye(self) -> None:
        pass

    # -- requests we send in the dialog ----------------------------------------
    def dialog_request(
        self, method: str, extra: Sequence[tuple[str, str]] = (), cseq: int | None = None
    ) -> tuple[bytes, str]:
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        branch = new_branch()
        lines = [("Via", f"SIP/2.0/TLS {self.edge.host}:{self.edge.port};branch={branch}")]
        lines += [("Route", r) for r in self.send_route]
        lines += [
            ("Max-Forwards", "70"),
            ("From", self.local_party),
            ("To", self.remote_party),
            ("Call-ID", self.result.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method != "ACK":
            lines.append(("User-Agent", self.edge.user_agent))
        lines += list(extra)
        return render(f"{method} {self.remote_target} SIP/2.0", lines), branch

    async def send_bye(self, reason: str) -> None:
        """Meta hangs up: BYE with Reason and x-wa-meta-call-duration, expect 200."""
        r = self.result
        if self.bye_sent or self.remote_bye.is_set() or self.conn is None:
            return
        self.bye_sent = True
        started = r.connected_at if r.connected_at is not None else self.loop.time()
        extra = [
            ("Reason", reason),
            ("x-wa-meta-call-duration", str(int(self.loop.time() - started))),
        ]
        data, branch = self.dialog_request("BYE", extra)
        conn = self.conn
        if self.bye_connection is not None:
            try:
                conn = await asyncio.wait_for(self.bye_connection(), 10.0)
            except (OSError, TimeoutError) as exc:
                self.violation(f"cannot open a TLS connection for Meta's BYE: {exc!r}")
                return
        q = self.edge.open_txn(branch, "BYE")
        try:
            msg = self.send(conn, data)
            if r.bye_from is None:
                r.bye_from = "emulator"
                r.bye_headers = _headers_dict(msg)
                r.bye_reason = reason
            deadline = self.loop.time() + 5.0
            while True:
                _, resp = await asyncio.wait_for(q.get(), max(0.01, deadline - self.loop.time()))
                if resp.status >= 200:
                    break
            if resp.status != 200:
                self.violation(f"gateway answered Meta's BYE with {resp.status} {resp.reason}")
        except TimeoutError:
            self.violation("gateway did not answer Meta's BYE within 5 s")
        except ConnectionError:
            self.violation("TLS connection to the gateway closed before Meta's BYE")
        finally:
            self.edge.close_txn(branch, "BYE")

    # -- media -----------------------------------------------------------------
    def media_failed(self, reason: str) -> None:
        """WebRTC media broke one of Meta's rules (already a violation): fail, BYE."""
        self.result.failure = self.result.failure or reason
        self.abort_reason = WEBRTC_FAILED
        self.abort.set()

    async def _wait(self, events: Sequence[asyncio.Event], timeout: float) -> None:
        end = self.loop.time() + timeout
        while not any(e.is_set() for e in events):
            left = end - self.loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(0.02, left))

    async def media_phase(self, t_answer: float, emulator_hangs_up: bool, bye_wait: float) -> None:
        """Gateway sends first; then talk; Meta's media-timeout drop; hang-up."""
        s, r, media = self.script, self.result, self.media
        stops = [media.first_rx, self.remote_bye, self.abort]
        if isinstance(media, WebRtcEndpoint):  # ICE and DTLS first (their timers abort)
            setup = [media.ready, self.remote_bye, self.abort]
            await self._wait(setup, s.ice_timeout + s.dtls_timeout + 1.0)
        await self._wait(stops, s.first_packet_timeout)
        if media.first_rx_at is None:
            if self.remote_bye.is_set():
                r.failure = r.failure or "gateway hung up before sending any media"
                return
            if self.abort.is_set():
                await self.send_bye(self.abort_reason)
                return
            r.failure = r.failure or (
                f"no SRTP from the gateway within {s.first_packet_timeout:g} s of the 200 OK"
            )
            self.violation(
                "gateway did not send media first: Meta waits for the business side's "
                f"first SRTP packet and got none in {s.first_packet_timeout:g} s"
            )
            await self.send_bye(RTP_TIMEOUT)
            return
        r.first_packet_delay = max(0.0, media.first_rx_at - t_answer)
        since = "DTLS handshake" if media.ready_at is not None else "200 OK"
        delay = media.first_rx_at - (media.ready_at or t_answer)
        if delay > s.first_packet_max_delay:
            self.violation(
                f"gateway's first SRTP packet came {delay:.2f} s after the {since} "
                f"(Meta expects the business side to send first, at once; "
                f"limit {s.first_packet_max_delay:g} s)"
            )
        sender = asyncio.ensure_future(media.send_loop(self.sender_stop)) if s.send_media else None
        try:
            started = self.loop.time()
            if emulator_hangs_up and s.talk_seconds is not None:
                deadline = started + s.talk_seconds
            else:
                deadline = started + bye_wait
            while True:
                if self.remote_bye.is_set():
                    return
                if self.abort.is_set():
                    await self.send_bye(self.abort_reason)
                    return
                if self.hangup_requested.is_set():
                    await self.send_bye(NORMAL_CLEARING)
                    return
                now = self.loop.time()
                last = media.last_rx_at or now
                if now - last > s.media_timeout:
                    self.violation(
                        f"no media from the gateway for {s.media_timeout:g} s: Meta drops "
                        "the call (keep sending, silence frames if need be)"
                    )
                    await self.send_bye(RTP_TIMEOUT)
                    return
                if now >= deadline:
                    if not (emulator_hangs_up and s.talk_seconds is not None):
                        r.failure = r.failure or f"gateway did not hang up within {bye_wait:g} s"
                    await self.send_bye(NORMAL_CLEARING)
                    return
                await asyncio.sleep(0.02)
        finally:
            self.sender_stop.set()
            if sender is not None:
                with contextlib.suppress(Exception):
                    await sender

    def finish(self) -> None:
        self.sender_stop.set()
        self.media.close()
        self.result.ended_at = self.loop.time()
        edge, call_id = self.edge, self.result.call_id

        async def linger() -> None:  # late retransmissions still find the call
            await asyncio.sleep(2.0)
            if edge.calls.get(call_id) is self:
                del edge.calls[call_id]

        edge.spawn(linger())


def _check_common_response(call: _CallBase, resp: Response, req: Request) -> None:
    """Headers of any response to our INVITE: Vias, tags, Call-ID, CSeq, extensions."""
    got = [(v.branch, v.host, v.port) for v in resp.vias]
    want = [(v.branch, v.host, v.port) for v in req.vias]
    if got != want:
        call.violation(
            f"{resp.status} response Via headers {got} are not the INVITE's {want} "
            "(all Vias copied in order)"
        )
    if resp.from_.tag != req.from_.tag:
        call.violation(f"{resp.status} response changed the From tag")
    if resp.call_id != req.call_id:
        call.violation(f"{resp.status} response changed the Call-ID")
    if resp.cseq.seq != req.cseq.seq:
        call.violation(f"{resp.status} response CSeq {resp.cseq} is not the INVITE's")
    for v in resp.headers.get_all("Require"):
        call.violation(f"{resp.status} response has Require: {v} (Meta supports no extensions)")
    if resp.status >= 101 and resp.status < 300 and resp.to.tag is None:
        call.violation(f"{resp.status} response has no To tag")


# ---------------------------------------------------------------------------
# Role 1: user-initiated calls (the emulator is Meta's UAC)


def _default_meta_headers(wacid: str, caller: str) -> list[tuple[str, str]]:
    user_id = caller if BSUID_RE.fullmatch(caller) else "US.13491208655302741918"
    return [
        ("x-wa-meta-wacid", wacid),
        ("X-WA-Meta-User-Name", "Jane Doe"),
        ("x-wa-meta-user-country-code", "US"),
        ("X-Wa-Meta-Country-Code", "US"),
        ("x-wa-meta-phone-number-id", "106540352242922"),
        ("x_wa_meta_user_id", user_id),  # Meta varies case and even '-'/'_'
    ]


class MediaRelay(Protocol):
    """Something between Meta's media socket and the gateway's (tests/peers/impair.py):
    Meta's SDP declares :meth:`front`'s address, Meta sends to :attr:`address`."""

    @property
    def address(self) -> tuple[str, int]: ...

    def front(self, meta_media: tuple[str, int]) -> tuple[str, int]: ...

    def set_gateway(self, gateway_media: tuple[str, int]) -> None: ...


@dataclass
class _CallerParams:
    caller: str
    display: str | None
    headers: list[tuple[str, str]]
    offer_g711: bool
    suites: tuple[str, ...]
    hangup: str
    cancel_after: float | None
    answer_timeout: float
    gateway_bye_timeout: float
    wacid: str
    relay: MediaRelay | None = None


class _CallerCall(_CallBase):
    def __init__(self, owner: MetaCaller, p: _CallerParams, script: MediaScript) -> None:
        result = CallResult(role="caller", call_id=f"outgoing:{p.wacid}", wacid=p.wacid)
        super().__init__(owner.edge, script, result)
        self.owner = owner
        self.p = p
        self.ack_data: bytes | None = None
        self.offer: list[Crypto] = []
        self.cancel_sent = False
        self.cancel_task: asyncio.Task[None] | None = None
        self.got_final = False
        self.invite_sent_at = 0.0
        self.early_answer = ""

    # In-dialog requests arriving before we know the dialog are still ours.
    async def run(self) -> CallResult:
        r = self.result
        self.edge.calls[r.call_id] = self
        try:
            await self._run()
            await self.settle_acks()
        except Exception as exc:  # an emulator bug must be visible, not a hang
            r.failure = r.failure or f"emulator error: {exc!r}\n{traceback.format_exc()}"
        finally:
            if self.cancel_task is not None:
                self.cancel_task.cancel()
            self.finish()
        return r

    async def _run(self) -> None:
        o, p, r = self.owner, self.p, self.result
        edge = self.edge
        host, port = edge.host, edge.port
        rr = [v.format(host=host, port=port) for v in o.record_route]
        self.expected_route = [_uri_str(str(parse_address(v).uri)) for v in rr]
        user = p.caller
        contact_uri = f"sip:{user}@{host}:{port};transport=tls;ob"
        self.local_contact_uri = _uri_str(contact_uri)
        display = p.display
        if display is None and E164_RE.fullmatch(user):
            display = user[1:]
        disp = f'"{display}" ' if display else ""
        self.local_party = f"{disp}<sip:{user}@{o.meta_host}>;tag={self.local_tag}"
        to_value = f"<sip:{o.business_number}@{o.business_hostname}>"
        ruri_host = o.request_uri_host or o.gateway[0]
        ruri = (
            f"sip:{o.business_number}{o.request_uri_user_params}@{ruri_host}:{o.gateway[1]}"
            ";transport=tls"
        )
        await self.media.open(host)
        self.offer = [new_crypto(i + 1, s) for i, s in enumerate(p.suites)]
        sdp_host, sdp_port = host, self.media.port
        if p.relay is not None:  # Meta's SDP names the relay in front of our socket
            sdp_host, sdp_port = p.relay.front((host, self.media.port))
        g711 = [8, 0] if p.offer_g711 else None
        if isinstance(self.media, WebRtcEndpoint):
            offer = self.media.local_sdp(setup="actpass", g711=g711)
        else:
            offer = build_meta_sdp(
                address=sdp_host, port=sdp_port, cryptos=self.offer, ssrc=self.media.ssrc, g711=g711
            )
        r.offer_sdp = offer
        try:
            ctx = client_context(o.gateway_ca_file)
            conn = await asyncio.wait_for(
                edge.connect(o.gateway[0], o.gateway[1], ctx, o.gateway_server_name), 10.0
            )
        except (OSError, TimeoutError) as exc:
            r.failure = f"TLS connection to the gateway failed: {exc!r}"
            return
        self.conn = conn
        r.tls_version = conn.tls_version
        cseq = 1
        auth: tuple[str, str] | None = None
        challenged = False
        self.invite_sent_at = self.loop.time()
        while True:
            branch = new_branch()
            lines = [
                ("Via", f"SIP/2.0/TLS {host}:{port};branch={branch}"),
                ("Via", f"SIP/2.0/TLS {host}:{port};branch={new_branch()};x-meta-hop=2"),
                *[("Record-Route", v) for v in rr],
                ("Max-Forwards", "69"),
                ("From", self.local_party),
                ("To", to_value),
                ("Call-ID", r.call_id),
                ("CSeq", f"{cseq} INVITE"),
                ("Contact", f"<{contact_uri}>;isfocus"),
                ("Allow", META_ALLOW),
                ("User-Agent", META_UA),
                ("X-FB-External-Domain", META_HOST),
                *p.headers,
            ]
            if auth is not None:
                lines.append(auth)
            lines.append(("Content-Type", "application/sdp"))
            data = render(f"INVITE {ruri} SIP/2.0", lines, offer.encode())
            q = edge.open_txn(branch, "INVITE")
            try:
                invite = self.send(conn, data)
            except ConnectionError as exc:
                r.failure = f"could not send INVITE: {exc}"
                return
            assert isinstance(invite, Request)
            self.invite = invite
            r.invite = data.decode()
            if p.cancel_after is not None and self.cancel_task is None:
                self.cancel_task = asyncio.ensure_future(self._cancel_later(p.cancel_after))
            final = await self._await_final(q, invite)
            if final is None:
                edge.close_txn(branch, "INVITE")
                return
            r.status, r.reason = final.status, final.reason
            _check_common_response(self, final, invite)
            if final.status >= 300:
                self._ack_non2xx(conn, invite, final)
                edge.close_txn(branch, "INVITE")
            if final.status in (401, 407):
                name = "Proxy-Authenticate" if final.status == 407 else "WWW-Authenticate"
                values = final.headers.lines(name)
                r.challenges.extend(values)
                if challenged:
                    r.failure = (
                        f"challenged again ({final.status}) after answering the challenge: "
                        "credentials rejected"
                    )
                    return
                if o.password is None:
                    r.failure = f"challenged ({final.status}) but no password configured"
                    return
                try:
                    chosen = select_challenge([parse_challenge(v) for v in values])
                    creds = answer_challenge(
                        chosen, "INVITE", ruri, o.business_number.lstrip("+"), o.password
                    )
                except (AuthParseError, UnsupportedChallenge) as exc:
                    r.failure = f"cannot answer the gateway's challenge {values}: {exc}"
                    return
                challenged = True
                header = "Proxy-Authorization" if final.status == 407 else "Authorization"
                auth = (header, creds.to_header())
                cseq += 1
                continue
            if final.status >= 300:
                return
            break
        await self._confirmed(conn, invite, final)
        edge.close_txn(branch, "INVITE")
        if o.bye_new_connection:
            self.bye_connection = self._connect_first_hop
        if self.cancel_sent:
            # CANCEL crossed the 200: the call is up, so hang up at once.
            await self.send_bye(NORMAL_CLEARING)
            return
        if r.failure is None and self.media.codec is not None:
            await self.media_phase(
                r.connected_at or self.loop.time(), p.hangup == "emulator", p.gateway_bye_timeout
            )
        else:
            await self.send_bye(BAD_ANSWER)

    async def _connect_first_hop(self) -> SipConnection:
        """A new TLS connection to the first Route (or the gateway's Contact)."""
        hop = parse_address(self.send_route[0]).uri if self.send_route else None
        if not isinstance(hop, SipUri):
            hop = parse_uri(self.remote_target)
        assert isinstance(hop, SipUri)
        ctx = client_context(self.owner.gateway_ca_file)
        return await self.edge.connect(
            hop.host, hop.port or 5061, ctx, self.owner.gateway_server_name
        )

    async def _cancel_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.got_final:
            self._send_cancel()

    def _send_cancel(self) -> None:
        if self.cancel_sent or self.conn is None:
            return
        self.cancel_sent = True
        inv = self.invite
        top = inv.headers.get_all("Via")[0]
        lines = [
            ("Via", top),
            ("Max-Forwards", "70"),
            ("From", inv.headers.get("From") or ""),
            ("To", inv.headers.get("To") or ""),
            ("Call-ID", inv.call_id),
            ("CSeq", f"{inv.cseq.seq} CANCEL"),
            ("User-Agent", META_UA),
        ]
        branch = inv.top_via.branch or ""
        q = self.edge.open_txn(branch, "CANCEL")
        try:
            self.send(self.conn, render(f"CANCEL {inv.uri} SIP/2.0", lines))
        except ConnectionError:
            self.edge.close_txn(branch, "CANCEL")
            return

        async def await_200() -> None:
            try:
                while True:
                    _, resp = await asyncio.wait_for(q.get(), 5.0)
                    if resp.status >= 200:
                        break
                if resp.status != 200:
                    self.violation(f"gateway answered CANCEL with {resp.status}")
            except TimeoutError:
                self.violation("gateway did not answer CANCEL within 5 s")
            finally:
                self.edge.close_txn(branch, "CANCEL")

        self.edge.spawn(await_200())

    async def _await_final(
        self, q: asyncio.Queue[tuple[SipConnection, Response]], invite: Request
    ) -> Response | None:
        r, p = self.result, self.p
        deadline = self.invite_sent_at + p.answer_timeout
        cancel_deadline: float | None = None
        while True:
            now = self.loop.time()
            if self.cancel_sent and cancel_deadline is None:
                cancel_deadline = now + 5.0
            if cancel_deadline is not None and now >= cancel_deadline:
                r.failure = r.failure or "no final response (487) within 5 s of the CANCEL"
                return None
            if not self.cancel_sent and now >= deadline:
                r.failure = f"no final response within {p.answer_timeout:g} s"
                self._send_cancel()
                continue
            try:
                _, resp = await asyncio.wait_for(q.get(), 0.05)
            except TimeoutError:
                continue
            if resp.status < 200:
                _check_common_response(self, resp, invite)
                if resp.content_type == "application/sdp" and resp.body and not self.early_answer:
                    # An answer in an (unreliable) 18x is the answer: early media.
                    self.early_answer = resp.body.decode("utf-8", "replace")
                    self.result.answer_sdp = self.early_answer
                    self._setup_media(self.early_answer)
                continue
            if resp.status not in (401, 407):
                self.got_final = True
            return resp

    def _ack_non2xx(self, conn: SipConnection, invite: Request, resp: Response) -> None:
        lines = [
            ("Via", invite.headers.get_all("Via")[0]),
            ("Max-Forwards", "70"),
            ("From", invite.headers.get("From") or ""),
            ("To", resp.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.seq} ACK"),
        ]
        with contextlib.suppress(ConnectionError):
            self.send(conn, render(f"ACK {invite.uri} SIP/2.0", lines))

    async def _confirmed(self, conn: SipConnection, invite: Request, resp: Response) -> None:
        """2xx: strict checks, ACK (directly on the connection), media set-up."""
        r = self.result
        r.connected_at = self.loop.time()
        got_rr = [v.strip() for v in resp.headers.get_all("Record-Route")]
        want_rr = [v.strip() for v in invite.headers.get_all("Record-Route")]
        above = got_rr[: len(got_rr) - len(want_rr)]  # entries of proxies past Meta
        if got_rr[len(above) :] != want_rr or (above and not self.owner.via_proxy):
            self.violation(
                f"2xx Record-Route {got_rr} is not Meta's {want_rr} unchanged and in order "
                "(Meta's ACK would never arrive)"
            )
        else:
            # Meta's own entries are its own hops; the proxy's are the route onward.
            self.send_route = list(reversed(above))
        contacts = resp.addresses("Contact")
        if len(contacts) != 1 or not isinstance(contacts[0].uri, SipUri):
            self.violation(f"2xx must carry exactly one SIP Contact, got {len(contacts)}")
            r.failure = "2xx without a usable Contact"
            self.remote_target = invite.uri
        else:
            cu = contacts[0].uri
            assert isinstance(cu, SipUri)
            first = parse_address(self.send_route[0]).uri if self.send_route else cu
            if not isinstance(first, SipUri) or (
                first.scheme != "sips" and first.transport != "tls"
            ):
                self.violation(f"2xx first hop {first} is not reachable over TLS (transport=tls)")
            self.remote_target = str(cu)
        for item in _session_timer_problems(resp):
            self.violation(f"2xx carries {item}: no session timers toward Meta")
        self.remote_tag = resp.to.tag
        self.remote_party = resp.headers.get("To") or ""
        self.confirmed = True
        ack, _ = self.dialog_request("ACK", cseq=invite.cseq.seq)
        self.ack_data = ack
        with contextlib.suppress(ConnectionError):
            self.send(conn, ack)
        has_sdp = resp.content_type == "application/sdp" and bool(resp.body)
        body = resp.body.decode("utf-8", "replace") if has_sdp else ""
        if self.early_answer:
            if body and body != self.early_answer:
                self.violation("2xx SDP differs from the answer already given in the 18x")
            return  # media was set up from the early answer
        if not body:
            self.violation("2xx has no SDP answer (application/sdp)")
            r.failure = r.failure or "no SDP answer"
            return
        r.answer_sdp = body
        self._setup_media(body)

    def on_stray_response(self, conn: SipConnection, resp: Response) -> None:
        if resp.cseq.method == "INVITE" and 200 <= resp.status < 300 and self.ack_data:
            with contextlib.suppress(ConnectionError):
                self.send(conn, self.ack_data)  # 2xx retransmission: ACK again

    def _setup_media(self, text: str) -> None:
        r = self.result
        try:
            sdp = parse_sdp(text)
        except SdpError as exc:
            self.violation(f"answer SDP unreadable: {exc}")
            r.failure = r.failure or "unreadable SDP answer"
            return
        for prob in sdp.problems:
            self.violation(f"answer SDP: {prob}")
        if len(sdp.media) != 1:
            self.violation(f"answer SDP has {len(sdp.media)} m= lines; the offer had 1")
        m = sdp.audio()
        if m is None:
            r.failure = r.failure or "gateway rejected the audio stream (no m=audio with a port)"
            return
        webrtc = self.media if isinstance(self.media, WebRtcEndpoint) else None
        keys = None
        if webrtc is not None:
            fatal = webrtc.accept(sdp, m, answer=True, offer_mid="0")
            if fatal is not None:
                self.violation(fatal)
                r.failure = r.failure or fatal
                return
        elif (keys := self._sdes_keys(m)) is None:
            return
        codec = self._codec_from(m)
        if codec is None:
            r.failure = r.failure or "no usable audio codec in the answer"
            return
        if not m.has("rtcp-mux"):
            self.violation("answer lacks a=rtcp-mux (Meta multiplexes RTCP on the RTP port)")
        if m.direction != "sendrecv":
            self.violation(f"answer direction is {m.direction}, expected sendrecv")
        if m.connection is None or not _is_ip(m.connection):
            r.failure = r.failure or f"answer c= address {m.connection!r} unusable"
            return
        if webrtc is not None:  # keys come from DTLS on the nominated pair
            webrtc.start(codec, m.ssrcs)
            return
        assert keys is not None
        tx, chosen = keys
        remote = (m.connection, m.port)
        relay = self.p.relay
        if relay is not None:  # we send to the relay, which sends on to the gateway
            relay.set_gateway(remote)
            remote = relay.address
        self.media.configure(
            tx=tx,
            rx=chosen,
            remote=remote,
            codec=codec,
            declared_remote_ssrcs=m.ssrcs,
        )

    def _sdes_keys(self, m: Media) -> tuple[Crypto, Crypto] | None:
        """SDES answer: (our offered Crypto, the gateway's); None when unusable (failure set)."""
        r = self.result
        if m.proto != "RTP/SAVP":
            self.violation(f"answer m=audio proto {m.proto}; Meta's SDES offer is RTP/SAVP")
        cryptos = m.cryptos
        if len(cryptos) != 1:
            self.violation(f"answer must have exactly one a=crypto line, has {len(cryptos)}")
        offered = {c.tag: c for c in self.offer}
        chosen = next((c for c in cryptos if c.tag in offered), None)
        if chosen is None:
            r.failure = r.failure or "answer has no a=crypto matching an offered tag"
            self.violation("answer a=crypto tag matches none of Meta's offered tags")
            return None
        tx = offered[chosen.tag]
        if chosen.suite != tx.suite:
            self.violation(
                f"answer a=crypto:{chosen.tag} suite {chosen.suite} differs from the "
                f"offered {tx.suite}"
            )
            r.failure = r.failure or "crypto suite mismatch"
            return None
        if chosen.key == tx.key:
            self.violation("answer reuses Meta's SRTP key instead of its own")
        r.suite = chosen.suite
        return tx, chosen

    def _codec_from(self, m: Media) -> Codec | None:
        maps = m.rtpmaps
        offered = [111, 126] + ([8, 0] if self.p.offer_g711 else [])
        for pt in m.payload_types:
            if pt not in offered:
                self.violation(f"answer payload type {pt} was not offered")
        te_pt: int | None = None
        audio: Codec | None = None
        for pt in m.payload_types:
            rm = maps.get(pt)
            if rm is None or pt not in offered:
                continue
            name = rm.encoding.lower()
            if _OUR_PTS.get(pt) != name:
                self.violation(
                    f"answer maps payload type {pt} to {rm.name}; the offer said {_OUR_PTS.get(pt)}"
                )
                continue
            if name == "telephone-event":
                if rm.clock != 8000:
                    self.violation(f"answer telephone-event clock {rm.clock}: Meta uses 8000 only")
                te_pt = pt
            elif audio is None:
                if name == "opus":
                    if rm.name != "opus/48000/2":
                        self.violation(f"answer Opus rtpmap {rm.name}, must be opus/48000/2")
                    bitrate = 20000
                    fm = re.search(r"maxaveragebitrate=(\d+)", m.fmtp.get(pt, ""))
                    if fm:
                        bitrate = max(6000, min(int(fm.group(1)), 64000))
                    audio = Codec("opus", pt, 48000, bitrate=bitrate)
                else:
                    audio = Codec(name, pt, 8000)
        if audio is None:
            return None
        if te_pt is None and self.script.dtmf:
            self.violation("answer has no telephone-event/8000: DTMF cannot reach the IVR")
        audio.te_pt = te_pt
        return audio


class MetaCaller:
    """Meta's side of user-initiated calls: connects to the gateway and calls a business number.

    ``record_route`` values may use ``{host}`` and ``{port}`` for the
    emulator's listener; the default pair routes in-dialog requests back to it.
    Use it as ``async with MetaCaller(...) as caller`` for several calls, or
    just ``await MetaCaller(...).call(...)`` (listener started and stopped
    around the call).
    """

    DEFAULT_RECORD_ROUTE = (
        "<sip:{host}:{port};transport=tls;lr>",
        "<sip:{host}:{port};transport=tls;lr;x-meta-hop=2>",
    )

    def __init__(
        self,
        gateway: tuple[str, int],
        business_number: str = "+15550001111",
        password: str | None = None,
        *,
        tls: EmulatorTls | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        business_hostname: str = "sip.example.com",
        request_uri_host: str | None = None,
        request_uri_user_params: str = "",
        record_route: Sequence[str] = DEFAULT_RECORD_ROUTE,
        gateway_ca_file: Path | None = None,
        gateway_server_name: str | None = None,
        meta_host: str = META_HOST,
        reject_alpn: bool = True,
        via_proxy: bool = False,
        bye_new_connection: bool = False,
    ) -> None:
        self.gateway = gateway
        # ``gateway`` is a SIP proxy in front of gateway instances: its Record-Route
        # entries above Meta's own in the 2xx are allowed and make the route set.
        self.via_proxy = via_proxy
        # Meta's BYE goes over a new TLS connection to the first hop of the route set
        # (as Meta does when its connection is gone), not the INVITE's connection.
        self.bye_new_connection = bye_new_connection
        self.business_number = business_number
        self.password = password
        self.tls = tls or default_tls()
        self.business_hostname = business_hostname
        self.request_uri_host = request_uri_host
        self.request_uri_user_params = request_uri_user_params
        self.record_route = tuple(record_route)
        self.gateway_ca_file = gateway_ca_file
        self.gateway_server_name = gateway_server_name or business_hostname  # SNI, as Meta
        self.meta_host = meta_host
        self.edge = SipEdge(
            self.tls, listen_host, listen_port, reject_alpn=reject_alpn, user_agent=META_UA
        )
        self._started = False
        self.results: list[CallResult] = []

    @property
    def port(self) -> int:
        return self.edge.port

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def violations(self) -> list[str]:
        """Connection-level violations (ALPN offered, unparsable messages)."""
        return self.edge.violations

    async def start(self) -> None:
        if not self._started:
            await self.edge.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self.edge.close()
            self._started = False

    async def __aenter__(self) -> MetaCaller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        caller: str = "+12195550714",
        display: str | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        extra_headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        offer_g711: bool = False,
        suites: Sequence[str] = ("AES_CM_128_HMAC_SHA1_80",),
        tone_hz: float | None = 440.0,
        talk_seconds: float = 3.0,
        send_media: bool = True,
        dtmf: str = "",
        dtmf_delay: float = 1.0,
        hangup: str = "emulator",
        cancel_after: float | None = None,
        answer_timeout: float = 10.0,
        gateway_bye_timeout: float = 30.0,
        media_timeout: float = 20.0,
        first_packet_timeout: float = 5.0,
        first_packet_max_delay: float = 1.0,
        decode_rate: int = 48000,
        encode_rate: int = 48000,
        source_pcm: bytes | None = None,
        opus_fec: bool = True,
        opus_loss_perc: int = 10,
        media_relay: MediaRelay | None = None,
        media_mode: str = "sdes",
        ice_timeout: float = 10.0,
        dtls_timeout: float = 10.0,
        dtls_profiles: Sequence[str] = ("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"),
        webrtc_fault: str = "",
    ) -> CallResult:
        """Place one call from WhatsApp user ``caller`` (+E.164 or BSUID); see CallResult.

        ``source_pcm`` (16-bit mono at ``encode_rate``) is sent instead of the tone;
        ``media_relay`` (tests/peers/impair.py) is put between our media and the gateway's.
        ``media_mode="webrtc"``: Meta's WebRTC offer (ICE-lite, DTLS-SRTP; README.md).
        """
        if hangup not in ("emulator", "gateway"):
            raise ValueError("hangup must be 'emulator' or 'gateway'")
        if media_mode not in ("sdes", "webrtc"):
            raise ValueError("media_mode must be 'sdes' or 'webrtc'")
        if media_mode == "webrtc" and media_relay is not None:
            raise ValueError("media_relay works in SDES mode only")
        for s in suites:
            if s not in SUITES:
                raise ValueError(f"unknown SRTP suite {s}")
        hdrs = list(headers.items() if isinstance(headers, Mapping) else headers or [])
        wacid = (
            next((v for n, v in hdrs if n.lower().replace("_", "-") == "x-wa-meta-wacid"), None)
            or _wacid()
        )
        if headers is None:
            hdrs = _default_meta_headers(wacid, caller)
        hdrs += list(extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers)
        params = _CallerParams(
            caller=caller,
            display=display,
            headers=hdrs,
            offer_g711=offer_g711,
            suites=tuple(suites),
            hangup=hangup,
            cancel_after=cancel_after,
            answer_timeout=answer_timeout,
            gateway_bye_timeout=gateway_bye_timeout,
            wacid=wacid,
            relay=media_relay,
        )
        script = MediaScript(
            tone_hz=tone_hz,
            talk_seconds=talk_seconds,
            send_media=send_media,
            dtmf=dtmf,
            dtmf_delay=dtmf_delay,
            media_timeout=media_timeout,
            first_packet_timeout=first_packet_timeout,
            first_packet_max_delay=first_packet_max_delay,
            decode_rate=decode_rate,
            encode_rate=encode_rate,
            source_pcm=source_pcm,
            opus_fec=opus_fec,
            opus_loss_perc=opus_loss_perc,
            media_mode=media_mode,
            ice_timeout=ice_timeout,
            dtls_timeout=dtls_timeout,
            dtls_profiles=tuple(dtls_profiles),
            webrtc_fault=webrtc_fault,
        )
        started_here = not self._started
        await self.start()
        try:
            result = await _CallerCall(self, params, script).run()
        finally:
            if started_here:
                await self.close()
        self.results.append(result)
        return result


# ---------------------------------------------------------------------------
# Role 2: business-initiated calls (the emulator is Meta's UAS)


@dataclass
class UasBehaviour(MediaScript):
    """How :class:`MetaServer` treats one incoming INVITE (plus the media script)."""

    challenge: bool = True
    challenge_status: int = 407  # 407 Proxy-Authenticate (Meta) or 401 WWW-Authenticate
    algorithm: str = "MD5"  # or "SHA-256"
    fail_status: int | None = None  # 400, 403, 404, 408, 480, 486, 503, ...
    warning: str | None = None  # 403 reason: a META_WARNINGS key or literal text
    fail_after_auth: bool = True
    ring: bool = True  # send 180 Ringing
    ring_seconds: float = 0.3
    never_answer: bool = False
    hangup: str = "meta"  # "meta": BYE after talk_seconds; "gateway": wait for its BYE
    gateway_bye_timeout: float = 30.0
    accept_suites: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)
    allow_g711: bool = False  # the number has PCMA/PCMU enabled at Meta
    ack_timeout: float = 5.0
    auth_wait: float = 10.0  # for the re-sent INVITE after 407
    call_timeout: float = 120.0  # never_answer calls end after this


@dataclass
class _OfferChoice:
    rx: Crypto | None  # None in WebRTC mode (keys come from DTLS)
    codec: Codec
    remote: tuple[str, int]
    ssrcs: list[int] = field(default_factory=list)
    g711: list[int] = field(default_factory=list)


class _ServerCall(_CallBase):
    def __init__(
        self, server: MetaServer, conn: SipConnection, invite: Request, behaviour: UasBehaviour
    ) -> None:
        result = CallResult(role="server", call_id=invite.call_id)
        super().__init__(server.edge, behaviour, result)
        self.server = server
        self.b = behaviour
        self.conn = conn
        self.invite = invite
        self.invites: asyncio.Queue[tuple[SipConnection, Request]] = asyncio.Queue()
        self.cancelled = asyncio.Event()
        self.acked = asyncio.Event()
        self.final_sent = False
        self.last_response: bytes | None = None
        self.invite_cseq = 0
        self.req_conn: dict[int, SipConnection] = {id(invite): conn}
        self.in_auth = False

    async def run(self) -> None:
        r = self.result
        try:
            await self._run()
            await self.settle_acks()
        except Exception as exc:
            r.failure = r.failure or f"emulator error: {exc!r}\n{traceback.format_exc()}"
        finally:
            self.finish()
            self.server._finished(r)

    # -- responses -------------------------------------------------------------
    def _final(
        self,
        req: Request,
        status: int,
        warning: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        tag: str | None = None,
    ) -> None:
        lines = list(extra)
        if warning is not None:
            text = META_WARNINGS.get(warning, warning)
            lines.append(("Warning", f'399 {META_HOST} "{text}"'))
        if status >= 300:
            self.non2xx_acks[req.top_via.branch or ""] = (asyncio.Event(), status)
        self.respond(self.conn_for(req), req, status, to_tag=tag or self.local_tag, extra=lines)
        self.final_sent = True
        self.result.status = status
        self.result.reason = META_WARNINGS.get(warning or "", warning or "")

    def conn_for(self, req: Request) -> SipConnection:
        conn = self.req_conn.get(id(req), self.conn)
        assert conn is not None
        return conn

    # -- incoming requests during set-up ---------------------------------------
    def on_initial(self, conn: SipConnection, req: Request) -> None:
        if req.method != "INVITE":
            self.violation(f"out-of-dialog {req.method} with a call's Call-ID")
            self.respond(conn, req, 481)
            return
        if req.top_via.branch == self.invite.top_via.branch:
            return  # retransmission over TLS: ignore (the answer is on its way)
        if not self.in_auth:
            self.violation("gateway sent a second INVITE with the same Call-ID")
            self.respond(conn, req, 500)
            return
        self.req_conn[id(req)] = conn
        self.respond(conn, req, 100)
        self.invites.put_nowait((conn, req))

    def on_ack(self, conn: SipConnection, req: Request) -> None:
        if self.ack_non2xx(req):
            return
        if req.to.tag != self.local_tag:
            self.violation("ACK with a To tag that matches no response of ours")
            return
        if req.cseq.seq != self.invite_cseq:
            self.violation(f"ACK CSeq {req.cseq.seq} is not the INVITE's {self.invite_cseq}")
        self.check_routing(req)
        self.acked.set()

    def on_cancel(self, conn: SipConnection, req: Request) -> None:
        if req.top_via.branch != self.invite.top_via.branch:
            self.respond(conn, req, 481)
            return
        self.respond(conn, req, 200)
        if not self.final_sent:
            self.cancelled.set()
            self._final(self.invite, 487)

    def on_remote_bye(self) -> None:
        if not self.final_sent:
            self._final(self.invite, 487)

    # -- the call ----------------------------------------------------------------
    async def _run(self) -> None:
        b, r, server = self.b, self.result, self.server
        req = self.invite
        conn = self.conn
        assert conn is not None
        r.invite = self.result.messages[-1].text if self.result.messages else ""
        r.tls_version = conn.tls_version
        self.respond(conn, req, 100)
        status = self._check_request_uri(req)
        if status is not None:
            self._final(req, status)
            return
        number = self._from_number(req)
        if number is None:
            self._final(req, 400)
            return
        if not b.fail_after_auth and b.fail_status is not None:
            self._final(req, b.fail_status, b.warning)
            return
        if b.challenge:
            self.in_auth = True
            try:
                authed = await self._authenticate(req, number)
            finally:
                self.in_auth = False
            if authed is None:
                return
            req = authed
            self.invite = req
            self.conn = conn = self.conn_for(req)
        self.invite_cseq = req.cseq.seq
        r.invite = next((m.text for m in reversed(r.messages) if m.summary == "INVITE"), r.invite)
        self._check_headers(req)
        host = req.from_.uri.host if isinstance(req.from_.uri, SipUri) else ""
        bh = server.business_hostname.lower()
        if not (bh == host.lower() or bh.endswith("." + host.lower())):
            self.violation(
                f"From host {host} is not the number's SIP server {server.business_hostname} "
                "(or a parent domain): Meta answers 403"
            )
            self._final(req, 403, "host_mismatch")
            return
        if req.content_type != "application/sdp" or not req.body:
            self.violation("INVITE without an SDP offer (Meta needs the offer in the INVITE)")
            self._final(req, 403, "sdp_invalid")
            return
        r.offer_sdp = req.body.decode("utf-8", "replace")
        choice = self._check_offer(r.offer_sdp)
        if choice is None:
            self._final(req, 403, "sdp_invalid")
            return
        if b.fail_status is not None:
            self._final(req, b.fail_status, b.warning)
            return
        # Dialog state: UAS side.
        self.remote_tag = req.from_.tag
        self.remote_party = req.headers.get("From") or ""
        self.local_party = f"{req.headers.get('To')};tag={self.local_tag}"
        contact = req.contact
        self.remote_target = str(contact.uri) if contact is not None else req.uri
        self.send_route = req.headers.get_all("Record-Route")
        port = self.edge.port
        ch = server.contact_host
        own_rr = [
            f"<sip:{ch}:{port};transport=tls;lr;x-meta-hop=2>",
            f"<sip:{ch}:{port};transport=tls;lr>",
        ]
        # What reaches Meta after any proxy of the business consumed its own entries.
        self.expected_route = [_uri_str(str(parse_address(v).uri)) for v in reversed(own_rr)]
        # RFC 3261 12.1.1: the dialog-creating responses carry the INVITE's Record-Route
        # (a proxy in front of the gateway, e.g. Kamailio) under Meta's own entries.
        rr = own_rr + self.send_route
        user = req.parsed_uri.user_number or ""
        contact_uri = f"sip:{user}@{ch}:{port};transport=tls;ob"
        self.local_contact_uri = _uri_str(contact_uri)
        dialog_headers = [
            ("Contact", f"<{contact_uri}>;isfocus"),
            ("Allow", META_ALLOW),
            ("Supported", "timer"),
        ]
        # Answer SDP (Meta mirrors the offer's payload type numbers).
        await self.media.open(self.edge.host)
        opus_pt = choice.codec.pt if choice.codec.name == "opus" else None
        webrtc = self.media if isinstance(self.media, WebRtcEndpoint) else None
        tx = None
        if webrtc is not None:
            mid = webrtc.remote_webrtc.mid if webrtc.remote_webrtc else None
            answer = webrtc.local_sdp(
                setup="passive",
                opus_pt=opus_pt,
                te_pt=choice.codec.te_pt,
                g711=choice.g711,
                mid=mid or "0",
            )
        else:
            assert choice.rx is not None
            tx = new_crypto(choice.rx.tag, choice.rx.suite)
            answer = build_meta_sdp(
                address=self.edge.host,
                port=self.media.port,
                cryptos=[tx],
                ssrc=self.media.ssrc,
                opus_pt=opus_pt,
                te_pt=choice.codec.te_pt,
                g711=choice.g711,
            )
            r.suite = choice.rx.suite
        r.answer_sdp = answer
        if b.ring:
            self.respond(conn, req, 180, record_route=rr, extra=dialog_headers)
        if b.never_answer:
            await self._wait([self.cancelled, conn.closed, self.remote_bye], b.call_timeout)
            if not self.final_sent:
                self._final(req, 480)
            r.failure = None if self.cancelled.is_set() else "never answered"
            return
        await self._wait([self.cancelled, conn.closed], b.ring_seconds)
        if self.cancelled.is_set() or self.final_sent:
            return
        if webrtc is not None:  # answer the gateway's checks from the 200 OK on
            webrtc.start(choice.codec, choice.ssrcs)
        # 200 OK, retransmitted until the ACK (RFC 3261 13.3.1.4, also over TLS).
        resp = self.respond(
            conn, req, 200, record_route=rr, extra=dialog_headers, body=answer.encode()
        )
        del resp
        self.final_sent = True
        self.confirmed = True
        r.status, r.reason = 200, "OK"
        t_answer = self.loop.time()
        r.connected_at = t_answer
        if tx is not None and choice.rx is not None:
            self.media.configure(
                tx=tx,
                rx=choice.rx,
                remote=choice.remote,
                codec=choice.codec,
                declared_remote_ssrcs=choice.ssrcs,
            )
        server._answered(r.call_id)
        ack_task = self.edge.spawn(self._retransmit_200(conn, req, rr, dialog_headers, answer))
        try:
            await self.media_phase(t_answer, b.hangup == "meta", b.gateway_bye_timeout)
        finally:
            ack_task.cancel()

    async def _retransmit_200(
        self,
        conn: SipConnection,
        req: Request,
        rr: list[str],
        dialog_headers: list[tuple[str, str]],
        answer: str,
    ) -> None:
        interval = 0.5
        deadline = self.loop.time() + self.b.ack_timeout
        while not self.acked.is_set():
            left = deadline - self.loop.time()
            if left <= 0:
                self.violation(
                    f"no ACK for Meta's 200 OK within {self.b.ack_timeout:g} s "
                    "(Record-Route/Contact handling?): Meta drops the call"
                )
                self.abort_reason = ACK_TIMEOUT
                self.abort.set()
                return
            await self._wait([self.acked], min(interval, left))
            if not self.acked.is_set() and deadline - self.loop.time() > 0:
                self.respond(
                    conn, req, 200, record_route=rr, extra=dialog_headers, body=answer.encode()
                )
                interval = min(interval * 2, 4.0)

    # -- checks --------------------------------------------------------------------
    def _check_request_uri(self, req: Request) -> int | None:
        try:
            uri = req.parsed_uri
        except UriError:
            self.violation(f"Request-URI {req.uri} is not a SIP URI")
            return 404
        if _is_ip(uri.host):
            self.violation(f"Request-URI {req.uri} has an IP address host: Meta answers 404")
            return 404
        user = uri.user_number or ""
        if not (E164_RE.fullmatch(user) or BSUID_RE.fullmatch(user)):
            self.violation(f"Request-URI user {user!r} is neither +E.164 nor a BSUID")
            return 404
        if uri.host.lower() not in self.server.ruri_hosts:
            self.violation(f"Request-URI host {uri.host} is not {'/'.join(self.server.ruri_hosts)}")
        if uri.scheme != "sips" and uri.transport not in (None, "tls"):
            self.violation(f"Request-URI {req.uri} asks for transport {uri.transport}")
        to_user = req.to.uri.user_number if isinstance(req.to.uri, SipUri) else None
        if to_user != user:
            self.violation(f"To user {to_user!r} differs from the Request-URI user {user!r}")
        return None

    def _from_number(self, req: Request) -> str | None:
        uri = req.from_.uri
        user = uri.user_number if isinstance(uri, SipUri) else None
        if user is None or not E164_RE.fullmatch(user):
            self.violation(f"From user {user!r} is not the business number as +E.164")
            return None
        if user not in self.server.numbers:
            self.violation(f"From number {user} is not a business number known to Meta")
            return None
        return user

    def _check_headers(self, req: Request) -> None:
        for item in _session_timer_problems(req):
            self.violation(f"INVITE carries {item}: no session timers toward Meta")
        for v in req.headers.get_all("Require"):
            self.violation(f"INVITE has Require: {v} (Meta supports no extensions)")
        if req.top_via.transport != "TLS":
            self.violation(f"INVITE top Via transport {req.top_via.transport}, expected TLS")
        if req.headers.get("Max-Forwards") is None:
            self.violation("INVITE lacks Max-Forwards")
        contact = req.contact
        # Meta's in-dialog requests go to the first Record-Route entry (a proxy in front
        # of the gateway), else to the Contact: that first hop must take TLS.
        rr = req.headers.get_all("Record-Route")
        first = parse_address(rr[0]).uri if rr else contact.uri if contact else None
        if contact is None or not isinstance(contact.uri, SipUri):
            self.violation("INVITE lacks a SIP Contact")
        elif not isinstance(first, SipUri) or (first.scheme != "sips" and first.transport != "tls"):
            what = "Record-Route" if rr else "Contact"
            self.violation(f"INVITE {what} {first} is not reachable over TLS")

    def _check_offer(self, text: str) -> _OfferChoice | None:
        b = self.b
        try:
            sdp: Sdp = parse_sdp(text)
        except SdpError as exc:
            self.violation(f"offer SDP unreadable: {exc}")
            return None
        for prob in sdp.problems:
            self.violation(f"offer SDP: {prob}")
        if len(sdp.media) != 1:
            self.violation(f"offer SDP has {len(sdp.media)} m= lines; Meta's leg is audio only")
        m = sdp.audio()
        if m is None:
            self.violation("offer SDP has no usable m=audio")
            return None
        rx = None
        if isinstance(self.media, WebRtcEndpoint):
            fatal = self.media.accept(sdp, m, answer=False)
            if fatal is not None:  # e.g. SDES offered to a number in DTLS mode
                self.violation(fatal)
                return None
        elif m.proto != "RTP/SAVP":
            self.violation(f"offer m=audio proto {m.proto}: SDES mode needs RTP/SAVP")
            return None
        elif (rx := next((c for c in m.cryptos if c.suite in b.accept_suites), None)) is None:
            self.violation(f"offer has no a=crypto with {', '.join(b.accept_suites)}")
            return None
        if m.connection is None or not _is_ip(m.connection):
            self.violation(f"offer c= address {m.connection!r} is not an IP address")
            return None
        maps = m.rtpmaps
        opus = te = None
        g711: list[int] = []
        for pt in m.payload_types:
            rm = maps.get(pt)
            if rm is None:
                continue
            enc = rm.encoding.lower()
            if enc == "opus":
                if rm.name != "opus/48000/2":
                    self.violation(f"offer Opus rtpmap {rm.name}, must be opus/48000/2 (RFC 7587)")
                opus = opus if opus is not None else pt
            elif enc == "telephone-event":
                if rm.clock != 8000:
                    self.violation(
                        f"offer telephone-event/{rm.clock}: Meta uses telephone-event/8000 only"
                    )
                elif te is None:
                    te = pt
            elif enc in ("pcmu", "pcma") and rm.clock == 8000 and not g711:
                g711 = [pt]
        if te is None and b.dtmf:
            self.violation("offer has no telephone-event/8000: DTMF cannot be exchanged")
        if not m.has("rtcp-mux"):
            self.violation("offer lacks a=rtcp-mux (Meta multiplexes RTCP on the RTP port)")
        if m.direction != "sendrecv":
            self.violation(f"offer direction is {m.direction}, expected sendrecv")
        if opus is not None:
            bitrate = 20000
            fm = re.search(r"maxaveragebitrate=(\d+)", m.fmtp.get(opus, ""))
            if fm:
                bitrate = max(6000, min(int(fm.group(1)), 64000))
            codec = Codec("opus", opus, 48000, te_pt=te, bitrate=bitrate)
            g711 = []
        elif g711 and b.allow_g711:
            name = maps[g711[0]].encoding.lower()
            codec = Codec(name, g711[0], 8000, te_pt=te)
        else:
            self.violation("offer has no Opus (and G.711 is not enabled for the number)")
            return None
        return _OfferChoice(rx, codec, (m.connection, m.port), m.ssrcs, g711)

    async def _authenticate(self, req: Request, number: str) -> Request | None:
        """407 (or 401) challenge, then verify the re-sent INVITE; None when a final was sent."""
        b, r, server = self.b, self.result, self.server
        ds = server.digest(b.algorithm)
        proxy = b.challenge_status == 407
        cred_header = "Proxy-Authorization" if proxy else "Authorization"
        other = "Authorization" if proxy else "Proxy-Authorization"
        chal_header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        challenges = 0
        stale = False
        prev = req
        while True:
            value = req.headers.get(cred_header)
            if value is None:
                if req.headers.get(other) is not None:
                    self.violation(f"gateway answered a {b.challenge_status} with {other}")
                if challenges >= 2:
                    self._final(req, 403, "bad_digest")
                    return None
                chal = ds.challenge(time.time(), stale=stale)[0].to_header()
                r.challenges.append(chal)
                self._final(req, b.challenge_status, extra=[(chal_header, chal)], tag=new_tag())
                self.final_sent = False
                challenges += 1
                try:
                    _, nxt = await asyncio.wait_for(self.invites.get(), b.auth_wait)
                except TimeoutError:
                    r.failure = f"gateway did not re-send the INVITE after {b.challenge_status}"
                    return None
                if nxt.cseq.seq <= prev.cseq.seq:
                    self.violation(
                        f"re-sent INVITE CSeq {nxt.cseq.seq} does not increase "
                        f"(was {prev.cseq.seq})"
                    )
                if nxt.from_.tag != prev.from_.tag:
                    self.violation("re-sent INVITE changed the From tag")
                if nxt.top_via.branch == prev.top_via.branch:
                    self.violation("re-sent INVITE reuses the challenged INVITE's branch")
                self.invite = nxt
                prev = req = nxt
                stale = False
                continue
            try:
                creds = parse_credentials(value)
            except AuthParseError as exc:
                self.violation(f"unreadable {cred_header}: {exc}")
                self._final(req, 403, "bad_digest")
                return None
            username = creds.username
            if username.startswith("+"):
                self.violation("digest username has a '+': Meta expects the number without it")
            if "+" + username.lstrip("+") != number:
                self._final(req, 403, "bad_digest")
                return None
            outcome = ds.verify(creds, "INVITE", req.uri, server.numbers.get(number), time.time())
            if outcome is VerifyResult.OK:
                return req
            if outcome is VerifyResult.STALE and challenges < 2:
                stale = True  # challenge this INVITE again with stale=true
                req.headers.remove(cred_header)
                continue
            self.violation(f"digest verification failed: {outcome.value}")
            self._final(req, 403, "bad_digest")
            return None


class MetaServer:
    """Meta's side of business-initiated calls: a TLS SIP server the gateway calls into.

    ``numbers`` maps each business number (+E.164) to its Meta SIP password.
    Set :attr:`behaviour` or :meth:`queue_behaviour` to script calls; collect
    results with :meth:`wait_call`.
    """

    def __init__(
        self,
        numbers: Mapping[str, str],
        business_hostname: str = "sip.example.com",
        *,
        tls: EmulatorTls | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        realm: str = META_HOST,
        ruri_hosts: Sequence[str] = (META_HOST,),
        contact_host: str | None = None,
        behaviour: UasBehaviour | None = None,
        reject_alpn: bool = True,
    ) -> None:
        self.numbers = dict(numbers)
        self.business_hostname = business_hostname
        self.tls = tls or default_tls()
        self.realm = realm
        self.ruri_hosts = tuple(h.lower() for h in ruri_hosts)
        self.contact_host = contact_host or host
        self.behaviour = behaviour or UasBehaviour()
        self.edge = SipEdge(self.tls, host, port, reject_alpn=reject_alpn, user_agent=META_UA)
        self.edge.on_new_request = self._new_request
        self.results: list[CallResult] = []
        self._behaviours: collections.deque[UasBehaviour] = collections.deque()
        self._done: asyncio.Queue[CallResult] = asyncio.Queue()
        self._answered_q: asyncio.Queue[str] = asyncio.Queue()
        self._digest: dict[str, DigestServer] = {}
        self._secret = secrets.token_bytes(32)
        self._opaque = secrets.token_hex(8)
        self.active: dict[str, _ServerCall] = {}

    @property
    def port(self) -> int:
        return self.edge.port

    @property
    def address(self) -> tuple[str, int]:
        return self.edge.host, self.edge.port

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def violations(self) -> list[str]:
        """Connection-level violations (ALPN offered, unparsable messages)."""
        return self.edge.violations

    @property
    def alpn_rejected(self) -> int:
        return self.edge.alpn_rejected

    @property
    def sni_seen(self) -> list[str]:
        return self.edge.sni_seen

    async def start(self) -> None:
        await self.edge.start()

    async def close(self) -> None:
        """Hang up active calls (Meta's BYE, briefly awaited), then stop listening."""
        for call in self.active.values():
            call.hangup_requested.set()
            call.cancelled.set()
        end = asyncio.get_running_loop().time() + 3.0
        while self.active and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.02)
        await self.edge.close()

    async def __aenter__(self) -> MetaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def queue_behaviour(self, behaviour: UasBehaviour) -> None:
        """Use ``behaviour`` for the next new incoming call (FIFO), then the default again."""
        self._behaviours.append(behaviour)

    def digest(self, algorithm: str) -> DigestServer:
        if algorithm not in self._digest:
            self._digest[algorithm] = DigestServer(
                self._secret, self.realm, algorithms=(algorithm,), opaque=self._opaque
            )
        return self._digest[algorithm]

    async def wait_call(self, timeout: float = 30.0) -> CallResult:
        """The next finished call's result (in order of completion)."""
        return await asyncio.wait_for(self._done.get(), timeout)

    async def wait_answered(self, timeout: float = 10.0) -> str:
        """Call-ID of the next call Meta answered (200 OK sent)."""
        return await asyncio.wait_for(self._answered_q.get(), timeout)

    def hangup(self, call_id: str | None = None) -> None:
        """Make Meta hang up (BYE) the given call, or every active call."""
        for cid, call in self.active.items():
            if call_id is None or cid == call_id:
                call.hangup_requested.set()

    def _new_request(self, conn: SipConnection, req: Request, raw: bytes) -> None:
        if req.method != "INVITE" or req.to.tag is not None:
            self.edge.default_new_request(conn, req, raw)
            return
        behaviour = self._behaviours.popleft() if self._behaviours else self.behaviour
        call = _ServerCall(self, conn, req, behaviour)
        self.edge.calls[req.call_id] = call
        self.active[req.call_id] = call
        call.log("<-", req, raw)
        self.edge.spawn(call.run())

    def _answered(self, call_id: str) -> None:
        self._answered_q.put_nowait(call_id)

    def _finished(self, result: CallResult) -> None:
        self.active.pop(result.call_id, None)
        self.results.append(result)
        self._done.put_nowait(result)
