"""`spec.suspend`, the PodDisruptionBudget and a refused pod, through the
reconciler with a fake Kubernetes (no API server): what the operator changes,
what it leaves alone, and what the status says."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument, decode_state_document
from reactive_operator import builders
from reactive_operator.builders import Owner
from reactive_operator.config import load
from reactive_operator.kube import KubeError
from reactive_operator.memo import LoopKey
from reactive_operator.metrics import OperatorMetrics
from reactive_operator.plan import PodView, plan
from reactive_operator.reconcile import Deps, reconcile
from reactive_operator.spec import parse_spec

KEY: LoopKey = ("ns", "demo")
OWNER = Owner("demo", "ns", "uid-demo")
DEFAULTS = builders.NodeDefaults("reactive-loop-node:0.1.0", "IfNotPresent")


class Kube:
    """Records every change; `pdbs` holds the PodDisruptionBudgets that exist."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.annotated: list[tuple[str, dict[str, str]]] = []
        self.pdbs: dict[str, dict[str, Any]] = {}
        self.pdb_patches: list[Mapping[str, Any]] = []
        self.policies: dict[str, dict[str, Any]] = {}
        self.policy_patches: list[Mapping[str, Any]] = []
        self.refuse_pods: str | None = None
        self.events: list[tuple[str, str]] = []
        self.injected: list[str] = []

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Pod" and self.refuse_pods is not None:
            raise KubeError(422, self.refuse_pods)
        if kind == "PodDisruptionBudget":
            self.pdbs[name] = copy.deepcopy(dict(manifest))
        if kind == "NetworkPolicy":
            if name in self.policies:
                return False
            self.policies[name] = copy.deepcopy(dict(manifest))
        self.created.append(f"{kind}/{name}")
        return True

    async def service_account_names(self, ns: str, label_selector: str) -> list[str]:
        return [f"demo-{i}" for i in range(3)]

    async def delete_pod(self, ns: str, name: str) -> bool:
        self.deleted.append(f"Pod/{name}")
        return True

    async def delete_node_rbac(self, ns: str, name: str) -> None:
        self.deleted.append(f"RBAC/{name}")

    async def annotate_pod(self, ns: str, name: str, annotations: Mapping[str, str]) -> None:
        self.annotated.append((name, dict(annotations)))

    async def read_pdb(self, ns: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.pdbs.get(name))

    async def patch_pdb(self, ns: str, name: str, patch: Mapping[str, Any]) -> None:
        self.pdb_patches.append(patch)
        self.pdbs[name]["spec"].update(patch["spec"])

    async def read_network_policy(self, ns: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.policies.get(name))

    async def patch_network_policy(self, ns: str, name: str, patch: Mapping[str, Any]) -> None:
        self.policy_patches.append(patch)
        spec = self.policies[name]["spec"]
        for key, value in patch["spec"].items():
            if value is None:
                spec.pop(key, None)
            else:
                spec[key] = value

    async def delete_pdb(self, ns: str, name: str) -> bool:
        self.deleted.append(f"PodDisruptionBudget/{name}")
        return self.pdbs.pop(name, None) is not None

    async def post_event(
        self, obj: Mapping[str, Any], *, kind: str, reason: str, message: str
    ) -> None:
        self.events.append((kind, reason))

    async def write_injection(self, ns: str, pod: str, text: str) -> None:
        self.injected.append(pod)


class Nodes:
    """Every node answers with `generation`."""

    def __init__(self, generation: int = 0, phase: str = "looping") -> None:
        self.generation = generation
        self.phase = phase

    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | None]:
        return {
            n: decode_state_document(
                {"node": n, "phase": self.phase, "summary": {"generation": self.generation}}
            )
            for n in ips
        }


def deps_with(kube: Kube, nodes: Nodes | None = None) -> Deps:
    return Deps(load({}), kube, nodes or Nodes(), OperatorMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def loop_body(generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": OWNER.uid, "generation": generation},
        "spec": {"replicas": 3, "target": {"v": 1}, **spec},
    }


def node_pods(n: int, spec: dict[str, Any], **kw: Any) -> list[PodView]:
    wanted = builders.spec_hash(parse_spec(spec), DEFAULTS)
    base = [
        PodView(
            name=f"demo-{i}",
            ordinal=i,
            spec_hash=wanted,
            replicas_annotation="3",
            phase="Running",
            ready=True,
            ip=f"10.0.0.{i + 2}",
        )
        for i in range(n)
    ]
    return [replace(p, **kw) for p in base]


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in status["conditions"] if x["type"] == kind)
    return found


async def one_pass(deps: Deps, body: dict[str, Any], pods: list[PodView]) -> dict[str, Any]:
    changes, _ = await reconcile(deps, body, {KEY: pods}, force_ensure=True)
    return changes


# --- suspend ---------------------------------------------------------------------


def test_a_suspended_plan_only_marks_the_pods() -> None:
    spec: dict[str, Any] = {"replicas": 3}
    pods = node_pods(2, spec, spec_hash="old")  # one missing, both outdated
    pods.append(PodView(name="demo-5", ordinal=5, phase="Failed"))  # surplus and failed
    todo = plan(replicas=3, spec_hash="new", pods=pods, rbac_ordinals={0, 1}, suspend=True)
    assert todo.create_pods == todo.create_rbac == todo.delete_rbac == ()
    assert todo.delete_pods == ()
    assert todo.roll is None
    assert todo.annotate_replicas == ()
    assert todo.annotate_suspended == ("demo-0", "demo-1", "demo-5")
    # Marked pods are not marked again.
    marked = [replace(p, suspended_annotation="true") for p in pods]
    again = plan(replicas=3, spec_hash="new", pods=marked, rbac_ordinals={0, 1}, suspend=True)
    assert again.empty


def test_resuming_clears_the_mark_and_heals_again() -> None:
    spec: dict[str, Any] = {"replicas": 3}
    pods = [replace(p, suspended_annotation="true") for p in node_pods(2, spec)]
    todo = plan(replicas=3, spec_hash=pods[0].spec_hash or "", pods=pods, rbac_ordinals={0, 1})
    assert todo.annotate_suspended == ("demo-0", "demo-1")
    assert todo.create_pods == (2,)
    # A pod without the annotation is not suspended: nothing to clear.
    plain = plan(
        replicas=3,
        spec_hash=pods[0].spec_hash or "",
        pods=node_pods(3, spec),
        rbac_ordinals={0, 1, 2},
    )
    assert plain.empty


async def test_a_suspended_loop_changes_no_pod_and_injects_nothing() -> None:
    kube, nodes = Kube(), Nodes(generation=0)
    deps = deps_with(kube, nodes)
    body = loop_body(suspend=True)
    pods = node_pods(2, body["spec"], spec_hash="outdated")  # demo-2 missing, the others old
    status = await one_pass(deps, body, pods)
    assert not [x for x in kube.created if x.startswith(("Pod/", "ServiceAccount/"))]
    assert kube.deleted == []
    assert kube.annotated == [
        ("demo-0", {c.SUSPENDED_ANNOTATION: "true"}),
        ("demo-1", {c.SUSPENDED_ANNOTATION: "true"}),
    ]
    assert kube.injected == []  # the target waits for the resume
    suspended = condition(status, "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended")
    assert status["summary"].startswith("suspended; target 1: 0/3 nodes")
    assert status["targetGeneration"] == 1  # still known, not yet injected
    assert "injectedGeneration" not in status
    assert condition(status, "Ready")["status"] == "False"  # 2 of 3 nodes


async def test_resuming_continues_where_the_loop_stopped() -> None:
    kube, nodes = Kube(), Nodes(generation=0)
    deps = deps_with(kube, nodes)
    body = loop_body(generation=2, suspend=False)
    body["status"] = {"targetGeneration": 1, "targetDigest": "whatever-else"}
    pods = [replace(p, suspended_annotation="true") for p in node_pods(3, body["spec"])]
    status = await one_pass(deps, body, pods)
    assert kube.annotated == [(f"demo-{i}", {c.SUSPENDED_ANNOTATION: "false"}) for i in range(3)]
    assert kube.injected == ["demo-0"]
    assert kube.deleted == []
    assert condition(status, "Suspended")["status"] == "False"
    assert not status["summary"].startswith("suspended")


async def test_suspended_nodes_are_neither_looping_nor_waiting() -> None:
    deps = deps_with(Kube(), Nodes(generation=1, phase="suspended"))
    body = loop_body(suspend=True)
    status = await one_pass(deps, body, node_pods(3, body["spec"]))
    assert (status["looping"], status["waiting"]) == (0, 0)
    assert "nodes" not in status  # resting as the spec says: nothing needs attention
    assert condition(status, "Ready")["status"] == "True"  # the pods are there and ready


# --- the PodDisruptionBudget ---------------------------------------------------------


async def test_the_budget_is_created_updated_and_deleted_with_the_spec() -> None:
    kube = Kube()
    deps = deps_with(kube)
    body = loop_body()
    pods = node_pods(3, body["spec"])
    await one_pass(deps, body, pods)
    assert kube.pdbs["demo"]["spec"]["maxUnavailable"] == 1
    assert builders.owns(OWNER, kube.pdbs["demo"])
    await one_pass(deps, body, pods)  # as wanted: left alone
    assert kube.pdb_patches == []
    changed = loop_body(generation=2, disruptionBudget={"maxUnavailable": "50%"})
    await one_pass(deps, changed, pods)
    assert kube.pdbs["demo"]["spec"]["maxUnavailable"] == "50%"
    assert len(kube.pdb_patches) == 1
    off = loop_body(generation=3, disruptionBudget={"enabled": False})
    await one_pass(deps, off, pods)
    assert "demo" not in kube.pdbs


async def test_a_budget_it_does_not_own_is_left_alone() -> None:
    kube = Kube()
    foreign = builders.pod_disruption_budget(Owner("demo", "ns", "someone-else"), parse_spec({}))
    assert foreign is not None
    foreign["spec"]["maxUnavailable"] = 3
    kube.pdbs["demo"] = copy.deepcopy(foreign)
    deps = deps_with(kube)
    body = loop_body(disruptionBudget={"enabled": False})
    _, events = await reconcile(deps, body, {KEY: node_pods(3, body["spec"])}, force_ensure=True)
    assert kube.pdbs["demo"] == foreign
    assert kube.pdb_patches == []
    assert ("Warning", "DisruptionBudgetNotOwned") in {(e.kind, e.reason) for e in events}
    assert kube.events == [(e.kind, e.reason) for e in events]  # sent, through kube here


# --- the NetworkPolicy ---------------------------------------------------------------


async def test_a_network_policy_made_before_an_upgrade_is_brought_to_the_wanted_spec() -> None:
    """The policy of an earlier operator (no exclusion of a partitioned pod, an
    egress rule it no longer wants) is patched to the wanted spec, once."""
    kube = Kube()
    deps = deps_with(kube)
    body = loop_body()
    pods = node_pods(3, body["spec"])
    await one_pass(deps, body, pods)
    wanted = copy.deepcopy(kube.policies["demo-nodes"])
    assert kube.policy_patches == []
    old = copy.deepcopy(wanted)
    old["spec"]["podSelector"].pop("matchExpressions")
    old["spec"]["policyTypes"] = ["Ingress"]
    old["spec"]["ingress"][0]["from"] = [{"podSelector": {"matchLabels": {"x": "y"}}}]
    kube.policies["demo-nodes"] = old
    _, events = await reconcile(deps, body, {KEY: pods}, force_ensure=True)
    assert kube.policies["demo-nodes"]["spec"] == wanted["spec"]
    assert len(kube.policy_patches) == 1
    assert ("Normal", "Updated") in {(e.kind, e.reason) for e in events}
    await one_pass(deps, body, pods)  # as wanted now: left alone
    assert len(kube.policy_patches) == 1


async def test_a_network_policy_without_egress_loses_a_stale_egress_rule() -> None:
    """RLO_NODE_EGRESS=false after a version that limited egress: the rule goes."""
    kube = Kube()
    net = load({"RLO_NODE_EGRESS": "false"})
    deps = Deps(net, kube, Nodes(), OperatorMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    body = loop_body()
    pods = node_pods(3, body["spec"])
    await one_pass(deps, body, pods)
    policy = kube.policies["demo-nodes"]
    assert "egress" not in policy["spec"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    policy["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]
    policy["spec"]["policyTypes"] = ["Ingress", "Egress"]
    await one_pass(deps, body, pods)
    assert kube.policies["demo-nodes"]["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in kube.policies["demo-nodes"]["spec"]
    assert kube.policy_patches[-1]["spec"]["egress"] is None


async def test_a_network_policy_it_does_not_own_is_left_alone() -> None:
    kube = Kube()
    foreign = builders.network_policy(
        Owner("demo", "ns", "someone-else"), parse_spec({"replicas": 3}), load({}).node_network
    )
    kube.policies["demo-nodes"] = copy.deepcopy(foreign)
    foreign_now = copy.deepcopy(foreign)
    deps = deps_with(kube)
    body = loop_body()
    _, events = await reconcile(deps, body, {KEY: node_pods(3, body["spec"])}, force_ensure=True)
    assert kube.policies["demo-nodes"] == foreign_now
    assert kube.policy_patches == []
    assert ("Warning", "NetworkPolicyNotOwned") in {(e.kind, e.reason) for e in events}


# --- a pod the API server refuses ------------------------------------------------------


async def test_a_refused_pod_degrades_the_loop_and_it_is_not_ready() -> None:
    kube = Kube()
    kube.refuse_pods = 'Pod "demo-2" is invalid: spec.containers[1].image: Required value'
    deps = deps_with(kube)
    body = loop_body(sidecars=[{"name": "w", "image": "x"}])
    pods = node_pods(2, body["spec"])
    changes, events = await reconcile(deps, body, {KEY: pods}, force_ensure=True)
    degraded = condition(changes, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PodRejected")
    assert "spec.containers[1].image" in degraded["message"]
    assert condition(changes, "Ready")["status"] == "False"
    assert [e.reason for e in events].count("PodRejected") == 1
    # Once the pod is created, the problem is gone.
    kube.refuse_pods = None
    body["status"] = changes
    changes, _ = await reconcile(deps, body, {KEY: pods}, force_ensure=True)
    assert condition(changes, "Degraded")["reason"] != "PodRejected"


async def test_other_api_errors_still_raise() -> None:
    kube = Kube()
    deps = deps_with(kube)

    async def broken(manifest: Mapping[str, Any]) -> bool:
        raise KubeError(500, "etcd is down")

    kube.create = broken  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        await one_pass(deps, loop_body(), [])


async def test_a_failed_pass_is_decided_again() -> None:
    """What a decision remembers is kept only once it was applied: after a pass
    that failed, the next (unforced) one checks the shared children again."""
    kube = Kube()
    deps = deps_with(kube)
    body = loop_body()
    working = kube.create

    async def broken(manifest: Mapping[str, Any]) -> bool:
        raise KubeError(500, "etcd is down")

    kube.create = broken  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        await reconcile(deps, body, {KEY: node_pods(3, body["spec"])}, force_ensure=False)
    kube.create = working  # type: ignore[method-assign]
    await reconcile(deps, body, {KEY: node_pods(3, body["spec"])}, force_ensure=False)
    assert "Service/demo" in kube.created
    assert deps.memo(KEY).remembered.ensured_for == (OWNER.uid, 1)
    kube.created.clear()
    await reconcile(deps, body, {KEY: node_pods(3, body["spec"])}, force_ensure=False)
    assert kube.created == []  # checked: not again within the minute
