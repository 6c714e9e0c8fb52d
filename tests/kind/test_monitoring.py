"""The shipped PromQL on kind, through the real Prometheus Operator.

`hack/kind/monitoring.sh` deploys the Prometheus Operator v0.93.0 and one
Prometheus, built here from their Go modules, into the namespace
`monitoring` (the module's first fixture runs it: idempotent, seconds when
warm). That Prometheus selects monitors and rules by
`release: kube-prometheus-stack` in every namespace, as kube-prometheus-stack's
does.

The chart is installed as a kube-prometheus-stack user installs it
(`charts/reactive-loop/ci/monitoring-values.yaml`: the monitors' and rules'
`release` label, the scraper's namespace for the nodes' NetworkPolicy),
namespaced to a fresh namespace, with short scrape intervals and alert
thresholds. Its operator creates a converge and a token loop; the operator
turns the release's PodMonitor, ServiceMonitor and PrometheusRule into
Prometheus's configuration. Every dashboard and rule expression, the
operator's included, must return data; a node cut off its peers by a
NetworkPolicy fires ReactiveLoopStalled, and it resolves when the cut is
lifted.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from chart.helmchart import CHART
from kind.conftest import IMAGE_TAG, RESTRICTED_LABELS
from kind.kindcluster import Kind, KindError, condition
from kind.promstack import (
    NAMESPACE as MONITORING_NAMESPACE,
)
from kind.promstack import (
    SELECTOR_LABEL,
    ProxiedPrometheus,
    conntrack_flush_from,
    deploy_stack,
)
from monitoring.promql import TEST_RULE_VALUES, dashboard_expressions, rule_expressions

pytestmark = [pytest.mark.prometheus]

RELEASE = "rlmon"
FULLNAME = f"{RELEASE}-reactive-loop"
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
CUT_POLICY = "cut-mon-conv-1"


def install_args(ns: str) -> list[str]:
    """helm arguments of the release: the user's kube-prometheus-stack values, the
    images of `make images`, namespaced mode, fast resync, and 2 s scrapes."""
    sets = [
        f"watchNamespaces={{{ns}}}",
        "operator.resyncSeconds=1",
        "operator.image.repository=reactive-loop-operator",
        f"operator.image.tag={IMAGE_TAG}",
        "node.image.repository=reactive-loop-node",
        f"node.image.tag={IMAGE_TAG}",
        "monitoring.podMonitor.interval=2s",
        "monitoring.podMonitor.scrapeTimeout=1s",
        "monitoring.serviceMonitor.interval=2s",
        "monitoring.serviceMonitor.scrapeTimeout=1s",
        *TEST_RULE_VALUES,
        # The stall test cuts a node with a deny-all-egress NetworkPolicy
        # (cut_policy). Policies only add allowances, so that cut holds only
        # while the loop's own policy admits no egress: the default egress
        # rules (tested in test_operator_e2e.py) are off in this release.
        "node.networkPolicy.egress.enabled=false",
    ]
    return [
        "-f",
        str(CHART / "ci" / "monitoring-values.yaml"),
        *(arg for value in sets for arg in ("--set", value)),
        # Where the Prometheus pods run: the nodes' NetworkPolicy admits them.
        "--set-string",
        f"node.scraper.namespaceLabels.kubernetes\\.io/metadata\\.name={MONITORING_NAMESPACE}",
    ]


@dataclass
class Deployed:
    kind: Kind
    namespace: str
    prometheus: ProxiedPrometheus
    rules: dict[str, Any]  # the PrometheusRule's spec, as installed
    dashboard: dict[str, Any]  # the dashboard ConfigMap's JSON, as installed


def helm(kind: Kind, *args: str, timeout: float = 240) -> str:
    """helm's stdout; a failure raises KindError with its stderr."""
    return kind.helm(*args, timeout=timeout).stdout


def node_pods(kind: Kind, ns: str) -> list[dict[str, Any]]:
    pods = kind.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=node")["items"]
    return list(pods)


def six_nodes_ready(kind: Kind, ns: str) -> bool:
    pods = node_pods(kind, ns)
    return len(pods) == 6 and all(condition(p, "Ready") == "True" for p in pods)


def up_by_job(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("job", ""): float(s["value"][1]) for s in result}


def expected_up(ns: str) -> dict[str, float]:
    """Targets up per job: the Prometheus Operator names a PodMonitor's job
    `<namespace>/<monitor>` and a ServiceMonitor's after the Service."""
    return {f"{ns}/{FULLNAME}-nodes": 6.0, f"{FULLNAME}-metrics": 1.0}


def our_groups(prom: ProxiedPrometheus, ns: str) -> list[dict[str, Any]]:
    """The rule groups Prometheus loaded from this release's PrometheusRule (the
    operator writes them to a file named after its namespace and name)."""
    return [g for g in prom.rule_groups() if f"/{ns}-{FULLNAME}-" in g["file"]]


@pytest.fixture(scope="module")
def stack(kind: Kind) -> ProxiedPrometheus:
    """The Prometheus Operator and its Prometheus, deployed (or checked) by the script."""
    try:
        deploy_stack(kind)
    except (KindError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"the monitoring stack is not deployed: {e}", pytrace=False)
    return ProxiedPrometheus(kind)


@pytest.fixture(scope="module")
def deployed(kind: Kind, stack: ProxiedPrometheus, fence: str) -> Iterator[Deployed]:
    # Fenced: the release's own operator alone runs these loops (the
    # quickstart's watches every namespace; tests/kind/conftest.py `fence`).
    ns = f"k-monitoring-{secrets.token_hex(2)}"
    kind.create_namespace(ns, *RESTRICTED_LABELS, fence)
    prom = stack
    try:
        helm(
            kind,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            ns,
            "--skip-crds",
            *install_args(ns),
            "--wait",
            "--timeout",
            "180s",
        )
        kind.apply(LOOPS, namespace=ns)
        kind.wait_for(lambda: six_nodes_ready(kind, ns), timeout=240, what="6 node pods Ready")
        rule = kind.get("prometheusrule", FULLNAME, "-n", ns)
        dashboard_cm = kind.get("configmap", f"{FULLNAME}-dashboard", "-n", ns)
        dashboard = json.loads(dashboard_cm["data"]["reactive-loop.json"])

        # The operator picks up the monitors and the rule, the reloader
        # reloads Prometheus, discovery finds the pods.
        want = expected_up(ns)
        query = f'sum by (job) (up{{namespace="{ns}"}})'
        up = prom.poll(query, 180, lambda r: up_by_job(r) == want)
        assert up_by_job(up) == want, f"6 nodes and the operator should be up: {up}"
        kind.wait_for(lambda: our_groups(prom, ns), timeout=120, what="the release's rules loaded")
        prom.poll(f'sum(rate(reactive_loop_loops_total{{namespace="{ns}"}}[10s])) > 0', 60)
        yield Deployed(kind, ns, prom, rule["spec"], dashboard)
    finally:
        with contextlib.suppress(Exception):
            kind.kubectl("delete", "reactiveloops", "--all", "-n", ns, "--wait=false", check=False)
            kind.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "60s")
        kind.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_stack_is_the_real_operator_and_prometheus(
    kind: Kind, stack: ProxiedPrometheus
) -> None:
    deployment = kind.get("deployment", "prometheus-operator", "-n", MONITORING_NAMESPACE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reactive-loop/prometheus-operator:v0.93.0"
    prom = kind.get("prometheus", "main", "-n", MONITORING_NAMESPACE)
    assert condition(prom, "Available") == "True", prom.get("status")
    selector = {"matchLabels": dict([SELECTOR_LABEL])}
    for field in ("podMonitorSelector", "serviceMonitorSelector", "ruleSelector"):
        assert prom["spec"][field] == selector, field
    # The StatefulSet is the operator's work, with its config reloader.
    sts = kind.get("statefulset", "prometheus-main", "-n", MONITORING_NAMESPACE)
    images = {c["name"]: c["image"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert images == {
        "prometheus": "reactive-loop/prometheus:v0.316.0",
        "config-reloader": "reactive-loop/prometheus-config-reloader:v0.93.0",
    }
    assert stack.build_version() == "v0.316.0"


def test_every_expression_returns_data_on_kind(deployed: Deployed) -> None:
    prom, ns = deployed.prometheus, deployed.namespace
    expressions = rule_expressions(deployed.rules) + dashboard_expressions(deployed.dashboard)
    assert any(e.needs_operator for e in expressions)
    assert len(expressions) > 20, [e.origin for e in expressions]
    empty = [f"{e.origin}: {e.expr}" for e in expressions if not prom.poll(e.expr, 30)]
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    # Discovery gave the nodes' series the namespace and pod labels.
    info = prom.query(f'reactive_loop_node_info{{namespace="{ns}"}}')
    assert len(info) == 6, info
    assert {s["metric"]["pod"] for s in info} == {s["metric"]["node"] for s in info}
    managed = prom.query(f'sum(reactive_loop_operator_managed_loops{{namespace="{ns}"}})')
    assert [float(s["value"][1]) for s in managed] == [2.0], managed


def test_prometheus_evaluates_the_release_rules(deployed: Deployed) -> None:
    groups = our_groups(deployed.prometheus, deployed.namespace)
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    shipped = {
        str(r.get("alert") or r.get("record")) for g in deployed.rules["groups"] for r in g["rules"]
    }
    assert set(loaded) == shipped
    bad = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok"}
    assert not bad, bad


def test_targets_come_from_the_release_monitors_via_the_operator(deployed: Deployed) -> None:
    kind, ns = deployed.kind, deployed.namespace
    pods = kind.get("pods", "-n", ns)["items"]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    targets = [t for t in deployed.prometheus.active_targets() if f"/{ns}/" in t["scrapePool"]]
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
    operator = {n for n in ips if n.startswith(f"{FULLNAME}-")}
    assert len(nodes) == 6, sorted(ips)
    assert len(operator) == 1, sorted(ips)
    assert by_pool == {
        f"podMonitor/{ns}/{FULLNAME}-nodes/0": nodes,
        f"serviceMonitor/{ns}/{FULLNAME}-operator/0": operator,
    }


def cut_policy(ns: str) -> str:
    """Deny every egress of mon-conv-1: it can reach no peer (nor DNS, nor the API
    server). Its ingress is left to the operator's policy, which already admits
    the scraper and the loop's pods: NetworkPolicies only add allowances, so
    another policy could not take the peers' ingress away. Answers on
    connections others open to it (Prometheus's scrapes, its predecessor's round
    trips) are not egress connections and still flow, so it keeps being scraped
    while it can make no round trip of its own."""
    return textwrap.dedent(f"""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: {CUT_POLICY}, namespace: {ns}}}
        spec:
          podSelector:
            matchLabels: {{reactive-loop.dev/loop: mon-conv, reactive-loop.dev/ordinal: "1"}}
          policyTypes: [Egress]
          egress: []
        """)


def test_stall_alert_fires_for_a_node_cut_off_its_peers_and_resolves(deployed: Deployed) -> None:
    kind, ns, prom = deployed.kind, deployed.namespace, deployed.prometheus
    query = (
        f'ALERTS{{alertname="ReactiveLoopStalled", alertstate="firing", namespace="{ns}", '
        'loop="mon-conv"}'
    )
    assert not prom.query(query)
    pod = kind.get("pod", "mon-conv-1", "-n", ns)
    kind.apply(cut_policy(ns))
    try:
        # Its kept-alive connections to its peers predate the policy.
        conntrack_flush_from(kind, pod["spec"]["nodeName"], pod["status"]["podIP"])
        alerts = prom.poll(query, 90)
        assert [a["metric"]["node"] for a in alerts] == ["mon-conv-1"], alerts
        # The alert is computed from the cut node's own metrics: still scraped.
        up = prom.query(f'up{{namespace="{ns}", pod="mon-conv-1"}}')
        assert [float(s["value"][1]) for s in up] == [1.0], up
    finally:
        kind.kubectl("delete", "networkpolicy", CUT_POLICY, "-n", ns, "--ignore-not-found")
    assert not prom.poll(query, 90, lambda r: not r), "the alert did not resolve"


def test_helm_notes_tell_the_user_what_to_do_next(deployed: Deployed) -> None:
    notes = helm(deployed.kind, "get", "notes", RELEASE, "-n", deployed.namespace)
    assert f"watches the namespaces: {deployed.namespace}" in notes
    assert f"rollout status deployment/{FULLNAME}" in notes
    assert "kubectl get rloop demo -w" in notes
