"""The test kubelet enforces ingress NetworkPolicies (docs/testing.md, "Networking")."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from cluster import objects as o
from localcluster import Cluster
from reactive_operator import builders

pytestmark = pytest.mark.cluster


def connect(cluster: Cluster, ns: str, client: str, ip: str, port: int, timeout: float = 2) -> bool:
    """A TCP connect from the client pod's network namespace (its pod IP)."""
    script = (
        "import socket,sys\n"
        f"s = socket.create_connection(({ip!r}, {port}), timeout={timeout})\n"
        "s.close()\n"
    )
    proc = cluster.exec_in_pod(ns, client, [o.PY, "-c", script], timeout=timeout + 20)
    return proc.returncode == 0


def host_connect(ip: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((ip, port), timeout=2).close()
    except OSError:
        return False
    return True


def ready(cluster: Cluster, ns: str, *names: str) -> None:
    for name in names:
        cluster.wait_for(functools.partial(cluster.pod_ready, ns, name), timeout=60, what=name)


def sleeper_running(cluster: Cluster, ns: str, *names: str) -> None:
    def running(name: str) -> bool:
        pod = cluster.get("pod", name, ns)
        return bool(pod and pod["status"].get("phase") == "Running")

    for name in names:
        cluster.wait_for(functools.partial(running, name), timeout=60, what=f"{name} Running")


def only_clients() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-clients"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        },
    }


def test_policy_admits_only_selected_pods_and_the_host(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        o.dump(
            only_clients(),
            o.pod("server", [o.http_server()], labels={"app": "server"}),
            o.sleeper("client", labels={"role": "client"}),
            o.sleeper("other", labels={"role": "other"}),
        ),
        namespace,
    )
    ready(cluster, namespace, "server")
    sleeper_running(cluster, namespace, "client", "other")
    ip = cluster.pod(namespace, "server").ip
    cluster.wait_for(
        lambda: connect(cluster, namespace, "client", ip, 8000), what="client reaches server"
    )
    assert not connect(cluster, namespace, "other", ip, 8000)
    assert host_connect(ip, 8000)  # the node (probes, Prometheus) always
    assert cluster.pod_ready(namespace, "server")  # its readiness probe still passes

    # A label change follows: `other` becomes a client.
    cluster.kubectl("label", "pod", "other", "role=client", "--overwrite", "-n", namespace)
    cluster.wait_for(
        lambda: connect(cluster, namespace, "other", ip, 8000), what="relabelled pod admitted"
    )
    cluster.kubectl("label", "pod", "other", "role=other", "--overwrite", "-n", namespace)
    cluster.wait_for(
        lambda: not connect(cluster, namespace, "other", ip, 8000, timeout=1),
        what="relabelled pod refused again",
    )

    cluster.kubectl("delete", "networkpolicy", "only-clients", "-n", namespace)
    cluster.wait_for(lambda: connect(cluster, namespace, "other", ip, 8000), what="access restored")


def test_operator_network_policy_admits_the_loop_only(cluster: Cluster, namespace: str) -> None:
    owner = builders.Owner(
        name="np", namespace=namespace, uid="00000000-0000-0000-0000-000000000000"
    )
    policy = builders.network_policy(
        owner,
        operator_pod_labels={"app.kubernetes.io/name": "reactive-loop-operator"},
        scraper_pod_labels={},
        scraper_namespace_labels={},
    )
    policy["metadata"].pop("ownerReferences", None)  # no such owner: the GC would delete it
    port = 8080
    nodes = [
        o.pod(
            f"np-{i}",
            [o.http_server(port=port)],
            labels=builders.node_labels("np", i),
        )
        for i in range(2)
    ]
    cluster.apply(
        o.dump(policy, *nodes, o.sleeper("stranger", labels={"app": "stranger"})), namespace
    )
    ready(cluster, namespace, "np-0", "np-1")
    sleeper_running(cluster, namespace, "stranger")
    ips = [cluster.pod(namespace, f"np-{i}").ip for i in range(2)]
    cluster.wait_for(
        lambda: connect(cluster, namespace, "np-0", ips[1], port), what="np-0 reaches np-1"
    )
    assert connect(cluster, namespace, "np-1", ips[0], port)
    assert not connect(cluster, namespace, "stranger", ips[0], port)
    assert not connect(cluster, namespace, "stranger", ips[1], port)
