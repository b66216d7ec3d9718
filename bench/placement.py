"""Which core runs what: the gateway instances, the load generator, the SIP front.

Instance i is pinned to core i mod ncpu (of the cores this process may use).
The load generator and Kamailio get the cores no instance has; when every core
has an instance (2 instances on this 2-core machine) they may run on any core
and, under ``--priority realtime``, the generator sits one SCHED_FIFO level
below the instances (``--generator-same-priority``: at their level): an
instance preempts it at once, as if it had its core to itself, and what the
generator loses shows as its pacer lateness and wait.
With one instance on two cores this is the single-instance layout: daemon on
core 0, generator on core 1, each at the same priority.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.daemon import RT_PRIORITY

CORES: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))  # as at start, before pinning


@dataclass(frozen=True)
class Placement:
    instance_cores: tuple[int | None, ...]  # None: not pinned
    others: frozenset[int] | None  # generator and front; None: not pinned
    shared: bool  # no core of their own: they share the instances' cores
    instance_rt: int = RT_PRIORITY
    front_rt: int = RT_PRIORITY  # Kamailio: part of the system under test
    generator_below: bool = True  # when shared: one level below the instances

    @property
    def pinned(self) -> bool:
        return self.others is not None

    @property
    def generator_rt(self) -> int:
        """SCHED_FIFO level of the generator (below the instances when it shares cores)."""
        return self.instance_rt - 1 if self.shared and self.generator_below else self.instance_rt

    def describe(self, front: bool) -> str:
        if not self.pinned:
            return "not pinned"
        parts = [f"instance {i + 1} on core {c}" for i, c in enumerate(self.instance_cores)]
        own = ", ".join(str(c) for c in sorted(self.others or ()))
        where = "any core" if self.shared else f"core {own}"
        who = "load generator and Kamailio" if front else "load generator"
        return "; ".join(parts) + f"; {who} on {where}"


def place(instances: int, pin: bool, generator_below: bool = True) -> Placement:
    """Instance i on core i mod ncpu; the rest on the cores left (or on all of them)."""
    below = generator_below
    if not pin or len(CORES) < 2:
        shared = instances >= len(CORES)
        return Placement((None,) * instances, None, shared, generator_below=below)
    cores = tuple(CORES[i % len(CORES)] for i in range(instances))
    left = frozenset(CORES) - frozenset(cores)
    if left:
        return Placement(cores, left, shared=False, generator_below=below)
    return Placement(cores, frozenset(CORES), shared=True, generator_below=below)


def pin_self(placement: Placement) -> bool:
    """Move this process (the load generator) to its cores; whether it is pinned."""
    if placement.others is None:
        os.sched_setaffinity(0, set(CORES))
        return False
    os.sched_setaffinity(0, set(placement.others))
    return True
