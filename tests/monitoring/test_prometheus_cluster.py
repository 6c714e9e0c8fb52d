"""Stage 2: the shipped PromQL against a real Prometheus on the local cluster.

The chart is installed with the real helm (namespaced mode, so it never meets
another test's operator); the operator it runs creates the node pods of a
converge and a token loop. Prometheus discovers the node pods and the
operator pod from the local apiserver and relabels them as the chart's
PodMonitor/ServiceMonitor would. (Debian's Prometheus is built without
`kubernetes_sd_configs`, so `podsd` serves the same pod targets and meta
labels through `http_sd_configs`.) Every dashboard and rule expression, the
operator's included, must return data; cutting a node off its peers with the
cluster's faults API fires ReactiveLoopStalled for it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from chart.helmchart import CHART
from localcluster import Cluster
from monitoring.podsd import PodDiscovery
from monitoring.promql import (
    Prometheus,
    dashboard_expressions,
    rule_expressions,
)

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

RELEASE = "rlmon"
LOOPS = """
apiVersion: reactive-loop.dev/v1alpha1
kind: ReactiveLoop
metadata:
  name: mon-conv
spec:
  replicas: 3
  behavior: converge
  topology: ring
  target: {message: scraped}
  loop: {interval: 0.5, timeout: 0.25, maxBackoff: 2}
---
apiVersion: reactive-loop.dev/v1alpha1
kind: ReactiveLoop
metadata:
  name: mon-tok
spec:
  replicas: 3
  behavior: token
  topology: ring
  token: {holdSeconds: 1, lossTimeoutSeconds: 10}
  loop: {interval: 0.5, timeout: 0.25, maxBackoff: 2}
"""


#: The relabelling of the chart's PodMonitor (nodes) and ServiceMonitor
#: (operator): pods of app.kubernetes.io/name=reactive-loop, port "http".
RELABEL = [
    {
        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
        "regex": "reactive-loop",
        "action": "keep",
    },
    {
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": "http",
        "action": "keep",
    },
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]


@dataclass
class Deployed:
    cluster: Cluster
    namespace: str
    prometheus: Prometheus


def _node_pods_ready(cluster: Cluster, ns: str) -> bool:
    pods = cluster.get("pods", namespace=ns)["items"]
    nodes = [
        p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "node"
    ]
    return len(nodes) == 6 and all(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in nodes
    )


@pytest.fixture(scope="module")
def deployed(
    local_cluster: Cluster,
    prometheus_binaries: tuple[str, str],
    rendered_monitoring: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    cluster = local_cluster
    ns = f"t-monitoring-{secrets.token_hex(2)}"
    cluster.kubectl("create", "namespace", ns)
    prom: Prometheus | None = None
    stack = contextlib.ExitStack()
    try:
        cluster.helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            ns,
            "--set",
            f"watchNamespaces={{{ns}}}",
            "--set",
            "operator.resyncSeconds=1",
            "--wait",
            "--timeout",
            "180s",
            timeout=240,
        )
        cluster.apply(LOOPS, namespace=ns)
        cluster.wait_for(
            lambda: _node_pods_ready(cluster, ns), timeout=180, what="6 node pods Ready"
        )
        workdir = tmp_path_factory.mktemp("prometheus-cluster")
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rendered_monitoring["rules"]))
        discovery = stack.enter_context(
            PodDiscovery(lambda: cluster.get("pods", namespace=ns)["items"])
        )
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": "reactive-loop",
                    # Debian's Prometheus has no kubernetes_sd_configs; podsd
                    # lists the pods from the API server with the same labels.
                    "http_sd_configs": [{"url": discovery.url, "refresh_interval": "2s"}],
                    # What the chart's PodMonitor and ServiceMonitor select.
                    "relabel_configs": RELABEL,
                }
            ],
        }
        prom = Prometheus(prometheus_binaries[0], workdir, config)
        prom.start()
        up = prom.poll(
            'sum(up{job="reactive-loop"})', 90, lambda r: r and float(r[0]["value"][1]) == 7
        )
        assert up, "Prometheus discovered no pod"
        assert float(up[0]["value"][1]) == 7, f"6 nodes and the operator should be up: {up}"
        prom.poll("sum(rate(reactive_loop_loops_total[10s])) > 0", 60)
        yield Deployed(cluster, ns, prom)
    finally:
        if prom is not None:
            prom.stop()
        stack.close()
        with contextlib.suppress(Exception):
            cluster.kubectl(
                "delete", "reactiveloops", "--all", "-n", ns, "--wait=false", check=False
            )
            cluster.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "60s", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_every_expression_returns_data_on_the_cluster(
    deployed: Deployed, rendered_monitoring: dict[str, Any]
) -> None:
    prom = deployed.prometheus
    expressions = rule_expressions(rendered_monitoring["rules"]) + dashboard_expressions(
        rendered_monitoring["dashboard"]
    )
    assert any(e.needs_operator for e in expressions)
    empty = [f"{e.origin}: {e.expr}" for e in expressions if not prom.poll(e.expr, 30)]
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    # Discovery gave the nodes' series the namespace and pod labels.
    info = prom.query("reactive_loop_node_info")
    assert {s["metric"]["namespace"] for s in info} == {deployed.namespace}
    assert {s["metric"]["pod"] for s in info} == {s["metric"]["node"] for s in info}
    managed = prom.query("sum(reactive_loop_operator_managed_loops)")
    assert float(managed[0]["value"][1]) == 2


def test_stall_alert_fires_for_a_node_cut_off_its_peers(deployed: Deployed) -> None:
    cluster, ns, prom = deployed.cluster, deployed.namespace, deployed.prometheus
    query = 'ALERTS{alertname="ReactiveLoopStalled", alertstate="firing", loop="mon-conv"}'
    assert not prom.query(query)
    cluster.faults.cut(ns, "mon-conv-1")  # the host (and so Prometheus) still reaches it
    try:
        alerts = prom.poll(query, 90)
        assert [a["metric"]["node"] for a in alerts] == ["mon-conv-1"], alerts
        assert alerts[0]["metric"]["namespace"] == ns
    finally:
        cluster.faults.restore(ns, "mon-conv-1")
    assert not prom.poll(query, 90, lambda r: not r), "the alert did not resolve"


def test_helm_notes_tell_the_user_what_to_do_next(deployed: Deployed) -> None:
    notes = deployed.cluster.helm("get", "notes", RELEASE, "-n", deployed.namespace).stdout
    assert f"watches the namespaces: {deployed.namespace}" in notes
    assert f"rollout status deployment/{RELEASE}-reactive-loop" in notes
    assert "kubectl get rloop demo -w" in notes
