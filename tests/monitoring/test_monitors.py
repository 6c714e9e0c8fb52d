"""monitors turns the chart's PodMonitor/ServiceMonitor into the Prometheus
Operator's scrape jobs, and reads API server access from a kubeconfig."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from monitoring.monitors import (
    UnsupportedMonitor,
    kubernetes_sd_access,
    pod_monitor_jobs,
    service_monitor_jobs,
)

ACCESS: dict[str, Any] = {"api_server": "https://127.0.0.1:6443"}

POD_MONITOR: dict[str, Any] = {
    "metadata": {"name": "rl-reactive-loop-nodes", "namespace": "rl-system"},
    "spec": {
        "namespaceSelector": {"matchNames": ["team-a"]},
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "reactive-loop",
                "app.kubernetes.io/component": "node",
            }
        },
        "podMetricsEndpoints": [
            {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
        ],
    },
}

SERVICE_MONITOR: dict[str, Any] = {
    "metadata": {"name": "rl-reactive-loop-operator", "namespace": "rl-system"},
    "spec": {
        "namespaceSelector": {"matchNames": ["rl-system"]},
        "selector": {"matchLabels": {"app.kubernetes.io/name": "reactive-loop"}},
        "endpoints": [{"port": "http-metrics", "path": "/metrics", "interval": "30s"}],
    },
}


def relabel(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [r for r in job["relabel_configs"] if r.get("action") == action]


def test_a_pod_monitor_becomes_a_pod_role_job_in_its_namespaces() -> None:
    [job] = pod_monitor_jobs(POD_MONITOR, ACCESS)
    assert job["job_name"] == "podMonitor/rl-system/rl-reactive-loop-nodes/0"
    assert job["kubernetes_sd_configs"] == [
        {"role": "pod", "api_server": ACCESS["api_server"], "namespaces": {"names": ["team-a"]}}
    ]
    assert (job["scrape_interval"], job["scrape_timeout"]) == ("15s", "10s")
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabel(job, "keep")}
    assert keeps == {
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_component",
        ): "(node);true",
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
        ): "(reactive\\-loop);true",
        ("__meta_kubernetes_pod_container_port_name",): "http",
    }
    targets = {r["target_label"]: r for r in job["relabel_configs"] if "target_label" in r}
    assert targets["namespace"]["source_labels"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"]["source_labels"] == ["__meta_kubernetes_pod_name"]
    assert targets["job"]["replacement"] == "rl-system/rl-reactive-loop-nodes"
    assert targets["endpoint"]["replacement"] == "http"


def test_every_namespace_and_an_interval_override() -> None:
    monitor = {**POD_MONITOR, "spec": {**POD_MONITOR["spec"], "namespaceSelector": {"any": True}}}
    [job] = pod_monitor_jobs(monitor, ACCESS, interval="1s")
    assert "namespaces" not in job["kubernetes_sd_configs"][0]
    assert job["scrape_interval"] == "1s"
    assert "scrape_timeout" not in job


def test_a_service_monitor_becomes_an_endpointslice_job_named_after_the_service() -> None:
    [job] = service_monitor_jobs(SERVICE_MONITOR, ACCESS)
    assert job["job_name"] == "serviceMonitor/rl-system/rl-reactive-loop-operator/0"
    assert job["kubernetes_sd_configs"][0]["role"] == "endpointslice"
    assert job["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["rl-system"]}
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabel(job, "keep")}
    assert keeps[("__meta_kubernetes_endpointslice_port_name",)] == "http-metrics"
    assert (
        "__meta_kubernetes_service_label_app_kubernetes_io_name",
        "__meta_kubernetes_service_labelpresent_app_kubernetes_io_name",
    ) in keeps
    [job_rule] = [r for r in job["relabel_configs"] if r.get("target_label") == "job"]
    assert job_rule["source_labels"] == ["__meta_kubernetes_service_name"]


def test_a_field_that_is_not_translated_fails() -> None:
    spec = {**POD_MONITOR["spec"], "selector": {"matchExpressions": []}}
    with pytest.raises(UnsupportedMonitor):
        pod_monitor_jobs({**POD_MONITOR, "spec": spec}, ACCESS)


def kubeconfig(cluster: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    return {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
    }


def test_access_from_a_kubeconfig_with_client_certificate_files(tmp_path: Path) -> None:
    doc = kubeconfig(
        {"certificate-authority": "pki/ca.crt"},
        {"client-certificate": "/abs/admin.crt", "client-key": "pki/admin.key"},
    )
    access = kubernetes_sd_access(doc, Path("/etc/kube"), tmp_path)
    assert access == {
        "api_server": "https://10.0.0.1:6443",
        "tls_config": {
            "ca_file": "/etc/kube/pki/ca.crt",
            "cert_file": "/abs/admin.crt",
            "key_file": "/etc/kube/pki/admin.key",
        },
    }


def test_access_from_a_kubeconfig_with_inline_ca_and_a_token(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    doc = kubeconfig({"certificate-authority-data": ca}, {"token": "s3cret"})
    access = kubernetes_sd_access(doc, tmp_path, tmp_path)
    assert Path(access["tls_config"]["ca_file"]).read_bytes().startswith(b"-----BEGIN")
    assert access["authorization"]["type"] == "Bearer"
    assert Path(access["authorization"]["credentials_file"]).read_text() == "s3cret"


def test_a_kubeconfig_without_credentials_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither"):
        kubernetes_sd_access(kubeconfig({}, {}), tmp_path, tmp_path)
