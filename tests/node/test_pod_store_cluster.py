"""The pod-annotation store on the local Kubernetes cluster (real API server, RBAC).

A node pod runs `reactive-loop node` with a ServiceAccount whose Role allows
get, patch and watch on its own pod only (what the operator grants), so the
in-cluster configuration, the resourceVersion patches and the field-selector
watch are exercised under real authorization. The store's conflict handling
is checked against the real API server with the admin credentials.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import pytest
import yaml
from localcluster import Cluster
from reactive_node import contract
from reactive_node.store import StoreConflict
from reactive_node.store_pod import KubeClient, PodStore

POD = "demo-0"

MANIFEST = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {pod}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {pod}}}
rules:
- apiGroups: [""]
  resources: [pods]
  resourceNames: [{pod}]
  verbs: [get, patch, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {pod}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {pod}}}
subjects: [{{kind: ServiceAccount, name: {pod}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  annotations:
    {state_key}: '{{"generation":1,"target":"initial"}}'
spec:
  serviceAccountName: {pod}
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
  containers:
  - name: node
    image: reactive-loop-node:dev
    command: [reactive-loop, node]
    env:
    - {{name: RL_LOOP, value: demo}}
    - {{name: RL_ORDINAL, value: "0"}}
    - {{name: RL_REPLICAS, value: "1"}}
    - {{name: RL_STORE, value: pod}}
    - {{name: RL_INTERVAL, value: "0.2"}}
    - name: RL_NODE
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: RL_POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: RL_NAMESPACE
      valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
    readinessProbe:
      httpGet: {{path: /readyz, port: 8080}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: plain}}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: idle
    image: python:3.11-slim
    command: [python, -c, "import time; time.sleep(3600)"]
"""

FETCH = """
import json, sys, urllib.request
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request("http://127.0.0.1:8080" + path, method=method,
    data=body.encode() if body else None, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""


def in_pod(cluster: Cluster, ns: str, method: str, path: str, body: str = "") -> Any:
    proc = cluster.exec_in_pod(ns, POD, ["python", "-c", FETCH, method, path, body])
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    if answer["body"].startswith(("{", "[")):
        answer["body"] = json.loads(answer["body"])
    return answer


def node_state(cluster: Cluster, ns: str) -> dict[str, Any]:
    answer = in_pod(cluster, ns, "GET", contract.STATE_PATH)
    assert answer["status"] == 200
    doc: dict[str, Any] = answer["body"]
    return doc


def annotation(cluster: Cluster, ns: str, key: str) -> str | None:
    pod = cluster.get("pod", POD, ns) or {}
    value: str | None = pod.get("metadata", {}).get("annotations", {}).get(key)
    return value


@pytest.mark.cluster
def test_node_pod_keeps_its_state_in_its_own_annotations(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.apply(MANIFEST.format(pod=POD, state_key=contract.STATE_ANNOTATION), ns)
    cluster.wait_for(lambda: cluster.pod_ready(ns, POD), timeout=60, what="node pod ready")
    # Loaded from its own pod with its own credentials (get).
    assert node_state(cluster, ns)["state"] == {"generation": 1, "target": "initial"}

    # A round trip makes the node patch its annotation (patch with resourceVersion).
    roundtrip = {
        "loop": "demo",
        "from": contract.OPERATOR_SENDER,
        "boot": 1,
        "seq": 1,
        "state": {"generation": 2, "target": {"image": "v2"}},
    }
    answer = in_pod(cluster, ns, "POST", contract.ROUNDTRIP_PATH, json.dumps(roundtrip))
    assert answer["status"] == 200, answer
    written = annotation(cluster, ns, contract.STATE_ANNOTATION)
    assert json.loads(written or "") == {"generation": 2, "target": {"image": "v2"}}

    # The watch on its own pod (field selector) sees kubectl annotate.
    cluster.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite",
        f'{contract.STATE_ANNOTATION}={{"generation":5,"target":"by hand"}}',
    )  # fmt: skip
    cluster.wait_for(
        lambda: node_state(cluster, ns)["summary"]["generation"] == 5,
        timeout=20,
        what="node adopts the annotated state",
    )
    cluster.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite", f"{contract.REPLICAS_ANNOTATION}=4"
    )
    cluster.wait_for(
        lambda: node_state(cluster, ns)["replicas"] == 4, timeout=20, what="replicas adopted"
    )

    # A bad hand edit: reported, the last good state kept, the node keeps serving.
    cluster.kubectl(
        "annotate", "-n", ns, "pod", POD, "--overwrite", f"{contract.STATE_ANNOTATION}=oops"
    )
    doc = cluster.wait_for(
        lambda: (d := node_state(cluster, ns))["stateError"] and d, timeout=20, what="stateError"
    )
    assert doc["state"] == {"generation": 5, "target": "by hand"}
    assert doc["ready"] is True
    metrics = in_pod(cluster, ns, "GET", contract.METRICS_PATH)["body"]
    assert f'{contract.M_STATE_INVALID}{{loop="demo",node="{POD}"}} 1.0' in metrics

    # Steady state: no writes while nothing changes (resourceVersion stays put).
    version = (cluster.get("pod", POD, ns) or {})["metadata"]["resourceVersion"]
    loops = node_state(cluster, ns)["waits"]
    cluster.wait_for(lambda: node_state(cluster, ns)["waits"] >= loops + 5, what="loop turns")
    assert (cluster.get("pod", POD, ns) or {})["metadata"]["resourceVersion"] == version
    assert "Traceback" not in cluster.logs(ns, POD, "node")


def admin_client(cluster: Cluster) -> KubeClient:
    """The store's client with the local cluster's admin credentials (its
    kubeconfig names a CA file and a client certificate and key)."""
    doc = yaml.safe_load(cluster.kubeconfig.read_text())
    server = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    context = ssl.create_default_context(cafile=server["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
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


@pytest.mark.cluster
async def test_pod_store_conflict_on_the_real_api_server(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.apply(MANIFEST.format(pod=POD, state_key=contract.STATE_ANNOTATION), ns)
    api = admin_client(cluster)
    try:
        store = PodStore(ns, "plain", api=api)
        assert (await store.load()).raw is None
        await save(store, '{"generation":1,"target":"a"}')
        await save(store, '{"generation":2,"target":"b"}')
        cluster.kubectl("annotate", "-n", ns, "pod", "plain", "someone-else=was-here")
        with pytest.raises(StoreConflict) as conflict:
            await store.save('{"generation":3,"target":"c"}')
        assert conflict.value.current.raw == '{"generation":2,"target":"b"}'
        await save(store, '{"generation":3,"target":"c"}')  # re-read: goes through now
        pod = cluster.get("pod", "plain", ns) or {}
        annotations = pod["metadata"]["annotations"]
        assert annotations[contract.STATE_ANNOTATION] == '{"generation":3,"target":"c"}'
        assert annotations["someone-else"] == "was-here"
    finally:
        await api.close()
