"""A PBX in the test process for audio measurements: answers the gateway's INVITEs
over UDP with PCMU, plays a given 8 kHz PCM to each call from the ACK on (then
silence, so media keeps flowing) and records what each call receives, placed
by RTP timestamp (a gap the gateway leaves stays silent in the recording,
where a playout buffer would have closed it).

    pbx = RtpPbx(play_pcm=reference)
    pbx.open()                     # on the running loop; pbx.address for pbx.address
    ...
    pbx.calls[wacid].recorded_pcm  # by the X-WA-Call-ID header the gateway sends

Asterisk and SIPp record only to files after their own playout (Asterisk) or
not at all (SIPp); this one gives sample-exact PCM of what the gateway sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import struct
from dataclasses import dataclass, field

from gateway.media.codecs import PcmuCodec
from gateway.sip.message import Request, SipParseError, make_response, parse_message

__all__ = ["PbxCall", "RtpPbx"]

PCMU_PT = 0
EVENT_PT = 101
_HDR = struct.Struct("!BBHII")
_C_RE = re.compile(r"^c=IN IP4 (\S+)", re.M)
_M_RE = re.compile(r"^m=audio (\d+) ", re.M)
FRAME = 160  # samples of 8 kHz per 20 ms


@dataclass
class PbxCall:
    """One call the gateway made to the PBX."""

    call_id: str
    key: str  # X-WA-Call-ID (Meta's wacid), or the Call-ID
    gateway_media: tuple[str, int]
    sock: socket.socket
    answer: bytes = b""
    acked: bool = False
    bye: bool = False
    packets: int = 0
    _pcm: bytearray = field(default_factory=bytearray)
    _ts0: int | None = None
    _sender: asyncio.Task[None] | None = None

    @property
    def recorded_pcm(self) -> bytes:
        """16-bit 8 kHz PCM of what arrived, each packet at its timestamp's place."""
        return bytes(self._pcm)

    def received(self, data: bytes, codec: PcmuCodec) -> None:
        if len(data) < 12 or data[1] & 0x7F != PCMU_PT:
            return  # RTCP, events
        ts = struct.unpack_from("!I", data, 4)[0]
        if self._ts0 is None:
            self._ts0 = ts
        offset = ((ts - self._ts0) & 0xFFFFFFFF) * 2
        if offset > 2 * 8000 * 600:
            return  # before the first packet (reordered) or absurd
        pcm = codec.decode(data[12:])
        end = offset + len(pcm)
        if end > len(self._pcm):
            self._pcm += bytes(end - len(self._pcm))
        self._pcm[offset:end] = pcm
        self.packets += 1


class RtpPbx:
    """SIP over UDP on 127.0.0.1; one media socket per call (see the module docstring)."""

    def __init__(self, play_pcm: bytes = b"") -> None:
        self.play_pcm = play_pcm
        self.calls: dict[str, PbxCall] = {}
        self._by_call_id: dict[str, PbxCall] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._codec = PcmuCodec()

    def open(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable, sock, self._sip)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        loop = self._loop
        for call in self._by_call_id.values():
            if call._sender is not None:
                call._sender.cancel()
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(call.sock.fileno())
            call.sock.close()
        if self._sock is not None and loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- signalling ---------------------------------------------------------
    @staticmethod
    def _readable(sock: socket.socket, handle: object) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError, OSError):
                return
            handle(data, addr)  # type: ignore[operator]

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendto(data, addr)

    def _sip(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_message(data)
        except SipParseError:
            return
        if not isinstance(msg, Request):
            return
        call = self._by_call_id.get(msg.call_id)
        if msg.method == "INVITE":
            self._invite(msg, call, addr)
            return
        if msg.method == "ACK":
            if call is not None and not call.acked:
                call.acked = True
                call._sender = asyncio.ensure_future(self._play(call))
            return
        if msg.method == "BYE" and call is not None:
            call.bye = True
            if call._sender is not None:
                call._sender.cancel()
        self._send(make_response(msg, 200).to_bytes(), addr)

    def _invite(self, req: Request, known: PbxCall | None, addr: tuple[str, int]) -> None:
        if known is not None:
            self._send(known.answer, addr)  # retransmission (or a re-INVITE: same answer)
            return
        body = req.body.decode("utf-8", "replace")
        c, m = _C_RE.search(body), _M_RE.search(body)
        if c is None or m is None:
            self._send(make_response(req, 488, to_tag=secrets.token_hex(6)).to_bytes(), addr)
            return
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        media.setblocking(False)
        media.bind(("127.0.0.1", 0))
        key = req.headers.get("X-WA-Call-ID") or req.call_id
        call = PbxCall(req.call_id, key, (c.group(1), int(m.group(1))), media)
        self.calls[key] = call
        self._by_call_id[req.call_id] = call
        assert self._loop is not None
        codec = self._codec
        self._loop.add_reader(
            media.fileno(), self._readable, media, lambda d, _a: call.received(d, codec)
        )
        self._send(make_response(req, 100).to_bytes(), addr)
        resp = make_response(req, 200, to_tag=secrets.token_hex(6))
        host, port = self.address
        media_port = media.getsockname()[1]
        resp.headers.add("Contact", f"<sip:pbx@{host}:{port}>")
        resp.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
        resp.headers.add("Content-Type", "application/sdp")
        sess = secrets.randbelow(2**62) + 1
        lines = [
            "v=0",
            f"o=pbx {sess} 1 IN IP4 127.0.0.1",
            "s=test-pbx",
            "c=IN IP4 127.0.0.1",
            "t=0 0",
            f"m=audio {media_port} RTP/AVP {PCMU_PT} {EVENT_PT}",
            f"a=rtpmap:{PCMU_PT} PCMU/8000",
            f"a=rtpmap:{EVENT_PT} telephone-event/8000",
            f"a=fmtp:{EVENT_PT} 0-16",
            "a=ptime:20",
            "a=sendrecv",
        ]
        resp.body = ("\r\n".join(lines) + "\r\n").encode()
        call.answer = resp.to_bytes()
        self._send(call.answer, addr)

    # -- media out ----------------------------------------------------------
    async def _play(self, call: PbxCall) -> None:
        """``play_pcm`` as PCMU every 20 ms from the ACK on, then silence."""
        loop = asyncio.get_running_loop()
        ssrc, seq, ts = secrets.randbits(32), secrets.randbits(15), secrets.randbits(31)
        pcm = self.play_pcm
        encoder = PcmuCodec()
        silence = bytes(2 * FRAME)
        k = 0
        start = loop.time()
        while not call.bye:
            chunk = pcm[k * 2 * FRAME : (k + 1) * 2 * FRAME]
            chunk = chunk + silence[len(chunk) :]
            header = _HDR.pack(0x80, PCMU_PT | (0x80 if k == 0 else 0), seq, ts, ssrc)
            with contextlib.suppress(OSError):
                call.sock.sendto(header + encoder.encode(chunk), call.gateway_media)
            k += 1
            seq = (seq + 1) & 0xFFFF
            ts = (ts + FRAME) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + 0.02 * k - loop.time()))
