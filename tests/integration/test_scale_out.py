"""Two gateway instances behind Kamailio (the shipped config/kamailio/kamailio.cfg).

    Meta emulator --TLS--> Kamailio public --UDP--> instance A --UDP--> Asterisk 22
                                        \\--TCP--> instance B --UDP-/
    instance A/B --UDP/TCP--> Kamailio internal --TLS--> Meta emulator (outbound)

Real processes throughout: Kamailio 5.6, two daemons started from YAML files,
Asterisk (Echo() by Request-URI user "echo", and the shipped [to-whatsapp]
dialplan for business-initiated calls), the strict Meta emulator. Audio is
checked as audio on every call: the emulator's 523 Hz goes through an instance
to Asterisk's Echo() and back, and is measured where it comes out.

The tests share one set of processes and run in file order: spread, nonce,
outbound, drain (SIGTERM), crash (SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config.certs import ensure_dev_certificate
from gateway.sip.auth import answer_challenge, parse_challenge
from gateway.sip.message import Response, parse_message
from tests.emulator import (
    CallResult,
    MetaCaller,
    MetaServer,
    UasBehaviour,
    default_tls,
    measure_tone,
)
from tests.emulator.sdp import build_meta_sdp, new_crypto
from tests.integration.harness import GatewayProcess, free_port
from tests.peers.asterisk import AsteriskPbx
from tests.peers.kamailio import KamailioProxy, require_kamailio

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"
USER = "+12195550714"
TONE = 523.0


@dataclass
class Cluster:
    kam: KamailioProxy
    pbx: AsteriskPbx
    instances: dict[str, GatewayProcess]
    uris: dict[str, str]  # instance name -> its dispatcher URI
    ports: dict[str, int]  # instance name -> its proxy_listen port
    meta_port: int  # where Kamailio sends Meta-bound calls (the MetaServer binds it)
    front_cert: Path

    def caller(self, **kwargs: Any) -> MetaCaller:
        return MetaCaller(
            ("127.0.0.1", self.kam.public_port),
            NUMBER,
            PASSWORD,
            request_uri_host="sip.example.com",
            gateway_ca_file=self.front_cert,
            via_proxy=True,
            **kwargs,
        )

    def admitted(self, name: str) -> list[dict[str, Any]]:
        """The calls instance ``name`` admitted (its log), oldest first."""
        return [
            line
            for line in self.instances[name].log_lines()
            if line.get("event") == "call_admitted"
        ]

    def wait_active(self, name: str, state: str = "AP", timeout: float = 10.0) -> None:
        self.kam.wait_state(self.uris[name], state, timeout=timeout)


def _instance(
    workdir: Path, name: str, proxy_port: int, transport: str, kam: KamailioProxy,
    pbx: AsteriskPbx, pbx_listen: int, media: tuple[int, int], secret: Path, tls: bool,
) -> GatewayProcess:  # fmt: skip
    (workdir / name).mkdir(exist_ok=True)
    overrides: dict[str, Any] = {
        "mode": "production",
        "whatsapp": {
            "listen": None,  # Meta reaches this instance only through Kamailio
            "trusted_proxies": ["127.0.0.1/32"],
            "proxy_listen": f"127.0.0.1:{proxy_port}",
            "proxy_transport": transport,
            "outbound_proxy": kam.internal_hostport,
            "default_number": NUMBER,
        },
        "cluster": {"nonce_secret_file": str(secret)},
        "pbx": {
            "address": f"127.0.0.1:{pbx.ast_port}",
            "listen": f"127.0.0.1:{pbx_listen}",
            "request_uri_user": "echo",
        },
        "media": {"port_range": list(media)},
        "logging": {"level": "info"},
    }
    if not tls:  # Kamailio holds Meta's certificate; this instance has none at all
        overrides["whatsapp"]["tls"] = None
    gw = GatewayProcess(workdir / name, overrides)
    tls = workdir / name / "tls"
    ensure_dev_certificate(tls / "gw.crt", tls / "gw.key", "sip.example.com")
    return gw


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_kamailio()
    workdir = tmp_path_factory.mktemp("scale-out")
    secret = workdir / "nonce.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    secret.chmod(0o600)
    front_tls = workdir / "front"
    ensure_dev_certificate(front_tls / "cert.pem", front_tls / "key.pem", "sip.example.com")
    ports = {name: free_port() for name in ("a", "b", "pbx_a", "pbx_b", "meta")}
    uris = {"a": f"sip:127.0.0.1:{ports['a']}", "b": f"sip:127.0.0.1:{ports['b']};transport=tcp"}
    pbx = AsteriskPbx(gw_port=ports["pbx_a"], log_dir=workdir / "ast")
    kam = KamailioProxy(
        workdir / "kamailio",
        backends=[uris["a"], uris["b"]],
        meta_port=ports["meta"],
        cert_file=front_tls / "cert.pem",
        key_file=front_tls / "key.pem",
        ca_file=default_tls().ca_file,
    )
    instances: dict[str, GatewayProcess] = {}
    try:
        pbx.start()
        kam.start()
        for name, transport, media, tls in (("a", "udp", (41000, 41999), True),
                                            ("b", "tcp", (42000, 42999), False)):  # fmt: skip
            gw = _instance(workdir, name, ports[name], transport, kam, pbx, ports[f"pbx_{name}"],
                           media, secret, tls)  # fmt: skip
            instances[name] = gw
            gw.start()
        c = Cluster(kam, pbx, instances, uris, {"a": ports["a"], "b": ports["b"]}, ports["meta"],
                    front_tls / "cert.pem")  # fmt: skip
        c.wait_active("a")
        c.wait_active("b")
        yield c
    finally:
        for gw in instances.values():
            gw.stop()
        kam.stop()
        pbx.stop()


def _assert_echo(result: CallResult) -> None:
    """A clean call whose 523 Hz went to Asterisk's Echo() and came back."""
    assert result.violations == [], result.describe()
    assert result.status == 200, result.describe()
    freq, level = measure_tone(result.received_pcm, result.sample_rate)
    assert abs(freq - TONE) / TONE < 0.02 and level > -30, (freq, level, result.describe())


async def _calls(cluster: Cluster, count: int, talk: float = 3.0) -> list[CallResult]:
    async with cluster.caller(bye_new_connection=True) as caller:
        calls = [caller.call(USER, tone_hz=TONE, talk_seconds=talk) for _ in range(count)]
        return list(await asyncio.gather(*calls))


def test_calls_spread_over_both_instances_with_audio(cluster: Cluster) -> None:
    """Kamailio hashes Call-IDs over both instances; every call: 407 answered (digest is
    end to end), Record-Route of Kamailio and Meta echoed, ACK and Meta's BYE (on a new
    TLS connection to Kamailio) reach the instance that has the call, audio both ways."""
    before = {name: len(cluster.admitted(name)) for name in cluster.instances}

    def took() -> dict[str, int]:
        return {name: len(cluster.admitted(name)) - before[name] for name in cluster.instances}

    results: list[CallResult] = []
    # Batches of 3 until both instances took calls (a hash: 9 calls all on one
    # instance happen 1 time in 256; 15, 1 in 16384).
    while len(results) < 9 or (min(took().values()) == 0 and len(results) < 15):
        results += asyncio.run(_calls(cluster, 3))
    for result in results:
        _assert_echo(result)
        assert [c for c in result.ladder if "407" in c], result.ladder
        assert result.bye_from == "emulator"
    spread = took()
    assert sum(spread.values()) == len(results)
    assert spread["a"] >= 1 and spread["b"] >= 1, spread
    for name in cluster.instances:
        for line in cluster.admitted(name):
            assert line["via_proxy"] is True
            assert line["meta_source"].startswith("127.0.0.1:"), line  # Meta's, not the proxy's
        text = cluster.instances[name].log_text()
        assert "ack_timeout" not in text and "2xx-no-ack" not in text
    # Instance B runs with no TLS listener and no certificate: healthy, and ready.
    status, body = cluster.instances["b"].http_get("/health")
    assert status == 200 and '"can_receive_call_sip": "AVAILABLE"' in body, body
    assert cluster.instances["b"].http_get("/readyz")[0] == 200


def _proxied_invite(port: int, cseq: int, call_id: str, tag: str, auth: str | None) -> bytes:
    """An INVITE as Kamailio relays Meta's: the proxy's Via on top, Meta's under it."""
    crypto = new_crypto(1, "AES_CM_128_HMAC_SHA1_80")
    sdp = build_meta_sdp(address="127.0.0.1", port=9, cryptos=[crypto], ssrc=1234).encode()
    ruri = f"sip:{NUMBER}@sip.example.com;transport=tls"
    lines = [
        f"INVITE {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Via: SIP/2.0/TLS 10.9.8.7:5061;branch=z9hG4bKmeta;received=157.240.1.1;rport=4321",
        "Record-Route: <sip:127.0.0.1;r2=on;lr>",
        "Record-Route: <sip:127.0.0.1:5061;transport=tls;r2=on;lr>",
        "Record-Route: <sip:10.9.8.7:5061;transport=tls;lr>",
        "Max-Forwards: 68",
        f"From: <sip:{USER}@wa.meta.vc>;tag={tag}",
        f"To: <sip:{NUMBER}@sip.example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} INVITE",
        f"Contact: <sip:{USER}@10.9.8.7:5061;transport=tls;ob>",
        "Content-Type: application/sdp",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    lines.append(f"Content-Length: {len(sdp)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + sdp


def _final(sock: socket.socket, timeout: float = 5.0) -> Response:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        msg = parse_message(sock.recv(65535))
        if isinstance(msg, Response) and msg.status >= 200:
            return msg
    raise AssertionError("no final response")


def test_nonce_issued_by_one_instance_verifies_on_the_other(cluster: Cluster) -> None:
    """cluster.nonce_secret_file: a re-sent INVITE may land on another instance (the
    dispatcher set changed in between); its credentials still verify there."""
    a, b = cluster.ports["a"], cluster.ports["b"]
    call_id, tag = f"outgoing:wacid.{secrets.token_hex(8)}", secrets.token_hex(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        udp.sendto(_proxied_invite(port, 1, call_id, tag, None), ("127.0.0.1", a))
        challenge = _final(udp)
        assert challenge.status == 407
        value = challenge.headers.get("Proxy-Authenticate")
        assert value is not None
        ruri = f"sip:{NUMBER}@sip.example.com;transport=tls"
        creds = answer_challenge(parse_challenge(value), "INVITE", ruri, NUMBER[1:], PASSWORD)
        # Instance B over TCP (as Kamailio reaches it), same Call-ID, next CSeq.
        with socket.create_connection(("127.0.0.1", b), timeout=5) as tcp:
            tcp_port = tcp.getsockname()[1]
            data = _proxied_invite(tcp_port, 2, call_id, tag, creds.to_header())
            tcp.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
            answer = _read_final_tcp(tcp)
            assert answer.status == 200, answer
            contact = answer.contact
            assert contact is not None
            to = answer.headers.get("To")
            end = [
                f"Via: SIP/2.0/TCP 127.0.0.1:{tcp_port};branch=z9hG4bK{secrets.token_hex(6)}",
                f"From: <sip:{USER}@wa.meta.vc>;tag={tag}", f"To: {to}", f"Call-ID: {call_id}",
            ]  # fmt: skip
            ack = [f"ACK {contact.uri} SIP/2.0", *end, "CSeq: 2 ACK", "Content-Length: 0"]
            tcp.sendall(("\r\n".join(ack) + "\r\n\r\n").encode())
            end[0] = end[0][: end[0].rindex("=") + 1] + "z9hG4bK" + secrets.token_hex(6)
            bye = [f"BYE {contact.uri} SIP/2.0", *end, "CSeq: 3 BYE", "Content-Length: 0"]
            tcp.sendall(("\r\n".join(bye) + "\r\n\r\n").encode())
            assert _read_final_tcp(tcp).status == 200
    wacid = call_id.removeprefix("outgoing:")  # the call key, from Meta's Call-ID
    admitted = [line for line in cluster.admitted("b") if line["call"] == wacid]
    assert len(admitted) == 1, cluster.admitted("b")
    assert admitted[0]["meta_source"] == "157.240.1.1:4321"


def _read_final_tcp(sock: socket.socket, timeout: float = 8.0) -> Response:
    """The next final response on a TCP stream (Content-Length framing)."""
    end = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < end:
        while b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                break
            buf = rest[length:]
            msg = parse_message(head + b"\r\n\r\n" + rest[:length], datagram=False)
            if isinstance(msg, Response) and msg.status >= 200:
                return msg
        sock.settimeout(max(0.05, end - time.monotonic()))
        chunk = sock.recv(65535)
        if not chunk:
            break
        buf += chunk
    raise AssertionError("no final response on TCP")


async def test_outbound_calls_connect_through_the_proxy(cluster: Cluster) -> None:
    """Asterisk -> instance A -> Kamailio's internal listener -> TLS -> Meta: digest with
    Meta answered, Meta's Record-Route over Kamailio's echoed, audio both ways, Meta's
    BYE back through Kamailio to the instance."""
    behaviour = UasBehaviour(tone_hz=TONE, talk_seconds=4.0)
    server = MetaServer({NUMBER: PASSWORD}, port=cluster.meta_port, behaviour=behaviour)
    await server.start()
    try:
        dest = f"Local/00{USER[1:]}@to-whatsapp"
        await asyncio.to_thread(cluster.pbx.originate, dest, exten="echo")
        result = await server.wait_call(timeout=40)
    finally:
        await server.close()
    _assert_echo(result)
    invite = result.invite or ""
    assert invite.startswith(f"INVITE sip:{USER}@wa.meta.vc;transport=tls SIP/2.0"), invite
    assert f"From: <sip:{NUMBER}@sip.example.com>" in invite
    assert [c for c in result.ladder if "407" in c], result.ladder


def test_sigterm_drains_an_instance_without_losing_a_call(cluster: Cluster) -> None:
    """SIGTERM instance B while it carries calls: they go on with audio until Meta hangs
    up; B answers OPTIONS 503, Kamailio marks it inactive, new calls all go to A and
    none fails; B exits 0 after its last call."""

    async def scenario() -> tuple[list[CallResult], list[CallResult], int]:
        async with cluster.caller(bye_new_connection=True) as caller:
            b_before = len(cluster.admitted("b"))
            long_calls: list[asyncio.Task[CallResult]] = []
            while len(cluster.admitted("b")) == b_before and len(long_calls) < 12:
                long_calls.append(asyncio.ensure_future(
                    caller.call(USER, tone_hz=TONE, talk_seconds=12.0)))  # fmt: skip
                await asyncio.sleep(1.0)
            assert len(cluster.admitted("b")) > b_before, "no call landed on instance B"
            proc = cluster.instances["b"].proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGTERM)
            b_admitted = len(cluster.admitted("b"))
            new_calls = [caller.call(USER, tone_hz=TONE, talk_seconds=2.0) for _ in range(4)]
            during = list(await asyncio.gather(*new_calls))
            after_b = len(cluster.admitted("b")) - b_admitted
            return list(await asyncio.gather(*long_calls)), during, after_b

    long_results, during, after_b = asyncio.run(scenario())
    for result in long_results + during:
        _assert_echo(result)
    assert after_b == 0  # B took no new call once draining
    gw = cluster.instances["b"]
    assert gw.proc is not None
    assert gw.proc.wait(timeout=20) == 0
    drained = [line for line in gw.log_lines() if line.get("event") in ("draining", "drained")]
    assert [line["event"] for line in drained] == ["draining", "drained"]
    # Back for the next test.
    gw.start()
    cluster.wait_active("b")


def test_sigkill_of_an_instance_fails_new_calls_over(cluster: Cluster) -> None:
    """SIGKILL instance A between calls: calls Kamailio hashes to it fail over to B after
    the no-answer timer (or after A is probed dead); none fails."""
    gw = cluster.instances["a"]
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(timeout=10)
    b_before = len(cluster.admitted("b"))
    results = asyncio.run(_calls(cluster, 4))
    for result in results:
        _assert_echo(result)
    assert len(cluster.admitted("b")) - b_before == 4
    cluster.wait_active("a", "I", timeout=10)
    gw.start()
    cluster.wait_active("a")
