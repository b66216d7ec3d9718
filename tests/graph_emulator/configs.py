"""Gateway config files for tests that talk to the Graph emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config import Config, load_config
from tests.graph_emulator.server import TOKEN, GraphEmulator

NUMBER = "+15550001111"
PNID = "106540352242922"
WABA = "102290129340398"
HOSTNAME = "sip.example.com"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def config_dict(emu: GraphEmulator | None, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    (tmp_path / "meta.token").write_text(TOKEN + "\n")
    cfg: dict[str, Any] = {
        "whatsapp": {
            "hostname": HOSTNAME,
            "listen": "0.0.0.0:5061",
            "tls": {"cert_file": "tls/gw.crt", "key_file": "tls/gw.key"},
            "numbers": [
                {
                    "number": NUMBER,
                    "sip_password_file": "secrets/15550001111.password",
                    "phone_number_id": PNID,
                    "waba_id": WABA,
                }
            ],
        },
        "meta_api": {
            "access_token_file": "meta.token",
            "base_url": emu.base_url if emu is not None else "http://127.0.0.1:9",
            "timeout": 2,
            "retries": 1,
        },
    }
    return merge(cfg, overrides)


def write_config(
    emu: GraphEmulator | None, tmp_path: Path, **overrides: Any
) -> tuple[Path, Config]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_dict(emu, tmp_path, **overrides)))
    return path, load_config(path)
