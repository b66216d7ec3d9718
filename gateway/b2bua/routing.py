"""Who a business-initiated call is for, and on behalf of which business number."""

from __future__ import annotations

import math
import re
from collections import deque

E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
# A business-scoped user id: a country code, a dot, digits ("US.13491208655302741918").
BSUID = re.compile(r"^[A-Z]{2}\.[0-9]{6,32}$")


class RoutingError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def whatsapp_user(user: str | None) -> str:
    """The WhatsApp user a PBX dialled: +E.164 (digits alone get a '+') or a BSUID.

    Raises RoutingError 484 for digits of the wrong length, 404 for anything else.
    """
    if not user:
        raise RoutingError(404, "no user in the Request-URI")
    if BSUID.match(user):
        return user
    digits = user[1:] if user.startswith("+") else user
    if digits.startswith("00"):
        digits = digits[2:]  # international prefix dialled out of habit
    if digits.isascii() and digits.isdigit():
        candidate = "+" + digits
        if E164.match(candidate):
            return candidate
        raise RoutingError(484, "not a complete E.164 number")
    raise RoutingError(404, "neither an E.164 number nor a WhatsApp user id")


def normalise_number(value: str | None) -> str | None:
    """A business number as configured (+E.164), from a header or From user; None if not one."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith("+") and value.isdigit():
        value = "+" + value
    return value if E164.match(value) else None


class RateLimiter:
    """At most ``rate`` events per second (sliding window), time passed in.

    The window is one second holding ``floor(rate)`` events; a rate below one a
    second widens it to ``1/rate`` seconds holding one (0.5: one every two seconds).
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.window = max(1.0, 1.0 / rate)
        self.limit = max(1, math.floor(rate * self.window + 1e-9))
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        times = self._times
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
