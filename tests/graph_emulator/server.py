"""An aiohttp server on loopback that plays Meta's Graph API for calling settings.

It serves the shapes of docs/whatsapp-sip.md sections 8 and 11 (never the real Graph API):

* ``GET /<version>/<PHONE_NUMBER_ID>/settings`` -> ``{"calling": {...}, ...}``; with
  ``include_sip_credentials=true`` each SIP server also carries ``sip_user_password``
  and ``app_id`` (an error ``#10`` instead when the token lacks advanced access).
* ``POST /<version>/<PHONE_NUMBER_ID>/settings`` with a partial ``{"calling": {...}}``
  -> ``{"success": true}``; ``call_hours`` replaced whole (a missing
  ``holiday_schedule`` empties it); SDES only with SIP enabled; enabling SIP with a
  server generates a new SIP password; disabling it (or ``servers: []``) drops the
  password and resets SRTP to the default (the worst case the docs allow).
* ``GET /<version>/<node>?fields=health_status`` for a number or the app: 138024 when
  SIP is off for the number, 138025 when the app has no SIP server for it (or what a
  test forces with :meth:`GraphEmulator.force_health`).
* ``POST /<version>/<PHONE_NUMBER_ID>/calls`` -> error 131055 while SIP is enabled.
* Errors as Graph's ``{"error": {message, type, code, error_subcode, error_data,
  fbtrace_id}}``: a wrong token is 190/463; unknown ids 100/33; scripted failures
  (:meth:`GraphEmulator.fail`) for 5xx, rate limits, non-JSON answers and delays.

Use ``async with GraphEmulator() as emu`` in a test's loop, or ``with
GraphEmulator().running() as emu`` (a thread with its own loop) when the code under
test calls ``asyncio.run`` itself (the CLI) or runs in another process (the daemon).
"""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["APP_ID", "TOKEN", "Fault", "GraphEmulator", "NumberState", "RequestLog"]

TOKEN = "EAAG-test-token-not-real-0123456789"
APP_ID = "987654321098765"
_VERSION = re.compile(r"^v\d+\.\d+$")


def _trace() -> str:
    return "A" + secrets.token_urlsafe(12)


def graph_error(
    status: int,
    message: str,
    code: int,
    subcode: int | None = None,
    kind: str = "OAuthException",
    details: str | None = None,
    transient: bool | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if transient is not None:
        error["is_transient"] = transient
    error["fbtrace_id"] = _trace()
    return web.json_response({"error": error}, status=status)


async def _body(request: web.Request) -> Any:
    try:
        return await request.json() if request.can_read_body else None
    except ValueError:
        return "<not json>"


@dataclass
class NumberState:
    """One business number at "Meta": its ``calling`` object and SIP password."""

    phone_number_id: str
    calling: dict[str, Any] = field(default_factory=dict)
    password: str | None = None
    password_generations: int = 0

    def sip(self) -> dict[str, Any]:
        sip: dict[str, Any] = self.calling.setdefault("sip", {"status": "DISABLED", "servers": []})
        return sip

    @property
    def sip_configured(self) -> bool:
        sip = self.sip()
        return sip.get("status") == "ENABLED" and bool(sip.get("servers"))


@dataclass
class Fault:
    """A scripted failure for requests whose method and path match (``times`` of them)."""

    method: str
    path: str  # regex searched in the path after the version
    times: int = 1
    status: int = 503
    error: dict[str, Any] | None = None  # Graph error object fields; None: plain body
    body: str | None = None  # raw non-JSON body
    delay: float = 0.0
    retry_after: str | None = None
    skip: int = 0  # let this many matching requests through first


@dataclass
class RequestLog:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorized: bool


class GraphEmulator:
    def __init__(
        self,
        *,
        token: str = TOKEN,
        app_id: str = APP_ID,
        sip_credentials_access: bool = True,
    ) -> None:
        self.token = token
        self.app_id = app_id
        self.sip_credentials_access = sip_credentials_access
        self.numbers: dict[str, NumberState] = {}
        self.faults: list[Fault] = []
        self.requests: list[RequestLog] = []
        self.forced_health: dict[str, list[dict[str, Any]]] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    # -- state ------------------------------------------------------------------
    def add_number(self, phone_number_id: str, **calling: Any) -> NumberState:
        """A number with calling ``status`` DISABLED unless ``calling`` says otherwise.
        ``sip={"status": "ENABLED", "servers": [...]}`` also generates a password."""
        state = NumberState(phone_number_id)
        state.calling = {
            "status": "DISABLED",
            "call_icon_visibility": "DEFAULT",
            "callback_permission_status": "DISABLED",
            "sip": {"status": "DISABLED", "servers": []},
        }
        state.calling.update(copy.deepcopy(calling))
        if state.sip_configured:
            self._new_password(state)
        self.numbers[phone_number_id] = state
        return state

    def configured(
        self, phone_number_id: str, hostname: str, port: int, **calling: Any
    ) -> NumberState:
        """A number already set up for a gateway at ``hostname:port`` (SIP, SDES, enabled)."""
        base: dict[str, Any] = {
            "status": "ENABLED",
            "sip": {
                "status": "ENABLED",
                "servers": [{"hostname": hostname, "port": port, "request_uri_user_params": {}}],
            },
            "srtp_key_exchange_protocol": "SDES",
        }
        base.update(calling)
        return self.add_number(phone_number_id, **base)

    def _new_password(self, state: NumberState) -> None:
        state.password = "meta-sip-" + secrets.token_urlsafe(18)
        state.password_generations += 1

    def fail(self, method: str, path: str, **kwargs: Any) -> Fault:
        fault = Fault(method, path, **kwargs)
        self.faults.append(fault)
        return fault

    def force_health(self, node_id: str, entities: list[dict[str, Any]] | None) -> None:
        """Answer health_status for ``node_id`` with these entities (None: computed again)."""
        if entities is None:
            self.forced_health.pop(node_id, None)
        else:
            self.forced_health[node_id] = entities

    def posts(self, path_suffix: str = "/settings") -> list[Any]:
        return [
            r.body for r in self.requests if r.method == "POST" and r.path.endswith(path_suffix)
        ]

    # -- running ----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{version}/{node}", self._node)
        app.router.add_route("*", "/{version}/{node}/{edge}", self._edge)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GraphEmulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @contextmanager
    def running(self) -> Iterator[GraphEmulator]:
        """Serve from a thread with its own event loop."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop: asyncio.Event | None = None
        failure: list[BaseException] = []

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await stop.wait()
            await self.stop()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            if stop is not None:
                loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    # -- handlers ----------------------------------------------------------------
    async def _prelude(self, request: web.Request, body: Any) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        authorized = auth == f"Bearer {self.token}"
        rest = request.path.split("/", 2)[2] if request.path.count("/") >= 2 else ""
        with self._lock:
            self.requests.append(
                RequestLog(request.method, "/" + rest, dict(request.query), body, authorized)
            )
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and re.search(fault.path, rest):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                if fault.error is not None:
                    response = graph_error(fault.status, **fault.error)
                    if headers:
                        response.headers.update(headers)
                    return response
                if fault.body is not None or fault.status >= 400:
                    return web.Response(
                        status=fault.status,
                        text=fault.body if fault.body is not None else "<html>Bad Gateway</html>",
                        content_type="text/html",
                        headers=headers,
                    )
        if not _VERSION.match(request.match_info["version"]):
            return graph_error(400, "Unknown path components", 2500, kind="OAuthException")
        if not auth:
            return graph_error(400, "An active access token must be used to query information"
                               " about the current user.", 2500)  # fmt: skip
        if not authorized:
            return graph_error(
                401,
                "Error validating access token: Session has expired on Tuesday, 01-Dec-26"
                " 08:00:00 PST.",
                190,
                463,
            )
        return None

    def _unknown(self, node: str) -> web.Response:
        return graph_error(
            400,
            f"Unsupported get request. Object with ID '{node}' does not exist, cannot be loaded"
            " due to missing permissions, or does not support this operation.",
            100,
            33,
            kind="GraphMethodException",
        )

    async def _node(self, request: web.Request) -> web.Response:
        early = await self._prelude(request, await _body(request))
        if early is not None:
            return early
        node = request.match_info["node"]
        if request.method != "GET" or request.query.get("fields") != "health_status":
            return graph_error(400, "(#100) Tried accessing nonexisting field", 100)
        if node in self.forced_health:
            entities = copy.deepcopy(self.forced_health[node])
        elif node in self.numbers:
            entities = self._number_health(self.numbers[node])
        elif node == self.app_id:
            entities = [self._app_entity(list(self.numbers.values()))]
        else:
            return self._unknown(node)
        return web.json_response(
            {"health_status": {"can_send_message": "AVAILABLE", "entities": entities}, "id": node}
        )

    def _number_health(self, state: NumberState) -> list[dict[str, Any]]:
        sip = state.sip()
        phone: dict[str, Any] = {
            "entity_type": "PHONE_NUMBER",
            "id": state.phone_number_id,
            "can_send_message": "AVAILABLE",
            "can_receive_call_sip": "AVAILABLE",
        }
        if sip.get("status") != "ENABLED":
            phone["can_receive_call_sip"] = "BLOCKED"
            phone["errors"] = [{
                "error_code": 138024,
                "error_description": "SIP is not enabled for this business phone number",
                "possible_solution": "Enable SIP using {PHONE_NUMBER_ID}/settings API",
            }]  # fmt: skip
        return [phone, self._app_entity([state])]

    def _app_entity(self, states: list[NumberState]) -> dict[str, Any]:
        app: dict[str, Any] = {
            "entity_type": "APP",
            "id": self.app_id,
            "can_send_message": "AVAILABLE",
            "can_receive_call_sip": "AVAILABLE",
        }
        if any(s.sip().get("status") == "ENABLED" and not s.sip().get("servers") for s in states):
            app["can_receive_call_sip"] = "BLOCKED"
            app["errors"] = [{
                "error_code": 138025,
                "error_description": "This app cannot use SIP for WhatsApp Business calling"
                " because it has not configured a SIP server for this business phone number",
                "possible_solution": "Configure SIP server using {PHONE_NUMBER_ID}/settings API",
            }]  # fmt: skip
        return app

    async def _edge(self, request: web.Request) -> web.Response:
        body = await _body(request)
        early = await self._prelude(request, body)
        if early is not None:
            return early
        node, edge = request.match_info["node"], request.match_info["edge"]
        state = self.numbers.get(node)
        if state is None:
            return self._unknown(node)
        if edge == "settings" and request.method == "GET":
            return self._get_settings(state, request.query.get("include_sip_credentials"))
        if edge == "settings" and request.method == "POST":
            return self._post_settings(state, body)
        if edge == "calls" and request.method == "POST":
            if state.sip().get("status") == "ENABLED":
                return graph_error(
                    400,
                    "(#131055) Method not allowed",
                    131055,
                    details="Calling API endpoints are not available for this phone number"
                    " because SIP is enabled",
                )
            return web.json_response(
                {"messaging_product": "whatsapp", "calls": [{"id": "wacid.x"}]}
            )
        return graph_error(400, f"(#100) Unknown edge {edge}", 100)

    def _get_settings(self, state: NumberState, creds: str | None) -> web.Response:
        calling = copy.deepcopy(state.calling)
        if creds == "true":
            if not self.sip_credentials_access:
                return graph_error(
                    403, "(#10) Application does not have permission for this action", 10
                )
            for server in calling.get("sip", {}).get("servers", []):
                if state.password is not None:
                    server["sip_user_password"] = state.password
                server["app_id"] = self.app_id
        return web.json_response({
            "calling": calling,
            "storage_configuration": {"status": "DEFAULT"},
        })  # fmt: skip

    def _post_settings(self, state: NumberState, body: Any) -> web.Response:
        calling = body.get("calling") if isinstance(body, dict) else None
        if not isinstance(calling, dict) or not calling:
            return graph_error(400, "(#100) The parameter calling is required", 100)
        new = copy.deepcopy(state.calling)
        problem = self._merge(new, calling)
        if problem is not None:
            return graph_error(400, "(#100) Invalid parameter", 100, details=problem)
        was = state.sip_configured
        state.calling = new
        sip = state.sip()
        if sip.get("status") != "ENABLED" or not sip.get("servers"):
            state.password = None
            new.pop("srtp_key_exchange_protocol", None)
        elif not was:
            self._new_password(state)
        return web.json_response({"success": True})

    def _merge(self, new: dict[str, Any], calling: dict[str, Any]) -> str | None:
        on_off = ("ENABLED", "DISABLED")
        for key, value in calling.items():
            if key in ("status", "callback_permission_status"):
                if value not in on_off:
                    return f"calling.{key} must be ENABLED or DISABLED"
                new[key] = value
            elif key == "call_icon_visibility":
                if value not in ("DEFAULT", "DISABLE_ALL"):
                    return "call_icon_visibility must be DEFAULT or DISABLE_ALL"
                new[key] = value
            elif key == "call_hours":
                if not isinstance(value, dict) or value.get("status") not in on_off:
                    return "call_hours.status must be ENABLED or DISABLED"
                hours = copy.deepcopy(value)
                hours.setdefault("holiday_schedule", [])
                new[key] = hours
            elif key == "sip":
                if not isinstance(value, dict):
                    return "sip must be an object"
                sip = dict(new.get("sip") or {})
                if "status" in value:
                    if value["status"] not in on_off:
                        return "sip.status must be ENABLED or DISABLED"
                    sip["status"] = value["status"]
                if "servers" in value:
                    servers = value["servers"]
                    if not isinstance(servers, list) or len(servers) > 1:
                        return "sip.servers takes at most one server"
                    for s in servers:
                        if not isinstance(s, dict) or not isinstance(s.get("hostname"), str):
                            return "sip.servers[].hostname is required"
                        port = s.get("port", 5061)
                        if not isinstance(port, int) or not 1 <= port <= 65535:
                            return "sip.servers[].port must be 1-65535"
                        params = s.get("request_uri_user_params", {})
                        if not isinstance(params, dict):
                            return "request_uri_user_params must be an object"
                    sip["servers"] = [
                        {
                            "hostname": s["hostname"],
                            "port": s.get("port", 5061),
                            "request_uri_user_params": dict(s.get("request_uri_user_params", {})),
                        }
                        for s in servers
                    ]
                new["sip"] = sip
            elif key == "srtp_key_exchange_protocol":
                if value not in ("DTLS", "SDES"):
                    return "srtp_key_exchange_protocol must be DTLS or SDES"
                new[key] = value
            elif key == "audio":
                codecs = value.get("additional_codecs") if isinstance(value, dict) else None
                if not isinstance(codecs, list) or any(c not in ("PCMA", "PCMU") for c in codecs):
                    return "audio.additional_codecs takes PCMA and PCMU"
                new["audio"] = {"additional_codecs": list(codecs)}
            elif key == "voicemail":
                if not isinstance(value, dict) or value.get("status") not in on_off:
                    return "voicemail.status must be ENABLED or DISABLED"
                new[key] = copy.deepcopy(value)
            else:
                return f"unknown calling setting {key}"
        if new.get("srtp_key_exchange_protocol") == "SDES" and (
            new.get("sip", {}).get("status") != "ENABLED"
        ):
            if "srtp_key_exchange_protocol" in calling:
                return "SDES can be used only when SIP signaling is enabled"
            new.pop("srtp_key_exchange_protocol")  # SIP turned off: back to Meta's default
        return None
