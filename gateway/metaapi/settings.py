"""Meta's calling settings for a business number, what the gateway's config implies
they should be, the differences spelled out, and the change set ``meta apply`` posts.

Pure: values in, values out. Meta's answer to ``GET /<PHONE_NUMBER_ID>/settings`` is
parsed liberally (unknown keys ignored, missing ones defaulted) into
:class:`CallingSettings`; a SIP password in it is never kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import Config, MetaCallingConfig, NumberConfig

__all__ = [
    "G711", "CallingSettings", "Change", "Comparison", "Desired", "Finding", "Plan",
    "Restriction", "Row", "SipServer", "compare", "desired_for", "parse_uri_params",
    "plan", "render_uri_params",
]  # fmt: skip

G711 = ("PCMA", "PCMU")
Severity = Literal["error", "warning", "restriction"]
APPLY = "wa-sip-gateway meta apply -c FILE"


# --------------------------------------------------------------------------- Meta's side


@dataclass(frozen=True)
class SipServer:
    hostname: str | None
    port: int | None
    request_uri_user_params: dict[str, str]
    app_id: str | None = None

    @property
    def where(self) -> str:
        return f"{self.hostname or '?'}:{self.port if self.port is not None else '?'}"


@dataclass(frozen=True)
class Restriction:
    type: str
    reason: str | None
    expiration: int | None  # unix time

    def until(self) -> str:
        if self.expiration is None:
            return "no end date given"
        when = dt.datetime.fromtimestamp(self.expiration, dt.UTC)
        return f"until {when:%Y-%m-%d %H:%M} UTC"

    def active(self, now: float) -> bool:
        return self.expiration is None or self.expiration > now

    @property
    def what(self) -> str:
        return {
            "RESTRICTED_USER_INITIATED_CALLING": "calls from WhatsApp users to this number",
            "RESTRICTED_BUSINESS_INITIATED_CALLING": "calls from this number to WhatsApp users",
        }.get(self.type, "calling")

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason, "expiration": self.expiration}


def _s(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _port(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class CallingSettings:
    """``calling`` of Meta's settings, as far as the gateway cares (never a password)."""

    status: str | None = None
    call_icon_visibility: str | None = None
    restrict_to_user_countries: tuple[str, ...] = ()
    callback_permission_status: str | None = None
    call_hours: dict[str, Any] | None = None
    sip_status: str | None = None
    sip_servers: tuple[SipServer, ...] = ()
    srtp_key_exchange_protocol: str | None = None  # None: not set, Meta's default DTLS
    additional_codecs: tuple[str, ...] = ()
    voicemail: dict[str, Any] | None = None
    restrictions: tuple[Restriction, ...] = ()

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> CallingSettings:
        """From the whole settings answer (``{"calling": {...}, ...}``)."""
        calling = _map(body.get("calling"))
        sip = _map(calling.get("sip"))
        servers = tuple(
            SipServer(
                hostname=_s(server.get("hostname")),
                port=_port(server.get("port")),
                request_uri_user_params={
                    str(k): str(v) for k, v in _map(server.get("request_uri_user_params")).items()
                },
                app_id=_s(str(server["app_id"])) if server.get("app_id") is not None else None,
            )
            for server in map(_map, _list(sip.get("servers")))
        )
        restrictions = tuple(
            Restriction(
                type=str(item.get("type") or "UNKNOWN"),
                reason=_s(item.get("reason")),
                expiration=_port(item.get("expiration")),
            )
            for item in map(_map, _list(_map(calling.get("restrictions")).get("restrictions_list")))
        )
        hours = calling.get("call_hours")
        voicemail = calling.get("voicemail")
        return cls(
            status=_s(calling.get("status")),
            call_icon_visibility=_s(calling.get("call_icon_visibility")),
            restrict_to_user_countries=tuple(
                str(c)
                for c in _list(_map(calling.get("call_icons")).get("restrict_to_user_countries"))
            ),
            callback_permission_status=_s(calling.get("callback_permission_status")),
            call_hours=dict(hours) if isinstance(hours, Mapping) else None,
            sip_status=_s(sip.get("status")),
            sip_servers=servers,
            srtp_key_exchange_protocol=_s(calling.get("srtp_key_exchange_protocol")),
            additional_codecs=tuple(
                str(c) for c in _list(_map(calling.get("audio")).get("additional_codecs"))
            ),
            voicemail=_strip_secrets(voicemail) if isinstance(voicemail, Mapping) else None,
            restrictions=restrictions,
        )

    @property
    def srtp(self) -> str:
        return self.srtp_key_exchange_protocol or "DTLS"

    @property
    def sip_configured(self) -> bool:
        return self.sip_status == "ENABLED" and bool(self.sip_servers)

    @property
    def g711(self) -> bool:
        return any(c in G711 for c in self.additional_codecs)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "call_icon_visibility": self.call_icon_visibility,
            "call_icons": {"restrict_to_user_countries": list(self.restrict_to_user_countries)},
            "callback_permission_status": self.callback_permission_status,
            "call_hours": self.call_hours,
            "sip": {
                "status": self.sip_status,
                "servers": [
                    {
                        "hostname": s.hostname,
                        "port": s.port,
                        "request_uri_user_params": s.request_uri_user_params,
                        **({"app_id": s.app_id} if s.app_id else {}),
                    }
                    for s in self.sip_servers
                ],
            },
            "srtp_key_exchange_protocol": self.srtp_key_exchange_protocol,
            "audio": {"additional_codecs": list(self.additional_codecs)},
            "voicemail": self.voicemail,
            "restrictions": [r.to_json() for r in self.restrictions],
        }


def _strip_secrets(value: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (_strip_secrets(v) if isinstance(v, Mapping) else v)
        for k, v in value.items()
        if "password" not in k.lower()
    }


# --------------------------------------------------------------------------- the config's side


def parse_uri_params(text: str) -> dict[str, str]:
    """``";tgrp=wacall;trunk-context=x"`` -> ``{"tgrp": "wacall", "trunk-context": "x"}``."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if part:
            name, _, value = part.partition("=")
            out[name] = value
    return out


def render_uri_params(params: Mapping[str, str]) -> str:
    return "".join(f";{k}={v}" if v != "" else f";{k}" for k, v in params.items()) or "(none)"


@dataclass(frozen=True)
class Desired:
    """What the gateway's config implies for one number at Meta."""

    index: int  # in whatsapp.numbers
    number: NumberConfig
    hostname: str
    port: int
    uri_params: dict[str, str]
    offer_g711: bool
    g711_passthrough: bool
    calling: MetaCallingConfig = field(default_factory=MetaCallingConfig)

    @property
    def g711(self) -> bool:
        return self.offer_g711 or self.g711_passthrough

    @property
    def codecs(self) -> tuple[str, ...]:
        return G711 if self.g711 else ()

    def server_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "port": self.port,
            "request_uri_user_params": dict(self.uri_params),
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ENABLED",
            "sip": {"status": "ENABLED", "servers": [self.server_json()]},
            "srtp_key_exchange_protocol": "SDES",
            "audio": {"additional_codecs": list(self.codecs)},
        }
        out.update(_optional_json(self.calling))
        return out


def desired_for(cfg: Config, index: int) -> Desired:
    number = cfg.whatsapp.numbers[index]
    meta = cfg.meta_api
    return Desired(
        index=index,
        number=number,
        hostname=cfg.whatsapp.hostname,
        port=cfg.whatsapp.public_port,
        uri_params=parse_uri_params(cfg.whatsapp.request_uri_user_params),
        offer_g711=number.offer_g711,
        g711_passthrough=cfg.media.g711_passthrough,
        calling=_calling_for(number, meta.calling if meta is not None else MetaCallingConfig()),
    )


def _calling_for(number: NumberConfig, shared: MetaCallingConfig) -> MetaCallingConfig:
    return number.meta_calling.over(shared) if number.meta_calling is not None else shared


def _call_hours_json(calling: MetaCallingConfig) -> dict[str, Any] | None:
    hours = calling.call_hours
    if hours is None:
        return None
    return {
        "status": hours.status,
        "timezone_id": hours.timezone_id,
        "weekly_operating_hours": [h.model_dump() for h in hours.weekly_operating_hours],
        "holiday_schedule": [h.model_dump() for h in hours.holiday_schedule],
    }


def _voicemail_json(calling: MetaCallingConfig) -> dict[str, Any] | None:
    vm = calling.voicemail
    if vm is None:
        return None
    out: dict[str, Any] = {"status": vm.status, "triggers": list(vm.triggers)}
    default: dict[str, Any] = {}
    if vm.announcement_media_id is not None:
        default["announcement_media_id"] = vm.announcement_media_id
    if vm.timeout_seconds is not None:
        default["timeout_seconds"] = vm.timeout_seconds
    if default:
        out["audio"] = {"default": default}
    return out


def _optional_json(calling: MetaCallingConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if calling.call_icon_visibility is not None:
        out["call_icon_visibility"] = calling.call_icon_visibility
    if calling.callback_permission_status is not None:
        out["callback_permission_status"] = calling.callback_permission_status
    hours = _call_hours_json(calling)
    if hours is not None:
        out["call_hours"] = hours
    voicemail = _voicemail_json(calling)
    if voicemail is not None:
        out["voicemail"] = voicemail
    return out


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
        for h in map(_map, _list(hours.get("weekly_operating_hours")))
    ]
    if weekly:
        parts.append(", ".join(weekly))
    holidays = [
        f"{h.get('date', '?')} {h.get('start_time', '?')}-{h.get('end_time', '?')}"
        for h in map(_map, _list(hours.get("holiday_schedule")))
    ]
    if holidays:
        parts.append("holidays " + ", ".join(holidays))
    return "; ".join(parts)


def _voicemail_text(vm: Mapping[str, Any] | None) -> str:
    if not vm:
        return "not set"
    text = str(vm.get("status") or "?")
    triggers = _list(vm.get("triggers"))
    if triggers:
        text += " on " + "/".join(map(str, triggers))
    default = _map(_map(vm.get("audio")).get("default"))
    if default.get("timeout_seconds") is not None:
        text += f", after {default['timeout_seconds']} s"
    return text


def _norm_hours(hours: Mapping[str, Any] | None) -> Any:
    if hours is None:
        return None

    def items(key: str) -> list[tuple[tuple[str, str], ...]]:
        return sorted(
            tuple(sorted((str(k), str(v)) for k, v in _map(item).items()))
            for item in _list(hours.get(key))
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
    default = _map(_map(vm.get("audio")).get("default"))
    return (
        vm.get("status"),
        sorted(map(str, _list(vm.get("triggers")))),
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
        out.findings.append(Finding(
            "calling.status", "error",
            f"Calling is {settings.status or 'not enabled'} at Meta for {number}: WhatsApp shows"
            " no call button and no calls reach the gateway.",
            f"{APPLY} (sets calling.status ENABLED).",
        ))  # fmt: skip

    ok = settings.sip_status == "ENABLED"
    out.rows.append(Row("SIP", settings.sip_status or "not set", "ENABLED", ok))
    if not ok:
        out.findings.append(Finding(
            "calling.sip.status", "error",
            f"SIP is {settings.sip_status or 'not enabled'} at Meta: calls are signalled through"
            " Graph API webhooks instead of SIP to this gateway.",
            f"{APPLY} (enables SIP with this gateway as the server).",
        ))  # fmt: skip

    gateway_server = f"{want.hostname}:{want.port}"
    server = settings.sip_servers[0] if settings.sip_servers else None
    if server is None:
        out.rows.append(Row("SIP server", "none", gateway_server, False))
        out.findings.append(Finding(
            "calling.sip.servers", "error",
            "No SIP server is configured at Meta for this number (Meta's health says 138025):"
            " Meta has nowhere to send calls.",
            f"{APPLY} (sets {gateway_server}: whatsapp.hostname and the port of"
            " whatsapp.listen).",
        ))  # fmt: skip
    else:
        host_ok, port_ok, params_ok = _server_matches(server, want)
        out.rows.append(Row("SIP server", server.where, gateway_server, host_ok and port_ok))
        if not host_ok:
            out.findings.append(Finding(
                "calling.sip.servers.0.hostname", "error",
                f"Meta sends calls to {server.hostname or '(no hostname)'}, not this gateway's"
                f" whatsapp.hostname {want.hostname}.",
                f"{APPLY}, or correct whatsapp.hostname if Meta's value is the right one (the"
                " certificate must cover it).",
            ))  # fmt: skip
        if not port_ok:
            out.findings.append(Finding(
                "calling.sip.servers.0.port", "error",
                f"Meta connects to port {server.port}, but the gateway listens on {want.port}"
                " (whatsapp.listen).",
                f"{APPLY}, or change whatsapp.listen (a port forward in between must map"
                f" {server.port} to {want.port}).",
            ))  # fmt: skip
        out.rows.append(Row(
            "request URI user params", render_uri_params(server.request_uri_user_params),
            render_uri_params(want.uri_params), params_ok,
        ))  # fmt: skip
        if not params_ok:
            out.findings.append(Finding(
                "calling.sip.servers.0.request_uri_user_params", "warning",
                "Meta appends other parameters to the Request-URI user than"
                " whatsapp.request_uri_user_params (the gateway ignores them on arrival; a"
                " proxy or PBX routing on them may not).",
                f"{APPLY}, or copy Meta's values into whatsapp.request_uri_user_params.",
            ))  # fmt: skip
        if len(settings.sip_servers) > 1:
            out.findings.append(Finding(
                "calling.sip.servers", "warning",
                f"Meta lists {len(settings.sip_servers)} SIP servers; only one per number is"
                " documented and the gateway checked the first.",
                f"{APPLY} (leaves exactly this gateway).",
            ))  # fmt: skip
        if server.app_id:
            out.context.append(("SIP server app", server.app_id))

    srtp_text = settings.srtp_key_exchange_protocol or "DTLS (Meta's default)"
    ok = settings.srtp == "SDES"
    out.rows.append(Row("SRTP key exchange", srtp_text, "SDES", ok))
    if not ok:
        out.findings.append(Finding(
            "calling.srtp_key_exchange_protocol", "error",
            f"Meta's SRTP key exchange is {settings.srtp}; the gateway does SDES only: Meta's"
            " INVITEs carry ICE/DTLS offers it cannot answer, so calls fail at setup.",
            f"{APPLY} (sets SDES; needs SIP enabled).",
        ))  # fmt: skip

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
        out.findings.append(Finding(
            "calling.audio.additional_codecs", "warning",
            f"G.711 ({meta_codecs}) is enabled at Meta, but the gateway neither offers it"
            f" ({key}.offer_g711: false) nor accepts it (media.g711_passthrough: false):"
            " every call is Opus, transcoded here, so G.711 at Meta is unused.",
            f"Set {key}.offer_g711 and/or media.g711_passthrough to true to use it, or"
            f" {APPLY} to turn it off at Meta.",
        ))  # fmt: skip
    elif want.g711 and not settings.g711:
        parts = []
        if want.offer_g711:
            parts.append(f"offers PCMA/PCMU to Meta ({key}.offer_g711: true)")
        if want.g711_passthrough:
            parts.append("relays Meta's G.711 untouched (media.g711_passthrough: true)")
        out.findings.append(Finding(
            "calling.audio.additional_codecs", "warning",
            f"The gateway {' and '.join(parts)}, but G.711 is not enabled at Meta: Meta"
            " answers with Opus and every call is transcoded here.",
            f"{APPLY} (enables PCMA,PCMU at Meta), or set those keys to false.",
        ))  # fmt: skip
    elif not ok:
        out.findings.append(Finding(
            "calling.audio.additional_codecs", "warning",
            f"Meta enables {meta_codecs}; the gateway handles both PCMA and PCMU.",
            f"{APPLY} (enables PCMA,PCMU).",
        ))  # fmt: skip

    _compare_optional(settings, want, out)

    for r in settings.restrictions:
        reason = f", reason {r.reason}" if r.reason else ""
        if r.active(now):
            out.findings.append(Finding(
                "calling.restrictions", "restriction",
                f"Meta restricts {r.what} ({r.type}{reason}) {r.until()}.",
                "Nothing in the gateway can lift it; it ends at the time shown. Meta"
                " restricts numbers for low call quality or many declined/unanswered calls:"
                " see WhatsApp Manager > Insights and the call records.",
            ))  # fmt: skip
        else:
            out.context.append(("restriction (expired)", f"{r.type}{reason} {r.until()}"))
    return out


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

    hours = _call_hours_json(c)
    if hours is not None:
        ok = _norm_hours(settings.call_hours) == _norm_hours(hours)
        out.rows.append(Row("call hours", _hours_text(settings.call_hours), _hours_text(hours), ok))
        if not ok:
            out.findings.append(_differs("call_hours", cfg_key))
    else:
        out.context.append(("call hours", _hours_text(settings.call_hours)))

    voicemail = _voicemail_json(c)
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
    """What ``meta apply`` changes. SDES is posted after SIP is enabled (Meta accepts SDES
    only with SIP on), so a plan has one or two bodies."""
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
        out.changes.append(Change(
            "calling.sip",
            _sip_text(settings.sip_status, settings.sip_servers),
            _sip_text("ENABLED", [after]),
        ))  # fmt: skip
        out.enables_sip = not settings.sip_configured
    if set(settings.additional_codecs) != set(want.codecs):
        first["audio"] = {"additional_codecs": list(want.codecs)}
        out.changes.append(Change(
            "calling.audio.additional_codecs",
            ",".join(settings.additional_codecs) or "none",
            ",".join(want.codecs) or "none",
        ))  # fmt: skip
    c = want.calling
    if c.call_icon_visibility is not None and settings.call_icon_visibility != (
        c.call_icon_visibility
    ):
        first["call_icon_visibility"] = c.call_icon_visibility
        out.changes.append(Change(
            "calling.call_icon_visibility", settings.call_icon_visibility or "not set",
            c.call_icon_visibility,
        ))  # fmt: skip
    if c.callback_permission_status is not None and (
        settings.callback_permission_status != c.callback_permission_status
    ):
        first["callback_permission_status"] = c.callback_permission_status
        out.changes.append(Change(
            "calling.callback_permission_status",
            settings.callback_permission_status or "not set", c.callback_permission_status,
        ))  # fmt: skip
    hours = _call_hours_json(c)
    if hours is not None and _norm_hours(settings.call_hours) != _norm_hours(hours):
        first["call_hours"] = hours
        out.changes.append(
            Change("calling.call_hours", _hours_text(settings.call_hours), _hours_text(hours))
        )
    voicemail = _voicemail_json(c)
    if voicemail is not None and not _voicemail_matches(settings.voicemail, voicemail):
        first["voicemail"] = voicemail
        out.changes.append(Change(
            "calling.voicemail", _voicemail_text(settings.voicemail), _voicemail_text(voicemail)
        ))  # fmt: skip
    if first:
        out.bodies.append({"calling": first})
    if settings.srtp != "SDES":
        out.bodies.append({"calling": {"srtp_key_exchange_protocol": "SDES"}})
        out.changes.append(Change(
            "calling.srtp_key_exchange_protocol",
            settings.srtp_key_exchange_protocol or "DTLS (default)", "SDES",
        ))  # fmt: skip
    return out
