"""Per-loop memory of the operator: one lock and one `Remembered` per loop.

A pass over a loop holds its lock (the kopf handlers, the periodic resync and
the pod-event handler never work on one loop at once), reads `remembered`
before deciding and stores what the pass left behind. A deleted loop is
forgotten. The number of remembered loops per namespace is a metric.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .decide import Remembered
from .metrics import OperatorMetrics

LoopKey = tuple[str, str]
"""(namespace, name) of a ReactiveLoop."""


@dataclass
class LoopMemo:
    """What the operator remembers about one loop between passes."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    remembered: Remembered = field(default_factory=Remembered)


class Memos:
    """Every loop's memo, made on first use and dropped when the loop is deleted."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics
        self._memos: dict[LoopKey, LoopMemo] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._memos

    def __len__(self) -> int:
        return len(self._memos)

    def get(self, key: LoopKey) -> LoopMemo:
        memo = self._memos.get(key)
        if memo is None:
            memo = self._memos[key] = LoopMemo()
            self._metrics.namespace_seen(key[0])
            self._metrics.set_loops([ns for ns, _ in self._memos])
        return memo

    def forget(self, key: LoopKey) -> None:
        self._memos.pop(key, None)
        self._metrics.set_loops([ns for ns, _ in self._memos])
