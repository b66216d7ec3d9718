"""``wa-sip-gateway meta show | apply | fetch-password`` against the Graph emulator."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from tests.graph_emulator import TOKEN, GraphEmulator
from tests.graph_emulator.configs import NUMBER, PNID, write_config

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    emulator = GraphEmulator()
    with emulator.running():
        yield emulator


def run(capsys: Capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def config(emu: GraphEmulator, tmp_path: Path, **overrides: Any) -> str:
    path, _ = write_config(emu, tmp_path, **overrides)
    return str(path)


def number(**extra: Any) -> dict[str, Any]:
    """The configs' number entry with ``extra`` keys (srtp, ...)."""
    entry = {
        "number": NUMBER,
        "sip_password_file": "secrets/15550001111.password",
        "phone_number_id": PNID,
        "waba_id": "102290129340398",
    }
    return {**entry, **extra}


# --------------------------------------------------------------------------- show


def test_show_a_fresh_number(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    emu.add_number(PNID, audio={"additional_codecs": ["PCMA", "PCMU"]})
    cfg = config(emu, tmp_path)
    code, out, err = run(capsys, "meta", "show", "-c", cfg)
    assert code == 2, out + err
    assert out.startswith(
        f"{NUMBER} (phone_number_id {PNID}), WABA 102290129340398: 3 problems, 2 warnings\n"
    )
    for text in (
        "[x] calling.status: Calling is DISABLED at Meta",
        "[x] calling.sip.status: SIP is DISABLED at Meta",
        "[x] calling.sip.servers: No SIP server is configured at Meta",
        # srtp: auto (the default) answers Meta's DTLS: a warning about outbound calls only
        "[~] calling.srtp_key_exchange_protocol: Meta's SRTP key exchange is DTLS and"
        " whatsapp.numbers.0.srtp is auto",
        "[~] calling.audio.additional_codecs: G.711 (PCMA,PCMU) is enabled at Meta",
        f"fix: wa-sip-gateway meta apply -c {cfg} (sets calling.status ENABLED).",
        "callback permission   DISABLED",
    ):
        assert text in out, text
    table = out.splitlines()[2:8]
    assert table[0].split() == ["calling", "DISABLED", "ENABLED", "MISMATCH"]
    assert emu.requests and all(r.method == "GET" for r in emu.requests)


def test_show_all_good_exits_0(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    emu.configured(PNID, "sip.example.com", 5061)
    code, out, _ = run(capsys, "meta", "show", "-c", config(emu, tmp_path))
    assert code == 0
    assert f"{NUMBER} (phone_number_id {PNID}), WABA 102290129340398: matches the config" in out
    assert "MISMATCH" not in out


def test_show_json(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    emu.configured(
        PNID,
        "old.example.com",
        5061,
        restrictions={
            "restrictions_list": [
                {
                    "type": "RESTRICTED_BUSINESS_INITIATED_CALLING",
                    "reason": "X",
                    "expiration": 4102444800,
                }
            ]
        },
    )
    code, out, _ = run(capsys, "meta", "show", "-c", config(emu, tmp_path), "--json")
    assert code == 2
    data = json.loads(out)
    assert data["ok"] is False
    (entry,) = data["numbers"]
    assert entry["number"] == NUMBER and entry["phone_number_id"] == PNID
    assert [(f["key"], f["severity"]) for f in entry["findings"]] == [
        ("calling.sip.servers.0.hostname", "error"),
        ("calling.restrictions", "restriction"),
    ]
    assert entry["meta"]["sip"]["servers"][0]["hostname"] == "old.example.com"
    assert entry["gateway"]["sip"]["servers"][0] == {
        "hostname": "sip.example.com",
        "port": 5061,
        "request_uri_user_params": {},
    }
    assert entry["meta"]["restrictions"][0]["expiration"] == 4102444800


def test_show_check_password(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)
    cfg = config(emu, tmp_path)
    code, out, _ = run(capsys, "meta", "show", "-c", cfg, "--check-password")
    assert code == 2
    assert "[x] sip_user_password: The gateway has no SIP password for +15550001111" in out
    secret = tmp_path / "secrets" / "15550001111.password"
    secret.parent.mkdir()
    secret.write_text("stale\n")
    code, out, _ = run(capsys, "meta", "show", "-c", cfg, "--check-password", "--json")
    assert code == 2 and json.loads(out)["numbers"][0]["sip_password"] == "differs"
    assert state.password is not None
    secret.write_text(state.password + "\n")
    code, out, _ = run(capsys, "meta", "show", "-c", cfg, "--check-password")
    assert code == 0 and "matches Meta's" in out
    assert state.password not in out


def test_show_graph_error(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    path, _ = write_config(emu, tmp_path)
    (tmp_path / "meta.token").write_text("EAAexpired")
    code, out, _ = run(capsys, "meta", "show", "-c", str(path))
    assert code == 1
    assert out.startswith(
        f"{NUMBER} (phone_number_id {PNID}): error: 190/463: Error validating access token"
    )
    assert "(fbtrace_id A" in out and "the access token is invalid or expired" in out
    assert "EAAexpired" not in out


# --------------------------------------------------------------------------- apply


def test_apply_dry_run_then_apply_then_idempotent(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    state = emu.add_number(PNID)
    cfg = config(
        emu,
        tmp_path,
        whatsapp={"request_uri_user_params": ";tgrp=wacall", "numbers": [number(srtp="sdes")]},
        meta_api={"calling": {"callback_permission_status": "ENABLED"}},
    )
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg, "--dry-run")
    assert code == 2
    assert out.splitlines() == [
        f"{NUMBER} (phone_number_id {PNID}): 4 changes",
        "  calling.status                      DISABLED  ->  ENABLED",
        "  calling.sip                         DISABLED, no server  ->  ENABLED,"
        " sip.example.com:5061 ;tgrp=wacall",
        "  calling.callback_permission_status  DISABLED  ->  ENABLED",
        "  calling.srtp_key_exchange_protocol  DTLS (default)  ->  SDES",
        "dry run: 4 changes pending, nothing applied.",
    ]
    assert emu.posts() == []

    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 0, out
    assert "  applied.\n" in out and out.endswith("done: 4 changes applied.\n")
    assert f"put it in place with: wa-sip-gateway meta fetch-password -c {cfg}" in out
    assert len(emu.posts()) == 2  # SIP and the rest, then SDES
    assert state.calling["status"] == "ENABLED"
    assert state.calling["sip"]["servers"] == [
        {"hostname": "sip.example.com", "port": 5061, "request_uri_user_params": {"tgrp": "wacall"}}
    ]
    assert state.calling["srtp_key_exchange_protocol"] == "SDES"

    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 0
    assert out == (
        f"{NUMBER} (phone_number_id {PNID}): Meta already matches the config; nothing to change.\n"
        "done: Meta already matched the config; nothing changed.\n"
    )
    assert len(emu.posts()) == 2  # nothing posted the second time
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg, "--dry-run")
    assert code == 0 and out.endswith("dry run: nothing to change.\n")
    code, _, _ = run(capsys, "meta", "show", "-c", cfg)
    assert code == 0


@pytest.mark.parametrize("mode", ["dtls", "auto"])
def test_dtls_at_meta_is_no_error_when_the_mode_allows_it(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys, mode: str
) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061, srtp_key_exchange_protocol="DTLS")
    cfg = config(emu, tmp_path, whatsapp={"numbers": [number(srtp=mode)]})
    code, out, _ = run(capsys, "meta", "show", "-c", cfg)
    assert code == 0, out  # no error; auto warns about calls to WhatsApp
    assert ("[~] calling.srtp_key_exchange_protocol" in out) is (mode == "auto")
    assert "[x]" not in out
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 0 and "nothing to change" in out
    assert emu.posts() == [] and state.calling["srtp_key_exchange_protocol"] == "DTLS"


def test_apply_sets_dtls_for_a_dtls_number(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)  # SDES at Meta
    cfg = config(emu, tmp_path, whatsapp={"numbers": [number(srtp="dtls")]})
    code, out, _ = run(capsys, "meta", "show", "-c", cfg)
    assert code == 2
    assert "[x] calling.srtp_key_exchange_protocol: Meta's SRTP key exchange is SDES" in out
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 0, out
    assert "calling.srtp_key_exchange_protocol  SDES  ->  DTLS" in out
    assert emu.posts() == [{"calling": {"srtp_key_exchange_protocol": "DTLS"}}]
    assert state.calling["srtp_key_exchange_protocol"] == "DTLS"
    assert run(capsys, "meta", "show", "-c", cfg)[0] == 0


def test_apply_moves_the_server_and_g711(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    state = emu.configured(PNID, "old.example.com", 5062)
    generations = state.password_generations
    cfg = config(emu, tmp_path, media={"g711_passthrough": True})
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 0, out
    assert out.splitlines()[1:3] == [
        "  calling.sip                      ENABLED, old.example.com:5062 (none)  ->  ENABLED,"
        " sip.example.com:5061 (none)",
        "  calling.audio.additional_codecs  none  ->  PCMA,PCMU",
    ]
    assert state.calling["sip"]["servers"][0]["hostname"] == "sip.example.com"
    assert state.calling["audio"] == {"additional_codecs": ["PCMA", "PCMU"]}
    assert state.password_generations == generations  # moving the server keeps the password


def test_apply_error_is_reported_and_other_numbers_go_on(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    emu.add_number(PNID)
    other = emu.add_number("200000000000001")
    numbers = [
        {"number": NUMBER, "sip_password_file": "a.pw", "phone_number_id": PNID},
        {
            "number": "+15550002222",
            "sip_password_file": "b.pw",
            "phone_number_id": "200000000000001",
        },
    ]
    cfg = config(emu, tmp_path, whatsapp={"numbers": numbers})
    emu.fail(
        "POST",
        f"{PNID}/settings",
        times=5,
        status=500,
        error={"message": "An unknown error occurred", "code": 1, "subcode": 99},
    )
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 1
    # meta_api.retries: 1
    assert "  error: 1/99: An unknown error occurred (after 2 attempts) (fbtrace_id " in out
    assert "Meta's settings may be partly changed" in out
    assert other.calling["status"] == "ENABLED"  # the second number was still applied


def test_apply_rejected_by_meta(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    emu.add_number(PNID)
    cfg = config(emu, tmp_path)
    emu.fail(
        "POST",
        "settings",
        status=400,
        error={
            "message": "(#100) Invalid parameter",
            "code": 100,
            "subcode": 2494010,
            "details": "hostname must resolve to a public address",
        },
    )
    code, out, _ = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 1
    assert (
        "error: 100/2494010: (#100) Invalid parameter (hostname must resolve to a public"
        " address) (fbtrace_id "
    ) in out
    assert len(emu.posts()) == 1  # a 4xx is not retried


# --------------------------------------------------------------------------- fetch-password


def test_fetch_password(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)
    cfg = config(emu, tmp_path)
    code, out, err = run(capsys, "meta", "fetch-password", "-c", cfg)
    assert code == 0, out + err
    path = tmp_path / "secrets" / "15550001111.password"
    assert state.password is not None
    assert path.read_text() == state.password + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"written to {path} (mode 0600)" in out
    if os.geteuid() == 0:
        assert f"note: {path} is new and owned by root; if the gateway runs as another" in out
    assert state.password not in out + err
    code, out, _ = run(capsys, "meta", "fetch-password", "-c", cfg)
    assert code == 0 and "unchanged" in out


def test_fetch_password_rotate(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    state = emu.configured(PNID, "sip.example.com", 5061)
    old = state.password
    cfg = config(emu, tmp_path)
    assert run(capsys, "meta", "fetch-password", "-c", cfg)[0] == 0
    code, out, err = run(capsys, "meta", "fetch-password", "-c", cfg, "--rotate")
    assert code == 0, out + err
    assert "Meta generated a new SIP password" in out
    assert state.password != old
    path = tmp_path / "secrets" / "15550001111.password"
    assert state.password is not None and path.read_text() == state.password + "\n"
    assert state.password not in out + err and str(old) not in out + err
    assert state.calling["srtp_key_exchange_protocol"] == "SDES"
    assert state.calling["sip"]["status"] == "ENABLED"


def test_fetch_password_env_number_refused(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    emu.configured(PNID, "sip.example.com", 5061)
    numbers = [{"number": NUMBER, "sip_password_env": "WA_PW", "phone_number_id": PNID}]
    cfg = config(emu, tmp_path, whatsapp={"numbers": numbers})
    code, out, _ = run(capsys, "meta", "fetch-password", "-c", cfg)
    assert code == 1
    assert "uses sip_password_env (WA_PW); fetch-password only writes files" in out
    assert not any("include_sip_credentials" in r.query for r in emu.requests)


def test_fetch_password_without_permission(
    emu: GraphEmulator, tmp_path: Path, capsys: Capsys
) -> None:
    emu.sip_credentials_access = False
    emu.configured(PNID, "sip.example.com", 5061)
    code, out, _ = run(capsys, "meta", "fetch-password", "-c", config(emu, tmp_path))
    assert code == 1
    assert "error: 10: (#10) Application does not have permission" in out
    assert not (tmp_path / "secrets" / "15550001111.password").exists()


# --------------------------------------------------------------------------- config problems


def test_no_meta_api_section(tmp_path: Path, capsys: Capsys) -> None:
    path, _ = write_config(None, tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["meta_api"]
    path.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "meta", "show", "-c", str(path))
    assert code == 1
    assert "meta_api: required for the meta commands" in err


def test_token_missing(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    cfg = config(emu, tmp_path)
    (tmp_path / "meta.token").unlink()
    code, _, err = run(capsys, "meta", "apply", "-c", cfg)
    assert code == 1
    assert err.startswith("error: no Graph API access token (meta_api.access_token_file: ")
    assert emu.requests == []


def test_numbers_without_id_are_skipped(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    numbers = [{"number": NUMBER, "sip_password_file": "a.pw"}]
    cfg = config(emu, tmp_path, whatsapp={"numbers": numbers})
    code, _, err = run(capsys, "meta", "show", "-c", cfg)
    assert code == 1
    assert "warning: whatsapp.numbers.0.phone_number_id: not set; +15550001111 skipped" in err
    assert "error: no number to work on" in err
    code, _, err = run(capsys, "meta", "show", "-c", cfg, "--number", "+15559999999")
    assert code == 1 and "not in whatsapp.numbers: +15559999999" in err


def test_token_never_printed(emu: GraphEmulator, tmp_path: Path, capsys: Capsys) -> None:
    emu.add_number(PNID)
    cfg = config(emu, tmp_path)
    emu.fail(
        "GET", "settings", status=400, error={"message": f"token {TOKEN} rejected", "code": 190}
    )
    code, out, err = run(capsys, "meta", "show", "-c", cfg, "--json")
    assert code == 1
    assert TOKEN not in out + err
    assert (
        json.loads(out)["numbers"][0]["error"]
        == "190: token *** rejected (fbtrace_id "
        + (json.loads(out)["numbers"][0]["error"].split("fbtrace_id ")[1])
    )
