"""Smoke tests of the images on kind: real containers, kubelet, admission, CNI.

Each runs in its own namespace that enforces the `restricted` Pod Security
Standard, with a small loop of its own, so the quickstart's loops stay as the
user left them.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from kind.conftest import IMAGE_TAG, RESTRICTED_LABELS
from kind.kindcluster import Kind, KindError, condition

NODE_IMAGE = f"reactive-loop-node:{IMAGE_TAG}"
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def make_loop(kind: Kind, namespace: str, name: str = "smoke", replicas: int = 3) -> None:
    kind.apply(
        textwrap.dedent(f"""\
            apiVersion: reactive-loop.dev/v1alpha1
            kind: ReactiveLoop
            metadata: {{name: {name}}}
            spec:
              replicas: {replicas}
              behavior: converge
              topology: ring
              target: {{smoke: "yes"}}
              loop: {{interval: 1, timeout: 0.5, maxBackoff: 4}}
            """),
        namespace,
    )


def loop_ready(kind: Kind, namespace: str, name: str = "smoke") -> dict[str, Any] | None:
    obj = kind.get("rloop", name, "-n", namespace)
    ok = condition(obj, "Ready") == "True" and condition(obj, "Converged") == "True"
    return obj if ok else None


def loop_all_looping(kind: Kind, namespace: str, n: int = 3) -> dict[str, Any] | None:
    """The loop, once Ready and Converged with all `n` nodes looping.

    Any one node may be waiting at an instant (a round trip that timed out
    under load), so callers poll this with a deadline.
    """
    obj = loop_ready(kind, namespace)
    return obj if obj and obj["status"].get("looping") == n else None


def pod_manifest(name: str, labels: dict[str, str], argv: list[str], restart: str = "Never") -> str:
    """A restricted pod of the node image running `argv` (JSON is YAML)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": restart,
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
                "containers": [
                    {
                        "name": "main",
                        "image": NODE_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": argv,
                        "securityContext": {**RESTRICTED, "readOnlyRootFilesystem": True},
                    }
                ],
            },
        }
    )


def test_node_pods_pass_pss_restricted_admission_and_run(kind: Kind, namespace: str) -> None:
    # The namespace really enforces `restricted`: a root pod is refused.
    root = json.loads(pod_manifest("root", {}, ["true"]))
    root["spec"]["securityContext"] = {"runAsUser": 0}
    root["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = kind.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(root), check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr
    make_loop(kind, namespace)
    obj = kind.wait_for(
        lambda: loop_all_looping(kind, namespace), 180, what="smoke loop Ready, all 3 looping"
    )
    assert obj["status"]["looping"] == 3
    for pod in kind.get("pods", "-n", namespace, "-l", "reactive-loop.dev/loop=smoke")["items"]:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["containers"][0]["image"] == NODE_IMAGE
    events = kind.get("events", "-n", namespace)["items"]
    assert not [e for e in events if e.get("reason") == "FailedCreate"]


def test_readiness_and_liveness_probes_work_through_the_kubelet(kind: Kind, namespace: str) -> None:
    make_loop(kind, namespace)
    kind.wait_for(lambda: loop_ready(kind, namespace), 180, what="smoke loop Ready")
    pod = "smoke-1"
    spec = kind.get("pod", "-n", namespace, pod)["spec"]["containers"][0]
    assert spec["readinessProbe"]["httpGet"]
    assert spec["livenessProbe"]["httpGet"]
    before = kind.get("pod", "-n", namespace, pod)["status"]["containerStatuses"][0]
    assert before["ready"] is True
    # Freeze the node process: it stops answering, so readiness fails first,
    # then liveness, and the kubelet restarts the container.
    node, pid = kind.container_pid(namespace, pod)
    kind.node_exec(node, "kill", "-STOP", str(pid))

    def status() -> dict[str, Any]:
        s: dict[str, Any] = kind.get("pod", "-n", namespace, pod)["status"]["containerStatuses"][0]
        return s

    kind.wait_for(lambda: status()["ready"] is False, 60, what=f"{pod} unready (readiness)")
    kind.wait_for(
        lambda: status()["restartCount"] > before["restartCount"],
        120,
        what=f"{pod} restarted by the kubelet (liveness)",
    )
    kind.wait_for(lambda: status()["ready"], 120, what=f"{pod} ready again")
    kind.wait_for(lambda: loop_ready(kind, namespace), 120, what="smoke loop Ready again")


def test_a_deleted_node_pod_is_healed(kind: Kind, namespace: str) -> None:
    make_loop(kind, namespace)
    kind.wait_for(lambda: loop_ready(kind, namespace), 180, what="smoke loop Ready")
    old_uid = kind.faults.delete_pod(namespace, "smoke-2")

    def replaced() -> bool:
        pod = kind.get("pod", "-n", namespace, "smoke-2")
        return pod["metadata"]["uid"] != old_uid and condition(pod, "Ready") == "True"

    kind.wait_for(replaced, 180, what="smoke-2 recreated and Ready")
    obj = kind.wait_for(lambda: loop_ready(kind, namespace), 120, what="smoke loop Ready again")
    assert obj["status"]["readyReplicas"] == 3


def wait_pod_done(kind: Kind, namespace: str, name: str) -> str:
    def done() -> str | None:
        phase = kind.get("pod", "-n", namespace, name)["status"].get("phase")
        return str(phase) if phase in ("Succeeded", "Failed") else None

    return kind.wait_for(done, 120, what=f"pod {name} finished")


def fetch(kind: Kind, namespace: str, name: str, url: str, labels: dict[str, str]) -> str:
    """Run a pod that GETs `url` (3 s timeout) and return its phase and log."""
    probe = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen({url!r}, timeout=3).read()\n"
        "    print('reached')\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__, e)\n"
        "    sys.exit(1)\n"
    )
    kind.apply(pod_manifest(name, labels, ["python", "-c", probe]), namespace)
    phase = wait_pod_done(kind, namespace, name)
    log = kind.kubectl("logs", "-n", namespace, name).stdout
    return f"{phase}: {log.strip()}"


def test_network_policy_admits_only_the_loops_pods(kind: Kind, namespace: str) -> None:
    make_loop(kind, namespace)
    kind.wait_for(lambda: loop_ready(kind, namespace), 180, what="smoke loop Ready")
    # The nodes themselves get through the policy: the loop converged above.
    policies = kind.get("networkpolicies", "-n", namespace)["items"]
    assert policies, "the operator made no NetworkPolicy"
    node_ip = kind.get("pod", "-n", namespace, "smoke-0")["status"]["podIP"]
    # A server no policy selects, to show the client's own networking works.
    kind.apply(
        pod_manifest(
            "open",
            {"app": "open"},
            ["python", "-m", "http.server", "8080", "--directory", "/tmp"],
            restart="Always",
        ),
        namespace,
    )
    kind.wait_for(
        lambda: condition(kind.get("pod", "-n", namespace, "open"), "Ready") == "True",
        120,
        what="open server Ready",
    )
    open_ip = kind.get("pod", "-n", namespace, "open")["status"]["podIP"]
    reached = fetch(kind, namespace, "client-open", f"http://{open_ip}:8080/", {"app": "x"})
    assert reached.startswith("Succeeded: reached"), reached
    cut = fetch(kind, namespace, "client-node", f"http://{node_ip}:8080/healthz", {"app": "x"})
    assert cut.startswith("Failed: refused"), cut
    # Copying the operator's labels onto a pod in another namespace does not let
    # it in: the policy admits the operator by its pods' labels and its namespace.
    operator_pod = kind.get(
        "pods", "-n", "reactive-loop-system", "-l", "app.kubernetes.io/component=operator"
    )["items"][0]
    elsewhere = f"{namespace}-x"
    kind.create_namespace(elsewhere, *RESTRICTED_LABELS)
    try:
        copycat = fetch(
            kind,
            elsewhere,
            "copycat",
            f"http://{node_ip}:8080/healthz",
            dict(operator_pod["metadata"]["labels"]),
        )
    finally:
        kind.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)
    assert copycat.startswith("Failed: refused"), copycat
    # Egress: a node reaches its peers and the cluster DNS, not another pod.
    peer_ip = kind.get("pod", "-n", namespace, "smoke-1")["status"]["podIP"]
    probe = (
        "import socket, sys, urllib.request\n"
        "def get(url):\n"
        "    try:\n"
        "        urllib.request.urlopen(url, timeout=3).read()\n"
        "        return 'reached'\n"
        "    except Exception as e:\n"
        "        return 'refused ' + type(e).__name__\n"
        "print(get(sys.argv[1]))\n"
        "print(get(sys.argv[2]))\n"
        "print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
    )
    out = kind.pod_exec(
        namespace,
        "smoke-0",
        "python",
        "-c",
        probe,
        f"http://{peer_ip}:8080/healthz",
        f"http://{open_ip}:8080/",
    ).stdout.split("\n")
    assert out[0] == "reached", out
    assert out[1].startswith("refused"), out
    assert out[2].count(".") == 3, out


@pytest.mark.parametrize("image", ["node", "operator"])
def test_images_in_the_kind_nodes_are_the_ones_built_here(kind: Kind, image: str) -> None:
    for node in kind.nodes("worker"):
        listing = kind.node_exec(node, "ctr", "-n", "k8s.io", "images", "ls", "-q")
        assert f"docker.io/library/reactive-loop-{image}:{IMAGE_TAG}" in listing.split()


def test_kind_error_names_the_failing_command(kind: Kind) -> None:
    with pytest.raises(KindError, match="kubectl get nosuchkind"):
        kind.get("nosuchkind")


def test_a_node_container_killed_by_the_runtime_is_restarted_and_catches_up(
    kind: Kind, namespace: str
) -> None:
    make_loop(kind, namespace)
    kind.wait_for(lambda: loop_ready(kind, namespace), 180, what="smoke loop Ready")
    pod = "smoke-0"
    # SIGKILL through containerd, as an OOM kill or a crash would end it.
    restarts = kind.faults.kill(namespace, pod)

    def restarted() -> bool:
        s = kind.get("pod", "-n", namespace, pod)["status"]["containerStatuses"][0]
        return bool(s["restartCount"] > restarts and s["ready"])

    kind.wait_for(restarted, 120, what=f"{pod} restarted by the kubelet and ready")
    obj = kind.wait_for(
        lambda: loop_all_looping(kind, namespace), 120, what="smoke loop Ready again, all looping"
    )
    assert obj["status"]["looping"] == 3
