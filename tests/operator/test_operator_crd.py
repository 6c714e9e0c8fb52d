"""The ReactiveLoop CRD: consistent with the operator's model, and enforced by a
real API server (kubectl apply of invalid resources fails with a clear message)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster
from reactive_operator.spec import MAX_REPLICAS, parse_spec

CRD = (
    Path(__file__).resolve().parents[2] / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"
)


def crd() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    assert isinstance(doc, dict)
    return doc


def spec_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def test_names_subresources_and_columns() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == "reactiveloops.reactive-loop.dev"
    assert set(doc["spec"]["names"]["shortNames"]) == {"rloop", "rl"}
    (version,) = doc["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Replicas", "Ready", "Looping", "Waiting", "Summary", "Age"} <= columns


def test_schema_defaults_equal_the_model_defaults() -> None:
    props = spec_schema()["properties"]
    model = parse_spec({})
    assert props["replicas"]["default"] == model.replicas
    assert props["replicas"]["maximum"] == MAX_REPLICAS
    assert props["behavior"]["default"] == model.behavior
    assert props["topology"]["default"] == model.topology
    assert set(props["topology"]["enum"]) == {"ring", "mesh", "star"}
    loop = props["loop"]["properties"]
    assert loop["interval"]["default"] == model.loop.interval
    assert loop["timeout"]["default"] == model.loop.timeout
    assert loop["maxBackoff"]["default"] == model.loop.max_backoff
    assert loop["ringSkip"]["default"] == model.loop.ring_skip
    token = props["token"]["properties"]
    assert token["holdSeconds"]["default"] == model.token.hold_seconds
    assert token["lossTimeoutSeconds"]["default"] == model.token.loss_timeout_seconds


def test_every_spec_field_has_a_description_for_kubectl_explain() -> None:
    for name, prop in spec_schema()["properties"].items():
        assert prop.get("description"), f"spec.{name} has no description"


# --- against the real API server ---------------------------------------------

VALID: dict[str, Any] = {
    "apiVersion": "reactive-loop.dev/v1alpha1",
    "kind": "ReactiveLoop",
    "metadata": {"name": "valid"},
    "spec": {"replicas": 2, "target": {"v": 1}},
}


def variant(name: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    if doc["spec"].get("behavior") == "token":
        doc["spec"].pop("target")
    return doc


INVALID = [
    (variant("tok", behavior="token", topology="mesh"), "needs topology 'ring'"),
    (variant("slow", loop={"interval": 1, "timeout": 2}), "loop.timeout must be smaller"),
    (variant("zero", replicas=0), "spec.replicas"),
    (variant("many", replicas=5000), "spec.replicas"),
    (variant("tree", topology="tree"), 'Unsupported value: "tree"'),
    (variant("wide", target={f"k{i}": i for i in range(40)}), "spec.target"),
    (variant("py", behavior="python:not a path"), "spec.behavior"),
    (
        variant("hold", behavior="token", token={"holdSeconds": 9, "lossTimeoutSeconds": 5}),
        "lossTimeoutSeconds must be greater",
    ),
    (
        variant("hook", behavior="token", token={"webhook": "ftp://x"}),
        "spec.token.webhook",
    ),
    (variant("x" * 41), "at most 40 characters"),
]


@pytest.mark.parametrize(
    ("manifest", "message"), INVALID, ids=[m["metadata"]["name"][:8] for m, _ in INVALID]
)
def test_invalid_resources_are_rejected(
    cluster: Cluster, crd: str, namespace: str, manifest: dict[str, Any], message: str
) -> None:
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert proc.returncode != 0, f"accepted: {manifest['spec']}"
    assert message in proc.stderr, proc.stderr
    assert cluster.get("reactiveloop", manifest["metadata"]["name"], namespace) is None


def test_valid_resource_gets_defaults_and_behavior_is_immutable(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    cluster.apply(yaml.safe_dump(VALID), namespace)
    obj = cluster.get("rloop", "valid", namespace)
    assert obj["spec"]["topology"] == "ring"
    assert obj["spec"]["loop"] == {"interval": 1, "timeout": 0.5, "maxBackoff": 10, "ringSkip": 2}
    assert obj["spec"]["auth"] == {"hmac": False}
    proc = cluster.kubectl(
        "patch",
        "rl",
        "valid",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"behavior":"token"}}',
        check=False,
    )
    assert proc.returncode != 0
    assert "immutable" in proc.stderr


def test_kubectl_explain_describes_fields(cluster: Cluster, crd: str) -> None:
    proc = cluster.kubectl("explain", "reactiveloop.spec.loop.timeout")
    assert "below interval" in proc.stdout
    proc = cluster.kubectl("explain", "rloop.spec.behavior")
    assert "python:package.module:Class" in proc.stdout
