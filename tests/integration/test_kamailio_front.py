"""The shipped Kamailio front (config/kamailio/) and its launcher
(tests/peers/kamailio.py) WITHOUT the gateway: stand-ins in this process play
the instances and Meta.

- instance "live": a UDP socket answering OPTIONS 200; instance "dead": a port
  nobody listens on. Kamailio's OPTIONS probing must mark them AP and I*.
- "Meta" on the public side: OPTIONS over TLS from an allowlisted source -> 200
  (at least one instance is active).
- an "instance" on the internal side: an INVITE to a host other than META_HOST
  -> 403; an INVITE to wa.meta.vc goes over TLS to META_ADDR:META_PORT (a TLS
  stand-in on 127.0.0.1) with SNI wa.meta.vc, the Request-URI unchanged and
  Kamailio's two Record-Routes; Meta's 603 comes back, Kamailio ACKs it.
- the production path for site defines (kamailio-local.cfg) and stop()
  leaving no Kamailio process behind.

Needs Kamailio with its tls module in the peer chroot (make asterisk-chroot);
WAGW_ALLOW_SKIP_PEERS=1 turns its absence into a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, free_port, self_signed_cert, wait_until
from tests.peers.kamailio import (
    CONFIG_DIR,
    CONFIG_FILE,
    KamailioProxy,
    check_config,
    require_kamailio,
)

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
ANSWERED = "+15550002222"  # the Meta stand-in answers calls to this number 200


# --------------------------------------------------------------------------- tiny SIP


@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def status(self) -> int:
        return int(self.first.split()[1])


def parse(data: bytes) -> Msg:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Msg(lines[0], headers, body)


def request(method: str, ruri: str, via: str, *, call_id: str, extra: str = "") -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{via};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:test@{LOOPBACK}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <{ruri}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def response(req: Msg, code: int, reason: str, extra: str = "") -> bytes:
    """A response echoing Via, From, To (a tag added), Call-ID, CSeq and, for a
    2xx, Record-Route (extra headers go first, e.g. the responder's own RR)."""
    lines = [f"SIP/2.0 {code} {reason}"]
    echo = ("via", "from", "to", "call-id", "cseq") + (("record-route",) if code < 300 else ())
    if extra:
        lines.append(extra.removesuffix("\r\n"))
    for name, value in req.headers:
        low = name.lower()
        if low == "to" and code > 100 and ";tag=" not in value:
            value += ";tag=" + uuid.uuid4().hex[:8]
        if low in echo:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def read_stream_message(sock: socket.socket | ssl.SSLSocket, buf: bytearray) -> Msg:
    """One message from a stream (Content-Length framing); leftovers stay in buf."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            msg = parse(bytes(buf[: end + 4]))
            length = int((msg.get("Content-Length") or msg.get("l") or ["0"])[0])
            if len(buf) >= end + 4 + length:
                msg.body = bytes(buf[end + 4 : end + 4 + length])
                del buf[: end + 4 + length]
                return msg
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed")
        buf += data


# --------------------------------------------------------------------------- stand-ins


class UdpInstance:
    """A gateway instance's proxy_listen as far as probing goes: OPTIONS -> 200."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[Msg] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            msg = parse(data)
            self.seen.append(msg)
            if msg.first.startswith("OPTIONS "):
                self.sock.sendto(response(msg, 200, "OK"), addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=2)


@dataclass
class TlsMeta:
    """Meta's edge as Kamailio's TLS client sees it: records SNI and requests;
    answers an INVITE to ANSWERED 200 (with its own Record-Route and Contact on
    127.0.0.1, as Meta's edge proxy would), any other INVITE 603, BYE 200."""

    cert: Path
    key: Path
    sni: list[str | None] = field(default_factory=list)
    seen: list[Msg] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                while True:
                    msg = read_stream_message(tls, buf)
                    self.seen.append(msg)
                    if msg.first.startswith(f"INVITE sip:{ANSWERED}@"):
                        here = f"{LOOPBACK}:{self.port};transport=tls"
                        extra = f"Record-Route: <sip:{here};lr>\r\nContact: <sip:meta@{here}>"
                        tls.sendall(response(msg, 200, "OK", extra))
                    elif msg.first.startswith("INVITE "):
                        tls.sendall(response(msg, 603, "Declined"))
                    elif msg.first.startswith("BYE "):
                        tls.sendall(response(msg, 200, "OK"))
        except (OSError, ConnectionError, ssl.SSLError):
            return

    def close(self) -> None:
        self.listener.close()


# --------------------------------------------------------------------------- fixture


@dataclass
class Front:
    kam: KamailioProxy
    live: UdpInstance
    live_uri: str
    dead_uri: str
    meta: TlsMeta
    cert: Path


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_kamailio()
    work = tmp_path_factory.mktemp("kamailio-front")
    cert, key = self_signed_cert(work / "certs")
    live = UdpInstance()
    meta = TlsMeta(cert, key)
    dead_port = free_port(udp=True, tcp=False)
    live_uri, dead_uri = f"sip:{LOOPBACK}:{live.port}", f"sip:{LOOPBACK}:{dead_port}"
    kam = KamailioProxy(
        work / "kam",
        backends=[live_uri, dead_uri],
        cert_file=cert,
        key_file=key,
        ca_file=cert,
        meta_port=meta.port,
        ping_interval=1,
    )
    try:
        with kam:
            kam.wait_state(live_uri, "AP", timeout=8)
            kam.wait_state(dead_uri, "I", timeout=8)  # ping 1 s + probe timeout 2 s
            yield Front(kam, live, live_uri, dead_uri, meta, cert)
    finally:
        live.close()
        meta.close()


# --------------------------------------------------------------------------- tests


def test_probing_marks_the_answering_instance_active_and_the_silent_one_inactive(
    front: Front,
) -> None:
    states = front.kam.dispatcher()
    assert states[front.live_uri] == "AP", states
    assert states[front.dead_uri].startswith("I"), states
    probes = [m for m in front.live.seen if m.first.startswith("OPTIONS ")]
    assert probes and probes[0].first == f"OPTIONS {front.live_uri} SIP/2.0"
    assert probes[0].get("From")[0].startswith("<sip:kamailio@localhost>")


def test_options_over_tls_from_an_allowlisted_source_is_answered_200(front: Front) -> None:
    ctx = ssl.create_default_context(cafile=str(front.cert))
    with (
        socket.create_connection((LOOPBACK, front.kam.public_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
    ):
        local_port = tls.getsockname()[1]
        ruri = f"sip:{LOOPBACK}:{front.kam.public_port};transport=tls"
        tls.sendall(request("OPTIONS", ruri, f"TLS {LOOPBACK}:{local_port}", call_id="opt-1"))
        reply = read_stream_message(tls, bytearray())
    assert reply.status == 200, reply.first
    assert reply.get("Call-ID") == ["opt-1"]


def _udp_exchange(port: int, data: bytes, *, ack: bool = False) -> list[Msg]:
    """Send a request from a fresh UDP socket; the responses up to the final one
    (ACKed when `ack`: a negative final response to an INVITE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(8)
        sock.bind((LOOPBACK, 0))
        sock.sendto(data, (LOOPBACK, port))
        replies: list[Msg] = []
        while not replies or replies[-1].status < 200:
            replies.append(parse(sock.recv(65536)))
        if ack:
            req, final = parse(data), replies[-1]
            ruri = req.first.split()[1]
            sock.sendto(
                (
                    f"ACK {ruri} SIP/2.0\r\nVia: {req.get('Via')[0]}\r\nMax-Forwards: 70\r\n"
                    f"From: {req.get('From')[0]}\r\nTo: {final.get('To')[0]}\r\n"
                    f"Call-ID: {req.get('Call-ID')[0]}\r\nCSeq: 1 ACK\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                (LOOPBACK, port),
            )
        return replies


def test_invite_from_an_instance_to_a_host_other_than_meta_is_refused_403(front: Front) -> None:
    invite = request(
        "INVITE",
        f"sip:{NUMBER}@sip.example.org;transport=tls",
        f"UDP {LOOPBACK}:9",  # rport: the answer goes to the real source port
        call_id="out-foreign",
        extra=f"Contact: <sip:gw@{LOOPBACK}:9>\r\n",
    )
    replies = _udp_exchange(front.kam.internal_port, invite)
    assert [r.status for r in replies] == [403], [r.first for r in replies]
    assert not [m for m in front.meta.seen if m.get("Call-ID") == ["out-foreign"]]


def test_invite_to_meta_goes_over_tls_to_meta_addr_with_sni_meta_host(front: Front) -> None:
    ruri = f"sip:{NUMBER}@wa.meta.vc;transport=tls"
    invite = request(
        "INVITE",
        ruri,
        f"UDP {LOOPBACK}:9",
        call_id="out-meta",
        extra=f"Contact: <sip:gw@{LOOPBACK}:9>\r\n",
    )
    replies = _udp_exchange(front.kam.internal_port, invite, ack=True)
    assert [r.status for r in replies] == [100, 603], [r.first for r in replies]

    def at_meta(method: str) -> Msg | None:
        for m in front.meta.seen:
            if m.get("Call-ID") == ["out-meta"] and m.first.startswith(method + " "):
                return m
        return None

    got = wait_until(lambda: at_meta("INVITE"), 5, what="INVITE at the Meta stand-in")
    assert got.first == f"INVITE {ruri} SIP/2.0"  # Request-URI unchanged
    assert front.meta.sni and front.meta.sni[-1] == "wa.meta.vc"
    assert got.get("Via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{front.kam.public_port};")
    routes = ",".join(got.get("Record-Route")).split(",")
    assert len(routes) == 2, routes  # double Record-Route: TLS side, internal side
    assert f"{LOOPBACK}:{front.kam.public_port};transport=tls;r2=on;lr" in routes[0]
    assert f"{LOOPBACK}:{front.kam.internal_port};r2=on;lr" in routes[1]
    wait_until(lambda: at_meta("ACK"), 5, what="Kamailio's ACK of the 603")


def _uri(header_value: str) -> str:
    return header_value[header_value.index("<") + 1 : header_value.index(">")]


def test_in_dialog_requests_from_an_instance_follow_metas_record_route(front: Front) -> None:
    ruri = f"sip:{ANSWERED}@wa.meta.vc;transport=tls"
    meta_hop = f"sip:{LOOPBACK}:{front.meta.port};transport=tls;lr"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(8)
        sock.bind((LOOPBACK, 0))
        kam = (LOOPBACK, front.kam.internal_port)
        via = f"UDP {LOOPBACK}:{sock.getsockname()[1]}"
        contact = f"Contact: <sip:gw@{LOOPBACK}:{sock.getsockname()[1]}>\r\n"
        data = request("INVITE", ruri, via, call_id="dlg-1", extra=contact)
        invite = parse(data)
        sock.sendto(data, kam)
        replies = [parse(sock.recv(65536))]
        while replies[-1].status < 200:
            replies.append(parse(sock.recv(65536)))
        ok = replies[-1]
        assert ok.status == 200, [r.first for r in replies]
        # Record-Route as the UAC sees it: Meta's entry on top of Kamailio's two
        rr = [_uri(v) for v in ",".join(ok.get("Record-Route")).split(",")]
        assert rr[0] == meta_hop and len(rr) == 3, rr
        route = "Route: " + ", ".join(f"<{u}>" for u in reversed(rr)) + "\r\n"
        target = _uri(ok.get("Contact")[0])
        tags = f"From: {invite.get('From')[0]}\r\nTo: {ok.get('To')[0]}\r\n"

        def in_dialog(method: str, cseq: int) -> bytes:
            branch = "z9hG4bK" + uuid.uuid4().hex[:16]
            return (
                f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/{via};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\n{tags}Call-ID: dlg-1\r\nCSeq: {cseq} {method}\r\n"
                f"{route}Content-Length: 0\r\n\r\n"
            ).encode()

        sock.sendto(in_dialog("ACK", 1), kam)
        sock.sendto(in_dialog("BYE", 2), kam)
        bye_reply = parse(sock.recv(65536))
        assert (bye_reply.status, bye_reply.get("CSeq")) == (200, ["2 BYE"]), bye_reply.first

    def at_meta(method: str) -> Msg | None:
        found = [m for m in front.meta.seen if m.get("Call-ID") == ["dlg-1"]]
        return next((m for m in found if m.first.startswith(method + " ")), None)

    for method in ("ACK", "BYE"):
        got = wait_until(partial(at_meta, method), 5, what=f"{method} at the Meta stand-in")
        assert got.first == f"{method} {target} SIP/2.0"
        # Kamailio consumed its own two Route entries; Meta's is left for Meta
        assert [_uri(v) for v in got.get("Route")] == [meta_hop], got.get("Route")


# --------------------------------------------------------------------------- no fixture


def test_address_list_allows_exactly_the_gateways_meta_networks() -> None:
    from gateway.config import META_NETWORKS

    listed = set()
    for line in (CONFIG_DIR / "address.list").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            group, addr, mask, port, _tag = line.split()
            assert (group, port) == ("1", "0"), line
            listed.add(ipaddress.ip_network(f"{addr}/{mask}"))
    assert listed == {ipaddress.ip_network(n) for n in META_NETWORKS}


def test_site_defines_come_from_kamailio_local_cfg_next_to_the_config() -> None:
    require_kamailio()
    port = free_port(udp=False)
    local = (f"#!define PUBLIC_TLS tls:{LOOPBACK}:{port}\n"
             "#!define PUBLIC_ADVERTISE 192.0.2.10:5061\n")  # fmt: skip
    files = {"kamailio.cfg": CONFIG_FILE, "kamailio-local.cfg": local}

    def check(*extra: str) -> str:
        res = check_config(files, *extra)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout + res.stderr

    # Kamailio 6.1 (the chroot's) names the advertised address with its protocol.
    assert f"tls: {LOOPBACK} [{LOOPBACK}]:{port} advertise tls:192.0.2.10:5061" in check()
    assert f"tls: {LOOPBACK} [{LOOPBACK}]:5061\n" in check("-A", "NO_LOCAL_CFG")


def test_stop_ends_every_kamailio_process(tmp_path: Path) -> None:
    require_kamailio()
    cert, key = self_signed_cert(tmp_path / "certs")
    kam = KamailioProxy(tmp_path / "kam", backends=[f"sip:{LOOPBACK}:9"], cert_file=cert,
                        key_file=key, ca_file=cert, meta_port=9)  # fmt: skip
    with kam:
        pgid = kam.pid
        pids = kam.processes()
        assert kam.pid in pids and len(pids) > 5  # main + receivers, timers, ctl ...
        assert kam.cpu_seconds() > 0.0  # start-up alone takes about 0.1 s here
    kam.stop()  # idempotent

    def gone(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        # a zombie whose parent (init in a container) has not reaped it yet is gone too;
        # a reused PID is no longer in Kamailio's process group
        fields = stat[stat.rfind(")") + 2 :].split()
        return fields[0] == "Z" or int(fields[2]) != pgid

    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert os.path.exists(kam.log_path)
    with kam:  # a restart: same ports, same files
        assert list(kam.dispatcher()) == [f"sip:{LOOPBACK}:9"]
        assert kam.pid != pgid
