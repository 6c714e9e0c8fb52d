"""examples/policies/: the example ValidatingAdmissionPolicy that limits node
images to a registry prefix, enforced by the real API server of the local
cluster (issue 11 §4, "Custom images and behaviours").

The policy is applied under a name of its own and bound to this test's
namespace only, so that no other test sharing the cluster is affected; its
rules are the file's, unchanged.
"""

from __future__ import annotations

import copy
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policies" / "node-image-registry.yaml"
CRD = ROOT / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"
PREFIX = "registry.example.com/reactive-loop/"


def loop(name: str, image: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 2, "behavior": "converge", "target": {"v": 1}}
    if image is not None:
        spec["image"] = image
    return {
        "apiVersion": "reactive-loop.dev/v1alpha1",
        "kind": "ReactiveLoop",
        "metadata": {"name": name},
        "spec": spec,
    }


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(POLICY.read_text()) if d]


def test_the_example_is_a_policy_and_its_binding_on_reactiveloops() -> None:
    policy, binding = documents()
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["reactive-loop.dev"]
    assert rule["resources"] == ["reactiveloops"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    prefix = next(v for v in policy["spec"]["variables"] if v["name"] == "prefix")
    assert prefix["expression"] == f"'{PREFIX}'"


@pytest.fixture
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/reactiveloops.reactive-loop.dev",
        "--timeout=60s",
    )


def test_make_demo_does_not_apply_the_policies(cluster: Cluster, crd: None, namespace: str) -> None:
    """`make demo` runs `kubectl apply -f examples/`, which does not recurse:
    the policy must stay in a subdirectory. Checked with the real kubectl and
    API server in dry-run mode (nothing is stored), against `--recursive`."""
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "apply -f examples/\n" in demo
    assert "--recursive" not in demo
    assert " -R" not in demo

    def applied(*extra: str) -> list[str]:
        done = cluster.kubectl(
            "apply", "--dry-run=server", "-o", "name", "-n", namespace,
            "-f", str(ROOT / "examples"), *extra,
        )  # fmt: skip
        return done.stdout.split()

    names = applied()
    assert names, "make demo applies nothing"
    assert all(n.startswith("reactiveloop.reactive-loop.dev/") for n in names), names
    recursive = applied("--recursive")  # the control: what a recursive apply would add
    assert any("validatingadmissionpolicy" in n for n in recursive), recursive


@pytest.fixture
def policy(cluster: Cluster, crd: None, namespace: str) -> Iterator[str]:
    """The example policy, renamed and bound to `namespace` only; its name."""
    policy, binding = (copy.deepcopy(d) for d in documents())
    name = f"rl-image-{secrets.token_hex(3)}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = name
    binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    cluster.apply(yaml.safe_dump_all([policy, binding]))
    try:
        yield name
    finally:
        cluster.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
            check=False,
        )  # fmt: skip


def create(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], *, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["create", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=yaml.safe_dump(manifest), check=False)


def test_only_images_under_the_prefix_are_accepted(
    cluster: Cluster, namespace: str, policy: str
) -> None:
    foreign = loop("foreign", "docker.io/attacker/node:1")
    # A new policy takes the API server a moment to load: wait until it acts.
    cluster.wait_for(
        lambda: create(cluster, namespace, foreign, dry_run=True).returncode != 0,
        timeout=60,
        what="the example policy refuses a foreign image",
    )
    refused = create(cluster, namespace, foreign)
    assert refused.returncode != 0
    assert "spec.image docker.io/attacker/node:1 is not allowed" in refused.stderr
    assert PREFIX in refused.stderr
    assert policy in refused.stderr
    assert cluster.get("reactiveloop", "foreign", namespace) is None

    lookalike = create(cluster, namespace, loop("lookalike", "registry.example.com.evil.test/x:1"))
    assert lookalike.returncode != 0, "a host that merely starts like the registry passed"

    allowed = create(cluster, namespace, loop("allowed", PREFIX + "node:0.1.0"))
    assert allowed.returncode == 0, allowed.stderr
    default = create(cluster, namespace, loop("default", None))
    assert default.returncode == 0, default.stderr  # the operator's default image

    # UPDATE: an accepted loop cannot be moved to a foreign image.
    patched = cluster.kubectl(
        "patch", "rloop", "allowed", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"image":"docker.io/attacker/node:1"}}',
        check=False,
    )  # fmt: skip
    assert patched.returncode != 0
    assert "is not allowed" in patched.stderr
    got = cluster.get("reactiveloop", "allowed", namespace)
    assert got is not None
    assert got["spec"]["image"] == PREFIX + "node:0.1.0"


def test_the_policy_does_not_reach_other_namespaces(
    cluster: Cluster, namespace: str, policy: str
) -> None:
    """The binding of this test is limited to its namespace (the shipped one is
    cluster-wide): another namespace still accepts any image."""
    foreign = loop("foreign", "docker.io/attacker/node:1")
    cluster.wait_for(
        lambda: create(cluster, namespace, foreign, dry_run=True).returncode != 0,
        timeout=60,
        what="the example policy refuses a foreign image",
    )
    other = f"t-policy-other-{secrets.token_hex(2)}"
    cluster.create_namespace(other)
    try:
        accepted = create(cluster, other, foreign, dry_run=True)
        assert accepted.returncode == 0, accepted.stderr
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
