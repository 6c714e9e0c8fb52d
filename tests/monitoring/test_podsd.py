"""podsd labels pods the way Prometheus' kubernetes_sd_configs (role pod) does."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from monitoring.podsd import PodDiscovery, pod_targets

POD: dict[str, Any] = {
    "metadata": {
        "name": "demo-1",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/name": "reactive-loop", "reactive-loop.dev/loop": "demo"},
    },
    "spec": {
        "nodeName": "rl-node",
        "containers": [
            {"name": "node", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}
        ],
    },
    "status": {
        "podIP": "10.77.0.9",
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}


def test_one_target_per_container_port_with_kubernetes_sd_meta_labels() -> None:
    pending = {**POD, "metadata": {**POD["metadata"], "name": "demo-2"}, "status": {}}
    [group] = pod_targets([POD, pending])  # a pod without an IP has no target yet
    assert group["targets"] == ["10.77.0.9:8080"]
    labels = group["labels"]
    assert labels["__meta_kubernetes_namespace"] == "team-a"
    assert labels["__meta_kubernetes_pod_name"] == "demo-1"
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "reactive-loop"
    assert labels["__meta_kubernetes_pod_label_reactive_loop_dev_loop"] == "demo"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "http"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8080"
    assert labels["__meta_kubernetes_pod_ready"] == "true"


def test_the_endpoint_lists_pods_on_every_request() -> None:
    pods: list[dict[str, Any]] = [POD]
    with PodDiscovery(lambda: pods) as sd:
        with urllib.request.urlopen(sd.url, timeout=5) as r:
            assert len(json.loads(r.read())) == 1
        pods = []
        with urllib.request.urlopen(sd.url, timeout=5) as r:
            assert json.loads(r.read()) == []
