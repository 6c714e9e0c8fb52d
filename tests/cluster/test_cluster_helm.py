"""The real helm installs and uninstalls a small chart on the local cluster."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from localcluster import Cluster

pytestmark = pytest.mark.cluster
CHART = Path(__file__).parent / "testchart"


def test_helm_install_and_uninstall(cluster: Cluster, namespace: str) -> None:
    cluster.helm(
        "install",
        "demo",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "message=served by a pod",
        "--wait",
        "--timeout",
        "90s",
    )
    releases = cluster.helm("list", "-n", namespace, "-q").stdout.split()
    assert releases == ["demo"]
    cm = cluster.get("configmap", "demo-content", namespace)
    assert cm["data"]["index.html"] == "served by a pod"
    pods = cluster.get("pods", namespace=namespace)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    # The pod serves the ConfigMap mounted as a volume.
    url = f"http://{pods[0]['status']['podIP']}:8000/index.html"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.read().decode() == "served by a pod"

    cluster.helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout", "60s")
    assert cluster.helm("list", "-n", namespace, "-q").stdout.split() == []
    assert cluster.get("configmap", "demo-content", namespace) is None
    assert cluster.get("deployment", "demo-web", namespace) is None
    cluster.wait_for(
        lambda: not cluster.get("pods", namespace=namespace)["items"],
        timeout=30,
        what="the chart's pod to be gone",
    )
