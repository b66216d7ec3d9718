"""The certificate in force on the WhatsApp TLS listener, its reload, and its health.

One :class:`ssl.SSLContext` serves the listener for the life of the process.
A reload first loads the new files into a fresh context (so a bad pair is
refused with a reason and the old certificate stays), then loads them into
the live context: OpenSSL copies the certificate into each connection when it
is accepted, so new connections get the new certificate and established ones
(calls in progress) keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.config.certs import CertInfo
from gateway.logging import get_logger
from gateway.ops.certs import (
    certificate_findings,
    chain_finding,
    load_certificate,
    verify_chain,
)
from gateway.ops.report import Code, Finding, Status
from gateway.transport.tls import server_context

__all__ = ["Prepared", "TlsState", "roots_context"]

log = get_logger(__name__)

CHAIN_RECHECK = 6 * 3600.0  # seconds; roots and intermediates change rarely


@dataclass(frozen=True)
class Prepared:
    """A certificate/key pair that loaded and matched, not yet in force."""

    info: CertInfo
    context: ssl.SSLContext
    cert_file: Path
    key_file: Path


class TlsState:
    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None  # the live server context
        self.info: CertInfo | None = None  # the certificate in force
        self.problems: list[Finding] = []  # why nothing is in force, when nothing is
        self.chain: tuple[bool, str] | None = None  # last chain verification
        self._chain_checked = 0.0
        self._checking = False
        self._validation: ssl.SSLContext | None = None
        self._roots: ssl.SSLContext | None = None

    @staticmethod
    def prepare(cert_file: Path, key_file: Path) -> tuple[Prepared | None, list[Finding]]:
        info, problems = load_certificate(cert_file, key_file)
        if info is None:
            return None, problems
        try:
            ctx = server_context(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "error"
            return None, [
                Finding(
                    Code.CERT_UNREADABLE,
                    Status.BLOCKED,
                    f"OpenSSL cannot use whatsapp.tls.cert_file/key_file ({reason}); the TLS"
                    " listener cannot start.",
                    "Check both files with `openssl x509 -in CERT -noout -text` and `openssl"
                    " pkey -in KEY -noout`, then reload (systemctl reload wa-sip-gateway).",
                )
            ]
        return Prepared(info, ctx, cert_file, key_file), []

    def commit(self, prepared: Prepared) -> None:
        """Put ``prepared`` in force (raises ssl.SSLError/OSError if the files changed
        since :meth:`prepare` and no longer load)."""
        if self.context is None:
            self.context = prepared.context
        else:
            self.context.load_cert_chain(str(prepared.cert_file), str(prepared.key_file))
        self.info = prepared.info
        self.problems = []
        self._validation = prepared.context
        self.chain = None
        self._chain_checked = 0.0

    def fail(self, problems: list[Finding]) -> None:
        """Record why no certificate could be put in force (only matters while none is)."""
        if self.info is None:
            self.problems = problems

    @property
    def expiry_timestamp(self) -> float | None:
        return self.info.not_after.timestamp() if self.info is not None else None

    async def check_chain(self, force: bool = False) -> None:
        """Verify the chain against the system roots in a worker thread (loading the
        roots takes tens of milliseconds); cached for :data:`CHAIN_RECHECK` seconds."""
        info, server = self.info, self._validation
        if info is None or server is None or self._checking:
            return
        if not force and self.chain is not None and time.monotonic() - self._chain_checked < (
            CHAIN_RECHECK
        ):
            return
        self._checking = True
        try:
            loop = asyncio.get_running_loop()
            if self._roots is None or force:
                self._roots = await loop.run_in_executor(None, roots_context)
            roots = self._roots
            now = dt.datetime.now(dt.UTC)
            result = await loop.run_in_executor(None, verify_chain, server, roots, info, now)
        except Exception as exc:  # a broken trust store must not break health
            log.warning("tls_chain_check_failed", error=str(exc))
            result = (False, f"chain check failed: {exc}")
        finally:
            self._checking = False
        if self.info is info:
            self.chain = result
            self._chain_checked = time.monotonic()
            if not result[0]:
                log.warning("tls_chain_untrusted", reason=result[1])

    def findings(self, hostname: str, development: bool, now: dt.datetime) -> list[Finding]:
        if self.info is None:
            return list(self.problems)
        out = certificate_findings(self.info, hostname, now)
        if self.chain is not None:
            finding = chain_finding(self.chain[0], self.chain[1], development)
            if finding is not None:
                out.append(finding)
        return out


def roots_context() -> ssl.SSLContext:
    """A client context with the system's trusted roots (honours SSL_CERT_FILE/DIR)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
