"""Target injection into custom behaviours (docs/custom-behavior.md).

A `python:` behaviour whose spec sets `target` gets it injected like
converge: `{generation, target}` written to one node pod's inject annotation
through the API server (the node takes it from its pod watch). The operator
cannot import the user's class, so the spec is the declaration; the node
hands the injection to the class's `inject` (tests/node/test_custom_behavior.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument, decode_state_document
from reactive_operator import builders
from reactive_operator.builders import Owner
from reactive_operator.config import load
from reactive_operator.kube import KubeError
from reactive_operator.memo import LoopKey
from reactive_operator.metrics import OperatorMetrics
from reactive_operator.plan import PodView
from reactive_operator.reconcile import Deps, reconcile
from reactive_operator.spec import parse_spec

KEY: LoopKey = ("ns", "demo")
OWNER = Owner("demo", "ns", "uid-demo")
DEFAULTS = builders.NodeDefaults("reactive-loop-node:0.1.0", "IfNotPresent")
CUSTOM = "python:leaderboard:Leaderboard"
CLAIM = {"player": "ada", "score": 42}


class Kube:
    """Accepts every write (the pods and their RBAC exist already); records
    the injections written to pods, or refuses them with `refuse`."""

    def __init__(self, refuse: KubeError | None = None) -> None:
        self.refuse = refuse
        self.injected: list[tuple[str, dict[str, Any]]] = []

    async def write_injection(self, ns: str, pod: str, text: str) -> None:
        self.injected.append((pod, json.loads(text)))
        if self.refuse is not None:
            raise self.refuse

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        return True

    async def service_account_names(self, ns: str, label_selector: str) -> list[str]:
        return [f"demo-{i}" for i in range(3)]

    async def delete_pod(self, ns: str, name: str) -> bool:
        return True

    async def delete_node_rbac(self, ns: str, name: str) -> None:
        return None

    async def annotate_pod(self, ns: str, name: str, annotations: Mapping[str, str]) -> None:
        return None

    async def read_network_policy(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def read_pdb(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def patch_pdb(self, ns: str, name: str, patch: Mapping[str, Any]) -> None:
        return None

    async def delete_pdb(self, ns: str, name: str) -> bool:
        return False

    async def post_event(
        self, obj: Mapping[str, Any], *, kind: str, reason: str, message: str
    ) -> None:
        return None


class Nodes:
    """Nodes whose summary reports `generation`."""

    def __init__(self, generation: int = 0) -> None:
        self.generation = generation

    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | None]:
        return {
            n: decode_state_document(
                {"node": n, "phase": "looping", "summary": {"generation": self.generation}}
            )
            for n in ips
        }


def deps_with(nodes: Nodes, kube: Kube | None = None) -> Deps:
    return Deps(load({}), kube or Kube(), nodes, OperatorMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def loop_body(generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": OWNER.uid, "generation": generation},
        "spec": {"replicas": 3, **spec},
    }


def node_pods(spec: dict[str, Any]) -> list[PodView]:
    wanted = builders.spec_hash(parse_spec(spec), DEFAULTS)
    return [
        PodView(
            name=f"demo-{i}",
            ordinal=i,
            spec_hash=wanted,
            replicas_annotation="3",
            phase="Running",
            ready=True,
            ip=f"10.0.0.{i + 2}",
        )
        for i in range(3)
    ]


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    return next((x for x in status.get("conditions") or [] if x["type"] == kind), None)


async def one_pass(deps: Deps, body: dict[str, Any]) -> dict[str, Any]:
    changes, _ = await reconcile(deps, body, {KEY: node_pods(body["spec"])}, force_ensure=True)
    return changes


def test_which_specs_inject_a_target() -> None:
    assert parse_spec({"target": {"v": 1}}).injects_target  # converge
    assert parse_spec({"behavior": CUSTOM, "target": CLAIM}).injects_target
    assert not parse_spec({"behavior": CUSTOM}).injects_target  # no target: nothing to inject
    assert not parse_spec({"behavior": "token"}).injects_target


async def test_a_custom_behaviour_with_a_target_gets_it_injected() -> None:
    kube = Kube()
    deps = deps_with(Nodes(generation=0), kube)
    body = loop_body(generation=4, behavior=CUSTOM, target=CLAIM)
    changes, events = await reconcile(deps, body, {KEY: node_pods(body["spec"])}, force_ensure=True)
    # One node pod gets {generation, target}, as a converge node would.
    assert kube.injected == [("demo-0", {"generation": 4, "target": CLAIM})]
    assert [e.message for e in events if e.reason == "TargetInjected"] == [
        "generation 4 written to pod demo-0"
    ]
    assert changes["targetGeneration"] == 4
    assert "injectedGeneration" not in changes  # not before a node reports holding it
    assert changes["summary"] == "target 4: 0/3 nodes"
    converged = condition(changes, "Converged")
    assert converged is not None
    assert converged["reason"] == "Converging"


async def test_once_the_nodes_report_the_generation_nothing_is_injected() -> None:
    kube = Kube()
    deps = deps_with(Nodes(generation=4), kube)
    body = loop_body(generation=4, behavior=CUSTOM, target=CLAIM)
    status = await one_pass(deps, body)
    assert kube.injected == []
    assert status["injectedGeneration"] == 4
    converged = condition(status, "Converged")
    assert converged is not None
    assert (converged["status"], converged["reason"]) == (
        "True",
        "AllNodesConverged",
    )
    assert status["summary"] == "target 4: 3/3 nodes"


async def test_a_new_target_is_a_new_generation_and_a_same_one_is_not() -> None:
    kube = Kube()
    deps = deps_with(Nodes(generation=4), kube)
    body = loop_body(generation=5, behavior=CUSTOM, target={"player": "bob", "score": 50})
    body["status"] = {"targetGeneration": 4, "targetDigest": "of-the-old-target"}
    await one_pass(deps, body)
    assert kube.injected == [("demo-0", {"generation": 5, "target": body["spec"]["target"]})]


async def test_a_custom_behaviour_without_a_target_is_left_alone() -> None:
    kube = Kube()
    deps = deps_with(Nodes(generation=0), kube)
    status = await one_pass(deps, loop_body(behavior=CUSTOM))
    assert kube.injected == []
    assert status["summary"] == "custom"
    assert "targetGeneration" not in status
    assert condition(status, "Converged") is None


async def test_each_attempt_backs_off_and_goes_to_the_next_pod() -> None:
    kube = Kube(refuse=KubeError(403, "forbidden"))
    deps = deps_with(Nodes(generation=0), kube)
    body = loop_body(generation=2, target={"v": 1})
    status = await one_pass(deps, body)
    assert [pod for pod, _ in kube.injected] == ["demo-0"]  # one pod per attempt
    assert "injectedGeneration" not in status
    memo = deps.memo(KEY)
    assert memo.remembered.inject_attempts == 1
    await one_pass(deps, body)
    assert len(kube.injected) == 1  # backing off
    kube.refuse = None
    memo.remembered = replace(memo.remembered, next_injection=0.0)  # the backoff is over
    await one_pass(deps, body)
    assert [pod for pod, _ in kube.injected] == ["demo-0", "demo-1"]
    failed = deps.metrics.injections.labels("ns", "failed")._value.get()
    ok = deps.metrics.injections.labels("ns", "ok")._value.get()
    assert (failed, ok) == (1, 1)
    deps.nodes.generation = 2  # type: ignore[attr-defined]  # a node took it
    await one_pass(deps, body)
    assert len(kube.injected) == 2
    assert (memo.remembered.inject_attempts, memo.remembered.next_injection) == (0, 0.0)
