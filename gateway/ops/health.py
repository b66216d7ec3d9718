"""Health in the shape of Meta's Health Status API (``can_receive_call_sip``).

``GET /health`` answers::

    {"health_status": {"can_receive_call_sip": "AVAILABLE" | "LIMITED" | "BLOCKED",
                       "entities": [{"entity_type": "PHONE_NUMBER", "id": "+15550001111",
                                     "can_receive_call_sip": ..., "additional_info": [...],
                                     "errors": [{"error_code", "error_description",
                                                 "possible_solution"}]},
                                    ...,
                                    {"entity_type": "GATEWAY", "id": <whatsapp.hostname>, ...}]}}

Each check yields :class:`Finding` objects with a code from :class:`Code`
(documented in README, "Health"). Gateway-wide findings (listener,
certificate, PBX, capacity, drain, reload) go on the GATEWAY entity and on
every PHONE_NUMBER entity (they decide whether Meta can reach that number);
a number's own findings (its SIP password) only on its entity. An entity is
as bad as its worst finding: ``errors`` lists its BLOCKED findings,
``additional_info`` its LIMITED ones ("CODE: description Possible solution:
..."). The overall value is the worst entity, as in Meta's API; HTTP 503 when
it is BLOCKED, else 200.

Everything here is pure (findings from values) except :class:`PbxProber`,
which sends the OPTIONS probes through the transaction layer.
"""

from __future__ import annotations

import datetime as dt
import enum
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.b2bua.port import LegAddress, Scheduler, SipPort, TimerHandle
from gateway.config import NumberConfig
from gateway.logging import get_logger
from gateway.metaapi.health import meta_lines
from gateway.sip.ids import new_call_id, new_tag
from gateway.sip.message import Request
from gateway.sip.transaction import (
    ClientTransaction,
    Event,
    ResponseReceived,
    Target,
    TransactionTimeout,
    TransportFailure,
)

__all__ = [
    "CAPACITY_WARNING", "CERT_WARNING_DAYS", "PBX_MISSES_TO_BLOCK", "CertInfo", "Code",
    "Entity", "Finding", "PbxProber", "Report", "Status", "capacity_findings",
    "certificate_findings", "chain_finding", "draining_finding", "listener_finding",
    "load_certificate", "number_findings", "pbx_findings", "reload_finding", "render_text",
    "verify_chain",
]  # fmt: skip

log = get_logger(__name__)

CERT_WARNING_DAYS = 14
CAPACITY_WARNING = 0.9
PBX_MISSES_TO_BLOCK = 3


class Status(enum.IntEnum):
    """Meta's status words; the value is ``wagw_health_status``."""

    AVAILABLE = 0
    LIMITED = 1
    BLOCKED = 2


class Code(enum.IntEnum):
    """Error codes of the gateway's health checks (Meta's own SIP codes are 138024/138025)."""

    TLS_LISTENER_DOWN = 1001
    GATEWAY_NOT_RUNNING = 1002  # only from `wa-sip-gateway health` when nothing answers
    CERT_EXPIRED = 1101
    CERT_NOT_YET_VALID = 1102
    CERT_EXPIRING = 1103
    CERT_NAME_MISMATCH = 1104
    CERT_CHAIN_UNTRUSTED = 1105
    CERT_KEY_MISMATCH = 1106
    CERT_UNREADABLE = 1107
    SIP_PASSWORD_MISSING = 1201
    PBX_NOT_ANSWERING = 1301
    CAPACITY_HIGH = 1401
    CAPACITY_FULL = 1402
    MEDIA_PORTS_EXHAUSTED = 1403
    DRAINING = 1501
    RELOAD_REFUSED = 1601


@dataclass(frozen=True)
class Finding:
    code: int
    status: Status
    description: str
    solution: str

    def error(self) -> dict[str, object]:
        return {
            "error_code": self.code,
            "error_description": self.description,
            "possible_solution": self.solution,
        }

    def info(self) -> str:
        return f"{self.code}: {self.description} Possible solution: {self.solution}"


@dataclass
class Entity:
    entity_type: str  # "PHONE_NUMBER" | "GATEWAY"
    id: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> Status:
        return max((f.status for f in self.findings), default=Status.AVAILABLE)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "entity_type": self.entity_type,
            "id": self.id,
            "can_receive_call_sip": self.status.name,
        }
        limited = [f.info() for f in self.findings if f.status is Status.LIMITED]
        blocked = [f.error() for f in self.findings if f.status is Status.BLOCKED]
        if limited:
            out["additional_info"] = limited
        if blocked:
            out["errors"] = blocked
        return out


@dataclass
class Report:
    entities: list[Entity]

    @property
    def status(self) -> Status:
        return max((e.status for e in self.entities), default=Status.AVAILABLE)

    @property
    def http_status(self) -> int:
        return 503 if self.status is Status.BLOCKED else 200

    def to_json(self) -> dict[str, object]:
        return {
            "health_status": {
                "can_receive_call_sip": self.status.name,
                "entities": [e.to_json() for e in self.entities],
            }
        }

    @classmethod
    def build(
        cls,
        gateway_id: str,
        gateway: Iterable[Finding],
        numbers: Sequence[tuple[str, Iterable[Finding]]],
    ) -> Report:
        """PHONE_NUMBER entities (gateway-wide findings first, then the number's own) and
        the GATEWAY entity, in that order."""
        shared = list(gateway)
        entities = [Entity("PHONE_NUMBER", number, [*shared, *own]) for number, own in numbers]
        entities.append(Entity("GATEWAY", gateway_id, list(shared)))
        return cls(entities)


# --------------------------------------------------------------------------- the checks


def listener_finding(listening: bool, listen: str, why: str | None) -> Finding | None:
    if listening:
        return None
    port = listen.rpartition(":")[2]
    return Finding(
        Code.TLS_LISTENER_DOWN,
        Status.BLOCKED,
        f"The TLS listener on {listen} is not accepting connections"
        f" ({why or 'not started'}); Meta cannot deliver calls.",
        f"Check that no other process holds port {port} (ss -ltnp 'sport = :{port}') and"
        " that the certificate and key load (see the other errors); the gateway retries"
        " every few seconds and on reload (systemctl reload wa-sip-gateway).",
    )


@dataclass(frozen=True)
class CertInfo:
    """The certificate chain in force (leaf first) and what the checks need from it."""

    chain: tuple[x509.Certificate, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    fingerprint: str  # SHA-256 of the leaf, hex

    @classmethod
    def from_chain(cls, chain: Sequence[x509.Certificate]) -> CertInfo:
        leaf = chain[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(
            chain=tuple(chain),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            dns_names=names,
            fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        )


def _unreadable(key: str, path: Path, why: str) -> Finding:
    return Finding(
        Code.CERT_UNREADABLE,
        Status.BLOCKED,
        f"Cannot load whatsapp.tls.{key} ({path}): {why}; the TLS listener cannot start.",
        "Check the path, that the service user can read the file, and the PEM format"
        " (BEGIN CERTIFICATE / BEGIN PRIVATE KEY; the key must not be password-protected),"
        " then reload (systemctl reload wa-sip-gateway).",
    )


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_certificate(cert_file: Path, key_file: Path) -> tuple[CertInfo | None, list[Finding]]:
    """Read and cross-check the certificate chain and key files (no secret leaves here).

    Returns the chain's :class:`CertInfo` and no findings when both load and the key
    belongs to the certificate; else None and the BLOCKED findings (1107 unreadable,
    1106 key mismatch).
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        return None, [_unreadable("cert_file", cert_file, exc.strerror or "cannot read")]
    except ValueError:
        return None, [_unreadable("cert_file", cert_file, "not a PEM certificate")]
    key: PrivateKeyTypes
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        return None, [_unreadable("key_file", key_file, exc.strerror or "cannot read")]
    except (ValueError, TypeError):
        return None, [_unreadable("key_file", key_file, "not an unencrypted PEM private key")]
    except Exception:  # cryptography raises UnsupportedAlgorithm for exotic keys
        return None, [_unreadable("key_file", key_file, "unsupported key type")]
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        return None, [
            Finding(
                Code.CERT_KEY_MISMATCH,
                Status.BLOCKED,
                f"The private key in whatsapp.tls.key_file ({key_file}) does not belong to"
                f" the certificate in whatsapp.tls.cert_file ({cert_file}); the TLS listener"
                " cannot use them.",
                "Install the key the certificate was issued for (the outputs of `openssl x509"
                " -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` must be"
                " identical), then reload (systemctl reload wa-sip-gateway).",
            )
        ]
    return CertInfo.from_chain(chain), []


def name_covers(patterns: Iterable[str], hostname: str) -> bool:
    """Whether a DNS SAN list covers ``hostname`` (RFC 6125: ``*.`` only as the whole
    leftmost label, matching exactly one label)."""
    host = hostname.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == pattern[2:]:
                return True
        elif pattern == host:
            return True
    return False


def certificate_findings(info: CertInfo, hostname: str, now: dt.datetime) -> list[Finding]:
    """Validity period and name of the certificate in force."""
    out: list[Finding] = []
    renew = (
        "Renew the certificate (e.g. certbot renew), write it to whatsapp.tls.cert_file and"
        " key_file, and reload: systemctl reload wa-sip-gateway (calls in progress are kept)."
    )
    if now < info.not_before:
        out.append(
            Finding(
                Code.CERT_NOT_YET_VALID,
                Status.BLOCKED,
                f"The TLS certificate is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC;"
                " Meta refuses the TLS connection.",
                "Check the host clock (timedatectl) and the certificate's dates; install a"
                " certificate valid now and reload.",
            )
        )
    if now >= info.not_after:
        out.append(
            Finding(
                Code.CERT_EXPIRED,
                Status.BLOCKED,
                f"The TLS certificate expired on {info.not_after:%Y-%m-%d %H:%M} UTC;"
                " Meta refuses the TLS connection.",
                renew,
            )
        )
    elif now + dt.timedelta(days=CERT_WARNING_DAYS) > info.not_after:
        days = (info.not_after - now).total_seconds() / 86400
        out.append(
            Finding(
                Code.CERT_EXPIRING,
                Status.LIMITED,
                f"The TLS certificate expires on {info.not_after:%Y-%m-%d %H:%M} UTC"
                f" (in {days:.1f} days).",
                renew + " Automate renewal with a deploy hook that reloads the gateway.",
            )
        )
    if not name_covers(info.dns_names, hostname):
        names = ", ".join(info.dns_names[:5]) or "no DNS names"
        out.append(
            Finding(
                Code.CERT_NAME_MISMATCH,
                Status.BLOCKED,
                f"The TLS certificate does not cover {hostname} (its subjectAltName: {names});"
                " Meta refuses the TLS connection.",
                f"Get a certificate whose subjectAltName includes {hostname}, the SIP server"
                " hostname configured at Meta, or correct whatsapp.hostname; then reload.",
            )
        )
    return out


def verify_chain(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, info: CertInfo, now: dt.datetime
) -> tuple[bool, str]:
    """A TLS handshake in memory between ``server_ctx`` (our certificate and key) and
    ``client_ctx`` (system roots, no name check): whether the chain the listener sends
    verifies, and OpenSSL's reason when it does not. A leaf outside its validity period
    does not count here (that is 1101/1102); an expired intermediate does."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=None)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(12):
        for name, side in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                # 9/10: not yet valid / expired: the chain was built to a trusted root.
                leaf_out_of_date = not info.not_before <= now < info.not_after
                if exc.verify_code in (9, 10) and leaf_out_of_date:
                    return True, ""
                return False, str(exc.verify_message or exc.reason or "verification failed")
            except ssl.SSLError as exc:
                return False, str(exc.reason or exc)
        if done["client"]:
            return True, ""
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return False, "handshake did not complete"


def chain_finding(verified: bool, why: str, development: bool) -> Finding | None:
    if verified:
        return None
    status = Status.LIMITED if development else Status.BLOCKED
    dev = " (LIMITED only because mode is development)" if development else ""
    return Finding(
        Code.CERT_CHAIN_UNTRUSTED,
        status,
        f"The certificate chain does not verify against the system's trusted roots"
        f" ({why}){dev}; Meta refuses certificates it cannot verify.",
        "Use a certificate from a public CA and put the full chain in whatsapp.tls.cert_file"
        " (the certificate first, then the intermediates), then reload.",
    )


def number_findings(entry: NumberConfig) -> list[Finding]:
    """The number's SIP password (read now, never shown)."""
    if entry.read_password() is not None:
        return []
    number = entry.number
    fetch = (
        f"Copy the SIP password Meta generated for {number} (GET /<PHONE_NUMBER_ID>/settings"
        "?include_sip_credentials=true)"
    )
    if entry.sip_password_file is not None:
        path = entry.sip_password_file
        if not path.exists():
            why = f"the file {path} does not exist"
        elif not path.is_file():
            why = f"{path} is not a regular file"
        else:
            why = f"the file {path} cannot be read by the gateway or is empty"
        solution = (
            f"{fetch} into {path}, readable by the service user (mode 0600); it is read on"
            " every call, no reload needed."
        )
    else:
        why = f"the environment variable {entry.sip_password_env} is not set or empty"
        solution = (
            f"{fetch} into the environment variable {entry.sip_password_env} of the service"
            " (systemctl edit wa-sip-gateway) and restart it."
        )
    return [
        Finding(
            Code.SIP_PASSWORD_MISSING,
            Status.BLOCKED,
            f"No SIP password for {number}: {why}; Meta's calls to this number are refused"
            " with 403.",
            solution,
        )
    ]


def pbx_findings(misses: int, where: str) -> list[Finding]:
    if misses < PBX_MISSES_TO_BLOCK:
        return []
    return [
        Finding(
            Code.PBX_NOT_ANSWERING,
            Status.BLOCKED,
            f"The PBX at {where} did not answer the last {misses} SIP OPTIONS probes; calls"
            " from WhatsApp cannot be placed.",
            "Check that the PBX runs and listens at pbx.address, that firewalls let SIP pass"
            " between it and the gateway, and that it answers OPTIONS from the gateway's"
            " address (Asterisk: an endpoint identified by IP). Health returns on its first"
            " answer.",
        )
    ]


def capacity_findings(
    active: int, max_calls: int, ports_free: int, port_range: tuple[int, int]
) -> list[Finding]:
    out: list[Finding] = []
    more = (
        "Raise limits.max_calls if the host has CPU to spare (a transcoded call costs about"
        " 4.5 ms of CPU per second), or add a gateway instance behind the SIP load balancer."
    )
    if active >= max_calls:
        out.append(
            Finding(
                Code.CAPACITY_FULL,
                Status.BLOCKED,
                f"All {max_calls} call slots are in use (limits.max_calls); new calls get 503.",
                more,
            )
        )
    elif active > CAPACITY_WARNING * max_calls:
        out.append(
            Finding(
                Code.CAPACITY_HIGH,
                Status.LIMITED,
                f"{active} of {max_calls} call slots are in use"
                f" ({100 * active / max_calls:.0f}%, above {CAPACITY_WARNING:.0%}).",
                more,
            )
        )
    if ports_free < 2:
        low, high = port_range
        out.append(
            Finding(
                Code.MEDIA_PORTS_EXHAUSTED,
                Status.BLOCKED,
                f"No free RTP ports left in media.port_range [{low}, {high}]; new calls get 503.",
                "Widen media.port_range (two even ports per call) or lower limits.max_calls,"
                " and check that no other service binds ports in the range.",
            )
        )
    return out


def draining_finding(draining: bool, active: int, deadline: str | None) -> Finding | None:
    if not draining:
        return None
    until = f" until they end or {deadline}" if deadline else ""
    return Finding(
        Code.DRAINING,
        Status.BLOCKED,
        f"The gateway is draining (stopping): new calls and OPTIONS get 503 with Retry-After;"
        f" {active} active call{'s' if active != 1 else ''} continue{'s' if active == 1 else ''}"
        f"{until}.",
        "Nothing to do during a stop or restart: traffic moves to other instances. It ends"
        " within shutdown.drain_timeout; to stop at once send a second SIGTERM.",
    )


def reload_finding(problems: Sequence[str] | None) -> Finding | None:
    if not problems:
        return None
    listed = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
    return Finding(
        Code.RELOAD_REFUSED,
        Status.LIMITED,
        f"The last configuration reload was refused ({listed}); the previous configuration"
        " stays in force.",
        "Fix the listed keys (wa-sip-gateway check-config -c FILE) and reload again"
        " (systemctl reload wa-sip-gateway).",
    )


def not_running_finding(url: str, why: str) -> Finding:
    return Finding(
        Code.GATEWAY_NOT_RUNNING,
        Status.BLOCKED,
        f"The gateway does not answer on {url} ({why}).",
        "Start it (systemctl start wa-sip-gateway) and read why it stopped"
        " (journalctl -u wa-sip-gateway).",
    )


# --------------------------------------------------------------------------- PBX probe


class PbxProber:
    """SIP OPTIONS to the PBX every ``interval`` seconds through the transaction layer.

    A probe still unanswered when the next one is due is a miss; any response (even
    404 or 405: the PBX is there) clears the count. :func:`pbx_findings` blocks at
    :data:`PBX_MISSES_TO_BLOCK` misses. :meth:`claims` takes the events of the probes'
    transactions before the call table sees them.
    """

    def __init__(
        self,
        sip: SipPort,
        scheduler: Scheduler,
        via: LegAddress,
        target: Target,
        interval: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._sip = sip
        self._scheduler = scheduler
        self._via = via
        self.target = target
        self.interval = interval
        self._on_change = on_change
        self.misses = 0
        self.probes = 0
        self.answered = 0
        self._current: ClientTransaction | None = None
        self._current_answered = False
        self._outstanding: set[ClientTransaction] = set()
        self._timer: TimerHandle | None = None
        self._stopped = False

    @property
    def where(self) -> str:
        t = self.target
        host = f"[{t.host}]" if ":" in t.host else t.host
        return f"{t.transport} {host}:{t.port}"

    def start(self) -> None:
        """First probe after one interval (a PBX scripted for one call is left alone)."""
        self._stopped = False
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def set_interval(self, interval: float) -> None:
        if interval != self.interval:
            self.interval = interval
            if self._timer is not None:
                self._timer.cancel()
                self._schedule()

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self._scheduler.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        self._timer = None
        if self._current is not None and not self._current_answered:
            self.misses += 1
            if self.misses == PBX_MISSES_TO_BLOCK:
                log.warning("pbx_not_answering", pbx=self.where, misses=self.misses)
                if self._on_change is not None:
                    self._on_change()
        try:
            self._current = self._send()
            self._current_answered = False
            self._outstanding.add(self._current)
            self.probes += 1
            self._sip.flush()
        except Exception:
            log.exception("pbx_probe_failed", pbx=self.where)
        self._schedule()

    def _send(self) -> ClientTransaction:
        via, t = self._via, self.target
        host = f"[{t.host}]" if ":" in t.host else t.host
        uri = f"sip:{host}:{t.port}"
        if t.transport != "udp":
            uri += f";transport={t.transport}"
        req = Request(method="OPTIONS", uri=uri)
        h = req.headers
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:wa-sip-gateway@{_hp(via)}>;tag={new_tag()}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", new_call_id(via.host))
        h.add("CSeq", "1 OPTIONS")
        h.add("Accept", "application/sdp")
        return self._sip.send_request(req, via, t)

    def claims(self, event: Event) -> bool:
        """Handle ``event`` if it belongs to a probe (True), else leave it (False)."""
        tx = getattr(event, "tx", None)
        if not isinstance(tx, ClientTransaction) or tx not in self._outstanding:
            return False
        if isinstance(event, ResponseReceived):
            if event.response.status >= 200:
                self._outstanding.discard(tx)
            if tx is self._current:
                self._current_answered = True
            self.answered += 1
            if self.misses:
                was_blocked = self.misses >= PBX_MISSES_TO_BLOCK
                self.misses = 0
                if was_blocked:
                    log.info("pbx_answering_again", pbx=self.where)
                    if self._on_change is not None:
                        self._on_change()
        elif isinstance(event, TransactionTimeout | TransportFailure):
            self._outstanding.discard(tx)
        return True


def _hp(via: LegAddress) -> str:
    host = via.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{via.port}"


# --------------------------------------------------------------------------- for a person

_COLOURS = {"AVAILABLE": "\033[32m", "LIMITED": "\033[33m", "BLOCKED": "\033[31m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def render_text(health: dict[str, Any], *, source: str, colour: bool) -> str:
    """The /health JSON as an operator reads it: one block per entity, errors with fixes."""

    def word(status: str) -> str:
        return f"{_BOLD}{_COLOURS.get(status, '')}{status}{_RESET}" if colour else status

    def dim(text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if colour else text

    body = health.get("health_status", {})
    overall = str(body.get("can_receive_call_sip", "BLOCKED"))
    lines = [f"wa-sip-gateway health ({source}): {word(overall)}"]
    for entity in body.get("entities", []):
        kind = str(entity.get("entity_type", "?"))
        lines.append("")
        lines.append(f"  {kind:<13} {entity.get('id', '?'):<28} "
                     f"{word(str(entity.get('can_receive_call_sip', '?')))}")  # fmt: skip
        for error in entity.get("errors", []):
            lines.append(f"    [{error.get('error_code')}] {error.get('error_description')}")
            lines.append(dim(f"           fix: {error.get('possible_solution')}"))
        for info in entity.get("additional_info", []):
            code, _, text = str(info).partition(": ")
            text, _, fix = text.partition(" Possible solution: ")
            lines.append(f"    [{code}] {text}")
            if fix:
                lines.append(dim(f"           fix: {fix}"))
        lines += meta_lines(entity, word, dim)  # Meta's own view, when polled (meta_api)
    return "\n".join(lines)
