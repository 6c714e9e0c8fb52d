"""Operator metrics, built on an injected CollectorRegistry (contract M_OP_* names)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from reactive_node import contract as c

RECONCILE_RESULTS = ("ok", "invalid", "error")
INJECTION_RESULTS = ("ok", "failed")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconciles = Counter(
            c.M_OP_RECONCILES.removesuffix("_total"),
            "Reconciliations of ReactiveLoop resources, by result.",
            ["result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            c.M_OP_RECONCILE_SECONDS,
            "Duration of one reconciliation (children, node poll, status).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.injections = Counter(
            c.M_OP_INJECTIONS.removesuffix("_total"),
            "Target injections by round trip, by result.",
            ["result"],
            registry=registry,
        )
        self.loops = Gauge(c.M_OP_LOOPS, "ReactiveLoop resources managed.", registry=registry)
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result=result)
        for result in INJECTION_RESULTS:
            self.injections.labels(result=result)
