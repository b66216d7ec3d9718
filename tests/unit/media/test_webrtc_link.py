"""The WhatsApp leg's WebRTC link (ICE + DTLS-SRTP) against a Meta-like peer, fake clock.

Meta's side here is an ICE-lite responder written from the RFC with the STUN codec
only (tests/unit/ice/icenet.py ``LitePeer``) and a DTLS server endpoint: the link
must nominate with USE-CANDIDATE, handshake as the DTLS client over the nominated
pair, and come out with the SRTP keys the server has, mirrored; every failure ends
the link with a reason the call can name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.ice.agent import new_credentials
from gateway.ice.stun import UseCandidate
from gateway.media.dtls import DtlsCertificate, DtlsEndpoint
from gateway.media.srtp import SrtpContext
from gateway.media.webrtc import DTLS, RTP, STUN, WebRtcLink, demux
from gateway.sdp.webrtc import IceCandidate, WebRtcParams, host_priority
from tests.unit.ice.icenet import LitePeer

GW = ("127.0.0.1", 40000)
META_V4 = ("127.0.0.2", 3480)
META_V6 = ("::1", 3480)
STEP = 0.02  # the media clock

CERT_GW = DtlsCertificate.generate()
CERT_META = DtlsCertificate.generate()


@dataclass
class Meta:
    """ICE-lite + DTLS server on one address; ``dtls_answering`` off: silence to DTLS."""

    ice: LitePeer
    dtls: DtlsEndpoint
    dtls_answering: bool = True
    out: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    dtls_from: list[tuple[str, int]] = field(default_factory=list)

    def receive(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        kind = demux(data[0])
        if kind == STUN:
            self.ice.receive(data, addr, now)
            self.out.extend(self.ice.pop_datagrams())
        elif kind == DTLS and self.dtls_answering:
            self.dtls_from.append(addr)
            self.dtls.receive(data, now)
            self.out.extend((d, addr) for d in self.dtls.pop_datagrams())


def setup(
    *,
    meta_fingerprint: tuple[str, str] | None = None,
    dtls_answering: bool = True,
    ice_answering: bool = True,
    timeout: float = 10.0,
) -> tuple[WebRtcLink, Meta]:
    meta_ufrag, meta_pwd = new_credentials()
    gw_ufrag, gw_pwd = new_credentials()
    candidates = (
        IceCandidate("1", 1, "UDP", host_priority(local_pref=65535), *META_V4, "host"),
        IceCandidate("2", 1, "UDP", host_priority(local_pref=65534), *META_V6, "host"),
    )
    params = WebRtcParams(
        ice_ufrag=meta_ufrag,
        ice_pwd=meta_pwd,
        ice_lite=True,
        candidates=candidates,
        fingerprints=(CERT_META.fingerprint,),
        setup="actpass",
        dtls_client=True,
    )
    meta = Meta(
        LitePeer(meta_ufrag, meta_pwd, gw_ufrag, answering=ice_answering),
        DtlsEndpoint(
            CERT_META,
            client=False,
            remote_fingerprints=(meta_fingerprint or CERT_GW.fingerprint,),
            timeout=timeout,
        ),
        dtls_answering=dtls_answering,
    )
    meta.dtls.start(0.0)
    link = WebRtcLink(
        params,
        local_ufrag=gw_ufrag,
        local_pwd=gw_pwd,
        certificate=CERT_GW,
        family=4,
        now=0.0,
        timeout=timeout,
    )
    return link, meta


def run(link: WebRtcLink, meta: Meta, until: float, now: float = 0.0) -> float:
    """Deliver datagrams at once both ways; the media clock ticks the link every 20 ms."""
    while now < until and link.state not in ("failed", "closed"):
        for data, dst in link.pop_datagrams():
            if dst == META_V4:
                meta.receive(data, GW, now)
        for data, _ in meta.out:
            link.receive(demux(data[0]), data, META_V4, now)
        meta.out.clear()
        now = round(now + STEP, 6)
        link.tick(now)
    return now


def test_link_nominates_meta_and_gets_the_servers_srtp_keys() -> None:
    link, meta = setup()
    run(link, meta, 2.0)
    assert link.state == "connected", link.failure
    assert link.selected == META_V4  # our socket is IPv4: Meta's IPv6 candidate is skipped
    # ICE-lite Meta never checks: we are the controlling agent and nominate.
    assert meta.ice.accepted and any(p.message.get(UseCandidate) for _, p in meta.ice.accepted)
    assert meta.dtls_from and set(meta.dtls_from) == {GW}
    keys, server = link.keys, meta.dtls.keys
    assert keys is not None and server is not None
    assert (keys.suite, keys.local, keys.remote) == (server.suite, server.remote, server.local)
    # The keys work: SRTP from us opens at Meta's side.
    ours = SrtpContext(keys.suite, keys.local, keys.remote)
    theirs = SrtpContext(server.suite, server.local, server.remote)
    rtp = bytes([0x80, 111, 0, 1]) + bytes(8) + b"opus"
    assert theirs.unprotect(ours.protect(rtp)) == rtp
    stats = link.stats()
    assert stats.state == "connected" and stats.nominated == "127.0.0.2:3480"
    assert stats.controlling and stats.dtls_client and stats.failure is None
    assert stats.ice_ms is not None and stats.dtls_ms is not None
    assert stats.checks_sent >= 1 and stats.srtp_suite == "AES_CM_128_HMAC_SHA1_80"


def test_a_certificate_not_the_sdps_fails_the_link() -> None:
    link, meta = setup()
    link.dtls = DtlsEndpoint(
        CERT_GW, client=True, remote_fingerprints=(CERT_GW.fingerprint,), timeout=10.0
    )  # expects a fingerprint Meta's certificate does not have
    run(link, meta, 3.0)
    assert link.state == "failed"
    assert link.failure is not None and link.failure.startswith("DTLS fingerprint")
    assert link.keys is None


def test_meta_refusing_our_fingerprint_fails_the_link_in_time() -> None:
    link, meta = setup(meta_fingerprint=CERT_META.fingerprint, timeout=3.0)
    end = run(link, meta, 5.0)
    assert link.state == "failed" and link.keys is None
    assert end <= 3.1


def test_unanswered_checks_fail_the_link() -> None:
    link, meta = setup(ice_answering=False)
    end = run(link, meta, 12.0)
    assert link.state == "failed" and link.selected is None
    assert link.failure is not None and link.failure.startswith("ICE")
    assert end <= 10.1
    assert meta.ice.accepted  # it did check, with USE-CANDIDATE, and heard nothing


def test_a_handshake_that_never_finishes_ends_at_the_timeout() -> None:
    link, meta = setup(dtls_answering=False)
    end = run(link, meta, 12.0)
    assert link.state == "failed" and link.selected == META_V4
    assert link.failure == "DTLS timeout"
    assert 9.9 <= end <= 10.1


def test_dtls_from_an_unvalidated_address_is_ignored() -> None:
    link, meta = setup()
    run(link, meta, 2.0)
    assert link.state == "connected"
    before = link.dtls.state
    # A ClientHello-looking flood from another address never reaches the DTLS endpoint.
    for i in range(100):
        link.receive(DTLS, bytes([22, 0xFE, 0xFD]) + bytes(10) + bytes([i]), ("10.0.0.9", 5000), 3)
    assert link.dtls.state == before and link.state == "connected"


def test_stun_from_outside_an_ice_lite_peers_candidates_is_refused_unread() -> None:
    link, meta = setup()
    checks = link.ice.checks_sent
    # A well-formed Binding request from an address Meta's SDP does not name: dropped
    # before any MESSAGE-INTEGRITY is computed, and counted by the bridge as foreign.
    for data, _ in link.pop_datagrams():
        assert not link.receive(STUN, data, ("10.0.0.9", 5000), 0.01)
    run(link, meta, 2.0)
    assert link.state == "connected" and link.ice.checks_sent >= checks


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, STUN),
        (3, STUN),
        (20, DTLS),
        (63, DTLS),
        (128, RTP),
        (191, RTP),
        (4, -1),
        (64, -1),
        (192, -1),
    ],
)
def test_rfc7983_demultiplexing(first: int, kind: int) -> None:
    assert demux(first) == kind
