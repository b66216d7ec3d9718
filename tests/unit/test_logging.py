"""Tests for gateway.logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway.logging import (
    REDACTED,
    bind_call_key,
    configure_logging,
    get_logger,
    is_secret_key,
    redact_secrets,
    unbind_call_key,
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_GatewayHandler":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in stream.getvalue().splitlines():
        out.append(json.loads(line))
    return out


def test_json_one_object_per_line_with_call_key() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = get_logger("gateway.test")
    with structlog.contextvars.bound_contextvars(call="c0ffee"):
        log.info("call_started", peer="192.0.2.1")
        log.warning("second", n=2)
    log.info("outside")
    [first, second, third] = lines(stream)
    assert first["event"] == "call_started"
    assert first["level"] == "info"
    assert first["call"] == "c0ffee"
    assert first["peer"] == "192.0.2.1"
    assert first["logger"] == "gateway.test"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert second["call"] == "c0ffee" and second["level"] == "warning"
    assert "call" not in third


def test_bind_call_key_and_unbind() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = get_logger()
    bind_call_key("k1")
    log.info("a")
    unbind_call_key()
    log.info("b")
    a, b = lines(stream)
    assert a["call"] == "k1" and "call" not in b


async def test_call_key_is_per_task() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = get_logger("t")

    async def call(key: str) -> None:
        bind_call_key(key)
        await asyncio.sleep(0)
        log.info("in_call", key_seen=key)

    await asyncio.gather(call("one"), call("two"))
    log.info("main")
    records = lines(stream)
    assert {(r["call"], r["key_seen"]) for r in records[:2]} == {("one", "one"), ("two", "two")}
    assert "call" not in records[2]


def test_level_filtering() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "json", stream)
    log = get_logger("t")
    log.info("hidden")
    log.debug("hidden")
    logging.getLogger("other").info("hidden")
    log.error("shown")
    assert [r["event"] for r in lines(stream)] == ["shown"]


def test_invalid_level() -> None:
    with pytest.raises(ValueError):
        configure_logging("chatty", "json", io.StringIO())


def test_stdlib_logging_routed_through_structlog() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    with structlog.contextvars.bound_contextvars(call="abc"):
        logging.getLogger("asyncio").warning("Task %s was destroyed", "t1", extra={"token": "x"})
    [record] = lines(stream)
    assert record["event"] == "Task t1 was destroyed"
    assert record["logger"] == "asyncio"
    assert record["level"] == "warning"
    assert record["call"] == "abc"
    assert record["token"] == REDACTED
    assert "timestamp" in record


def test_exceptions_rendered_in_json() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("t").exception("failed")
        logging.getLogger("aiohttp.server").exception("stdlib failed")
    a, b = lines(stream)
    assert "RuntimeError: boom" in a["exception"]
    assert "RuntimeError: boom" in b["exception"]


def test_reconfigure_replaces_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    log = get_logger("t")  # created before reconfiguration, like module-level loggers
    configure_logging("info", "json", second)
    log.info("x")
    logging.getLogger("y").warning("y")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(second)] == ["x", "y"]


def test_console_format() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    with structlog.contextvars.bound_contextvars(call="k9"):
        get_logger("t").info("hello", password="pw123")
    logging.getLogger("aiohttp").warning("from stdlib")
    text = stream.getvalue()
    assert "hello" in text and "call=k9" in text and "from stdlib" in text
    assert "pw123" not in text
    assert "\x1b[" not in text  # StringIO is not a tty: no colours
    assert len(text.splitlines()) == 2


def test_redaction_in_output() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    get_logger("t").info(
        "auth",
        password="p1",
        sip_password="p2",
        access_token="p3",
        Authorization="Digest x",
        proxy_authorization="p5",
        private_key="p6",
        key="p7",
        call_key="visible",
        key_file="/etc/gw.key",
        user="alice",
    )
    [record] = lines(stream)
    for name in (
        "password",
        "sip_password",
        "access_token",
        "Authorization",
        "proxy_authorization",
        "private_key",
        "key",
    ):
        assert record[name] == REDACTED, name
    assert record["call_key"] == "visible"
    assert record["key_file"] == "/etc/gw.key"
    assert record["user"] == "alice"
    assert all(f"p{i}" not in stream.getvalue() for i in range(1, 8))


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("Password", True),
        ("sip_password", True),
        ("access_token", True),
        ("client-secret", True),
        ("authorization", True),
        ("Proxy-Authorization", True),
        ("key", True),
        ("srtp_key", True),
        ("call_key", False),
        ("key_file", False),
        ("event", False),
        ("monkey", False),
        ("call", False),
    ],
)
def test_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_redact_processor_nested_and_values() -> None:
    event: dict[str, Any] = {
        "event": "sip_in",
        "headers": {"Authorization": "Digest response=1", "Via": "SIP/2.0/TLS x"},
        "items": [{"token": "t"}, "plain"],
        "message": 'INVITE sip:a SIP/2.0\r\nProxy-Authorization: Digest response="r"\r\nVia: v\r\n',
        "sdp": "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7|2^20",
    }
    out = redact_secrets(None, "info", event)
    assert out["headers"] == {"Authorization": REDACTED, "Via": "SIP/2.0/TLS x"}
    assert out["items"] == [{"token": REDACTED}, "plain"]
    assert out["message"] == (
        f"INVITE sip:a SIP/2.0\r\nProxy-Authorization: {REDACTED}\r\nVia: v\r\n"
    )
    assert out["sdp"] == f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{REDACTED}|2^20"


def test_a_dataclass_value_is_logged_as_its_fields() -> None:
    from gateway.media.stats import BridgeStats, LegStats

    stream = io.StringIO()
    configure_logging("info", "json", stream)
    get_logger("t").info("call_record", media=BridgeStats(pbx=LegStats(rx_packets=7)))
    [line] = lines(stream)
    assert line["media"]["pbx"]["rx_packets"] == 7 and line["media"]["passthrough"] is False
