"""`helm uninstall` leaves nothing behind, and no ReactiveLoop needs the operator to go.

A release of its own (not the session's operator), in a fresh namespace:
install, run a loop, delete it (its children are garbage-collected), uninstall
(every object labelled with the release goes, cluster-scoped RBAC included,
and the leader-election Lease with the operator pod that owned it),
then create and delete a loop while no operator runs (no finalizer, no hang).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "reactive-loop"
#: Kinds a loop's children are made of (all carry the loop's labels and owner reference).
CHILD_KINDS = "pods,services,serviceaccounts,roles,rolebindings,networkpolicies,secrets"


def _names(
    cluster: Cluster, kinds: str, selector: str, *, namespace: str | None = None
) -> list[str]:
    where = ["-n", namespace] if namespace else ["-A"]
    out = cluster.kubectl("get", kinds, *where, "-l", selector, "-o", "name").stdout
    return [line for line in out.splitlines() if line.strip()]


def _listable_kinds(cluster: Cluster) -> str:
    out = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout
    kinds = [k for k in out.split() if k and k not in ("events", "events.events.k8s.io")]
    return ",".join(kinds)


def _loop(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "reactive-loop.dev/v1alpha1",
        "kind": "ReactiveLoop",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "target": {"gc": 1}, **spec},
    }
    return yaml.safe_dump(body)


def test_helm_uninstall_leaves_nothing_behind(cluster: Cluster, crd: str, namespace: str) -> None:
    release = f"rlgc{secrets.token_hex(2)}"
    instance = f"app.kubernetes.io/instance={release}"
    cluster.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "operator.resyncSeconds=1",
        "--set",
        "operator.readinessProbe.initialDelaySeconds=0",
        "--set",
        "operator.readinessProbe.periodSeconds=1",
    )
    try:
        assert _names(cluster, "clusterroles,clusterrolebindings", instance), "no cluster RBAC?"
        name = "gc"
        cluster.apply(_loop(name, auth={"hmac": True}), namespace)

        def looping() -> Any:
            obj = cluster.get("reactiveloop", name, namespace) or {}
            return (obj.get("status") or {}).get("looping") == 2 and obj

        obj = cluster.wait_for(looping, timeout=120, what="2 nodes looping")
        assert not obj["metadata"].get("finalizers")
        # The leader-election Lease is owned by the operator pod that holds it.
        lease = cluster.get("lease", f"{release}-reactive-loop", namespace)
        assert lease is not None
        holder = lease["spec"]["holderIdentity"]
        owners = lease["metadata"].get("ownerReferences") or []
        pod = cluster.get("pod", holder, namespace)
        assert pod is not None, f"the Lease holder {holder!r} is not a pod of the release"
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("Pod", holder, pod["metadata"]["uid"])
        ]
        children = _names(
            cluster, CHILD_KINDS, f"reactive-loop.dev/loop={name}", namespace=namespace
        )
        for kind in (
            "pod/",
            "service/",
            "serviceaccount/",
            "role.",
            "rolebinding.",
            "networkpolicy.",
            "secret/",
        ):
            assert any(c.startswith(kind) for c in children), f"no {kind} child in {children}"

        cluster.kubectl("delete", "rloop", name, "-n", namespace, "--wait=true", "--timeout=30s")
        cluster.wait_for(
            lambda: (
                not _names(
                    cluster, CHILD_KINDS, f"reactive-loop.dev/loop={name}", namespace=namespace
                )
            ),
            timeout=90,
            what="the loop's children garbage-collected",
        )
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, "--wait", check=False)

    kinds = _listable_kinds(cluster)
    cluster.wait_for(
        lambda: not _names(cluster, kinds, instance),
        timeout=90,
        what=f"every object labelled {instance} gone",
    )
    for kind in ("clusterrole", "clusterrolebinding"):
        assert cluster.get(kind, f"{release}-reactive-loop-discovery") is None
    # The Lease is written by the operator, not by the chart: the garbage
    # collector removes it with the operator pod that owned it.
    cluster.wait_for(
        lambda: cluster.get("lease", f"{release}-reactive-loop", namespace) is None,
        timeout=60,
        what="the operator's Lease garbage-collected",
    )

    # No operator runs now: a loop can still be created and deleted at once.
    cluster.apply(_loop("orphan"), namespace)
    orphan = cluster.get("reactiveloop", "orphan", namespace)
    assert orphan is not None
    assert not orphan["metadata"].get("finalizers")
    done = cluster.kubectl(
        "delete", "rloop", "orphan", "-n", namespace, "--wait=true", "--timeout=20s", check=False
    )
    left = cluster.get("reactiveloop", "orphan", namespace)
    assert done.returncode == 0, f"deletion hung: {done.stderr} {json.dumps(left)[:500]}"
    assert cluster.get("reactiveloop", "orphan", namespace) is None
