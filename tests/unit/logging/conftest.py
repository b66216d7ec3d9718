"""The logging tests share one autouse fixture: structlog and the root logger's
handlers reset after each test (configure_logging changes process-wide state)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_GatewayHandler":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)
