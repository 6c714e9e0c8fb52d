"""The node's Prometheus metrics, built on an injected registry.

Names come from `contract`; every metric has the labels {loop, node} and at
most one more bounded label. Label values are bound once here, so the rest of
the node increments plain children.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..core import contract

PHASES = ("starting", "looping", "waiting", "suspended")
WRITE_RESULTS = ("ok", "conflict", "error")
ROUNDTRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _base(name: str, suffix: str) -> str:
    # prometheus_client appends `_total` to counters itself.
    return name.removesuffix(suffix)


class NodeMetrics:
    """All metrics of one node."""

    def __init__(
        self, registry: CollectorRegistry, loop: str, node: str, behavior: str, topology: str
    ) -> None:
        labels = ("loop", "node")
        values = (loop, node)
        self.registry = registry
        self._loops = Counter(
            _base(contract.M_LOOPS, "_total"),
            "Round trips this node initiated that succeeded.",
            labels,
            registry=registry,
        )
        self.loops = self._loops.labels(*values)
        self._waits = Counter(
            _base(contract.M_WAITS, "_total"),
            "Round trips this node initiated that failed, by reason; the node then waits.",
            (*labels, "reason"),
            registry=registry,
        )
        self.waits = {r: self._waits.labels(*values, r) for r in contract.WAIT_REASONS}
        self._roundtrip = Histogram(
            contract.M_ROUNDTRIP_SECONDS,
            "Duration of round trips this node initiated, successful or not.",
            labels,
            registry=registry,
            buckets=ROUNDTRIP_BUCKETS,
        )
        self.roundtrip = self._roundtrip.labels(*values)
        self._requests = Counter(
            _base(contract.M_REQUESTS, "_total"),
            "Round-trip requests this node served, by outcome.",
            (*labels, "outcome"),
            registry=registry,
        )
        self.requests = {o: self._requests.labels(*values, o) for o in contract.REQUEST_OUTCOMES}
        self._writes = Counter(
            _base(contract.M_STATE_WRITES, "_total"),
            "State writes to the store, by result.",
            (*labels, "result"),
            registry=registry,
        )
        self.writes = {r: self._writes.labels(*values, r) for r in WRITE_RESULTS}
        self._invalid = Counter(
            _base(contract.M_STATE_INVALID, "_total"),
            "Stored states that were not valid (a bad hand edit); the last good state is kept.",
            labels,
            registry=registry,
        )
        self.invalid = self._invalid.labels(*values)
        self._generation = Gauge(
            contract.M_GENERATION,
            "Generation of the converge target this node holds.",
            labels,
            registry=registry,
        )
        self.generation = self._generation.labels(*values)
        self._holder = Gauge(
            contract.M_TOKEN_HOLDER, "1 while this node holds the token.", labels, registry=registry
        )
        self.holder = self._holder.labels(*values)
        self._epoch = Gauge(
            contract.M_TOKEN_EPOCH,
            "Term of the newest token epoch this node has seen.",
            labels,
            registry=registry,
        )
        self.epoch = self._epoch.labels(*values)
        self._last_loop = Gauge(
            contract.M_LAST_LOOP,
            "Unix time of this node's last successful round trip.",
            labels,
            registry=registry,
        )
        self.last_loop = self._last_loop.labels(*values)
        self._phase = Gauge(
            contract.M_PHASE,
            "1 for the phase this node is in (starting, looping, waiting, suspended),"
            " 0 for the others.",
            (*labels, "phase"),
            registry=registry,
        )
        self.phase = {p: self._phase.labels(*values, p) for p in PHASES}
        self._info = Gauge(
            contract.M_INFO,
            "Always 1; the labels say which behaviour and topology the node runs.",
            (*labels, "behavior", "topology"),
            registry=registry,
        )
        self._info.labels(*values, behavior, topology).set(1)
        self._current_phase = ""
        self.set_phase("starting")

    def set_phase(self, phase: str) -> None:
        if phase == self._current_phase:
            return
        self._current_phase = phase
        for name, gauge in self.phase.items():
            gauge.set(1 if name == phase else 0)
