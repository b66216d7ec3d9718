"""The load generator: Meta's side over TLS, a PBX stub over UDP, paced media both ways.

Everything runs on one asyncio loop in the benchmark process (pinned to its
own core):

* :class:`MetaLink`, one TLS connection to the gateway (no ALPN, the dev
  certificate not verified) carrying every call's signalling as Meta does:
  INVITE shaped like docs/whatsapp-sip.md section 3 with a real SDES key (or, with
  ``--srtp dtls``, WebRTC media as in section 7: :mod:`bench.webrtc` answers the
  gateway's ICE checks and is the DTLS server, whose keys then drive the same SRTP), the
  407 answered with :func:`gateway.sip.auth.answer_challenge`, ACK, later BYE.
  Through a proxy (Kamailio in front of several instances) the same
  connection goes to the proxy; the proxy's Record-Route entries above Meta's
  own in the 2xx make the route set of the ACK and BYE, whose Request-URI is
  the answering instance's Contact.
* :class:`PbxStub`, the PBX the gateway calls: 100 + 200 with a PCMU answer
  and a media socket per call, ACK, BYE, OPTIONS. It drains its socket on
  each readable event (asyncio's datagram transport reads one datagram per
  loop pass: with hundreds of media sockets ready per pass and the generator
  short of CPU, the gateways' INVITEs waited seconds and timed out).
* :class:`Pacer`, one timer for all streams: 20 slots of 1 ms, each stream
  owns a slot, so the N streams' packets are spread over the 20 ms instead of
  leaving in one burst; every stream sends exactly one packet per 20 ms.

Each call has two UDP sockets here: "Meta" sends SRTP/Opus (pt 111, ts +960)
to the gateway's WhatsApp port and receives what the gateway sends toward
Meta; "PBX" sends RTP/PCMU (pt 0, 160 octets, ts +160) to the gateway's PBX
port and receives the transcoded Meta audio. Send times are taken just before
``sendto``; arrival times are the kernel's receive timestamps
(``SO_TIMESTAMPNS``, same CLOCK_REALTIME), so time this process spends busy
before reading a socket is not counted as latency added by the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import socket
import ssl
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.webrtc import OPUS_PT, MetaWebRtc, meta_offer
from gateway.media.rtcp import ReportBlock, RtcpReceiverReport, RtcpSdes, SdesChunk
from gateway.media.srtp import SrtpContext, SrtpError, decode_inline, encode_inline
from gateway.media.srtp import new_key_material as srtp_key
from gateway.sip.auth import answer_challenge, parse_challenge, select_challenge
from gateway.sip.framing import StreamFramer
from gateway.sip.message import Request, Response, SipParseError, make_response, parse_message
from tests.peers.impair import ImpairmentRelay

SUITE = "AES_CM_128_HMAC_SHA1_80"
PCMU_PT = 0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
ANC_SIZE = socket.CMSG_SPACE(16)
RCVBUF = 1 << 20
SLOTS = 20  # 1 ms slots per 20 ms packet interval
SLOT_SECONDS = 0.001
META_HOST = "wa.meta.vc"
META_ALLOW = "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"
META_UA = "Facebook SipGateway"
RR_EVERY = 250  # packets (5 s) between Meta's RTCP receiver reports, as RFC 3550 6.2
_HDR = struct.Struct("!BBHII")
_TS = struct.Struct("=qq")
_C_RE = re.compile(r"^c=IN IP4 (\S+)", re.M)
_M_RE = re.compile(r"^m=audio (\d+) ", re.M)
_CRYPTO_RE = re.compile(r"^a=crypto:\d+ (\S+) (inline:[A-Za-z0-9+/=]+)", re.M)

_time_ns = time.time_ns


def _nothing() -> None:
    pass


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def _media_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:  # beyond net.core.rmem_max when root: a stalled reader must not lose packets
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _arrival_ns(anc: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TS.unpack_from(data)
            return int(sec) * 1_000_000_000 + int(nsec)
    return _time_ns()


def _payload_offset(packet: bytes) -> int:
    off = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= off + 4:
        off += 4 + 4 * ((packet[off + 2] << 8) | packet[off + 3])
    return off


@dataclass
class Direction:
    """One direction of one call: what the generator sent, what came out the other side.

    ``send_ns[k]`` is when packet k left (-1: the send failed here). Received
    packets are kept as (RTP sequence, kernel arrival time, kind) with kind
    0 = audio, 1 = the gateway's Opus silence/keep-alive frame.
    """

    send_ns: array[int] = field(default_factory=lambda: array("q"))
    rx_seq: array[int] = field(default_factory=lambda: array("l"))
    rx_ns: array[int] = field(default_factory=lambda: array("q"))
    rx_kind: array[int] = field(default_factory=lambda: array("b"))
    keep: list[bytes] | None = None  # audio payloads kept for the audio check
    audio_rx: int = 0
    send_errors: int = 0
    rx_bad: int = 0  # SRTP authentication failures, wrong payload type, runts
    rx_rtcp: int = 0


class Call:
    """One benchmark call: signalling state, both media sockets, both directions."""

    def __init__(
        self,
        index: int,
        silence: bytes,
        keep_audio: bool,
        meta_rtcp: bool = True,
        webrtc: MetaWebRtc | None = None,
    ) -> None:
        self.index = index
        self.wacid = "wacid." + base64.b64encode(b"\x1c\x18\x0b" + secrets.token_bytes(27)).decode()
        self.call_id = f"outgoing:{self.wacid}"
        self.caller = f"+1219555{index:04d}"
        self.from_tag = secrets.token_hex(6)
        self.silence = silence
        self.meta_sock = _media_socket()
        self.pbx_sock = _media_socket()
        self.meta_key = srtp_key(SUITE)
        # SDES: keyed from the SDP at once; WebRTC mode (--srtp dtls): by the DTLS handshake
        self.srtp: SrtpContext | None = None
        self.webrtc = webrtc
        self.keyed: asyncio.Future[None] | None = None  # WebRTC mode: keys, or a failure
        self._dtls_timer: asyncio.TimerHandle | None = None
        self.gw_wa_addr: tuple[str, int] | None = None
        # The impairment relay (bench/impair.py) Meta's SDP declares instead of
        # meta_sock: Meta's media then goes to the relay, which passes it on.
        self.relay: ImpairmentRelay | None = None
        self.meta_dest: tuple[str, int] | None = None  # the relay, or the gateway
        self.gw_pbx_addr: tuple[str, int] | None = None
        self.m2p = Direction(keep=[] if keep_audio else None)  # Meta sends, PBX receives
        self.p2m = Direction(keep=[] if keep_audio else None)  # PBX sends, Meta receives
        self.m_ssrc, self.p_ssrc = secrets.randbits(32), secrets.randbits(32)
        self.m_seq0, self.p_seq0 = secrets.randbits(15), secrets.randbits(15)
        self.m_ts0, self.p_ts0 = secrets.randbits(31), secrets.randbits(31)
        self.m_k = self.p_k = 0
        self.opus: list[bytes] = []
        self.pcmu: list[bytes] = []
        self.poll: Callable[[], None] = _nothing  # the pacer's catch-up, run between reads
        # Meta's receiver reports on the gateway's stream (fraction lost since the last)
        self.meta_rtcp = meta_rtcp
        self.gw_ssrc: int | None = None
        self.rr_sent = 0
        self._rr_index = 0  # rx_seq entries already reported on
        self._rr_high: int | None = None  # extended highest sequence at the last report
        self._rr_lost = 0
        # signalling
        self.invite_at = 0.0
        self.challenged_at: float | None = None  # 407 received
        self.pbx_invite_at: float | None = None  # the gateway's INVITE reached the PBX stub
        self.answered_at: float | None = None
        self.first_media_at: float | None = None  # first SRTP from the gateway decrypted
        self.failure: str | None = None
        self.to_header = ""
        self.remote_target = ""
        self.route: list[str] = []  # Route of in-dialog requests: a proxy's entries
        self.cseq = 1
        self.ack: bytes | None = None
        self.pbx_call_id = ""
        self.pbx_answer: bytes | None = None
        self.pbx_acked = False
        self.pbx_bye = False
        self.gateway_bye = False
        self.bye_status: int | None = None

    # -- media out (called by the pacer) -----------------------------------
    def send_meta(self) -> None:
        srtp = self.srtp
        if srtp is None:  # WebRTC mode, before the handshake
            return
        k = self.m_k
        self.m_k = k + 1
        assert self.gw_wa_addr is not None
        hdr = _HDR.pack(
            0x80,
            OPUS_PT | (0x80 if k == 0 else 0),
            (self.m_seq0 + k) & 0xFFFF,
            (self.m_ts0 + 960 * k) & 0xFFFFFFFF,
            self.m_ssrc,
        )
        packet = srtp.protect(hdr + self.opus[k % len(self.opus)])
        t = _time_ns()
        try:
            self.meta_sock.sendto(packet, self.meta_dest or self.gw_wa_addr)
        except OSError:
            self.m2p.send_errors += 1
            t = -1
        self.m2p.send_ns.append(t)
        if k % RR_EVERY == RR_EVERY - 1 and self.meta_rtcp:
            self.send_meta_report()

    def send_meta_report(self) -> None:
        """SRTCP RR + SDES toward the gateway, as an RTP peer sends every few seconds:
        a block on the gateway's stream with the loss since the last report."""
        seqs = self.p2m.rx_seq
        if self.gw_ssrc is None or self.srtp is None or not seqs or self.gw_wa_addr is None:
            return
        new = seqs[self._rr_index :]
        self._rr_index = len(seqs)
        if self._rr_high is None:
            self._rr_high = seqs[0] - 1
        start = high = self._rr_high
        for seq in new:
            delta = ((seq - high + 0x8000) & 0xFFFF) - 0x8000
            if delta > 0:
                high += delta
        self._rr_high = high
        expected = high - start
        lost = max(0, expected - len(new))
        self._rr_lost += lost
        block = ReportBlock(
            self.gw_ssrc,
            fraction_lost=min(255, lost * 256 // expected) if expected > 0 else 0,
            cumulative_lost=self._rr_lost,
            highest_sequence=high & 0xFFFFFFFF,
        )
        rtcp = (
            RtcpReceiverReport(self.m_ssrc, [block]).serialize()
            + RtcpSdes([SdesChunk(self.m_ssrc, [(1, b"WhatsAppAudioStream1")])]).serialize()
        )
        with contextlib.suppress(OSError):
            self.meta_sock.sendto(self.srtp.protect_rtcp(rtcp), self.meta_dest or self.gw_wa_addr)
            self.rr_sent += 1

    def send_pbx(self) -> None:
        k = self.p_k
        self.p_k = k + 1
        assert self.gw_pbx_addr is not None
        hdr = _HDR.pack(
            0x80,
            PCMU_PT | (0x80 if k == 0 else 0),
            (self.p_seq0 + k) & 0xFFFF,
            (self.p_ts0 + 160 * k) & 0xFFFFFFFF,
            self.p_ssrc,
        )
        packet = hdr + self.pcmu[k % len(self.pcmu)]
        t = _time_ns()
        try:
            self.pbx_sock.sendto(packet, self.gw_pbx_addr)
        except OSError:
            self.p2m.send_errors += 1
            t = -1
        self.p2m.send_ns.append(t)

    # -- media in (socket readers) -----------------------------------------
    def meta_readable(self) -> None:
        """What the gateway sends toward Meta: SRTP/Opus (+ SRTCP)."""
        sock, d, srtp = self.meta_sock, self.p2m, self.srtp
        self.poll()
        while True:
            try:
                data, anc, _, addr = sock.recvmsg(2048, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                d.rx_bad += 1
                return
            t = _arrival_ns(anc)
            if len(data) < 12:
                d.rx_bad += 1
                continue
            if data[0] < 128:  # RFC 7983: STUN (0-3) or DTLS (20-63), never SRTP
                self.control(data, addr)
                srtp = self.srtp  # the handshake may have just keyed it
                continue
            if srtp is None:
                d.rx_bad += 1
                continue
            if 200 <= data[1] <= 204:
                d.rx_rtcp += 1
                continue
            try:
                plain = srtp.unprotect(data)
            except SrtpError:
                d.rx_bad += 1
                continue
            if plain[1] & 0x7F != OPUS_PT:
                d.rx_bad += 1
                continue
            if self.gw_ssrc is None:
                self.gw_ssrc = int.from_bytes(plain[8:12], "big")
                self.first_media_at = time.monotonic()  # the event loop's clock
            payload = plain[_payload_offset(plain) :]
            kind = 1 if payload == self.silence else 0
            d.rx_seq.append((plain[2] << 8) | plain[3])
            d.rx_ns.append(t)
            d.rx_kind.append(kind)
            if not kind:
                d.audio_rx += 1
                if d.keep is not None:
                    d.keep.append(payload)

    def control(self, data: bytes, addr: tuple[str, int]) -> None:
        """A STUN or DTLS datagram on the WhatsApp socket: WebRTC mode's ICE-lite and
        DTLS server (bench/webrtc.py); in SDES mode a bad packet."""
        w = self.webrtc
        if w is None:
            self.p2m.rx_bad += 1
            return
        now = time.monotonic()
        self._send_control(w.receive(data, (str(addr[0]), int(addr[1])), now))
        self._after_dtls(now)

    def _send_control(self, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        for packet, to in out:
            with contextlib.suppress(OSError):
                self.meta_sock.sendto(packet, to)

    def _after_dtls(self, now: float) -> None:
        """Keys in use once the handshake is done; otherwise its timer re-armed."""
        w = self.webrtc
        assert w is not None
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        keys = w.keys
        if keys is not None and self.srtp is None:
            self.gw_wa_addr = w.nominated  # the pair ICE nominated: SRTP goes there
            self.srtp = SrtpContext(*keys)
        if self.keyed is not None and not self.keyed.done() and (keys or w.failure):
            self.keyed.set_result(None)
        due = w.next_timeout()
        if due is not None and self.keyed is not None and not self.keyed.done():
            loop = asyncio.get_running_loop()
            self._dtls_timer = loop.call_at(loop.time() + max(0.0, due - now), self._dtls_due)

    def _dtls_due(self) -> None:
        w = self.webrtc
        assert w is not None
        self._dtls_timer = None
        now = time.monotonic()
        self._send_control(w.handle_timeout(now))
        self._after_dtls(now)

    def pbx_readable(self) -> None:
        """What the gateway sends toward the PBX: RTP/PCMU (+ RTCP)."""
        sock, d = self.pbx_sock, self.m2p
        self.poll()
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(2048, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                d.rx_bad += 1
                return
            t = _arrival_ns(anc)
            if len(data) < 12:
                d.rx_bad += 1
                continue
            if 200 <= data[1] <= 204:
                d.rx_rtcp += 1
                continue
            if data[1] & 0x7F != PCMU_PT:
                d.rx_bad += 1
                continue
            d.rx_seq.append((data[2] << 8) | data[3])
            d.rx_ns.append(t)
            d.rx_kind.append(0)
            d.audio_rx += 1
            if d.keep is not None:
                d.keep.append(data[_payload_offset(data) :])

    def close(self) -> None:
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self.meta_sock.close()
        self.pbx_sock.close()


class Pacer:
    """One loop timer for all streams: 20 slots of 1 ms; a stream sends once per 20 ms."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: list[list[Callable[[], None]]] = [[] for _ in range(SLOTS)]
        self._next_slot = 0
        self._next_at = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self._polling = False
        self._monotonic = loop.time
        self.lateness = array("d")  # per slot: actual - scheduled, seconds
        self.slots_run = 0

    def add(self, slot: int, sender: Callable[[], None]) -> None:
        # Join at the start of a cycle of that slot: the stream's first packet is a whole
        # interval after the previous slot run, so packet spacing stays 20 ms.
        self._slots[slot % SLOTS].append(sender)

    def start(self) -> None:
        self._next_at = self._loop.time() + SLOT_SECONDS
        self._handle = self._loop.call_at(self._next_at, self._run)

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def poll(self) -> None:
        """Send what is due. Called by the timer, and by the socket readers between
        packets so a long batch of receive work does not hold the senders back."""
        if self._stopped or self._polling:
            return
        self._polling = True
        try:
            loop_time = self._monotonic
            now = loop_time()
            while self._next_at <= now:
                self.lateness.append(now - self._next_at)
                for sender in self._slots[self._next_slot]:
                    sender()
                self.slots_run += 1
                self._next_slot = (self._next_slot + 1) % SLOTS
                self._next_at += SLOT_SECONDS
                now = loop_time()
        finally:
            self._polling = False

    def _run(self) -> None:
        if self._stopped:
            return
        self.poll()
        self._handle = self._loop.call_at(self._next_at, self._run)


class MetaLink:
    """One TLS connection to the gateway carrying many calls, as Meta's edge does."""

    def __init__(self, address: tuple[str, int], server_name: str) -> None:
        self.address = address
        self.server_name = server_name
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.waiters: dict[tuple[str, int, str], asyncio.Future[Response]] = {}
        self.calls: dict[str, Call] = {}  # by Call-ID
        self.closed = asyncio.Event()
        self.parse_errors = 0

    async def connect(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the development certificate; no ALPN offered
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        reader, writer = await asyncio.open_connection(
            *self.address, ssl=ctx, server_hostname=self.server_name
        )
        self._writer = writer
        self.local = writer.get_extra_info("sockname")[:2]
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    def send(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("TLS connection to the gateway is closed")
        self._writer.write(data)

    async def request(
        self, call: Call, data: bytes, method: str, cseq: int, timeout: float
    ) -> Response:
        """Send a request and wait for its final response (provisionals skipped)."""
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        key = (call.call_id, cseq, method)
        self.waiters[key] = fut
        try:
            self.send(data)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiters.pop(key, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    if isinstance(frame, bytes):
                        self._dispatch(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = parse_message(frame, datagram=False)
        except SipParseError:
            self.parse_errors += 1
            return
        if isinstance(msg, Response):
            cseq = msg.cseq
            if msg.status < 200:
                return
            fut = self.waiters.get((msg.call_id, cseq.seq, cseq.method))
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
            call = self.calls.get(msg.call_id)
            if call is not None and cseq.method == "INVITE" and msg.status < 300 and call.ack:
                self.send(call.ack)  # a 2xx retransmission: ACK again
            return
        call = self.calls.get(msg.call_id)
        if msg.method == "ACK":
            return
        if msg.method == "BYE" and call is not None:
            call.gateway_bye = True
        self.send(make_response(msg, 200).to_bytes())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


class MetaCaller:
    """Places calls from WhatsApp users to the business number through one :class:`MetaLink`."""

    def __init__(self, link: MetaLink, business_number: str, password: str, hostname: str) -> None:
        self.link = link
        self.number = business_number
        self.password = password
        self.hostname = hostname

    def _ruri(self) -> str:
        port = self.link.address[1]
        return f"sip:{self.number}@{self.hostname}:{port};transport=tls"

    def _offer(self, call: Call) -> bytes:
        port = call.meta_sock.getsockname()[1]
        if call.relay is not None:  # Meta's SDP names the relay (both on 127.0.0.1)
            port = call.relay.front(("127.0.0.1", port))[1]
        if call.webrtc is not None:
            return meta_offer(port, call.m_ssrc, ice=call.webrtc.ice_params())
        crypto = f"{SUITE} {encode_inline(call.meta_key, SUITE)}"
        return meta_offer(port, call.m_ssrc, crypto=crypto)

    def _record_route(self) -> list[str]:
        """Meta's own Record-Route entries (two hops of its edge) in its INVITEs."""
        lh, lp = self.link.local
        return [
            f"<sip:{lh}:{lp};transport=tls;lr>",
            f"<sip:{lh}:{lp};transport=tls;lr;x-meta-hop=2>",
        ]

    def _route_set(self, resp: Response) -> list[str] | None:
        """The Route of in-dialog requests: the entries a proxy put above Meta's own in
        the 2xx's Record-Route, in reverse order (RFC 3261 12.1.2; Meta's own entries
        are its own hops). Empty when the gateway answered directly; None when Meta's
        entries did not come back unchanged at the bottom."""
        got = [v.strip() for v in resp.headers.get_all("Record-Route")]  # split at commas
        ours = self._record_route()
        above = got[: len(got) - len(ours)]
        if got[len(above) :] != ours:
            return None
        return list(reversed(above))

    def _invite(self, call: Call, branch: str, auth: str | None) -> bytes:
        lh, lp = self.link.local
        lines = [
            f"INVITE {self._ruri()} SIP/2.0",
            f"Via: SIP/2.0/TLS {lh}:{lp};branch={branch}",
            f"Via: SIP/2.0/TLS {lh}:{lp};branch={_branch()};x-meta-hop=2",
            *[f"Record-Route: {rr}" for rr in self._record_route()],
            "Max-Forwards: 69",
            f'From: "{call.caller[1:]}" <sip:{call.caller}@{META_HOST}>;tag={call.from_tag}',
            f"To: <sip:{self.number}@{self.hostname}>",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.cseq} INVITE",
            f"Contact: <sip:{call.caller}@{lh}:{lp};transport=tls;ob>;isfocus",
            f"Allow: {META_ALLOW}",
            f"User-Agent: {META_UA}",
            f"X-FB-External-Domain: {META_HOST}",
            f"x-wa-meta-wacid: {call.wacid}",
            "x-wa-meta-user-country-code: US",
            "x-wa-meta-phone-number-id: 106540352242922",
        ]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        body = self._offer(call)
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _in_dialog(self, call: Call, method: str, cseq: int, extra: list[str]) -> bytes:
        lh, lp = self.link.local
        lines = [
            f"{method} {call.remote_target} SIP/2.0",
            f"Via: SIP/2.0/TLS {lh}:{lp};branch={_branch()}",
            *[f"Route: {r}" for r in call.route],
            "Max-Forwards: 70",
            f'From: "{call.caller[1:]}" <sip:{call.caller}@{META_HOST}>;tag={call.from_tag}',
            f"To: {call.to_header}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {cseq} {method}",
            *extra,
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _ack_failure(self, call: Call, invite_branch: str, resp: Response) -> None:
        lh, lp = self.link.local
        lines = [
            f"ACK {self._ruri()} SIP/2.0",
            f"Via: SIP/2.0/TLS {lh}:{lp};branch={invite_branch}",
            "Max-Forwards: 70",
            f'From: "{call.caller[1:]}" <sip:{call.caller}@{META_HOST}>;tag={call.from_tag}',
            f"To: {resp.headers.get('To') or ''}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.cseq} ACK",
            "Content-Length: 0",
        ]
        with contextlib.suppress(ConnectionError):
            self.link.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def place(self, call: Call, on_answer: Callable[[Call], None], timeout: float) -> None:
        """INVITE, answer the 407, ACK the 200, set up SRTP; ``call.failure`` on any problem."""
        self.link.calls[call.call_id] = call
        loop = asyncio.get_running_loop()
        call.invite_at = loop.time()
        auth: str | None = None
        try:
            for _ in range(2):
                branch = _branch()
                data = self._invite(call, branch, auth)
                resp = await self.link.request(call, data, "INVITE", call.cseq, timeout)
                if resp.status == 407 and auth is None:
                    call.challenged_at = loop.time()
                    self._ack_failure(call, branch, resp)
                    challenge = select_challenge(
                        [parse_challenge(v) for v in resp.headers.get_all("Proxy-Authenticate")]
                    )
                    creds = answer_challenge(
                        challenge, "INVITE", self._ruri(), self.number.lstrip("+"), self.password
                    )
                    auth = creds.to_header()
                    call.cseq += 1
                    continue
                if resp.status >= 300:
                    self._ack_failure(call, branch, resp)
                    call.failure = f"{resp.status} {resp.reason}"
                    return
                break
            else:
                call.failure = "challenged twice"
                return
        except TimeoutError:
            stage = (
                "to the first INVITE"
                if call.challenged_at is None
                else "to the authenticated INVITE, "
                + ("the PBX answered it" if call.pbx_invite_at else "nothing reached the PBX")
            )
            call.failure = f"no final response in {timeout:g} s {stage}"
            return
        except (ConnectionError, ValueError) as exc:
            call.failure = f"{type(exc).__name__}: {exc}"
            return
        call.answered_at = loop.time()
        call.to_header = resp.headers.get("To") or ""
        contact = resp.contact
        call.remote_target = str(contact.uri) if contact is not None else self._ruri()
        route = self._route_set(resp)
        call.route = route or []
        call.ack = self._in_dialog(call, "ACK", call.cseq, [])
        self.link.send(call.ack)
        if route is None:
            call.failure = "2xx Record-Route does not end with Meta's own entries unchanged"
            return
        if call.webrtc is not None:
            await self._webrtc_media(call, resp, on_answer, timeout)
            return
        body = resp.body.decode("utf-8", "replace")
        c, m, crypto = _C_RE.search(body), _M_RE.search(body), _CRYPTO_RE.search(body)
        if c is None or m is None or crypto is None or crypto.group(1) != SUITE:
            call.failure = "2xx SDP without address, port or a usable a=crypto"
            return
        call.gw_wa_addr = (c.group(1), int(m.group(1)))
        if call.relay is not None:
            call.relay.set_gateway(call.gw_wa_addr)
            call.meta_dest = call.relay.address
        call.srtp = SrtpContext(SUITE, call.meta_key, decode_inline(crypto.group(2), SUITE))
        if call.gw_pbx_addr is None:
            call.failure = "answered without the PBX leg (no INVITE reached the PBX stub)"
            return
        on_answer(call)

    async def _webrtc_media(
        self, call: Call, resp: Response, on_answer: Callable[[Call], None], timeout: float
    ) -> None:
        """WebRTC mode after the 2xx: the gateway's checks answered, then the DTLS handshake;
        the PBX streams from the answer on, Meta's side once keyed (``Call.send_meta``)."""
        w = call.webrtc
        assert w is not None
        loop = asyncio.get_running_loop()
        try:
            call.gw_wa_addr = w.accept_answer(resp.body, loop.time())
        except ValueError as exc:
            call.failure = str(exc)
            return
        if call.gw_pbx_addr is None:
            call.failure = "answered without the PBX leg (no INVITE reached the PBX stub)"
            return
        call.keyed = loop.create_future()
        on_answer(call)  # the sockets read from here: the gateway's checks are answered
        try:
            await asyncio.wait_for(asyncio.shield(call.keyed), timeout)
        except TimeoutError:
            nominated = "ICE nominated" if w.nominated else "no check with USE-CANDIDATE"
            call.failure = f"no DTLS keys in {timeout:g} s after the 2xx ({nominated})"
            return
        if w.failure is not None:
            call.failure = w.failure

    async def hangup(self, call: Call, timeout: float = 10.0) -> None:
        if call.answered_at is None or call.gateway_bye:
            return
        call.cseq += 1
        duration = int(asyncio.get_running_loop().time() - call.answered_at)
        data = self._in_dialog(
            call,
            "BYE",
            call.cseq,
            [
                f"User-Agent: {META_UA}",
                'Reason: Q.850;cause=16;text="NORMAL_CLEARING"',
                f"x-wa-meta-call-duration: {duration}",
            ],
        )
        try:
            resp = await self.link.request(call, data, "BYE", call.cseq, timeout)
            call.bye_status = resp.status
        except (TimeoutError, ConnectionError):
            call.bye_status = 0


class PbxStub:
    """The PBX: answers the gateway's INVITEs at once with PCMU, one media socket per call."""

    def __init__(self, calls_by_wacid: dict[str, Call]) -> None:
        self.calls_by_wacid = calls_by_wacid
        self.by_call_id: dict[str, Call] = {}
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.invites = 0
        self.retransmissions = 0
        self.unknown = 0
        self.parse_errors = 0
        self.send_errors = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> PbxStub:
        """Bind to a free port on 127.0.0.1 and serve on ``loop``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        self.sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)
        return self

    def close(self) -> None:
        if self.sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _readable(self) -> None:
        sock = self.sock
        while sock is not None:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.datagram_received(data, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(data, addr)
        except OSError:
            self.send_errors += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_message(data)
        except SipParseError:
            self.parse_errors += 1
            return
        if not isinstance(msg, Request):
            return  # responses to nothing we sent
        call = self.by_call_id.get(msg.call_id)
        if msg.method == "INVITE":
            self._invite(msg, call, addr)
        elif msg.method == "ACK":
            if call is not None:
                call.pbx_acked = True
        elif msg.method == "BYE":
            if call is not None:
                call.pbx_bye = True
            self._send(make_response(msg, 200).to_bytes(), addr)
        elif msg.method == "CANCEL":
            self._send(make_response(msg, 200).to_bytes(), addr)
        else:  # OPTIONS probes and anything else
            self._send(make_response(msg, 200).to_bytes(), addr)

    def _invite(self, req: Request, known: Call | None, addr: tuple[str, int]) -> None:
        if known is not None and known.pbx_answer is not None:
            self.retransmissions += 1
            self._send(known.pbx_answer, addr)
            return
        call = self.calls_by_wacid.get(req.headers.get("X-WA-Call-ID") or "")
        body = req.body.decode("utf-8", "replace")
        c, m = _C_RE.search(body), _M_RE.search(body)
        if call is None or c is None or m is None:
            self.unknown += 1
            self._send(make_response(req, 404, to_tag=secrets.token_hex(6)).to_bytes(), addr)
            return
        self.invites += 1
        call.pbx_invite_at = asyncio.get_running_loop().time()
        call.pbx_call_id = req.call_id
        self.by_call_id[req.call_id] = call
        call.gw_pbx_addr = (c.group(1), int(m.group(1)))
        self._send(make_response(req, 100).to_bytes(), addr)
        resp = make_response(req, 200, to_tag=secrets.token_hex(6))
        host, port = self.address
        resp.headers.add("Contact", f"<sip:pbx@{host}:{port}>")
        resp.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
        resp.headers.add("Content-Type", "application/sdp")
        media_port = call.pbx_sock.getsockname()[1]
        sess = secrets.randbelow(2**62) + 1
        resp.body = (
            "\r\n".join(
                [
                    "v=0",
                    f"o=pbx {sess} 1 IN IP4 127.0.0.1",
                    "s=bench-pbx",
                    "c=IN IP4 127.0.0.1",
                    "t=0 0",
                    f"m=audio {media_port} RTP/AVP {PCMU_PT} 101",
                    f"a=rtpmap:{PCMU_PT} PCMU/8000",
                    "a=rtpmap:101 telephone-event/8000",
                    "a=fmtp:101 0-16",
                    "a=rtcp-mux",
                    "a=ptime:20",
                    "a=sendrecv",
                ]
            )
            + "\r\n"
        ).encode()
        call.pbx_answer = resp.to_bytes()
        self._send(call.pbx_answer, addr)
