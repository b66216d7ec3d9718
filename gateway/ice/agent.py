"""A sans-IO ICE agent for one component over one UDP socket (RFC 8445, RFC 7675).

The gateway's WebRTC leg has one local candidate: its media socket, a host
candidate of one address family. Meta's side is ICE-lite (one IPv4 and one IPv6
host candidate), so the gateway is the controlling agent: it checks the
peer's candidates of its own family with USE-CANDIDATE (aggressive nomination,
fine toward a lite peer: RFC 8445 7.2.2 and 8.1.1) and keeps consent fresh
(RFC 7675) for the call's life. Toward a full peer (baresip) both agents check:
the agent answers checks (RFC 8445 7.3), sends triggered checks (7.3.1.4),
resolves role conflicts (7.3.1.1, 7.2.5.1), nominates by regular nomination
when controlling and follows the peer's USE-CANDIDATE when controlled
(7.3.1.5).

Sans-IO like the SIP core: datagrams in through :meth:`IceAgent.receive`, out
through :meth:`IceAgent.pop_datagrams`; time passes in as ``now``;
:meth:`IceAgent.next_timeout` says when :meth:`IceAgent.handle_timeout` is
due. Nothing here owns a socket, a task or a timer, and only STUN datagrams
reach it (RFC 7983: the caller demultiplexes on the first byte).

Retransmission timing: :mod:`gateway.ice.checklist`; ``check_timeout`` bounds
the whole negotiation. Consent requests are sent once each, never
retransmitted, a new transaction every ``consent_interval`` (randomised
0.8-1.2x); any authenticated answer from the selected address refreshes
consent (RFC 7675 5.1).
"""

from __future__ import annotations

import ipaddress
import random
import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.ice.candidates import (
    HOST_TYPE_PREF,
    ICE_CHARS,
    PEER_REFLEXIVE_TYPE_PREF,
    candidate_priority,
    new_credentials,
    pair_priority,
)
from gateway.ice.checklist import (
    MAX_TRANSMISSIONS,
    RTO_MAX,
    TA,
    Check,
    Pair,
    PairState,
    retransmit_interval,
    same_address,
)
from gateway.ice.stun import (
    BINDING,
    ErrorCode,
    IceControlled,
    IceControlling,
    IpAddress,
    ParsedStun,
    Priority,
    StunClass,
    StunError,
    StunMessage,
    UseCandidate,
    Username,
    binding_error,
    binding_request,
    binding_success,
    encode,
    parse,
)

__all__ = [
    "ICE_CHARS",
    "TA",
    "ConsentLost",
    "IceAgent",
    "IceEvent",
    "IceFailed",
    "Nominated",
    "RemoteCandidate",
    "candidate_priority",
    "new_credentials",
    "pair_priority",
]

RemoteCandidate = tuple[str, int, int]  # (address, port, priority)

MAX_PAIRS = 8  # peer-reflexive candidates learnt from checks are bounded too


@dataclass(frozen=True, slots=True)
class Nominated:
    """A pair is nominated: media goes to ``address`` (the check's round trip in ``rtt``).

    ``rtt`` is measured from the latest transmission of the request answered, a
    lower bound when a retransmission was needed (Karn's ambiguity).
    """

    address: tuple[str, int]
    rtt: float


@dataclass(frozen=True, slots=True)
class IceFailed:
    """No pair could be nominated: ``reason`` is "no candidates", "checks failed" or "timeout"."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConsentLost:
    """No authenticated answer from the selected address for ``consent_timeout`` (RFC 7675)."""


IceEvent = Nominated | IceFailed | ConsentLost


class IceAgent:
    """A full ICE agent with one host candidate (our socket), one component.

    ``controlling`` starts as given and flips on a role conflict. Toward an
    ICE-lite peer (``remote_lite``) the agent must be controlling (RFC 8445
    6.1.1). ``tie_breaker`` defaults to 64 random bits; ``rng`` draws the
    consent jitter (tests pass a seeded one). Passwords never appear in a repr.
    """

    def __init__(
        self,
        *,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        remote_candidates: Sequence[RemoteCandidate],
        local_family: int,
        controlling: bool = True,
        remote_lite: bool = True,
        tie_breaker: int | None = None,
        consent_interval: float = 5.0,
        consent_timeout: float = 30.0,
        check_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if local_family not in (4, 6):
            raise ValueError(f"local_family must be 4 or 6, not {local_family!r}")
        if remote_lite and not controlling:
            raise ValueError("toward an ICE-lite peer the agent must be controlling")
        if not (local_ufrag and local_pwd and remote_ufrag and remote_pwd):
            raise ValueError("ICE credentials must not be empty")
        self.local_ufrag = local_ufrag
        self.remote_ufrag = remote_ufrag
        self._local_key = local_pwd.encode("utf-8")
        self._remote_key = remote_pwd.encode("utf-8")
        self._out_username = f"{remote_ufrag}:{local_ufrag}"  # RFC 8445 7.2.2
        self._in_username = f"{local_ufrag}:{remote_ufrag}"
        self.local_family = local_family
        self.controlling = controlling
        self.remote_lite = remote_lite
        self.tie_breaker = secrets.randbits(64) if tie_breaker is None else tie_breaker
        self.consent_interval = consent_interval
        self.consent_timeout = consent_timeout
        self.check_timeout = check_timeout
        self._rng: random.Random = rng if rng is not None else secrets.SystemRandom()
        self._local_priority = candidate_priority(HOST_TYPE_PREF)
        self._prflx_priority = candidate_priority(PEER_REFLEXIVE_TYPE_PREF)

        self.state = "new"
        self.selected: tuple[str, int] | None = None
        self.checks_sent = 0  # Binding requests sent: checks, retransmissions, consent
        self.responses = 0  # authenticated responses accepted
        self.requests_answered = 0  # success responses to the peer's checks
        self.requests_rejected = 0  # 400/401/420/487 sent
        self.role_conflicts = 0
        self.ignored = 0  # responses dropped: unknown transaction, wrong source, bad integrity

        self._pairs: list[Pair] = []
        self._by_addr: dict[tuple[str, int], Pair] = {}
        for address, port, priority in remote_candidates:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue  # an mDNS name or garbage: not a candidate we can use
            if ip.version == local_family and (ip.compressed, port) not in self._by_addr:
                self._add_pair((ip.compressed, port), ip, priority)
        self._prioritise()
        self._triggered: deque[Pair] = deque()
        self._checks: dict[bytes, Check] = {}
        self._consent: dict[bytes, float] = {}  # consent requests in flight: tid -> sent at
        self._out: list[tuple[bytes, tuple[str, int]]] = []
        self._events: list[IceEvent] = []
        self._next_check_at = 0.0
        self._deadline = 0.0
        self._nominating: Pair | None = None
        self._consent_next = 0.0
        self._consent_last = 0.0

    def __repr__(self) -> str:  # never the passwords
        return (
            f"IceAgent(state={self.state!r}, ufrag={self.local_ufrag!r}, "
            f"remote_ufrag={self.remote_ufrag!r}, controlling={self.controlling}, "
            f"selected={self.selected!r})"
        )

    # ------------------------------------------------------------------ the API

    def start(self, now: float) -> None:
        """Begin the checks (both roles check, RFC 8445 6.1.4; the controlled one waits to be
        nominated). Checks that arrived before start are answered and queued already."""
        if self.state != "new":
            return
        self.state = "checking"
        self._deadline = now + self.check_timeout
        self._next_check_at = now
        if not self._pairs and self.remote_lite:
            self._fail("no candidates")
            return
        self._pace(now)

    def receive(self, data: bytes, addr: tuple[str, int], now: float) -> bool:
        """One STUN datagram from ``addr``; True if it was an ICE Binding message (handled or
        dropped on purpose), False if it is not ICE's (malformed, not Binding, no FINGERPRINT)."""
        try:
            parsed = parse(data)
        except StunError:
            return False
        msg = parsed.message
        if msg.method != BINDING or not parsed.fingerprint:
            return False  # RFC 8445 7.2.2 / 7.3: ICE's STUN always carries FINGERPRINT
        if self.state == "closed":
            return True
        if msg.cls is StunClass.REQUEST:
            self._on_request(parsed, addr, now)
        elif msg.cls is not StunClass.INDICATION:  # indications: keepalives, nothing to do
            self._on_response(parsed, addr, now)
        return True

    def pop_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[IceEvent]:
        events, self._events = self._events, []
        return events

    def next_timeout(self) -> float | None:
        if self.state == "checking":
            when = self._deadline
            if self._triggered or any(p.state is PairState.WAITING for p in self._pairs):
                when = min(when, self._next_check_at)
            for tx in self._checks.values():
                when = min(when, tx.next_at)
            return when
        if self.state == "nominated":
            return min(self._consent_next, self._consent_last + self.consent_timeout)
        return None

    def handle_timeout(self, now: float) -> None:
        if self.state == "checking":
            for tx in [tx for tx in self._checks.values() if tx.next_at <= now]:
                self._retransmit_or_expire(tx, now)
            if self.state != "checking":
                return
            self._pace(now)
            if now >= self._deadline:
                self._fail("timeout")
        elif self.state == "nominated":
            if now >= self._consent_last + self.consent_timeout:
                self.state = "failed"
                self._consent.clear()
                self._events.append(ConsentLost())
            elif now >= self._consent_next:
                self._send_consent(now)

    def close(self) -> None:
        self.state = "closed"
        self._checks.clear()
        self._consent.clear()
        self._triggered.clear()
        self._out.clear()

    # ------------------------------------------------------------------ checks out

    def _add_pair(self, addr: tuple[str, int], ip: IpAddress, remote_priority: int) -> Pair:
        pair = Pair(addr, ip, remote_priority)
        self._pairs.append(pair)
        self._by_addr[addr] = pair
        return pair

    def _prioritise(self) -> None:
        """Pair priorities for the current role (RFC 8445 6.1.2.3), highest first."""
        for pair in self._pairs:
            if self.controlling:
                pair.priority = pair_priority(self._local_priority, pair.remote_priority)
            else:
                pair.priority = pair_priority(pair.remote_priority, self._local_priority)
        self._pairs.sort(key=lambda p: p.priority, reverse=True)

    def _switch_role(self, controlling: bool) -> None:
        if self.controlling != controlling:
            self.controlling = controlling
            self._nominating = None
            self._prioritise()
            if self.state == "checking":
                self._nominate_best_valid()  # a pair may be valid already

    def _pace(self, now: float) -> None:
        """At most one new check per Ta: a triggered one first (RFC 8445 6.1.4.2)."""
        if self.state != "checking" or now < self._next_check_at:
            return
        pair: Pair | None = None
        while self._triggered and pair is None:
            candidate = self._triggered.popleft()
            if candidate.state is PairState.WAITING:
                pair = candidate
        if pair is None:
            pair = next((p for p in self._pairs if p.state is PairState.WAITING), None)
        if pair is None:
            return
        use_candidate = self.controlling and (self.remote_lite or self._nominating is pair)
        tid, data = self._request(use_candidate)
        tx = Check(tid, pair, data, use_candidate=use_candidate, controlling=self.controlling)
        self._checks[tid] = tx
        pair.tx = tx
        pair.state = PairState.IN_PROGRESS
        self._transmit(tx, now)
        self._next_check_at = now + TA

    def _request(self, use_candidate: bool) -> tuple[bytes, bytes]:
        msg = binding_request(
            self._out_username,
            priority=self._prflx_priority,
            controlling=self.controlling,
            tie_breaker=self.tie_breaker,
            use_candidate=use_candidate,
        )
        return msg.transaction_id, encode(msg, key=self._remote_key, fingerprint=True)

    def _transmit(self, tx: Check, now: float) -> None:
        self._out.append((tx.data, tx.pair.addr))
        self.checks_sent += 1
        tx.sent += 1
        tx.last_sent = now
        tx.next_at = now + retransmit_interval(tx.sent)

    def _retransmit_or_expire(self, tx: Check, now: float) -> None:
        if not tx.cancelled and tx.sent < MAX_TRANSMISSIONS:
            self._transmit(tx, now)
            return
        del self._checks[tx.tid]
        pair = tx.pair
        if pair.tx is tx:  # RFC 5389 7.2.1: no answer at all, the check failed
            pair.tx = None
            pair.state = PairState.FAILED
            self._pair_failed(pair)

    def _trigger(self, pair: Pair, now: float) -> None:
        """Queue a triggered check (RFC 8445 7.3.1.4); an in-progress one is cancelled."""
        if pair.tx is not None:
            pair.tx.cancelled = True
            pair.tx.next_at = now + RTO_MAX  # still waits for a late answer
            pair.tx = None
        pair.state = PairState.WAITING
        if pair not in self._triggered:
            self._triggered.append(pair)

    # ------------------------------------------------------------------ outcomes

    def _pair_failed(self, pair: Pair) -> None:
        if self._nominating is pair:
            self._nominating = None
            self._nominate_best_valid()
        if self.state != "checking" or self._triggered:
            return
        if all(p.state is PairState.FAILED for p in self._pairs) and (
            self._pairs or self.remote_lite
        ):
            self._fail("checks failed")

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self._checks.clear()
        self._triggered.clear()
        self._events.append(IceFailed(reason))

    def _nominate_best_valid(self) -> None:
        """Regular nomination (RFC 8445 8.1.1): a check with USE-CANDIDATE on a valid pair."""
        if not self.controlling or self._nominating is not None:
            return
        pair = next((p for p in self._pairs if p.valid and p.state is not PairState.FAILED), None)
        if pair is not None:
            self._nominating = pair
            pair.state = PairState.WAITING
            self._triggered.appendleft(pair)

    def _nominated(self, pair: Pair, now: float) -> None:
        self.state = "nominated"
        self.selected = pair.addr
        self._checks.clear()
        self._triggered.clear()
        self._consent_last = now
        self._consent_next = now + self._jitter()
        self._events.append(Nominated(pair.addr, pair.rtt if pair.rtt is not None else 0.0))

    # ------------------------------------------------------------------ consent (RFC 7675)

    def _jitter(self) -> float:
        return self.consent_interval * self._rng.uniform(0.8, 1.2)

    def _send_consent(self, now: float) -> None:
        assert self.selected is not None
        horizon = now - self.consent_timeout
        for tid in [t for t, sent in self._consent.items() if sent < horizon]:
            del self._consent[tid]
        tid, data = self._request(use_candidate=False)
        self._consent[tid] = now
        self._out.append((data, self.selected))
        self.checks_sent += 1
        self._consent_next = now + self._jitter()

    # ------------------------------------------------------------------ responses in

    def _on_response(self, parsed: ParsedStun, addr: tuple[str, int], now: float) -> None:
        msg = parsed.message
        tid = msg.transaction_id
        tx = self._checks.get(tid)
        if tx is None:
            if tid in self._consent and self.selected is not None:
                self._on_consent_response(parsed, addr, now)
            else:
                self.ignored += 1
            return
        # RFC 8445 7.2.5.2.1: symmetric, from where it was sent; RFC 5389 10.1.3: authenticated
        if not same_address(addr, tx.pair.addr) or not parsed.check_integrity(self._remote_key):
            self.ignored += 1
            return
        del self._checks[tid]
        self.responses += 1
        pair = tx.pair
        if msg.cls is StunClass.ERROR:
            error = msg.get(ErrorCode)
            if error is not None and error.code == 487:  # RFC 8445 7.2.5.1
                self.role_conflicts += 1
                self._switch_role(not tx.controlling)
                if pair.tx is tx:
                    pair.tx = None
                    self._trigger(pair, now)
                    self._pace(now)
            elif pair.tx is tx:  # RFC 8445 7.2.5.2.4: unrecoverable
                pair.tx = None
                pair.state = PairState.FAILED
                self._pair_failed(pair)
            return
        self._on_success(tx, now)

    def _on_success(self, tx: Check, now: float) -> None:
        pair = tx.pair
        if pair.tx is not None and pair.tx is not tx:
            pair.tx.cancelled = True
        pair.tx = None
        pair.state = PairState.SUCCEEDED
        pair.valid = True
        pair.rtt = now - tx.last_sent
        if self.state != "checking":
            return
        if self.controlling:
            if tx.use_candidate and tx.controlling:
                self._nominated(pair, now)
            else:
                self._nominate_best_valid()
                self._pace(now)
        elif pair.nominate_on_success:  # RFC 8445 7.3.1.5
            self._nominated(pair, now)

    def _on_consent_response(self, parsed: ParsedStun, addr: tuple[str, int], now: float) -> None:
        assert self.selected is not None
        if not same_address(addr, self.selected) or not parsed.check_integrity(self._remote_key):
            self.ignored += 1
            return
        del self._consent[parsed.message.transaction_id]
        self.responses += 1
        if parsed.message.cls is StunClass.SUCCESS:
            self._consent_last = now
        else:
            error = parsed.message.get(ErrorCode)
            if error is not None and error.code == 487:
                self.role_conflicts += 1
                self._switch_role(not self.controlling)

    # ------------------------------------------------------------------ requests in

    def _reject(self, msg: StunMessage, addr: tuple[str, int], code: int, reason: str) -> None:
        """An error response; signed only when the request was authenticated (RFC 5389 10.1.2)."""
        key = self._local_key if code in (420, 487) else None
        unknown = msg.unknown_required() if code == 420 else ()
        error = binding_error(msg, code, reason, unknown)
        self._out.append((encode(error, key=key, fingerprint=True), addr))
        self.requests_rejected += 1

    def _on_request(self, parsed: ParsedStun, addr: tuple[str, int], now: float) -> None:
        msg = parsed.message
        if self.state == "failed":
            return
        username = msg.get(Username)
        if username is None or parsed.integrity is None:
            self._reject(msg, addr, 400, "Bad Request")
            return
        if username.value != self._in_username or not parsed.check_integrity(self._local_key):
            self._reject(msg, addr, 401, "Unauthorized")
            return
        if msg.unknown_required():
            self._reject(msg, addr, 420, "Unknown Attribute")
            return
        priority = msg.get(Priority)
        if priority is None:  # RFC 8445 7.2.2: every check carries PRIORITY
            self._reject(msg, addr, 400, "Bad Request")
            return
        if not self._resolve_role(msg, addr):
            return
        pair = self._by_addr.get(addr)
        if pair is None:
            pair = next((p for p in self._pairs if same_address(p.addr, addr)), None)
        ip = pair.ip if pair is not None else ipaddress.ip_address(addr[0])
        answer = binding_success(msg, ip, addr[1])
        self._out.append((encode(answer, key=self._local_key, fingerprint=True), addr))
        self.requests_answered += 1
        if self.state == "nominated":
            return  # a consent request or a late check: answered, nothing more
        if pair is None:  # RFC 8445 7.3.1.3: a peer-reflexive remote candidate
            if ip.version != self.local_family or len(self._pairs) >= MAX_PAIRS:
                return
            pair = self._add_pair(addr, ip, priority.value)
            self._prioritise()
        use_candidate = msg.has(UseCandidate) and not self.controlling
        if pair.state is PairState.SUCCEEDED:
            if use_candidate:
                self._nominated(pair, now)
            return
        if use_candidate:
            pair.nominate_on_success = True
        self._trigger(pair, now)
        self._pace(now)

    def _resolve_role(self, msg: StunMessage, addr: tuple[str, int]) -> bool:
        """RFC 8445 7.3.1.1; False when the request was answered 487 (we keep our role)."""
        theirs: IceControlling | IceControlled | None
        if self.controlling:
            theirs = msg.get(IceControlling)
            keep = theirs is not None and self.tie_breaker >= theirs.tie_breaker
        else:
            theirs = msg.get(IceControlled)
            keep = theirs is not None and self.tie_breaker < theirs.tie_breaker
        if theirs is None:
            return True
        self.role_conflicts += 1
        if keep:
            self._reject(msg, addr, 487, "Role Conflict")
            return False
        self._switch_role(not self.controlling)
        return True
