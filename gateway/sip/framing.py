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

from gateway.sip.message import MAX_MESSAGE_SIZE, find_head_end

# A Content-Length line (long or compact name, any case), with its folded continuations.
_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_DIGITS_RE = re.compile(rb"[0-9]+")


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
    """Cut a byte stream into messages; each frame is a whole message's bytes.

    The header section is scanned once however it is split across reads (the
    search resumes where the previous one stopped), so a peer trickling a large
    header byte by byte costs linear time.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._failed = False
        self._scanned = 0  # bytes of the current message searched for the end of head
        self._total: int | None = None  # size of the current message once its head is read

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, limit: int | None = None) -> list[Frame]:
        """Frames completed by ``data``: at most ``limit`` of them (None: all). What is
        left stays buffered; ``feed(b"", limit)`` takes the next ones."""
        if self._failed:
            return []
        self._buf += data
        out: list[Frame] = []
        while self._buf:
            if limit is not None and len(out) >= limit:
                break
            if self._total is None:
                if not self._scanned and self._buf[0] in (0x0D, 0x0A):
                    # Keep-alives and stray CRLFs between messages (RFC 5626 3.5.1,
                    # RFC 3261 7.5): CRLFCRLF is a ping, a lone CRLF (a pong) is skipped.
                    if self._buf.startswith(b"\r\n\r\n"):
                        del self._buf[:4]
                        out.append(Ping())
                        continue
                    if len(self._buf) < 4 and b"\r\n\r\n".startswith(self._buf):
                        break  # wait: may become a ping
                    del self._buf[: 2 if self._buf.startswith(b"\r\n") else 1]
                    continue
                # End of the header section: CRLFCRLF, or bare LF line ends as
                # parse_message tolerates.
                found = find_head_end(self._buf, max(0, self._scanned - 3))
                if found is None:
                    self._scanned = len(self._buf)
                    if len(self._buf) > self._max:
                        return self._fail(out, "header section too large")
                    break
                head_end = found[1]
                head = bytes(self._buf[:head_end])
                length, error = _content_length(head)
                if error:
                    return self._fail(out, error, head)
                total = head_end + length
                if total > self._max:
                    return self._fail(out, "message too large", head)
                self._total = total
            if len(self._buf) < self._total:
                break
            out.append(bytes(self._buf[: self._total]))
            del self._buf[: self._total]
            self._total = None
            self._scanned = 0
        return out

    def _fail(self, out: list[Frame], reason: str, head: bytes = b"") -> list[Frame]:
        self._failed = True
        self._buf.clear()
        out.append(FramingError(reason, head))
        return out


def _content_length(head: bytes) -> tuple[int, str | None]:
    """Body length announced by a header section, or the framing error.

    RFC 3261 18.3: on streams Content-Length MUST be present; absent is taken as
    0. Several equal values frame the same (parse_message rejects the
    duplicate); different ones, or one that is not 1*DIGIT (ncl's -999), leave
    no way to find the next message.
    """
    first_line_end = head.find(b"\n") + 1  # the start line is not a header
    lengths: set[int] = set()
    for raw in _CL_RE.findall(head, first_line_end):
        words = raw.split()
        if len(words) != 1 or not _DIGITS_RE.fullmatch(words[0]):
            return 0, "bad Content-Length"
        significant = words[0].lstrip(b"0")
        if len(significant) > 9:
            return 0, "message too large"
        lengths.add(int(significant or b"0"))
    if len(lengths) > 1:
        return 0, "conflicting Content-Length"
    return (lengths.pop() if lengths else 0), None
