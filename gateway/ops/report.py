"""The health report, in the shape of Meta's Health Status API (``can_receive_call_sip``).

``GET /health`` answers::

    {"health_status": {"can_receive_call_sip": "AVAILABLE" | "LIMITED" | "BLOCKED",
                       "entities": [{"entity_type": "PHONE_NUMBER", "id": "+15550001111",
                                     "can_receive_call_sip": ..., "additional_info": [...],
                                     "errors": [{"error_code", "error_description",
                                                 "possible_solution"}]},
                                    ...,
                                    {"entity_type": "GATEWAY", "id": <whatsapp.hostname>, ...}]}}

Each check (:mod:`gateway.ops.health`, :mod:`gateway.ops.certs`) yields
:class:`Finding` objects with a code from :class:`Code` (documented in README,
"Health"). Gateway-wide findings (listener, certificate, PBX, capacity, drain,
reload) go on the GATEWAY entity and on every PHONE_NUMBER entity (they decide
whether Meta can reach that number); a number's own findings (its SIP password)
only on its entity. An entity is as bad as its worst finding: ``errors`` lists
its BLOCKED findings, ``additional_info`` its LIMITED ones ("CODE: description
Possible solution: ..."). The overall value is the worst entity, as in Meta's
API; HTTP 503 when it is BLOCKED, else 200.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Code", "Entity", "Finding", "Report", "Status"]


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
