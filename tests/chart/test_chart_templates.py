"""Template tests of charts/reactive-loop over the real `helm template`/`helm lint`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmchart import (
    CHART,
    KUBE_VERSION,
    HelmError,
    Manifest,
    Render,
    by_kind,
    one,
    run_helm,
)
from reactive_node.core import contract
from reactive_operator import builders, config
from reactive_operator.builders import Owner
from reactive_operator.spec import LoopSpec, parse_spec

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NODE_METRICS = {v for k, v in vars(contract).items() if k.startswith("M_")}
#: Every object kind the operator creates for a loop, and the API group it lives in.
CHILD_KINDS = {
    "pods": "",
    "services": "",
    "serviceaccounts": "",
    "secrets": "",
    "roles": "rbac.authorization.k8s.io",
    "rolebindings": "rbac.authorization.k8s.io",
    "networkpolicies": "networking.k8s.io",
    "poddisruptionbudgets": "policy",
}


def operator_container(manifests: list[Manifest]) -> Manifest:
    deployment = one(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: Manifest = containers[0]
    return container


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def grants(rules: list[Manifest], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
        for r in rules
    )


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict_is_clean_for_every_ci_scenario(helm: str, values_file: Path) -> None:
    out = run_helm(
        helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values_file)
    )
    assert "0 chart(s) failed" in out


def test_ci_scenarios_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "namespaced-values.yaml", "monitoring-values.yaml"} <= names


def test_default_render_has_the_operator_objects_and_no_monitoring_crs(render: Render) -> None:
    manifests = render()
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds.count("Deployment") == 1
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ConfigMap"} <= set(
        kinds
    )
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule"} & set(kinds)
    for m in manifests:
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "reactive-loop-0.1.0"
        if m["kind"] not in CLUSTER_SCOPED:
            assert m["metadata"]["namespace"] == "rl-system", m["metadata"]["name"]


CLUSTER_SCOPED = (
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


def test_operator_deployment_is_restricted_with_probes_on_its_port(render: Render) -> None:
    manifests = render(sets=["operator.port=9099"])
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(manifests)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["command"] == ["reactive-loop-operator"]
    assert c["ports"] == [{"name": "http", "containerPort": 9099, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": contract.HEALTH_PATH, "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": contract.READY_PATH, "port": "http"}
    assert env_of(c)["RLO_PORT"] == "9099"
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    # The selector must match the pod template.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_operator_env_is_what_the_operator_config_reads(render: Render) -> None:
    manifests = render(
        values={
            "watchNamespaces": ["team-a", "team-b"],
            "node": {"image": {"repository": "registry.example/rl-node", "tag": "1.2.3"}},
        }
    )
    env = env_of(operator_container(manifests))
    source = Path(config.__file__).read_text()
    known = {config.ENV_PREFIX + name for name in re.findall(r'p \+ "([A-Z_]+)"', source)}
    # The entry point reads the log level itself.
    main_source = (Path(config.__file__).parent / "main.py").read_text()
    known |= set(re.findall(r'"(RLO_[A-Z_]+)"', main_source))
    assert known, "could not read the operator's variable names"
    assert set(env) <= known, f"variables the operator does not read: {set(env) - known}"
    # Resolve the downward-API fields as the kubelet would, then let the
    # operator's own loader parse the result.
    plain = {k: v if isinstance(v, str) else "rl-operator-0" for k, v in env.items()}
    cfg = config.load(plain)
    assert cfg.namespaces == ("team-a", "team-b")
    assert cfg.node_image == "registry.example/rl-node:1.2.3"
    assert cfg.port == 8080
    assert cfg.leader_election is True
    assert env["RLO_LOG_LEVEL"] == "INFO"
    assert ("app.kubernetes.io/component", "operator") in cfg.operator_pod_labels
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert dict(cfg.operator_pod_labels).items() <= pod_labels.items()
    assert dict(cfg.scraper_pod_labels) == {"app.kubernetes.io/name": "prometheus"}


def test_fullname_is_truncated_to_a_dns_label(render: Render) -> None:
    release = "a" * 45 + "-release"  # 53, the longest release name helm takes
    manifests = render(release=release)
    for m in manifests:
        name = m["metadata"]["name"]
        if m["kind"] in ("Deployment", "Service", "ServiceAccount"):
            assert len(name) <= 63, name
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert len(name) <= 253, name
    fullname = one(manifests, "Deployment")["metadata"]["name"]
    assert len(fullname) <= 63
    assert not fullname.endswith("-")
    # A release named after the chart is not doubled.
    assert one(render(release="reactive-loop"), "Deployment")["metadata"]["name"] == "reactive-loop"
    assert one(render(sets=["fullnameOverride=rlo"]), "Deployment")["metadata"]["name"] == "rlo"


def test_cluster_rbac_covers_what_the_operator_creates_and_grants(render: Render) -> None:
    manifests = render()
    binding = one(manifests, "ClusterRoleBinding", "rl-reactive-loop")
    role = one(manifests, "ClusterRole", "rl-reactive-loop")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(manifests, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "rl-system"}]
    rules = role["rules"]
    for resource, group in CHILD_KINDS.items():
        # Secrets are created and never read or changed (the next test).
        for verb in ("create",) if resource == "secrets" else ("get", "create", "patch", "delete"):
            assert grants(rules, group, resource, verb), (group, resource, verb)
    for verb in ("get", "list", "watch", "patch"):
        assert grants(rules, "reactive-loop.dev", "reactiveloops", verb)
    assert grants(rules, "reactive-loop.dev", "reactiveloops/status", "patch")
    assert grants(rules, "", "events", "create")
    # RBAC escalation rule: the operator must hold every permission it grants
    # a node's Role, or the API server refuses to create that Role.
    node_role = builders.role(Owner(name="demo", namespace="default", uid="u-1"), 0)
    for rule in node_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert grants(rules, group, resource, verb), (group, resource, verb)
    # Least privilege: no wildcards, no secrets listing, nothing on nodes.
    for rule in rules:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert not {"list", "watch"} & set(rule["verbs"])
    assert not grants(rules, "", "nodes", "get")


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}], ids=["cluster", "ns"])
def test_secrets_are_create_only_in_either_mode(render: Render, values: dict[str, Any]) -> None:
    """The operator never reads a Secret (issue 11 §4): `create` is all it holds,
    cluster-wide as in the watched namespaces (docs/operator.md, "Privileges")."""
    manifests = render(values=values)
    roles = by_kind(manifests, "ClusterRole") + by_kind(manifests, "Role")
    rules = [r for m in roles for r in m["rules"]]
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert secret_rules
    for rule in secret_rules:
        assert rule["verbs"] == ["create"], rule
        assert rule["resources"] == ["secrets"], rule
        assert "resourceNames" not in rule


def test_namespaced_rbac_has_one_role_per_watched_namespace_and_no_cluster_write(
    render: Render,
) -> None:
    manifests = render(values={"watchNamespaces": ["team-a", "team-b"]})
    roles = {
        m["metadata"]["namespace"]: m
        for m in by_kind(manifests, "Role")
        if m["metadata"]["name"] == "rl-reactive-loop"
    }
    assert set(roles) == {"team-a", "team-b"}
    bindings = {
        m["metadata"]["namespace"]
        for m in by_kind(manifests, "RoleBinding")
        if m["metadata"]["name"] == "rl-reactive-loop"
    }
    assert bindings == {"team-a", "team-b"}
    for role in roles.values():
        assert grants(role["rules"], "", "pods", "patch")
    for cluster_role in by_kind(manifests, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}
    env = env_of(operator_container(manifests))
    assert env["RLO_NAMESPACES"] == "team-a,team-b"


def test_leader_election_role_allows_leases_in_the_release_namespace(render: Render) -> None:
    manifests = render()
    role = one(manifests, "Role", "-leader-election")
    assert role["metadata"]["namespace"] == "rl-system"
    for verb in ("get", "create", "update"):
        assert grants(role["rules"], "coordination.k8s.io", "leases", verb)
    env = env_of(operator_container(manifests))
    assert env["RLO_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_rbac_and_serviceaccount_can_be_brought_by_the_user(render: Render) -> None:
    manifests = render(values_files=[CHART / "ci" / "minimal-values.yaml"])
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"Deployment"}
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "my-operator"


def test_service_selects_the_operator_pods_on_the_http_port(render: Render) -> None:
    manifests = render()
    service = one(manifests, "Service")
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["ports"][0]["name"] == "http-metrics"


def test_monitors_select_what_the_operator_builds(render: Render) -> None:
    manifests = render(values_files=[CHART / "ci" / "monitoring-values.yaml"])
    pm = one(manifests, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    node_pod = builders.pod(
        Owner(name="demo", namespace="default", uid="u-1"),
        _converge_spec(),
        0,
        builders.NodeDefaults(image="reactive-loop-node:0.1.0"),
    )
    assert pm["spec"]["selector"]["matchLabels"].items() <= node_pod["metadata"]["labels"].items()
    port_names = {p["name"] for c in node_pod["spec"]["containers"] for p in c.get("ports", [])}
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == contract.METRICS_PATH
    assert endpoint["interval"] == "10s"
    sm = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["rl-system"]}
    env = env_of(operator_container(manifests))
    assert env["RLO_SCRAPER_NAMESPACE_LABELS"] == "kubernetes.io/metadata.name=monitoring"
    # Namespaced mode: scrape only the watched namespaces.
    pm = one(
        render(sets=["monitoring.podMonitor.enabled=true", "watchNamespaces={a,b}"]), "PodMonitor"
    )
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_service_monitor_without_a_service_is_refused(render: Render) -> None:
    with pytest.raises(HelmError, match=r"needs service\.enabled"):
        render(sets=["monitoring.serviceMonitor.enabled=true", "service.enabled=false"])


def test_prometheus_rule_alerts_carry_runbooks_and_use_contract_metrics(render: Render) -> None:
    manifests = render(values_files=[CHART / "ci" / "monitoring-values.yaml"])
    rule = one(manifests, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {
        "ReactiveLoopStalled",
        "ReactiveLoopNotConverged",
        "ReactiveLoopTokenLost",
        "ReactiveLoopTokenDuplicated",
    } <= names
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text().lower()
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["labels"]["team"] == "platform"
        assert a["annotations"]["summary"]
        assert a["annotations"]["description"]
        anchor = a["alert"].lower()
        assert a["annotations"]["runbook_url"].endswith("docs/monitoring.md#" + anchor)
        assert f"### {anchor}" in runbook, f"no runbook section for {a['alert']}"
        for metric in re.findall(r"reactive_loop_\w+", a["expr"]):
            assert metric in NODE_METRICS, metric


def test_rendered_rules_pass_promtool(render: Render, tmp_path: Path, promtool: str) -> None:
    rule = one(render(sets=["monitoring.prometheusRule.enabled=true"]), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_thresholds_come_from_values(render: Render) -> None:
    rule = one(
        render(
            sets=[
                "monitoring.prometheusRule.enabled=true",
                "monitoring.prometheusRule.stalledAfterSeconds=7",
                "monitoring.prometheusRule.stalledFor=3s",
            ]
        ),
        "PrometheusRule",
    )
    stalled = next(
        r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "ReactiveLoopStalled"
    )
    assert stalled["expr"].rstrip().endswith("> 7")
    assert stalled["for"] == "3s"


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(render: Render) -> None:
    manifests = render(sets=["monitoring.dashboard.namespace=monitoring"])
    cm = one(manifests, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["reactive-loop.json"])
    assert dashboard["uid"] == "reactive-loop"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in (
        "loops/s vs waits/s by reason",
        "round-trip latency",
        "generation per node",
        "token holder",
        "token epoch",
        "last successful loop age",
        "state writes",
        "requests served by outcome",
    ):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            for metric in re.findall(r"reactive_loop_\w+", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                assert base in NODE_METRICS, metric
    assert not by_kind(render(sets=["monitoring.dashboard.enabled=false"]), "ConfigMap")


def _converge_spec() -> LoopSpec:
    return parse_spec(
        {"replicas": 3, "behavior": "converge", "topology": "ring", "target": {"a": 1}}
    )
