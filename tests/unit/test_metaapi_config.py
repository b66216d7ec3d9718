"""meta_api and whatsapp.numbers[].phone_number_id/waba_id in the config."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gateway.config import DEFAULT_GRAPH_VERSION, Config, ConfigError, load_config

BASE = """\
whatsapp:
  hostname: sip.example.com
  tls: {cert_file: gw.crt, key_file: gw.key}
  numbers:
    - number: "+15550001111"
      sip_password_env: WA_TEST_PW
      phone_number_id: 106540352242922
      waba_id: "102290129340398"
"""


def load(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    return load_config(path)


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    return info.value.problems


def test_ids_and_no_meta_api_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    number = cfg.whatsapp.numbers[0]
    assert number.phone_number_id == "106540352242922"  # an unquoted YAML integer is fine
    assert number.waba_id == "102290129340398"
    assert cfg.meta_api is None


def test_defaults_and_token_from_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  EAAtoken \n")
    cfg = load(tmp_path, "meta_api:\n  access_token_file: token\n")
    meta = cfg.meta_api
    assert meta is not None
    assert meta.api_version == DEFAULT_GRAPH_VERSION
    assert meta.base_url == "https://graph.facebook.com"
    assert meta.poll_health is False and meta.health_interval == 300
    assert meta.access_token_file == tmp_path / "token"
    assert meta.read_token() == "EAAtoken"
    (tmp_path / "token").unlink()
    assert meta.read_token() is None


def test_token_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(
        tmp_path, "meta_api: {access_token_env: WA_META_TOKEN, base_url: 'http://127.0.0.1:8/'}\n"
    )
    meta = cfg.meta_api
    assert meta is not None
    assert meta.base_url == "http://127.0.0.1:8"
    monkeypatch.delenv("WA_META_TOKEN", raising=False)
    assert meta.read_token() is None
    monkeypatch.setenv("WA_META_TOKEN", "EAAenv")
    assert meta.read_token() == "EAAenv"


def test_token_never_in_yaml_and_never_echoed(tmp_path: Path) -> None:
    found = problems(tmp_path, "meta_api: {access_token: EAAsecretvalue}\n")
    assert found == [
        "meta_api.access_token: must not be in the YAML file; put the token in a file"
        " (access_token_file) or an environment variable (access_token_env)"
    ]
    assert "EAAsecretvalue" not in "".join(found)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("meta_api: {}\n", "meta_api: exactly one of access_token_file or access_token_env"),
        (
            "meta_api: {access_token_env: A, access_token_file: t}\n",
            "meta_api: exactly one of access_token_file or access_token_env",
        ),
        (
            "meta_api: {access_token_env: A, api_version: '24'}\n",
            'meta_api.api_version: must be a Graph API version such as "v24.0"',
        ),
        (
            "meta_api: {access_token_env: A, base_url: 'ftp://x'}\n",
            "meta_api.base_url: must be an http(s) URL",
        ),
        (
            "meta_api: {access_token_env: A, app_id: 'app'}\n",
            "meta_api.app_id: must be a Graph API id",
        ),
        (
            "meta_api: {access_token_env: A, calling: {call_hours: {timezone_id: UTC,"
            " weekly_operating_hours: [{day_of_week: MONDAY, open_time: 800,"
            " close_time: '1800'}]}}}\n",
            "meta_api.calling.call_hours.weekly_operating_hours.0.open_time: must be a string",
        ),
        (
            "meta_api: {access_token_env: A, calling: {voicemail: {timeout_seconds: 31}}}\n",
            "meta_api.calling.voicemail.timeout_seconds: must be <= 30",
        ),
        (
            "meta_api: {access_token_env: A, health_interval: 0}\n",
            "meta_api.health_interval: must be >= 1",
        ),
    ],
)
def test_problems(tmp_path: Path, extra: str, expected: str) -> None:
    found = problems(tmp_path, extra)
    assert any(p.startswith(expected) for p in found), found


def test_bad_phone_number_id(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE.replace("106540352242922", "'+15550001111'"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "whatsapp.numbers.0.phone_number_id: must be a Graph API id (digits only,"
        " e.g. 106540352242922)"
    ]


def test_calling_settings(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """\
        meta_api:
          access_token_env: A
          calling:
            call_icon_visibility: DISABLE_ALL
            callback_permission_status: ENABLED
            call_hours:
              timezone_id: Europe/Berlin
              weekly_operating_hours:
                - {day_of_week: MONDAY, open_time: "0800", close_time: "1800"}
              holiday_schedule:
                - {date: 2026-12-24, start_time: "0000", end_time: "2359"}
            voicemail: {triggers: [TIMEOUT], timeout_seconds: 20}
        """,
    )
    assert cfg.meta_api is not None
    calling = cfg.meta_api.calling
    assert calling.call_hours is not None and calling.voicemail is not None
    assert calling.call_hours.holiday_schedule[0].date == "2026-12-24"  # a YAML date
    assert calling.voicemail.status == "ENABLED"
    assert calling.voicemail.triggers == ("TIMEOUT",)


def test_example_documents_meta_api(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"
    cfg = load_config(example)
    assert cfg.meta_api is not None and cfg.meta_api.access_token_env == "WA_META_ACCESS_TOKEN"
    assert cfg.meta_api.calling.call_hours is None  # every calling key commented out
    # the commented-out examples are valid as written
    text = example.read_text()
    for key in ("phone_number_id", "waba_id", "app_id"):
        text = re.sub(rf"(?m)^(\s+)# ({key}:)", r"\1\2", text)
    head, marker, calling = text.partition("\n  calling:\n")
    calling = re.sub(
        r"(?m)^(\s+)# ((call_icon_visibility|callback_permission_status|call_hours|voicemail):|  )",
        r"\1\2",
        calling,
    )
    text = head + marker + calling
    copy = tmp_path / "uncommented.yaml"  # relative paths move; load_config does not open them
    copy.write_text(text)
    full = load_config(copy)
    number = full.whatsapp.numbers[0]
    assert (number.phone_number_id, number.waba_id) == ("106540352242922", "102290129340398")
    assert full.meta_api is not None
    calling = full.meta_api.calling
    assert calling.call_icon_visibility == "DEFAULT"
    assert calling.call_hours is not None and calling.call_hours.timezone_id == "Europe/Berlin"
    assert calling.voicemail is not None and calling.voicemail.timeout_seconds == 20
