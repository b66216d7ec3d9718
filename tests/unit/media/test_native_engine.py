"""The native media engine (issue 12): its SRTP sessions against pylibsrtp's, the engine
choice and its fallback, and a call over real loopback sockets through the poller."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from structlog.testing import capture_logs

from gateway.media import native
from gateway.media.bridge import Bridge, BridgeFactory
from gateway.media.codecs import codec_for
from gateway.media.native import NativeBridge, load_native, native_error, resolve_engine
from gateway.media.rtp import RtpSender, is_rtcp, parse_rtp
from gateway.media.settings import MediaSettings
from gateway.media.srtp import SUITES, SrtpAuthError, SrtpContext, SrtpError, new_key_material
from gateway.media.tone import measure
from gateway.sdp.negotiate import SrtpParams
from gateway.transport.rtp import MediaClock, PortAllocator
from tests.unit.media.bridge_fakes import SUITE, pbx_params, tone_frames, wa_params

needs_native = pytest.mark.skipif(
    load_native() is None, reason=f"native media engine not built: {native_error()}"
)


def test_the_native_engine_is_built_where_make_installs_its_packages() -> None:
    """`make test` (WAGW_REQUIRE_NATIVE=1) has installed gcc, libopus-dev and
    libsrtp2-dev: there a native engine that did not build is a failure, not a skip
    (the daemon itself still starts on the Python engine without it)."""
    if os.environ.get("WAGW_REQUIRE_NATIVE") != "1":
        pytest.skip("WAGW_REQUIRE_NATIVE=1 is set by `make test` only")
    assert load_native() is not None, native_error()


# --------------------------------------------------------------------------- SRTP


@needs_native
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_native_srtp_and_pylibsrtp_understand_each_other(suite: str, srtp_backend: str) -> None:
    module = load_native()
    assert module is not None
    ours, theirs = new_key_material(suite), new_key_material(suite)
    fast = module.Srtp(suite, ours, theirs)
    assert fast.backend == srtp_backend
    ref = SrtpContext(suite, theirs, ours)  # the peer: the keys swapped
    sender = RtpSender(48000, ssrc=0x1234, sequence=100, timestamp=0)
    for i in range(5):
        rtp = sender.next_packet(111, bytes([i]) * 40, 960)
        assert ref.unprotect(fast.protect(rtp)) == rtp
        assert fast.unprotect(ref.protect(rtp)) == rtp
    rtcp = bytes.fromhex("80c90001") + (0x1234).to_bytes(4, "big")
    assert ref.unprotect_rtcp(fast.protect_rtcp(rtcp)) == rtcp
    assert fast.unprotect_rtcp(ref.protect_rtcp(rtcp)) == rtcp
    # Failures: the same errors and counters as SrtpContext.
    packet = ref.protect(sender.next_packet(111, b"x" * 40, 960))
    assert fast.unprotect(packet)
    with pytest.raises(SrtpAuthError) as replay:
        fast.unprotect(packet)
    assert replay.value.replay
    with pytest.raises(SrtpAuthError) as forged:
        fresh = ref.protect(sender.next_packet(111, b"y" * 40, 960))
        fast.unprotect(fresh[:-1] + bytes([fresh[-1] ^ 1]))
    assert not forged.value.replay
    with pytest.raises(SrtpAuthError):
        fast.unprotect(b"\x80")
    assert (fast.auth_failures, fast.replays) == (2, 1)
    with pytest.raises(SrtpError):
        fast.protect(b"\x80" * 1400)  # too long for the session's buffer, as pylibsrtp
    assert ours.hex() not in repr(fast) and suite in repr(fast)


@needs_native
def test_native_srtp_checks_its_keys_as_srtp_context_does() -> None:
    module = load_native()
    assert module is not None
    with pytest.raises(ValueError):
        module.Srtp(SUITE, b"short", new_key_material(SUITE))
    with pytest.raises(ValueError):
        module.Srtp("NULL_HMAC_SHA1_80", new_key_material(SUITE), new_key_material(SUITE))


# --------------------------------------------------------------------------- the choice


def test_python_is_python_and_auto_is_native_when_built() -> None:
    assert resolve_engine("python") == "python"
    expected = "native" if load_native() is not None else "python"
    assert resolve_engine("auto") == expected
    factory = BridgeFactory(
        asyncio.new_event_loop(),
        PortAllocator("127.0.0.1", 47400, 47409),
        None,  # type: ignore[arg-type]
        MediaSettings(engine="python"),
    )
    assert factory.engine == "python"


@pytest.mark.parametrize("requested", ["auto", "native"])
def test_without_the_extension_the_python_engine_runs_and_says_so_once(
    requested: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_native_error", "No module named 'gateway.media._native'")
    with capture_logs() as logs:
        assert resolve_engine(requested) == "python"  # type: ignore[arg-type]
    assert [entry["event"] for entry in logs] == ["media_engine_fallback"]
    assert logs[0]["log_level"] == "warning" and "_native" in logs[0]["reason"]
    with pytest.raises(RuntimeError):
        NativeBridge(
            "k",
            None,
            None,
            None,
            lambda: 0.0,
            lambda leg: None,  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- real sockets


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("engine", ["python", "native"])
async def test_a_call_over_loopback_through_the_poller(engine: str, host: str) -> None:
    """Both directions over real UDP sockets and the shared epoll set: the tones arrive
    at the right pitch, every packet is forwarded, and the native engine took them."""
    if engine == "native" and load_native() is None:
        pytest.skip(f"native media engine not built: {native_error()}")
    loop = asyncio.get_running_loop()
    clock = MediaClock(loop)
    factory = BridgeFactory(
        loop,
        PortAllocator(host, 47410 + (10 if ":" in host else 0), 47419 + (10 if ":" in host else 0)),
        clock,
        MediaSettings(engine=engine),  # type: ignore[arg-type]
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    meta_sock = socket.socket(family, socket.SOCK_DGRAM)
    pbx_sock = socket.socket(family, socket.SOCK_DGRAM)
    bridge = factory("call-1", lambda leg: None)
    try:
        assert isinstance(bridge, NativeBridge) == (engine == "native")
        assert type(bridge) is (NativeBridge if engine == "native" else Bridge)
        for s in (meta_sock, pbx_sock):
            s.bind((host, 0))
            s.setblocking(False)
        meta_addr, pbx_addr = meta_sock.getsockname(), pbx_sock.getsockname()
        keys = SrtpParams(SUITE, new_key_material(SUITE), new_key_material(SUITE), 1)
        wa = wa_params(remote_address=meta_addr[0], remote_port=meta_addr[1], srtp=keys)
        bridge.set_pbx(pbx_params(remote_address=pbx_addr[0], remote_port=pbx_addr[1]))
        bridge.set_whatsapp(wa)
        meta_srtp = SrtpContext(SUITE, keys.remote_key, keys.local_key)
        opus_tx, opus_rx = codec_for("opus", bitrate=20000), codec_for("opus")
        pcmu = codec_for("PCMU")
        meta_send = RtpSender(48000, ssrc=0xAAAA, sequence=10, timestamp=0)
        pbx_send = RtpSender(8000, ssrc=0xBBBB, sequence=20, timestamp=0)
        to_pbx: list[bytes] = []
        to_meta: list[bytes] = []
        frames = 50
        for meta_pcm, pbx_pcm in zip(
            tone_frames(440, frames), tone_frames(1000, frames), strict=True
        ):
            rtp = meta_send.next_packet(111, opus_tx.encode(meta_pcm), 960)
            meta_sock.sendto(meta_srtp.protect(rtp), (host, bridge.whatsapp_port))
            pbx_sock.sendto(
                pbx_send.next_packet(0, pcmu.encode(pbx_pcm), 160), (host, bridge.pbx_port)
            )
            await asyncio.sleep(0.005)
            for s, out in ((pbx_sock, to_pbx), (meta_sock, to_meta)):
                while True:
                    try:
                        out.append(s.recv(2048))
                    except BlockingIOError:
                        break
        await asyncio.sleep(0.05)
        for s, out in ((pbx_sock, to_pbx), (meta_sock, to_meta)):
            while True:
                try:
                    out.append(s.recv(2048))
                except BlockingIOError:
                    break
        pbx_rtp = [parse_rtp(d) for d in to_pbx if not is_rtcp(d)]
        meta_rtp = [parse_rtp(meta_srtp.unprotect(d)) for d in to_meta if not is_rtcp(d)]
        assert len(pbx_rtp) == frames
        assert len(meta_rtp) >= frames  # the first one is the silence frame sent at answer
        heard_pbx = b"".join(pcmu.decode(p.payload) for p in pbx_rtp)
        heard_meta = b"".join(opus_rx.decode(p.payload) for p in meta_rtp[-frames:])
        assert abs(measure(heard_pbx[3200:], 8000)[0] - 440) < 15
        assert abs(measure(heard_meta[3200:], 8000)[0] - 1000) < 15
        assert [p.sequence for p in pbx_rtp] == list(
            range(pbx_rtp[0].sequence, pbx_rtp[0].sequence + frames)
        )
        stats = bridge.stats()
        assert stats.whatsapp.rx_packets == stats.pbx.rx_packets == frames
        if isinstance(bridge, NativeBridge):
            assert bridge.fast_packets >= 2 * frames - 2  # the steady state, natively
    finally:
        bridge.close()
        clock.close()
        meta_sock.close()
        pbx_sock.close()
