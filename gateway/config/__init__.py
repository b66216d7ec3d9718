"""The gateway's settings: one YAML file validated with pydantic v2, and nothing else.

The bottom layer (with :mod:`gateway.logging`): it imports no other gateway
package.  The models are in :mod:`gateway.config.model`, the field types and
their checks in :mod:`gateway.config.fields`, the ``meta_api`` section in
:mod:`gateway.config.meta`, the overload sections in
:mod:`gateway.config.overload`, reading the file in :mod:`gateway.config.load`,
the run-time file checks and the summary line in :mod:`gateway.config.check`,
certificate helpers in :mod:`gateway.config.certs`.  Callers import from here.
"""

from __future__ import annotations

from gateway.config.check import FileCheck, check_files, summary
from gateway.config.fields import META_NETWORKS, ConfigError, HostPort, parse_hostport
from gateway.config.load import load_config
from gateway.config.meta import DEFAULT_GRAPH_VERSION, MetaApiConfig, MetaCallingConfig
from gateway.config.model import (
    ClusterConfig,
    Config,
    ConnectionsConfig,
    DtlsConfig,
    HttpConfig,
    LimitsConfig,
    LoggingConfig,
    MediaConfig,
    NumberConfig,
    PbxConfig,
    RecordsConfig,
    ShutdownConfig,
    SipConfig,
    SrtpMode,
    TlsConfig,
    WhatsAppConfig,
)
from gateway.config.overload import DigestThrottleConfig, OverloadConfig, RateLimitsConfig

__all__ = [
    "DEFAULT_GRAPH_VERSION",
    "META_NETWORKS",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConnectionsConfig",
    "DigestThrottleConfig",
    "DtlsConfig",
    "FileCheck",
    "HostPort",
    "HttpConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MediaConfig",
    "MetaApiConfig",
    "MetaCallingConfig",
    "NumberConfig",
    "OverloadConfig",
    "PbxConfig",
    "RateLimitsConfig",
    "RecordsConfig",
    "ShutdownConfig",
    "SipConfig",
    "SrtpMode",
    "TlsConfig",
    "WhatsAppConfig",
    "check_files",
    "load_config",
    "parse_hostport",
    "summary",
]
