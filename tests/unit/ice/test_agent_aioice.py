"""The ICE agent against aioice, an independent full ICE agent, live on loopback.

Both sides claim the controlling role, as the gateway does toward a full peer
(baresip): the conflict is resolved by the tie-breakers (RFC 8445 7.3.1.1),
both ways, and then data flows both ways on the nominated pair. aioice is a
test-only dependency (it never runs in the gateway: docs/decisions.md).
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from gateway.ice.agent import IceAgent, IceEvent, Nominated, new_credentials

aioice = pytest.importorskip("aioice")
aioice_ice = pytest.importorskip("aioice.ice")

HOST_PRIORITY = 2130706431


class Driver(asyncio.DatagramProtocol):
    """The agent on a real socket: what transport/rtp.py will do with the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.agent: IceAgent | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.media: list[bytes] = []
        self.events: list[IceEvent] = []
        self.nominated = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.agent is not None
        if not (data[0] <= 3 and self.agent.receive(data, (addr[0], addr[1]), self.loop.time())):
            self.media.append(data)
        self.flush()

    def tick(self) -> None:
        assert self.agent is not None
        self.agent.handle_timeout(self.loop.time())
        self.flush()

    def flush(self) -> None:
        assert self.agent is not None and self.transport is not None
        for data, addr in self.agent.pop_datagrams():
            self.transport.sendto(data, addr)
        for event in self.agent.pop_events():
            self.events.append(event)
            if isinstance(event, Nominated):
                self.nominated.set()
        if self.timer is not None:
            self.timer.cancel()
        when = self.agent.next_timeout()
        self.timer = None if when is None else self.loop.call_at(when, self.tick)


@pytest.mark.parametrize("we_win", [True, False], ids=["our-tie-breaker-wins", "aioice-wins"])
@pytest.mark.parametrize("we_first", [True, False], ids=["we-check-first", "aioice-checks-first"])
async def test_role_conflict_and_media_against_aioice(
    monkeypatch: pytest.MonkeyPatch, we_win: bool, we_first: bool
) -> None:
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda **_: ["127.0.0.1"])
    loop = asyncio.get_running_loop()
    peer = aioice.Connection(ice_controlling=True, components=1, use_ipv6=False)
    await peer.gather_candidates()
    (theirs,) = peer.local_candidates

    driver = Driver(loop)
    transport, _ = await loop.create_datagram_endpoint(lambda: driver, local_addr=("127.0.0.1", 0))
    our_port = transport.get_extra_info("sockname")[1]
    ufrag, pwd = new_credentials()
    driver.agent = IceAgent(
        local_ufrag=ufrag,
        local_pwd=pwd,
        remote_ufrag=peer.local_username,
        remote_pwd=peer.local_password,
        remote_candidates=[(theirs.host, theirs.port, theirs.priority)],
        local_family=4,
        controlling=True,
        remote_lite=False,
        tie_breaker=2**64 - 1 if we_win else 0,
    )
    peer.remote_username, peer.remote_password = ufrag, pwd
    await peer.add_remote_candidate(
        aioice.Candidate(
            foundation="1",
            component=1,
            transport="udp",
            priority=HOST_PRIORITY,
            host="127.0.0.1",
            port=our_port,
            type="host",
        )
    )
    await peer.add_remote_candidate(None)
    try:
        connecting = None
        if not we_first:  # aioice checks first; our agent answers before its own start
            connecting = asyncio.create_task(peer.connect())
            await asyncio.sleep(0.2)
        driver.agent.start(loop.time())
        driver.flush()
        if we_first:
            await asyncio.sleep(0.2)
            connecting = asyncio.create_task(peer.connect())
        await asyncio.wait_for(asyncio.gather(connecting, driver.nominated.wait()), 10)
        ours = driver.agent
        assert ours.controlling is we_win and peer.ice_controlling is not we_win
        # the first check meets the conflict: aioice resolves it when we check first
        # (a 487 when it wins, a switch when it loses), we do when it checks first
        assert ours.role_conflicts == (0 if we_first and we_win else 1)
        assert ours.selected == (theirs.host, theirs.port)
        assert [type(e) for e in driver.events] == [Nominated]

        await peer.send(b"\x80media from aioice")
        for _ in range(100):
            if driver.media:
                break
            await asyncio.sleep(0.01)
        assert driver.media == [b"\x80media from aioice"]
        assert driver.transport is not None
        driver.transport.sendto(b"\x80media from us", ours.selected)
        assert await asyncio.wait_for(peer.recv(), 2) == b"\x80media from us"
    finally:
        await peer.close()
        if driver.timer is not None:
            driver.timer.cancel()
        transport.close()
