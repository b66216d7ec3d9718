"""The ICE agent's check list: pairs, check transactions, the retransmission schedule.

Plain records for :mod:`gateway.ice.agent` (RFC 8445 6.1.2), slotted and
compared by identity. One local candidate and one component, so every pair
shares a foundation and nothing is ever Frozen.

Timing (a deliberate deviation from RFC 8445 14.3's 500 ms floor, as libwebrtc
does for host candidates): a new check every :data:`TA` (50 ms, 14.2); each
check retransmitted after 100 ms, doubling, capped at 1.6 s, seven
transmissions in all, then a last wait of 1.6 s (RFC 5389 7.2.1's Rc = 7 and
Rm = 16 with RTO = 100 ms): a check gives up 6.3 s after it was first sent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from gateway.ice.stun import IpAddress

__all__ = [
    "MAX_TRANSMISSIONS",
    "RTO_INITIAL",
    "RTO_MAX",
    "TA",
    "Check",
    "Pair",
    "PairState",
    "retransmit_interval",
    "same_address",
]

TA = 0.05  # RFC 8445 14.2: pacing of new checks
RTO_INITIAL = 0.1
RTO_MAX = 1.6  # the cap of the doubling, and the last wait (Rm * RTO_INITIAL)
MAX_TRANSMISSIONS = 7  # RFC 5389 7.2.1: Rc


class PairState(Enum):
    """RFC 8445 6.1.2.6, without Frozen."""

    WAITING = 1
    IN_PROGRESS = 2
    SUCCEEDED = 3
    FAILED = 4


@dataclass(slots=True, eq=False)
class Pair:
    """Our one local candidate with one remote candidate."""

    addr: tuple[str, int]
    ip: IpAddress  # parsed once: the XOR-MAPPED-ADDRESS of every answer to this address
    remote_priority: int
    priority: int = 0
    state: PairState = PairState.WAITING
    valid: bool = False  # on the valid list (RFC 8445 7.2.5.3.2)
    rtt: float | None = None
    tx: Check | None = None  # the check whose outcome decides the state
    nominate_on_success: bool = False  # controlled: the peer sent USE-CANDIDATE on it


@dataclass(slots=True, eq=False)
class Check:
    """One connectivity-check transaction: the request's bytes and its schedule."""

    tid: bytes
    pair: Pair
    data: bytes
    use_candidate: bool
    controlling: bool  # the role the request claimed (RFC 8445 7.2.5.1)
    sent: int = 0
    last_sent: float = 0.0
    next_at: float = 0.0
    cancelled: bool = False  # RFC 8445 7.3.1.4: no more retransmissions, no failure


def retransmit_interval(transmissions: int) -> float:
    """The wait after the n-th transmission: 100 ms doubling to the 1.6 s cap; then 1.6 s."""
    if transmissions >= MAX_TRANSMISSIONS:
        return RTO_MAX
    return min(RTO_INITIAL * (1 << (transmissions - 1)), RTO_MAX)


def same_address(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Equal transport addresses, IPv6 spellings normalised (only off the fast path)."""
    if a == b:
        return True
    if a[1] != b[1]:
        return False
    try:
        return ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])
    except ValueError:
        return False
