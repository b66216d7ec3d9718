"""Gateway configuration: one YAML file validated with pydantic v2.

The configuration models. Entry points, all re-exported by :mod:`gateway.config`:
:func:`~gateway.config.load.load_config` (raises :class:`ConfigError` listing
every problem as ``key.path: what is wrong``),
:func:`~gateway.config.check.check_files` (run-time checks of referenced files)
and :func:`~gateway.config.check.summary` (a one-line description). The field
types and their checks are in :mod:`gateway.config.fields`, the ``meta_api``
section in :mod:`gateway.config.meta`.

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
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import __version__
from gateway.config.fields import (
    META_NETWORKS,
    URI_PARAMS,
    E164Field,
    FrozenModel,
    GraphIdField,
    HostPort,
    HostPortField,
    IPField,
    NetworkField,
    NetworksField,
    PathField,
    invalid,
    is_wildcard,
    lower,
    nonempty,
    nonempty_line,
    path_problem,
    to_str,
    v_dns_name,
    v_env_name,
    v_path,
    v_port_range,
    v_uri_template,
)
from gateway.config.meta import (
    MetaApiConfig,
    MetaCallingConfig,
)
from gateway.config.overload import DigestThrottleConfig, OverloadConfig, RateLimitsConfig

# --------------------------------------------------------------------------- models

# Per number: how SRTP keys are agreed with Meta (NumberConfig.srtp).
SrtpMode = Literal["sdes", "dtls", "auto"]


class TlsConfig(FrozenModel):
    """``whatsapp.tls``: certificate presented to Meta, and Meta's CA."""

    cert_file: PathField
    key_file: PathField
    ca_file: PathField | None = None  # None: verify Meta with the system roots


class NumberConfig(FrozenModel):
    """One ``whatsapp.numbers`` entry.  Holds no password: see :meth:`read_password`."""

    number: E164Field
    sip_password_file: PathField | None = None
    sip_password_env: Annotated[str, PlainValidator(v_env_name)] | None = None
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
    # This number's own Meta calling settings for `meta apply` (call hours,
    # voicemail, ...), each key set here replacing meta_api.calling's.
    meta_calling: MetaCallingConfig | None = None
    # How SRTP keys are agreed with Meta (docs/whatsapp-sip.md sections 6, 7): "sdes"
    # (a=crypto), "dtls" (WebRTC media: ICE + DTLS-SRTP, Meta's default), "auto": answer
    # whichever Meta offers; see outbound_srtp for business-initiated calls. `meta
    # apply` sets Meta's srtp_key_exchange_protocol to match (auto: left alone).
    # Case-insensitive (Meta writes SDES, DTLS).
    srtp: Annotated[SrtpMode, BeforeValidator(lower)] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> NumberConfig:
        if (self.sip_password_file is None) == (self.sip_password_env is None):
            message = "exactly one of sip_password_file or sip_password_env is required"
            raise invalid("password_source", message)
        return self

    def outbound_srtp(self, seen: Literal["sdes", "dtls"] | None = None) -> Literal["sdes", "dtls"]:
        """The key exchange to offer Meta on a business-initiated call. Meta's one setting
        (srtp_key_exchange_protocol) governs both directions, and the gateway does not
        ask Meta for it while running: "sdes"/"dtls" offer that; "auto" offers what Meta
        last offered on this number (``seen``: the mode of the latest user-initiated
        call the caller remembers), else SDES, which `meta apply` sets for sdes numbers
        and which calls of the gateway's SDES-only releases relied on."""
        if self.srtp != "auto":
            return self.srtp
        return seen or "sdes"

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


class WhatsAppConfig(FrozenModel):
    """``whatsapp``: the SIP/TLS side facing Meta (directly, or behind a SIP proxy)."""

    # TLS listener Meta connects to; None (null): none, the instance is only reached
    # through a proxy (proxy_listen).
    listen: HostPortField | None = HostPort("0.0.0.0", 5061)
    hostname: Annotated[str, PlainValidator(v_dns_name)]
    # Certificate for the TLS listener (and what /health checks). Behind a proxy
    # with listen null it may be left out: the proxy holds Meta's certificate.
    tls: TlsConfig | None = None
    meta_proxy: HostPortField = HostPort("wa.meta.vc", 5061)
    allowed_networks: NetworksField = tuple(ipaddress.ip_network(n) for n in META_NETWORKS)
    numbers: Annotated[tuple[NumberConfig, ...], AfterValidator(nonempty)]
    request_uri_user_params: str = ""
    # Host of the Request-URI and To of calls to Meta (never an IP address: Meta
    # answers 404). The connection goes to meta_proxy.
    meta_domain: Annotated[str, PlainValidator(v_dns_name)] = "wa.meta.vc"
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
            raise path_problem(
                "trusted_proxies",
                "required when proxy_listen is set (the proxies whose requests are accepted there)",
            )
        if self.trusted_proxies and self.proxy_listen is None:
            raise path_problem(
                "proxy_listen",
                "required when trusted_proxies is set (the"
                " UDP/TCP address the proxy sends Meta's requests to)",
            )
        if self.listen is None and self.proxy_listen is None:
            raise path_problem("listen", "may only be null behind a proxy (proxy_listen set)")
        if self.tls is None and self.listen is not None:
            raise path_problem("tls", "required (cert_file, key_file) unless listen is null")
        if self.outbound_proxy is not None and self.proxy_listen is None:
            raise path_problem(
                "proxy_listen",
                "required when outbound_proxy is set (Meta's"
                " responses and requests come back through the proxy)",
            )
        return self

    @field_validator("request_uri_user_params")
    @classmethod
    def _uri_params(cls, value: str) -> str:
        if not URI_PARAMS.match(value):
            raise invalid("uri_params", 'must be empty or ";name=value" parameters, e.g. ";tgrp=x"')
        return value

    @model_validator(mode="after")
    def _default_number(self) -> WhatsAppConfig:
        if self.default_number is not None and self.number(self.default_number) is None:
            raise path_problem("default_number", "must be one of whatsapp.numbers")
        return self

    @model_validator(mode="after")
    def _unique_numbers(self) -> WhatsAppConfig:
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.numbers):
            if entry.number in seen:
                first = f"whatsapp.numbers.{seen[entry.number]}.number"
                raise path_problem(f"numbers.{index}.number", f"duplicate of {first}")
            seen[entry.number] = index
        return self

    def number(self, e164: str) -> NumberConfig | None:
        """The configured entry for ``e164``, or None."""
        return next((n for n in self.numbers if n.number == e164), None)


class PbxConfig(FrozenModel):
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
    request_uri_user: Annotated[str, AfterValidator(v_uri_template)] = "{number}"
    # G.711 codecs offered to the PBX, in order of preference.
    codecs: Annotated[tuple[Literal["PCMU", "PCMA"], ...], AfterValidator(nonempty)] = (
        "PCMU",
        "PCMA",
    )
    # RTP payload type for telephone-event/8000 in offers to the PBX.
    dtmf_payload_type: Annotated[int, Field(strict=True, ge=96, le=127)] = 101
    # Header a PBX call names its business number in (else the From user, else
    # whatsapp.default_number).
    business_number_header: Annotated[str, PlainValidator(nonempty_line)] = "X-WA-Business-Number"


class DtlsConfig(FrozenModel):
    """``media.dtls``: the certificate of DTLS-SRTP toward Meta (both files or neither;
    neither: an ECDSA P-256 one generated at startup). Files checked by check_files."""

    cert_file: PathField | None = None
    key_file: PathField | None = None

    @model_validator(mode="after")
    def _both(self) -> DtlsConfig:
        if self.cert_file is not None and self.key_file is None:
            raise path_problem("key_file", "required when media.dtls.cert_file is set")
        if self.key_file is not None and self.cert_file is None:
            raise path_problem("cert_file", "required when media.dtls.key_file is set")
        return self


class MediaConfig(FrozenModel):
    """``media``: RTP/SRTP sockets.  ``sdp_address`` is the address put in SDP."""

    address: IPField = "127.0.0.1"
    advertise_address: IPField | None = None
    port_range: Annotated[tuple[int, int], PlainValidator(v_port_range)] = (20000, 29999)
    # When Meta offers PCMA/PCMU, pick it and relay without transcoding.
    g711_passthrough: bool = False
    # End the call (BYE both legs) after this many seconds without media from a leg.
    no_media_timeout: Annotated[float, Field(gt=0)] = 30.0
    # libopus encoder complexity 0-10 toward Meta while Meta reports no loss (FEC off);
    # while FEC is planned the encoder runs at least at 3 (libopus makes no FEC at 20
    # kbit/s below 2). 1: same clean-path quality as 3 at 73 % of its instructions
    # (docs/decisions.md); 10 costs about 3x.
    opus_complexity: Annotated[int, Field(strict=True, ge=0, le=10)] = 1
    # Strict latching (docs/decisions.md, "Media latching"): "strict" lets the PBX leg
    # learn the PBX's real source port once, within latch_window seconds of the answer or
    # a renegotiation that moves the media (NAT), then holds it; "sdp": the SDP's
    # address:port only, never learned. Either way nothing moves the latch mid-call.
    latch: Literal["strict", "sdp"] = "strict"
    latch_window: Annotated[float, Field(gt=0, le=60)] = 10.0
    # WebRTC media toward Meta (numbers with srtp dtls/auto): seconds the DTLS handshake
    # may take before both legs end with a Reason; the certificate (default: generated).
    dtls_timeout: Annotated[float, Field(gt=0, le=60)] = 10.0
    dtls: DtlsConfig = Field(default_factory=DtlsConfig)

    @model_validator(mode="before")
    @classmethod
    def _empty_dtls(cls, data: object) -> object:
        if isinstance(data, dict) and "dtls" in data and data["dtls"] is None:
            return {k: v for k, v in data.items() if k != "dtls"}  # all keys commented out
        return data

    # The per-packet engine (docs/decisions.md, "Native media engine"): "native" runs the
    # steady state of each call in C (the optional extension gateway.media._native),
    # "python" the pure-Python reference; "auto": native when the extension is built.
    # Without it, native is the Python engine and one warning line, never a failed start.
    engine: Literal["auto", "native", "python"] = "auto"

    @model_validator(mode="after")
    def _advertise(self) -> MediaConfig:
        if self.advertise_address is None and is_wildcard(self.address):
            raise path_problem(
                "advertise_address", "required when media.address is a wildcard address"
            )
        if self.advertise_address is not None and is_wildcard(self.advertise_address):
            raise path_problem("advertise_address", "must not be a wildcard address")
        return self

    @property
    def sdp_address(self) -> str:
        """``advertise_address`` if set, else ``address``."""
        return self.advertise_address or self.address


class HttpConfig(FrozenModel):
    """``http``: health and Prometheus metrics endpoint."""

    listen: HostPortField = HostPort("127.0.0.1", 9465)


class LoggingConfig(FrozenModel):
    """``logging``: level (lower-cased) and output format."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(lower)] = "info"
    format: Literal["json", "console"] = "json"


class LimitsConfig(FrozenModel):
    """``limits``: capacity limits."""

    max_calls: Annotated[int, Field(strict=True, ge=1)] = 200


class ConnectionsConfig(FrozenModel):
    """``sip.connections``: caps and deadlines of inbound TCP/TLS connections, checked at
    accept, before any TLS (see docs/decisions.md, "Connections: filter before you spend")."""

    max_connections: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 1024
    max_per_source: Annotated[int, Field(strict=True, ge=1)] = 16
    max_handshakes: Annotated[int, Field(strict=True, ge=1)] = 64
    handshake_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    first_message_timeout: Annotated[float, Field(gt=0, le=600)] = 15.0
    message_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    idle_timeout: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_write_buffer: Annotated[int, Field(strict=True, ge=16384, le=67_108_864)] = 262_144
    read_budget: Annotated[int, Field(strict=True, ge=1, le=4096)] = 16

    @model_validator(mode="after")
    def _caps(self) -> ConnectionsConfig:
        if self.max_per_source > self.max_connections:
            raise path_problem("max_per_source", "must be <= max_connections")
        if self.max_handshakes > self.max_connections:
            raise path_problem("max_handshakes", "must be <= max_connections")
        if self.first_message_timeout <= self.handshake_timeout:
            raise path_problem(
                "first_message_timeout", "must be > handshake_timeout (both count from the accept)"
            )
        return self


class SipConfig(FrozenModel):
    """``sip``: protocol settings.  See :attr:`Config.sip_advertise` for the effective advertise."""

    user_agent: Annotated[str, PlainValidator(nonempty_line)] = f"wa-sip-gateway/{__version__}"
    max_message_size: Annotated[int, Field(strict=True, ge=1024, le=1_048_576)] = 65535
    advertise: HostPortField | None = None
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)
    digest_throttle: DigestThrottleConfig = Field(default_factory=DigestThrottleConfig)


def _v_records_path(value: object, info: ValidationInfo) -> Path | str:
    if value == "-":
        return "-"
    return v_path(value, info)


class ShutdownConfig(FrozenModel):
    """``shutdown``: what SIGTERM does (drain)."""

    # Seconds active calls may go on after SIGTERM; then they get a BYE with a Reason.
    drain_timeout: Annotated[float, Field(ge=0)] = 300.0


class ClusterConfig(FrozenModel):
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


class RecordsConfig(FrozenModel):
    """``records``: one JSON line per ended call.  ``path`` "-" is stdout, None: off."""

    path: Annotated[Path | str, PlainValidator(_v_records_path), to_str] | None = None
    # Rotate (calls.jsonl -> calls.jsonl.1 ...) before a record would pass this size;
    # 0: never (leave rotation to logrotate: the file is reopened when moved).
    max_bytes: Annotated[int, Field(strict=True, ge=0)] = 100 * 1024 * 1024
    keep: Annotated[int, Field(strict=True, ge=1, le=1000)] = 10


class Config(FrozenModel):
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
            optional = (
                "pbx",
                "media",
                "http",
                "logging",
                "limits",
                "sip",
                "shutdown",
                "records",
                "cluster",
            )
            return {k: v for k, v in data.items() if not (k in optional and v is None)}
        return data

    @model_validator(mode="after")
    def _advertise(self) -> Config:
        if self.sip.advertise is None and is_wildcard(self.pbx.listen.host):
            raise path_problem("sip.advertise", "required when pbx.listen is a wildcard address")
        proxy = self.whatsapp.proxy_listen
        if proxy is not None and self.sip.advertise is None and is_wildcard(proxy.host):
            message = "required when whatsapp.proxy_listen is a wildcard address"
            raise path_problem("sip.advertise", message)
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
        if is_wildcard(proxy.host):
            return HostPort(self.sip_advertise.host, proxy.port)
        return proxy

    @property
    def development(self) -> bool:
        return self.mode == "development"
