"""Digest policy for Meta's INVITEs: stateless challenges, verification with throttling.

The first INVITE of a call carries no credentials; its 407 is sent without a
transaction (RFC 3261 section 8.2.7 allows a stateless UAS for challenges): no
100 Trying, no retransmission, a To tag derived from the request so that a
retransmitted INVITE gets the same one, and the ACK for it matches nothing and
is dropped by the transaction layer as a stray. An INVITE flood whose 407s are
never answered so leaves no state behind. An attempt from a source in digest
backoff (:mod:`gateway.sip.digest_throttle`) gets its 403 the same way, and one
on a nonce that a failed attempt killed its new challenge.

The re-sent INVITE with credentials goes the stateful way (100 Trying, then the
call or a 403): :meth:`Challenger.verify` decides.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway.b2bua.peer import meta_address
from gateway.logging import LogLimiter, get_logger
from gateway.sip.auth import AuthParseError, DigestServer, VerifyResult, parse_credentials
from gateway.sip.digest_throttle import DigestThrottle
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transaction import Target, stamp_via
from gateway.sip.uri import UriError

log = get_logger(__name__)

THROTTLED = "digest attempts throttled"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` 0: authorised. 407: challenge again (``stale``). Else reject with it."""

    status: int
    why: str = ""
    stale: bool = False


OK = Verdict(0)


class Challenger:
    def __init__(
        self,
        digest: DigestServer,
        throttle: DigestThrottle | None,
        wall_clock: Callable[[], float],
        user_agent: str,
    ) -> None:
        self.digest = digest
        self.throttle = throttle
        self._wall = wall_clock
        self._ua = user_agent
        self._tag_key = secrets.token_bytes(16)
        self._logs = LogLimiter(5.0, max_keys=1024)
        self.stateless_sent: dict[int, int] = {}  # status -> count

    def challenge_headers(self, *, stale: bool) -> list[tuple[str, str]]:
        challenges = self.digest.challenge(self._wall(), stale=stale)
        return [("Proxy-Authenticate", c.to_header()) for c in challenges]

    # -- stateless (before any transaction) ------------------------------------
    def screen(self, req: Request, source: Target, number: str) -> Response | None:
        """The stateless answer to an INVITE for ``number`` (a number that challenges,
        every earlier admission check passed), or None for the stateful path."""
        value = req.headers.get("Proxy-Authorization") or req.headers.get("Authorization")
        if value is None:
            return self._stateless(req, source, 407, self.challenge_headers(stale=False))
        throttle = self.throttle
        if throttle is None:
            return None
        now = self._wall()
        who = meta_address(req, source).host
        left = throttle.blocked(who, number, now)
        if left is not None:
            throttle.refused()
            self._log_throttled(who, number, left)
            return self._stateless(req, source, 403, [])
        try:
            nonce = parse_credentials(value).nonce
        except AuthParseError:
            return None  # 400, statefully
        if throttle.is_dead(nonce, now):
            return self._stateless(req, source, 407, self.challenge_headers(stale=False))
        return None

    def _stateless(
        self, req: Request, source: Target, status: int, headers: list[tuple[str, str]]
    ) -> Response:
        stamp_via(req, source)  # received/rport as the transaction layer would (18.2.1)
        resp = make_response(req, status, to_tag=self.stateless_tag(req))
        resp.headers.add("Server", self._ua)
        for name, value in headers:
            resp.headers.add(name, value)
        self.stateless_sent[status] = self.stateless_sent.get(status, 0) + 1
        return resp

    def stateless_tag(self, req: Request) -> str:
        """The same To tag for the same request (RFC 3261 8.2.7), unguessable by others."""
        try:
            branch = req.top_via.branch or ""
            from_tag = req.from_.tag or ""
        except UriError:
            branch = from_tag = ""
        data = "\n".join((req.call_id, from_tag, branch, str(req.cseq.seq)))
        return hashlib.blake2s(data.encode(), key=self._tag_key, digest_size=8).hexdigest()

    # -- stateful: the INVITE with credentials ---------------------------------
    def verify(self, req: Request, source: Target, number: str, password: str | None) -> Verdict:
        """Check the credentials of ``req`` for business number ``number`` (+E.164)."""
        value = req.headers.get("Proxy-Authorization") or req.headers.get("Authorization")
        if value is None:
            return Verdict(407)
        try:
            creds = parse_credentials(value)
        except AuthParseError:
            return Verdict(400, "malformed Proxy-Authorization")
        now = self._wall()
        throttle, who = self.throttle, meta_address(req, source).host
        if throttle is not None:
            left = throttle.blocked(who, number, now)
            if left is not None:
                throttle.refused()
                self._log_throttled(who, number, left)
                return Verdict(403, THROTTLED)
            if throttle.is_dead(creds.nonce, now):
                return Verdict(407, "nonce used in a failed attempt")
        if creds.username not in (number[1:], number):
            return self._failed(who, number, creds.nonce, now, "username",
                                "digest username is not the business number")  # fmt: skip
        if password is None:
            log.error("sip_password_missing", number=number)
            return Verdict(403, "SIP password missing")
        result = self.digest.verify(creds, "INVITE", req.uri, password, now)
        if result is VerifyResult.OK:
            if throttle is not None:
                throttle.succeeded(who, number)
            return OK
        if result in (VerifyResult.STALE, VerifyResult.INVALID_NONCE):
            return Verdict(407, result.value, stale=result is VerifyResult.STALE)
        return self._failed(who, number, creds.nonce, now, result.value, f"digest {result.value}")

    def _failed(self, who: str, number: str, nonce: str, now: float, outcome: str,
                why: str) -> Verdict:  # fmt: skip
        throttle = self.throttle
        if throttle is not None:
            throttle.invalidate(nonce, now)
            backoff = throttle.failed(who, number, now, outcome)
            held = self._logs.allow(f"fail:{who}:{number}", now)
            if held is not None:
                log.warning("digest_failed", source=who, number=number, outcome=outcome,
                            backoff=round(backoff, 3), not_logged=held)  # fmt: skip
        return Verdict(403, why)

    def _log_throttled(self, who: str, number: str, left: float) -> None:
        held = self._logs.allow(f"throttled:{who}:{number}", self._wall())
        if held is not None:
            log.warning("digest_throttled", source=who, number=number,
                        backoff_left=round(left, 3), not_logged=held)  # fmt: skip
