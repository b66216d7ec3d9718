"""Meta's calling settings vs the config: every mismatch, and the apply plan."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.metaapi.compare import Comparison, compare, plan
from gateway.metaapi.settings import (
    CallingSettings,
    Desired,
    desired_for,
    parse_uri_params,
    render_uri_params,
)
from tests.graph_emulator.configs import NUMBER, PNID, write_config

NOW = 1_800_000_000.0

GOOD: dict[str, Any] = {
    "calling": {
        "status": "ENABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "ENABLED",
        "sip": {
            "status": "ENABLED",
            "servers": [
                {
                    "hostname": "sip.example.com",
                    "port": 5061,
                    "request_uri_user_params": {"tgrp": "wacall"},
                }
            ],
        },
        "srtp_key_exchange_protocol": "SDES",
        "audio": {"additional_codecs": []},
    }
}


def want(tmp_path: Path, **overrides: Any) -> Desired:
    base: dict[str, Any] = {"whatsapp": {"request_uri_user_params": ";tgrp=wacall"}}
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value)
    _, cfg = write_config(None, tmp_path, **base)
    return desired_for(cfg, 0)


def meta(**changes: Any) -> CallingSettings:
    body = copy.deepcopy(GOOD)
    for key, value in changes.items():
        target = body["calling"]
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return CallingSettings.parse(body)


def keys(result: Comparison) -> list[tuple[str, str]]:
    return [(f.key, f.severity) for f in result.findings]


def test_all_matching(tmp_path: Path) -> None:
    result = compare(meta(), want(tmp_path), now=NOW)
    assert result.findings == [] and result.ok
    assert all(r.ok for r in result.rows if r.ok is not None)
    assert dict(result.context) == {
        "call icon visibility": "DEFAULT",
        "callback permission": "ENABLED",
        "call hours": "not set",
        "Meta voicemail": "not set",
    }
    assert plan(meta(), want(tmp_path)).empty


def test_calling_disabled(tmp_path: Path) -> None:
    result = compare(meta(status="DISABLED"), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.status", "error")]
    finding = result.findings[0]
    assert "Calling is DISABLED at Meta for +15550001111" in finding.message
    assert finding.fix == "wa-sip-gateway meta apply -c FILE (sets calling.status ENABLED)."
    assert not result.ok


def test_sip_disabled(tmp_path: Path) -> None:
    result = compare(meta(sip__status="DISABLED"), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.sip.status", "error")]
    assert "Graph API webhooks instead of SIP" in result.findings[0].message


def test_no_sip_server(tmp_path: Path) -> None:
    result = compare(meta(sip__servers=[]), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.sip.servers", "error")]
    assert "138025" in result.findings[0].message
    assert "sets sip.example.com:5061" in result.findings[0].fix


def test_hostname_and_port_not_this_gateway(tmp_path: Path) -> None:
    server = {"hostname": "old-pbx.example.com", "port": 5062, "request_uri_user_params": {}}
    result = compare(meta(sip__servers=[server]), want(tmp_path), now=NOW)
    assert keys(result) == [
        ("calling.sip.servers.0.hostname", "error"),
        ("calling.sip.servers.0.port", "error"),
        ("calling.sip.servers.0.request_uri_user_params", "warning"),
    ]
    host, port, _ = result.findings
    assert "Meta sends calls to old-pbx.example.com, not this gateway's whatsapp.hostname" in (
        host.message
    )
    assert "port 5062, but the gateway listens on 5061 (whatsapp.listen)" in port.message
    row = next(r for r in result.rows if r.name == "SIP server")
    assert (row.meta, row.gateway, row.ok) == (
        "old-pbx.example.com:5062",
        "sip.example.com:5061",
        False,
    )


def test_hostname_compared_without_case_or_trailing_dot(tmp_path: Path) -> None:
    server = {
        "hostname": "SIP.Example.com.",
        "port": 5061,
        "request_uri_user_params": {"tgrp": "wacall"},
    }
    assert compare(meta(sip__servers=[server]), want(tmp_path), now=NOW).findings == []


def test_listener_port_from_config(tmp_path: Path) -> None:
    desired = want(tmp_path, whatsapp={"listen": "0.0.0.0:5071"})
    assert keys(compare(meta(), desired, now=NOW)) == [("calling.sip.servers.0.port", "error")]


def with_srtp(tmp_path: Path, mode: str) -> Desired:
    number = {"number": NUMBER, "sip_password_file": "pw", "phone_number_id": PNID, "srtp": mode}
    return want(tmp_path, whatsapp={"numbers": [number]})


@pytest.mark.parametrize(
    ("mode", "protocol", "shown", "gateway", "severity"),
    [
        ("sdes", "SDES", "SDES", "SDES", None),
        ("sdes", None, "DTLS (Meta's default)", "SDES", "error"),
        ("sdes", "DTLS", "DTLS", "SDES", "error"),
        ("dtls", None, "DTLS (Meta's default)", "DTLS", None),
        ("dtls", "DTLS", "DTLS", "DTLS", None),
        ("dtls", "SDES", "SDES", "DTLS", "error"),
        ("auto", "SDES", "SDES", "auto (SDES or DTLS)", None),
        ("auto", None, "DTLS (Meta's default)", "auto (SDES or DTLS)", "warning"),
        ("auto", "DTLS", "DTLS", "auto (SDES or DTLS)", "warning"),
    ],
)
def test_srtp_against_the_numbers_mode(
    tmp_path: Path,
    mode: str,
    protocol: str | None,
    shown: str,
    gateway: str,
    severity: str | None,
) -> None:
    result = compare(meta(srtp_key_exchange_protocol=protocol), with_srtp(tmp_path, mode), now=NOW)
    expected = [("calling.srtp_key_exchange_protocol", severity)] if severity else []
    assert keys(result) == expected
    assert result.ok is (severity != "error")
    row = next(r for r in result.rows if r.name == "SRTP key exchange")
    assert (row.meta, row.gateway, row.ok) == (shown, gateway, severity is None)


def test_srtp_findings_say_what_breaks_and_the_fix(tmp_path: Path) -> None:
    (sdes,) = compare(meta(srtp_key_exchange_protocol="DTLS"), with_srtp(tmp_path, "sdes")).findings
    assert sdes.message.startswith(
        "Meta's SRTP key exchange is DTLS, but whatsapp.numbers.0.srtp is sdes: Meta's INVITEs"
        " carry DTLS-SRTP offers the gateway refuses for this number (488)"
    )
    assert sdes.fix == (
        "wa-sip-gateway meta apply -c FILE (sets SDES; needs SIP enabled), or set"
        " whatsapp.numbers.0.srtp: dtls or auto."
    )
    (dtls,) = compare(meta(), with_srtp(tmp_path, "dtls")).findings
    assert "is SDES, but whatsapp.numbers.0.srtp is dtls: Meta's INVITEs carry SDES" in (
        dtls.message
    )
    assert dtls.fix.startswith("wa-sip-gateway meta apply -c FILE (sets DTLS;")
    assert dtls.fix.endswith("set whatsapp.numbers.0.srtp: sdes or auto.")
    (auto,) = compare(meta(srtp_key_exchange_protocol=None), with_srtp(tmp_path, "auto")).findings
    assert "calls from WhatsApp are answered with DTLS-SRTP, but calls to WhatsApp offer SDES" in (
        auto.message
    )
    assert auto.fix.startswith("Set whatsapp.numbers.0.srtp: dtls, or")


@pytest.mark.parametrize(
    ("mode", "protocol", "posted"),
    [
        ("sdes", None, "SDES"),
        ("sdes", "DTLS", "SDES"),
        ("sdes", "SDES", None),
        ("dtls", "SDES", "DTLS"),
        ("dtls", None, None),  # unset is DTLS, Meta's default
        ("dtls", "DTLS", None),
        ("auto", None, None),  # auto leaves Meta's setting alone
        ("auto", "SDES", None),
        ("auto", "DTLS", None),
    ],
)
def test_plan_sets_the_key_exchange_from_the_mode(
    tmp_path: Path, mode: str, protocol: str | None, posted: str | None
) -> None:
    settings = meta(srtp_key_exchange_protocol=protocol)
    todo = plan(settings, with_srtp(tmp_path, mode))
    if posted is None:
        assert todo.empty and todo.bodies == []
        return
    assert todo.bodies == [{"calling": {"srtp_key_exchange_protocol": posted}}]
    (change,) = todo.changes
    assert (change.key, change.before, change.after) == (
        "calling.srtp_key_exchange_protocol",
        protocol or "DTLS (default)",
        posted,
    )


def test_desired_json_names_the_protocol_unless_auto(tmp_path: Path) -> None:
    assert with_srtp(tmp_path, "sdes").to_json()["srtp_key_exchange_protocol"] == "SDES"
    assert with_srtp(tmp_path, "dtls").to_json()["srtp_key_exchange_protocol"] == "DTLS"
    assert "srtp_key_exchange_protocol" not in with_srtp(tmp_path, "auto").to_json()


def test_g711_at_meta_but_not_in_the_gateway(tmp_path: Path) -> None:
    result = compare(meta(audio={"additional_codecs": ["PCMA", "PCMU"]}), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.audio.additional_codecs", "warning")]
    f = result.findings[0]
    assert "enabled at Meta, but the gateway neither offers it" in f.message
    assert "whatsapp.numbers.0.offer_g711" in f.fix and "media.g711_passthrough" in f.fix
    assert result.ok  # calls still work (Opus): a warning


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"whatsapp": {"numbers": None}}, "offers PCMA/PCMU to Meta"),
        ({"media": {"g711_passthrough": True}}, "relays Meta's G.711 untouched"),
    ],
)
def test_g711_in_the_gateway_but_not_at_meta(
    tmp_path: Path, overrides: dict[str, Any], says: str
) -> None:
    if "numbers" in overrides.get("whatsapp", {}):
        desired = want(tmp_path)
        desired = Desired(**{**desired.__dict__, "offer_g711": True})
    else:
        desired = want(tmp_path, **overrides)
    result = compare(meta(), desired, now=NOW)
    assert keys(result) == [("calling.audio.additional_codecs", "warning")]
    assert says in result.findings[0].message
    assert "but G.711 is not enabled at Meta" in result.findings[0].message
    todo = plan(meta(), desired)
    assert todo.bodies == [{"calling": {"audio": {"additional_codecs": ["PCMA", "PCMU"]}}}]


def test_g711_both_sides(tmp_path: Path) -> None:
    desired = want(tmp_path, media={"g711_passthrough": True})
    settings = meta(audio={"additional_codecs": ["PCMU", "PCMA"]})
    assert compare(settings, desired, now=NOW).findings == []
    assert plan(settings, desired).empty


def test_restrictions(tmp_path: Path) -> None:
    restrictions = {
        "restrictions_list": [
            {
                "type": "RESTRICTED_USER_INITIATED_CALLING",
                "reason": "LOW_QUALITY",
                "expiration": int(NOW) + 86400,
            },
            {"type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "expiration": int(NOW) - 60},
        ]
    }
    result = compare(meta(restrictions=restrictions), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.restrictions", "restriction")]
    assert result.findings[0].message == (
        "Meta restricts calls from WhatsApp users to this number"
        " (RESTRICTED_USER_INITIATED_CALLING, reason LOW_QUALITY) until 2027-01-16 08:00 UTC."
    )
    assert not result.ok
    expired = "RESTRICTED_BUSINESS_INITIATED_CALLING until 2027-01-15 07:59 UTC"
    assert ("restriction (expired)", expired) in result.context
    assert plan(meta(restrictions=restrictions), want(tmp_path)).empty  # nothing to set


def test_call_hours_and_callback_shown_for_context(tmp_path: Path) -> None:
    hours = {
        "status": "ENABLED",
        "timezone_id": "America/Manaus",
        "weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "0400", "close_time": "1020"},
            {"day_of_week": "TUESDAY", "open_time": "0108", "close_time": "1020"},
        ],
        "holiday_schedule": [{"date": "2026-01-01", "start_time": "0000", "end_time": "2359"}],
    }
    result = compare(
        meta(call_hours=hours, call_icons={"restrict_to_user_countries": ["BR"]}),
        want(tmp_path),
        now=NOW,
    )
    context = dict(result.context)
    assert context["call hours"] == (
        "ENABLED; America/Manaus; MON 0400-1020, TUE 0108-1020; holidays 2026-01-01 0000-2359"
    )
    assert context["callback permission"] == "ENABLED"
    assert context["call icon visibility"] == "DEFAULT (only users in BR)"


def test_optional_settings_from_config(tmp_path: Path) -> None:
    calling = {
        "call_icon_visibility": "DISABLE_ALL",
        "callback_permission_status": "DISABLED",
        "call_hours": {
            "timezone_id": "Europe/Berlin",
            "weekly_operating_hours": [
                {"day_of_week": "MONDAY", "open_time": "0800", "close_time": "1800"}
            ],
        },
        "voicemail": {"triggers": ["TIMEOUT"], "timeout_seconds": 20},
    }
    desired = want(tmp_path, meta_api={"calling": calling})
    result = compare(meta(), desired, now=NOW)
    assert [k for k, _ in keys(result)] == [
        "calling.call_icon_visibility",
        "calling.callback_permission_status",
        "calling.call_hours",
        "calling.voicemail",
    ]
    assert all(f.severity == "warning" for f in result.findings)
    todo = plan(meta(), desired)
    assert todo.bodies == [
        {
            "calling": {
                "call_icon_visibility": "DISABLE_ALL",
                "callback_permission_status": "DISABLED",
                "call_hours": {
                    "status": "ENABLED",
                    "timezone_id": "Europe/Berlin",
                    "weekly_operating_hours": [
                        {"day_of_week": "MONDAY", "open_time": "0800", "close_time": "1800"}
                    ],
                    "holiday_schedule": [],
                },
                "voicemail": {
                    "status": "ENABLED",
                    "triggers": ["TIMEOUT"],
                    "audio": {"default": {"timeout_seconds": 20}},
                },
            }
        }
    ]
    # what Meta holds afterwards (plus fields of its own) matches: idempotent
    after = copy.deepcopy(GOOD)
    after["calling"].update(todo.bodies[0]["calling"])
    after["calling"]["voicemail"]["audio"]["default"]["announcement_media_id"] = "77"
    assert plan(CallingSettings.parse(after), desired).empty
    assert compare(CallingSettings.parse(after), desired, now=NOW).findings == []


def test_a_numbers_own_calling_settings_override_the_shared_ones(tmp_path: Path) -> None:
    """whatsapp.numbers[].meta_calling: each key it sets replaces meta_api.calling's;
    the rest is inherited (here: the shared call hours, its own voicemail off)."""
    hours = {"timezone_id": "Europe/Berlin", "weekly_operating_hours": []}
    shared = {
        "callback_permission_status": "ENABLED",
        "call_hours": hours,
        "voicemail": {"triggers": ["TIMEOUT"]},
    }
    own = {"callback_permission_status": "DISABLED", "voicemail": {"status": "DISABLED"}}
    number = {
        "number": NUMBER,
        "sip_password_file": "pw",
        "phone_number_id": PNID,
        "meta_calling": own,
    }
    _, cfg = write_config(
        None, tmp_path, whatsapp={"numbers": [number]}, meta_api={"calling": shared}
    )
    calling = desired_for(cfg, 0).calling
    assert calling.callback_permission_status == "DISABLED"
    assert calling.voicemail is not None and calling.voicemail.status == "DISABLED"
    assert calling.voicemail.triggers == ("REJECT", "TIMEOUT")  # own object, defaults
    assert calling.call_hours is not None and calling.call_hours.timezone_id == "Europe/Berlin"
    body = plan(meta(), desired_for(cfg, 0)).bodies[0]["calling"]
    assert body["callback_permission_status"] == "DISABLED"
    assert body["voicemail"]["status"] == "DISABLED" and "call_hours" in body


def test_plan_from_nothing_posts_sip_before_sdes(tmp_path: Path) -> None:
    settings = CallingSettings.parse({"calling": {"status": "DISABLED"}})
    assert [c.key for c in plan(settings, want(tmp_path)).changes] == [
        "calling.status",
        "calling.sip",  # srtp: auto (the default) leaves Meta's DTLS alone
    ]
    todo = plan(settings, with_srtp(tmp_path, "sdes"))
    assert [c.key for c in todo.changes] == [
        "calling.status",
        "calling.sip",
        "calling.srtp_key_exchange_protocol",
    ]
    assert todo.bodies == [
        {
            "calling": {
                "status": "ENABLED",
                "sip": {
                    "status": "ENABLED",
                    "servers": [
                        {
                            "hostname": "sip.example.com",
                            "port": 5061,
                            "request_uri_user_params": {"tgrp": "wacall"},
                        }
                    ],
                },
            }
        },
        {"calling": {"srtp_key_exchange_protocol": "SDES"}},
    ]
    assert todo.enables_sip
    sip = next(c for c in todo.changes if c.key == "calling.sip")
    assert (sip.before, sip.after) == (
        "not set, no server",
        "ENABLED, sip.example.com:5061 ;tgrp=wacall",
    )


def test_plan_replaces_extra_servers(tmp_path: Path) -> None:
    servers = [GOOD["calling"]["sip"]["servers"][0], {"hostname": "b.example.com", "port": 5061}]
    result = compare(meta(sip__servers=servers), want(tmp_path), now=NOW)
    assert keys(result) == [("calling.sip.servers", "warning")]
    todo = plan(meta(sip__servers=servers), want(tmp_path))
    assert [c.key for c in todo.changes] == ["calling.sip"] and not todo.enables_sip


def test_parse_is_liberal_and_keeps_no_password() -> None:
    body = {
        "calling": {
            "sip": {
                "status": "ENABLED",
                "servers": [
                    {"hostname": "h", "port": "5061", "sip_user_password": "s3cret", "app_id": 123},
                    "junk",
                ],
            },
            "voicemail": {"status": "ENABLED", "password": "x"},
            "restrictions": {"restrictions_list": [{"type": "X"}, 5]},
            "audio": "nonsense",
            "new_meta_feature": {"on": True},
        },
        "other_feature": 1,
    }
    settings = CallingSettings.parse(body)
    assert settings.sip_servers[0].port == 5061 and settings.sip_servers[0].app_id == "123"
    assert len(settings.sip_servers) == 2 and settings.sip_servers[1].hostname is None
    assert settings.additional_codecs == ()
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.to_json())
    assert settings.voicemail == {"status": "ENABLED"}
    assert CallingSettings.parse({}).status is None


def test_uri_params_round_trip() -> None:
    params = parse_uri_params(";tgrp=wacall;trunk-context=byoc.example.com;flag")
    assert params == {"tgrp": "wacall", "trunk-context": "byoc.example.com", "flag": ""}
    assert render_uri_params(params) == ";tgrp=wacall;trunk-context=byoc.example.com;flag"
    assert parse_uri_params("") == {} and render_uri_params({}) == "(none)"
