"""Meta's calling settings for a business number and what the gateway's config implies
they should be (the differences and the change set: :mod:`gateway.metaapi.compare`).

Pure: values in, values out. Meta's answer to ``GET /<PHONE_NUMBER_ID>/settings`` is
parsed liberally (unknown keys ignored, missing ones defaulted) into
:class:`CallingSettings`; a SIP password in it is never kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, MetaCallingConfig, NumberConfig

__all__ = [
    "G711",
    "CallingSettings",
    "Desired",
    "Restriction",
    "SipServer",
    "desired_for",
    "parse_uri_params",
    "render_uri_params",
]

G711 = ("PCMA", "PCMU")


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


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
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
        calling = as_mapping(body.get("calling"))
        sip = as_mapping(calling.get("sip"))
        servers = tuple(
            SipServer(
                hostname=_s(server.get("hostname")),
                port=_port(server.get("port")),
                request_uri_user_params={
                    str(k): str(v)
                    for k, v in as_mapping(server.get("request_uri_user_params")).items()
                },
                app_id=_s(str(server["app_id"])) if server.get("app_id") is not None else None,
            )
            for server in map(as_mapping, as_list(sip.get("servers")))
        )
        restrictions = tuple(
            Restriction(
                type=str(item.get("type") or "UNKNOWN"),
                reason=_s(item.get("reason")),
                expiration=_port(item.get("expiration")),
            )
            for item in map(
                as_mapping,
                as_list(as_mapping(calling.get("restrictions")).get("restrictions_list")),
            )
        )
        hours = calling.get("call_hours")
        voicemail = calling.get("voicemail")
        return cls(
            status=_s(calling.get("status")),
            call_icon_visibility=_s(calling.get("call_icon_visibility")),
            restrict_to_user_countries=tuple(
                str(c)
                for c in as_list(
                    as_mapping(calling.get("call_icons")).get("restrict_to_user_countries")
                )
            ),
            callback_permission_status=_s(calling.get("callback_permission_status")),
            call_hours=dict(hours) if isinstance(hours, Mapping) else None,
            sip_status=_s(sip.get("status")),
            sip_servers=servers,
            srtp_key_exchange_protocol=_s(calling.get("srtp_key_exchange_protocol")),
            additional_codecs=tuple(
                str(c) for c in as_list(as_mapping(calling.get("audio")).get("additional_codecs"))
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

    @property
    def srtp(self) -> str:
        """The number's ``srtp`` mode: sdes, dtls or auto."""
        return self.number.srtp

    @property
    def srtp_protocol(self) -> str | None:
        """Meta's srtp_key_exchange_protocol the mode needs; None (auto): either works."""
        return {"sdes": "SDES", "dtls": "DTLS"}.get(self.number.srtp)

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
            "audio": {"additional_codecs": list(self.codecs)},
        }
        if self.srtp_protocol is not None:  # auto: Meta's setting is left alone
            out["srtp_key_exchange_protocol"] = self.srtp_protocol
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


def call_hours_json(calling: MetaCallingConfig) -> dict[str, Any] | None:
    hours = calling.call_hours
    if hours is None:
        return None
    return {
        "status": hours.status,
        "timezone_id": hours.timezone_id,
        "weekly_operating_hours": [h.model_dump() for h in hours.weekly_operating_hours],
        "holiday_schedule": [h.model_dump() for h in hours.holiday_schedule],
    }


def voicemail_json(calling: MetaCallingConfig) -> dict[str, Any] | None:
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
    hours = call_hours_json(calling)
    if hours is not None:
        out["call_hours"] = hours
    voicemail = voicemail_json(calling)
    if voicemail is not None:
        out["voicemail"] = voicemail
    return out
