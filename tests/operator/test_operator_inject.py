"""The operator without Secret reads (issue 11 §4; docs/operator.md, "Cluster-wide
mode and Secrets"): a target goes to a node pod's inject annotation, and the
loop's `<loop>-hmac` is recognised by the uid of the operator's own create.

Pure builders here; `Kube.create_secret` and `Kube.write_injection` against
the local cluster, as a ServiceAccount holding only what the chart grants
(`secrets: create`; `pods: get, patch`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client.rest import ApiException
from localcluster import Cluster
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Converge
from reactive_node.core import contract as c
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore, Snapshot
from reactive_operator import builders
from reactive_operator.builders import HMAC_SECRET_ADOPTED, NodeDefaults, Owner
from reactive_operator.kube import Kube, NotFound
from reactive_operator.spec import parse_spec

OWNER = Owner("demo", "team-a", "uid-loop-1")


def status(generation: int, reason: str | None) -> dict[str, Any]:
    conditions = [] if reason is None else [{"type": "Ready", "status": "False", "reason": reason}]
    return {"observedGeneration": generation, "conditions": conditions}


# --- ownership without reading ---------------------------------------------------------


def test_a_secret_this_pass_created_is_owned_and_its_uid_recorded() -> None:
    own = builders.hmac_secret_ownership(
        OWNER, created_uid="uid-s1", recorded=None, status={}, generation=1
    )
    assert (own.owned, own.record, own.problem) == (True, "uid-s1", None)
    # Already recorded (the same uid): nothing more to write.
    again = builders.hmac_secret_ownership(
        OWNER, created_uid="uid-s1", recorded="uid-s1", status={}, generation=1
    )
    assert (again.owned, again.record) == (True, None)
    # Deleted and created anew: the new uid replaces the old one.
    anew = builders.hmac_secret_ownership(
        OWNER, created_uid="uid-s2", recorded="uid-s1", status={}, generation=3
    )
    assert (anew.owned, anew.record) == (True, "uid-s2")


def test_an_existing_secret_is_owned_only_if_its_creation_is_recorded() -> None:
    owned = builders.hmac_secret_ownership(
        OWNER, created_uid=None, recorded="uid-s1", status={}, generation=4
    )
    assert (owned.owned, owned.record, owned.problem) == (True, None, None)
    foreign = builders.hmac_secret_ownership(
        OWNER, created_uid=None, recorded=None, status={}, generation=1
    )
    assert not foreign.owned
    assert foreign.record is None
    assert foreign.problem is not None
    assert foreign.problem.reason == "SecretNotOwned"
    assert "demo-hmac" in foreign.problem.message
    assert builders.HMAC_SECRET_UID_FIELD in foreign.problem.message
    assert "delete or rename it" in foreign.problem.message


@pytest.mark.parametrize("reason", ["AllNodesReady", "NodesNotReady", "PodRejected"])
def test_a_secret_an_older_operator_had_checked_is_adopted(reason: str) -> None:
    """Upgrade: that operator read the Secret and wrote a Ready reason other than a
    refusal for this very generation; its check is kept, marked as adopted."""
    own = builders.hmac_secret_ownership(
        OWNER, created_uid=None, recorded=None, status=status(7, reason), generation=7
    )
    assert (own.owned, own.record) == (True, HMAC_SECRET_ADOPTED)


@pytest.mark.parametrize(
    ("observed", "reason"),
    [
        (6, "AllNodesReady"),  # another generation: auth may have been turned on since
        (7, "SecretNotOwned"),  # it refused the Secret
        (7, "InvalidSecret"),  # owned but unusable: the nodes could not start
        (7, "InvalidSpec"),  # the spec was never run
        (7, None),  # no Ready condition
        (7, "SomethingNew"),  # a reason this code does not know
    ],
)
def test_nothing_else_is_adopted(observed: int, reason: str | None) -> None:
    own = builders.hmac_secret_ownership(
        OWNER, created_uid=None, recorded=None, status=status(observed, reason), generation=7
    )
    assert not own.owned
    assert own.problem is not None
    assert own.problem.reason == "SecretNotOwned"


def test_odd_status_shapes_adopt_nothing() -> None:
    for odd in ({"conditions": "x", "observedGeneration": 7}, {"observedGeneration": "7"}):
        own = builders.hmac_secret_ownership(
            OWNER, created_uid=None, recorded=None, status=odd, generation=7
        )
        assert not own.owned


# --- the injection ------------------------------------------------------------------------


async def test_the_injection_text_is_what_a_node_takes() -> None:
    target = {"image": "v2", "replicas": [1, 2]}
    text = builders.injection_text(12, target)
    assert json.loads(text) == {"generation": 12, "target": target}
    assert text == builders.injection_text(12, {"replicas": [1, 2], "image": "v2"})  # canonical
    node = Node(
        NodeConfig(loop="demo", ordinal=0, replicas=3),
        Converge(),
        MemoryStore(),
        NodeMetrics(CollectorRegistry(), "demo", "demo-0", "converge", "ring"),
    )
    await node.start()
    await node.take_injection(Snapshot(None, inject=text))
    assert node.state == {"generation": 12, "target": target}
    assert node.injection_error is None


def test_a_retry_goes_to_the_next_candidate() -> None:
    pods = ["demo-0", "demo-2", "demo-1"]
    assert [builders.injection_pod(pods, a) for a in range(4)] == [
        "demo-0",
        "demo-2",
        "demo-1",
        "demo-0",
    ]
    assert builders.injection_pod([], 0) is None


# --- against a real API server, with the chart's verbs only ----------------------------------


@pytest.fixture
async def as_operator(cluster: Cluster, namespace: str) -> AsyncIterator[Kube]:
    """`Kube` acting as a ServiceAccount that holds, on Secrets and pods, exactly
    the operator's verbs from the chart: create Secrets; get and patch pods."""
    sa = "rl-operator"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": sa, "namespace": namespace},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
        ],
    }
    cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    cluster.apply(yaml.safe_dump(role), namespace)
    cluster.kubectl(
        "create", "rolebinding", sa, "-n", namespace, f"--role={sa}",
        f"--serviceaccount={namespace}:{sa}",
    )  # fmt: skip
    configuration = client.Configuration()
    await kube_config.load_kube_config(
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    api = client.ApiClient(
        configuration,
        header_name="Impersonate-User",
        header_value=f"system:serviceaccount:{namespace}:{sa}",
    )
    async with Kube(api) as kube:
        yield kube


@pytest.mark.cluster
async def test_the_operator_creates_its_secret_and_learns_its_uid_without_reading(
    cluster: Cluster, namespace: str, as_operator: Kube
) -> None:
    owner = Owner("demo", namespace, "uid-not-applied")
    manifest = builders.hmac_secret(owner, secrets.token_hex(32).encode())
    manifest["metadata"].pop("ownerReferences")  # no ReactiveLoop here to own it
    uid = await as_operator.create_secret(manifest)
    assert uid is not None
    secret = cluster.get("secret", builders.hmac_secret_name("demo"), namespace)
    assert secret["metadata"]["uid"] == uid
    # An existing one: None, and the operator could not have read it anyway.
    assert await as_operator.create_secret(manifest) is None
    with pytest.raises(ApiException) as refused:
        await as_operator.core.read_namespaced_secret(builders.hmac_secret_name("demo"), namespace)
    assert refused.value.status == 403


@pytest.mark.cluster
async def test_the_operator_writes_an_injection_on_a_node_pod(
    cluster: Cluster, namespace: str, as_operator: Kube
) -> None:
    owner = Owner("demo", namespace, "uid-not-applied")
    objects = [
        *builders.node_rbac(owner, 0),
        builders.pod(owner, parse_spec({}), 0, NodeDefaults("i")),
    ]
    for obj in objects:
        obj["metadata"].pop("ownerReferences")  # no ReactiveLoop here to own them
    cluster.apply("---\n".join(yaml.safe_dump(o) for o in objects), namespace)
    name = builders.pod_name("demo", 0)
    await as_operator.annotate_pod(namespace, name, {c.REPLICAS_ANNOTATION: "3"})
    text = builders.injection_text(5, {"image": "v5"})
    await as_operator.write_injection(namespace, name, text)
    annotations = cluster.get("pod", name, namespace)["metadata"]["annotations"]
    assert annotations[c.INJECT_ANNOTATION] == text
    assert annotations[c.REPLICAS_ANNOTATION] == "3"  # one key changed, the rest kept
    newer = builders.injection_text(6, {"image": "v6"})
    await as_operator.write_injection(namespace, name, newer)
    annotations = cluster.get("pod", name, namespace)["metadata"]["annotations"]
    assert annotations[c.INJECT_ANNOTATION] == newer
    with pytest.raises(NotFound):
        await as_operator.write_injection(namespace, "demo-9", text)


@pytest.mark.cluster
def test_the_status_keeps_the_secrets_uid(cluster: Cluster, namespace: str, crd: str) -> None:
    """The CRD's status schema has `hmacSecretUID` (an unknown field would be pruned)."""
    loop = {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": "demo", "namespace": namespace},
        "spec": {"replicas": 1, "auth": {"hmac": True}},
    }
    cluster.apply(yaml.safe_dump(loop), namespace)
    uid = "0b8e1c9e-4d0f-4a43-9c1f-6f3b0d2a7e55"
    patch = {"status": {builders.HMAC_SECRET_UID_FIELD: uid}}
    cluster.kubectl(
        "patch", crd, "demo", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    status = cluster.get(crd, "demo", namespace)["status"]
    assert status[builders.HMAC_SECRET_UID_FIELD] == uid
