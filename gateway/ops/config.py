"""Gateway configuration: one YAML file validated with pydantic v2.

Entry points: :func:`load_config` (raises :class:`ConfigError` listing every
problem as ``key.path: what is wrong``), :func:`check_files` (run-time checks
of referenced files) and :func:`summary` (a one-line description).

Representation choices (downstream code relies on them):

* ``"host:port"`` keys are parsed into :class:`HostPort`, a ``NamedTuple``
  ``(host, port)``: use ``cfg.pbx.address.host`` / ``.port`` or unpack
  ``host, port = cfg.pbx.address``.  ``str()`` gives back ``host:port``
  (``[v6]:port`` for IPv6).  ``host`` is an IP literal (IPv6 without brackets,
  normalised) or a lower-cased DNS name.
* Networks are ``ipaddress.IPv4Network`` / ``IPv6Network`` objects in tuples.
* Single IP addresses (``media.address``) are normalised strings.
* File paths are absolute :class:`~pathlib.Path` objects; relative paths in
  the file are resolved against the directory holding the config file.
* Lists are tuples and every model is frozen, so a ``Config`` is immutable.

Problem texts are built from the key path and a fixed message only; input
values are never echoed, so a secret pasted into the wrong key cannot leak
into logs or terminal output.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Hashable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway import __version__

__all__ = [
    "META_NETWORKS", "Config", "ConfigError", "FileCheck", "HostPort", "HttpConfig",
    "LimitsConfig", "LoggingConfig", "MediaConfig", "NumberConfig", "PbxConfig", "RecordsConfig",
    "ShutdownConfig", "SipConfig", "TlsConfig", "WhatsAppConfig", "check_files", "load_config",
    "parse_hostport", "summary",
]  # fmt: skip

IPNetwork = IPv4Network | IPv6Network
_T = TypeVar("_T")

#: Meta's published WhatsApp Business Calling signalling/media networks.
META_NETWORKS: tuple[str, ...] = (
    "31.13.24.0/21", "31.13.64.0/18", "45.64.40.0/22", "57.141.0.0/21",
    "57.141.8.0/22", "57.141.12.0/23", "57.144.0.0/14", "66.220.144.0/20",
    "69.63.176.0/20", "69.171.224.0/19", "74.119.76.0/22", "102.132.96.0/20",
    "103.4.96.0/22", "129.134.0.0/16", "147.75.208.0/20", "157.240.0.0/16",
    "163.70.128.0/17", "163.77.128.0/17", "173.252.64.0/18", "179.60.192.0/22",
    "185.60.216.0/22", "185.89.216.0/22", "204.15.20.0/22", "2a03:2880::/32",
)  # fmt: skip

_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URI_PARAMS = re.compile(r"^(;[A-Za-z0-9\-_.!~*'()%]+(=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*)?)*$")


class ConfigError(Exception):
    """The configuration is unusable.

    ``problems`` holds one ``key.path: what is wrong`` string per problem;
    ``str()`` lists them one per line.  File-level problems (missing file,
    YAML syntax) use the file name as the key path.
    """

    def __init__(self, problems: list[str], path: Path | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.path = path


class HostPort(NamedTuple):
    """A parsed ``host:port``; ``str()`` renders it back (brackets for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- parsing helpers


def _is_dns_name(name: str) -> bool:
    name = name.lower().removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("port must be a number from 1 to 65535")
    return int(text)


def parse_hostport(value: str, default_port: int | None = None) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host.

    The host must be an IP literal or a DNS name.  Returns a :class:`HostPort`
    (a ``tuple[str, int]``); IPv6 hosts are returned without brackets.  Raises
    ``ValueError`` with a message that does not repeat ``value``.
    """
    value = value.strip()
    host: str
    port: int | None = default_port
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError("missing ']' after IPv6 address")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port = _port(rest[1:])
        address = _ip(host)
        if address is None or address.version != 6:
            raise ValueError("brackets must contain an IPv6 address")
        host = str(address)
    elif value.count(":") > 1:
        address = _ip(value)
        if address is None or default_port is None:
            raise ValueError("IPv6 addresses must be in brackets, e.g. [::1]:5060")
        host = str(address)
    else:
        host, sep, port_text = value.partition(":")
        if sep:
            port = _port(port_text)
        address = _ip(host)
        if address is not None:
            host = str(address)
        elif _is_dns_name(host):
            host = host.lower().removesuffix(".")
        else:
            raise ValueError("host must be an IP address or a DNS name")
    if port is None:
        raise ValueError("must be host:port (port missing)")
    return HostPort(host, port)


# --------------------------------------------------------------------------- field types


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _need_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _fail("type_error", f"must be a string ({what})")
    return value


def _v_hostport(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    try:
        return parse_hostport(_need_str(value, '"host:port"'))
    except ValueError as exc:
        raise _fail("hostport", str(exc)) from None


def _v_network(value: object) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    text = _need_str(value, 'a CIDR such as "10.0.0.0/8"')
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        raise _fail("network", "must be a CIDR network such as 10.0.0.0/8 or 2001:db8::/32"
                    " (no host bits set)") from None  # fmt: skip


def _v_ip(value: object) -> str:
    address = _ip(_need_str(value, "an IP address").strip())
    if address is None:
        raise _fail("ip", "must be an IPv4 or IPv6 address")
    return str(address)


def _v_dns_name(value: object) -> str:
    text = _need_str(value, "a DNS name").strip()
    if _ip(text) is not None or not _is_dns_name(text):
        raise _fail("dns_name", "must be a DNS name such as sip.example.com (not an IP)")
    return text.lower().removesuffix(".")


def _v_e164(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _fail("e164", 'must be a quoted string such as "+15550001111" (YAML reads an'
                    " unquoted +number as an integer)")  # fmt: skip
    text = _need_str(value, '"+E.164"').strip()
    if not _E164.match(text):
        raise _fail("e164", "must be +E.164 (a '+' and 8-15 digits)")
    return text


def _v_env_name(value: object) -> str:
    if not _ENV_NAME.match(_need_str(value, "an environment variable name")):
        raise _fail("env_name", "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return str(value)


def _v_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    else:
        text = _need_str(value, "a file path")
        if not text.strip():
            raise _fail("path", "must not be empty")
        path = Path(text).expanduser()
    context = info.context if isinstance(info.context, dict) else {}
    base = Path(context.get("base_dir") or os.getcwd())
    return Path(os.path.abspath(base / path))


def _v_port_range(value: object) -> tuple[int, int]:
    items: list[object] = list(value) if isinstance(value, list | tuple) else []
    ints = [v for v in items if isinstance(v, int) and not isinstance(v, bool)]
    if len(items) != 2 or len(ints) != 2:
        raise _fail("port_range", "must be a list of two integers [low, high]")
    low, high = ints
    if not 1024 <= low < high <= 65535:
        raise _fail("port_range", "must satisfy 1024 <= low < high <= 65535")
    if low % 2:
        raise _fail("port_range", "low must be even (RTP uses even ports)")
    return (low, high)


_TEMPLATE_FIELDS = frozenset({"number", "digits", "user"})


def _v_uri_template(value: str) -> str:
    message = "unknown placeholder; use {number}, {digits} or {user}"
    try:
        # Bare names only: an attribute, index, conversion or format spec would make
        # str.format raise (or misrender) at call time instead of here.
        for _, name, spec, conversion in string.Formatter().parse(value):
            if name is not None and (name not in _TEMPLATE_FIELDS or spec or conversion):
                raise _fail("uri_template", message)
    except ValueError as exc:  # unbalanced braces
        raise _fail("uri_template", message) from exc
    rendered = value.format(number="+15550001111", digits="15550001111", user="+1")
    if not rendered or any(c in rendered for c in " \t<>@\"\r\n"):
        raise _fail("uri_template", "must render to a SIP user part (no spaces, <, >, @)")
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _nonempty_line(value: object) -> str:
    text = _need_str(value, "text")
    if not text.strip() or any(c in text for c in "\r\n\0"):
        raise _fail("text", "must be a non-empty single line")
    return text


_to_str = PlainSerializer(str, return_type=str)
HostPortField = Annotated[HostPort, PlainValidator(_v_hostport), _to_str]
NetworkField = Annotated[IPNetwork, PlainValidator(_v_network), _to_str]
IPField = Annotated[str, PlainValidator(_v_ip)]
PathField = Annotated[Path, PlainValidator(_v_path), _to_str]
E164Field = Annotated[str, PlainValidator(_v_e164)]


def _v_graph_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    text = _need_str(value, "a Graph API id, digits").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 32:
        raise _fail("graph_id", "must be a Graph API id (digits only, e.g. 106540352242922)")
    return text


GraphIdField = Annotated[str, PlainValidator(_v_graph_id)]


def _nonempty(value: tuple[_T, ...]) -> tuple[_T, ...]:
    # Field(min_length=1) would also complain when an item is invalid (pydantic drops it).
    if not value:
        raise _fail("too_short", "must not be empty")
    return value


NetworksField = Annotated[tuple[NetworkField, ...], AfterValidator(_nonempty)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _path_problem(path: str, message: str) -> PydanticCustomError:
    """An error reported at ``<model location>.<path>`` (see ``_format``)."""
    return PydanticCustomError("config_path", message, {"path": path})


# --------------------------------------------------------------------------- models


class TlsConfig(_Model):
    """``whatsapp.tls``: certificate presented to Meta, and Meta's CA."""

    cert_file: PathField
    key_file: PathField
    ca_file: PathField | None = None  # None: verify Meta with the system roots


class NumberConfig(_Model):
    """One ``whatsapp.numbers`` entry.  Holds no password: see :meth:`read_password`."""

    number: E164Field
    sip_password_file: PathField | None = None
    sip_password_env: Annotated[str, PlainValidator(_v_env_name)] | None = None
    # Challenge Meta's INVITEs with 407 and verify them with the SIP password.
    challenge: bool = True
    # Offer PCMA/PCMU to Meta on business-initiated calls (G.711 enabled at Meta).
    offer_g711: bool = False
    # Business-initiated calls: concurrent calls and call attempts per second.
    max_outbound_calls: Annotated[int, Field(strict=True, ge=1)] = 1000
    max_call_rate: Annotated[float, Field(gt=0)] = 10.0
    # Meta's Graph API id of this number (WhatsApp Manager > Phone numbers, or the
    # WABA's /phone_numbers edge): needed by `wa-sip-gateway meta ...` and
    # meta_api.poll_health; the number is skipped by both without it.
    phone_number_id: GraphIdField | None = None
    # The WhatsApp Business Account the number belongs to (optional; shown).
    waba_id: GraphIdField | None = None

    @model_validator(mode="after")
    def _one_source(self) -> NumberConfig:
        if (self.sip_password_file is None) == (self.sip_password_env is None):
            message = "exactly one of sip_password_file or sip_password_env is required"
            raise _fail("password_source", message)
        return self

    def read_password(self) -> str | None:
        """The SIP digest password, read now; None if missing, unreadable or empty."""
        if self.sip_password_file is not None:
            try:
                secret = self.sip_password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError):
                return None
        else:
            secret = os.environ.get(self.sip_password_env or "", "")
        return secret or None


class WhatsAppConfig(_Model):
    """``whatsapp``: the SIP/TLS side facing Meta (directly, or behind a SIP proxy)."""

    # TLS listener Meta connects to; None (null): none, the instance is only reached
    # through a proxy (proxy_listen).
    listen: HostPortField | None = HostPort("0.0.0.0", 5061)
    hostname: Annotated[str, PlainValidator(_v_dns_name)]
    tls: TlsConfig
    meta_proxy: HostPortField = HostPort("wa.meta.vc", 5061)
    allowed_networks: NetworksField = tuple(ipaddress.ip_network(n) for n in META_NETWORKS)
    numbers: Annotated[tuple[NumberConfig, ...], AfterValidator(_nonempty)]
    request_uri_user_params: str = ""
    # Host of the Request-URI and To of calls to Meta (never an IP address: Meta
    # answers 404). The connection goes to meta_proxy.
    meta_domain: Annotated[str, PlainValidator(_v_dns_name)] = "wa.meta.vc"
    # Seconds to wait for any response from Meta (TLS connect included) before
    # answering the PBX 503.
    invite_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Seconds a WhatsApp user's phone may ring before the gateway gives up (CANCEL
    # toward Meta, 480 to the PBX).
    ring_timeout: Annotated[float, Field(gt=0, le=600)] = 120.0
    # Business number used for PBX calls that name none (header or From).
    default_number: E164Field | None = None
    # "host:port" in the Contact and Via the gateway puts toward Meta
    # (default: hostname and the listen port).
    advertise: HostPortField | None = None
    # Behind a SIP proxy (Kamailio, config/kamailio/): Meta's requests relayed by a
    # proxy in trusted_proxies arrive on proxy_listen (UDP and TCP); the proxy applies
    # Meta's allowlist. Via and Contact on those calls name this instance's own
    # address (proxy_listen; its host from sip.advertise when proxy_listen is a
    # wildcard), never the public name.
    trusted_proxies: tuple[NetworkField, ...] = ()
    proxy_listen: HostPortField | None = None
    # Transport of business-initiated calls sent to outbound_proxy (the proxy's
    # internal address), which forwards them to Meta over TLS.
    proxy_transport: Literal["udp", "tcp"] = "udp"
    outbound_proxy: HostPortField | None = None

    @property
    def public_port(self) -> int:
        """The port Meta connects to: the TLS listener's; behind a proxy with no TLS
        listener, the proxy's, taken to be 5061."""
        return self.listen.port if self.listen is not None else 5061

    @property
    def contact_hostport(self) -> HostPort:
        return self.advertise or HostPort(self.hostname, self.public_port)

    @model_validator(mode="after")
    def _proxy(self) -> WhatsAppConfig:
        if self.proxy_listen is not None and not self.trusted_proxies:
            raise _path_problem("trusted_proxies", "required when proxy_listen is set (the"
                                " proxies whose requests are accepted there)")  # fmt: skip
        if self.trusted_proxies and self.proxy_listen is None:
            raise _path_problem("proxy_listen", "required when trusted_proxies is set (the"
                                " UDP/TCP address the proxy sends Meta's requests to)")  # fmt: skip
        if self.listen is None and self.proxy_listen is None:
            raise _path_problem("listen", "may only be null behind a proxy (proxy_listen set)")
        if self.outbound_proxy is not None and self.proxy_listen is None:
            raise _path_problem("proxy_listen", "required when outbound_proxy is set (Meta's"
                                " responses and requests come back through the proxy)")  # fmt: skip
        return self

    @field_validator("request_uri_user_params")
    @classmethod
    def _uri_params(cls, value: str) -> str:
        if not _URI_PARAMS.match(value):
            raise _fail("uri_params", 'must be empty or ";name=value" parameters, e.g. ";tgrp=x"')
        return value

    @model_validator(mode="after")
    def _default_number(self) -> WhatsAppConfig:
        if self.default_number is not None and self.number(self.default_number) is None:
            raise _path_problem("default_number", "must be one of whatsapp.numbers")
        return self

    @model_validator(mode="after")
    def _unique_numbers(self) -> WhatsAppConfig:
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.numbers):
            if entry.number in seen:
                first = f"whatsapp.numbers.{seen[entry.number]}.number"
                raise _path_problem(f"numbers.{index}.number", f"duplicate of {first}")
            seen[entry.number] = index
        return self

    def number(self, e164: str) -> NumberConfig | None:
        """The configured entry for ``e164``, or None."""
        return next((n for n in self.numbers if n.number == e164), None)


class PbxConfig(_Model):
    """``pbx``: the plain SIP side facing Asterisk/FreeSWITCH."""

    address: HostPortField = HostPort("127.0.0.1", 5080)
    transport: Literal["udp", "tcp"] = "udp"
    listen: HostPortField = HostPort("127.0.0.1", 5090)
    trusted_networks: NetworksField = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
    probe_interval: Annotated[float, Field(strict=True, gt=0)] = 30.0
    # Seconds to wait for a provisional response before giving up on the PBX.
    invite_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # User part of the Request-URI of calls sent to the PBX; {number} is the
    # business number (+E.164), {digits} the same without '+', {user} the
    # WhatsApp user as Meta sent it.
    request_uri_user: Annotated[str, AfterValidator(_v_uri_template)] = "{number}"
    # G.711 codecs offered to the PBX, in order of preference.
    codecs: Annotated[tuple[Literal["PCMU", "PCMA"], ...], AfterValidator(_nonempty)] = (
        "PCMU",
        "PCMA",
    )
    # RTP payload type for telephone-event/8000 in offers to the PBX.
    dtmf_payload_type: Annotated[int, Field(strict=True, ge=96, le=127)] = 101
    # Header a PBX call names its business number in (else the From user, else
    # whatsapp.default_number).
    business_number_header: Annotated[str, PlainValidator(_nonempty_line)] = "X-WA-Business-Number"


def _is_wildcard(host: str) -> bool:
    address = _ip(host)
    return address is not None and address.is_unspecified


class MediaConfig(_Model):
    """``media``: RTP/SRTP sockets.  ``sdp_address`` is the address put in SDP."""

    address: IPField = "127.0.0.1"
    advertise_address: IPField | None = None
    port_range: Annotated[tuple[int, int], PlainValidator(_v_port_range)] = (20000, 29999)
    # When Meta offers PCMA/PCMU, pick it and relay without transcoding.
    g711_passthrough: bool = False
    # End the call (BYE both legs) after this many seconds without media from a leg.
    no_media_timeout: Annotated[float, Field(gt=0)] = 30.0
    # libopus encoder complexity 0-10 toward Meta while Meta reports no loss (FEC off);
    # while FEC is planned the encoder runs at least at 3 (libopus makes no FEC at 20
    # kbit/s below 2). 1: same clean-path quality as 3 at 73 % of its instructions
    # (docs/decisions.md); 10 costs about 3x.
    opus_complexity: Annotated[int, Field(strict=True, ge=0, le=10)] = 1

    @model_validator(mode="after")
    def _advertise(self) -> MediaConfig:
        if self.advertise_address is None and _is_wildcard(self.address):
            raise _path_problem("advertise_address",
                                "required when media.address is a wildcard address")  # fmt: skip
        if self.advertise_address is not None and _is_wildcard(self.advertise_address):
            raise _path_problem("advertise_address", "must not be a wildcard address")
        return self

    @property
    def sdp_address(self) -> str:
        """``advertise_address`` if set, else ``address``."""
        return self.advertise_address or self.address


class HttpConfig(_Model):
    """``http``: health and Prometheus metrics endpoint."""

    listen: HostPortField = HostPort("127.0.0.1", 9465)


class LoggingConfig(_Model):
    """``logging``: level (lower-cased) and output format."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Literal["json", "console"] = "json"


class LimitsConfig(_Model):
    """``limits``: capacity limits."""

    max_calls: Annotated[int, Field(strict=True, ge=1)] = 200


class SipConfig(_Model):
    """``sip``: protocol settings.  See :attr:`Config.sip_advertise` for the effective advertise."""

    user_agent: Annotated[str, PlainValidator(_nonempty_line)] = f"wa-sip-gateway/{__version__}"
    max_message_size: Annotated[int, Field(strict=True, ge=1024, le=1_048_576)] = 65535
    advertise: HostPortField | None = None


def _v_records_path(value: object, info: ValidationInfo) -> Path | str:
    if value == "-":
        return "-"
    return _v_path(value, info)


class ShutdownConfig(_Model):
    """``shutdown``: what SIGTERM does (drain)."""

    # Seconds active calls may go on after SIGTERM; then they get a BYE with a Reason.
    drain_timeout: Annotated[float, Field(ge=0)] = 300.0


class ClusterConfig(_Model):
    """``cluster``: what instances behind one proxy share."""

    # A file holding the secret (16+ bytes) that keys digest nonces, the same on every
    # instance, so a nonce one instance issued verifies on another. None: a random
    # secret per process.
    nonce_secret_file: PathField | None = None

    def read_nonce_secret(self) -> bytes | None:
        """The secret, read now; None if not configured, unreadable or shorter than 16."""
        if self.nonce_secret_file is None:
            return None
        try:
            secret = self.nonce_secret_file.read_bytes().strip()
        except OSError:
            return None
        return secret if len(secret) >= 16 else None


class RecordsConfig(_Model):
    """``records``: one JSON line per ended call.  ``path`` "-" is stdout, None: off."""

    path: Annotated[Path | str, PlainValidator(_v_records_path), _to_str] | None = None
    # Rotate (calls.jsonl -> calls.jsonl.1 ...) before a record would pass this size;
    # 0: never (leave rotation to logrotate: the file is reopened when moved).
    max_bytes: Annotated[int, Field(strict=True, ge=0)] = 100 * 1024 * 1024
    keep: Annotated[int, Field(strict=True, ge=1, le=1000)] = 10


#: Graph API version used when meta_api.api_version is not set.
DEFAULT_GRAPH_VERSION = "v24.0"
_GRAPH_VERSION = re.compile(r"^v\d{1,3}\.\d{1,2}$")
_BASE_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
_HHMM = re.compile(r"^([01]\d|2[0-3])[0-5]\d$")
_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


def _v_hhmm(value: object) -> str:
    text = _need_str(value, '"HHMM", quoted')
    if not _HHMM.match(text):
        raise _fail("hhmm", 'must be a 24-hour time "HHMM" in quotes, e.g. "0830"')
    return text


def _v_date(value: object) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else _need_str(value, "YYYY-MM-DD")
    if not isinstance(text, str) or not _DATE.match(text):
        raise _fail("date", "must be a date YYYY-MM-DD")
    return text


HhmmField = Annotated[str, PlainValidator(_v_hhmm)]
OnOff = Literal["ENABLED", "DISABLED"]


class MetaHoursConfig(_Model):
    """One ``meta_api.calling.call_hours.weekly_operating_hours`` entry."""

    day_of_week: Literal[
        "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"
    ]  # fmt: skip
    open_time: HhmmField
    close_time: HhmmField


class MetaHolidayConfig(_Model):
    """One ``meta_api.calling.call_hours.holiday_schedule`` entry."""

    date: Annotated[str, PlainValidator(_v_date)]
    start_time: HhmmField
    end_time: HhmmField


class MetaCallHoursConfig(_Model):
    """``meta_api.calling.call_hours``: replaces Meta's whole call_hours object."""

    status: OnOff = "ENABLED"
    timezone_id: Annotated[str, PlainValidator(_nonempty_line)]
    weekly_operating_hours: tuple[MetaHoursConfig, ...] = ()
    holiday_schedule: tuple[MetaHolidayConfig, ...] = ()


class MetaVoicemailConfig(_Model):
    """``meta_api.calling.voicemail``: Meta answers unanswered/rejected calls itself."""

    status: OnOff = "ENABLED"
    triggers: tuple[Literal["REJECT", "TIMEOUT"], ...] = ("REJECT", "TIMEOUT")
    announcement_media_id: GraphIdField | None = None
    timeout_seconds: Annotated[int, Field(strict=True, ge=0, le=30)] | None = None


class MetaCallingConfig(_Model):
    """``meta_api.calling``: optional settings ``meta apply`` sets for every number.
    A key left out (None) is not touched at Meta."""

    call_icon_visibility: Literal["DEFAULT", "DISABLE_ALL"] | None = None
    callback_permission_status: OnOff | None = None
    call_hours: MetaCallHoursConfig | None = None
    voicemail: MetaVoicemailConfig | None = None


class MetaApiConfig(_Model):
    """``meta_api``: Meta's Graph API, for ``wa-sip-gateway meta ...`` and health polling.
    Holds no token: see :meth:`read_token`."""

    access_token_file: PathField | None = None
    access_token_env: Annotated[str, PlainValidator(_v_env_name)] | None = None
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
            raise _path_problem("access_token", "must not be in the YAML file; put the token in"
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
            raise _fail("graph_version", 'must be a Graph API version such as "v24.0"')
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not _BASE_URL.match(value):
            message = "must be an http(s) URL without query, e.g. https://graph.facebook.com"
            raise _fail("url", message)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_source(self) -> MetaApiConfig:
        if (self.access_token_file is None) == (self.access_token_env is None):
            message = "exactly one of access_token_file or access_token_env is required"
            raise _fail("token_source", message)
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


class Config(_Model):
    """The whole configuration file."""

    mode: Literal["development", "production"] = "production"
    whatsapp: WhatsAppConfig
    pbx: PbxConfig = Field(default_factory=PbxConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    meta_api: MetaApiConfig | None = None
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        """A section whose keys are all commented out (YAML null) means "all defaults"."""
        if isinstance(data, dict):
            optional = ("pbx", "media", "http", "logging", "limits", "sip", "shutdown", "records",
                        "cluster")  # fmt: skip
            return {k: v for k, v in data.items() if not (k in optional and v is None)}
        return data

    @model_validator(mode="after")
    def _advertise(self) -> Config:
        if self.sip.advertise is None and _is_wildcard(self.pbx.listen.host):
            raise _path_problem("sip.advertise", "required when pbx.listen is a wildcard address")
        proxy = self.whatsapp.proxy_listen
        if proxy is not None and self.sip.advertise is None and _is_wildcard(proxy.host):
            message = "required when whatsapp.proxy_listen is a wildcard address"
            raise _path_problem("sip.advertise", message)
        return self

    @property
    def sip_advertise(self) -> HostPort:
        """Host/port for Via and Contact on the PBX side: ``sip.advertise`` or ``pbx.listen``."""
        return self.sip.advertise or self.pbx.listen

    @property
    def proxy_advertise(self) -> HostPort | None:
        """Host/port for Via and Contact on calls through the proxy (None: no proxy):
        ``whatsapp.proxy_listen``, its host from ``sip.advertise`` if a wildcard."""
        proxy = self.whatsapp.proxy_listen
        if proxy is None:
            return None
        if _is_wildcard(proxy.host):
            return HostPort(self.sip_advertise.host, proxy.port)
        return proxy

    @property
    def development(self) -> bool:
        return self.mode == "development"


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" may legitimately be overridden by explicit keys
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            message = f"duplicate key {key_node.value!r}"
            raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_MESSAGES = {
    "missing": "required", "extra_forbidden": "unknown key", "string_type": "must be a string",
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer", "float_type": "must be a number",
    "float_parsing": "must be a number", "bool_type": "must be true or false",
    "model_type": "must be a mapping of keys", "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys", "list_type": "must be a list",
    "tuple_type": "must be a list", "string_too_short": "must not be empty",
    "invalid_key": "keys must be strings",
}  # fmt: skip


def _message(err: Any) -> str:
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "literal_error":
        return "must be one of " + str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}  # fmt: skip
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}"
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _format(err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    if err["type"] == "config_path":
        loc += str(err["ctx"]["path"]).split(".")
    return f"{'.'.join(loc) or '(top level)'}: {_message(err)}"


def load_config(path: str | Path, *overlays: str | Path) -> Config:
    """Read, parse and validate the YAML file at ``path``; raise :class:`ConfigError`.

    Each file in ``overlays`` (e.g. one instance's ports behind a proxy) is merged over
    it in order: mappings key by key, any other value (lists too) replaced whole.
    Relative paths resolve against the directory of ``path``."""
    file = Path(path)
    data = _read_yaml(file)
    for overlay in overlays:
        over = _read_yaml(Path(overlay))
        if not isinstance(over, dict):
            raise ConfigError([f"{overlay}: must be a mapping of keys (top level)"], file)
        data = _merge(data, over)
    base_dir = Path(os.path.abspath(file)).parent
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_format(err) for err in exc.errors(include_url=False, include_input=False)]
        raise ConfigError(problems, file) from None


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over


def _read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: file not found"], file) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not valid UTF-8 text"], file) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"], file) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{file}{where}: YAML syntax error: {what}"], file) from None
    except yaml.YAMLError:
        raise ConfigError([f"{file}: YAML syntax error"], file) from None
    if data is None:
        raise ConfigError([f"{file}: file is empty"], file)
    return data


# --------------------------------------------------------------------------- reporting


@dataclass
class FileCheck:
    """Result of :func:`check_files`: ``errors`` block startup, ``warnings`` do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"not readable: {path}"
    return None


def check_files(cfg: Config) -> FileCheck:
    """Check the files the config refers to, as the daemon would need them now.

    Errors: TLS cert/key/CA missing or unreadable (a missing cert/key is fine in
    development mode, where one is generated).  Warnings: a number whose
    password cannot be read (the daemon starts and reports it as unhealthy),
    and certificate problems such as expiry or a hostname mismatch.
    """
    from gateway.ops.certs import certificate_problems

    result = FileCheck()
    tls = cfg.whatsapp.tls
    for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        problem = _file_problem(path)
        if problem and not (cfg.development and not path.exists()):
            result.errors.append(f"whatsapp.tls.{key}: {problem}")
    if tls.ca_file is not None and (problem := _file_problem(tls.ca_file)):
        result.errors.append(f"whatsapp.tls.ca_file: {problem}")
    secret_file = cfg.cluster.nonce_secret_file
    if secret_file is not None and cfg.cluster.read_nonce_secret() is None:
        problem = _file_problem(secret_file) or "shorter than 16 bytes"
        result.errors.append(f"cluster.nonce_secret_file: {problem}")
    if tls.cert_file.is_file() and os.access(tls.cert_file, os.R_OK):
        for problem in certificate_problems(tls.cert_file, cfg.whatsapp.hostname):
            result.warnings.append(f"whatsapp.tls.cert_file: {problem}")
    for index, entry in enumerate(cfg.whatsapp.numbers):
        if entry.read_password() is not None:
            continue
        if entry.sip_password_file is not None:
            problem = _file_problem(entry.sip_password_file) or "empty or not UTF-8 text"
            result.warnings.append(f"whatsapp.numbers.{index}.sip_password_file: {problem}")
        else:
            key = f"whatsapp.numbers.{index}.sip_password_env"
            name = entry.sip_password_env
            result.warnings.append(f"{key}: environment variable {name} is not set or empty")
    return result


def summary(cfg: Config) -> str:
    """One line describing the configuration, for ``check-config`` and startup logs."""
    count = len(cfg.whatsapp.numbers)
    text = (
        f"config OK: {count} number{'s' if count != 1 else ''},"
        f" TLS {cfg.whatsapp.listen or 'off'} ({cfg.whatsapp.hostname}),"
        f" PBX {cfg.pbx.transport} {cfg.pbx.address}, listen {cfg.pbx.listen},"
        f" http {cfg.http.listen}"
    )
    if cfg.whatsapp.proxy_listen is not None:
        text += f", behind proxy on {cfg.whatsapp.proxy_listen}"
    return text + (", development mode" if cfg.development else "")
