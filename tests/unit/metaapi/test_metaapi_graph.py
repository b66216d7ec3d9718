"""The Graph API client against the Graph emulator: errors, retries, timeouts, secrets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from gateway.metaapi.graph import GraphClient, GraphError, MissingToken
from tests.graph_emulator import TOKEN, GraphEmulator

PNID = "106540352242922"


@pytest.fixture
async def emu() -> AsyncIterator[GraphEmulator]:
    async with GraphEmulator() as emulator:
        emulator.add_number(PNID)
        yield emulator


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(emu: GraphEmulator, token: str = TOKEN, **kwargs: object) -> GraphClient:
    return GraphClient(token, base_url=emu.base_url, version="v24.0", **kwargs)  # type: ignore[arg-type]


async def test_get_and_post(emu: GraphEmulator) -> None:
    async with client(emu) as graph:
        body = await graph.get(f"/{PNID}/settings")
        assert body["calling"]["status"] == "DISABLED"
        assert await graph.post(f"/{PNID}/settings", {"calling": {"status": "ENABLED"}}) == {
            "success": True
        }
    assert emu.numbers[PNID].calling["status"] == "ENABLED"
    assert all(r.authorized for r in emu.requests)
    # the token travels in the Authorization header only, never in the URL
    assert all(TOKEN not in str(r.query) for r in emu.requests)


async def test_graph_error_object_is_shown_code_subcode_message_trace(emu: GraphEmulator) -> None:
    async with client(emu, token="EAAwrong-token") as graph:
        with pytest.raises(GraphError) as info:
            await graph.get(f"/{PNID}/settings")
    err = info.value
    assert (err.code, err.subcode, err.http_status) == (190, 463, 401)
    text = str(err)
    assert text.startswith("190/463: Error validating access token: Session has expired")
    assert text.endswith(f"(fbtrace_id {err.fbtrace_id})") and err.fbtrace_id
    assert "access token is invalid or expired" in err.describe()
    assert len(emu.requests) == 1  # an auth error is not retried


async def test_unknown_object_and_131055(emu: GraphEmulator) -> None:
    async with client(emu) as graph:
        with pytest.raises(GraphError) as info:
            await graph.get("/999/settings")
        assert str(info.value).startswith("100/33: Unsupported get request.")
        emu.numbers[PNID].calling["sip"] = {"status": "ENABLED", "servers": []}
        with pytest.raises(GraphError) as info:
            await graph.post(f"/{PNID}/calls", {"to": "+1"})
    err = info.value
    assert err.code == 131055 and err.subcode is None
    assert str(err).startswith("131055: (#131055) Method not allowed (Calling API endpoints")
    assert "expected while SIP is enabled" in err.describe()


async def test_5xx_is_retried_with_backoff(emu: GraphEmulator) -> None:
    emu.fail("GET", "settings", times=2, status=503)
    sleeps = Sleeps()
    async with client(emu, retries=3, sleep=sleeps) as graph:
        body = await graph.get(f"/{PNID}/settings")
    assert "calling" in body
    assert graph.requests == 3
    assert len(sleeps.delays) == 2
    assert 0.25 <= sleeps.delays[0] <= 0.5 and 0.5 <= sleeps.delays[1] <= 1.0  # doubling, jitter


async def test_rate_limit_error_is_retried_and_retry_after_honoured(emu: GraphEmulator) -> None:
    emu.fail(
        "POST",
        "settings",
        status=400,
        retry_after="3",
        error={"message": "(#80007) Rate limit hit for WABA", "code": 80007},
    )
    sleeps = Sleeps()
    async with client(emu, sleep=sleeps) as graph:
        await graph.post(f"/{PNID}/settings", {"calling": {"status": "ENABLED"}})
    assert sleeps.delays == [3.0]
    assert [r.method for r in emu.requests] == ["POST", "POST"]


async def test_http_429_is_retried(emu: GraphEmulator) -> None:
    limit = {"message": "(#4) Application request limit reached", "code": 4, "transient": True}
    emu.fail("GET", "settings", status=429, error=limit)
    async with client(emu, sleep=Sleeps()) as graph:
        await graph.get(f"/{PNID}/settings")
    assert graph.requests == 2


async def test_retries_run_out(emu: GraphEmulator) -> None:
    emu.fail("GET", "settings", times=5, status=502, body="<html>502 Bad Gateway</html>")
    sleeps = Sleeps()
    async with client(emu, retries=2, sleep=sleeps) as graph:
        with pytest.raises(GraphError) as info:
            await graph.get(f"/{PNID}/settings")
    assert str(info.value) == "HTTP 502: the answer is not JSON (28 bytes) (after 3 attempts)"
    assert graph.requests == 3 and len(sleeps.delays) == 2


async def test_client_errors_are_not_retried(emu: GraphEmulator) -> None:
    async with client(emu, sleep=Sleeps()) as graph:
        with pytest.raises(GraphError) as info:
            await graph.post(
                f"/{PNID}/settings", {"calling": {"srtp_key_exchange_protocol": "SDES"}}
            )
    assert str(info.value).startswith(
        "100: (#100) Invalid parameter (SDES can be used only when SIP signaling is enabled)"
    )
    assert graph.requests == 1


async def test_timeout(emu: GraphEmulator) -> None:
    emu.fail("GET", "settings", times=2, delay=0.5, status=200, body="{}")
    async with client(emu, timeout=0.1, retries=1, sleep=Sleeps()) as graph:
        with pytest.raises(GraphError) as info:
            await graph.get(f"/{PNID}/settings")
    assert "within 0.1 s (meta_api.timeout) (after 2 attempts)" in str(info.value)


async def test_connection_refused() -> None:
    graph = GraphClient(TOKEN, base_url="http://127.0.0.1:9", retries=0)
    async with graph:
        with pytest.raises(GraphError) as info:
            await graph.get("/1/settings")
    assert str(info.value).startswith("cannot reach http://127.0.0.1:9: ")


async def test_secrets_never_in_errors_or_logs(
    emu: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when Meta echoes the token or a password in an error, it is scrubbed."""
    emu.fail(
        "GET",
        "settings",
        status=500,
        error={
            "message": f"bad token {TOKEN} and password meta-pw-123",
            "code": 1,
            "details": f"token={TOKEN}",
        },
    )
    emu.fail("GET", "settings", status=400, error={"message": f"again {TOKEN}", "code": 100})
    caplog.set_level(logging.DEBUG)
    async with client(emu, sleep=Sleeps()) as graph:
        graph.add_secret("meta-pw-123")
        with pytest.raises(GraphError) as info:
            await graph.get(f"/{PNID}/settings")
    texts = [str(info.value), info.value.describe(), caplog.text, repr(info.value.args)]
    assert not any(TOKEN in t or "meta-pw-123" in t for t in texts), texts
    assert "***" in str(info.value)


def test_missing_token() -> None:
    with pytest.raises(MissingToken):
        GraphClient("")
