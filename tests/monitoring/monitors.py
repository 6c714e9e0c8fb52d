"""The chart's PodMonitor and ServiceMonitor as Prometheus scrape configs.

The cluster stage has no Prometheus Operator; it runs Prometheus itself. So
this turns the monitors the chart renders into the scrape jobs the Prometheus
Operator generates from them: `kubernetes_sd_configs` (role `pod` for a
PodMonitor, `endpointslice` for a ServiceMonitor) restricted to the monitor's
namespaces, and the operator's relabelling (keep the selected labels and the
named port; `namespace`, `pod`, `container`, `job`, `endpoint` labels). Only
what the chart uses is translated (`selector.matchLabels`,
`namespaceSelector.matchNames`/`any`, port, path, interval, timeout); anything
else fails loudly rather than being ignored.

`kubernetes_sd_access` reads how to reach the API server from a kubeconfig.
All of it is I/O-free except writing inline (`*-data`) credentials to files.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Manifest = Mapping[str, Any]

_SUPPORTED_SELECTOR = {"matchLabels"}
_SUPPORTED_NAMESPACE_SELECTOR = {"matchNames", "any"}
_SUPPORTED_ENDPOINT = {"port", "path", "interval", "scrapeTimeout"}


class UnsupportedMonitor(ValueError):
    """The monitor uses a field this translation does not implement."""


def sanitize(name: str) -> str:
    """A Kubernetes label name as it appears in `__meta_kubernetes_*_label_<name>`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _check_fields(what: str, given: Mapping[str, Any], supported: set[str]) -> None:
    extra = set(given) - supported
    if extra:
        raise UnsupportedMonitor(f"{what}: {sorted(extra)} not translated")


def _keep_labels(role: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The operator's keep rules for `selector.matchLabels` (label present and equal)."""
    return [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_{role}_label_{sanitize(k)}",
                f"__meta_kubernetes_{role}_labelpresent_{sanitize(k)}",
            ],
            "regex": f"({re.escape(v)});true",
        }
        for k, v in sorted(match_labels.items())
    ]


def _namespaces(monitor: Manifest) -> list[str] | None:
    """The namespaces to discover in; None for `any: true` (every namespace)."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    _check_fields("namespaceSelector", selector, _SUPPORTED_NAMESPACE_SELECTOR)
    if selector.get("any"):
        return None
    names = selector.get("matchNames")
    # Without a namespaceSelector the operator looks in the monitor's own namespace.
    return list(names) if names else [monitor["metadata"]["namespace"]]


def _sd_config(
    role: str, namespaces: list[str] | None, access: Mapping[str, Any]
) -> dict[str, Any]:
    sd: dict[str, Any] = {"role": role, **copy.deepcopy(dict(access))}
    if namespaces is not None:
        sd["namespaces"] = {"names": namespaces}
    return sd


def _endpoint_settings(endpoint: Mapping[str, Any], interval: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"metrics_path": endpoint.get("path", "/metrics")}
    if interval is not None:
        settings["scrape_interval"] = interval
    elif "interval" in endpoint:
        settings["scrape_interval"] = endpoint["interval"]
    if interval is None and "scrapeTimeout" in endpoint:
        settings["scrape_timeout"] = endpoint["scrapeTimeout"]
    return settings


def pod_monitor_jobs(
    monitor: Manifest, access: Mapping[str, Any], interval: str | None = None
) -> list[dict[str, Any]]:
    """One scrape job per `podMetricsEndpoints` entry, as the Prometheus Operator makes it.

    `interval` overrides the monitor's interval (and drops its timeout) so a
    test scrapes every second.
    """
    meta, spec = monitor["metadata"], monitor["spec"]
    selector = spec.get("selector") or {}
    _check_fields("selector", selector, _SUPPORTED_SELECTOR)
    jobs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        _check_fields("podMetricsEndpoints", endpoint, _SUPPORTED_ENDPOINT)
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {
                "action": "drop",
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
            },
            *_keep_labels("pod", selector.get("matchLabels", {})),
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": endpoint["port"],
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ]
        jobs.append(
            {
                "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "honor_labels": False,
                "kubernetes_sd_configs": [_sd_config("pod", _namespaces(monitor), access)],
                **_endpoint_settings(endpoint, interval),
                "relabel_configs": relabel,
            }
        )
    return jobs


def service_monitor_jobs(
    monitor: Manifest, access: Mapping[str, Any], interval: str | None = None
) -> list[dict[str, Any]]:
    """One scrape job per `endpoints` entry, as the Prometheus Operator makes it
    with `serviceDiscoveryRole: EndpointSlice` (v1 Endpoints is deprecated)."""
    meta, spec = monitor["metadata"], monitor["spec"]
    selector = spec.get("selector") or {}
    _check_fields("selector", selector, _SUPPORTED_SELECTOR)
    jobs = []
    for i, endpoint in enumerate(spec["endpoints"]):
        _check_fields("endpoints", endpoint, _SUPPORTED_ENDPOINT)
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            *_keep_labels("service", selector.get("matchLabels", {})),
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
                "regex": endpoint["port"],
            },
            {
                "source_labels": [
                    "__meta_kubernetes_endpointslice_address_target_kind",
                    "__meta_kubernetes_endpointslice_address_target_name",
                ],
                "separator": ";",
                "regex": "Pod;(.*)",
                "replacement": "${1}",
                "target_label": "pod",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {
                "action": "drop",
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
            },
            {
                "source_labels": ["__meta_kubernetes_service_name"],
                "target_label": "job",
                "replacement": "${1}",
            },
            {"target_label": "endpoint", "replacement": endpoint["port"]},
        ]
        jobs.append(
            {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "honor_labels": False,
                "kubernetes_sd_configs": [
                    _sd_config("endpointslice", _namespaces(monitor), access)
                ],
                **_endpoint_settings(endpoint, interval),
                "relabel_configs": relabel,
            }
        )
    return jobs


def _current(doc: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any]:
    for item in doc.get(f"{kind}s") or []:
        if item["name"] == name:
            found: Mapping[str, Any] = item[kind]
            return found
    raise ValueError(f"kubeconfig: no {kind} named {name!r}")


def _file_or_data(entry: Mapping[str, Any], key: str, base: Path, out: Path) -> str | None:
    """The path of `key` (relative to the kubeconfig) or of `key-data` written to `out`."""
    if entry.get(key):
        path = Path(entry[key])
        return str(path if path.is_absolute() else (base / path).resolve())
    if entry.get(f"{key}-data"):
        out.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        out.chmod(0o600)
        return str(out)
    return None


def kubernetes_sd_access(kubeconfig: Mapping[str, Any], base: Path, out: Path) -> dict[str, Any]:
    """`api_server` and credentials of a `kubernetes_sd_configs` entry from a kubeconfig.

    The current context's server, its CA, and the user's client certificate
    and key or bearer token. `base` is the kubeconfig's directory (relative
    paths); inline `*-data` is written under `out`.
    """
    context = _current(kubeconfig, "context", kubeconfig["current-context"])
    cluster = _current(kubeconfig, "cluster", context["cluster"])
    user = _current(kubeconfig, "user", context["user"])
    tls: dict[str, Any] = {}
    ca = _file_or_data(cluster, "certificate-authority", base, out / "ca.crt")
    if ca:
        tls["ca_file"] = ca
    if cluster.get("insecure-skip-tls-verify"):
        tls["insecure_skip_verify"] = True
    access: dict[str, Any] = {"api_server": cluster["server"]}
    cert = _file_or_data(user, "client-certificate", base, out / "client.crt")
    key = _file_or_data(user, "client-key", base, out / "client.key")
    if cert and key:
        tls["cert_file"], tls["key_file"] = cert, key
    elif user.get("token") or user.get("tokenFile"):
        token_file = user.get("tokenFile")
        if not token_file:
            (out / "token").write_text(user["token"])
            (out / "token").chmod(0o600)
            token_file = str(out / "token")
        access["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    else:
        raise ValueError("kubeconfig: the user has neither a client certificate nor a token")
    if tls:
        access["tls_config"] = tls
    return access
