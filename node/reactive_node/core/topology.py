"""Peer choice: ring (with skipping), mesh (random peer), star (everyone with node 0).

Pure logic: a `PeerPicker` is told the outcome of each round trip and picks
the next peer's ordinal; the random source is injected.
"""

from __future__ import annotations

import random
from typing import Final

from .contract import TOPOLOGIES, TopologyName

__all__ = ["PROBE_EVERY", "TOPOLOGIES", "PeerPicker", "TopologyName"]

#: After a ring node skipped an unreachable successor, it tries the direct
#: successor again after this many successful round trips with the substitute.
PROBE_EVERY: Final = 5


class PeerPicker:
    """Chooses the next peer; a ring remembers how many successors it skips."""

    def __init__(
        self,
        topology: TopologyName,
        ordinal: int,
        *,
        ring_skip: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}")
        self.topology: TopologyName = topology
        self.ordinal = ordinal
        self.ring_skip = max(0, ring_skip)
        self.skip = 0
        self._successes_while_skipping = 0
        self._rng = rng or random.Random()

    def pick(self, replicas: int) -> int | None:
        """The ordinal to round-trip to next, or None if there is nobody."""
        if replicas < 2:
            return None
        if self.topology == "ring":
            skip = min(self.skip, replicas - 2)
            return (self.ordinal + 1 + skip) % replicas
        if self.topology == "star" and self.ordinal != 0:
            return 0
        # mesh, and node 0 of a star: a uniformly random other node.
        choice = self._rng.randrange(replicas - 1)
        return choice if choice < self.ordinal else choice + 1

    def record(self, ok: bool) -> None:
        """Tell the picker how the round trip to the last picked peer ended."""
        if self.topology != "ring":
            return
        if not ok:
            self._successes_while_skipping = 0
            self.skip = self.skip + 1 if self.skip < self.ring_skip else 0
            return
        if self.skip:
            self._successes_while_skipping += 1
            if self._successes_while_skipping >= PROBE_EVERY:
                self.skip = 0
                self._successes_while_skipping = 0
