"""55 KB messages of hostile shape and their benign yardsticks, for the parsing-cost
tests (issue 11, finding 6): unit timings and the daemon's answer times."""

from __future__ import annotations

SIZE = 55_000
_HEAD = "OPTIONS sip:+15550001111@127.0.0.1 SIP/2.0\r\n"


def _tail(call_id: str) -> str:
    return (
        "From: <sip:probe@127.0.0.1>;tag=abc\r\n"
        "To: <sip:+15550001111@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 7 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def _padded(line: str, length: int) -> str:
    """``line`` with ``;pN=vxxx`` parameters appended up to ``length`` characters."""
    k = 0
    while length - len(line) > 12:
        name = f";p{k}=v"
        line += name + "x" * min(40, length - len(line) - len(name))
        k += 1
    return line


def many_vias(
    n: int, size: int = SIZE, *, top: str = "127.0.0.1:9", call_id: str = "vias@test"
) -> bytes:
    """An OPTIONS of ``size`` bytes whose ``n`` Via lines share the room equally;
    the top one names ``top`` (with rport) so that an answer can come back."""
    tail = _tail(call_id)
    per = (size - len(_HEAD) - len(tail)) // n - 2
    branch = "z9hG4bK" + "".join(c for c in call_id if c.isalnum())
    vias = [_padded(f"Via: SIP/2.0/UDP {top};branch={branch};rport", per)]
    for i in range(1, n):
        host = f"10.0.{i // 250}.{i % 250 + 1}:5060"
        vias.append(_padded(f"Via: SIP/2.0/UDP {host};branch=z9hG4bK{i:06d}", per))
    return (_HEAD + "".join(v + "\r\n" for v in vias) + tail).encode()


def benign(
    n: int, size: int = SIZE, *, top: str = "127.0.0.1:9", call_id: str = "benign@t"
) -> bytes:
    """The yardstick: ``many_vias(n)`` with every Via but the top one turned into an
    ordinary X-Pad line of the same length (same size, same number of lines)."""
    lines = many_vias(n, size, top=top, call_id=call_id).decode().split("\r\n")
    vias = [i for i, line in enumerate(lines) if line.startswith("Via:")]
    for i in vias[1:]:
        lines[i] = "X-Pad: " + "a" * (len(lines[i]) - 7)
    return "\r\n".join(lines).encode()


def _fill(prefix: str, unit: str, size: int = SIZE, line_max: int = 8000) -> bytes:
    """One Via, then lines ``prefix`` + ``unit`` * k up to ``size`` bytes."""
    head = _HEAD + "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKshape;rport\r\n"
    tail = _tail("shape@test")
    lines: list[str] = []
    room = size - len(head) - len(tail)
    while room > len(prefix) + len(unit) + 2:
        k = min((line_max - len(prefix)) // len(unit), (room - len(prefix) - 2) // len(unit))
        lines.append(prefix + unit * k)
        room -= len(lines[-1]) + 2
    return (head + "".join(line + "\r\n" for line in lines) + tail).encode()


# Shapes a peer may send, each a whole 55 KB message (the parser's answer is a
# parse or a 400; either way its cost is what is measured).
HOSTILE: dict[str, bytes] = {
    "110 Via lines": many_vias(110),
    "Vias in comma lists": _fill("Via: ", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx,"),
    "quoted Contacts": _fill("Contact: ", '"a" <sip:a@b>,'),
    "commas in a quote": _fill("Route: ", '"' + "," * 100 + '",'),
    "angle brackets": _fill("Record-Route: ", "<>"),
    "unclosed angles": _fill("Contact: ", "<"),
    "quoted Via params": _fill("Via: SIP/2.0/UDP 10.0.0.1", ';p="a;b"'),
    "folded lines": _fill("X-Fold: a", "\r\n b"),
    "empty list elements": _fill("Via: ", '",'),
}
