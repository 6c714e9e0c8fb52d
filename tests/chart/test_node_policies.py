"""A node cannot widen its own access (issue 11 §3).

- The chart's ValidatingAdmissionPolicy lets a node's ServiceAccount change
  only its own state annotation on its pod: judged by the real API server of
  the local cluster, acting as the node's ServiceAccount on a pod, ServiceAccount,
  Role and RoleBinding made by the operator's own builders.
- The NetworkPolicy the operator builds from the chart's configuration admits
  no peer from "any namespace", and limits egress (rendered and parsed here;
  the builders' unit tests are in tests/operator/test_operator_builders.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from chart.helmchart import (
    CHART,
    HelmError,
    Manifest,
    Render,
    find_helm,
    one,
    render_chart,
    run_helm,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localcluster import Cluster
from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_node.runtime.app import NODE_KEY, create_app
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.kube import KubeClient
from reactive_node.runtime.node import Node
from reactive_node.runtime.pod_store import PodStore
from reactive_operator import builders, config
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.spec import parse_spec

POLICY_MESSAGE = "a reactive-loop node may change only its own state annotation"
LOOP = "demo"
POD = builders.pod_name(LOOP, 0)
#: `as_user` for the local cluster's own admin credentials (no impersonation).
ADMIN = ""


def env_of(manifests: list[Manifest]) -> dict[str, str]:
    container = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "rl-operator-0") for e in container["env"]}


def policy_objects(manifests: list[Manifest]) -> tuple[Manifest, Manifest]:
    return (
        one(manifests, "ValidatingAdmissionPolicy"),
        one(manifests, "ValidatingAdmissionPolicyBinding"),
    )


# --- the chart, rendered ---------------------------------------------------------


def test_the_policy_is_shipped_by_default_and_names_the_contracts_keys(render: Render) -> None:
    vap, binding = policy_objects(render())
    assert vap["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = vap["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["UPDATE"]
    assert set(rule["resources"]) == {"pods", "pods/*"}
    # It selects the pods the operator makes (old or new labels), by the contract's labels.
    node_pod = builders.pod(Owner(LOOP, "ns", "u"), parse_spec({}), 0, NodeDefaults("img"))
    selector = spec["matchConstraints"]["objectSelector"]["matchLabels"]
    assert selector.items() <= node_pod["metadata"]["labels"].items()
    # The one annotation a node may change is the node-owned one of the contract.
    allowed = next(v for v in spec["variables"] if v["name"] == "allowed")
    assert allowed["expression"] == json.dumps([c.STATE_ANNOTATION]).replace('"', "'")
    assert c.REPLICAS_ANNOTATION not in json.dumps(spec)
    # A node's ServiceAccount is named after its pod (what the match condition relies on).
    assert builders.pod(Owner(LOOP, "ns", "u"), parse_spec({}), 3, NodeDefaults("i"))["spec"][
        "serviceAccountName"
    ] == builders.pod_name(LOOP, 3)
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # cluster-wide mode: every namespace


def test_in_namespaced_mode_the_binding_covers_the_watched_namespaces(render: Render) -> None:
    _, binding = policy_objects(render(sets=["watchNamespaces={team-a,team-b}"]))
    (expression,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expression == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a", "team-b"],
    }


def test_the_policy_can_be_turned_off_and_needs_kubernetes_1_30(helm: str, render: Render) -> None:
    kinds = {m["kind"] for m in render(sets=["node.podPolicy.enabled=false"])}
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    old = ["template", "rl", str(CHART), "--kube-version", "1.29.0"]
    with pytest.raises(HelmError, match=r"node\.podPolicy needs Kubernetes 1\.30 or later"):
        run_helm(helm, *old)
    assert "kind: Deployment" in run_helm(helm, *old, "--set", "node.podPolicy.enabled=false")


def node_network_of(manifests: list[Manifest]) -> config.NodeNetwork:
    return config.load(env_of(manifests)).node_network


def peers(policy: Manifest, direction: str) -> list[dict[str, Any]]:
    key = "from" if direction == "ingress" else "to"
    return [p for rule in policy["spec"].get(direction, []) for p in rule[key]]


def test_no_peer_of_the_nodes_policy_is_any_namespace(render: Render) -> None:
    spec = parse_spec({"behavior": "token", "token": {"webhook": "http://10.1.2.3:9000/f"}})
    for sets in (
        [],
        ["node.scraper.podLabels=null"],
        ["node.networkPolicy.egress.dns.namespaceLabels=null"],
        ["watchNamespaces={a}"],
    ):
        net = node_network_of(render(sets=sets, namespace="rl-system"))
        policy = builders.network_policy(Owner(LOOP, "ns", "u"), spec, net)
        for peer in peers(policy, "ingress") + peers(policy, "egress"):
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"]["matchLabels"], (sets, peer)
            elif "podSelector" in peer:  # the loop's own pods, in the loop's namespace
                assert peer["podSelector"]["matchLabels"] == builders.selector_labels(LOOP)
            else:
                assert set(peer) == {"ipBlock"}, peer


def test_the_operator_and_scraper_are_admitted_from_the_release_namespace(
    render: Render,
) -> None:
    manifests = render(namespace="rl-system")
    net = node_network_of(manifests)
    release = {"kubernetes.io/metadata.name": "rl-system"}
    policy = builders.network_policy(Owner(LOOP, "ns", "u"), parse_spec({}), net)
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ingress = peers(policy, "ingress")
    operator = next(
        p for p in ingress if p["podSelector"]["matchLabels"].items() <= pod_labels.items()
    )
    assert operator["namespaceSelector"] == {"matchLabels": release}
    scraper = next(
        p
        for p in ingress
        if p["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    )
    assert scraper["namespaceSelector"] == {"matchLabels": release}
    # Both configurable.
    other = node_network_of(
        render(
            values={
                "node": {
                    "scraper": {"namespaceLabels": {"team": "observability"}},
                    "networkPolicy": {"operatorNamespaceLabels": {"ops": "yes"}},
                }
            }
        )
    )
    assert dict(other.operator_namespace_labels) == {"ops": "yes"}
    assert dict(other.scraper_namespace_labels) == {"team": "observability"}


def test_egress_values_reach_the_policy(render: Render) -> None:
    net = node_network_of(
        render(
            values={
                "node": {
                    "networkPolicy": {
                        "egress": {
                            "dns": {"cidrs": ["169.254.20.10/32"], "port": 5353},
                            "apiServer": {"cidrs": ["172.18.0.2/32"], "ports": [6443]},
                            "webhook": {"cidrs": ["203.0.113.0/24"]},
                        }
                    }
                }
            }
        )
    )
    spec = parse_spec({"behavior": "token", "token": {"webhook": "https://hooks.example/f"}})
    policy = builders.network_policy(Owner(LOOP, "ns", "u"), spec, net)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["spec"]["egress"]
    by_port = {p["port"]: r["to"] for r in rules for p in r["ports"]}
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in by_port[5353]
    assert by_port[6443] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert by_port[443] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]  # the webhook, by DNS
    assert set(by_port) == {c.DEFAULT_PORT, 5353, 6443, 443}
    off = node_network_of(render(sets=["node.networkPolicy.egress.enabled=false"]))
    open_egress = builders.network_policy(Owner(LOOP, "ns", "u"), spec, off)
    assert open_egress["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in open_egress["spec"]


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        (["node.networkPolicy.egress.apiServer.cidrs=null"], "missing property 'cidrs'"),
        (["node.networkPolicy.egress.apiServer.ports={0}"], "/apiServer/ports/0"),
        (["node.networkPolicy.egress.dns.cidrs={kube-dns}"], "/dns/cidrs/0"),
        (["node.networkPolicy.egres.enabled=false"], "'egres' not allowed"),
        (["node.podPolicy.enabled=yes"], "/podPolicy/enabled"),
    ],
)
def test_bad_policy_values_are_refused(render: Render, sets: list[str], where: str) -> None:
    with pytest.raises(HelmError, match="don't meet the specifications of the schema") as e:
        render(sets=sets)
    assert where in str(e.value)


# --- the real API server --------------------------------------------------------


Patch = dict[str, Any] | list[dict[str, Any]]


@dataclass
class NodePod:
    cluster: Cluster
    namespace: str
    sa: str  # the node's ServiceAccount as a user name

    def patch(
        self, body: Patch, *, as_user: str | None = None, dry_run: bool = False
    ) -> tuple[bool, str]:
        """Patch the pod (a dict: merge patch, a list: JSON patch), as the
        node's ServiceAccount unless `as_user` (ADMIN: the cluster's admin)."""
        kind = "merge" if isinstance(body, dict) else "json"
        args = ["patch", "pod", POD, "-n", self.namespace, f"--type={kind}", "-p", json.dumps(body)]
        if as_user != ADMIN:
            args += ["--as", as_user or self.sa]
        if dry_run:
            args.append("--dry-run=server")
        out = self.cluster.kubectl(*args, check=False)
        return out.returncode == 0, out.stderr.strip()

    def get(self) -> dict[str, Any]:
        pod = self.cluster.get("pod", POD, self.namespace)
        assert pod is not None
        return dict(pod)


def install_policy(cluster: Cluster, namespace: str, release: str) -> list[str]:
    """Apply the chart's policy and binding (scoped to `namespace` so that other
    tests on the same cluster are untouched); return their kubectl names."""
    manifests = render_chart(
        find_helm(), release=release, namespace=namespace, sets=[f"watchNamespaces={{{namespace}}}"]
    )
    objects = policy_objects(manifests)
    out = cluster.kubectl(
        "apply", "-o", "name", "-f", "-", input="---\n".join(yaml.safe_dump(o) for o in objects)
    )
    return out.stdout.split()


@pytest.fixture(scope="module")
def node_pod(local_cluster: Cluster) -> Iterator[NodePod]:
    """A node pod (Pending: no kubelet) with its ServiceAccount, Role and
    RoleBinding as the operator makes them, under the chart's policy."""
    cluster = local_cluster
    ns = f"t-node-policies-{secrets.token_hex(3)}"
    cluster.create_namespace(ns, "reactive-loop.dev/test=true")
    release = f"np{secrets.token_hex(3)}"
    installed: list[str] = []
    try:
        owner = Owner(LOOP, ns, "uid-not-applied")
        spec = parse_spec({})
        objects = [*builders.node_rbac(owner, 0), builders.pod(owner, spec, 0, NodeDefaults("i"))]
        for obj in objects:
            # No ReactiveLoop exists here: without this, the garbage collector
            # would delete the children of an owner that is not there.
            obj["metadata"].pop("ownerReferences")
        cluster.kubectl("create", "-f", "-", input="---\n".join(yaml.safe_dump(o) for o in objects))
        installed = install_policy(cluster, ns, release)
        node = NodePod(cluster, ns, f"system:serviceaccount:{ns}:{POD}")
        # The API server compiles a new policy asynchronously: wait until it
        # refuses a label change (a dry run, which admission judges too).
        cluster.wait_for(
            lambda: (
                POLICY_MESSAGE in node.patch({"metadata": {"labels": {"x": "y"}}}, dry_run=True)[1]
            ),
            timeout=60,
            what="the node policy in force",
        )
        yield node
    finally:
        if installed:
            cluster.kubectl("delete", "--wait=false", *installed, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_node_may_write_its_own_state_annotation(node_pod: NodePod) -> None:
    before = node_pod.get()["metadata"]
    state = json.dumps({"generation": 7, "target": {"v": secrets.token_hex(4)}})
    # As the node writes it: a merge patch with the resourceVersion precondition.
    body = {
        "metadata": {
            "annotations": {c.STATE_ANNOTATION: state},
            "resourceVersion": before["resourceVersion"],
        }
    }
    ok, err = node_pod.patch(body)
    assert ok, err
    after = node_pod.get()["metadata"]
    assert after["annotations"][c.STATE_ANNOTATION] == state
    assert after["labels"] == before["labels"]
    # And remove it again (a node may also clear its state).
    ok, err = node_pod.patch({"metadata": {"annotations": {c.STATE_ANNOTATION: None}}})
    assert ok, err
    assert c.STATE_ANNOTATION not in node_pod.get()["metadata"].get("annotations", {})


FORBIDDEN: dict[str, tuple[Patch, str]] = {
    "change its loop label": (
        {"metadata": {"labels": {c.LOOP_LABEL: "another-loop"}}},
        "labels",
    ),
    "add a label": ({"metadata": {"labels": {"team": "admin"}}}, "labels"),
    "remove its ordinal label": ({"metadata": {"labels": {c.ORDINAL_LABEL: None}}}, "labels"),
    "change the replicas annotation": (
        {"metadata": {"annotations": {c.REPLICAS_ANNOTATION: "200"}}},
        "other annotations",
    ),
    "remove the spec-hash annotation": (
        {"metadata": {"annotations": {c.SPEC_HASH_ANNOTATION: None}}},
        "other annotations",
    ),
    "add another annotation": (
        {"metadata": {"annotations": {"example.com/note": "x"}}},
        "other annotations",
    ),
    "inject a target": (
        {"metadata": {"annotations": {c.INJECT_ANNOTATION: '{"generation":9,"target":"x"}'}}},
        "other annotations",
    ),
    "state and a label together": (
        {"metadata": {"annotations": {c.STATE_ANNOTATION: "{}"}, "labels": {"x": "y"}}},
        "labels",
    ),
    "set activeDeadlineSeconds": ({"spec": {"activeDeadlineSeconds": 5}}, "spec"),
    "change its image": (
        [{"op": "replace", "path": "/spec/containers/0/image", "value": "attacker/image:1"}],
        "spec",
    ),
    "add a toleration": (
        [{"op": "add", "path": "/spec/tolerations/-", "value": {"operator": "Exists"}}],
        "spec",
    ),
    "add a finalizer": (
        {"metadata": {"finalizers": ["example.com/keep"]}},
        "finalizers or owners",
    ),
    "add an owner": (
        {
            "metadata": {
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u-1"}
                ]
            }
        },
        "finalizers or owners",
    ),
}


@pytest.mark.parametrize("change", sorted(FORBIDDEN))
def test_a_node_may_change_nothing_else_of_its_pod(node_pod: NodePod, change: str) -> None:
    body, what = FORBIDDEN[change]
    before = node_pod.get()["metadata"]["resourceVersion"]
    ok, err = node_pod.patch(body)
    assert not ok, f"{change}: allowed"
    assert "ValidatingAdmissionPolicy" in err, err
    assert f"{POLICY_MESSAGE} (reactive-loop.dev/state): not its pod's {what}" in err, err
    assert node_pod.get()["metadata"]["resourceVersion"] == before


def test_the_status_subresource_is_refused_too(node_pod: NodePod) -> None:
    """Its Role does not grant pods/status; were it granted, the policy refuses it."""
    out = node_pod.cluster.kubectl(
        "patch", "pod", POD, "-n", node_pod.namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"message": "x"}}), "--as", node_pod.sa, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "forbidden" in out.stderr.lower(), out.stderr


def test_the_operator_and_admins_are_not_restricted(node_pod: NodePod) -> None:
    cluster, ns = node_pod.cluster, node_pod.namespace
    # Another ServiceAccount with the right to patch pods, as the operator has.
    operator = "rl-operator"
    cluster.kubectl("create", "serviceaccount", operator, "-n", ns)
    cluster.kubectl("create", "role", operator, "-n", ns, "--verb=get,patch", "--resource=pods")
    cluster.kubectl(
        "create", "rolebinding", operator, "-n", ns, f"--role={operator}",
        f"--serviceaccount={ns}:{operator}",
    )  # fmt: skip
    as_operator = f"system:serviceaccount:{ns}:{operator}"
    ok, err = node_pod.patch(
        {"metadata": {"annotations": {c.REPLICAS_ANNOTATION: "4"}}}, as_user=as_operator
    )
    assert ok, err
    ok, err = node_pod.patch({"metadata": {"labels": {"checked-by": "admin"}}}, as_user=ADMIN)
    assert ok, err
    meta = node_pod.get()["metadata"]
    assert meta["annotations"][c.REPLICAS_ANNOTATION] == "4"
    assert meta["labels"]["checked-by"] == "admin"
    # The node itself still cannot undo either.
    ok, err = node_pod.patch({"metadata": {"labels": {"checked-by": None}}})
    assert not ok
    assert POLICY_MESSAGE in err


async def test_the_operator_injects_through_the_pod_and_the_node_cannot(
    node_pod: NodePod,
) -> None:
    """Issue 11 §4: a target enters through the operator-owned inject annotation.

    The node (in this process, on the pod store, as its own ServiceAccount: a
    token of it and the cluster's CA; no kubelet runs) takes what the operator
    writes, persists it in its state annotation under the policy, and cannot
    write or remove the inject annotation itself."""
    cluster, ns = node_pod.cluster, node_pod.namespace
    injector = "rl-injector"  # the operator's verbs on pods, as the chart grants them
    cluster.kubectl("create", "serviceaccount", injector, "-n", ns)
    cluster.kubectl("create", "role", injector, "-n", ns, "--verb=get,patch", "--resource=pods")
    cluster.kubectl(
        "create", "rolebinding", injector, "-n", ns, f"--role={injector}",
        f"--serviceaccount={ns}:{injector}",
    )  # fmt: skip
    as_operator = f"system:serviceaccount:{ns}:{injector}"
    token = cluster.kubectl("create", "token", POD, "-n", ns).stdout.strip()
    api = KubeClient(
        cluster.cfg.apiserver_url,
        ssl_context=ssl.create_default_context(cafile=str(cluster.cfg.pki_dir / "ca.crt")),
        token=token,
    )
    config = NodeConfig(
        loop=LOOP, ordinal=0, replicas=3, store="pod", namespace=ns, pod_name=POD, interval=0.2
    )
    app = create_app(config, PodStore(ns, POD, api=api), CollectorRegistry(), run_loop=False)
    target = {"image": f"v-{secrets.token_hex(3)}"}
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            node: Node = app[NODE_KEY]
            text = builders.injection_text(41, target)
            ok, err = node_pod.patch(
                {"metadata": {"annotations": {c.INJECT_ANNOTATION: text}}}, as_user=as_operator
            )
            assert ok, err

            def stored() -> Any:
                raw = (node_pod.get()["metadata"].get("annotations") or {}).get(c.STATE_ANNOTATION)
                return None if raw is None else json.loads(raw)

            deadline = time.monotonic() + 30
            while (stored() or {}).get("generation") != 41:
                assert time.monotonic() < deadline, f"not persisted: {stored()}"
                await asyncio.sleep(0.2)
            assert stored()["target"] == target
            assert node.state == {"generation": 41, "target": target}
            doc = await (await client.get(c.STATE_PATH)).json()
            assert doc["state"] == {"generation": 41, "target": target}
            assert doc["stateError"] is None
            # The node's own ServiceAccount can neither write nor remove it.
            forged = builders.injection_text(99, {"image": "attacker"})
            for value in (forged, None):
                ok, err = node_pod.patch(
                    {"metadata": {"annotations": {c.INJECT_ANNOTATION: value}}}
                )
                assert not ok, value
                assert f"{POLICY_MESSAGE} (reactive-loop.dev/state): not its pod's other" in err
            annotations = node_pod.get()["metadata"]["annotations"]
            assert annotations[c.INJECT_ANNOTATION] == text
    finally:
        await api.close()
        node_pod.patch(
            {"metadata": {"annotations": {c.INJECT_ANNOTATION: None, c.STATE_ANNOTATION: None}}},
            as_user=ADMIN,
        )


def test_a_pod_of_another_namespace_is_not_covered_by_a_namespaced_binding(
    cluster: Cluster, namespace: str, node_pod: NodePod
) -> None:
    """The binding of a namespaced install matches only the watched namespaces."""
    owner = Owner(LOOP, namespace, "uid-not-applied")
    objects = [
        *builders.node_rbac(owner, 0),
        builders.pod(owner, parse_spec({}), 0, NodeDefaults("i")),
    ]
    for obj in objects:
        obj["metadata"].pop("ownerReferences")
    cluster.kubectl("create", "-f", "-", input="---\n".join(yaml.safe_dump(o) for o in objects))
    other = NodePod(cluster, namespace, f"system:serviceaccount:{namespace}:{POD}")
    ok, err = other.patch({"metadata": {"labels": {"x": "y"}}}, dry_run=True)
    assert ok, err
    # While in the watched namespace the same change is refused.
    ok, err = node_pod.patch({"metadata": {"labels": {"x": "y"}}}, dry_run=True)
    assert not ok
    assert POLICY_MESSAGE in err


# Keys a pod's metadata may carry: an optional DNS prefix and a name.
_name = st.from_regex(r"\A[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?\Z")
_key = st.one_of(
    _name,
    st.builds(
        lambda p, n: f"{p}/{n}", st.sampled_from(["example.com", "reactive-loop.dev"]), _name
    ),
    st.sampled_from(
        [
            c.STATE_ANNOTATION,
            c.REPLICAS_ANNOTATION,
            c.INJECT_ANNOTATION,
            c.LOOP_LABEL,
            c.ORDINAL_LABEL,
        ]
    ),
)
_label_value = st.from_regex(r"\A([a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?)?\Z")
_changes = st.lists(
    st.tuples(
        st.sampled_from(["labels", "annotations"]),
        _key,
        st.one_of(st.none(), _label_value),  # None removes the key
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=_changes)
def test_any_metadata_change_but_the_state_is_refused(
    node_pod: NodePod, changes: list[tuple[str, str, str | None]]
) -> None:
    """A sweep over label and annotation changes (dry runs, judged by admission):
    allowed exactly when nothing but the state annotation would change."""
    meta = node_pod.get()["metadata"]
    body: dict[str, dict[str, dict[str, str | None]]] = {"metadata": {}}
    for field, key, value in changes:
        body["metadata"].setdefault(field, {})[key] = value
    changed = set()
    for field, entries in body["metadata"].items():
        current = meta.get(field) or {}
        for key, value in entries.items():
            if current.get(key) != value and not (value is None and key not in current):
                changed.add((field, key))
    harmless = changed <= {("annotations", c.STATE_ANNOTATION)}
    ok, err = node_pod.patch(body, dry_run=True)
    if harmless:
        assert ok, (body, err)
    else:
        assert not ok, (body, "allowed")
        assert POLICY_MESSAGE in err, (body, err)
