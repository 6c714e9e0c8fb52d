"""The chart's RBAC and security context judged by a real API server (local cluster)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from chart.helmchart import CHART, find_helm, render_chart
from localcluster import Cluster
from reactive_operator import builders
from reactive_operator.builders import Owner

pytestmark = pytest.mark.cluster
RELEASE = "rlrbac"


def can_i(cluster: Cluster, who: str, verb: str, resource: str, ns: str) -> bool:
    out = cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, "--as", who, check=False)
    return out.stdout.strip() == "yes"


@pytest.fixture
def installed(cluster: Cluster, namespace: str) -> Iterator[tuple[str, str, str]]:
    """The chart in namespaced mode watching a second namespace; no operator needed."""
    watched = f"{namespace}-w"[:63]
    cluster.kubectl("create", "namespace", watched)
    try:
        cluster.helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            "--set",
            f"watchNamespaces={{{watched}}}",
        )
        sa = f"system:serviceaccount:{namespace}:{RELEASE}-reactive-loop"
        yield namespace, watched, sa
    finally:
        cluster.helm("uninstall", RELEASE, "-n", namespace, check=False)
        cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


def test_operator_rbac_is_scoped_to_the_watched_namespace(
    cluster: Cluster, installed: tuple[str, str, str]
) -> None:
    release_ns, watched, sa = installed
    for verb, resource in (
        ("create", "pods"),
        ("patch", "pods"),
        ("watch", "pods"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "poddisruptionbudgets.policy"),
        ("patch", "poddisruptionbudgets.policy"),
        ("delete", "poddisruptionbudgets.policy"),
        ("patch", "reactiveloops.reactive-loop.dev/status"),
        ("create", "secrets"),
    ):
        assert can_i(cluster, sa, verb, resource, watched), (verb, resource)
    assert can_i(cluster, sa, "update", "leases.coordination.k8s.io", release_ns)
    # Nothing outside the watched namespace, no secret listing, no cluster writes.
    assert not can_i(cluster, sa, "create", "pods", release_ns)
    assert not can_i(cluster, sa, "create", "pods", "kube-system")
    # Secrets: create only, never read or changed (issue 11 §4).
    for verb in ("get", "list", "watch", "patch", "update", "delete"):
        assert not can_i(cluster, sa, verb, "secrets", watched), verb
    assert not can_i(cluster, sa, "create", "clusterroles.rbac.authorization.k8s.io", watched)
    assert not can_i(cluster, sa, "update", "leases.coordination.k8s.io", watched)


def test_cluster_wide_mode_reads_no_secret(cluster: Cluster, namespace: str) -> None:
    """Cluster-wide, the operator may create a loop's Secret in any namespace and
    read, list or change none (docs/operator.md, "Cluster-wide mode and Secrets")."""
    release = f"rlcw{secrets.token_hex(2)}"
    cluster.helm(
        "install", release, str(CHART), "-n", namespace, "--set", "node.podPolicy.enabled=false"
    )
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-reactive-loop"
        for ns in (namespace, "default", "kube-system"):
            assert can_i(cluster, sa, "create", "secrets", ns), ns
            assert can_i(cluster, sa, "patch", "pods", ns), ns  # the inject annotation
            for verb in ("get", "list", "watch", "patch", "update", "delete"):
                assert not can_i(cluster, sa, verb, "secrets", ns), (verb, ns)
        out = cluster.kubectl("get", "secrets", "-A", "--as", sa, check=False)
        assert out.returncode != 0
        assert "forbidden" in out.stderr.lower(), out.stderr
    finally:
        cluster.helm("uninstall", release, "-n", namespace, check=False)


def test_operator_may_create_the_node_role_it_grants(
    cluster: Cluster, installed: tuple[str, str, str]
) -> None:
    # The API server refuses a Role granting more than its creator holds
    # (escalation rule): creating the node's Role as the operator proves the
    # chart gives it enough.
    _, watched, sa = installed
    role = builders.role(Owner(name="demo", namespace=watched, uid="uid-1"), 0)
    role["metadata"].pop("ownerReferences", None)  # the owner does not exist here
    out = cluster.kubectl(
        "create", "-f", "-", "--as", sa, "-o", "name", input=json.dumps(role), check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"role.rbac.authorization.k8s.io/{role['metadata']['name']}"


def test_restricted_pod_security_admits_the_operator_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    manifests = render_chart(find_helm(), namespace=namespace, release=f"r{secrets.token_hex(2)}")
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-template", "namespace": namespace},
        "spec": {**deployment["spec"]["template"]["spec"], "serviceAccountName": "default"},
    }
    ok = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False
    )
    assert ok.returncode == 0, ok.stderr
    # The same pod with privilege escalation allowed is refused: the check can fail.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    bad = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False
    )
    assert bad.returncode != 0
    assert "allowPrivilegeEscalation" in bad.stderr
