"""The daemon as a process, driven by SIPp, a TLS client and hostile input."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    SIPP,
    GatewayProcess,
    run_sipp,
    running_gateway,
    sipp_messages,
)

pytestmark = pytest.mark.integration

OPTIONS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options keepalive">
  <send retrans="500">
    <![CDATA[
      OPTIONS sip:+15550001111@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:probe@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+15550001111@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Contact: <sip:probe@[local_ip]:[local_port];transport=[transport]>
      Accept: application/sdp
      Content-Length: 0

    ]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp="INVITE, ACK, BYE, CANCEL, OPTIONS" search_in="hdr" header="Allow:"
            check_it="true" assign_to="allow"/>
      <ereg regexp="application/sdp" search_in="hdr" header="Accept:"
            check_it="true" assign_to="accept"/>
      <ereg regexp="tag=[^;]+" search_in="hdr" header="To:" check_it="true" assign_to="totag"/>
    </action>
  </recv>
  <Reference variables="allow,accept,totag"/>
</scenario>
"""

INVITE_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE naming a business number that is not configured">
  <send retrans="500">
    <![CDATA[
      INVITE sip:+12195550714@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Agent" <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+12195550714@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Max-Forwards: 70
      Contact: <sip:agent@[local_ip]:[local_port];transport=[transport]>
      X-WA-Business-Number: +15559990000
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 8 101
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="403"/>
  <send>
    <![CDATA[
      ACK sip:+12195550714@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: "Agent" <sip:+15550001111@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+12195550714@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <!-- the 403 is not retransmitted once ACKed: nothing more may arrive -->
  <pause milliseconds="1200"/>
</scenario>
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("gw")) as gw:
        yield gw


def _pbx_remote(gw: GatewayProcess) -> str:
    return f"127.0.0.1:{gw.ports['pbx_listen']}"


needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp not installed (make apt-deps)")


@needs_sipp
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_keepalive(gateway: GatewayProcess, tmp_path: Path, transport: str) -> None:
    result = run_sipp(
        OPTIONS_SCENARIO, tmp_path, _pbx_remote(gateway), transport=transport, calls=20, rate=50
    )
    assert result.returncode == 0, result.stdout + sipp_messages(tmp_path)
    assert "Successful call" in result.stdout
    assert gateway.metric("wagw_sip_requests_total", leg="pbx", method="OPTIONS")


@needs_sipp
def test_sipp_invite_for_unknown_business_number_is_403(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    result = run_sipp(INVITE_SCENARIO, tmp_path, _pbx_remote(gateway), calls=3, rate=10)
    assert result.returncode == 0, result.stdout + sipp_messages(tmp_path)
    trace = sipp_messages(tmp_path)
    assert "SIP/2.0 100 Trying" in trace
    assert "SIP/2.0 403 Forbidden" in trace
    assert trace.count("SIP/2.0 403 Forbidden") == 3  # one per call: ACKed, no retransmission


def _udp_exchange(port: int, data: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def _options(local_port: int, transport: str = "UDP", branch: str = "z9hG4bKopt1") -> bytes:
    return (
        "OPTIONS sip:+15550001111@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch={branch};rport\r\n"
        "From: <sip:probe@127.0.0.1>;tag=abc\r\n"
        "To: <sip:+15550001111@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 7 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_options_answer_headers_and_rport(gateway: GatewayProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind(("127.0.0.1", 0))
        # Via names a port nobody listens on: rport makes the answer come back here.
        s.sendto(_options(9), ("127.0.0.1", gateway.ports["pbx_listen"]))
        data = s.recv(65535).decode()
    assert data.startswith("SIP/2.0 200 OK\r\n")
    assert "\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n" in data
    assert "\r\nAccept: application/sdp\r\n" in data
    assert "\r\nSupported: " in data
    assert ";rport=" in data and "CSeq: 7 OPTIONS" in data


def _tls_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def test_tls_listener_no_alpn_and_answers_options(gateway: GatewayProcess) -> None:
    port = gateway.ports["tls"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        _tls_context(["sip", "h2"]).wrap_socket(raw, server_hostname="sip.example.com") as tls,
    ):
        assert tls.selected_alpn_protocol() is None
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        cert = tls.getpeercert(binary_form=True)
        assert cert
        tls.sendall(_options(tls.getsockname()[1], "TLS", "z9hG4bKtls1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            assert chunk, "connection closed before the answer"
            data += chunk
    assert data.startswith(b"SIP/2.0 200 OK\r\n")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_listener_never_requests_client_certificate(
    gateway: GatewayProcess, version: str
) -> None:
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{gateway.ports['tls']}",
            version,
            "-servername",
            "sip.example.com",
            "-msg",
            "-alpn",
            "sip",
        ],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    out = proc.stdout.decode(errors="replace")
    assert "ServerHello" in out or "server hello" in out.lower(), out
    assert "CertificateRequest" not in out, out
    assert "ALPN protocol: sip" not in out


def test_tls_rejects_tls10(gateway: GatewayProcess) -> None:
    ctx = _tls_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1  # the point of the test
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", gateway.ports["tls"]), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        ctx.wrap_socket(raw, server_hostname="sip.example.com")


MALFORMED: list[bytes] = [
    b"\x00\xff garbage",
    b"INVITE sip:x@y SIP/2.0\r\n\r\n",  # no headers at all: nothing to answer
    b"OPTIONS  sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n\r\n",
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKm1\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: m1\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n",  # CSeq method mismatch: 400 can be formed
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKm2\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: m2\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 999\r\n\r\n",  # body shorter than Content-Length
    b"OPTIONS sip:a@b SIP/7.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKm3\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: m3\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"\r\n" * 2000,
    b"A" * 70000,
]


def test_malformed_flood_then_options_still_served(gateway: GatewayProcess) -> None:
    port = gateway.ports["pbx_listen"]
    before = gateway.metric("wagw_sip_parse_errors_total", leg="pbx") or 0.0
    rng = random.Random(4475)
    answers: dict[bytes, bytes | None] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.3)
        for data in MALFORMED:
            if len(data) > 65000:
                continue  # larger than a UDP datagram; sent over TCP below
            s.sendto(data, ("127.0.0.1", port))
            try:
                answers[data] = s.recv(65535)
            except TimeoutError:
                answers[data] = None
        valid = _options(s.getsockname()[1])
        for _ in range(500):
            junk = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                junk[rng.randrange(len(junk))] = rng.randrange(256)
            s.sendto(bytes(junk), ("127.0.0.1", port))
    assert answers[MALFORMED[4]] is not None and answers[MALFORMED[4]].startswith(b"SIP/2.0 400 ")
    assert answers[MALFORMED[5]] is not None and answers[MALFORMED[5]].startswith(b"SIP/2.0 400 ")
    assert answers[MALFORMED[6]] is not None and answers[MALFORMED[6]].startswith(b"SIP/2.0 505 ")
    assert answers[MALFORMED[0]] is None and answers[MALFORMED[3]] is None
    # Over TCP: garbage and an oversized message close that connection only.
    with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
        c.sendall(b"A" * 70000)
        c.settimeout(3)
        with pytest.raises((ConnectionError, TimeoutError, OSError)):
            while c.recv(65535):
                pass
            raise ConnectionError("closed")
    time.sleep(0.2)
    reply = _udp_exchange(port, _options(9, branch="z9hG4bKafter"))
    assert reply is not None and reply.startswith(b"SIP/2.0 200 OK\r\n")
    after = gateway.metric("wagw_sip_parse_errors_total", leg="pbx") or 0.0
    assert after - before >= 6
    assert gateway.proc is not None and gateway.proc.poll() is None


def test_source_outside_trusted_networks_is_ignored(tmp_path: Path) -> None:
    with running_gateway(tmp_path, pbx={"trusted_networks": ["127.0.0.1/32"]}) as gw:
        port = gw.ports["pbx_listen"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(1.0)
            s.sendto(_options(s.getsockname()[1]), ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                s.recv(65535)
        assert gw.metric("wagw_sip_rejected_sources_total", leg="pbx") == 1.0
        assert gw.metric("wagw_sip_parse_errors_total", leg="pbx") == 0.0
        reply = _udp_exchange(port, _options(9, branch="z9hG4bKtrusted"))
        assert reply is not None and reply.startswith(b"SIP/2.0 200 OK")


def test_sigterm_stops_cleanly_and_secrets_stay_out_of_logs(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    gw.start()
    assert gw.proc is not None
    reply = _udp_exchange(gw.ports["pbx_listen"], _options(9, branch="z9hG4bKterm"))
    assert reply is not None
    os.kill(gw.proc.pid, signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    text = gw.log_text()
    assert '"event": "stopped"' in text
    assert "not-a-real-password-4711" not in text
