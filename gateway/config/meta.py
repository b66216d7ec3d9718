"""``meta_api``: the Graph API section of the configuration (gateway.config)."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)

from gateway.config.fields import (
    FrozenModel,
    GraphIdField,
    PathField,
    invalid,
    need_str,
    nonempty_line,
    path_problem,
    v_env_name,
)

#: Graph API version used when meta_api.api_version is not set.
DEFAULT_GRAPH_VERSION = "v24.0"
_GRAPH_VERSION = re.compile(r"^v\d{1,3}\.\d{1,2}$")
_BASE_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
_HHMM = re.compile(r"^([01]\d|2[0-3])[0-5]\d$")
_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


def _v_hhmm(value: object) -> str:
    text = need_str(value, '"HHMM", quoted')
    if not _HHMM.match(text):
        raise invalid("hhmm", 'must be a 24-hour time "HHMM" in quotes, e.g. "0830"')
    return text


def _v_date(value: object) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else need_str(value, "YYYY-MM-DD")
    if not isinstance(text, str) or not _DATE.match(text):
        raise invalid("date", "must be a date YYYY-MM-DD")
    return text


HhmmField = Annotated[str, PlainValidator(_v_hhmm)]
OnOff = Literal["ENABLED", "DISABLED"]


class MetaHoursConfig(FrozenModel):
    """One ``meta_api.calling.call_hours.weekly_operating_hours`` entry."""

    day_of_week: Literal[
        "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"
    ]  # fmt: skip
    open_time: HhmmField
    close_time: HhmmField


class MetaHolidayConfig(FrozenModel):
    """One ``meta_api.calling.call_hours.holiday_schedule`` entry."""

    date: Annotated[str, PlainValidator(_v_date)]
    start_time: HhmmField
    end_time: HhmmField


class MetaCallHoursConfig(FrozenModel):
    """``meta_api.calling.call_hours``: replaces Meta's whole call_hours object."""

    status: OnOff = "ENABLED"
    timezone_id: Annotated[str, PlainValidator(nonempty_line)]
    weekly_operating_hours: tuple[MetaHoursConfig, ...] = ()
    holiday_schedule: tuple[MetaHolidayConfig, ...] = ()


class MetaVoicemailConfig(FrozenModel):
    """``meta_api.calling.voicemail``: Meta answers unanswered/rejected calls itself."""

    status: OnOff = "ENABLED"
    triggers: tuple[Literal["REJECT", "TIMEOUT"], ...] = ("REJECT", "TIMEOUT")
    announcement_media_id: GraphIdField | None = None
    timeout_seconds: Annotated[int, Field(strict=True, ge=0, le=30)] | None = None


class MetaCallingConfig(FrozenModel):
    """``meta_api.calling``: optional settings ``meta apply`` sets for every number,
    and ``whatsapp.numbers[].meta_calling``: one number's own, over those. A key
    left out (None) is not touched at Meta (or, per number, inherited)."""

    call_icon_visibility: Literal["DEFAULT", "DISABLE_ALL"] | None = None
    callback_permission_status: OnOff | None = None
    call_hours: MetaCallHoursConfig | None = None
    voicemail: MetaVoicemailConfig | None = None

    def over(self, base: MetaCallingConfig) -> MetaCallingConfig:
        """These settings where set, ``base``'s elsewhere (a number's own over
        ``meta_api.calling``); each key replaces the base's whole value."""
        mine = {k: v for k, v in self if v is not None}
        return base.model_copy(update=mine)


class MetaApiConfig(FrozenModel):
    """``meta_api``: Meta's Graph API, for ``wa-sip-gateway meta ...`` and health polling.
    Holds no token: see :meth:`read_token`."""

    access_token_file: PathField | None = None
    access_token_env: Annotated[str, PlainValidator(v_env_name)] | None = None
    api_version: str = DEFAULT_GRAPH_VERSION
    base_url: str = "https://graph.facebook.com"
    # Seconds per HTTP request; retries (with backoff) on 5xx, rate limits, timeouts.
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    retries: Annotated[int, Field(strict=True, ge=0, le=10)] = 3
    # The app whose token this is (its health_status is polled too when set).
    app_id: GraphIdField | None = None
    # Poll Meta's health_status for every number (and app_id) while running.
    poll_health: bool = False
    health_interval: Annotated[float, Field(ge=1)] = 300.0
    calling: MetaCallingConfig = Field(default_factory=MetaCallingConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: object) -> object:
        if isinstance(data, dict) and "access_token" in data:
            raise path_problem("access_token", "must not be in the YAML file; put the token in"
                                " a file (access_token_file) or an environment variable"
                                " (access_token_env)")  # fmt: skip
        if isinstance(data, dict) and "calling" in data and data["calling"] is None:
            # every key commented out (YAML null): all defaults
            return {k: v for k, v in data.items() if k != "calling"}
        return data

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _GRAPH_VERSION.match(value):
            raise invalid("graph_version", 'must be a Graph API version such as "v24.0"')
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not _BASE_URL.match(value):
            message = "must be an http(s) URL without query, e.g. https://graph.facebook.com"
            raise invalid("url", message)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_source(self) -> MetaApiConfig:
        if (self.access_token_file is None) == (self.access_token_env is None):
            message = "exactly one of access_token_file or access_token_env is required"
            raise invalid("token_source", message)
        return self

    def read_token(self) -> str | None:
        """The access token, read now; None if missing, unreadable or empty."""
        if self.access_token_file is not None:
            try:
                secret = self.access_token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return None
        else:
            secret = os.environ.get(self.access_token_env or "", "").strip()
        return secret or None

