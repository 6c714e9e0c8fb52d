"""examples/custom and examples/sidecar against the real API server of the
local cluster: the CRD (schema and CEL rules) accepts them, the operator's
model reads them back, and the node pod the operator would make of each is a
valid Pod that Pod Security `restricted` admits (server-side dry run: no pod
runs here; they run on kind, tests/kind/test_examples.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster
from reactive_node.core import contract as c
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)


def load(path: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / path).read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("path", ["custom/loop.yaml", "sidecar/loop.yaml"])
def test_the_example_is_a_valid_loop_whose_pods_are_admitted(
    cluster: Cluster, crd: str, namespace: str, path: str
) -> None:
    cluster.kubectl("label", "namespace", namespace, *RESTRICTED)
    manifest = load(path)
    name = manifest["metadata"]["name"]
    cluster.apply(yaml.safe_dump(manifest), namespace)
    stored = cluster.get("rloop", name, namespace)
    spec = parse_spec(stored["spec"])  # what the operator reads
    assert spec.injects_target
    (sidecar,) = spec.sidecars
    assert {"name": "decision", "mountPath": c.DECISION_MOUNT_DIR, "readOnly": True} in sidecar[
        "volumeMounts"
    ]
    owner = Owner(name, namespace, "uid-1")
    account = builders.service_account(owner, 0)
    account["metadata"].pop("ownerReferences", None)
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(account))
    pod = builders.pod(owner, spec, 0, NodeDefaults("reactive-loop-node:0.1.0"))
    pod["metadata"].pop("ownerReferences", None)
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "violate" not in proc.stderr  # no Pod Security warning either


def test_the_custom_example_names_its_image_and_class() -> None:
    spec = parse_spec(load("custom/loop.yaml")["spec"])
    assert spec.behavior == "python:leaderboard:Leaderboard"
    assert spec.image is not None
    assert spec.image.startswith("reactive-loop-leaderboard:")
    assert spec.is_custom
    dockerfile = (EXAMPLES / "custom" / "Dockerfile").read_text()
    assert "FROM ${NODE_IMAGE}:${NODE_TAG}" in dockerfile
    assert "ENV PYTHONPATH=/opt/custom" in dockerfile
    assert (EXAMPLES / "custom" / "leaderboard.py").is_file()


def test_make_demo_applies_none_of_them() -> None:
    # `make demo` runs `kubectl apply -f examples/` (top level only): the
    # custom example needs an image built first, so it lives in a subdirectory.
    top = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert "loop.yaml" not in top
    assert (EXAMPLES / "custom" / "loop.yaml").is_file()
    assert (EXAMPLES / "sidecar" / "loop.yaml").is_file()
