"""examples/custom and examples/sidecar on kind, run by the session's operator.

`custom_image` builds examples/custom/Dockerfile on top of the node image
`make deploy` built and loaded (`reactive-loop-node:$IMAGE_TAG`) and loads the
result into kind, as docs/custom-behavior.md tells a user to. The loops are
applied in the session operator's fenced, PSS `restricted` namespace
(conftest `operator`, `loops`): what happens there is that operator's doing.

What is checked is what a user sees: the custom behaviour's target is injected
and spread (status, the nodes' own annotations), and the sidecars, which only
read the node's decision file from the pod's shared `decision` volume, print
each new decision (`kubectl logs`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kind.conftest import IMAGE_TAG
from kind.e2e import EXAMPLES, Loops
from kind.kindcluster import Kind, KindError, tool

CUSTOM_IMAGE = f"reactive-loop-leaderboard:{IMAGE_TAG}"
NODE_IMAGE = f"reactive-loop-node:{IMAGE_TAG}"
STATE_ANNOTATION = "reactive-loop.dev/state"
DECISION_FILE = "/var/run/reactive-loop/decision/state.json"


def run(*argv: str, timeout: float = 900) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise KindError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def custom_image(kind: Kind) -> str:
    """examples/custom built FROM the node image in kind, and loaded into kind."""
    docker = tool("docker")
    # As the Makefile builds: a daemon without a default bridge builds on the host network.
    bridge = subprocess.run(
        [docker, "network", "inspect", "bridge"], capture_output=True, timeout=30, check=False
    )
    network = [] if bridge.returncode == 0 else ["--network", "host"]
    run(
        docker, "build", *network,
        "--build-arg", f"NODE_TAG={IMAGE_TAG}",
        "-t", CUSTOM_IMAGE,
        str(EXAMPLES / "custom"),
    )  # fmt: skip
    run(tool("kind"), "load", "docker-image", "--name", kind.name, CUSTOM_IMAGE)
    return CUSTOM_IMAGE


def manifest(path: str, image: str, *, node_image: bool) -> dict[str, Any]:
    """An example's ReactiveLoop with this run's image tags (the files say 0.1.0)."""
    obj = yaml.safe_load((EXAMPLES / path).read_text())
    assert isinstance(obj, dict)
    if node_image:
        obj["spec"]["image"] = image
    for sidecar in obj["spec"]["sidecars"]:
        sidecar["image"] = image
    return obj


def settled(loops: Loops, name: str, replicas: int, generation: int) -> dict[str, Any] | None:
    """The loop once `replicas` nodes loop and all hold target `generation`."""
    obj = loops.get(name)
    status = obj.get("status") or {}
    converged = next((c for c in status.get("conditions") or [] if c["type"] == "Converged"), None)
    ok = (
        status.get("looping") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("targetGeneration") == generation
        and status.get("convergedGeneration") == generation
        and converged is not None
        and converged["status"] == "True"
    )
    return obj if ok else None


def node_states(kind: Kind, loops: Loops, name: str) -> list[dict[str, Any]]:
    """Each node's state as it keeps it: its own pod's annotation."""
    return [json.loads(p["metadata"]["annotations"][STATE_ANNOTATION]) for p in loops.pods(name)]


def logs(kind: Kind, namespace: str, pod: str, container: str) -> str:
    return kind.kubectl("logs", "-n", namespace, pod, "-c", container).stdout


def every_sidecar_printed(
    kind: Kind, loops: Loops, name: str, container: str, wanted: Callable[[str], bool]
) -> bool:
    pods = [p["metadata"]["name"] for p in loops.pods(name)]
    return bool(pods) and all(wanted(logs(kind, loops.namespace, pod, container)) for pod in pods)


def test_the_custom_behaviour_example_takes_its_targets(
    kind: Kind, loops: Loops, custom_image: str
) -> None:
    name = loops.apply(manifest("custom/loop.yaml", custom_image, node_image=True))
    generation = int(loops.get(name)["metadata"]["generation"])
    obj = kind.wait_for(
        lambda: settled(loops, name, 3, generation),
        timeout=240,
        what="the leaderboard's 3 nodes looping and holding the first target",
    )
    assert obj["status"]["summary"] == f"target {generation}: 3/3 nodes"
    pods = loops.pods(name)
    assert all(p["spec"]["containers"][0]["image"] == custom_image for p in pods)
    ada = {"player": "ada", "score": 10}
    assert [(s["generation"], s["best"]) for s in node_states(kind, loops, name)] == [
        (generation, ada)
    ] * 3

    # A better claim leads; a worse one after it moves the generation only.
    grace = {"player": "grace", "score": 99}
    better = loops.patch(name, {"target": grace})
    kind.wait_for(lambda: settled(loops, name, 3, better), timeout=120, what="grace injected")
    worse = loops.patch(name, {"target": {"player": "bob", "score": 5}})
    kind.wait_for(lambda: settled(loops, name, 3, worse), timeout=120, what="bob injected")
    assert [(s["generation"], s["best"]) for s in node_states(kind, loops, name)] == [
        (worse, grace)
    ] * 3
    events = [e["reason"] for e in loops.events(name)]
    assert "TargetInjected" in events

    # Every node's sidecar saw the leader change, from the decision file alone.
    line = '"target":{"player":"grace","score":99}'
    kind.wait_for(
        lambda: every_sidecar_printed(kind, loops, name, "watcher", lambda text: line in text),
        timeout=60,
        what="every watcher sidecar printing grace as the leader",
    )
    first = loops.pods(name)[0]["metadata"]["name"]
    printed = logs(kind, loops.namespace, first, "watcher")
    assert f'"generation":{worse}' in printed
    assert '"target":{"player":"ada","score":10}' in printed  # the first decision, too


def test_the_sidecar_example_reacts_to_a_new_target(kind: Kind, loops: Loops) -> None:
    name = loops.apply(manifest("sidecar/loop.yaml", NODE_IMAGE, node_image=False))
    generation = int(loops.get(name)["metadata"]["generation"])
    kind.wait_for(
        lambda: settled(loops, name, 3, generation),
        timeout=240,
        what="3 nodes looping and converged on v1",
    )
    pod = loops.pods(name)[0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["decision"]["emptyDir"]["medium"] == "Memory"
    # The file as the node wrote it, read in the node's own container.
    doc = json.loads(
        kind.pod_exec(loops.namespace, pod["metadata"]["name"], "cat", DECISION_FILE).stdout
    )
    assert doc["decision"] == {"generation": generation, "target": {"version": "v1"}}
    assert (doc["loop"], doc["node"], doc["behavior"]) == (
        name,
        pod["metadata"]["name"],
        "converge",
    )

    new = loops.patch(name, {"target": {"version": "v2"}})
    kind.wait_for(lambda: settled(loops, name, 3, new), timeout=120, what="v2 converged")
    line = f'new target {{"version":"v2"}} (generation {new})'
    kind.wait_for(
        lambda: every_sidecar_printed(kind, loops, name, "app", lambda text: line in text),
        timeout=60,
        what="every app sidecar reacting to v2",
    )
    first = logs(kind, loops.namespace, loops.pods(name)[0]["metadata"]["name"], "app")
    assert f'new target {{"version":"v1"}} (generation {generation})' in first
    assert first.index('"version":"v1"') < first.index('"version":"v2"')
