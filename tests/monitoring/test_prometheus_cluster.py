"""Stage 2: the shipped PromQL against a real Prometheus on the local cluster.

The chart is installed with the real helm (namespaced mode, so it never meets
another test's operator); the operator it runs creates the node pods of a
converge and a token loop. Prometheus (built from its Go module, see
conftest) discovers the node pods and the operator's Service endpoints from
the local apiserver with `kubernetes_sd_configs`, in the test namespace only,
with the scrape jobs the Prometheus Operator would generate from the chart's
own PodMonitor and ServiceMonitor (`monitors`). Every dashboard and rule
expression, the operator's included, must return data; cutting a node off its
peers with the cluster's faults API fires ReactiveLoopStalled for it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmchart import CHART, find_helm, render_chart
from localcluster import Cluster
from monitoring.monitors import kubernetes_sd_access, pod_monitor_jobs, service_monitor_jobs
from monitoring.promql import (
    Prometheus,
    dashboard_expressions,
    promtool,
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


def install_values(ns: str) -> list[str]:
    """The release's --set values (namespaced mode, fast resync)."""
    return [f"watchNamespaces={{{ns}}}", "operator.resyncSeconds=1"]


def scrape_jobs(cluster: Cluster, ns: str, workdir: Path) -> list[dict[str, Any]]:
    """The release's PodMonitor and ServiceMonitor, rendered by the real helm with the
    installed values, as the Prometheus Operator's scrape jobs (1 s interval).

    The cluster has no monitoring.coreos.com CRDs, so the monitors are rendered,
    not installed; the API server and credentials come from the kubeconfig.
    """
    sets = [
        *install_values(ns),
        "monitoring.podMonitor.enabled=true",
        "monitoring.serviceMonitor.enabled=true",
    ]
    manifests = render_chart(find_helm(), sets=sets, release=RELEASE, namespace=ns)
    pod_monitor = next(m for m in manifests if m["kind"] == "PodMonitor")
    service_monitor = next(m for m in manifests if m["kind"] == "ServiceMonitor")
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    access = kubernetes_sd_access(kubeconfig, cluster.kubeconfig.parent, workdir)
    return pod_monitor_jobs(pod_monitor, access, interval="1s") + service_monitor_jobs(
        service_monitor, access, interval="1s"
    )


def expected_up(ns: str) -> dict[str, float]:
    """Targets up per job: the Prometheus Operator names a PodMonitor's job
    `<namespace>/<monitor>` and a ServiceMonitor's after the Service."""
    return {f"{ns}/{RELEASE}-reactive-loop-nodes": 6.0, f"{RELEASE}-reactive-loop-metrics": 1.0}


def up_by_job(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("job", ""): float(s["value"][1]) for s in result}


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
    try:
        cluster.helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            ns,
            *(arg for value in install_values(ns) for arg in ("--set", value)),
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
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": ["rules.yaml"],
            "scrape_configs": scrape_jobs(cluster, ns, workdir),
        }
        prom = Prometheus(prometheus_binaries[0], workdir, config)
        checked = promtool(prometheus_binaries[1], "check", "config", str(prom.config_path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        prom.start()
        want = expected_up(ns)
        up = prom.poll("sum by (job) (up)", 90, lambda r: up_by_job(r) == want)
        assert up_by_job(up) == want, f"6 nodes and the operator should be up: {up}"
        prom.poll("sum(rate(reactive_loop_loops_total[10s])) > 0", 60)
        yield Deployed(cluster, ns, prom)
    finally:
        if prom is not None:
            prom.stop()
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


def test_targets_come_from_kubernetes_discovery_in_the_test_namespace_only(
    deployed: Deployed,
) -> None:
    cluster, ns = deployed.cluster, deployed.namespace
    pods = cluster.get("pods", namespace=ns)["items"]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    targets = deployed.prometheus.active_targets()
    by_pool: dict[str, set[str]] = {}
    for t in targets:
        labels, found = t["labels"], t["discoveredLabels"]
        # The API server's view of the pod, not a list the test made.
        assert found["__meta_kubernetes_namespace"] == ns == labels["namespace"]
        assert found["__meta_kubernetes_pod_uid"], t
        assert labels["instance"] == f"{ips[labels['pod']]}:8080", t
        assert t["health"] == "up", t
        by_pool.setdefault(t["scrapePool"], set()).add(labels["pod"])
    nodes = {n for n in ips if n.startswith(("mon-conv-", "mon-tok-"))}
    operator = {n for n in ips if n.startswith(f"{RELEASE}-reactive-loop-")}
    assert len(nodes) == 6, sorted(ips)
    assert len(operator) == 1, sorted(ips)
    assert by_pool == {
        f"podMonitor/{ns}/{RELEASE}-reactive-loop-nodes/0": nodes,
        f"serviceMonitor/{ns}/{RELEASE}-reactive-loop-operator/0": operator,
    }


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
