"""The health report drawn for a person at a terminal (``wa-sip-gateway health``)."""

from __future__ import annotations

from typing import Any

from gateway.metaapi.health import meta_lines

__all__ = ["render_text"]

_COLOURS = {"AVAILABLE": "\033[32m", "LIMITED": "\033[33m", "BLOCKED": "\033[31m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def render_text(health: dict[str, Any], *, source: str, colour: bool) -> str:
    """The /health JSON as an operator reads it: one block per entity, errors with fixes."""

    def word(status: str) -> str:
        return f"{_BOLD}{_COLOURS.get(status, '')}{status}{_RESET}" if colour else status

    def dim(text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if colour else text

    body = health.get("health_status", {})
    overall = str(body.get("can_receive_call_sip", "BLOCKED"))
    lines = [f"wa-sip-gateway health ({source}): {word(overall)}"]
    for entity in body.get("entities", []):
        kind = str(entity.get("entity_type", "?"))
        lines.append("")
        lines.append(f"  {kind:<13} {entity.get('id', '?'):<28} "
                     f"{word(str(entity.get('can_receive_call_sip', '?')))}")  # fmt: skip
        for error in entity.get("errors", []):
            lines.append(f"    [{error.get('error_code')}] {error.get('error_description')}")
            lines.append(dim(f"           fix: {error.get('possible_solution')}"))
        for info in entity.get("additional_info", []):
            code, _, text = str(info).partition(": ")
            text, _, fix = text.partition(" Possible solution: ")
            lines.append(f"    [{code}] {text}")
            if fix:
                lines.append(dim(f"           fix: {fix}"))
        lines += meta_lines(entity, word, dim)  # Meta's own view, when polled (meta_api)
    return "\n".join(lines)
