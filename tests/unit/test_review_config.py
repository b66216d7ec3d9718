"""Review findings on config validation: a bad template names its key, never crashes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.unit.test_config import MINIMAL


@pytest.mark.parametrize(
    "template",
    [
        "{number.real}",  # attribute access: AttributeError at load time
        "{number[x]}",  # string index: TypeError at load time
        "{number[12]}",  # fine for the sample number, IndexError on a shorter one at call time
        "{digits!r}",  # conversion: quotes in the user part
        "{user:>40}",  # format spec: spaces in the user part
    ],
)
def test_request_uri_user_only_plain_placeholders(tmp_path: Path, template: str) -> None:
    path = tmp_path / "gateway.yaml"
    text = MINIMAL + f"pbx: {{request_uri_user: '{template}'}}\n"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.split(": ", 1)[0] for p in info.value.problems] == ["pbx.request_uri_user"]


@pytest.mark.parametrize("template", ["{number}", "{digits}", "wa{user}", "{digits}-x", "9{{x}}"])
def test_request_uri_user_plain_templates_load(tmp_path: Path, template: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL + f"pbx: {{request_uri_user: '{template}'}}\n", encoding="utf-8")
    assert load_config(path).pbx.request_uri_user == template
