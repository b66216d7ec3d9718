"""Minimal, well-behaved *business-side* peers, for testing the emulator without the gateway.

:class:`LoopbackUas` answers :class:`~tests.emulator.meta.MetaCaller` the way a
correct gateway should (digest challenge, Record-Route echoed, media first,
BYE through the route set); :class:`LoopbackUac` calls
:class:`~tests.emulator.meta.MetaServer` the way a correct gateway should.
They reuse the emulator's media and SDP code, so they prove the emulator's
plumbing, not the gateway. Options make them misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence

from gateway.sip.auth import (
    DigestServer,
    VerifyResult,
    answer_challenge,
    parse_challenge,
    parse_credentials,
    select_challenge,
)
from gateway.sip.message import Request, Response, make_response
from gateway.sip.uri import SipUri, parse_address
from tests.emulator.loopback_webrtc import BusinessWebRtc, WebRtcFaults
from tests.emulator.result import CallResult, SipRecord
from tests.emulator.rtp import Codec, MediaEndpoint, MediaScript
from tests.emulator.sdp import Crypto, build_meta_sdp, new_crypto, parse_sdp
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

UA = "loopback-business/1"


class _Peer:
    """CallSink for one loopback call: logs, queues requests, answers BYE."""

    def __init__(
        self, edge: SipEdge, script: MediaScript, role: str, webrtc: WebRtcFaults | None = None
    ) -> None:
        self.edge = edge
        self.loop = asyncio.get_running_loop()
        self.result = CallResult(role=role)
        self.media = MediaEndpoint(self.result, script)
        if webrtc is not None:  # ICE controlling + DTLS client toward Meta's lite server
            self.media = BusinessWebRtc(self.result, script, webrtc)
        self.script = script
        self.requests: asyncio.Queue[tuple[SipConnection, Request]] = asyncio.Queue()
        self.bye = asyncio.Event()
        self.stop = asyncio.Event()

    def log(self, direction: str, msg: Message, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        self.result.messages.append(SipRecord(direction, self.loop.time(), summary(msg), text))

    def violation(self, text: str) -> None:
        self.result.violation(text)

    def on_stray_response(self, conn: SipConnection, resp: Response) -> None:
        pass

    def on_request(self, conn: SipConnection, req: Request) -> None:
        if req.method == "BYE":
            self.reply(conn, req, 200)
            r = self.result
            r.bye_from = r.bye_from or "meta"
            r.bye_reason = req.headers.get("Reason")
            r.bye_headers = {n.lower(): v for n, v in req.headers}
            self.bye.set()
            self.stop.set()
        else:
            self.requests.put_nowait((conn, req))

    def reply(
        self,
        conn: SipConnection,
        req: Request,
        status: int,
        *,
        tag: str = "",
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        rr: bool = False,
    ) -> None:
        resp = make_response(req, status, to_tag=tag or None, record_route=rr)
        lines = response_lines(resp) + list(extra)
        if body:
            lines.append(("Content-Type", "application/sdp"))
        with contextlib.suppress(ConnectionError):
            self.edge.send(conn, render(f"SIP/2.0 {status} {resp.reason}", lines, body), self)

    async def next_request(self, method: str, timeout: float) -> tuple[SipConnection, Request]:
        end = self.loop.time() + timeout
        while True:
            left = max(0.01, end - self.loop.time())
            conn, req = await asyncio.wait_for(self.requests.get(), left)
            if req.method == method:
                return conn, req

    async def transaction(
        self, conn: SipConnection, data: bytes, branch: str, method: str, timeout: float = 5.0
    ) -> Response:
        q = self.edge.open_txn(branch, method)
        try:
            self.edge.send(conn, data, self)
            while True:
                _, resp = await asyncio.wait_for(q.get(), timeout)
                if resp.status >= 200:
                    return resp
        finally:
            self.edge.close_txn(branch, method)

    async def talk(self, seconds: float) -> None:
        """Send first (as the business side must), for ``seconds`` or until BYE."""
        sender = None
        if isinstance(self.media, BusinessWebRtc):  # media follows ICE and DTLS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.media.ready.wait(), seconds)
            if not self.media.ready.is_set():
                return
        if self.script.send_media:
            sender = asyncio.ensure_future(self.media.send_loop(self.stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.bye.wait(), seconds)
        self.stop.set()
        if sender is not None:
            await sender


def _answer_sdp(
    offer_text: str, media: MediaEndpoint
) -> tuple[str, Crypto, Crypto, Codec, tuple[str, int]]:
    offer = parse_sdp(offer_text)
    m = offer.audio()
    assert m is not None and m.connection is not None
    rx = m.cryptos[0]
    tx = new_crypto(rx.tag, rx.suite)
    maps = m.rtpmaps
    opus = next(pt for pt, rm in maps.items() if rm.encoding.lower() == "opus")
    te = next((pt for pt, rm in maps.items() if rm.encoding.lower() == "telephone-event"), None)
    answer = build_meta_sdp(
        address="127.0.0.1",
        port=media.port,
        cryptos=[tx],
        ssrc=media.ssrc,
        opus_pt=opus,
        te_pt=te,
    )
    return answer, tx, rx, Codec("opus", opus, 48000, te_pt=te), (m.connection, m.port)


class LoopbackUas:
    """A business-side UAS for MetaCaller: 407, then 200 echoing Record-Route, media first."""

    def __init__(
        self,
        password: str,
        *,
        tls: EmulatorTls | None = None,
        algorithm: str = "MD5",
        script: MediaScript | None = None,
        hangup_after: float | None = None,
        echo_record_route: bool = True,
        answer_delay: float = 0.0,
        never_answer: bool = False,
        webrtc: WebRtcFaults | None = None,
    ) -> None:
        self.webrtc = webrtc  # answer Meta's WebRTC offer (a=setup:active by default)
        self.password = password
        self.tls = tls or default_tls()
        self.script = script or MediaScript()
        self.hangup_after = hangup_after
        self.echo_record_route = echo_record_route
        self.answer_delay = answer_delay
        self.never_answer = never_answer
        self.edge = SipEdge(self.tls, user_agent=UA)
        self.edge.on_new_request = self._new_request
        self.digest = DigestServer(
            secrets.token_bytes(32), "sip.example.com", algorithms=(algorithm,)
        )
        self.results: asyncio.Queue[CallResult] = asyncio.Queue()

    @property
    def address(self) -> tuple[str, int]:
        return self.edge.host, self.edge.port

    async def __aenter__(self) -> LoopbackUas:
        await self.edge.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.edge.close()

    def _new_request(self, conn: SipConnection, req: Request, raw: bytes) -> None:
        if req.method != "INVITE":
            self.edge.default_new_request(conn, req, raw)
            return
        value = req.headers.get("Proxy-Authorization")
        if value is None:
            chal = self.digest.challenge(time.time())[0].to_header()
            resp = make_response(req, 407, to_tag=new_tag())
            lines = [*response_lines(resp), ("Proxy-Authenticate", chal)]
            with contextlib.suppress(ConnectionError):
                conn.send_raw(render("SIP/2.0 407 Proxy Authentication Required", lines))
            return
        creds = parse_credentials(value)
        outcome = self.digest.verify(creds, "INVITE", req.uri, self.password, time.time())
        if outcome is not VerifyResult.OK:
            resp = make_response(req, 403, to_tag=new_tag())
            with contextlib.suppress(ConnectionError):
                conn.send_raw(render("SIP/2.0 403 Forbidden", response_lines(resp)))
            return
        peer = _Peer(self.edge, self.script, "business-uas", self.webrtc)
        self.edge.calls[req.call_id] = peer
        peer.log("<-", req, raw)
        self.edge.spawn(self._answer(peer, conn, req))

    async def _answer(self, peer: _Peer, conn: SipConnection, req: Request) -> None:
        r = peer.result
        r.call_id = req.call_id
        await peer.media.open()
        if isinstance(peer.media, BusinessWebRtc) and self.webrtc is not None:
            codec, mid = peer.media.learn(req.body.decode())
            answer = peer.media.local_sdp(
                setup=self.webrtc.setup, opus_pt=codec.pt, te_pt=codec.te_pt, mid=mid
            )
        else:
            answer, tx, rx, codec, remote = _answer_sdp(req.body.decode(), peer.media)
        tag = new_tag()
        peer.reply(conn, req, 100)
        if self.never_answer or self.answer_delay > 0:
            peer.reply(conn, req, 180, tag=tag, rr=self.echo_record_route)
            wait = 30.0 if self.never_answer else self.answer_delay
            with contextlib.suppress(TimeoutError):
                cconn, cancel = await peer.next_request("CANCEL", wait)
                peer.reply(cconn, cancel, 200, tag=tag)
                peer.reply(conn, req, 487, tag=tag)
                r.status = 487
                with contextlib.suppress(TimeoutError):
                    await peer.next_request("ACK", 2.0)
                    r.reason = "487 acknowledged"
                peer.media.close()
                await self.results.put(r)
                return
        contact = f"<sip:+15550001111@127.0.0.1:{self.edge.port};transport=tls>"
        peer.reply(
            conn,
            req,
            200,
            tag=tag,
            rr=self.echo_record_route,
            extra=[("Contact", contact)],
            body=answer.encode(),
        )
        r.status = 200
        r.connected_at = peer.loop.time()
        if isinstance(peer.media, BusinessWebRtc):
            peer.media.start(codec)
        else:
            peer.media.configure(tx=tx, rx=rx, remote=remote, codec=codec)
        await peer.talk(self.hangup_after if self.hangup_after is not None else 30.0)
        if not peer.bye.is_set():
            await self._bye(peer, req, tag)
        peer.media.close()
        r.ended_at = peer.loop.time()
        await self.results.put(r)

    async def _bye(self, peer: _Peer, invite: Request, tag: str) -> None:
        """BYE through the route set: to the first Route's host:port over a new TLS connection."""
        routes = invite.headers.get_all("Record-Route")
        first = parse_address(routes[0]).uri
        assert isinstance(first, SipUri)
        ctx = client_context(self.tls.ca_file)
        conn = await self.edge.connect(first.host, first.port or 5061, ctx, first.host)
        contact = invite.contact
        assert contact is not None
        branch = new_branch()
        lines = [
            ("Via", f"SIP/2.0/TLS 127.0.0.1:{self.edge.port};branch={branch}"),
            *[("Route", v) for v in routes],
            ("Max-Forwards", "70"),
            ("From", f"{invite.headers.get('To')};tag={tag}"),
            ("To", invite.headers.get("From") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", "1 BYE"),
            ("Reason", 'Q.850;cause=16;text="NORMAL_CLEARING"'),
        ]
        peer.result.bye_from = "business"
        with contextlib.suppress(TimeoutError):
            data = render(f"BYE {contact.uri} SIP/2.0", lines)
            resp = await peer.transaction(conn, data, branch, "BYE")
            if resp.status != 200:
                peer.violation(f"BYE answered {resp.status}")


class LoopbackUac:
    """A business-side UAC for MetaServer: INVITE like a correct gateway, media first."""

    def __init__(
        self,
        *,
        tls: EmulatorTls | None = None,
        script: MediaScript | None = None,
        webrtc: WebRtcFaults | None = None,
    ) -> None:
        self.webrtc = webrtc  # offer WebRTC media (a=setup:actpass) instead of SDES
        self.tls = tls or default_tls()
        self.script = script or MediaScript()
        self.edge = SipEdge(self.tls, user_agent=UA)

    async def __aenter__(self) -> LoopbackUac:
        await self.edge.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.edge.close()

    async def call(
        self,
        server: tuple[str, int],
        *,
        password: str,
        to: str = "+12195550714",
        business_number: str = "+15550001111",
        from_host: str = "sip.example.com",
        ruri_host: str = "wa.meta.vc",
        talk_seconds: float = 3.0,
        server_hostname: str = "wa.meta.vc",
        extra_headers: Sequence[tuple[str, str]] = (),
        reinvite_after: float | None = None,
        bye_after: float | None = None,
    ) -> CallResult:
        """One call; ``result.reason`` gets ``"re-INVITE <status>"`` when ``reinvite_after``."""
        peer = _Peer(self.edge, self.script, "business-uac", self.webrtc)
        r = peer.result
        r.call_id = secrets.token_hex(12) + "@loopback"
        self.edge.calls[r.call_id] = peer
        ctx = client_context(self.tls.ca_file)
        conn = await self.edge.connect(server[0], server[1], ctx, server_hostname)
        r.tls_version = conn.tls_version
        await peer.media.open()
        offer_crypto = new_crypto(1, "AES_CM_128_HMAC_SHA1_80")
        if isinstance(peer.media, BusinessWebRtc):
            offer = peer.media.local_sdp(setup="actpass")
        else:
            offer = build_meta_sdp(
                address="127.0.0.1",
                port=peer.media.port,
                cryptos=[offer_crypto],
                ssrc=peer.media.ssrc,
            )
        r.offer_sdp = offer
        ruri = f"sip:{to}@{ruri_host};transport=tls"
        from_value = f"<sip:{business_number}@{from_host}>;tag={new_tag()}"
        via_base = f"SIP/2.0/TLS 127.0.0.1:{self.edge.port};branch="
        cseq = 1
        auth: list[tuple[str, str]] = []
        while True:
            branch = new_branch()
            lines = [
                ("Via", via_base + branch),
                ("Max-Forwards", "70"),
                ("From", from_value),
                ("To", f"<sip:{to}@wa.meta.vc>"),
                ("Call-ID", r.call_id),
                ("CSeq", f"{cseq} INVITE"),
                ("Contact", f"<sip:{business_number}@127.0.0.1:{self.edge.port};transport=tls>"),
                *auth,
                *extra_headers,
                ("Content-Type", "application/sdp"),
            ]
            data = render(f"INVITE {ruri} SIP/2.0", lines, offer.encode())
            resp = await peer.transaction(conn, data, branch, "INVITE", 10.0)
            r.status = resp.status
            if resp.status >= 300:
                ack = [
                    ("Via", via_base + branch),
                    ("Max-Forwards", "70"),
                    ("From", from_value),
                    ("To", resp.headers.get("To") or ""),
                    ("Call-ID", r.call_id),
                    ("CSeq", f"{cseq} ACK"),
                ]
                self.edge.send(conn, render(f"ACK {ruri} SIP/2.0", ack), peer)
            if resp.status == 407 and not auth:
                values = resp.headers.lines("Proxy-Authenticate")
                r.challenges.extend(values)
                chal = select_challenge([parse_challenge(v) for v in values])
                creds = answer_challenge(chal, "INVITE", ruri, business_number[1:], password)
                auth = [("Proxy-Authorization", creds.to_header())]
                cseq += 1
                continue
            break
        if r.status != 200:
            return r
        r.connected_at = peer.loop.time()
        routes = list(reversed(resp.headers.get_all("Record-Route")))
        contact = resp.contact
        assert contact is not None
        to_value = resp.headers.get("To") or ""

        def in_dialog(method: str, seq: int, branch: str) -> list[tuple[str, str]]:
            return [
                ("Via", via_base + branch),
                *[("Route", v) for v in routes],
                ("Max-Forwards", "70"),
                ("From", from_value),
                ("To", to_value),
                ("Call-ID", r.call_id),
                ("CSeq", f"{seq} {method}"),
            ]

        ack_lines = in_dialog("ACK", cseq, new_branch())
        self.edge.send(conn, render(f"ACK {contact.uri} SIP/2.0", ack_lines), peer)
        r.answer_sdp = resp.body.decode()
        if isinstance(peer.media, BusinessWebRtc):
            peer.media.start(peer.media.learn(r.answer_sdp)[0])
        else:
            m = parse_sdp(r.answer_sdp).audio()
            assert m is not None and m.connection is not None
            maps = m.rtpmaps
            te = next((pt for pt, rm in maps.items() if rm.encoding == "telephone-event"), None)
            codec = Codec("opus", m.payload_types[0], 48000, te_pt=te)
            remote = (m.connection, m.port)
            peer.media.configure(tx=offer_crypto, rx=m.cryptos[0], remote=remote, codec=codec)

        async def reinvite(delay: float) -> None:
            await asyncio.sleep(delay)
            branch = new_branch()
            lines = [*in_dialog("INVITE", cseq + 1, branch), ("Content-Type", "application/sdp")]
            data = render(f"INVITE {contact.uri} SIP/2.0", lines, offer.encode())
            with contextlib.suppress(TimeoutError):
                resp = await peer.transaction(conn, data, branch, "INVITE")
                r.reason = f"re-INVITE {resp.status}"
                ack = render(f"ACK {contact.uri} SIP/2.0", in_dialog("ACK", cseq + 1, branch))
                self.edge.send(conn, ack, peer)  # non-2xx ACK: same branch

        if reinvite_after is not None:
            self.edge.spawn(reinvite(reinvite_after))
        await peer.talk(bye_after if bye_after is not None else talk_seconds)
        if bye_after is not None and not peer.bye.is_set():
            branch = new_branch()
            data = render(f"BYE {contact.uri} SIP/2.0", in_dialog("BYE", cseq + 2, branch))
            r.bye_from = "business"
            with contextlib.suppress(TimeoutError):
                await peer.transaction(conn, data, branch, "BYE")
        peer.media.close()
        r.ended_at = peer.loop.time()
        return r
