"""The gateway's health checks: each turns what the runtime knows into findings.

The findings go into a :class:`gateway.ops.report.Report` (Meta's Health Status
API shape, codes in :class:`gateway.ops.report.Code`); the certificate's own
checks are in :mod:`gateway.ops.certs`. Everything here is pure: findings from
values (the PBX prober, :class:`gateway.b2bua.probe.PbxProber`, counts the
misses :func:`pbx_findings` reads).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.b2bua.probe import PBX_MISSES_TO_BLOCK
from gateway.config import NumberConfig
from gateway.ops.report import Code, Finding, Status

__all__ = [
    "CAPACITY_WARNING",
    "capacity_findings",
    "draining_finding",
    "listener_finding",
    "not_running_finding",
    "number_findings",
    "pbx_findings",
    "reload_finding",
]

CAPACITY_WARNING = 0.9


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
