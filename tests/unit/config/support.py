"""Helpers shared by the config tests: a minimal valid file, writing one, and
reading the problems a bad one gets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

MINIMAL = """\
whatsapp:
  hostname: sip.example.com
  tls: {cert_file: tls/gw.crt, key_file: tls/gw.key}
  numbers:
    - {number: "+15550001111", sip_password_env: WA_TEST_PW}
"""


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def keys_of(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]
