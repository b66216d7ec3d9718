"""systemd service notifications (sd_notify(3)) without a library.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). :class:`Notifier` sends ``READY=1``, ``STATUS=...``,
``RELOADING=1``, ``STOPPING=1`` and ``WATCHDOG=1``; without
``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing.

``$WATCHDOG_USEC`` (set by ``WatchdogSec=``) gives the interval systemd
expects pings within; :attr:`Notifier.watchdog_interval` is a third of it,
or None when the watchdog is off or meant for another process
(``$WATCHDOG_PID``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from gateway.logging import get_logger

__all__ = ["Notifier"]

log = get_logger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self._sock: socket.socket | None = None
        self._failed = False
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 3

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); True when the datagram was sent."""
        if self._address is None:
            return False
        text = "\n".join(f"{k.upper()}={_one_line(str(v))}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self._address)
        except OSError as exc:
            if not self._failed:  # log once; systemd may simply be gone (stop in progress)
                log.warning("sd_notify_failed", error=str(exc))
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def reloading(self) -> bool:
        return self.notify(reloading=1, status="reloading configuration")

    def stopping(self, status: str) -> bool:
        return self.notify(stopping=1, status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")
