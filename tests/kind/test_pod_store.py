"""The pod-annotation store on kind (real API server, RBAC, kubelet, container).

A pod of the node image runs `reactive-loop node` with a ServiceAccount whose
Role allows get, patch and watch on its own pod only (what the operator
grants), so the in-cluster configuration, the resourceVersion patches and the
field-selector watch are exercised under real authorization, from inside a
restricted container. The store's conflict handling is checked against the
same API server from the host, with the cluster's admin credentials.

The pods carry no loop labels: the quickstart's operator leaves them alone.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from kind.conftest import IMAGE_TAG
from kind.kindcluster import Kind, condition
from reactive_node.core import contract
from reactive_node.runtime.kube import KubeClient
from reactive_node.runtime.pod_store import PodStore
from reactive_node.runtime.store import StoreConflict

POD = "demo-0"
NODE_IMAGE = f"reactive-loop-node:{IMAGE_TAG}"
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def manifest(pod: str) -> str:
    """ServiceAccount, Role (own pod only), RoleBinding, the node pod, and a
    plain pod for the admin-credential checks (a JSON List is YAML)."""
    env = [
        {"name": "RL_LOOP", "value": "demo"},
        {"name": "RL_ORDINAL", "value": "0"},
        {"name": "RL_REPLICAS", "value": "1"},
        {"name": "RL_STORE", "value": "pod"},
        {"name": "RL_INTERVAL", "value": "0.2"},
        {"name": "RL_NODE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "RL_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "RL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    tmp = {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": pod}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": pod},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "resourceNames": [pod],
                    "verbs": ["get", "patch", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": pod},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": pod},
            "subjects": [{"kind": "ServiceAccount", "name": pod}],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "annotations": {contract.STATE_ANNOTATION: '{"generation":1,"target":"initial"}'},
            },
            "spec": {
                "serviceAccountName": pod,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 2,
                "securityContext": POD_SECURITY,
                "containers": [
                    {
                        "name": "node",
                        "image": NODE_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["reactive-loop", "node"],
                        "env": env,
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": 8080},
                            "periodSeconds": 1,
                        },
                        "securityContext": RESTRICTED,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [tmp],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": {
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "securityContext": POD_SECURITY,
                "containers": [
                    {
                        "name": "idle",
                        "image": NODE_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                        "securityContext": RESTRICTED,
                    }
                ],
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


FETCH = """
import json, sys, urllib.error, urllib.request
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request("http://127.0.0.1:8080" + path, method=method,
    data=body.encode() if body else None, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""


def in_pod(kind: Kind, ns: str, method: str, path: str, body: str = "") -> Any:
    """An HTTP request to the node from inside its own container (`kubectl exec`)."""
    proc = kind.pod_exec(ns, POD, "python", "-c", FETCH, method, path, body)
    answer = json.loads(proc.stdout)
    if answer["body"].startswith(("{", "[")):
        answer["body"] = json.loads(answer["body"])
    return answer


def node_state(kind: Kind, ns: str) -> dict[str, Any]:
    answer = in_pod(kind, ns, "GET", contract.STATE_PATH)
    assert answer["status"] == 200
    doc: dict[str, Any] = answer["body"]
    return doc


def annotation(kind: Kind, ns: str, key: str) -> str | None:
    pod = kind.find("pod", POD, ns) or {}
    value: str | None = pod.get("metadata", {}).get("annotations", {}).get(key)
    return value


def test_node_pod_keeps_its_state_in_its_own_annotations(kind: Kind, namespace: str) -> None:
    ns = namespace
    kind.apply(manifest(POD), ns)
    kind.wait_for(
        lambda: condition(kind.get("pod", "-n", ns, POD), "Ready") == "True",
        timeout=180,
        what="node pod ready",
    )
    # Loaded from its own pod with its own credentials (get).
    assert node_state(kind, ns)["state"] == {"generation": 1, "target": "initial"}

    # A round trip makes the node patch its annotation (patch with resourceVersion).
    roundtrip = {
        "loop": "demo",
        "from": contract.OPERATOR_SENDER,
        "boot": 1,
        "seq": 1,
        "state": {"generation": 2, "target": {"image": "v2"}},
    }
    answer = in_pod(kind, ns, "POST", contract.ROUNDTRIP_PATH, json.dumps(roundtrip))
    assert answer["status"] == 200, answer
    written = annotation(kind, ns, contract.STATE_ANNOTATION)
    stored = json.loads(written or "")
    stored.pop(contract.HISTORY_STATE_KEY, None)  # the decision history's tail (docs/node.md)
    assert stored == {"generation": 2, "target": {"image": "v2"}}

    # The watch on its own pod (field selector) sees kubectl annotate.
    kind.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite",
        f'{contract.STATE_ANNOTATION}={{"generation":5,"target":"by hand"}}',
    )  # fmt: skip
    kind.wait_for(
        lambda: node_state(kind, ns)["summary"]["generation"] == 5,
        timeout=30,
        what="node adopts the annotated state",
    )
    kind.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite", f"{contract.REPLICAS_ANNOTATION}=4"
    )
    kind.wait_for(
        lambda: node_state(kind, ns)["replicas"] == 4, timeout=30, what="replicas adopted"
    )

    # A bad hand edit: reported, the last good state kept, the node keeps serving.
    kind.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite", f"{contract.STATE_ANNOTATION}=oops"
    )
    doc = kind.wait_for(
        lambda: (d := node_state(kind, ns))["stateError"] and d, timeout=30, what="stateError"
    )
    assert doc["state"] == {"generation": 5, "target": "by hand"}
    assert doc["ready"] is True
    metrics = in_pod(kind, ns, "GET", contract.METRICS_PATH)["body"]
    assert f'{contract.M_STATE_INVALID}{{loop="demo",node="{POD}"}} 1.0' in metrics

    # Steady state: no writes while nothing changes (resourceVersion stays put).
    version = kind.get("pod", "-n", ns, POD)["metadata"]["resourceVersion"]
    waits = node_state(kind, ns)["waits"]
    kind.wait_for(lambda: node_state(kind, ns)["waits"] >= waits + 5, what="loop turns")
    assert kind.get("pod", "-n", ns, POD)["metadata"]["resourceVersion"] == version
    assert "Traceback" not in kind.kubectl("logs", "-n", ns, POD, "-c", "node").stdout


def admin_client(kind: Kind, directory: Path) -> KubeClient:
    """The store's client with the kind cluster's admin credentials (its
    kubeconfig embeds the CA, client certificate and key; written to files)."""
    view = kind.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    doc = json.loads(view)
    server = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    files = {}
    for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
        source = server if key.startswith("certificate-authority") else user
        path = directory / key
        path.write_bytes(base64.b64decode(source[key]))
        path.chmod(0o600)
        files[key] = str(path)
    context = ssl.create_default_context(cafile=files["certificate-authority-data"])
    context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
    return KubeClient(server["server"], ssl_context=context)


async def save(store: PodStore, text: str) -> None:
    """Save like the node does: the kubelet's status updates also bump the
    pod's resourceVersion, so a conflict is re-read and retried (bounded)."""
    for _ in range(5):
        try:
            await store.save(text)
            return
        except StoreConflict:
            continue
    raise AssertionError("five conflicts in a row")


async def test_pod_store_conflict_on_the_real_api_server(
    kind: Kind, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    kind.apply(manifest(POD), ns)
    api = admin_client(kind, tmp_path)
    try:
        store = PodStore(ns, "plain", api=api)
        assert (await store.load()).raw is None
        await save(store, '{"generation":1,"target":"a"}')
        await save(store, '{"generation":2,"target":"b"}')
        kind.kubectl("annotate", "-n", ns, "pod", "plain", "someone-else=was-here")
        with pytest.raises(StoreConflict) as conflict:
            await store.save('{"generation":3,"target":"c"}')
        assert conflict.value.current.raw == '{"generation":2,"target":"b"}'
        await save(store, '{"generation":3,"target":"c"}')  # re-read: goes through now
        annotations = kind.get("pod", "-n", ns, "plain")["metadata"]["annotations"]
        assert annotations[contract.STATE_ANNOTATION] == '{"generation":3,"target":"c"}'
        assert annotations["someone-else"] == "was-here"
    finally:
        await api.close()
