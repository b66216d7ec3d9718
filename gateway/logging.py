"""Structured logging: structlog for our code, stdlib ``logging`` routed through it.

Call :func:`configure_logging` once at startup.  Every line, whether it comes
from ``get_logger()`` or from a stdlib logger (asyncio, aiohttp), goes through
one handler on the root logger and is rendered either as one JSON object per
line (``timestamp`` ISO-8601 UTC, ``level``, ``event``, ``logger`` and bound
keys) or by structlog's ConsoleRenderer.

Context: :func:`bind_call_key` binds ``call=<key>`` in a context variable, so
every line logged in that context carries it.  asyncio tasks copy the context
when created, so binding inside a call's task does not leak into other calls.

Secrets: :func:`redact_secrets` replaces the value of any key that looks like a
credential (``password``, ``sip_password``, ``access_token``,
``authorization``, ``private_key``, ...) with ``"***"``, and masks SDES keys
(``inline:...``) and ``Authorization:`` header lines inside string values.
A value that is a dataclass instance (a call record's media statistics) is
logged as the dict of its fields.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "LogLimiter",
    "bind_call_key",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact_secrets",
    "unbind_call_key",
]

REDACTED = "***"

_SECRET_PARTS = ("password", "passwd", "secret", "token", "authorization", "credential")
_SECRET_NAMES = frozenset({"key", "pwd", "auth", "apikey", "psk", "cookie"})
# Identifiers that end in "_key" but are not key material.
_NOT_SECRET = frozenset({"call_key", "dialog_key", "transaction_key", "tx_key", "cache_key"})
# SDES key material (a=crypto ... inline:KEY) and Authorization header lines.
_SCRUB = re.compile(
    r"(inline:)[^\s|;\"']+|^((?:proxy-)?authorization[ \t]*:).*?(\r?)$", re.I | re.M
)
_MAX_DEPTH = 4


def is_secret_key(name: str) -> bool:
    """Whether an event-dict key names a credential whose value must not be logged."""
    norm = name.lower().replace("-", "_")
    if norm in _NOT_SECRET:
        return False
    if any(part in norm for part in _SECRET_PARTS):
        return True
    return norm in _SECRET_NAMES or norm.endswith("_key")


def _scrub_text(text: str) -> str:
    lowered = text.lower()
    if "inline:" not in lowered and "authorization" not in lowered:
        return text
    return _SCRUB.sub(
        lambda m: f"{m[1]}{REDACTED}" if m[1] else f"{m[2]} {REDACTED}{m[3]}",
        text,
    )


def _redact(value: object, depth: int) -> object:
    if isinstance(value, str):
        return _scrub_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)  # e.g. a call record's media stats: its fields
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide credential values (see :func:`is_secret_key`)."""
    for key, value in event_dict.items():
        if key.startswith("_"):  # structlog internals such as _record
            continue
        event_dict[key] = REDACTED if is_secret_key(key) else _redact(value, 0)
    return event_dict


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type so that reconfiguring replaces our handler and nothing else."""


def configure_logging(
    level: str,
    fmt: Literal["json", "console"],
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger to write to ``stream`` (stderr).

    ``level`` is a level name (case-insensitive: debug, info, warning, error);
    ``fmt`` selects JSON lines or the console renderer (colours only on a tty).
    May be called again; the previous handler installed here is replaced.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "console":
        isatty = getattr(out, "isatty", None)
        # Plain tracebacks: a rich/better-exceptions one would print local variables.
        renderer = structlog.dev.ConsoleRenderer(
            colors=bool(isatty and isatty()), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    # The traceback becomes text here, then is scrubbed like any other value.
    final: list[Processor] = [structlog.processors.format_exc_info, redact_secrets, renderer]

    formatter = ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), redact_secrets],
        processors=[ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _GatewayHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GatewayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # One line per HTTP request (metrics scrapes) is noise unless debugging.
    logging.getLogger("aiohttp.access").setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)

    structlog.configure(
        processors=[*shared, redact_secrets, ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Not cached: module-level loggers must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial: Any) -> FilteringBoundLogger:
    """A structlog logger (named ``name``, default: the calling module) with ``initial`` keys."""
    logger = structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
    return cast(FilteringBoundLogger, logger)


def bind_call_key(key: str) -> None:
    """Add ``call=key`` to every line logged in the current context (task)."""
    structlog.contextvars.bind_contextvars(call=key)


def unbind_call_key() -> None:
    """Undo :func:`bind_call_key`."""
    structlog.contextvars.unbind_contextvars("call")


class LogLimiter:
    """At most one log line per key (a peer) every ``interval`` seconds.

    ``allow(key)`` returns None when the line is to be left out, else how many
    lines for that key were left out since the last one written (log it as
    ``suppressed=`` or ``not_logged=``). At most ``max_keys`` keys are remembered:
    beyond, the oldest half is forgotten (a flood from many sources still logs
    little). The time is ``clock()``, or the ``now`` a sans-IO caller passes in
    (the SIP core and its screens run on the event loop's monotonic time).
    """

    def __init__(
        self,
        interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (last written, left out)

    def allow(self, key: Hashable, now: float | None = None) -> int | None:
        if now is None:
            now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        if seen is None and len(self._last) >= self._max_keys:
            for old in list(self._last)[: max(1, self._max_keys // 2)]:
                del self._last[old]
        self._last[key] = (now, 0)
        return seen[1] if seen is not None else 0
