"""Exponential backoff with jitter and a cap, for waits after failed round trips."""

from __future__ import annotations

import random


class Backoff:
    """Delay before the next attempt: `base * 2**(failures-1)`, capped, jittered.

    "Equal jitter": half the delay is fixed and half is random, so nodes that
    failed together spread out, yet nobody retries sooner than half the delay.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("backoff base and cap must be positive")
        self.base = base
        self.cap = max(cap, base)
        self.failures = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait."""
        self.failures += 1
        exponent = min(self.failures - 1, 62)
        delay = min(self.cap, self.base * 2.0**exponent)
        return delay / 2 + self._rng.uniform(0, delay / 2)
