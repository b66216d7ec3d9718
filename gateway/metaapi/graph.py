"""A small client for Meta's Graph API (aiohttp), as the ``meta`` commands and the
health poller need it.

* The access token travels only in the ``Authorization: Bearer`` header, never in
  a URL; every text this module produces (errors included) is scrubbed of it and
  of any other secret registered with :meth:`GraphClient.add_secret`.
* Each request has a total timeout. Timeouts, connection failures, HTTP 5xx,
  HTTP 429 and Graph's rate-limit / transient error objects are retried with
  exponential backoff and jitter (``Retry-After`` is honoured, capped), up to
  ``retries`` times.
* Graph error objects (``{"error": {"message", "type", "code", "error_subcode",
  "error_data": {"details"}, "fbtrace_id"}}``) become :class:`GraphError`, shown as
  ``code/subcode: message (fbtrace_id ...)`` with a hint for the codes an operator
  of this gateway meets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from gateway import __version__
from gateway.config import MetaApiConfig
from gateway.logging import REDACTED, get_logger

__all__ = [
    "RATE_LIMIT_CODES", "GraphClient", "GraphError", "MissingToken", "graph_url",
]  # fmt: skip

log = get_logger(__name__)

#: Graph error codes that mean "slow down" (app, account, WABA and business-use-case
#: rate limits, WhatsApp throughput / pair-rate limits).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80007, 130429, 131048, 131056})
#: Codes Meta documents as temporary (service unavailable, unknown error).
TRANSIENT_CODES = frozenset({1, 2, 131000, 131016})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0

_HINTS: dict[int, str] = {
    190: "the access token is invalid or expired: put a valid token (a System User token"
    " with whatsapp_business_management) in meta_api.access_token_file or _env",
    102: "the session behind the access token has expired: generate a new token",
    10: "the app lacks a permission for this call (the SIP password needs advanced access"
    " to whatsapp_business_management)",
    200: "the token lacks a permission: it needs whatsapp_business_management on this WABA",
    100: "Meta rejected a parameter: check phone_number_id and the settings in meta_api.calling",
    803: "no such object: check whatsapp.numbers[].phone_number_id",
    131055: "expected while SIP is enabled for the number: Graph calling endpoints are off and"
    " calls are signalled over SIP to this gateway",
    138018: "the number does not meet calling's prerequisites (messaging limit of at least"
    " 2,000, app in Live mode)",
}
for _code in RATE_LIMIT_CODES:
    _HINTS.setdefault(_code, "rate limited by Meta: wait a few minutes and run it again")


class GraphError(Exception):
    """A failed Graph API request: Meta's error object, or why there was no answer."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        kind: str | None = None,
        fbtrace_id: str | None = None,
        details: str | None = None,
        http_status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.kind = kind
        self.fbtrace_id = fbtrace_id
        self.details = details
        self.http_status = http_status
        self.transient = transient

    @classmethod
    def from_body(
        cls, body: Mapping[str, Any], http_status: int, scrub: Callable[[str], str]
    ) -> GraphError:
        error = body.get("error")
        if not isinstance(error, Mapping):
            return cls(f"HTTP {http_status} without a Graph error object", http_status=http_status)
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, Mapping) else None
        return cls(
            scrub(str(error.get("message") or "no message")),
            code=_int(error.get("code")),
            subcode=_int(error.get("error_subcode")),
            kind=_str(error.get("type")),
            fbtrace_id=_str(error.get("fbtrace_id")),
            details=scrub(str(details)) if details else None,
            http_status=http_status,
            transient=bool(error.get("is_transient")),
        )

    @property
    def retryable(self) -> bool:
        return (
            self.transient
            or self.http_status in RETRY_STATUSES
            or self.code in RATE_LIMIT_CODES
            or self.code in TRANSIENT_CODES
        )

    @property
    def hint(self) -> str | None:
        return _HINTS.get(self.code) if self.code is not None else None

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        head = f"{self.code}/{self.subcode}" if self.subcode is not None else str(self.code)
        text = f"{head}: {self.message}"
        if self.details and self.details not in self.message:
            text += f" ({self.details})"
        if self.fbtrace_id:
            text += f" (fbtrace_id {self.fbtrace_id})"
        return text

    def describe(self) -> str:
        """``str()`` plus the hint, for a person."""
        hint = self.hint
        return f"{self} - {hint}" if hint else str(self)


class MissingToken(GraphError):
    """No access token could be read."""


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def graph_url(base_url: str, version: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{version}/{path.lstrip('/')}"


Sleep = Callable[[float], Awaitable[None]]


class GraphClient:
    """``async with GraphClient(token, ...) as graph: await graph.get("/<id>/settings")``."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://graph.facebook.com",
        version: str = "v24.0",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not token:
            raise MissingToken("no access token")
        self._token = token
        self._secrets: list[str] = [token]
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._session = session
        self._own_session = session is None
        self._sleep = sleep
        self.requests = 0  # HTTP requests sent, retries included

    @classmethod
    def from_config(cls, meta: MetaApiConfig, **kwargs: Any) -> GraphClient:
        """A client for ``meta_api``; the token is read now. Raises :class:`MissingToken`."""
        token = meta.read_token()
        if token is None:
            if meta.access_token_file is not None:
                where = f"meta_api.access_token_file: {meta.access_token_file} is missing,"
                where += " unreadable or empty"
            else:
                where = f"meta_api.access_token_env: {meta.access_token_env} is not set or empty"
            raise MissingToken(f"no Graph API access token ({where})")
        return cls(
            token,
            base_url=meta.base_url,
            version=meta.api_version,
            timeout=meta.timeout,
            retries=meta.retries,
            **kwargs,
        )

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def add_secret(self, secret: str) -> None:
        """Scrub ``secret`` (e.g. a SIP password just read) from every text made here."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": f"wa-sip-gateway/{__version__}"}
            )
            self._own_session = True
        return self._session

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._request("GET", path, params=params)

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", path, body=body)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = graph_url(self.base_url, self.version, path)
        headers = {"Authorization": f"Bearer {self._token}"}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        attempt = 0
        while True:
            error: GraphError
            retry_after: float | None = None
            self.requests += 1
            try:
                async with self._client().request(
                    method, url, params=params, json=body, headers=headers, timeout=timeout
                ) as resp:
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    raw = await resp.read()
                try:
                    data = _json(raw)
                except ValueError:
                    error = GraphError(
                        f"HTTP {status}: the answer is not JSON ({len(raw)} bytes)",
                        http_status=status,
                    )
                else:
                    if status < 400 and "error" not in data:
                        return data
                    error = GraphError.from_body(data, status, self.scrub)
            except TimeoutError:
                error = GraphError(
                    f"no answer from {self.base_url} within {self.timeout:g} s (meta_api.timeout)",
                    transient=True,
                )
            except aiohttp.ClientError as exc:
                why = self.scrub(str(exc) or type(exc).__name__)
                error = GraphError(f"cannot reach {self.base_url}: {why}", transient=True)
            if not error.retryable or attempt >= self.retries:
                if attempt:
                    error.message += f" (after {attempt + 1} attempts)"
                raise error
            delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            attempt += 1
            log.info(
                "graph_retry",
                method=method,
                path=path,
                attempt=attempt,
                delay=round(delay, 2),
                error=str(error),
            )
            await self._sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return None


def _json(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw.decode("utf-8") if raw else "{}")
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
