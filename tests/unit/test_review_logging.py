"""Review finding: exception texts and tracebacks must be scrubbed like other values."""

from __future__ import annotations

import io
import logging

import pytest

from gateway.logging import configure_logging, get_logger
from tests.unit.test_logging import _reset  # noqa: F401 - autouse fixture


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exception_text_is_scrubbed(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)  # type: ignore[arg-type]
    try:
        raise ValueError("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEYKEYKEY1\nAuthorization: X")
    except ValueError:
        get_logger("t").exception("failed")
        logging.getLogger("asyncio").exception("stdlib failed")
    text = stream.getvalue()
    assert text.count("ValueError") >= 2
    assert "KEYKEYKEY1" not in text
