"""Service life pieces: sd_notify datagrams, the watchdog interval, what a reload applies."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.app import merge_live
from gateway.config import Config
from gateway.ops.systemd import Notifier


def _listener(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(1.0)
    return sock


def test_notify_sends_key_value_lines(tmp_path: Path) -> None:
    with _listener(tmp_path) as sock:
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert n.enabled
        assert n.ready("0 active calls,\nhealth AVAILABLE")
        msg = sock.recv(4096).decode()
        assert msg.splitlines() == [
            "READY=1",
            "STATUS=0 active calls, health AVAILABLE",  # one line, always
            f"MAINPID={os.getpid()}",
        ]
        n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.stopping("draining")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        n.reloading()
        assert sock.recv(4096).startswith(b"RELOADING=1\n")
        n.close()


def test_abstract_socket_name(tmp_path: Path) -> None:
    name = f"wagw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1.0)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("x")
        assert sock.recv(100) == b"STATUS=x"


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.ready("x") is False and n.watchdog_interval is None


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.status("x") is False and n.status("y") is False


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 10.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_a_third(env: dict[str, str], interval: float | None) -> None:
    assert Notifier(env).watchdog_interval == interval


def _cfg(**over: object) -> Config:
    data: dict[str, object] = {
        "whatsapp": {
            "hostname": "sip.example.com",
            "tls": {"cert_file": "/x.crt", "key_file": "/x.key"},
            "numbers": [{"number": "+15550001111", "sip_password_file": "/pw"}],
        },
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        target = data.setdefault(section, {})
        assert isinstance(target, dict)
        target[name] = value
    return Config.model_validate(data)


def test_reload_applies_live_keys_and_keeps_socket_keys() -> None:
    old = _cfg()
    new = _cfg(
        limits__max_calls=5,
        shutdown__drain_timeout=10,
        pbx__probe_interval=2.0,
        pbx__address="10.9.9.9:5060",
        http__listen="127.0.0.1:9999",
        media__port_range=[30000, 30100],
    )
    effective, restart = merge_live(old, new)
    assert effective.limits.max_calls == 5
    assert effective.shutdown.drain_timeout == 10
    assert effective.pbx.probe_interval == 2.0
    assert effective.pbx.address == old.pbx.address  # needs a restart
    assert effective.http == old.http and effective.media == old.media
    assert restart == ["pbx.address", "media", "http"]
    same, none = merge_live(old, _cfg())
    assert none == [] and same == old
