"""`helm uninstall` leaves nothing behind, and no ReactiveLoop needs the operator to go.

A release of its own (not the quickstart's, not the e2e session's), in a fresh
namespace the quickstart's operator is fenced out of: install, run a loop,
delete it (its children are garbage-collected), uninstall (every object
labelled with the release goes, cluster-scoped RBAC included, and the
leader-election Lease with the operator pod that owned it), then create and
delete a loop while no operator acts there (no finalizer, no hang).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import yaml
from kind.conftest import install_operator
from kind.kindcluster import Kind

#: Kinds a loop's children are made of (all carry the loop's labels and owner reference).
CHILD_KINDS = "pods,services,serviceaccounts,roles,rolebindings,networkpolicies,secrets"


def _names(kind: Kind, kinds: str, selector: str, *, namespace: str | None = None) -> list[str]:
    where = ["-n", namespace] if namespace else ["-A"]
    out = kind.kubectl("get", kinds, *where, "-l", selector, "-o", "name").stdout
    return [line for line in out.splitlines() if line.strip()]


def _listable_kinds(kind: Kind) -> str:
    out = kind.kubectl("api-resources", "--verbs=list", "-o", "name").stdout
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


def test_helm_uninstall_leaves_nothing_behind(kind: Kind, fenced_namespace: str) -> None:
    namespace = fenced_namespace
    release = f"rlgc{secrets.token_hex(2)}"
    instance = f"app.kubernetes.io/instance={release}"
    install_operator(kind, release, namespace, "operator.resyncSeconds=1")
    try:
        assert _names(kind, "clusterroles,clusterrolebindings", instance), "no cluster RBAC?"
        name = "gc"
        kind.apply(_loop(name, auth={"hmac": True}), namespace)

        def looping() -> Any:
            obj = kind.find("reactiveloop", name, namespace) or {}
            return (obj.get("status") or {}).get("looping") == 2 and obj

        obj = kind.wait_for(looping, timeout=240, what="2 nodes looping")
        assert not obj["metadata"].get("finalizers")
        # The leader-election Lease is owned by the operator pod that holds it.
        lease = kind.find("lease", f"{release}-reactive-loop", namespace)
        assert lease is not None
        holder = lease["spec"]["holderIdentity"]
        owners = lease["metadata"].get("ownerReferences") or []
        pod = kind.find("pod", holder, namespace)
        assert pod is not None, f"the Lease holder {holder!r} is not a pod of the release"
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("Pod", holder, pod["metadata"]["uid"])
        ]
        children = _names(kind, CHILD_KINDS, f"reactive-loop.dev/loop={name}", namespace=namespace)
        for prefix in (
            "pod/",
            "service/",
            "serviceaccount/",
            "role.",
            "rolebinding.",
            "networkpolicy.",
            "secret/",
        ):
            assert any(c.startswith(prefix) for c in children), f"no {prefix} child in {children}"

        kind.kubectl("delete", "rloop", name, "-n", namespace, "--wait=true", "--timeout=30s")
        kind.wait_for(
            lambda: (
                not _names(kind, CHILD_KINDS, f"reactive-loop.dev/loop={name}", namespace=namespace)
            ),
            timeout=120,
            what="the loop's children garbage-collected",
        )
    finally:
        kind.helm("uninstall", release, "--namespace", namespace, "--wait", check=False)

    kinds = _listable_kinds(kind)
    kind.wait_for(
        lambda: not _names(kind, kinds, instance),
        timeout=120,
        what=f"every object labelled {instance} gone",
    )
    for cluster_kind in ("clusterrole", "clusterrolebinding"):
        assert kind.find(cluster_kind, f"{release}-reactive-loop-discovery") is None
    # The Lease is written by the operator, not by the chart: the garbage
    # collector removes it with the operator pod that owned it.
    kind.wait_for(
        lambda: kind.find("lease", f"{release}-reactive-loop", namespace) is None,
        timeout=120,
        what="the operator's Lease garbage-collected",
    )

    # No operator acts here now (the quickstart's is fenced out of this
    # namespace): a loop can still be created and deleted at once.
    kind.apply(_loop("orphan"), namespace)
    orphan = kind.find("reactiveloop", "orphan", namespace)
    assert orphan is not None
    assert not orphan["metadata"].get("finalizers")
    done = kind.kubectl(
        "delete", "rloop", "orphan", "-n", namespace, "--wait=true", "--timeout=20s", check=False
    )
    left = kind.find("reactiveloop", "orphan", namespace)
    assert done.returncode == 0, f"deletion hung: {done.stderr} {json.dumps(left)[:500]}"
    assert left is None
