"""Run-time checks of the files a configuration refers to, and its one-line summary."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.model import Config, TlsConfig

# --------------------------------------------------------------------------- reporting


@dataclass
class FileCheck:
    """Result of :func:`check_files`: ``errors`` block startup, ``warnings`` do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"not readable: {path}"
    return None


def check_files(cfg: Config) -> FileCheck:
    """Check the files the config refers to, as the daemon would need them now.

    Errors: TLS cert/key/CA missing or unreadable (a missing cert/key is fine in
    development mode, where one is generated); a DTLS certificate/key (media.dtls)
    missing, unparsable or not a pair.  Warnings: a number whose
    password cannot be read (the daemon starts and reports it as unhealthy),
    and certificate problems such as expiry or a hostname mismatch.
    """
    result = FileCheck()
    tls = cfg.whatsapp.tls
    if tls is not None:
        _check_tls_files(cfg, tls, result)
    wa = cfg.whatsapp
    if wa.listen is None and wa.outbound_proxy is None:
        result.warnings.append(
            "whatsapp.outbound_proxy: not set while whatsapp.listen is null: calls from the"
            " PBX go straight to Meta, naming this instance's public name with no TLS"
            " listener behind it, so Meta's in-dialog requests for them cannot arrive"
        )
    _check_dtls_files(cfg, result)
    secret_file = cfg.cluster.nonce_secret_file
    if secret_file is not None and cfg.cluster.read_nonce_secret() is None:
        problem = _file_problem(secret_file) or "shorter than 16 bytes"
        result.errors.append(f"cluster.nonce_secret_file: {problem}")
    for index, entry in enumerate(cfg.whatsapp.numbers):
        if entry.read_password() is not None:
            continue
        if entry.sip_password_file is not None:
            problem = _file_problem(entry.sip_password_file) or "empty or not UTF-8 text"
            result.warnings.append(f"whatsapp.numbers.{index}.sip_password_file: {problem}")
        else:
            key = f"whatsapp.numbers.{index}.sip_password_env"
            name = entry.sip_password_env
            result.warnings.append(f"{key}: environment variable {name} is not set or empty")
    return result


def _check_tls_files(cfg: Config, tls: TlsConfig, result: FileCheck) -> None:
    from gateway.config.certs import certificate_problems

    for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        problem = _file_problem(path)
        if problem and not (cfg.development and not path.exists()):
            result.errors.append(f"whatsapp.tls.{key}: {problem}")
    if tls.ca_file is not None and (problem := _file_problem(tls.ca_file)):
        result.errors.append(f"whatsapp.tls.ca_file: {problem}")
    if tls.cert_file.is_file() and os.access(tls.cert_file, os.R_OK):
        for problem in certificate_problems(tls.cert_file, cfg.whatsapp.hostname):
            result.warnings.append(f"whatsapp.tls.cert_file: {problem}")


def _check_dtls_files(cfg: Config, result: FileCheck) -> None:
    from gateway.config.certs import dtls_certificate_problems

    dtls = cfg.media.dtls
    if dtls.cert_file is None or dtls.key_file is None:
        return  # neither (the model refuses one alone): generated at startup
    missing = False
    for key, path in (("cert_file", dtls.cert_file), ("key_file", dtls.key_file)):
        if problem := _file_problem(path):
            result.errors.append(f"media.dtls.{key}: {problem}")
            missing = True
    if not missing:
        for key, problem in dtls_certificate_problems(dtls.cert_file, dtls.key_file).items():
            result.errors.append(f"media.dtls.{key}: {problem}")


def summary(cfg: Config) -> str:
    """One line describing the configuration, for ``check-config`` and startup logs."""
    count = len(cfg.whatsapp.numbers)
    text = (
        f"config OK: {count} number{'s' if count != 1 else ''},"
        f" TLS {cfg.whatsapp.listen or 'off'} ({cfg.whatsapp.hostname}),"
        f" PBX {cfg.pbx.transport} {cfg.pbx.address}, listen {cfg.pbx.listen},"
        f" http {cfg.http.listen}"
    )
    if cfg.whatsapp.proxy_listen is not None:
        text += f", behind proxy on {cfg.whatsapp.proxy_listen}"
    return text + (", development mode" if cfg.development else "")
