"""SIP password: fetch (include_sip_credentials), rotation, the atomic 0600 write."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.metaapi.graph import GraphClient, GraphError
from gateway.metaapi.password import (
    Secret,
    fetch_credential,
    rotate_password,
    write_password_file,
)
from gateway.metaapi.settings import CallingSettings, desired_for
from tests.graph_emulator import APP_ID, TOKEN, GraphEmulator
from tests.graph_emulator.configs import write_config

PNID = "106540352242922"


@pytest.fixture
async def emu() -> AsyncIterator[GraphEmulator]:
    async with GraphEmulator() as emulator:
        yield emulator


def graph(emu: GraphEmulator) -> GraphClient:
    return GraphClient(TOKEN, base_url=emu.base_url, retries=0)


async def test_fetch(emu: GraphEmulator) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)
    async with graph(emu) as g:
        # without include_sip_credentials Meta sends no password
        plain = await g.get(f"/{PNID}/settings")
        assert "sip_user_password" not in str(plain)
        credential = await fetch_credential(g, PNID)
    assert state.password is not None and credential.password.reveal() == state.password
    assert credential.app_id == APP_ID
    assert state.password not in repr(credential) and state.password not in str(credential)
    assert emu.requests[-1].query == {"include_sip_credentials": "true"}


async def test_fetch_without_sip(emu: GraphEmulator) -> None:
    emu.add_number(PNID, status="ENABLED")
    async with graph(emu) as g:
        with pytest.raises(GraphError) as info:
            await fetch_credential(g, PNID)
    assert str(info.value) == (
        "no SIP password from Meta: SIP is not enabled with a server for this number;"
        " run `meta apply` first"
    )


async def test_fetch_without_advanced_access(emu: GraphEmulator) -> None:
    emu.sip_credentials_access = False
    emu.configured(PNID, "sip.example.com", 5061)
    async with graph(emu) as g:
        with pytest.raises(GraphError) as info:
            await fetch_credential(g, PNID)
    assert info.value.code == 10
    assert "advanced access" in info.value.describe()


async def test_rotate(emu: GraphEmulator, tmp_path: Path) -> None:
    server = {
        "hostname": "sip.example.com",
        "port": 5061,
        "request_uri_user_params": {"tgrp": "wacall"},
    }
    state = emu.configured(
        PNID, "sip.example.com", 5061, sip={"status": "ENABLED", "servers": [server]}
    )
    old = state.password
    _, cfg = write_config(emu, tmp_path)
    async with graph(emu) as g:
        settings = CallingSettings.parse(await g.get(f"/{PNID}/settings"))
        credential = await rotate_password(g, PNID, settings, desired_for(cfg, 0))
    assert state.password_generations == 2
    assert credential.password.reveal() == state.password != old
    assert emu.posts() == [
        {"calling": {"sip": {"status": "DISABLED", "servers": []}}},
        {"calling": {"sip": {"status": "ENABLED", "servers": [server]}}},
        # Meta dropped SDES while SIP was off: set back
        {"calling": {"srtp_key_exchange_protocol": "SDES"}},
    ]
    assert state.calling["sip"] == {"status": "ENABLED", "servers": [server]}
    assert state.calling["srtp_key_exchange_protocol"] == "SDES"


@pytest.mark.parametrize(
    ("mode", "before", "restored"),
    [
        ("dtls", "DTLS", None),  # DTLS is what Meta falls back to: nothing to post
        ("auto", None, None),
        ("dtls", "SDES", "SDES"),  # rotation keeps what was in force; `meta apply` aligns
        ("sdes", "SDES", "SDES"),
    ],
)
async def test_rotate_keeps_the_key_exchange_in_force(
    emu: GraphEmulator, tmp_path: Path, mode: str, before: str | None, restored: str | None
) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061, srtp_key_exchange_protocol=before)
    if before is None:
        state.calling.pop("srtp_key_exchange_protocol")
    number = {"number": "+15550001111", "sip_password_file": "pw", "srtp": mode}
    _, cfg = write_config(emu, tmp_path, whatsapp={"numbers": [number]})
    async with graph(emu) as g:
        settings = CallingSettings.parse(await g.get(f"/{PNID}/settings"))
        await rotate_password(g, PNID, settings, desired_for(cfg, 0))
    posts = emu.posts()
    assert [p["calling"]["sip"]["status"] for p in posts[:2]] == ["DISABLED", "ENABLED"]
    expected = [{"calling": {"srtp_key_exchange_protocol": restored}}] if restored else []
    assert posts[2:] == expected
    assert CallingSettings.parse({"calling": state.calling}).srtp == (before or "DTLS")


async def test_rotate_fails_half_way_says_sip_is_off(emu: GraphEmulator, tmp_path: Path) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)
    _, cfg = write_config(emu, tmp_path)
    async with graph(emu) as g:
        settings = CallingSettings.parse(await g.get(f"/{PNID}/settings"))
        # the first POST (SIP off) goes through, the second (SIP on again) fails
        emu.fail(
            "POST",
            "settings",
            skip=1,
            status=400,
            error={"message": "(#100) Invalid parameter", "code": 100},
        )
        with pytest.raises(GraphError) as info:
            await rotate_password(g, PNID, settings, desired_for(cfg, 0))
    assert "SIP IS NOW DISABLED at Meta" in str(info.value)
    assert "wa-sip-gateway meta apply" in str(info.value)
    assert state.calling["sip"]["status"] == "DISABLED"


async def test_rotate_needs_sip(emu: GraphEmulator, tmp_path: Path) -> None:
    emu.add_number(PNID)
    _, cfg = write_config(emu, tmp_path)
    async with graph(emu) as g:
        settings = CallingSettings.parse(await g.get(f"/{PNID}/settings"))
        with pytest.raises(GraphError, match="no password to rotate"):
            await rotate_password(g, PNID, settings, desired_for(cfg, 0))
    assert emu.posts() == []


# --------------------------------------------------------------------------- the file


def test_write_creates_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "n.password"
    old = os.umask(0)
    try:
        result = write_password_file(path, Secret("pw-1"))
    finally:
        os.umask(old)
    assert result.changed
    assert path.read_text() == "pw-1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["n.password"]  # no temp left


def test_write_is_a_rename_and_unchanged_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "n.password"
    write_password_file(path, Secret("pw-1"))
    before = path.stat().st_ino
    reader = path.open()  # a reader holding the old file sees old content, never a mix
    assert not write_password_file(path, Secret("pw-1")).changed
    assert path.stat().st_ino == before
    assert write_password_file(path, Secret("pw-2")).changed
    assert path.stat().st_ino != before
    assert reader.read() == "pw-1\n" and path.read_text() == "pw-2\n"
    reader.close()


def test_write_fixes_a_loose_mode_even_when_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "n.password"
    path.write_text("pw-1\n")
    path.chmod(0o644)
    assert write_password_file(path, Secret("pw-1")).changed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.password"
    write_password_file(path, Secret("pw-1"))

    def broken(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        write_password_file(path, Secret("pw-2"))
    assert path.read_text() == "pw-1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.password"]


def test_the_gateway_reads_what_was_written(tmp_path: Path) -> None:
    _, cfg = write_config(None, tmp_path)
    number = cfg.whatsapp.numbers[0]
    assert number.sip_password_file is not None
    write_password_file(number.sip_password_file, Secret("from-meta"))
    assert number.read_password() == "from-meta"
    write_password_file(number.sip_password_file, Secret("rotated"))
    assert number.read_password() == "rotated"


def test_secret_hides_itself() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert f"{secret}" == "Secret(***)"
    assert secret.matches("hunter2") and not secret.matches("hunter3") and not secret.matches(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_write_as_root_keeps_the_service_users_ownership(tmp_path: Path) -> None:
    path = tmp_path / "n.password"
    result = write_password_file(path, Secret("pw-1"))
    assert result.created and path.stat().st_uid == 0
    os.chown(path, 12345, 12346)  # e.g. install -o wa-sip-gateway
    result = write_password_file(path, Secret("pw-2"))
    assert result.changed and not result.created
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 12346, 0o600)
