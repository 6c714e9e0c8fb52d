"""The periodic resync without Kubernetes: per-loop isolation, bounded concurrency, no finalizer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument
from reactive_operator import handlers
from reactive_operator.config import load
from reactive_operator.kube import KubeError, NotFound
from reactive_operator.memo import LoopKey
from reactive_operator.metrics import OperatorMetrics
from reactive_operator.reconcile import Deps
from reactive_operator.resync import Resync


class FakeKube:
    """Fails on purpose per namespace: `bad` → KubeError, `boom` → RuntimeError, `gone` → 404."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []
        self.status: dict[LoopKey, Mapping[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        ns = manifest["metadata"]["namespace"]
        if ns == "bad":
            raise KubeError(500, "internal error")
        if ns == "boom":
            raise RuntimeError("a bug")
        self.created.append((ns, f"{manifest['kind']}/{manifest['metadata']['name']}"))
        return True

    async def read_network_policy(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def read_pdb(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def service_account_names(self, ns: str, label_selector: str) -> list[str]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return []

    async def patch_loop_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        if ns == "gone":
            raise NotFound(404, "not found")
        self.status[(ns, name)] = status

    async def post_event(
        self, obj: Mapping[str, Any], *, kind: str, reason: str, message: str
    ) -> None:
        self.events.append((obj["metadata"]["namespace"], reason))

    async def get_loop(self, ns: str, name: str) -> dict[str, Any] | None:
        return loop(ns, name) if ns.startswith("ok") else None


class FakeNodes:
    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | None]:
        return {}


def loop(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "generation": 1},
        "spec": {"replicas": 2, "target": {"v": 1}},
    }


def deps_with(kube: FakeKube) -> tuple[Deps, CollectorRegistry]:
    registry = CollectorRegistry()
    deps = Deps(load({}), kube, FakeNodes(), OperatorMetrics(registry))  # type: ignore[arg-type]
    return deps, registry


def reconciles(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("reactive_loop_operator_reconciles_total", {"result": result})
    return float(value or 0)


async def test_one_failing_loop_never_stops_the_others() -> None:
    kube = FakeKube()
    deps, registry = deps_with(kube)
    keys = [("ok1", "a"), ("bad", "b"), ("boom", "c"), ("gone", "d"), ("ok2", "e")]
    index = {k: [loop(*k)] for k in keys}
    await Resync(deps, index, {}).all()
    assert set(kube.status) == {("ok1", "a"), ("ok2", "e")}
    for ns in ("ok1", "ok2"):
        assert (ns, "Pod/" + ("a" if ns == "ok1" else "e") + "-1") in kube.created
        assert (ns, "CreatedPod") in kube.events  # no kopf queue here: posted through kube
    assert reconciles(registry, "error") == 2  # bad and boom, logged and counted
    assert reconciles(registry, "ok") == 3  # ok1, ok2 and gone (deleted at the status write)


async def test_concurrency_is_bounded() -> None:
    kube = FakeKube()
    deps, _ = deps_with(kube)
    index = {(f"ns{i}", "l"): [loop(f"ns{i}", "l")] for i in range(12)}
    await Resync(deps, index, {}, concurrency=3).all()
    assert len(kube.status) == 12
    assert kube.most_in_flight == 3


async def test_deleting_and_deleted_loops_are_skipped_and_forgotten() -> None:
    kube = FakeKube()
    deps, _ = deps_with(kube)
    deleting = loop("ns", "going")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    index: dict[LoopKey, list[dict[str, Any]]] = {("ns", "going"): [deleting]}
    resync = Resync(deps, index, {})
    await resync.all()
    assert kube.created == []
    assert kube.status == {}
    # A loop that leaves the index during its pass is not written and forgotten.
    index[("ns", "racy")] = [loop("ns", "racy")]
    original = kube.service_account_names

    async def vanish(ns: str, label_selector: str) -> list[str]:
        index.pop(("ns", "racy"), None)
        return await original(ns, label_selector)

    kube.service_account_names = vanish  # type: ignore[method-assign]
    await resync.one(("ns", "racy"))
    assert ("ns", "racy") not in kube.status
    assert ("ns", "racy") not in deps.memos


def test_no_handler_makes_kopf_add_a_finalizer() -> None:
    registry = kopf.OperatorRegistry()
    deps, _ = deps_with(FakeKube())
    handlers.register(registry, deps)
    assert registry._spawning.get_all_handlers() == []  # no timers, no daemons
    changing = registry._changing.get_all_handlers()
    assert changing, "no resource handlers registered?"
    assert not any(h.requires_finalizer for h in changing)


async def test_a_node_pod_event_runs_the_same_pass_at_once() -> None:
    """A deleted or failed node pod: the loop's whole pass (decide, apply, status
    write) runs now, not at the next resync; other pod events do nothing."""
    registry = kopf.OperatorRegistry()
    kube = FakeKube()
    deps, registry_m = deps_with(kube)
    handlers.register(registry, deps)
    (handler,) = [h for h in registry._watching.get_all_handlers() if h.id == "pod_event"]
    pod_event: Any = handler.fn  # called as kopf calls it, with the indexes
    key = ("ok1", "a")
    labels = {c.LOOP_LABEL: "a", c.COMPONENT_LABEL: c.NODE_COMPONENT}
    indexes: dict[str, Any] = {"loops": {key: [loop(*key)]}, "node_pods": {}}
    await pod_event(
        type="MODIFIED", namespace="ok1", labels=labels, status={"phase": "Running"}, **indexes
    )
    assert kube.created == []
    assert kube.status == {}
    await pod_event(type="DELETED", namespace="ok1", labels=labels, status={}, **indexes)
    assert ("ok1", "Pod/a-0") in kube.created  # healed
    assert ("ok1", "Pod/a-1") in kube.created
    assert kube.status[key]["replicas"] == 0  # and the status written
    assert ("ok1", "CreatedPod") in kube.events
    assert reconciles(registry_m, "ok") == 1
    # A loop that is gone: nothing.
    gone: dict[str, Any] = {"loops": {}, "node_pods": {}}
    await pod_event(type="DELETED", namespace="gone", labels=labels, status={}, **gone)
    assert reconciles(registry_m, "ok") == 1
