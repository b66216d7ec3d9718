"""Real SIP peers for the integration tests: Asterisk 22 (in a Debian sid
chroot, see scripts/setup-asterisk-chroot.sh) and baresip 1.0, plus audio
helpers to make and measure test tones.

Everything listens on 127.0.0.1 only. Every process a helper starts is
tracked by its PID and stopped by that PID when the helper's context exits.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

PROJECT_DIR = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()


class PeerProcess:
    """A peer used as a context manager: ``start()`` on entry (``stop()`` too when
    the start fails half-way), ``stop()`` on exit. Subclasses define both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


T = TypeVar("T")


def _port_is_free(port: int, *, udp: bool, tcp: bool) -> bool:
    kinds = ([socket.SOCK_DGRAM] if udp else []) + ([socket.SOCK_STREAM] if tcp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def free_port(
    span: int = 1, *, udp: bool = True, tcp: bool = True, low: int = 10000, high: int = 16000
) -> int:
    """A port P such that P .. P+span-1 are free on 127.0.0.1 for UDP and/or
    TCP right now, and not handed out before by this process. Everything the
    peers use stays below the Linux ephemeral range (32768-60999), clear of
    the kernel's own choices, and outside the gateway's default media range
    (20000-29999): SIP/control ports 10000-15999 (this default), baresip RTP
    16000-19999, Asterisk RTP 30000-32699."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        base = rng.randrange(low, high - span)
        ports = range(base, base + span)
        if any(p in _handed_out for p in ports):
            continue
        if all(_port_is_free(p, udp=udp, tcp=tcp) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no block of {span} free ports in {low}-{high}")


def release_ports(base: int, span: int = 1) -> None:
    """Give a block from :func:`free_port` back once its user has stopped."""
    _handed_out.difference_update(range(base, base + span))


def self_signed_cert(directory: Path, common_name: str = LOOPBACK) -> tuple[Path, Path]:
    """Write cert.pem and key.pem (RSA 2048, self-signed, 2 days) into directory
    unless they exist; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not (cert.exists() and key.exists()):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                f"/CN={common_name}",
                "-addext",
                f"subjectAltName=IP:{LOOPBACK}",
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def start_process(
    argv: Sequence[str], log_path: Path, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start argv in its own session, stdin from /dev/null, stdout+stderr to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes] | None, *, grace: float = 5.0) -> int | None:
    """Stop one process by its PID: wait `grace` seconds if it is already on its
    way out, then SIGTERM, then SIGKILL. Returns its exit status."""
    if proc is None:
        return None
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        if sig is not None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                break
        try:
            proc.wait(timeout=grace if sig != signal.SIGKILL else 10)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def wait_until(
    probe: Callable[[], T | None], timeout: float, *, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call probe until it returns something truthy; return it, or raise
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def skip_allowed() -> bool:
    """Whether a missing peer may skip a test instead of failing it:
    WAGW_ALLOW_SKIP_ASTERISK=1 or WAGW_ALLOW_SKIP_PEERS=1 in the environment.
    `make test` installs every peer first, so there a missing one is an error."""
    names = ("WAGW_ALLOW_SKIP_ASTERISK", "WAGW_ALLOW_SKIP_PEERS")
    return any(os.environ.get(name) == "1" for name in names)


# Every program of the host the tests run, with the Debian package that provides it.
# Each package is in the Makefile's APT_PACKAGES (tests/unit/harness/test_peer_binaries.py
# checks it), so `make test` installs what the suite uses; programs the host does
# not get from the Makefile (Asterisk, Kamailio, SIPp 3.8) run from the peer chroot.
HOST_BINARIES: dict[str, str] = {
    "baresip": "baresip-core",
    "openssl": "openssl",
    "promtool": "prometheus",
    "sipp": "sip-tester",
    "systemd-analyze": "systemd",
}


def host_binary(name: str) -> str | None:
    """The path of host program `name` (one of HOST_BINARIES), or None."""
    if name not in HOST_BINARIES:
        raise KeyError(
            f"{name} is not in HOST_BINARIES: add it with its package, and the "
            "package to the Makefile's APT_PACKAGES"
        )
    return shutil.which(name)


def require_binary(name: str, package: str | None = None) -> str:
    """The path of host program `name` (one of HOST_BINARIES); fails the test
    (skips it when skip_allowed()) when it is missing."""
    import pytest

    path = host_binary(name)
    if path is None:
        msg = f"{name} not found: apt-get install {package or HOST_BINARIES[name]} (make apt-deps)"
        if skip_allowed():
            pytest.skip(msg)
        pytest.fail(msg)
    return path
