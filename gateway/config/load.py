"""Reading the YAML file into a :class:`~gateway.config.model.Config`: :func:`load_config`."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from gateway.config.fields import (
    ConfigError,
)
from gateway.config.model import Config

# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" may legitimately be overridden by explicit keys
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            message = f"duplicate key {key_node.value!r}"
            raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_MESSAGES = {
    "missing": "required", "extra_forbidden": "unknown key", "string_type": "must be a string",
    "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer", "float_type": "must be a number",
    "float_parsing": "must be a number", "bool_type": "must be true or false",
    "model_type": "must be a mapping of keys", "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys", "list_type": "must be a list",
    "tuple_type": "must be a list", "string_too_short": "must not be empty",
    "invalid_key": "keys must be strings",
}  # fmt: skip


def _message(err: Any) -> str:
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "literal_error":
        return "must be one of " + str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}  # fmt: skip
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}"
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _format(err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    if err["type"] == "config_path":
        loc += str(err["ctx"]["path"]).split(".")
    return f"{'.'.join(loc) or '(top level)'}: {_message(err)}"


def load_config(path: str | Path, *overlays: str | Path) -> Config:
    """Read, parse and validate the YAML file at ``path``; raise :class:`ConfigError`.

    Each file in ``overlays`` (e.g. one instance's ports behind a proxy) is merged over
    it in order: mappings key by key, any other value (lists too) replaced whole.
    Relative paths resolve against the directory of ``path``."""
    file = Path(path)
    data = _read_yaml(file)
    for overlay in overlays:
        over = _read_yaml(Path(overlay))
        if not isinstance(over, dict):
            raise ConfigError([f"{overlay}: must be a mapping of keys (top level)"], file)
        data = _merge(data, over)
    base_dir = Path(os.path.abspath(file)).parent
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_format(err) for err in exc.errors(include_url=False, include_input=False)]
        raise ConfigError(problems, file) from None


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over


def _read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: file not found"], file) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not valid UTF-8 text"], file) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"], file) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{file}{where}: YAML syntax error: {what}"], file) from None
    except yaml.YAMLError:
        raise ConfigError([f"{file}: YAML syntax error"], file) from None
    if data is None:
        raise ConfigError([f"{file}: file is empty"], file)
    return data
