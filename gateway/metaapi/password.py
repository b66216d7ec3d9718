"""The SIP password Meta generates per (business number, app): read it, rotate it, and
write it where the gateway reads it (``sip_password_file``), atomically, mode 0600.

The password is held in a :class:`Secret` (``repr``/``str`` show ``***``), registered
with the Graph client so no error text can carry it, and never printed or logged.
The daemon reads the file on every call (``NumberConfig.read_password``), so a
rewritten file is in force for the next call; SIGHUP is not needed but harmless.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.logging import REDACTED
from gateway.metaapi.graph import GraphClient, GraphError
from gateway.metaapi.settings import CallingSettings, Desired

__all__ = [
    "Credential",
    "Secret",
    "WriteResult",
    "fetch_credential",
    "rotate_password",
    "write_password_file",
]


class Secret:
    """A string that does not show itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, other: str | None) -> bool:
        return other is not None and hmac.compare_digest(
            self._value.encode("utf-8"), other.encode("utf-8")
        )

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__


@dataclass(frozen=True)
class Credential:
    password: Secret
    app_id: str | None


def _extract(body: Mapping[str, Any]) -> Credential | None:
    calling = body.get("calling")
    sip = calling.get("sip") if isinstance(calling, Mapping) else None
    servers = sip.get("servers") if isinstance(sip, Mapping) else None
    for server in servers if isinstance(servers, list) else []:
        if not isinstance(server, Mapping):
            continue
        value = server.get("sip_user_password")
        if isinstance(value, str) and value:
            app = server.get("app_id")
            return Credential(Secret(value), str(app) if app is not None else None)
    return None


async def fetch_credential(graph: GraphClient, phone_number_id: str) -> Credential:
    """``GET /<id>/settings?include_sip_credentials=true``: the number's SIP password.
    Raises :class:`GraphError` when Meta answers none (SIP not configured)."""
    body = await graph.get(
        f"/{phone_number_id}/settings", params={"include_sip_credentials": "true"}
    )
    credential = _extract(body)
    if credential is None:
        settings = CallingSettings.parse(body)
        why = (
            "SIP is not enabled with a server for this number"
            if not settings.sip_configured
            else "Meta's answer has no sip_user_password (does the token's app have advanced"
            " access to whatsapp_business_management?)"
        )
        raise GraphError(f"no SIP password from Meta: {why}; run `meta apply` first")
    graph.add_secret(credential.password.reveal())
    return credential


async def rotate_password(
    graph: GraphClient, phone_number_id: str, settings: CallingSettings, want: Desired
) -> Credential:
    """Meta's rotation: disable SIP (``servers: []``), enable it again with the same server,
    read the new password. Meta may reset the SRTP key exchange while SIP is off; the
    one in force before (DTLS when unset) is set back, whatever the number's ``srtp``
    mode says (making Meta match the config is ``meta apply``'s, which ``meta show``
    points to). If enabling fails SIP stays off: the error says so."""
    if not settings.sip_configured:
        raise GraphError(
            "SIP is not enabled with a server at Meta for this number, so there is no password"
            " to rotate; run `wa-sip-gateway meta apply` first"
        )
    server = settings.sip_servers[0]
    server_json: dict[str, Any] = {
        "hostname": server.hostname or want.hostname,
        "port": server.port or want.port,
        "request_uri_user_params": dict(server.request_uri_user_params),
    }
    path = f"/{phone_number_id}/settings"
    await graph.post(path, {"calling": {"sip": {"status": "DISABLED", "servers": []}}})
    try:
        await graph.post(
            path, {"calling": {"sip": {"status": "ENABLED", "servers": [server_json]}}}
        )
    except GraphError as exc:
        exc.message += (
            " -- SIP IS NOW DISABLED at Meta for this number (calls do not reach the gateway);"
            " run `wa-sip-gateway meta apply` to enable it again"
        )
        raise
    after = CallingSettings.parse(await graph.get(path))
    if after.srtp != settings.srtp:  # compared as in force: unset is DTLS
        await graph.post(path, {"calling": {"srtp_key_exchange_protocol": settings.srtp}})
    return await fetch_credential(graph, phone_number_id)


@dataclass(frozen=True)
class WriteResult:
    path: Path
    changed: bool
    created: bool = False  # there was no file before


def write_password_file(path: Path, password: Secret) -> WriteResult:
    """Write ``password`` (and a newline) to ``path`` atomically with mode 0600: a temporary
    file in the same directory, fsync, rename over, fsync the directory. An existing
    file's owner and group are kept when we may (running as root for a service user).
    Unchanged content is not rewritten."""
    path = Path(path)
    try:
        current = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        current = None
    if password.matches(current) and _mode(path) == 0o600:
        return WriteResult(path, changed=False)
    owner: tuple[int, int] | None = None
    with contextlib.suppress(OSError):
        st = path.stat()
        owner = (st.st_uid, st.st_gid)
    created = owner is None
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # mkstemp creates 0600 already; be explicit
            if owner is not None and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), *owner)
            f.write(password.reveal() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return WriteResult(path, changed=True, created=created)


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return None
