"""The gateway's digest client checked by an independent implementation: SIPp 3.8 over TLS.

SIPp 3.8 (sip-tester from Debian sid, inside the Asterisk chroot that
scripts/setup-asterisk-chroot.sh builds) plays Meta's edge as the UAS of a
business-initiated call: it receives the gateway's INVITE over TLS (the gateway
verifies SIPp's certificate for ``localhost``), challenges it
(``realm="wa.meta.vc"``, qop=auth, opaque, MD5 or SHA-256), receives the
re-sent INVITE and checks it; verified: 180 and 200 with a Meta-like SDES answer
(Record-Route pair, Contact ``;ob``), then, after the ACK, a BYE carrying
``x-wa-meta-call-duration``; refused: 403 with Meta's Warning. Each branch logs
which one was taken.

SIPp 3.8's ``<verifyauth>`` reads only the ``Authorization`` header (its
verifier looks up ``Authorization:`` and finds nothing in
``Proxy-Authorization``: "authentication must be digest is "). So:

- with a 401 / WWW-Authenticate challenge SIPp's own verifyauth decides,
  against the number's SIP password and username (digits without '+');
- with Meta's form, 407 / Proxy-Authenticate, SIPp checks every field of the
  Proxy-Authorization by regular expression (username, realm, nonce, uri =
  the Request-URI, opaque, qop, nc, cnonce, algorithm, a response of the right
  length) and the test recomputes the response from what SIPp received, with
  the RFC 7616 formula written out here rather than gateway.sip.auth.

The PBX side is SIPp 3.6 from the host (UDP) placing the call at the gateway's
PBX listener. Every process is started and stopped here by its PID.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.emulator.tlsutil import EmulatorTls
from tests.integration.harness import GatewayProcess, free_port
from tests.peers import free_port as free_block  # SIPp binds audio and video RTP pairs
from tests.peers import require_binary, skip_allowed, start_process, stop_process
from tests.peers.asterisk import require_asterisk_root

pytestmark = pytest.mark.integration

NUMBER = "+15550001111"
PASSWORD = "not-a-real-password-4711"  # what GatewayProcess writes for NUMBER
USER = "+12195550714"
NONCE = "c2lwcC1tZXRhLW5vbmNlLTAwMDE"
OPAQUE = "b3BhcXVlLXdhLW1ldGE"
META_KEY_B64 = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e"  # 30 bytes: AES_CM_128 key || salt

# --------------------------------------------------------------------------- SIPp 3.8: Meta's UAS

META_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="Meta's edge: challenge, verify the digest with SIPp's own verifyauth">
  <recv request="INVITE">
    <action>
      <ereg regexp="^INVITE sip:\\+12195550714@wa\\.meta\\.vc;transport=tls SIP/2\\.0"
            search_in="msg" check_it="true" assign_to="chk"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 {status} {phrase}
[last_Via:]
[last_From:]
[last_To:];tag=chal[pid]T[call_number]
[last_Call-ID:]
[last_CSeq:]
{challenge_header}: Digest realm="wa.meta.vc", {challenge_params}
Server: Facebook SipGateway
Content-Length: 0

]]>
  </send>
  <recv request="ACK"/>
  <recv request="INVITE">
    <action>
      {verify}
      <ereg regexp="^ *2 INVITE" search_in="hdr" header="CSeq:" check_it="true" assign_to="chk"/>
      <ereg regexp="^ *Digest " search_in="hdr" header="{credentials_header}:" check_it="true"
            assign_to="chk"/>
      <ereg regexp="username=&quot;15550001111&quot;" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="realm=&quot;wa\\.meta\\.vc&quot;" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="nonce=&quot;{nonce}&quot;" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="uri=&quot;sip:\\+12195550714@wa\\.meta\\.vc;transport=tls&quot;"
            search_in="hdr" header="{credentials_header}:" check_it="true" assign_to="chk"/>
      <ereg regexp="opaque=&quot;{opaque}&quot;" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="qop=&quot;?auth&quot;?(,|$| )" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="nc=00000001" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="cnonce=&quot;[^&quot;]+&quot;" search_in="hdr" header="{credentials_header}:"
            check_it="true" assign_to="chk"/>
      <ereg regexp="algorithm=&quot;?{algorithm}&quot;?(,|$| )" search_in="hdr"
            header="{credentials_header}:" check_it="true" assign_to="chk"/>
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" check_it="true"
            assign_to="chk,gw_contact"/>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="gw_from"/>
      <ereg regexp=".*" search_in="hdr" header="{credentials_header}:" assign_to="creds"/>
      <log message="CREDENTIALS=[$creds]"/>
    </action>
  </recv>
  <nop test="auth_ok" next="verified"/>

  <nop><action><log message="BRANCH=refused"/></action></nop>
  <send>
    <![CDATA[
SIP/2.0 403 Forbidden
[last_Via:]
[last_From:]
[last_To:];tag=meta[pid]T[call_number]
[last_Call-ID:]
[last_CSeq:]
Warning: 399 wa.meta.vc "Invalid digest credentials"
Server: Facebook SipGateway
Content-Length: 0

]]>
  </send>
  <recv request="ACK" next="done"/>

  <label id="verified"/>
  <nop><action><log message="BRANCH=verified"/></action></nop>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
Record-Route: <sip:localhost:[local_port];transport=tls;lr;x-meta-hop=2>
Record-Route: <sip:localhost:[local_port];transport=tls;lr>
[last_From:]
[last_To:];tag=meta[pid]T[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:+12195550714@localhost:[local_port];transport=tls;ob>;isfocus
Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS
Server: Facebook SipGateway
Content-Length: 0

]]>
  </send>
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
Record-Route: <sip:localhost:[local_port];transport=tls;lr;x-meta-hop=2>
Record-Route: <sip:localhost:[local_port];transport=tls;lr>
[last_From:]
[last_To:];tag=meta[pid]T[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:+12195550714@localhost:[local_port];transport=tls;ob>;isfocus
Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS
Supported: timer
Server: Facebook SipGateway
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1730000000 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio [media_port] RTP/SAVP 111 126
a=rtpmap:111 opus/48000/2
a=fmtp:111 useinbandfec=1
a=rtpmap:126 telephone-event/8000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{meta_key}
a=ptime:20
a=sendrecv
]]>
  </send>
  <recv request="ACK">
    <action>
      <ereg regexp="^ *2 ACK" search_in="hdr" header="CSeq:" check_it="true" assign_to="chk"/>
    </action>
  </recv>
  <pause milliseconds="1500"/>
  <send>
    <![CDATA[
BYE [$gw_contact] SIP/2.0
Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:+12195550714@wa.meta.vc>;tag=meta[pid]T[call_number]
To: [$gw_from]
Call-ID: [call_id]
CSeq: 1 BYE
x-wa-meta-call-duration: 1
Reason: Q.850;cause=16;text="NORMAL_CLEARING"
User-Agent: Facebook SipGateway
Content-Length: 0

]]>
  </send>
  <recv response="200"/>
  <label id="done"/>
</scenario>
"""

# --------------------------------------------------------------------------- SIPp 3.6: the PBX

PBX_CALL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX calls WhatsApp through the gateway, expects {expect}">
  <send retrans="500">
    <![CDATA[
INVITE sip:+12195550714@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]PBX[call_number]
To: <sip:+12195550714@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:agent@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
{tail}
</scenario>
"""

PBX_ANSWERED = """  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]PBX[call_number]
To: <sip:+12195550714@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
  <recv request="BYE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Reason:" assign_to="reason"/>
      <log message="BYE_REASON=[$reason]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
"""

PBX_REFUSED = """  <recv response="{expect}">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Reason:" assign_to="reason"/>
      <ereg regexp=".*" search_in="hdr" header="Warning:" assign_to="warning"/>
      <log message="REASON=[$reason]"/>
      <log message="WARNING=[$warning]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
ACK sip:+12195550714@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-4]
From: "Agent" <sip:agent@[local_ip]:[local_port]>;tag=[pid]PBX[call_number]
To: <sip:+12195550714@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]>
  </send>
"""


# --------------------------------------------------------------------------- running the peers


@dataclass
class MetaUas:
    """SIPp 3.8 inside the chroot, as Meta's UAS over TLS."""

    root: Path
    chroot_dir: str  # the working directory as SIPp sees it
    port: int
    saved: Path  # where the working directory is copied when the test ends
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_dir(self) -> Path:
        return self.root / self.chroot_dir.lstrip("/")

    @property
    def cacert(self) -> Path:
        return self.host_dir / "cacert.pem"

    def file(self, name: str) -> Path:
        return self.host_dir / name

    def text(self, name: str) -> str:
        """A file of SIPp's working directory (or of its copy, once that is removed)."""
        for path in (self.file(name), self.saved / name):
            if path.exists():
                return path.read_text(errors="replace")
        return ""

    def start(self, scenario: str) -> None:
        self.file("meta.xml").write_text(scenario)
        d = self.chroot_dir
        argv = [
            "sipp",
            "-sf",
            "meta.xml",
            "-t",
            "l1",
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_block(4, tcp=False)),
            "-m",
            "1",
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            f"{d}/messages.log",
            "-trace_err",
            "-error_file",
            f"{d}/errors.log",
            "-trace_logs",
            "-log_file",
            f"{d}/logs.log",
            "-trace_screen",
            "-screen_file",
            f"{d}/screen.log",
        ]
        # chroot(8) starts in /; SIPp wants cacert.pem/cakey.pem in its working directory.
        # exec: the shell becomes SIPp, so the PID we hold is SIPp's.
        command = f"cd {d} && exec " + " ".join(argv)
        self.proc = start_process(
            ["chroot", str(self.root), "/bin/sh", "-c", command], self.file("stdout.log")
        )

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def wait(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise

    def report(self) -> str:
        parts = [
            f"--- {name}\n{self.text(name)[-4000:]}"
            for name in ("stdout.log", "errors.log", "logs.log", "messages.log")
        ]
        return "\n".join(parts)


def _sipp_in_chroot(root: Path) -> None:
    if not (root / "usr" / "bin" / "sipp").exists():
        msg = f"SIPp not installed in the chroot {root} (sip-tester): rerun `make asterisk-chroot`"
        if skip_allowed():
            pytest.skip(msg)
        pytest.fail(msg)


@contextmanager
def meta_uas(tmp_path: Path) -> Iterator[MetaUas]:
    """A working directory inside the chroot with SIPp's cacert.pem/cakey.pem: a leaf
    certificate for localhost/127.0.0.1 followed by its CA."""
    root = require_asterisk_root()
    _sipp_in_chroot(root)
    chroot_dir = f"/opt/wagw/sipp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    uas = MetaUas(root, chroot_dir, free_port(), tmp_path / "meta-uas")
    uas.host_dir.mkdir(parents=True)
    try:
        tls = EmulatorTls.create(tmp_path / "meta-tls", dns_names=("localhost",))
        shutil.copy(tls.cert_file, uas.host_dir / "cacert.pem")
        shutil.copy(tls.key_file, uas.host_dir / "cakey.pem")
        yield uas
    finally:
        stop_process(uas.proc)
        if uas.host_dir.exists():
            shutil.copytree(uas.host_dir, uas.saved, dirs_exist_ok=True)
            if os.environ.get("WAGW_KEEP_PEER_FILES") != "1":
                shutil.rmtree(uas.host_dir, ignore_errors=True)


def pbx_call(tmp_path: Path, gw: GatewayProcess, tail: str, name: str) -> tuple[int, str, str]:
    """SIPp 3.6 (the host's) places one call at the gateway's PBX listener; returns its
    exit status, its <log> lines and its message trace."""
    sipp = require_binary("sipp", "sip-tester")
    work = tmp_path / f"pbx-{name}"
    work.mkdir()
    (work / "pbx.xml").write_text(PBX_CALL.format(expect=name, tail=tail))
    argv = [
        sipp,
        f"127.0.0.1:{gw.ports['pbx_listen']}",
        "-sf",
        "pbx.xml",
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-mp",
        str(free_block(4, tcp=False)),
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        "-trace_msg",
        "-message_file",
        "messages.log",
        "-trace_err",
        "-error_file",
        "errors.log",
        "-trace_logs",
        "-log_file",
        "logs.log",
    ]
    proc = subprocess.Popen(
        argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()

    def read(n: str) -> str:
        p = work / n
        return p.read_text(errors="replace") if p.exists() else ""

    trace = read("messages.log") + read("errors.log") + out.decode(errors="replace")[-1500:]
    return proc.returncode, read("logs.log"), trace


@contextmanager
def gateway_toward(tmp_path: Path, uas: MetaUas) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path / "gw",
        {
            "whatsapp": {
                "meta_proxy": f"localhost:{uas.port}",
                "tls": {"ca_file": str(uas.cacert)},
                "default_number": NUMBER,
                "invite_timeout": 10.0,
            }
        },
    )
    (tmp_path / "gw").mkdir()
    with ExitStack() as stack:
        stack.callback(gw.stop)
        gw.start()
        yield gw


def meta_scenario(*, status: int, algorithm: str = "MD5") -> str:
    """Meta's UAS. 401: SIPp's ``<verifyauth>`` decides between 200 and 403. 407: SIPp
    3.8's verifyauth reads only ``Authorization`` (not ``Proxy-Authorization``), so
    there SIPp checks every field of the credentials by regular expression and answers
    200; the test then recomputes the response from SIPp's trace."""
    if status == 401:
        challenge_header, credentials_header = "WWW-Authenticate", "Authorization"
        verify = f'<verifyauth assign_to="auth_ok" username="{NUMBER[1:]}" password="{PASSWORD}"/>'
    else:
        challenge_header, credentials_header = "Proxy-Authenticate", "Proxy-Authorization"
        hex_len = 32 if algorithm == "MD5" else 64
        verify = (
            f'<ereg regexp="response=&quot;[0-9a-f]{{{hex_len}}}&quot;" search_in="hdr" '
            f'header="{credentials_header}:" assign_to="auth_ok"/>'
        )
    return META_UAS.format(
        status=status,
        phrase="Unauthorized" if status == 401 else "Proxy Authentication Required",
        challenge_header=challenge_header,
        challenge_params=f'nonce="{NONCE}", opaque="{OPAQUE}", algorithm={algorithm}, qop="auth"',
        credentials_header=credentials_header,
        verify=verify,
        nonce=NONCE,
        opaque=OPAQUE,
        algorithm=algorithm,
        meta_key=META_KEY_B64,
    )


def _records(gw: GatewayProcess) -> list[dict[str, object]]:
    return [line for line in gw.log_lines() if line.get("event") == "call_record"]


def _digest(algorithm: str, *parts: str) -> str:
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]
    return hashlib.new(name, ":".join(parts).encode()).hexdigest()


def _recompute(creds: str, algorithm: str, password: str) -> bool:
    """RFC 7616 section 3.4.1 with qop=auth, written out here (not gateway.sip.auth)."""
    pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', creds)
    fields = {name: quoted or bare for name, quoted, bare in pairs}
    ha1 = _digest(algorithm, fields["username"], fields["realm"], password)
    ha2 = _digest(algorithm, "INVITE", fields["uri"])
    expected = _digest(
        algorithm, ha1, fields["nonce"], fields["nc"], fields["cnonce"], fields["qop"], ha2
    )
    return bool(expected == fields["response"])


def _run_call(
    tmp_path: Path, scenario: str, pbx_tail: str, expect: str, *, password: str | None = None
) -> tuple[MetaUas, int, str, str, list[dict[str, object]]]:
    with meta_uas(tmp_path) as uas, gateway_toward(tmp_path, uas) as gw:
        if password is not None:
            (gw.workdir / "secrets" / "15550001111.password").write_text(password + "\n")
        uas.start(scenario)
        code, logs, trace = pbx_call(tmp_path, gw, pbx_tail, expect)
        uas.wait()
        records = _records(gw)
    return uas, code, logs, trace, records


def _credentials(uas: MetaUas) -> str:
    logs = uas.text("logs.log")
    assert "CREDENTIALS=" in logs, uas.report()
    return logs.split("CREDENTIALS=", 1)[1].splitlines()[0].strip()


def _assert_connected(
    uas: MetaUas, code: int, logs: str, trace: str, records: list[dict[str, object]]
) -> None:
    assert uas.returncode == 0, uas.report()
    uas_logs = uas.text("logs.log")
    assert "BRANCH=verified" in uas_logs and "BRANCH=refused" not in uas_logs, uas.report()
    assert PASSWORD not in _credentials(uas)
    # The PBX got 200, then Meta's BYE with its Q.850 reason.
    assert code == 0, trace
    assert re.search(r"BYE_REASON= *Q\.850;cause=16", logs), logs
    # The first INVITE answered once: exactly two INVITEs reached SIPp.
    assert uas.text("messages.log").count("INVITE sip:+12195550714@wa.meta.vc") == 2
    assert len(records) == 1, records
    record = records[0]
    assert record["status"] == 200 and record["end_reason"] == "meta_bye", record
    assert record["meta_call_duration"] == "1", record


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_sipp_verifyauth_accepts_the_gateways_answer(tmp_path: Path, algorithm: str) -> None:
    """Meta's challenge as a 401 (qop=auth, opaque): SIPp's own verifyauth accepts the
    gateway's Authorization; the call connects, the PBX gets 200 and Meta's BYE."""
    uas, code, logs, trace, records = _run_call(
        tmp_path, meta_scenario(status=401, algorithm=algorithm), PBX_ANSWERED, "200"
    )
    _assert_connected(uas, code, logs, trace, records)
    assert _credentials(uas).startswith("Digest ")  # in Authorization


def test_sipp_verifyauth_refuses_a_wrong_password(tmp_path: Path) -> None:
    """The gateway holds the wrong password: SIPp's verifyauth fails, it answers 403 with
    Meta's Warning, and the PBX gets 403 with Meta's reason carried over."""
    uas, code, logs, trace, records = _run_call(
        tmp_path,
        meta_scenario(status=401),
        PBX_REFUSED.format(expect=403),
        "403",
        password="a-different-password",
    )
    assert uas.returncode == 0, uas.report()
    uas_logs = uas.text("logs.log")
    assert "BRANCH=refused" in uas_logs and "BRANCH=verified" not in uas_logs, uas.report()
    assert code == 0, trace
    # SIPp's <ereg> values keep the space after the header's colon.
    assert re.search(r"REASON= *SIP;cause=403;", logs), logs
    assert re.search(r'WARNING= *399 wa\.meta\.vc "Invalid digest credentials"', logs), logs
    assert uas.text("messages.log").count("INVITE sip:+12195550714@wa.meta.vc") == 2
    assert len(records) == 1, records
    failure = records[0]["meta_failure"]
    assert isinstance(failure, dict) and failure["reason"] == "bad_digest", records


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_proxy_authorization_as_meta_challenges(tmp_path: Path, algorithm: str) -> None:
    """Meta's own form, 407 Proxy-Authenticate: SIPp checks every field of the gateway's
    Proxy-Authorization (username without '+', realm, nonce, uri = the Request-URI,
    opaque, qop=auth, nc, cnonce, algorithm); its verifyauth cannot read that header, so
    the response is recomputed here from what SIPp received."""
    uas, code, logs, trace, records = _run_call(
        tmp_path, meta_scenario(status=407, algorithm=algorithm), PBX_ANSWERED, "200"
    )
    _assert_connected(uas, code, logs, trace, records)
    creds = _credentials(uas)
    assert _recompute(creds, algorithm, PASSWORD), creds
    assert not _recompute(creds, algorithm, "a-different-password")
