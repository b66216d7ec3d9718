"""Message framing on stream transports (RFC 3261 section 18.3, RFC 5626 section 3.5.1).

A :class:`StreamFramer` takes bytes as they arrive on a TCP/TLS connection and
yields whole messages cut at their Content-Length, CRLF keep-alive pings, and
framing errors. It holds at most ``max_size`` bytes: a peer that sends a header
section or body beyond that gets an error and the connection must be closed,
since the stream can no longer be resynchronised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.sip.message import MAX_MESSAGE_SIZE

_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", re.I | re.M)


@dataclass(frozen=True, slots=True)
class Ping:
    """A double-CRLF keep-alive ping: answer it with a single CRLF pong."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream is unusable; close the connection after answering if possible."""

    reason: str
    head: bytes = b""


Frame = bytes | Ping | FramingError


class StreamFramer:
    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            return []
        self._buf += data
        out: list[Frame] = []
        while self._buf:
            # Keep-alives and stray CRLFs between messages (RFC 5626 3.5.1, RFC 3261 7.5).
            if self._buf[0] in (0x0D, 0x0A):
                if self._buf.startswith(b"\r\n\r\n"):
                    del self._buf[:4]
                    out.append(Ping())
                    continue
                if len(self._buf) < 4 and b"\r\n\r\n".startswith(self._buf):
                    break  # wait: may become a ping
                del self._buf[: 2 if self._buf.startswith(b"\r\n") else 1]
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self._max:
                    return self._fail(out, "header section too large")
                break
            head = bytes(self._buf[: end + 4])
            lengths = _CL_RE.findall(head)
            if len(lengths) > 1 and len(set(lengths)) > 1:
                return self._fail(out, "conflicting Content-Length", head)
            # RFC 3261 18.3: Content-Length MUST be present on streams; absent means 0.
            length = int(lengths[0]) if lengths else 0
            total = end + 4 + length
            if total > self._max:
                return self._fail(out, "message too large", head)
            if len(self._buf) < total:
                break
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
        return out

    def _fail(self, out: list[Frame], reason: str, head: bytes = b"") -> list[Frame]:
        self._failed = True
        self._buf.clear()
        out.append(FramingError(reason, head))
        return out
