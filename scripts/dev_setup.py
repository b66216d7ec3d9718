"""Prepare what `make run` needs on a fresh machine for a development config.

Creates the development TLS certificate (when the configured one is missing)
and a random SIP password file for each number whose file is missing. Does
nothing for a production config: those files are the operator's.
"""

from __future__ import annotations

import os
import secrets
import sys

from gateway.config import ConfigError, load_config
from gateway.config.certs import ensure_dev_certificate


def main(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if cfg.mode != "development":
        return 0
    tls = cfg.whatsapp.tls
    if tls is not None and ensure_dev_certificate(tls.cert_file, tls.key_file,
                                                  cfg.whatsapp.hostname):  # fmt: skip
        print(f"generated development certificate {tls.cert_file}")
    for number in cfg.whatsapp.numbers:
        pw_file = number.sip_password_file
        if pw_file is not None and not pw_file.exists():
            pw_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24) + "\n")
            print(f"generated development SIP password file {pw_file} for {number.number}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "config/gateway.example.yaml"))
