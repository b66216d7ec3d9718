"""Meta's calling settings against the config: the differences spelled out (what
each breaks and how to fix it, for ``meta show``) and the change set ``meta apply``
posts. Pure: values in, values out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.metaapi.settings import (
    CallingSettings,
    Desired,
    SipServer,
    as_list,
    as_mapping,
    call_hours_json,
    render_uri_params,
    voicemail_json,
)

__all__ = ["Change", "Comparison", "Finding", "Plan", "Row", "compare", "plan"]

Severity = Literal["error", "warning", "restriction"]
APPLY = "wa-sip-gateway meta apply -c FILE"


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Finding:
    key: str
    severity: Severity
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {
            "key": self.key,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Row:
    """One line of the side-by-side table: ``ok`` None means context only."""

    name: str
    meta: str
    gateway: str
    ok: bool | None


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    context: list[tuple[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def _same_host(a: str | None, b: str) -> bool:
    return a is not None and a.lower().removesuffix(".") == b.lower().removesuffix(".")


def _server_matches(server: SipServer, want: Desired) -> tuple[bool, bool, bool]:
    return (
        _same_host(server.hostname, want.hostname),
        server.port == want.port,
        server.request_uri_user_params == want.uri_params,
    )


def _hours_text(hours: Mapping[str, Any] | None) -> str:
    if not hours:
        return "not set"
    parts = [str(hours.get("status") or "?")]
    if hours.get("timezone_id"):
        parts.append(str(hours["timezone_id"]))
    weekly = [
        f"{str(h.get('day_of_week', '?'))[:3]} {h.get('open_time', '?')}-{h.get('close_time', '?')}"
        for h in map(as_mapping, as_list(hours.get("weekly_operating_hours")))
    ]
    if weekly:
        parts.append(", ".join(weekly))
    holidays = [
        f"{h.get('date', '?')} {h.get('start_time', '?')}-{h.get('end_time', '?')}"
        for h in map(as_mapping, as_list(hours.get("holiday_schedule")))
    ]
    if holidays:
        parts.append("holidays " + ", ".join(holidays))
    return "; ".join(parts)


def _voicemail_text(vm: Mapping[str, Any] | None) -> str:
    if not vm:
        return "not set"
    text = str(vm.get("status") or "?")
    triggers = as_list(vm.get("triggers"))
    if triggers:
        text += " on " + "/".join(map(str, triggers))
    default = as_mapping(as_mapping(vm.get("audio")).get("default"))
    if default.get("timeout_seconds") is not None:
        text += f", after {default['timeout_seconds']} s"
    return text


def _norm_hours(hours: Mapping[str, Any] | None) -> Any:
    if hours is None:
        return None

    def items(key: str) -> list[tuple[tuple[str, str], ...]]:
        return sorted(
            tuple(sorted((str(k), str(v)) for k, v in as_mapping(item).items()))
            for item in as_list(hours.get(key))
        )

    return (
        hours.get("status"),
        hours.get("timezone_id"),
        items("weekly_operating_hours"),
        items("holiday_schedule"),
    )


def _norm_voicemail(vm: Mapping[str, Any] | None) -> Any:
    if vm is None:
        return None
    default = as_mapping(as_mapping(vm.get("audio")).get("default"))
    return (
        vm.get("status"),
        sorted(map(str, as_list(vm.get("triggers")))),
        default.get("announcement_media_id"),
        default.get("timeout_seconds"),
    )


def _voicemail_matches(meta: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    """Equal on what the config sets (an unset timeout/announcement is not compared)."""
    if meta is None:
        return False
    got, exp = _norm_voicemail(meta), _norm_voicemail(want)
    return all(e is None or g == e for g, e in zip(got, exp, strict=True))


def compare(settings: CallingSettings, want: Desired, *, now: float | None = None) -> Comparison:
    """Meta's settings next to the config's, every mismatch with its consequence and fix."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    out = Comparison()
    key = f"whatsapp.numbers.{want.index}"
    number = want.number.number

    ok = settings.status == "ENABLED"
    out.rows.append(Row("calling", settings.status or "not set", "ENABLED", ok))
    if not ok:
        out.findings.append(
            Finding(
                "calling.status",
                "error",
                f"Calling is {settings.status or 'not enabled'} at Meta for {number}: "
                "WhatsApp shows no call button and no calls reach the gateway.",
                f"{APPLY} (sets calling.status ENABLED).",
            )
        )

    ok = settings.sip_status == "ENABLED"
    out.rows.append(Row("SIP", settings.sip_status or "not set", "ENABLED", ok))
    if not ok:
        out.findings.append(
            Finding(
                "calling.sip.status",
                "error",
                f"SIP is {settings.sip_status or 'not enabled'} at Meta: calls are signalled "
                "through Graph API webhooks instead of SIP to this gateway.",
                f"{APPLY} (enables SIP with this gateway as the server).",
            )
        )

    gateway_server = f"{want.hostname}:{want.port}"
    server = settings.sip_servers[0] if settings.sip_servers else None
    if server is None:
        out.rows.append(Row("SIP server", "none", gateway_server, False))
        out.findings.append(
            Finding(
                "calling.sip.servers",
                "error",
                "No SIP server is configured at Meta for this number (Meta's health says 138025):"
                " Meta has nowhere to send calls.",
                f"{APPLY} (sets {gateway_server}: whatsapp.hostname and the port of"
                " whatsapp.listen).",
            )
        )
    else:
        host_ok, port_ok, params_ok = _server_matches(server, want)
        out.rows.append(Row("SIP server", server.where, gateway_server, host_ok and port_ok))
        if not host_ok:
            out.findings.append(
                Finding(
                    "calling.sip.servers.0.hostname",
                    "error",
                    f"Meta sends calls to {server.hostname or '(no hostname)'}, not this gateway's"
                    f" whatsapp.hostname {want.hostname}.",
                    f"{APPLY}, or correct whatsapp.hostname if Meta's value is the right one (the"
                    " certificate must cover it).",
                )
            )
        if not port_ok:
            out.findings.append(
                Finding(
                    "calling.sip.servers.0.port",
                    "error",
                    f"Meta connects to port {server.port}, but the gateway listens on {want.port}"
                    " (whatsapp.listen).",
                    f"{APPLY}, or change whatsapp.listen (a port forward in between must map"
                    f" {server.port} to {want.port}).",
                )
            )
        out.rows.append(
            Row(
                "request URI user params",
                render_uri_params(server.request_uri_user_params),
                render_uri_params(want.uri_params),
                params_ok,
            )
        )
        if not params_ok:
            out.findings.append(
                Finding(
                    "calling.sip.servers.0.request_uri_user_params",
                    "warning",
                    "Meta appends other parameters to the Request-URI user than"
                    " whatsapp.request_uri_user_params (the gateway ignores them on arrival; a"
                    " proxy or PBX routing on them may not).",
                    f"{APPLY}, or copy Meta's values into whatsapp.request_uri_user_params.",
                )
            )
        if len(settings.sip_servers) > 1:
            out.findings.append(
                Finding(
                    "calling.sip.servers",
                    "warning",
                    f"Meta lists {len(settings.sip_servers)} SIP servers; only one per number is"
                    " documented and the gateway checked the first.",
                    f"{APPLY} (leaves exactly this gateway).",
                )
            )
        if server.app_id:
            out.context.append(("SIP server app", server.app_id))

    _compare_srtp(settings, want, out)

    meta_codecs = ",".join(settings.additional_codecs) or "none (Opus only)"
    uses = [
        k
        for k, on in (("offer_g711", want.offer_g711), ("passthrough", want.g711_passthrough))
        if on
    ]
    gw_codecs = ",".join(want.codecs) + f" ({', '.join(uses)})" if uses else "none (Opus only)"
    ok = set(settings.additional_codecs) == set(want.codecs)
    out.rows.append(Row("G.711 at Meta", meta_codecs, gw_codecs, ok))
    if settings.g711 and not want.g711:
        out.findings.append(
            Finding(
                "calling.audio.additional_codecs",
                "warning",
                f"G.711 ({meta_codecs}) is enabled at Meta, but the gateway neither offers it"
                f" ({key}.offer_g711: false) nor accepts it (media.g711_passthrough: false):"
                " every call is Opus, transcoded here, so G.711 at Meta is unused.",
                f"Set {key}.offer_g711 and/or media.g711_passthrough to true to use it, or"
                f" {APPLY} to turn it off at Meta.",
            )
        )
    elif want.g711 and not settings.g711:
        parts = []
        if want.offer_g711:
            parts.append(f"offers PCMA/PCMU to Meta ({key}.offer_g711: true)")
        if want.g711_passthrough:
            parts.append("relays Meta's G.711 untouched (media.g711_passthrough: true)")
        out.findings.append(
            Finding(
                "calling.audio.additional_codecs",
                "warning",
                f"The gateway {' and '.join(parts)}, but G.711 is not enabled at Meta: Meta"
                " answers with Opus and every call is transcoded here.",
                f"{APPLY} (enables PCMA,PCMU at Meta), or set those keys to false.",
            )
        )
    elif not ok:
        out.findings.append(
            Finding(
                "calling.audio.additional_codecs",
                "warning",
                f"Meta enables {meta_codecs}; the gateway handles both PCMA and PCMU.",
                f"{APPLY} (enables PCMA,PCMU).",
            )
        )

    _compare_optional(settings, want, out)

    for r in settings.restrictions:
        reason = f", reason {r.reason}" if r.reason else ""
        if r.active(now):
            out.findings.append(
                Finding(
                    "calling.restrictions",
                    "restriction",
                    f"Meta restricts {r.what} ({r.type}{reason}) {r.until()}.",
                    "Nothing in the gateway can lift it; it ends at the time shown. Meta"
                    " restricts numbers for low call quality or many declined/unanswered calls:"
                    " see WhatsApp Manager > Insights and the call records.",
                )
            )
        else:
            out.context.append(("restriction (expired)", f"{r.type}{reason} {r.until()}"))
    return out


def _compare_srtp(settings: CallingSettings, want: Desired, out: Comparison) -> None:
    """Meta's key exchange against the number's ``srtp`` mode: an error when the mode
    refuses what Meta sends (sdes vs DTLS, dtls vs SDES); with auto and DTLS at Meta a
    warning, as calls to WhatsApp offer SDES until a call from WhatsApp showed DTLS."""
    key = f"whatsapp.numbers.{want.index}.srtp"
    meta_text = settings.srtp_key_exchange_protocol or "DTLS (Meta's default)"
    gateway_text = {"sdes": "SDES", "dtls": "DTLS"}.get(want.srtp, "auto (SDES or DTLS)")
    auto_warning = want.srtp == "auto" and settings.srtp == "DTLS"
    ok = want.srtp_protocol in (None, settings.srtp) and not auto_warning
    out.rows.append(Row("SRTP key exchange", meta_text, gateway_text, ok))
    if ok:
        return
    if auto_warning:
        out.findings.append(
            Finding(
                "calling.srtp_key_exchange_protocol",
                "warning",
                f"Meta's SRTP key exchange is DTLS and {key} is auto: calls from WhatsApp are"
                " answered with DTLS-SRTP, but calls to WhatsApp offer SDES until one from"
                " WhatsApp has come in since the gateway started, where Meta expects DTLS.",
                f"Set {key}: dtls, or {key}: sdes and {APPLY} (sets SDES).",
            )
        )
        return
    theirs, other = ("DTLS-SRTP", "dtls") if settings.srtp == "DTLS" else ("SDES", "sdes")
    out.findings.append(
        Finding(
            "calling.srtp_key_exchange_protocol",
            "error",
            f"Meta's SRTP key exchange is {settings.srtp}, but {key} is {want.srtp}: Meta's"
            f" INVITEs carry {theirs} offers the gateway refuses for this number (488), and"
            f" its {gateway_text} offers on calls to WhatsApp are not what Meta expects.",
            f"{APPLY} (sets {want.srtp_protocol}; needs SIP enabled), or set {key}: {other}"
            " or auto.",
        )
    )


def _compare_optional(settings: CallingSettings, want: Desired, out: Comparison) -> None:
    c = want.calling
    cfg_key = "meta_api.calling"
    icon = settings.call_icon_visibility or "not set"
    if settings.restrict_to_user_countries:
        icon += " (only users in " + ", ".join(settings.restrict_to_user_countries) + ")"
    if c.call_icon_visibility is not None:
        ok = settings.call_icon_visibility == c.call_icon_visibility
        out.rows.append(Row("call icon visibility", icon, c.call_icon_visibility, ok))
        if not ok:
            out.findings.append(_differs("call_icon_visibility", cfg_key))
    else:
        out.context.append(("call icon visibility", icon))

    callback = settings.callback_permission_status or "not set"
    if c.callback_permission_status is not None:
        ok = settings.callback_permission_status == c.callback_permission_status
        out.rows.append(Row("callback permission", callback, c.callback_permission_status, ok))
        if not ok:
            out.findings.append(_differs("callback_permission_status", cfg_key))
    else:
        out.context.append(("callback permission", callback))

    hours = call_hours_json(c)
    if hours is not None:
        ok = _norm_hours(settings.call_hours) == _norm_hours(hours)
        out.rows.append(Row("call hours", _hours_text(settings.call_hours), _hours_text(hours), ok))
        if not ok:
            out.findings.append(_differs("call_hours", cfg_key))
    else:
        out.context.append(("call hours", _hours_text(settings.call_hours)))

    voicemail = voicemail_json(c)
    if voicemail is not None:
        ok = _voicemail_matches(settings.voicemail, voicemail)
        out.rows.append(
            Row(
                "Meta voicemail",
                _voicemail_text(settings.voicemail),
                _voicemail_text(voicemail),
                ok,
            )
        )
        if not ok:
            out.findings.append(_differs("voicemail", cfg_key))
    else:
        out.context.append(("Meta voicemail", _voicemail_text(settings.voicemail)))


def _differs(name: str, cfg_key: str) -> Finding:
    return Finding(
        f"calling.{name}",
        "warning",
        f"Meta's {name} differs from {cfg_key}.{name}.",
        f"{APPLY}, or change/remove {cfg_key}.{name}.",
    )


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class Change:
    key: str
    before: str
    after: str


@dataclass
class Plan:
    """The changes, and the POST bodies that make them (in order)."""

    changes: list[Change] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    enables_sip: bool = False  # Meta generates a (new) SIP password

    @property
    def empty(self) -> bool:
        return not self.changes


def _sip_text(status: str | None, servers: Sequence[SipServer]) -> str:
    if not servers:
        return f"{status or 'not set'}, no server"
    s = servers[0]
    return f"{status or 'not set'}, {s.where} {render_uri_params(s.request_uri_user_params)}"


def plan(settings: CallingSettings, want: Desired) -> Plan:
    """What ``meta apply`` changes. The key exchange the number's ``srtp`` mode needs
    (sdes: SDES, dtls: DTLS, auto: none, Meta's is left alone) is posted after SIP is
    enabled (Meta accepts SDES only with SIP on), so a plan has one or two bodies."""
    out = Plan()
    first: dict[str, Any] = {}
    if settings.status != "ENABLED":
        first["status"] = "ENABLED"
        out.changes.append(Change("calling.status", settings.status or "not set", "ENABLED"))
    server_ok = len(settings.sip_servers) == 1 and all(
        _server_matches(settings.sip_servers[0], want)
    )
    if settings.sip_status != "ENABLED" or not server_ok:
        first["sip"] = {"status": "ENABLED", "servers": [want.server_json()]}
        after = SipServer(want.hostname, want.port, want.uri_params)
        out.changes.append(
            Change(
                "calling.sip",
                _sip_text(settings.sip_status, settings.sip_servers),
                _sip_text("ENABLED", [after]),
            )
        )
        out.enables_sip = not settings.sip_configured
    if set(settings.additional_codecs) != set(want.codecs):
        first["audio"] = {"additional_codecs": list(want.codecs)}
        out.changes.append(
            Change(
                "calling.audio.additional_codecs",
                ",".join(settings.additional_codecs) or "none",
                ",".join(want.codecs) or "none",
            )
        )
    c = want.calling
    if c.call_icon_visibility is not None and settings.call_icon_visibility != (
        c.call_icon_visibility
    ):
        first["call_icon_visibility"] = c.call_icon_visibility
        out.changes.append(
            Change(
                "calling.call_icon_visibility",
                settings.call_icon_visibility or "not set",
                c.call_icon_visibility,
            )
        )
    if c.callback_permission_status is not None and (
        settings.callback_permission_status != c.callback_permission_status
    ):
        first["callback_permission_status"] = c.callback_permission_status
        out.changes.append(
            Change(
                "calling.callback_permission_status",
                settings.callback_permission_status or "not set",
                c.callback_permission_status,
            )
        )
    hours = call_hours_json(c)
    if hours is not None and _norm_hours(settings.call_hours) != _norm_hours(hours):
        first["call_hours"] = hours
        out.changes.append(
            Change("calling.call_hours", _hours_text(settings.call_hours), _hours_text(hours))
        )
    voicemail = voicemail_json(c)
    if voicemail is not None and not _voicemail_matches(settings.voicemail, voicemail):
        first["voicemail"] = voicemail
        out.changes.append(
            Change(
                "calling.voicemail", _voicemail_text(settings.voicemail), _voicemail_text(voicemail)
            )
        )
    if first:
        out.bodies.append({"calling": first})
    protocol = want.srtp_protocol  # None (srtp: auto): Meta's setting is left alone
    if protocol is not None and settings.srtp != protocol:
        out.bodies.append({"calling": {"srtp_key_exchange_protocol": protocol}})
        out.changes.append(
            Change(
                "calling.srtp_key_exchange_protocol",
                settings.srtp_key_exchange_protocol or "DTLS (default)",
                protocol,
            )
        )
    return out
