"""Meta's health_status beside the gateway's: polling, the /health merge, disagreements,
the metric and the text for `wa-sip-gateway health`."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import Config
from gateway.metaapi.health import (
    MetaHealthCollector,
    MetaHealthPoller,
    meta_lines,
    parse_health_status,
)
from tests.graph_emulator import APP_ID, GraphEmulator
from tests.graph_emulator.configs import NUMBER, PNID, write_config

GATEWAY = "sip.example.com"


@pytest.fixture
async def emu() -> AsyncIterator[GraphEmulator]:
    async with GraphEmulator() as emulator:
        yield emulator


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def cfg_for(emu: GraphEmulator, tmp_path: Path, **meta: Any) -> Config:
    _, cfg = write_config(emu, tmp_path, meta_api={"poll_health": True, **meta})
    return cfg


def report(status: str = "AVAILABLE", errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The gateway's own /health JSON (gateway.ops.health.Report.to_json's shape)."""
    number: dict[str, Any] = {
        "entity_type": "PHONE_NUMBER",
        "id": NUMBER,
        "can_receive_call_sip": status,
    }
    if errors:
        number["errors"] = errors
    return {
        "health_status": {
            "can_receive_call_sip": status,
            "entities": [
                number,
                {"entity_type": "GATEWAY", "id": GATEWAY, "can_receive_call_sip": "AVAILABLE"},
            ],
        }
    }


def entity(body: dict[str, Any], kind: str = "PHONE_NUMBER") -> dict[str, Any]:
    return next(e for e in body["health_status"]["entities"] if e["entity_type"] == kind)


async def test_meta_blocked_138024_while_we_are_available(
    emu: GraphEmulator, tmp_path: Path
) -> None:
    emu.add_number(PNID, status="ENABLED")  # SIP off at Meta
    poller = MetaHealthPoller(cfg_for(emu, tmp_path), clock=Clock())
    await poller.poll_once()
    await poller.stop()
    body = poller.annotate(report("AVAILABLE"))
    number = entity(body)
    assert number["can_receive_call_sip"] == "AVAILABLE"  # ours is untouched
    meta = number["meta"]
    assert meta["id"] == PNID and meta["can_receive_call_sip"] == "BLOCKED"
    assert meta["stale"] is False and meta["error"] is None
    assert meta["checked_at"] == "2027-01-15T08:00:00+00:00"
    assert [e["entity_type"] for e in meta["entities"]] == ["PHONE_NUMBER", "APP"]
    assert meta["entities"][0]["errors"][0]["error_code"] == 138024
    found = meta["disagreement"]
    assert (found["gateway"], found["meta"]) == ("AVAILABLE", "BLOCKED")
    assert "SIP is not enabled for this number at Meta (138024)" in found["likely_cause"]
    assert "wa-sip-gateway meta apply" in found["likely_cause"]
    assert body["health_status"]["can_receive_call_sip"] == "AVAILABLE"
    assert "meta" not in entity(body, "GATEWAY")  # no meta_api.app_id


async def test_meta_blocked_138025_no_server(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.add_number(PNID, status="ENABLED", sip={"status": "ENABLED", "servers": []})
    poller = MetaHealthPoller(cfg_for(emu, tmp_path, app_id=APP_ID), clock=Clock())
    await poller.poll_once()
    await poller.stop()
    body = poller.annotate(report("LIMITED"))
    found = entity(body)["meta"]["disagreement"]
    assert found["meta"] == "BLOCKED" and found["gateway"] == "LIMITED"
    assert "no SIP server for this number and app (138025)" in found["likely_cause"]
    app = entity(body, "GATEWAY")["meta"]
    assert app["id"] == APP_ID and app["can_receive_call_sip"] == "BLOCKED"
    assert [e["errors"][0]["error_code"] for e in app["entities"]] == [138025]


async def test_we_are_blocked_meta_available(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.configured(PNID, GATEWAY, 5061)
    poller = MetaHealthPoller(cfg_for(emu, tmp_path), clock=Clock())
    await poller.poll_once()
    await poller.stop()
    password = {"error_code": 1201, "error_description": "No SIP password for +15550001111.",
                "possible_solution": "Copy it."}  # fmt: skip
    found = entity(poller.annotate(report("BLOCKED", [password])))["meta"]["disagreement"]
    assert (found["gateway"], found["meta"]) == ("BLOCKED", "AVAILABLE")
    assert "run `wa-sip-gateway meta fetch-password -c FILE`" in found["likely_cause"]
    pbx = {"error_code": 1301, "error_description": "The PBX at udp 127.0.0.1:5080 did not"
           " answer.", "possible_solution": "Check the PBX."}  # fmt: skip
    found = entity(poller.annotate(report("BLOCKED", [pbx])))["meta"]["disagreement"]
    assert found["likely_cause"] == (
        "Meta would send calls, but the gateway cannot take them: The PBX at udp"
        " 127.0.0.1:5080 did not answer. Fix: Check the PBX."
    )


async def test_agreement_has_no_disagreement(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.configured(PNID, GATEWAY, 5061)
    poller = MetaHealthPoller(cfg_for(emu, tmp_path), clock=Clock())
    await poller.poll_once()
    await poller.stop()
    for ours in ("AVAILABLE", "LIMITED"):
        meta = entity(poller.annotate(report(ours)))["meta"]
        assert meta["can_receive_call_sip"] == "AVAILABLE" and "disagreement" not in meta
    emu.force_health(PNID, [{"entity_type": "PHONE_NUMBER", "id": PNID,
                             "can_receive_call_sip": "BLOCKED"}])  # fmt: skip
    await poller.poll_once()
    await poller.stop()
    meta = entity(poller.annotate(report("BLOCKED")))["meta"]
    assert "disagreement" not in meta  # both BLOCKED: agreed


async def test_unknown_meta_error_and_no_reason(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.configured(PNID, GATEWAY, 5061)
    poller = MetaHealthPoller(cfg_for(emu, tmp_path), clock=Clock())
    emu.force_health(PNID, [{"entity_type": "PHONE_NUMBER", "id": PNID,
                             "can_receive_call_sip": "BLOCKED", "errors": [
                                 {"error_code": 138099, "error_description": "Something new.",
                                  "possible_solution": "Ask Meta."}]}])  # fmt: skip
    await poller.poll_once()
    cause = entity(poller.annotate(report()))["meta"]["disagreement"]["likely_cause"]
    assert cause == "Meta reports 138099: Something new. (Meta's suggestion: Ask Meta.)."
    emu.force_health(PNID, [{"entity_type": "PHONE_NUMBER", "id": PNID,
                             "can_receive_call_sip": "BLOCKED"}])  # fmt: skip
    await poller.poll_once()
    await poller.stop()
    cause = entity(poller.annotate(report()))["meta"]["disagreement"]["likely_cause"]
    assert "without a reason" in cause and "certificate chains to a public CA" in cause


async def test_failed_poll_keeps_last_answer_and_goes_stale(
    emu: GraphEmulator, tmp_path: Path
) -> None:
    emu.add_number(PNID, status="ENABLED")
    clock = Clock()
    poller = MetaHealthPoller(cfg_for(emu, tmp_path, health_interval=60, retries=0), clock=clock)
    await poller.poll_once()
    emu.fail("GET", PNID, times=10, status=503)
    clock.now += 120
    await poller.poll_once()
    meta = entity(poller.annotate(report()))["meta"]
    assert meta["can_receive_call_sip"] == "BLOCKED" and "disagreement" in meta
    assert meta["error"] == "HTTP 503: the answer is not JSON (24 bytes)"
    clock.now += 120  # 240 s > 3 intervals since the last answer
    meta = entity(poller.annotate(report()))["meta"]
    assert meta["stale"] is True and "disagreement" not in meta
    await poller.stop()
    assert (poller.counters.ok, poller.counters.error) == (1, 1)


async def test_token_missing_is_a_poll_error(emu: GraphEmulator, tmp_path: Path) -> None:
    cfg = cfg_for(emu, tmp_path)
    (tmp_path / "meta.token").unlink()
    poller = MetaHealthPoller(cfg, clock=Clock())
    await poller.poll_once()
    await poller.stop()
    meta = entity(poller.annotate(report()))["meta"]
    assert meta["can_receive_call_sip"] == "UNKNOWN"
    assert meta["error"].startswith("no Graph API access token (meta_api.access_token_file: ")
    assert emu.requests == []


async def test_off_by_default_and_without_ids(emu: GraphEmulator, tmp_path: Path) -> None:
    _, cfg = write_config(emu, tmp_path)
    poller = MetaHealthPoller(cfg)
    poller.start()
    assert not poller.enabled and poller._task is None
    body = poller.annotate(report())
    assert body == report()
    await poller.stop()


async def test_polls_every_interval_and_follows_reloads(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.configured(PNID, GATEWAY, 5061)
    cfg = cfg_for(emu, tmp_path, health_interval=1)
    poller = MetaHealthPoller(cfg)
    poller.start()
    try:
        for _ in range(100):
            if poller.counters.ok >= 1:
                break
            await asyncio.sleep(0.02)
        assert poller.counters.ok == 1
        # a reload that adds the app polls at once, without waiting for the interval
        new = cfg.model_copy(
            update={"meta_api": cfg.meta_api.model_copy(update={"app_id": APP_ID})}
        )  # type: ignore[union-attr]
        poller.configure(new)
        for _ in range(100):
            if poller.counters.ok >= 3:
                break
            await asyncio.sleep(0.02)
        assert poller.counters.ok == 3
        assert ("APP", APP_ID) in poller.nodes
        # and one that turns polling off ends the task
        off = new.model_copy(
            update={"meta_api": new.meta_api.model_copy(update={"poll_health": False})}
        )  # type: ignore[union-attr]
        poller.configure(off)
        await asyncio.sleep(0.05)
        assert poller._task is not None and poller._task.done()
    finally:
        await poller.stop()


async def test_metric(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.add_number(PNID, status="ENABLED")
    poller = MetaHealthPoller(cfg_for(emu, tmp_path, app_id=APP_ID), clock=Clock())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetaHealthCollector(poller))
    assert b"wagw_meta_health_status{" not in generate_latest(registry)  # nothing polled yet
    await poller.poll_once()
    await poller.stop()
    text = generate_latest(registry).decode()
    assert f'wagw_meta_health_status{{entity="phone_number",id="{NUMBER}"}} 2.0' in text
    assert f'wagw_meta_health_status{{entity="app",id="{APP_ID}"}} 0.0' in text
    assert 'wagw_meta_health_polls_total{result="ok"} 2.0' in text
    assert PNID not in text  # numbers are labelled like wagw_health_status: +E.164


async def test_text_for_the_health_command(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.add_number(PNID, status="ENABLED")
    poller = MetaHealthPoller(cfg_for(emu, tmp_path), clock=Clock())
    await poller.poll_once()
    await poller.stop()
    lines = meta_lines(entity(poller.annotate(report())))
    assert lines[0] == (f"    Meta says: BLOCKED  id {PNID}, checked 2027-01-15T08:00:00+00:00")
    assert lines[1] == f"      PHONE_NUMBER {PNID}: BLOCKED"
    assert lines[2] == "        [138024] SIP is not enabled for this business phone number"
    assert "    DISAGREEMENT: the gateway says AVAILABLE, Meta says BLOCKED" in lines
    assert any(line.startswith("      likely cause: SIP is not enabled") for line in lines)
    assert meta_lines(report()["health_status"]["entities"][0]) == []


def test_parse_is_liberal() -> None:
    body = {"health_status": {"entities": [
        {"entity_type": "PHONE_NUMBER", "id": "1", "can_receive_call_sip": "LIMITED",
         "additional_info": ["slow"]},
        {"entity_type": "WABA", "id": "2", "can_send_message": "AVAILABLE"},
        "junk",
    ]}}  # fmt: skip
    entities = parse_health_status(copy.deepcopy(body))
    assert [(e.entity_type, e.status) for e in entities] == [
        ("PHONE_NUMBER", "LIMITED"), ("WABA", None)
    ]  # fmt: skip
    assert entities[0].to_json()["additional_info"] == ["slow"]
    assert parse_health_status({}) == ()
