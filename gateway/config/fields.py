"""Field types and checks shared by the configuration models (gateway.config).

Parsing helpers (:func:`parse_hostport`), the pydantic field types with their
problem texts (never echoing the value), the frozen base model and Meta's
published networks.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, NamedTuple, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from gateway.netaddr import hostport

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
URI_PARAMS = re.compile(r"^(;[A-Za-z0-9\-_.!~*'()%]+(=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*)?)*$")


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
        return hostport(self.host, self.port)


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


def invalid(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def need_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise invalid("type_error", f"must be a string ({what})")
    return value


def _v_hostport(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    try:
        return parse_hostport(need_str(value, '"host:port"'))
    except ValueError as exc:
        raise invalid("hostport", str(exc)) from None


def _v_network(value: object) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    text = need_str(value, 'a CIDR such as "10.0.0.0/8"')
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        raise invalid("network", "must be a CIDR network such as 10.0.0.0/8 or 2001:db8::/32"
                    " (no host bits set)") from None  # fmt: skip


def _v_ip(value: object) -> str:
    address = _ip(need_str(value, "an IP address").strip())
    if address is None:
        raise invalid("ip", "must be an IPv4 or IPv6 address")
    return str(address)


def v_dns_name(value: object) -> str:
    text = need_str(value, "a DNS name").strip()
    if _ip(text) is not None or not _is_dns_name(text):
        raise invalid("dns_name", "must be a DNS name such as sip.example.com (not an IP)")
    return text.lower().removesuffix(".")


def _v_e164(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise invalid("e164", 'must be a quoted string such as "+15550001111" (YAML reads an'
                    " unquoted +number as an integer)")  # fmt: skip
    text = need_str(value, '"+E.164"').strip()
    if not _E164.match(text):
        raise invalid("e164", "must be +E.164 (a '+' and 8-15 digits)")
    return text


def v_env_name(value: object) -> str:
    if not _ENV_NAME.match(need_str(value, "an environment variable name")):
        raise invalid("env_name", "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return str(value)


def v_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    else:
        text = need_str(value, "a file path")
        if not text.strip():
            raise invalid("path", "must not be empty")
        path = Path(text).expanduser()
    context = info.context if isinstance(info.context, dict) else {}
    base = Path(context.get("base_dir") or os.getcwd())
    return Path(os.path.abspath(base / path))


def v_port_range(value: object) -> tuple[int, int]:
    items: list[object] = list(value) if isinstance(value, list | tuple) else []
    ints = [v for v in items if isinstance(v, int) and not isinstance(v, bool)]
    if len(items) != 2 or len(ints) != 2:
        raise invalid("port_range", "must be a list of two integers [low, high]")
    low, high = ints
    if not 1024 <= low < high <= 65535:
        raise invalid("port_range", "must satisfy 1024 <= low < high <= 65535")
    if low % 2:
        raise invalid("port_range", "low must be even (RTP uses even ports)")
    return (low, high)


_TEMPLATE_FIELDS = frozenset({"number", "digits", "user"})


def v_uri_template(value: str) -> str:
    message = "unknown placeholder; use {number}, {digits} or {user}"
    try:
        # Bare names only: an attribute, index, conversion or format spec would make
        # str.format raise (or misrender) at call time instead of here.
        for _, name, spec, conversion in string.Formatter().parse(value):
            if name is not None and (name not in _TEMPLATE_FIELDS or spec or conversion):
                raise invalid("uri_template", message)
    except ValueError as exc:  # unbalanced braces
        raise invalid("uri_template", message) from exc
    rendered = value.format(number="+15550001111", digits="15550001111", user="+1")
    if not rendered or any(c in rendered for c in " \t<>@\"\r\n"):
        raise invalid("uri_template", "must render to a SIP user part (no spaces, <, >, @)")
    return value


def lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def nonempty_line(value: object) -> str:
    text = need_str(value, "text")
    if not text.strip() or any(c in text for c in "\r\n\0"):
        raise invalid("text", "must be a non-empty single line")
    return text


to_str = PlainSerializer(str, return_type=str)
HostPortField = Annotated[HostPort, PlainValidator(_v_hostport), to_str]
NetworkField = Annotated[IPNetwork, PlainValidator(_v_network), to_str]
IPField = Annotated[str, PlainValidator(_v_ip)]
PathField = Annotated[Path, PlainValidator(v_path), to_str]
E164Field = Annotated[str, PlainValidator(_v_e164)]


def _v_graph_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    text = need_str(value, "a Graph API id, digits").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 32:
        raise invalid("graph_id", "must be a Graph API id (digits only, e.g. 106540352242922)")
    return text


GraphIdField = Annotated[str, PlainValidator(_v_graph_id)]


def nonempty(value: tuple[_T, ...]) -> tuple[_T, ...]:
    # Field(min_length=1) would also complain when an item is invalid (pydantic drops it).
    if not value:
        raise invalid("too_short", "must not be empty")
    return value


NetworksField = Annotated[tuple[NetworkField, ...], AfterValidator(nonempty)]


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def path_problem(path: str, message: str) -> PydanticCustomError:
    """An error reported at ``<model location>.<path>`` (see ``config._format``)."""
    return PydanticCustomError("config_path", message, {"path": path})



def is_wildcard(host: str) -> bool:
    address = _ip(host)
    return address is not None and address.is_unspecified

