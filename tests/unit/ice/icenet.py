"""Test harness for the ICE agent: a fake clock, an in-memory UDP network, scripted peers.

The peers here are written from the RFCs with the STUN codec only (never the
agent's code), so that an agent test can fail when the agent gets ICE wrong.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.ice.agent import IceAgent, IceEvent
from gateway.ice.stun import (
    IceControlled,
    IceControlling,
    ParsedStun,
    Priority,
    StunClass,
    UseCandidate,
    Username,
    binding_request,
    binding_success,
    encode,
    parse,
)

Addr = tuple[str, int]


class Node(Protocol):
    def receive(self, data: bytes, addr: Addr, now: float) -> bool: ...
    def pop_datagrams(self) -> list[tuple[bytes, Addr]]: ...
    def next_timeout(self) -> float | None: ...
    def handle_timeout(self, now: float) -> None: ...


@dataclass
class Sent:
    at: float
    src: Addr
    dst: Addr
    data: bytes

    @property
    def stun(self) -> ParsedStun:
        return parse(self.data)


@dataclass
class Net:
    """Nodes by address; datagrams arrive ``latency`` later unless ``drop`` says otherwise."""

    latency: float = 0.01
    now: float = 0.0
    nodes: dict[Addr, Node] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    events: dict[Addr, list[tuple[float, IceEvent]]] = field(default_factory=dict)
    drop: Callable[[Sent], bool] = lambda s: False
    spoof: Callable[[Sent], Addr | None] = lambda s: None  # deliver as if from elsewhere
    _queue: list[tuple[float, int, Sent]] = field(default_factory=list)
    _seq: int = 0

    def add(self, addr: Addr, node: Node) -> None:
        self.nodes[addr] = node
        self.events[addr] = []

    def _collect(self) -> None:
        for addr, node in self.nodes.items():
            for data, dst in node.pop_datagrams():
                s = Sent(self.now, addr, dst, data)
                self.sent.append(s)
                if not self.drop(s):
                    self._seq += 1
                    heapq.heappush(self._queue, (self.now + self.latency, self._seq, s))
            if isinstance(node, IceAgent):
                self.events[addr].extend((self.now, e) for e in node.pop_events())

    def run(self, until: float) -> None:
        for _ in range(100_000):
            self._collect()
            times = [t for n in self.nodes.values() if (t := n.next_timeout()) is not None]
            if self._queue:
                times.append(self._queue[0][0])
            if not times or min(times) > until:
                self.now = until
                return
            self.now = max(self.now, min(times))
            while self._queue and self._queue[0][0] <= self.now:
                _, _, s = heapq.heappop(self._queue)
                node = self.nodes.get(s.dst)
                if node is not None:
                    node.receive(s.data, self.spoof(s) or s.src, self.now)
            self._collect()
            for node in self.nodes.values():
                t = node.next_timeout()
                if t is not None and t <= self.now:
                    node.handle_timeout(self.now)
        raise AssertionError("the simulation does not settle")

    def requests(self, src: Addr, dst: Addr | None = None) -> list[Sent]:
        return [
            s
            for s in self.sent
            if s.src == src
            and (dst is None or s.dst == dst)
            and s.stun.message.cls is StunClass.REQUEST
        ]


@dataclass
class LitePeer:
    """An ICE-lite agent (RFC 8445 section 2.5): answers checks, never sends any.

    It checks what a lite agent must (USERNAME "ours:theirs", MESSAGE-INTEGRITY
    with its own password, FINGERPRINT, ICE-CONTROLLING and PRIORITY present)
    and records every request it accepted. ``answering`` off models silence;
    ``wrong_key`` signs answers with another password.
    """

    ufrag: str
    pwd: str
    remote_ufrag: str
    answering: bool = True
    wrong_key: int = 0  # how many answers to sign wrongly first
    accepted: list[tuple[float, ParsedStun]] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    _out: list[tuple[bytes, Addr]] = field(default_factory=list)

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        parsed = parse(data)
        msg = parsed.message
        assert parsed.fingerprint, "ICE requests carry FINGERPRINT (RFC 8445 7.2.2)"
        assert msg.cls is StunClass.REQUEST, "a lite agent sends no requests, gets no answers"
        username = msg.get(Username)
        if username is None or username.value != f"{self.ufrag}:{self.remote_ufrag}":
            return True
        if not parsed.check_integrity(self.pwd):
            return True
        assert msg.get(IceControlling) is not None and msg.get(Priority) is not None
        self.accepted.append((now, parsed))
        if self.answering:
            key = self.pwd
            if self.wrong_key:
                self.wrong_key -= 1
                key = "not-the-password-at-all"
            answer = binding_success(msg, ipaddress.ip_address(addr[0]), addr[1])
            self._out.append((encode(answer, key=key, fingerprint=True), addr))
            self.answered_at.append(now)
        return True

    def pop_datagrams(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_timeout(self) -> float | None:
        return None

    def handle_timeout(self, now: float) -> None:
        pass


@dataclass
class ScriptedPeer:
    """A full agent's messages, one at a time, for precise tests of the agent's answers."""

    ufrag: str
    pwd: str
    remote_ufrag: str
    remote_pwd: str
    tie_breaker: int = 1

    def check(
        self, *, controlling: bool = True, use_candidate: bool = False, priority: int = 1000
    ) -> bytes:
        request = binding_request(
            f"{self.remote_ufrag}:{self.ufrag}",
            priority=priority,
            controlling=controlling,
            tie_breaker=self.tie_breaker,
            use_candidate=use_candidate,
        )
        return encode(request, key=self.remote_pwd, fingerprint=True)

    def answer(self, data: bytes, source: Addr) -> bytes:
        parsed = parse(data)
        assert parsed.check_integrity(self.pwd)
        response = binding_success(parsed.message, ipaddress.ip_address(source[0]), source[1])
        return encode(response, key=self.pwd, fingerprint=True)


def attrs(parsed: ParsedStun) -> dict[str, object]:
    """The ICE attributes of a request, by name, for assertions."""
    msg = parsed.message
    controlling = msg.get(IceControlling)
    controlled = msg.get(IceControlled)
    priority = msg.get(Priority)
    username = msg.get(Username)
    return {
        "username": username.value if username else None,
        "priority": priority.value if priority else None,
        "controlling": controlling.tie_breaker if controlling else None,
        "controlled": controlled.tie_breaker if controlled else None,
        "use_candidate": msg.has(UseCandidate),
    }
