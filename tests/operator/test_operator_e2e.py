"""The operator end to end on the local cluster: kubectl flows against real node pods.

The session's operator (conftest `operator`, installed with helm by default)
watches one namespace that enforces Pod Security `restricted`; every test
applies its own ReactiveLoop there and removes it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "reactive-loop"
EXAMPLES = ROOT / "examples"
RESYNC_SECONDS = 2


class LocalOperator:
    """`reactive-loop-operator` as a local process with the admin kubeconfig."""

    def __init__(self, cluster: Cluster, namespace: str, identity: str, lease: str) -> None:
        self.port = _free_port()
        env = {
            **cluster.env,
            "RLO_NAMESPACES": namespace,
            "RLO_PORT": str(self.port),
            "RLO_BIND": "127.0.0.1",
            "RLO_RESYNC_SECONDS": str(RESYNC_SECONDS),
            "RLO_LEASE_NAME": lease,
            "RLO_LEASE_NAMESPACE": namespace,
            "RLO_IDENTITY": identity,
        }
        cluster.cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(cluster.cfg.logs_dir / f"operator-{namespace}-{identity}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("reactive-loop-operator"))],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def phase(self) -> str | None:
        """The phase /readyz reports (standby, leading, ...), None if it does not answer."""
        assert self.proc.poll() is None, f"operator exited with {self.proc.returncode}"
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(json.loads(r.read()).get("phase"))
        except urllib.error.HTTPError as e:
            return str(json.loads(e.read()).get("phase"))
        except OSError:
            return None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.log.close()
        return code


@dataclass
class OperatorHandle:
    """The session's active operator; `stop`/`start` let a test take it away."""

    cluster: Cluster
    namespace: str
    mode: str
    lease: str
    metrics_url: str = ""
    local: LocalOperator | None = None

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())

    def start(self) -> None:
        if self.mode == "process":
            self.local = LocalOperator(self.cluster, self.namespace, "test-process", self.lease)
            local = self.local
            self.cluster.wait_for(
                lambda: local.phase() == "leading", timeout=60, what="operator process leading"
            )
            self.metrics_url = f"http://127.0.0.1:{local.port}/metrics"
            return
        self.cluster.kubectl(
            "scale", "deployment", self.lease, "-n", self.namespace, "--replicas=1"
        )
        pod = self.cluster.wait_for(
            lambda: _operator_pod(self.cluster, self.namespace, RELEASE),
            timeout=90,
            what="the operator pod Ready",
        )
        self.metrics_url = f"http://{pod['status']['podIP']}:8080/metrics"

    def stop(self) -> None:
        if self.mode == "process":
            assert self.local is not None
            self.local.stop()
            return
        self.cluster.kubectl(
            "scale", "deployment", self.lease, "-n", self.namespace, "--replicas=0"
        )
        self.cluster.wait_for(
            lambda: (
                not [
                    p
                    for p in self.cluster.get("pods", namespace=self.namespace)["items"]
                    if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
                    == "operator"
                ]
            ),
            timeout=60,
            what="the operator pod gone",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RELEASE = "rlop"


def _operator_pod(cluster: Cluster, ns: str, release: str) -> dict[str, Any] | None:
    pods = cluster.get("pods", namespace=ns) or {"items": []}
    for pod in pods["items"]:
        labels = pod["metadata"].get("labels") or {}
        if (
            labels.get("app.kubernetes.io/instance") == release
            and labels.get("app.kubernetes.io/component") == "operator"
            and not pod["metadata"].get("deletionTimestamp")
        ):
            conds = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return dict(pod)
    return None


@pytest.fixture(scope="session")
def operator(local_cluster: Cluster, crd: str, loops_ns: str) -> Iterator[OperatorHandle]:
    mode = os.environ.get("RL_OPERATOR_MODE", "chart")
    if mode == "process":
        handle = OperatorHandle(local_cluster, loops_ns, mode, "reactive-loop-operator")
        handle.start()
        try:
            yield handle
        finally:
            if handle.local is not None and handle.local.proc.poll() is None:
                handle.local.stop()
        return

    local_cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        loops_ns,
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{loops_ns}}}",
        "--set",
        f"operator.resyncSeconds={RESYNC_SECONDS}",
        "--set",
        "operator.readinessProbe.initialDelaySeconds=0",
        "--set",
        "operator.readinessProbe.periodSeconds=1",
    )
    # The chart names the Deployment and the Lease after its fullname.
    handle = OperatorHandle(local_cluster, loops_ns, mode, f"{RELEASE}-reactive-loop")
    handle.start()
    try:
        yield handle
    finally:
        local_cluster.helm("uninstall", RELEASE, "--namespace", loops_ns, check=False)


@dataclass
class Loops:
    """Applies ReactiveLoops in the test namespace and removes them afterwards."""

    cluster: Cluster
    namespace: str
    names: list[str] = field(default_factory=list)

    def apply(self, manifest: dict[str, Any]) -> str:
        name = str(manifest["metadata"]["name"])
        self.cluster.apply(yaml.safe_dump(manifest), self.namespace)
        self.names.append(name)
        return name

    def get(self, name: str) -> dict[str, Any]:
        obj = self.cluster.get("reactiveloop", name, self.namespace)
        assert obj is not None, f"ReactiveLoop {name} is gone"
        return dict(obj)

    def patch(self, name: str, spec: dict[str, Any]) -> int:
        """Merge-patch the loop's spec with the real kubectl; returns the new generation."""
        self.cluster.kubectl(
            "patch",
            "rl",
            name,
            "-n",
            self.namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
        )
        return int(self.get(name)["metadata"]["generation"])

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        for cond in self.get(name).get("status", {}).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return None

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.cluster.get("pods", namespace=self.namespace)["items"]
        return sorted(
            (
                p
                for p in items
                if (p["metadata"].get("labels") or {}).get("reactive-loop.dev/loop") == name
            ),
            key=lambda p: int(p["metadata"]["labels"]["reactive-loop.dev/ordinal"]),
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.cluster.get("events", namespace=self.namespace)["items"]
        return [
            e
            for e in items
            if e.get("involvedObject", {}).get("kind") == "ReactiveLoop"
            and e["involvedObject"].get("name") == name
        ]

    def cleanup(self) -> None:
        for name in self.names:
            self.cluster.kubectl(
                "delete",
                "reactiveloop",
                name,
                "-n",
                self.namespace,
                "--ignore-not-found",
                "--wait=true",
                "--timeout=60s",
                check=False,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(self.pods(n) for n in self.names):
            time.sleep(0.5)


@pytest.fixture
def loops(local_cluster: Cluster, operator: OperatorHandle) -> Iterator[Loops]:
    handle = Loops(local_cluster, operator.namespace)
    try:
        yield handle
    finally:
        handle.cleanup()


def example(name: str, **spec: Any) -> dict[str, Any]:
    """An example manifest from examples/, with spec fields overridden."""
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(manifest, dict)
    manifest["spec"].update(spec)
    return manifest


def looping_converged(loops: Loops, name: str, replicas: int, generation: int | None = None) -> Any:
    obj = loops.get(name)
    status = obj.get("status") or {}
    conv = next((c for c in status.get("conditions") or [] if c["type"] == "Converged"), None)
    gen = generation if generation is not None else status.get("targetGeneration")
    return (
        status.get("looping") == replicas
        and status.get("readyReplicas") == replicas
        and conv is not None
        and conv["status"] == "True"
        and status.get("convergedGeneration") == gen
        and obj
    )


def uids(loops: Loops, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in loops.pods(name)}


def test_converge_lifecycle(cluster: Cluster, loops: Loops) -> None:
    name = loops.apply(example("converge.yaml", replicas=3))
    obj = cluster.wait_for(
        lambda: looping_converged(loops, name, 3), timeout=90, what="3 nodes looping, Converged"
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # The namespace enforces Pod Security `restricted`: the pods were admitted.
    ns_labels = cluster.get("namespace", loops.namespace)["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = loops.pods(name)
    assert [p["metadata"]["name"] for p in pods] == ["demo-0", "demo-1", "demo-2"]
    assert all(p["status"]["phase"] == "Running" for p in pods)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    table = cluster.kubectl("get", "rloop", name, "-n", loops.namespace).stdout
    assert "LOOPING" in table
    assert "generation" in table

    # A new target becomes a new generation that every node reaches.
    generation = loops.patch(name, {"target": {"version": "v2"}})
    cluster.wait_for(
        lambda: looping_converged(loops, name, 3, generation),
        timeout=60,
        what=f"convergence on generation {generation}",
    )
    injected = [e for e in loops.events(name) if e["reason"] == "TargetInjected"]
    assert any(f"generation {generation}" in e["message"] for e in injected)

    # Scale up: new pods only; the old ones keep their identity.
    before = uids(loops, name)
    cluster.kubectl("scale", "rloop", name, "-n", loops.namespace, "--replicas=5")
    cluster.wait_for(
        lambda: looping_converged(loops, name, 5), timeout=90, what="5 nodes converged"
    )
    after = uids(loops, name)
    assert {k: after[k] for k in before} == before, "scaling up restarted a pod"
    for pod in loops.pods(name):
        assert pod["metadata"]["annotations"]["reactive-loop.dev/replicas"] == "5"

    # Scale down: highest ordinals go, with their RBAC; the rest stay.
    cluster.kubectl("scale", "rloop", name, "-n", loops.namespace, "--replicas=2")
    cluster.wait_for(
        lambda: [p["metadata"]["name"] for p in loops.pods(name)] == ["demo-0", "demo-1"],
        timeout=60,
        what="pods demo-2..4 gone",
    )
    assert uids(loops, name) == {k: before[k] for k in ("demo-0", "demo-1")}
    cluster.wait_for(
        lambda: (
            cluster.get("serviceaccount", "demo-4", loops.namespace) is None
            and cluster.get("role", "demo-3", loops.namespace) is None
        ),
        timeout=30,
        what="RBAC of removed nodes deleted",
    )
    cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=60, what="2 converged")

    # A deleted pod is recreated and catches up from its peer.
    old = uids(loops, name)["demo-1"]
    cluster.kubectl("delete", "pod", "demo-1", "-n", loops.namespace, "--wait=false")
    cluster.wait_for(
        lambda: uids(loops, name).get("demo-1") not in (None, old),
        timeout=60,
        what="demo-1 recreated",
    )
    status = cluster.wait_for(
        lambda: looping_converged(loops, name, 2, generation),
        timeout=60,
        what="recreated demo-1 caught up",
    )["status"]
    assert all(n["generation"] == generation for n in status["nodes"])


def test_bad_annotation_is_reported_and_nothing_is_lost(cluster: Cluster, loops: Loops) -> None:
    name = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "scribble"},
            "spec": {"replicas": 2, "target": {"keep": "me"}},
        }
    )
    obj = cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=90, what="converged")
    generation = obj["status"]["convergedGeneration"]
    cluster.kubectl(
        "annotate",
        "pod",
        f"{name}-0",
        "-n",
        loops.namespace,
        "--overwrite",
        "reactive-loop.dev/state={not json",
    )
    cond = cluster.wait_for(
        lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "True" and c,
        timeout=30,
        what="Degraded=True",
    )
    assert cond["reason"] == "InvalidNodeState"
    assert f"{name}-0" in cond["message"]
    cluster.wait_for(
        lambda: any(e["reason"] == "InvalidNodeState" for e in loops.events(name)),
        timeout=30,
        what="an InvalidNodeState event",
    )
    nodes = loops.get(name)["status"]["nodes"]
    assert nodes[0]["generation"] == generation, "the node lost its last good state"
    # The loop keeps working: a new target still converges everywhere.
    new = loops.patch(name, {"target": {"keep": "me too"}})
    cluster.wait_for(
        lambda: looping_converged(loops, name, 2, new), timeout=60, what="still converges"
    )


def test_invalid_spec_gets_a_condition_not_a_crash(
    cluster: Cluster, loops: Loops, operator: OperatorHandle
) -> None:
    big = {"blob": "x" * 9000}  # schema-valid (one key) but above the operator's 8 KiB bound
    name = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "toobig"},
            "spec": {"replicas": 2, "target": big},
        }
    )
    cond = cluster.wait_for(
        lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "True" and c,
        timeout=30,
        what="Degraded=True for an invalid spec",
    )
    assert cond["reason"] == "InvalidSpec"
    assert "8192" in cond["message"]
    assert any(e["reason"] == "InvalidSpec" for e in loops.events(name))
    assert loops.pods(name) == []
    # Fixing it recovers without restarting anything.
    loops.patch(name, {"target": {"blob": "small"}})
    cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=60, what="recovered")
    assert "reactive_loop_operator_reconciles_total" in operator.metrics()


def test_rbac_matrix(cluster: Cluster, loops: Loops) -> None:
    name = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "rbac"},
            "spec": {"replicas": 2, "target": {"a": 1}},
        }
    )
    ns = loops.namespace
    cluster.wait_for(
        lambda: cluster.get("rolebinding", f"{name}-1", ns), timeout=60, what="node RBAC"
    )

    def can(verb: str, resource: str, *, as_node: int = 0, namespace: str = ns) -> bool:
        proc = cluster.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            namespace,
            "--as",
            f"system:serviceaccount:{ns}:{name}-{as_node}",
            check=False,
        )
        return proc.stdout.strip() == "yes"

    own = f"pods/{name}-0"
    other = f"pods/{name}-1"
    assert can("get", own)
    assert can("patch", own)
    assert can("watch", own)
    for verb in ("update", "delete"):
        assert not can(verb, own), verb
    for verb in ("get", "patch", "watch"):
        assert not can(verb, other), f"{verb} another node's pod"
    assert can("get", other, as_node=1)
    assert not can("list", "pods")
    assert not can("create", "pods")
    assert not can("get", "secrets")
    assert not can("get", "reactiveloops.reactive-loop.dev")
    assert not can("create", "events")
    assert not can("get", own, namespace="default")


class Fence:
    """A webhook receiver: records every {node, epoch, event} the nodes post."""

    def __init__(self, host: str) -> None:
        calls: list[dict[str, Any]] = []
        self.calls = calls
        lock = threading.Lock()
        self.lock = lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    calls.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/fence"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acquires(self) -> list[tuple[str, tuple[int, int]]]:
        with self.lock:
            return [
                (c["node"], (int(c["epoch"][0]), int(c["epoch"][1])))
                for c in self.calls
                if c.get("event") == "acquire"
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fence(cluster: Cluster) -> Iterator[Fence]:
    f = Fence(cluster.cfg.gateway_ip)  # the host side of the pod bridge
    try:
        yield f
    finally:
        f.close()


def test_token_one_holder_and_increasing_epochs(
    cluster: Cluster, loops: Loops, fence: Fence
) -> None:
    manifest = example(
        "token.yaml",
        replicas=3,
        token={"holdSeconds": 1, "lossTimeoutSeconds": 6, "webhook": fence.url},
    )
    name = loops.apply(manifest)

    def healthy() -> Any:
        cond = loops.condition(name, "TokenHealthy")
        return cond is not None and cond["status"] == "True" and loops.get(name)

    cluster.wait_for(healthy, timeout=90, what="TokenHealthy=True")
    cluster.wait_for(lambda: len(fence.acquires()) >= 4, timeout=60, what="the token circulates")

    # Steady state: exactly one holder, seen repeatedly.
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 5 and time.monotonic() < deadline:
        token = loops.get(name)["status"].get("token") or {}
        if token.get("holders") == 1:
            seen += 1
        time.sleep(0.5)
    assert seen >= 5, "never saw a single holder five times"

    # Delete the holder's pod: a new token appears with a higher epoch.
    holder = loops.get(name)["status"]["token"]["holder"]
    before = len(fence.acquires())
    cluster.kubectl("delete", "pod", holder, "-n", loops.namespace, "--wait=false")
    cluster.wait_for(
        lambda: len(fence.acquires()) >= before + 3, timeout=90, what="circulation after loss"
    )
    cluster.wait_for(healthy, timeout=60, what="TokenHealthy again")

    epochs = [epoch for _, epoch in fence.acquires()]
    assert len(set(epochs)) == len(epochs), f"an epoch was acquired twice: {epochs}"
    assert epochs == sorted(epochs), f"epochs at the fence went backwards: {epochs}"


def test_timing_change_rolls_pods_one_at_a_time(cluster: Cluster, loops: Loops) -> None:
    name = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "roll"},
            "spec": {"replicas": 3, "target": {"r": 1}},
        }
    )
    cluster.wait_for(lambda: looping_converged(loops, name, 3), timeout=90, what="converged")
    before = uids(loops, name)
    hashes = {p["metadata"]["annotations"]["reactive-loop.dev/spec-hash"] for p in loops.pods(name)}
    loops.patch(name, {"loop": {"interval": 0.8, "timeout": 0.4}})
    worst = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pods = loops.pods(name)
        not_ready = 3 - sum(
            1
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or []
            )
        )
        worst = max(worst, not_ready)
        now = uids(loops, name)
        if len(now) == 3 and not set(now.values()) & set(before.values()) and not_ready == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"pods were not all rolled: {uids(loops, name)}")
    assert worst <= 1, f"{worst} nodes were down at once during the roll"
    new_hashes = {
        p["metadata"]["annotations"]["reactive-loop.dev/spec-hash"] for p in loops.pods(name)
    }
    assert len(new_hashes) == 1
    assert new_hashes != hashes
    env = loops.pods(name)[0]["spec"]["containers"][0]["env"]
    assert {"name": "RL_INTERVAL", "value": "0.8"} in env


def test_standby_takes_over_and_the_loop_keeps_healing(
    cluster: Cluster, loops: Loops, operator: OperatorHandle
) -> None:
    ns = loops.namespace
    standby = LocalOperator(cluster, ns, "standby", operator.lease)
    try:
        cluster.wait_for(lambda: standby.phase() == "standby", timeout=30, what="standby ready")
        name = loops.apply(
            {
                "apiVersion": "reactive-loop.dev/v1alpha1",
                "kind": "ReactiveLoop",
                "metadata": {"name": "ha"},
                "spec": {"replicas": 2, "target": {"ha": 1}},
            }
        )
        cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=90, what="converged")
        assert standby.phase() == "standby", "two replicas led at once"
        lease = cluster.get("lease", operator.lease, ns)
        assert lease["spec"]["holderIdentity"] not in ("", "standby")

        operator.stop()  # the active replica goes away (its Lease is released)
        cluster.wait_for(lambda: standby.phase() == "leading", timeout=45, what="takeover")
        assert cluster.get("lease", operator.lease, ns)["spec"]["holderIdentity"] == "standby"

        old = uids(loops, name)[f"{name}-1"]
        cluster.kubectl("delete", "pod", f"{name}-1", "-n", ns, "--wait=false")
        cluster.wait_for(
            lambda: uids(loops, name).get(f"{name}-1") not in (None, old),
            timeout=60,
            what="the new leader recreates the pod",
        )
        cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=60, what="converged")
    finally:
        assert standby.stop() == 0
        operator.start()  # back to the session's operator for the other tests


def test_hmac_loop_signs_round_trips(cluster: Cluster, loops: Loops) -> None:
    manifest = example("converge-hmac.yaml", replicas=2)
    name = loops.apply(manifest)
    ns = loops.namespace
    cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=90, what="converged")
    secret = cluster.get("secret", f"{name}-hmac", ns)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["name"] == name
    env = {e["name"]: e for e in loops.pods(name)[0]["spec"]["containers"][0]["env"]}
    assert env["RL_HMAC_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{name}-hmac",
        "key": "hmac-key",
    }
    # An unsigned round trip is refused; the operator's signed injection was not.
    ip = loops.pods(name)[0]["status"]["podIP"]
    body = json.dumps({"loop": name, "from": "intruder", "boot": 1, "seq": 1, "state": {}}).encode()
    request = urllib.request.Request(
        f"http://{ip}:8080/v1/roundtrip",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert any(e["reason"] == "TargetInjected" for e in loops.events(name))


def test_a_reconciled_loop_carries_no_finalizer(cluster: Cluster, loops: Loops) -> None:
    name = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "nofin"},
            "spec": {"replicas": 2, "target": {"f": 1}},
        }
    )
    obj = cluster.wait_for(lambda: looping_converged(loops, name, 2), timeout=90, what="converged")
    assert not obj["metadata"].get("finalizers"), obj["metadata"].get("finalizers")
    # The periodic resync keeps the status current, still without a finalizer.
    time.sleep(3 * RESYNC_SECONDS)
    assert not loops.get(name)["metadata"].get("finalizers")
    # A loop still carrying the finalizer of an older operator (which ran a
    # kopf timer) loses it once this operator sees it.
    legacy = loops.apply(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": "legacy", "finalizers": ["kopf.reactive-loop.dev/finalizer"]},
            "spec": {"replicas": 2, "target": {"f": 2}},
        }
    )
    cluster.wait_for(
        lambda: not loops.get(legacy)["metadata"].get("finalizers"),
        timeout=30,
        what="the old kopf finalizer removed",
    )
    # Deleting it is immediate; its children go by garbage collection.
    cluster.kubectl("delete", "rloop", name, "-n", loops.namespace, "--wait=true", "--timeout=20s")
    cluster.wait_for(lambda: not loops.pods(name), timeout=60, what="node pods collected")
