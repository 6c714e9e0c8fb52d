"""Operator metrics, built on an injected CollectorRegistry (contract M_OP_* names).

`reconciles_total{result}` counts every reconciliation of the operator (the
alert ReactiveLoopOperatorReconcileErrors reads it). The others carry
`loop_namespace`, the namespace of the ReactiveLoop concerned (not `namespace`,
which Prometheus gives the operator's own target), so the dashboard's operator
panels follow its `$namespace` selection: the reconcile duration histogram is
labelled by result too, so its `_count` is the reconciles per namespace.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from reactive_node.core import contract as c

RECONCILE_RESULTS = ("ok", "invalid", "error")
INJECTION_RESULTS = ("ok", "failed")
#: The label naming the namespace of the ReactiveLoop a sample is about.
LOOP_NAMESPACE = "loop_namespace"


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
            "Duration of one reconciliation (children, node poll, status), by the loop's "
            "namespace and result.",
            [LOOP_NAMESPACE, "result"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.injections = Counter(
            c.M_OP_INJECTIONS.removesuffix("_total"),
            "Target injections written to a node pod (ok) or refused (failed), by namespace.",
            [LOOP_NAMESPACE, "result"],
            registry=registry,
        )
        self.loops = Gauge(
            c.M_OP_LOOPS,
            "ReactiveLoop resources managed, by namespace.",
            [LOOP_NAMESPACE],
            registry=registry,
        )
        self.namespaces: set[str] = set()
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result=result)

    def namespace_seen(self, namespace: str) -> None:
        """Create a namespace's series at 0, so every expression has data from its first loop."""
        for result in RECONCILE_RESULTS:
            self.reconcile_seconds.labels(namespace, result)
        for result in INJECTION_RESULTS:
            self.injections.labels(namespace, result)
        self.loops.labels(namespace)
        self.namespaces.add(namespace)

    def set_loops(self, namespaces: list[str]) -> None:
        """Managed loops per namespace, from the namespaces of every managed loop."""
        counts: dict[str, int] = {}
        for ns in namespaces:
            counts[ns] = counts.get(ns, 0) + 1
        for ns in self.namespaces | set(counts):
            self.loops.labels(ns).set(counts.get(ns, 0))
