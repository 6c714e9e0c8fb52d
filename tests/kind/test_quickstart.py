"""The README's quickstart on kind: `make kind-up deploy demo`, then what it shows.

By the time these run, the Makefile has built the images, made the cluster of
kind-config.yaml, installed the chart with helm and applied examples/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kind.conftest import IMAGE_TAG, RELEASE, RELEASE_NAMESPACE
from kind.kindcluster import REPO, Kind, condition

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def example_loops() -> list[dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    return [d for d in docs if d and d.get("kind") == "ReactiveLoop"]


def behaviour_condition(loop: dict[str, Any]) -> str:
    return "TokenHealthy" if loop["spec"].get("behavior") == "token" else "Converged"


def test_the_cluster_is_the_one_of_kind_config(kind: Kind) -> None:
    config = yaml.safe_load(Path(REPO / "kind-config.yaml").read_text())
    roles = sorted(n["role"] for n in config["nodes"])
    assert len(kind.nodes("control-plane")) == roles.count("control-plane") == 1
    assert len(kind.nodes("worker")) == roles.count("worker") == 2
    for node in kind.get("nodes")["items"]:
        assert condition(node, "Ready") == "True", node["metadata"]["name"]


def test_every_example_loop_is_ready_and_converged_or_token_healthy(kind: Kind) -> None:
    loops = example_loops()
    assert len(loops) >= 2
    for loop in loops:
        name = loop["metadata"]["name"]
        wanted = behaviour_condition(loop)

        replicas = loop["spec"]["replicas"]

        # A node's last round trip may have timed out at any one instant (a
        # wait, under load); the loop must reach all looping within the deadline.
        def healthy(
            name: str = name, wanted: str = wanted, replicas: int = replicas
        ) -> dict[str, Any] | None:
            obj = kind.get("rloop", name, "-n", "default")
            ok = condition(obj, "Ready") == "True" and condition(obj, wanted) == "True"
            return obj if ok and obj["status"].get("looping") == replicas else None

        obj = kind.wait_for(healthy, timeout=180, what=f"{name} Ready, {wanted}, all looping")
        status = obj["status"]
        assert status["readyReplicas"] == loop["spec"]["replicas"]
        assert status["looping"] == loop["spec"]["replicas"]
        assert condition(obj, "Degraded") == "False"
    table = kind.kubectl("get", "rloop", "-n", "default").stdout
    for loop in loops:
        assert loop["metadata"]["name"] in table


def test_each_loops_pods_are_spread_over_both_workers(kind: Kind) -> None:
    workers = set(kind.nodes("worker"))
    for loop in example_loops():
        name = loop["metadata"]["name"]
        pods = kind.get("pods", "-n", "default", "-l", f"reactive-loop.dev/loop={name}")["items"]
        assert len(pods) == loop["spec"]["replicas"]
        placed = {p["spec"]["nodeName"] for p in pods}
        assert placed == workers, f"{name}: pods on {sorted(placed)}"


def test_operator_runs_the_chart_image_values_with_only_repository_and_tag_set(
    kind: Kind,
) -> None:
    values = yaml.safe_load(
        kind.helm("get", "values", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "yaml").stdout
    )
    assert values == {
        "operator": {"image": {"repository": "reactive-loop-operator", "tag": IMAGE_TAG}},
        "node": {"image": {"repository": "reactive-loop-node", "tag": IMAGE_TAG}},
    }
    deploy = kind.get("deployment", RELEASE, "-n", RELEASE_NAMESPACE)
    assert deploy["status"].get("readyReplicas", 0) >= 1
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"reactive-loop-operator:{IMAGE_TAG}"
    pods = kind.get("pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    assert pods, "no operator pod"
    for pod in pods:
        assert condition(pod, "Ready") == "True"
        sc = pod["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        image_id = pod["status"]["containerStatuses"][0]["imageID"]
        assert image_id, "the kubelet ran no image"
