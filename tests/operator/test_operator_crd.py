"""The ReactiveLoop CRD: consistent with the operator's model, and enforced by a
real API server (kubectl apply of invalid resources fails with a clear message)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from localcluster import Cluster
from reactive_node.core import contract
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.config import OperatorConfig
from reactive_operator.main import kopf_settings
from reactive_operator.spec import SpecError, parse_spec

CRD = (
    Path(__file__).resolve().parents[2] / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"
)


def as_body(raw: dict[str, Any]) -> kopf.Body:
    """A kopf Body of a plain dict (what kopf gets from the API)."""
    return kopf.Body(raw)  # type: ignore[arg-type]


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
    assert props["replicas"]["maximum"] == contract.MAX_REPLICAS
    assert props["behavior"]["default"] == model.behavior
    assert props["topology"]["default"] == model.topology
    assert tuple(props["topology"]["enum"]) == contract.TOPOLOGIES
    loop = props["loop"]["properties"]
    assert loop["interval"]["default"] == model.loop.interval
    assert loop["timeout"]["default"] == model.loop.timeout
    assert loop["maxBackoff"]["default"] == model.loop.max_backoff
    assert loop["ringSkip"]["default"] == model.loop.ring_skip
    token = props["token"]["properties"]
    assert token["holdSeconds"]["default"] == model.token.hold_seconds
    assert token["lossTimeoutSeconds"]["default"] == model.token.loss_timeout_seconds
    budget = props["disruptionBudget"]["properties"]
    assert budget["enabled"]["default"] == model.disruption_budget.enabled
    assert budget["maxUnavailable"]["default"] == model.disruption_budget.max_unavailable
    assert props["suspend"]["default"] == model.suspend


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
    (variant("tok", behavior="token", topology="mesh"), "spec.topology must be 'ring'"),
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
    (
        variant("many-pull", imagePullSecrets=[{"name": f"s{i}"} for i in range(17)]),
        "spec.imagePullSecrets",
    ),
    (variant("many-lbl", podLabels={f"k{i}": "v" for i in range(33)}), "spec.podLabels"),
    (variant("long-lbl", podLabels={"k": "v" * 64}), "spec.podLabels.k"),
    (
        variant("many-vol", volumes=[{"name": f"v{i}", "emptyDir": {}} for i in range(17)]),
        "spec.volumes",
    ),
    (
        variant("fat-vol", volumes=[{"name": "v", "emptyDir": {}, "hostPath": {"path": "/"}}]),
        "spec.volumes[0]",
    ),
    (
        variant("dup-side", sidecars=[{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]),
        "spec.sidecars[1]",
    ),
    (variant("no-image", sidecars=[{"name": "a"}]), "spec.sidecars[0].image"),
    (variant("fat-aff", affinity={"a": {}, "b": {}, "c": {}, "d": {}}), "spec.affinity"),
    (
        variant(
            "spread",
            topologySpreadConstraints=[
                {"maxSkew": 1, "topologyKey": "k", "whenUnsatisfiable": "Maybe"}
            ],
        ),
        "spec.topologySpreadConstraints[0].whenUnsatisfiable",
    ),
    (variant("suspend", suspend="yes"), "spec.suspend"),
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


# --- rejection messages a user reads right -----------------------------------

#: (manifest, the field the error must name, words of the message).
NAMED = [
    (variant("9lives"), "metadata.name", "DNS-1035 label"),
    (variant("x" * 41), "metadata.name", "at most 40 characters"),
    (variant("tok", behavior="token", topology="mesh"), "spec.topology", "must be 'ring'"),
    (variant("slow", loop={"interval": 1, "timeout": 2}), "spec.loop.timeout", "smaller than"),
    (
        variant("back", loop={"interval": 2, "timeout": 1, "maxBackoff": 1}),
        "spec.loop.maxBackoff",
        "at least",
    ),
    (variant("py", behavior="python:not a path"), "spec.behavior", "python:package.module:Class"),
    (
        variant("hook", behavior="token", token={"webhook": "ftp://x"}),
        "spec.token.webhook",
        "http://",
    ),
    (
        variant("hold", behavior="token", token={"holdSeconds": 9, "lossTimeoutSeconds": 5}),
        "spec.token.lossTimeoutSeconds",
        "greater than spec.token.holdSeconds",
    ),
    (variant("tgt", behavior="token", target={"a": 1}), "spec.target", "only used by"),
    (variant("res", resources={"limits": {"memory": "lots"}}), "spec.resources.limits", "quantity"),
    (
        variant("lbl", podLabels={"reactive-loop.dev/loop": "other"}),
        "spec.podLabels",
        "operator's keys",
    ),
    (
        variant("ann", podAnnotations={"reactive-loop.dev/suspended": "false"}),
        "spec.podAnnotations",
        "operator's keys",
    ),
    (variant("side", sidecars=[{"name": "node", "image": "x"}]), "spec.sidecars[0]", "node's own"),
    (variant("vol", volumes=[{"name": "tmp", "emptyDir": {}}]), "spec.volumes[0]", "node's own"),
    (variant("prio", priorityClassName="High_Prio"), "spec.priorityClassName", "DNS subdomain"),
    (
        variant("pdb0", disruptionBudget={"maxUnavailable": 0}),
        "spec.disruptionBudget.maxUnavailable",
        "a count 1..200 or a percentage",
    ),
    (
        variant("pdbp", disruptionBudget={"maxUnavailable": "150%"}),
        "spec.disruptionBudget.maxUnavailable",
        "a count 1..200 or a percentage",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "field", "words"), NAMED, ids=[m["metadata"]["name"][:8] for m, _, _ in NAMED]
)
def test_rejections_name_the_field_never_nil_or_a_regex(
    cluster: Cluster, crd: str, namespace: str, manifest: dict[str, Any], field: str, words: str
) -> None:
    if manifest["metadata"]["name"] == "tgt":
        manifest["spec"]["target"] = {"a": 1}  # variant() drops it for token loops
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert proc.returncode != 0, f"accepted: {manifest}"
    error = proc.stderr
    assert f"{field}" in error, error
    assert words in error, error
    assert "<nil>" not in error, error
    assert "should match" not in error, error  # a `pattern`'s message quotes its regex
    assert not re.search(r"\^\(|\)\$'", error), error


def test_the_printer_columns_show_degraded_without_wide() -> None:
    (version,) = crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Degraded"].get("priority", 0) == 0
    assert columns["Degraded"]["jsonPath"] == '.status.conditions[?(@.type=="Degraded")].status'
    assert columns["Reason"]["priority"] == 1
    assert "target N: H/R nodes" in columns["Summary"]["description"]


# --- a spec near the API's limits ---------------------------------------------

#: Annotations of one object share this budget (the API server refuses more).
ANNOTATIONS_BUDGET = 256 * 1024


def large_loop(name: str) -> dict[str, Any]:
    """A converge loop whose spec alone is larger than the annotation budget (the
    API server accepts it: objects may be up to about 1.5 MiB)."""
    doc = copy.deepcopy(VALID)
    doc["metadata"]["name"] = name
    doc["spec"]["target"] = {f"k{i}": "v" * 10_000 for i in range(32)}
    return doc


def kopf_bookkeeping(storage: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The merge patch kopf writes after handling `body` with `storage`."""
    patch = kopf.Patch()
    essence = storage.build(body=as_body(body))
    storage.store(body=as_body(body), patch=patch, essence=essence)
    return dict(patch)


def test_a_spec_near_the_limits_never_breaks_kopfs_bookkeeping(
    cluster: Cluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    manifest = large_loop("big")
    assert len(json.dumps(manifest["spec"])) > ANNOTATIONS_BUDGET
    # `create`, not client-side `apply`: kubectl's own last-applied annotation
    # would copy the spec (server-side apply does not).
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    body = cluster.get("rloop", "big", namespace)
    settings = kopf_settings(OperatorConfig())

    # The operator's diff base: a digest, whatever the spec's size; the API takes it.
    patch = kopf_bookkeeping(settings.persistence.diffbase_storage, body)
    written = patch["metadata"]["annotations"]
    assert written, patch
    assert all(k.startswith("kopf.reactive-loop.dev/") for k in written)
    assert sum(len(k) + len(v) for k, v in written.items()) < 1024
    cluster.kubectl(
        "patch", "rloop", "big", "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    after = cluster.get("rloop", "big", namespace)
    annotations = after["metadata"]["annotations"]
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 1024
    assert not any("v" * 1000 in v for v in annotations.values()), (
        "a kopf annotation holds the spec"
    )
    # The same object seen again: kopf finds no change of spec (no spurious update).
    storage = settings.persistence.diffbase_storage
    assert storage.fetch(body=as_body(after)) == storage.build(body=as_body(after))

    # What kopf's default diff base would have written: refused, naming annotations.
    default = kopf_bookkeeping(
        kopf.AnnotationsDiffBaseStorage(prefix="kopf.reactive-loop.dev"), body
    )
    patch_file = tmp_path / "default-diffbase.json"
    patch_file.write_text(json.dumps(default))
    proc = cluster.kubectl(
        "patch",
        "rloop",
        "big",
        "-n",
        namespace,
        "--type=merge",
        f"--patch-file={patch_file}",
        check=False,
    )
    assert proc.returncode != 0
    assert "metadata.annotations" in proc.stderr, proc.stderr

    # What the user is told instead (Degraded InvalidSpec and a Warning event) names spec.target.
    with pytest.raises(SpecError, match=r"spec\.target") as caught:
        parse_spec(after["spec"])
    assert "annotations" not in str(caught.value)


# --- the pod template fields, the PodDisruptionBudget, suspend ----------------------

TEMPLATE: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry"}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        }
    ],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]
                    },
                }
            ]
        }
    },
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "loops", "effect": "NoSchedule"}
    ],
    "priorityClassName": "system-cluster-critical",
    "podLabels": {"team": "a"},
    "podAnnotations": {"example.com/owner": "team a"},
    "volumes": [{"name": "shared", "emptyDir": {"sizeLimit": "1Mi"}}],
    "sidecars": [
        {
            "name": "watcher",
            "image": "busybox:1.36",
            "command": ["sleep", "infinity"],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }
    ],
    "disruptionBudget": {"maxUnavailable": "34%"},
    "suspend": True,
}


def test_the_template_fields_are_accepted_and_the_new_defaults_applied(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    cluster.apply(yaml.safe_dump(variant("full", **TEMPLATE)), namespace)
    stored = cluster.get("rloop", "full", namespace)["spec"]
    for key, value in TEMPLATE.items():
        if key != "disruptionBudget":
            assert stored[key] == value, key
    assert stored["disruptionBudget"] == {"enabled": True, "maxUnavailable": "34%"}
    spec = parse_spec(stored)  # the operator reads what the API server kept
    assert spec.suspend is True
    assert spec.sidecars == TEMPLATE["sidecars"]
    cluster.apply(yaml.safe_dump(variant("plain")), namespace)
    plain = cluster.get("rloop", "plain", namespace)["spec"]
    assert plain["suspend"] is False
    assert plain["disruptionBudget"] == {"enabled": True, "maxUnavailable": 1}


def without_owner(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"].pop("ownerReferences", None)  # the owner does not exist here
    return manifest


def test_the_disruption_budget_and_a_pod_with_every_field_are_valid_objects(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    owner = Owner("full", namespace, "uid-1")
    spec = parse_spec(TEMPLATE)
    pdb = builders.pod_disruption_budget(owner, spec)
    assert pdb is not None
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(without_owner(pdb)))
    stored = cluster.get("poddisruptionbudget", "full", namespace)
    assert stored["spec"]["maxUnavailable"] == "34%"
    assert stored["spec"]["selector"] == {"matchLabels": builders.selector_labels("full")}
    # The pod itself, as the operator would create it: the API server validates
    # the sidecar, volumes, spread, affinity... (server-side dry run, nothing runs).
    account = without_owner(builders.service_account(owner, 0))
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(account))
    pod = without_owner(builders.pod(owner, spec, 0, NodeDefaults("reactive-loop-node:test")))
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_crd_bounds_equal_the_contract() -> None:
    """The chart's CRD repeats the contract's names and limits as literals."""
    props = spec_schema()["properties"]
    assert props["replicas"]["minimum"] == contract.MIN_REPLICAS
    assert props["replicas"]["maximum"] == contract.MAX_REPLICAS
    assert tuple(props["topology"]["enum"]) == contract.TOPOLOGIES
    rules = " ".join(r["rule"] for r in props["behavior"].get("x-kubernetes-validations", []))
    accepted = "|".join(contract.BEHAVIORS) + "|" + contract.CUSTOM_BEHAVIOR_PREFIX
    assert f"^({accepted}" in rules
