"""Stream framing (RFC 3261 18.3, RFC 5626 3.5.1 keep-alives)."""

from __future__ import annotations

import time

import pytest

from gateway.sip.framing import Frame, FramingError, Ping, StreamFramer
from gateway.sip.message import Request, parse_message


def msg(body: bytes = b"", *, cl: bool = True, branch: str = "z9hG4bK1") -> bytes:
    head = (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP h.example.com;branch={branch}\r\n"
        "To: <sip:bob@example.com>\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 OPTIONS\r\n"
    )
    if cl:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


A = msg(b"hello")
B = msg(b"", branch="z9hG4bK2")
C = msg(b"v=0\r\n\r\nbody with a blank line\r\n", branch="z9hG4bK3")


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


def test_several_messages_in_one_read() -> None:
    f = StreamFramer()
    assert f.feed(A + B + C) == [A, B, C]
    assert f.buffered == 0


def test_byte_by_byte() -> None:
    data = A + B + C
    out = feed_all(StreamFramer(), [data[i : i + 1] for i in range(len(data))])
    assert out == [A, B, C]


@pytest.mark.parametrize("cut", range(1, len(A)))
def test_every_two_way_split(cut: int) -> None:
    data = A + C
    f = StreamFramer()
    first = f.feed(data[:cut])
    assert first == ([A] if cut >= len(A) else [])
    assert first + f.feed(data[cut:]) == [A, C]


def test_body_split_across_reads() -> None:
    f = StreamFramer()
    head_end = C.index(b"\r\n\r\n") + 4
    assert f.feed(C[: head_end + 3]) == []
    assert f.buffered == head_end + 3
    assert f.feed(C[head_end + 3 : -1]) == []
    assert f.feed(C[-1:] + A[:10]) == [C]
    assert f.feed(A[10:]) == [A]


def test_frames_parse() -> None:
    for frame in StreamFramer().feed(A + C):
        assert isinstance(frame, bytes)
        m = parse_message(frame, datagram=False)
        assert isinstance(m, Request)
    assert parse_message(C, datagram=False).body == b"v=0\r\n\r\nbody with a blank line\r\n"


def test_double_crlf_is_a_ping() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == [Ping()]
    assert f.feed(b"\r\n\r\n\r\n\r\n") == [Ping(), Ping()]
    assert f.feed(A + b"\r\n\r\n" + B) == [A, Ping(), B]


def test_ping_split_across_reads() -> None:
    f = StreamFramer()
    assert f.feed(b"\r") == []
    assert f.feed(b"\n\r") == []
    assert f.feed(b"\n") == [Ping()]
    assert f.buffered == 0


def test_single_crlf_between_messages_ignored() -> None:
    f = StreamFramer()
    assert f.feed(A + b"\r\n" + B + b"\r\n") == [A, B]
    assert f.feed(C) == [C]  # the held CRLF (a pong) was not a message start
    assert f.feed(b"\n" + A) == [A]  # a stray LF too


def test_lone_crlf_waits_to_see_if_it_becomes_a_ping() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n") == []
    assert f.buffered == 2
    assert f.feed(b"\r\n") == [Ping()]


def test_no_content_length_on_stream_means_empty_body() -> None:
    f = StreamFramer()
    no_cl = msg(cl=False)
    assert f.feed(no_cl + A) == [no_cl, A]
    m = parse_message(no_cl, datagram=False)
    assert m.body == b""


def test_compact_and_folded_content_length() -> None:
    compact = A.replace(b"Content-Length: 5", b"l  :5")
    folded = A.replace(b"Content-Length: 5", b"CONTENT-LENGTH:\r\n  5")
    zeros = A.replace(b"Content-Length: 5", b"Content-Length: 0005")
    assert StreamFramer().feed(compact + folded + zeros) == [compact, folded, zeros]


def test_content_length_name_in_other_places_is_ignored() -> None:
    # Only header lines count; a Subject mentioning it or an X-l header does not.
    tricky = A.replace(b"Call-ID: c1", b"Subject: Content-Length: 99\r\nX-l: 7\r\nCall-ID: c1")
    assert StreamFramer().feed(tricky + B) == [tricky, B]


def test_lf_only_header_section() -> None:
    lf = A.replace(b"\r\n", b"\n")
    assert StreamFramer().feed(lf + B) == [lf, B]


@pytest.mark.parametrize(
    "value", [b"-999", b"abc", b"5 5", b"0x5", b"+5", b"", b"\xc2\xb2", b"5;x"]
)
def test_bad_content_length_is_fatal(value: bytes) -> None:
    bad = A.replace(b"Content-Length: 5", b"Content-Length: " + value)
    f = StreamFramer()
    out = f.feed(B + bad + A)
    assert out[0] == B
    assert isinstance(out[1], FramingError) and out[1].reason == "bad Content-Length"
    assert out[1].head == bad[: bad.index(b"\r\n\r\n") + 4]
    assert len(out) == 2
    assert f.feed(A) == [] and f.buffered == 0  # nothing more after an error


def test_conflicting_content_length_is_fatal() -> None:
    bad = A.replace(b"Content-Length: 5", b"Content-Length: 5\r\nl: 7")
    out = StreamFramer().feed(bad)
    assert len(out) == 1 and isinstance(out[0], FramingError)
    assert out[0].reason == "conflicting Content-Length"


def test_duplicate_equal_content_length_frames() -> None:
    # Framing is unambiguous; parse_message then rejects the duplicate (400).
    dup = A.replace(b"Content-Length: 5", b"Content-Length: 5\r\nl: 05")
    assert StreamFramer().feed(dup) == [dup]


def test_oversize_header_section() -> None:
    f = StreamFramer(max_size=1000)
    assert f.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 900) == []
    out = f.feed(b"y" * 200)
    assert len(out) == 1 and isinstance(out[0], FramingError)
    assert "too large" in out[0].reason and out[0].head == b""
    assert f.buffered == 0
    assert f.feed(A) == []


def test_oversize_message_announced_by_content_length() -> None:
    f = StreamFramer(max_size=1000)
    big = msg(b"x" * 2000)
    head_end = big.index(b"\r\n\r\n") + 4
    out = f.feed(big[: head_end + 1])  # the head alone already says it is too big
    assert len(out) == 1 and isinstance(out[0], FramingError)
    assert out[0].reason == "message too large"
    assert out[0].head == big[:head_end]
    assert f.feed(big[head_end + 1 :]) == []


def test_huge_content_length_value() -> None:
    bad = A.replace(b"Content-Length: 5", b"Content-Length: " + b"9" * 5000)
    out = StreamFramer().feed(bad)
    assert len(out) == 1 and isinstance(out[0], FramingError) and "large" in out[0].reason


def test_message_exactly_at_max_size() -> None:
    f = StreamFramer(max_size=len(A))
    assert f.feed(A) == [A]
    f = StreamFramer(max_size=len(A) - 1)
    out = f.feed(A)
    assert len(out) == 1 and isinstance(out[0], FramingError)


def test_messages_before_an_error_are_kept() -> None:
    out = StreamFramer().feed(A + b"\r\n\r\n" + B + A.replace(b": 5", b": x"))
    assert out[:3] == [A, Ping(), B]
    assert isinstance(out[3], FramingError)


def test_trickled_large_header_is_linear() -> None:
    # Each read resumes the search for the end of the header section; rescanning
    # from the start made a 60 KB header sent byte by byte take about a second.
    # Relative, not absolute (the machine may be busy): ten times the bytes must take
    # about ten times as long, not a hundred.
    def trickle(size: int) -> float:
        data = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * size + b"\r\nl: 0\r\n\r\n"
        best = float("inf")
        for _ in range(3):
            f = StreamFramer(max_size=70000)
            chunks = [data[i : i + 1] for i in range(len(data))]
            started = time.perf_counter()
            out = feed_all(f, chunks)
            best = min(best, time.perf_counter() - started)
            assert out == [data]
        return best

    assert trickle(60000) < 30 * trickle(6000)
